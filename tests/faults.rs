//! Fault acceptance: for each emulator fault, the agent recovers once the fault
//! clears, serves no expired or invalid token meanwhile (checked every virtual second), and
//! sends exactly as many upstream requests as the backoff schedule allows.
//!
//! Virtual time, fixed jitter: see `common/rig.rs` for the schedule. The first token is
//! received at second 0, refreshed at 42, expires at 60; a failure is retried 26 s later
//! (the retry budget: at most 2 attempts per 39 s refresh interval, scaled to the token
//! lifetime rather than starting at 1 s), so an outage longer than 18 s costs the token.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::rig::Rig;
use emulator::{Endpoint, Grant, Scope};

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
    rig.run_to(170).await;
    // Failures at 42, 68, 94 (26 s apart), success at 120, next refresh 120 + 42.
    let (mut requests, mut outcomes) = failing_then_ok(&[42, 68, 94, 120]);
    requests.push((162, 1));
    outcomes.push((162, true));
    assert_eq!(rig.requests, requests, "{status}");
    assert_eq!(rig.outcomes, outcomes, "{status}");
    assert_eq!(rig.state_at(41), "ready");
    assert_eq!(rig.state_at(44), "degraded");
    assert_eq!(rig.state_at(60), "failing");
    assert_eq!(rig.state_at(120), "ready");
    assert!((1..=59).all(|s| rig.served_at(s)), "served until expiry");
    assert!(
        (60..=119).all(|s| !rig.served_at(s)),
        "nothing expired served"
    );
    assert!((120..=170).all(|s| rig.served_at(s)), "served again");
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
            Some(Duration::from_secs(40)),
            Scope::Grant(Grant::TokenExchange),
        )
        .await
        .unwrap();
    rig.run_to(170).await;
    // Retry-After 40 s lifts both retry delays (26 s) to 40 s.
    let (mut requests, mut outcomes) = failing_then_ok(&[42, 82, 122]);
    requests.push((164, 1));
    outcomes.push((164, true));
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
    rig.run_to(150).await;
    // Sent at 42, timed out at 47 (5 s timeout), retried 26 s later: sent at 73, timed
    // out at 78, sent at 104 and answered.
    assert_eq!(rig.requests, [(42, 1), (73, 1), (104, 1), (146, 1)]);
    assert_eq!(
        rig.outcomes,
        [(47, false), (78, false), (104, true), (146, true)]
    );
    assert_eq!(
        rig.handle().snapshot().last_error_reason.as_deref(),
        Some("timeout")
    );
    assert!((1..=59).all(|s| rig.served_at(s)) && !rig.served_at(60));
    assert!((104..=150).all(|s| rig.served_at(s)));
    rig.stop().await;
}

/// Faults that spoil a 200 answer: each costs one attempt, retried with backoff.
async fn spoilt_answers(spoil: impl FnOnce(&emulator::Faults), reason: &str) {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(30).await;
    spoil(&rig.emu.faults());
    rig.run_to(140).await;
    let (mut requests, mut outcomes) = failing_then_ok(&[42, 68, 94]);
    requests.push((136, 1));
    outcomes.push((136, true));
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
    // Connections refused: nothing reaches the emulator; attempts at 42 and 68, the
    // token expires at 60.
    assert_eq!(rig.requests, []);
    let failed = [42, 68];
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
    // Next attempt 26 s after the last: 94, one exchange; then the normal schedule.
    assert_eq!(rig.requests, [(94, 1), (136, 1)]);
    assert_eq!(rig.outcomes[2..], [(94, true), (136, true)]);
    assert!(rig.served_at(94));
    rig.stop().await;
}
