//! Availability does not depend on a writable state directory: a refresh-token rotation
//! the disk refuses keeps the agent serving with the new tokens, keeps the rotated token in
//! the runtime directory (which survives a crash of the agent), and a SIGKILL in that state
//! loses nothing: the next start uses that copy and stores it once the disk takes it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use asset_agent::agent::UNSAVED_REFRESH_TOKEN;
use asset_agent::token::cache::FILE_NAME;
use common::process::spawn_run;
use common::{Device, emulator, get, verify_with_jwks, wait_for_token};
use emulator::Grant;
use tokio::time::{Instant, sleep};
use wire::clock::Clock;

#[tokio::test]
async fn a_refused_rotation_keeps_serving_and_a_kill_loses_no_refresh_token() {
    let emu = emulator(Clock::system(), |c| c.rotate_refresh_tokens = true).await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "");
    let rt = dev.path("refresh-token");
    let before = std::fs::read_to_string(&rt).unwrap();
    let log = dev.path("agent-1.log");
    let mut child = spawn_run(&config, "info", &log);
    // The state directory refuses the refresh token's rewrite (for root too): a directory
    // where the temporary file must go.
    let blocker = dev.path(&format!(".refresh-token.tmp-{}", child.id().unwrap()));
    std::fs::create_dir(&blocker).unwrap();

    // Serving, with the tokens of the rotated grant.
    let body = wait_for_token(&dev.socket()).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    let s: serde_json::Value =
        serde_json::from_slice(&get(&dev.socket(), "/v1/status").await.body).unwrap();
    assert_eq!(s["state"], "ready", "{s}");
    assert_eq!(
        std::fs::read_to_string(&rt).unwrap(),
        before,
        "the disk refused it"
    );
    let kept = dev.path("run").join(UNSAVED_REFRESH_TOKEN);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kept.exists() {
        assert!(Instant::now() < deadline, "no crash-safe copy");
        sleep(Duration::from_millis(5)).await;
    }
    let rotated = std::fs::read_to_string(&kept).unwrap();
    assert_ne!(rotated, before);

    // SIGKILL in that state, then a start without a cached token: it must use the copy
    // (the old token is dead at Salesforce) and store it now that the disk takes it.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    std::fs::remove_dir(&blocker).unwrap();
    let _ = std::fs::remove_file(dev.path(FILE_NAME));
    let mut child = spawn_run(&config, "info", &dev.path("agent-2.log"));
    let body = wait_for_token(&dev.socket()).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let stats = emu.stats();
    assert_eq!(stats.grant(Grant::RefreshToken), 2, "{stats:?}");
    assert_eq!(
        stats.success(Grant::RefreshToken),
        2,
        "no grant was refused for a lost token: {}",
        std::fs::read_to_string(dev.path("agent-2.log")).unwrap_or_default()
    );
    let stored = std::fs::read_to_string(&rt).unwrap();
    assert_ne!(stored, before);
    assert_ne!(
        stored, rotated,
        "rotated again by the second grant, and stored"
    );
    assert!(!kept.exists(), "the copy is gone once stored");
}
