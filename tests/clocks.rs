//! Clocks: a device clock an hour off still gets tokens thanks to the `Date`
//! header, and a wall-clock jump in the middle of a run breaks nothing (scheduling is
//! monotonic; the next actor token is re-minted on corrected time within the attempt).

#![allow(clippy::unwrap_used)]

mod common;

use common::rig::Rig;
use common::{Agent, Device, emulator, get, verify_with_jwks, wait_for_token, write_0600};
use emulator::Grant;
use wire::clock::Clock;

async fn device_clock_off_by(offset: i64) {
    let mut rig = Rig::start(|_| {}, "", Some(offset)).await;
    // The refresh-token grant's Date header measured the skew before the first actor token
    // was minted: one exchange, accepted.
    assert_eq!(rig.emu.grant_count(Grant::TokenExchange), 1);
    let skew = rig.agent.running.shared.skew.measured().unwrap();
    assert!((skew + offset).abs() <= 1, "{offset}: {skew}");
    let status = get(&rig.dev.socket(), "/v1/status").await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(status["clock_skew_seconds"], skew);
    assert_eq!(status["state"], "ready");
    rig.run_to(90).await;
    assert_eq!(rig.requests, [(42, 1), (84, 1)], "{offset}");
    assert_eq!(rig.outcomes, [(42, true), (84, true)], "{offset}");
    assert!(rig.samples.iter().all(|s| s.served && s.state == "ready"));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn device_clock_an_hour_behind() {
    device_clock_off_by(-3600).await;
}

#[tokio::test(start_paused = true)]
async fn device_clock_an_hour_ahead() {
    device_clock_off_by(3600).await;
}

/// The JWT-bearer assertion is the first thing sent, before any `Date` header was seen:
/// refused, then re-signed on corrected time in the same attempt.
async fn jwt_bearer_with_clock_off_by(offset: i64) {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    write_0600(&dev.path("assertion-key.pem"), common::OTHER_KEY.as_bytes());
    let key = asset_agent::keys::FileKey::from_pem(
        std::path::Path::new("k"),
        common::OTHER_KEY.as_bytes(),
    )
    .unwrap();
    emu.register_jwt_bearer_key(asset_agent::keys::Signer::public_jwk(&key).clone());
    let p = dev.write_config(&emu, "", "");
    let toml = std::fs::read_to_string(&p).unwrap().replacen(
        "[auth]\n",
        &format!(
            "[auth]\nmethod = \"jwt_bearer\"\nusername = \"fleet@example.com\"\nassertion_key_file = \"{}\"\n",
            dev.path("assertion-key.pem").display()
        ),
        1,
    );
    std::fs::write(&p, toml).unwrap();
    let config = asset_agent::config::Config::load(&asset_agent::config::LoadOptions::new(
        Some(p),
        Default::default(),
    ))
    .unwrap();
    let clock = Clock::system();
    clock.set_offset(offset);
    let agent = Agent::start(&config, clock).await;
    let body = wait_for_token(&dev.socket()).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    assert_eq!(emu.grant_count(Grant::JwtBearer), 2, "{offset}");
    assert_eq!(emu.grant_count(Grant::TokenExchange), 1, "{offset}");
    let snap = agent.running.tokens.snapshot();
    assert_eq!(snap.refreshes_failed, 0, "recovered within the attempt");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!((55..=60).contains(&expires_in), "{expires_in}");
    agent.stop().await;
}

#[tokio::test]
async fn jwt_bearer_with_the_device_clock_an_hour_behind() {
    jwt_bearer_with_clock_off_by(-3600).await;
}

#[tokio::test]
async fn jwt_bearer_with_the_device_clock_an_hour_ahead() {
    jwt_bearer_with_clock_off_by(3600).await;
}

#[tokio::test(start_paused = true)]
async fn wall_clock_jump_mid_run_breaks_nothing() {
    let mut rig = Rig::start(|_| {}, "", Some(0)).await;
    let agent_clock = rig.agent_clock.clone();
    rig.run_to(20).await;
    // NTP steps the device clock an hour ahead.
    agent_clock.set_offset(3600);
    rig.run_to(130).await;
    // The refresh is still due at 42 on the monotonic clock. Its actor token is minted an
    // hour ahead and refused; the refusal's Date header corrects the clock and the
    // exchange is repeated at once. Later refreshes need one request each.
    assert_eq!(rig.requests, [(42, 2), (84, 1), (126, 1)]);
    assert_eq!(rig.outcomes, [(42, true), (84, true), (126, true)]);
    // And back (the opposite jump).
    agent_clock.set_offset(0);
    rig.run_to(172).await;
    assert_eq!(rig.requests[3..], [(168, 2)]);
    assert_eq!(rig.outcomes[3..], [(168, true)]);
    assert!(rig.samples.iter().all(|s| s.served && s.state == "ready"));
    assert_eq!(rig.handle().snapshot().refreshes_failed, 0);
    assert_eq!(
        rig.emu.grant_count(Grant::RefreshToken),
        1,
        "no re-authentication"
    );
    rig.stop().await;
}
