//! Fault acceptance: for each emulator fault, the agent recovers once the fault
//! clears, serves no expired or invalid token meanwhile (checked every virtual second), and
//! sends exactly as many upstream requests as the backoff schedule allows.
//!
//! Virtual time, fixed jitter: see `common/rig.rs` for the schedule. The first token is
//! received at second 0, refreshed at 42, expires at 60; failures back off 1, 2, 4, 8 s...

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/rig.rs"]
mod rig;

use std::time::Duration;

use emulator::{Endpoint, Grant, Scope};
use rig::Rig;

type Requests = Vec<(u64, u64)>;
type Outcomes = Vec<(u64, bool)>;

/// (second, requests) and (second, ok) for the usual "N failures, then success" shape.
fn failing_then_ok(seconds: &[u64]) -> (Requests, Outcomes) {
    let last = seconds.len() - 1;
    (
        seconds.iter().map(|s| (*s, 1)).collect(),
        seconds
            .iter()
            .enumerate()
            .map(|(i, s)| (*s, i == last))
            .collect(),
    )
}

async fn status_failure(count: u32, status: u16, scope: Scope) {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(30).await;
    rig.emu
        .faults()
        .fail_next_with(count, status, None, scope)
        .await
        .unwrap();
    rig.run_to(95).await;
    // Failures at 42, 43, 45 (backoff 1, 2, 4 s), success at 49, next refresh 49 + 42.
    let (mut requests, mut outcomes) = failing_then_ok(&[42, 43, 45, 49]);
    requests.push((91, 1));
    outcomes.push((91, true));
    assert_eq!(rig.requests, requests, "{status}");
    assert_eq!(rig.outcomes, outcomes, "{status}");
    assert_eq!(rig.state_at(41), "ready");
    assert_eq!(rig.state_at(44), "degraded");
    assert_eq!(rig.state_at(49), "ready");
    assert!((1..=95).all(|s| rig.served_at(s)), "served throughout");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn http_500_on_every_endpoint() {
    status_failure(3, 500, Scope::Any).await;
}

#[tokio::test(start_paused = true)]
async fn http_503_on_the_token_endpoint() {
    status_failure(3, 503, Scope::TokenEndpoint).await;
}

#[tokio::test(start_paused = true)]
async fn http_429_with_retry_after_is_a_floor() {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(30).await;
    rig.emu
        .faults()
        .fail_next_with(
            2,
            429,
            Some(Duration::from_secs(7)),
            Scope::Grant(Grant::TokenExchange),
        )
        .await
        .unwrap();
    rig.run_to(100).await;
    // Retry-After 7 s lifts both backoff delays (1 s, 2 s) to 7 s.
    let (mut requests, mut outcomes) = failing_then_ok(&[42, 49, 56]);
    requests.push((98, 1));
    outcomes.push((98, true));
    assert_eq!(rig.requests, requests);
    assert_eq!(rig.outcomes, outcomes);
    assert_eq!(rig.state_at(50), "degraded");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn responses_delayed_beyond_the_timeout() {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(30).await;
    rig.emu
        .faults()
        .delay(
            Duration::from_secs(30),
            Some(2),
            Scope::Grant(Grant::TokenExchange),
        )
        .await
        .unwrap();
    rig.run_to(100).await;
    // Sent at 42, timed out at 47 (5 s timeout), backoff 1 s: sent at 48, timed out at
    // 53, backoff 2 s: sent at 55 and answered.
    assert_eq!(rig.requests, [(42, 1), (48, 1), (55, 1), (97, 1)]);
    assert_eq!(
        rig.outcomes,
        [(47, false), (53, false), (55, true), (97, true)]
    );
    assert_eq!(
        rig.handle().snapshot().last_error_reason.as_deref(),
        Some("timeout")
    );
    assert!((1..=100).all(|s| rig.served_at(s)));
    rig.stop().await;
}

/// Faults that spoil a 200 answer: each costs one attempt, retried with backoff.
async fn spoilt_answers(spoil: impl FnOnce(&emulator::Faults), reason: &str) {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(30).await;
    spoil(&rig.emu.faults());
    rig.run_to(90).await;
    let (mut requests, mut outcomes) = failing_then_ok(&[42, 43, 45]);
    requests.push((87, 1));
    outcomes.push((87, true));
    assert_eq!(rig.requests, requests, "{reason}");
    assert_eq!(rig.outcomes, outcomes, "{reason}");
    let snap = rig.handle().snapshot();
    assert_eq!(snap.refreshes_failed, 2);
    assert_eq!(rig.state_at(44), "degraded");
    assert_eq!(
        rig.emu.request_count(Endpoint::Jwks),
        1,
        "{reason}: no JWKS storm"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn malformed_json() {
    spoilt_answers(|f| f.malformed_json(2), "malformed").await;
}

#[tokio::test(start_paused = true)]
async fn wrong_issued_token_type() {
    spoilt_answers(|f| f.wrong_issued_token_type(2), "wrong type").await;
}

#[tokio::test(start_paused = true)]
async fn bad_asset_token_signature() {
    spoilt_answers(|f| f.bad_signature(2), "bad signature").await;
}

#[tokio::test(start_paused = true)]
async fn expired_access_tokens_reauthenticate_once() {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(30).await;
    let exchanges = rig.emu.grant_count(Grant::TokenExchange);
    let refreshes = rig.emu.grant_count(Grant::RefreshToken);
    assert!(rig.emu.faults().expire_access_tokens() >= 1);
    rig.run_to(90).await;
    // At 42: exchange refused (invalid_grant), refresh-token grant, exchange again.
    assert_eq!(rig.requests, [(42, 3), (84, 1)]);
    assert_eq!(rig.outcomes, [(42, true), (84, true)]);
    assert_eq!(rig.emu.grant_count(Grant::TokenExchange) - exchanges, 3);
    assert_eq!(rig.emu.grant_count(Grant::RefreshToken) - refreshes, 1);
    assert!(rig.samples.iter().all(|s| s.state == "ready"));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn revoked_refresh_token_is_fatal_until_replaced() {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(30).await;
    assert_eq!(rig.emu.faults().revoke_all_refresh_tokens(), 1);
    rig.emu.faults().expire_access_tokens();
    rig.run_to(399).await;
    // 42: exchange refused, refresh grant refused (revoked): fatal, retried after the
    // backoff cap (5 min) with one refresh grant.
    assert_eq!(rig.requests, [(42, 2), (342, 1)]);
    assert_eq!(rig.outcomes, [(42, false), (342, false)]);
    assert_eq!(rig.state_at(59), "degraded");
    assert_eq!(rig.state_at(60), "failing");
    assert!(!rig.served_at(60));
    let snap = rig.handle().snapshot();
    assert_eq!(snap.last_error_reason.as_deref(), Some("invalid_grant"));
    let status = common::get(&rig.dev.socket(), "/v1/status").await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(status["state"], "failing");
    assert!(status["refresh_failing_since"].is_string(), "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid_grant"),
        "{status}"
    );

    // Someone stores a new refresh token (as `asset-agent enroll` does): picked up at the
    // next 10 s credential check (the failure at 342 checks at 352, ..., 402).
    let fresh = rig.emu.mint_refresh_token().unwrap();
    common::write_0600(&rig.dev.path("refresh-token"), fresh.expose().as_bytes());
    rig.run_to(450).await;
    assert_eq!(rig.requests, [(42, 2), (342, 1), (402, 2), (444, 1)]);
    assert_eq!(rig.outcomes[2..], [(402, true), (444, true)]);
    assert_eq!(rig.state_at(402), "ready");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn skewed_server_clock_is_corrected_in_the_same_attempt() {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(10).await;
    rig.emu.faults().skew_clock(3600);
    rig.run_to(70).await;
    // 42: the actor token is an hour old by the server's clock: refused, and the Date
    // header shows the skew; re-minted on corrected time, accepted. No backoff, no
    // re-authentication.
    assert_eq!(rig.requests, [(42, 2)]);
    assert_eq!(rig.outcomes, [(42, true)]);
    let skew = rig.agent.running.shared.skew.measured().unwrap();
    assert!((3599..=3601).contains(&skew), "{skew}");
    // The fault clears: the next refresh (84) corrects back the same way.
    rig.emu.faults().skew_clock(0);
    rig.run_to(130).await;
    assert_eq!(rig.requests, [(42, 2), (84, 2), (126, 1)]);
    assert_eq!(rig.outcomes, [(42, true), (84, true), (126, true)]);
    assert!(rig.samples.iter().all(|s| s.state == "ready" && s.served));
    assert_eq!(
        rig.emu.grant_count(Grant::RefreshToken),
        1,
        "no re-authentication"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stopped_listener_then_recovery() {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(10).await;
    rig.emu.faults().stop_accepting().await;
    rig.run_to(80).await;
    // Connections refused: nothing reaches the emulator; attempts at 42, 43, 45, 49, 57,
    // 73 (backoff 1, 2, 4, 8, 16 s), the token expires at 60.
    assert_eq!(rig.requests, []);
    let failed = [42, 43, 45, 49, 57, 73];
    assert_eq!(
        rig.outcomes,
        failed.iter().map(|s| (*s, false)).collect::<Vec<_>>()
    );
    assert_eq!(rig.state_at(59), "degraded");
    assert!(rig.served_at(59) && !rig.served_at(60));
    assert_eq!(rig.state_at(60), "failing");
    assert_eq!(
        rig.handle().snapshot().last_error_reason.as_deref(),
        Some("connect")
    );
    rig.emu.faults().resume_accepting().await.unwrap();
    rig.run_to(150).await;
    // Next attempt after a 32 s backoff: 105, one exchange; then the normal schedule.
    assert_eq!(rig.requests, [(105, 1), (147, 1)]);
    assert_eq!(rig.outcomes[6..], [(105, true), (147, true)]);
    assert!(rig.served_at(105));
    rig.stop().await;
}
