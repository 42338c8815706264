//! Serving during trouble: a `min_ttl` that cannot be met is answered 503 with
//! `Retry-After` within the bounded wait (2 s), never after an upstream timeout; one that
//! can be met triggers exactly one exchange however many callers ask.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::get;
use common::rig::Rig;
use emulator::{Grant, Scope};
use tokio::time::Instant;

const WAIT_2S: &str = "min_ttl_wait = \"2s\"";

/// GET `path`, with its virtual duration.
async fn timed(rig: &Rig, path: &str) -> (asset_agent::client::Response, Duration) {
    let started = Instant::now();
    let r = get(&rig.dev.socket(), path).await;
    (r, started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn min_ttl_with_salesforce_down_is_503_within_the_wait() {
    let mut rig = Rig::start(|_| {}, WAIT_2S, None).await;
    rig.run_to(30).await;
    rig.emu.faults().stop_accepting().await;
    // 30 s left, 45 wanted.
    let (r, took) = timed(&rig, "/v1/token?min_ttl=45").await;
    assert_eq!(r.status, 503);
    assert_eq!(took, Duration::from_secs(2));
    assert!(r.headers.contains_key("retry-after"));
    // Without min_ttl the held token is still served at once.
    let (r, took) = timed(&rig, "/v1/token").await;
    assert_eq!((r.status.as_u16(), took), (200, Duration::ZERO));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn min_ttl_never_waits_for_an_upstream_timeout() {
    let mut rig = Rig::start(|_| {}, WAIT_2S, None).await;
    rig.run_to(30).await;
    let exchange = Scope::Grant(Grant::TokenExchange);
    rig.emu
        .faults()
        .delay(Duration::from_secs(60), Some(1), exchange)
        .await
        .unwrap();
    let (r, took) = timed(&rig, "/v1/token?min_ttl=45").await;
    // The exchange hangs (upstream timeout 5 s): the caller gets its 503 after 2 s.
    assert_eq!(r.status, 503);
    assert_eq!(took, Duration::from_secs(2));
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(rig.emu.grant_count(Grant::TokenExchange), 2);
    // The attempt times out at +5 s; the retry budget puts the next attempt 26 s later,
    // and a min_ttl request meanwhile is answered 503 at once, without an exchange.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (r, took) = timed(&rig, "/v1/token?min_ttl=45").await;
    assert_eq!((r.status.as_u16(), took), (503, Duration::ZERO));
    assert_eq!(rig.emu.grant_count(Grant::TokenExchange), 2);
    tokio::time::sleep(Duration::from_secs(26)).await;
    let (r, _) = timed(&rig, "/v1/token?min_ttl=45").await;
    assert_eq!(r.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(body["expires_in"].as_u64().unwrap() >= 45);
    assert_eq!(rig.emu.grant_count(Grant::TokenExchange), 3);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_min_ttl_callers_share_one_exchange() {
    let mut rig = Rig::start(|_| {}, WAIT_2S, None).await;
    rig.run_to(30).await;
    // Ask on a whole second (31), so the rig attributes the exchange to it.
    tokio::time::sleep_until(rig.r0 + Duration::from_secs(31)).await;
    let before = rig.emu.stats().total;
    let socket = rig.dev.socket();
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let socket = socket.clone();
            tokio::spawn(async move { get(&socket, "/v1/token?min_ttl=45").await })
        })
        .collect();
    let mut tokens = Vec::new();
    for c in callers {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(body["expires_in"].as_u64().unwrap() >= 45);
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1, "one new token for everyone");
    assert_eq!(
        rig.emu.stats().total - before,
        1,
        "single flight: one exchange"
    );
    // No stray second refresh afterwards: the next one is on schedule (31 + 42).
    rig.run_to(80).await;
    assert_eq!(rig.requests, [(31, 1), (73, 1)]);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn min_ttl_beyond_any_token_lifetime_is_refused_at_once() {
    let mut rig = Rig::start(|_| {}, WAIT_2S, None).await;
    rig.run_to(10).await;
    let before = rig.emu.stats().total;
    for _ in 0..5 {
        let (r, took) = timed(&rig, "/v1/token?min_ttl=120").await;
        assert_eq!((r.status.as_u16(), took), (503, Duration::ZERO));
    }
    assert_eq!(
        rig.emu.stats().total,
        before,
        "no refresh for an impossible min_ttl"
    );
    rig.stop().await;
}

/// With no valid token and the refresh loop backing off past `min_ttl_wait`, a plain
/// `GET /v1/token` is answered 503 at once instead of after the whole wait.
#[tokio::test(start_paused = true)]
async fn no_token_while_backing_off_is_503_at_once() {
    let mut rig = Rig::start(|_| {}, WAIT_2S, None).await;
    rig.run_to(30).await;
    rig.emu.faults().stop_accepting().await;
    // The token (60 s) has expired and attempts keep failing, with a growing backoff.
    rig.run_to(150).await;
    let mut checked = 0;
    for _ in 0..20 {
        let snap = rig.handle().snapshot();
        let next = snap.next_refresh.unwrap();
        let (r, took) = timed(&rig, "/v1/token").await;
        assert_eq!(r.status, 503);
        assert!(r.headers.contains_key("retry-after"));
        if next > Instant::now() + Duration::from_secs(2) {
            assert_eq!(
                took,
                Duration::ZERO,
                "next attempt in {:?}",
                next - Instant::now()
            );
            checked += 1;
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    assert!(
        checked > 5,
        "only {checked} requests fell outside an attempt"
    );
    rig.stop().await;
}
