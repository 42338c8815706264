//! The fleet simulation, small: a few hundred agents on tokio's paused clock against the
//! real emulator, asserting the bounds `benches/fleet.rs` reports at 10,000 agents:
//! upstream peak/steady <= 2 in every 10 s window of every phase, 50 % / 99 % of the fleet
//! holding a token within 30 s / 60 s of an outage's end, no expired token held or served,
//! and the exchanges per device per day of the demand profiles.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/fleet.rs"]
mod fleet;

use asset_agent::config::RefreshPolicy;
use fleet::{Profile, Scenario, exchanges_per_day, mean, peak, phases, simulate, time_to_share};

#[tokio::test(start_paused = true)]
async fn outage_and_mass_reboot_stay_within_twice_the_steady_rate_and_recover_fast() {
    let sc = Scenario {
        agents: 400,
        profile: Profile::Mqtt,
        mode: RefreshPolicy::OnDemand,
        outage: Some((300, 600)),
        reboot: Some((900, 30, 1)),
        end: 1200,
        ..Scenario::default()
    };
    let out = simulate(&sc).await;
    let steady = mean(&out.rows, sc.steady.0, sc.steady.1);
    // 400 agents, one exchange per ~39 s each.
    assert!((8.0..13.0).contains(&steady), "steady rate {steady}");
    for (name, from, to) in phases(&sc) {
        let (p, at) = peak(&out.rows, from, to, 10);
        let (p1, _) = peak(&out.rows, from, to, 1);
        eprintln!(
            "{name}: 10 s peak x{:.2}, 1 s peak x{:.2}",
            p / steady,
            p1 / steady
        );
        assert!(
            p / steady <= 2.0,
            "{name}: 10 s peak {p} req/s at {at} s is {:.2}x the steady {steady}",
            p / steady
        );
    }
    let half = time_to_share(&out.rows, 600, sc.agents, 0.5).unwrap();
    let most = time_to_share(&out.rows, 600, sc.agents, 0.99).unwrap();
    eprintln!("after the outage: 50 % in {half} s, 99 % in {most} s");
    assert!(
        half <= 30 && most <= 60,
        "recovery: 50 % in {half} s, 99 % in {most} s"
    );
    // Every device lost its token in the outage (60 s tokens, 300 s outage).
    assert_eq!(out.rows[599].live, 0);
    assert_eq!(out.expired_held, 0);
    assert_eq!(out.failures_after_outage, 0, "failures after the reboot");
}

#[tokio::test(start_paused = true)]
async fn on_demand_costs_per_request_not_per_lifetime() {
    let base = Scenario {
        agents: 200,
        mode: RefreshPolicy::OnDemand,
        outage: None,
        reboot: None,
        ..Scenario::default()
    };
    // Once an hour: the boot's check, then one exchange per request (the token lapses).
    let hourly = Scenario {
        profile: Profile::Hourly,
        end: 7800,
        ..base.clone()
    };
    let out = simulate(&hourly).await;
    let per_day = exchanges_per_day(&out.rows, 600, 7800, hourly.agents);
    assert!(
        (20.0..=30.0).contains(&per_day),
        "once an hour: {per_day} exchanges a day"
    );
    assert!(out.served >= 2 * 200, "{} requests served", out.served);
    assert_eq!(out.expired_served, 0);
    assert_eq!(out.unavailable, 0);
    // Never asked: nothing after the boot's first token.
    let never = Scenario {
        profile: Profile::Never,
        end: 900,
        ..base.clone()
    };
    let out = simulate(&never).await;
    assert_eq!(exchanges_per_day(&out.rows, 120, 900, never.agents), 0.0);
    assert_eq!(out.rows[899].live, 0, "unused tokens lapse");
    // Every second: kept fresh, like eager; nothing expired is ever served.
    let busy = Scenario {
        profile: Profile::EverySecond,
        end: 600,
        ..base
    };
    let out = simulate(&busy).await;
    let per_day = exchanges_per_day(&out.rows, 120, 600, busy.agents);
    assert!(
        (2000.0..2600.0).contains(&per_day),
        "every second: {per_day}"
    );
    assert!(out.rows[120..].iter().all(|r| r.live == busy.agents));
    assert_eq!(out.expired_served, 0);
    assert_eq!(out.unavailable, 0);
}
