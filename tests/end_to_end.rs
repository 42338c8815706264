//! Foundation acceptance: the whole token path, emulator + agent over a temp-dir socket.

mod common;

use std::time::Duration;

use asset_agent::client;
use common::{Agent, Device, emulator, get, verify_with_jwks, wait_for_failure, wait_for_token};
use emulator::Registration;
use wire::clock::Clock;

#[tokio::test]
async fn token_over_socket_verifies_and_registers_one_asset() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.config(&emu, "", "");
    let agent = Agent::start(&config, Clock::system()).await;

    let body = wait_for_token(&dev.socket()).await;
    let jwt = body["token"].as_str().unwrap();
    let claims = verify_with_jwks(&emu, jwt);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(body["device_id"], "device-0001");
    assert!(body["expires_in"].as_u64().unwrap() <= 60);
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    let assets = emu.assets();
    assert_eq!(assets.len(), 1, "{assets:?}");
    let a = &assets[0];
    assert_eq!(a.name, "Pump 7");
    assert_eq!(a.serial_number.as_deref(), Some("00123"));
    assert_eq!(a.account_id.as_deref(), Some("0011i000006kiTc"));
    assert_eq!(body["asset_id"], a.id.as_str());
    assert_eq!(claims["sub"], a.id.as_str());
    assert_eq!(emu.events()[0].registration, Registration::Created);

    // Accept: text/plain gives the bare JWT.
    let plain = client::request(&dev.socket(), hyper::Method::GET, "/v1/token", "text/plain")
        .await
        .unwrap();
    assert_eq!(plain.status, 200);
    assert_eq!(String::from_utf8_lossy(&plain.body).trim(), jwt);

    // Status and health.
    let status: serde_json::Value =
        serde_json::from_slice(&get(&dev.socket(), "/v1/status").await.body).unwrap();
    assert_eq!(status["state"], "ready");
    assert_eq!(status["asset_id"], a.id.as_str());
    assert_eq!(get(&dev.socket(), "/v1/health/ready").await.status, 200);
    assert_eq!(get(&dev.socket(), "/v1/health/live").await.status, 200);
    assert_eq!(get(&dev.socket(), "/v1/nope").await.status, 404);
    let bad = client::request(&dev.socket(), hyper::Method::DELETE, "/v1/token", "*/*")
        .await
        .unwrap();
    assert_eq!(bad.status, 405);
    agent.stop().await;
    assert!(!dev.socket().exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn second_start_with_same_serial_links_the_asset() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let first = Device::new(&emu);
    let agent = Agent::start(&first.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&first.socket()).await;
    agent.stop().await;

    // Same device restarted: same serial, same Asset.
    let agent = Agent::start(&first.config(&emu, "", ""), Clock::system()).await;
    wait_for_token(&first.socket()).await;
    agent.stop().await;

    // A replacement board with a new key but the same serial number links too.
    let second = Device::with_key(&emu, common::OTHER_KEY);
    let agent = Agent::start(&second.config(&emu, "", ""), Clock::system()).await;
    let body = wait_for_token(&second.socket()).await;
    agent.stop().await;

    let assets = emu.assets();
    assert_eq!(assets.len(), 1, "no duplicate Asset: {assets:?}");
    assert_eq!(body["asset_id"], assets[0].id.as_str());
    let regs: Vec<_> = emu.events().iter().map(|e| e.registration).collect();
    assert_eq!(regs[0], Registration::Created);
    assert!(
        regs[1..].iter().all(|r| *r == Registration::Linked),
        "{regs:?}"
    );
}

#[tokio::test]
async fn asset_id_in_config_links_that_record() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let first = Device::new(&emu);
    let agent = Agent::start(&first.config(&emu, "", ""), Clock::system()).await;
    let body = wait_for_token(&first.socket()).await;
    agent.stop().await;
    let id = body["asset_id"].as_str().unwrap().to_owned();

    // Another device, another serial, but configured with the record id: linked to it.
    let second = Device::with_key(&emu, common::OTHER_KEY);
    let path = second.write_config(&emu, &format!("id = \"{id}\""), "");
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"00123\"", "\"SN-OTHER\"");
    std::fs::write(&path, toml).unwrap();
    let config = asset_agent::config::Config::load(&asset_agent::config::LoadOptions::new(
        Some(path),
        Default::default(),
    ))
    .unwrap();
    let agent = Agent::start(&config, Clock::system()).await;
    let body = wait_for_token(&second.socket()).await;
    agent.stop().await;
    assert_eq!(body["asset_id"], id.as_str());
    assert_eq!(emu.assets().len(), 1);
    assert_eq!(
        emu.events().last().unwrap().registration,
        Registration::Linked
    );
}

