//! The fleet-safety rules of the refresh loop, one test each, on paused time with exact
//! upstream request counts: the retry budget (which `?min_ttl=` and an admin refresh do
//! not bypass), the boot spread after a restart, and on-demand lapse and wake-up.
//!
//! Timing with the rig's fixed jitter (1/3) and the emulator's 60 s tokens: the refresh
//! point is at 42 s (80 % - 1/3 of the 30 % band), the refresh interval 39 s (65 % of the
//! lifetime), a retry 26 s after a failure (1/2 + 1/6 of the interval), a budget credit
//! every 19.5 s (2 per interval), and a restart's spread slot 26 s after boot (1/3 of two
//! intervals).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use asset_agent::client;
use common::rig::{self, Rig};
use common::{body, status};
use emulator::{Grant, Scope};
use tokio::time::{Instant, sleep_until};

/// POST with an empty body.
async fn post(socket: &std::path::Path, path: &str) -> client::Response {
    common::post(socket, path, "").await
}

#[tokio::test(start_paused = true)]
async fn outage_retries_stay_within_the_budget_whoever_asks() {
    let mut rig = Rig::start(|_| {}, "", None).await;
    rig.run_to(30).await;
    let outage = rig.emu.faults();
    outage
        .fail_next_with(u32::MAX, 503, None, Scope::Any)
        .await
        .unwrap();
    // The rig asks for a token every second: demand, and from 60 s on (no token) an
    // urgent one; neither adds an attempt to the schedule 42, 42 + 26, 68 + 26.
    rig.run_to(50).await;
    // A min_ttl request while waiting out a failure: 503 at once, no attempt.
    let r = common::get(&rig.dev.socket(), "/v1/token?min_ttl=55").await;
    assert_eq!(r.status.as_u16(), 503);
    rig.run_to(99).await;
    assert_eq!(rig.requests, vec![(42, 1), (68, 1), (94, 1)]);
    assert!((60..=99).all(|s| !rig.served_at(s)));
    let snap = rig.handle().snapshot();
    assert_eq!(snap.attempts, 4, "the first token and three failures");
    let interval = snap.interval.unwrap().as_secs_f64();
    assert!((38.9..=39.0).contains(&interval), "{interval}");

    // An admin's refresh makes one attempt now although the next retry is due at 120...
    sleep_until(rig.r0 + Duration::from_millis(100_200)).await;
    let r = post(&rig.dev.socket(), "/v1/refresh").await;
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(body(&r)["error"], "refresh_failed", "{}", body(&r));
    // ...a second one within 10 s is refused without an attempt...
    rig.run_to(105).await;
    let r = post(&rig.dev.socket(), "/v1/refresh").await;
    assert_eq!(body(&r)["error"], "rate_limited", "{}", body(&r));
    assert!(r.headers.contains_key("retry-after"));
    // ...and one after 10 s finds the budget spent (credits: 1 after the retry at 94,
    // 1.32 - 1 after the admin's at 100.2, + 11.3 s / 19.5 s = 0.9 at 111.5).
    rig.run_to(111).await;
    let r = post(&rig.dev.socket(), "/v1/refresh").await;
    assert_eq!(body(&r)["error"], "retry_budget", "{}", body(&r));
    assert_eq!(r.headers["retry-after"], "2");
    outage.clear();
    // The admin's failed attempt moved the next retry to 100.2 + 26.
    rig.run_to(140).await;
    assert_eq!(
        rig.requests,
        vec![(42, 1), (68, 1), (94, 1), (100, 1), (126, 1)]
    );
    assert!(!rig.served_at(125) && rig.served_at(126) && rig.served_at(140));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_spreads_its_due_refresh_instead_of_calling_at_once() {
    let clock = wire::clock::Clock::tokio_driven();
    let emu = common::emulator(clock.clone(), |_| {}).await;
    let dev = common::Device::new(&emu);
    let config = dev.config(&emu, "", "refresh = \"eager\"");
    let t0 = Instant::now();
    // First boot, nothing cached: the first token is fetched at once.
    let agent = rig::start_agent(&config, clock.clone(), 1.0 / 3.0).await;
    let mut current = agent.running.tokens.current.clone();
    current.wait_for(|t| t.is_some()).await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1));
    let exchanges = || emu.stats().grant(Grant::TokenExchange);
    assert_eq!(exchanges(), 1);
    sleep_until(t0 + Duration::from_secs(20)).await;
    agent.stop().await;
    // Restart at 40 s: the cached token is still live (20 s left) but its refresh point
    // (42 s) falls within the spread of two intervals (78 s): the refresh takes the slot at
    // 1/3 of it, 26 s after boot, not the 2 s a fixed point would give.
    sleep_until(t0 + Duration::from_secs(40)).await;
    let agent = rig::start_agent(&config, clock.clone(), 1.0 / 3.0).await;
    assert!(
        agent.running.tokens.current.borrow().is_some(),
        "served from the cache"
    );
    sleep_until(t0 + Duration::from_millis(65_900)).await;
    assert_eq!(exchanges(), 1, "nothing before the slot");
    assert!(
        agent.running.tokens.current.borrow().is_none()
            || !agent
                .running
                .tokens
                .current
                .borrow()
                .as_ref()
                .unwrap()
                .is_live(),
        "the cached token expired at 60 s"
    );
    sleep_until(t0 + Duration::from_millis(66_900)).await;
    assert_eq!(exchanges(), 2, "one exchange in the slot");
    agent.stop().await;
}