#[tokio::test]
async fn tampered_signature_is_refused_and_never_served() {
    let emu = emulator(Clock::system(), |_| {}).await;
    // Every exchange answered with a token signed by another key under the org's kid.
    emu.faults().bad_signature(1000);
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), Clock::system()).await;
    let status = wait_for_failure(&dev.socket()).await;
    assert_eq!(status["state"], "failing", "{status}");
    assert_eq!(status["last_error_reason"], "verify", "{status}");
    let r = get(&dev.socket(), "/v1/token").await;
    assert_eq!(r.status, 503);
    assert!(r.body.len() < 2000 && !String::from_utf8_lossy(&r.body).contains("eyJ"));
    assert_eq!(get(&dev.socket(), "/v1/health/ready").await.status, 503);
    agent.stop().await;
}

#[tokio::test]
async fn wrong_audience_is_refused_when_configured() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.config(
        &emu,
        "",
        "audience = [\"https://someone-else.example.com\"]",
    );
    let agent = Agent::start(&config, Clock::system()).await;
    let status = wait_for_failure(&dev.socket()).await;
    assert_eq!(status["state"], "failing", "{status}");
    assert!(
        status["last_error"].as_str().unwrap().contains("udience"),
        "{status}"
    );
    assert_eq!(get(&dev.socket(), "/v1/token").await.status, 503);
    agent.stop().await;

    // The matching audience is accepted.
    let config = dev.config(&emu, "", "audience = [\"https://ingest.example.com\"]");
    let agent = Agent::start(&config, Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    agent.stop().await;
}

/// After `exp` the token is never served, even while Salesforce is unreachable and the
/// agent still holds it. Time is virtual: the clock is paused once the token is held.
#[tokio::test]
async fn token_past_expiry_is_never_served() {
    let clock = Clock::tokio_driven();
    let emu = emulator(clock.clone(), |_| {}).await;
    let dev = Device::new(&emu);
    let agent = Agent::start(&dev.config(&emu, "", ""), clock.clone()).await;
    let body = wait_for_token(&dev.socket()).await;
    let jwt = body["token"].as_str().unwrap().to_owned();
    // Salesforce goes away for good.
    emu.faults().fail_next(u32::MAX, 503).await.unwrap();
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(30)).await;
    let r = get(&dev.socket(), "/v1/token").await;
    assert_eq!(r.status, 200, "still valid at +30 s");
    tokio::time::advance(Duration::from_secs(31)).await;
    for path in ["/v1/token", "/v1/token?min_ttl=1"] {
        let r = get(&dev.socket(), path).await;
        assert_eq!(r.status, 503, "{path}");
        assert!(r.headers.contains_key("retry-after"));
        assert!(!String::from_utf8_lossy(&r.body).contains(&jwt));
    }
    let plain = client::request(&dev.socket(), hyper::Method::GET, "/v1/token", "text/plain")
        .await
        .unwrap();
    assert_eq!(plain.status, 503);
    assert_eq!(get(&dev.socket(), "/v1/health/ready").await.status, 503);
    agent.stop().await;
}

/// `verify = "certificate"`: tokens are checked against a pinned PEM certificate instead
/// of the JWKS; a certificate of another key refuses them.
#[tokio::test]
async fn pinned_certificate_verifies_and_a_wrong_one_refuses() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let cert = dev.path("asset-signing.crt");
    std::fs::write(&cert, emu.certificate_pem()).unwrap();
    let path = dev.write_config(&emu, "", &format!("certificate = \"{}\"", cert.display()));
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("verify = \"jwks\"", "verify = \"certificate\"");
    std::fs::write(&path, toml).unwrap();
    let load = |p| {
        asset_agent::config::Config::load(&asset_agent::config::LoadOptions::new(
            Some(p),
            Default::default(),
        ))
        .unwrap()
    };
    let agent = Agent::start(&load(path.clone()), Clock::system()).await;
    let body = wait_for_token(&dev.socket()).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    agent.stop().await;

    // A certificate for a different key: every token is refused.
    let other = emulator(Clock::system(), |c| {
        c.signing_key_pem = Some(common::OTHER_KEY.to_owned().into());
    })
    .await;
    std::fs::write(&cert, other.certificate_pem()).unwrap();
    let agent = Agent::start(&load(path), Clock::system()).await;
    let status = wait_for_failure(&dev.socket()).await;
    assert_eq!(status["last_error_reason"], "verify", "{status}");
    assert_eq!(get(&dev.socket(), "/v1/token").await.status, 503);
    agent.stop().await;
}

/// A socket file left by a crash is replaced; a live agent's socket is not stolen.
#[tokio::test]
async fn stale_socket_is_replaced_but_a_live_one_is_kept() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.config(&emu, "", "");
    std::fs::create_dir_all(dev.socket().parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(dev.socket()).unwrap());
    assert!(dev.socket().exists(), "stale socket file left behind");
    let agent = Agent::start(&config, Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dev.socket()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o660);

    // A second agent on the same socket refuses to start.
    let err = asset_agent::agent::start(
        &config,
        asset_agent::agent::Options::default(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .err()
    .expect("second agent must not start");
    assert!(err.to_string().contains("socket"), "{err}");
    assert!(format!("{:?}", err).contains("InUse"), "{err:?}");
    wait_for_token(&dev.socket()).await;
    agent.stop().await;
}