#[tokio::test(start_paused = true)]
async fn on_demand_lets_an_unused_token_lapse_and_wakes_on_the_next_request() {
    let rig = Rig::start(|_| {}, "min_ttl_wait = \"2s\"", None).await;
    let r0 = rig.r0;
    let at = |s: u64| r0 + Duration::from_secs(s);
    let exchanges = || rig.emu.stats().grant(Grant::TokenExchange);
    let socket = rig.dev.socket();
    assert_eq!(exchanges(), 1, "the boot's first token");
    // Nobody asks: no refresh at 42, the token expires at 60.
    sleep_until(at(100)).await;
    assert_eq!(exchanges(), 1);
    assert!(rig.handle().current.borrow().is_none());
    let s = status(&socket).await;
    assert_eq!(s["refresh"]["policy"], "on_demand", "{s}");
    assert_eq!(s["refresh"]["demand"], false, "{s}");
    assert_eq!(s["refresh"]["lapsed"], true, "{s}");
    // (The status request is no token request: still no demand, no exchange.)
    assert_eq!(exchanges(), 1);
    // The next request fetches one at once.
    let r = common::get(&socket, "/v1/token").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(exchanges(), 2);
    // Another request at 120 is within the window (30 s) of the refresh point at 142:
    // kept fresh once; with no request after it, the next point (184) lets it lapse.
    sleep_until(at(120)).await;
    assert_eq!(common::get(&socket, "/v1/token").await.status.as_u16(), 200);
    sleep_until(at(141)).await;
    assert_eq!(exchanges(), 2);
    sleep_until(at(143)).await;
    assert_eq!(exchanges(), 3);
    let s = status(&socket).await;
    assert_eq!(s["refresh"]["exchanges"], 3, "{s}");
    assert_eq!(s["refresh"]["past_refresh_point"], false, "{s}");
    sleep_until(at(250)).await;
    assert_eq!(exchanges(), 3);
    // A holder (a watch stream, the MQTT session) is demand for as long as it lives.
    let guard = rig.handle().hold();
    sleep_until(at(251)).await;
    assert_eq!(exchanges(), 4, "fetched when the holder came");
    sleep_until(at(340)).await;
    assert_eq!(exchanges(), 6, "refreshed at 292 and 334 while held");
    drop(guard);
    sleep_until(at(500)).await;
    assert_eq!(exchanges(), 6, "lapsed again once released");
    rig.stop().await;
}
