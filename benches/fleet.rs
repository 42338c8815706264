//! Fleet simulation: many copies of the agent's real refresh loop in one process, against
//! the real built-in emulator, on tokio's paused clock. The simulation itself is
//! `tests/common/fleet.rs` (shared with the regression test `tests/fleet.rs`); this prints
//! the figures docs/benchmarks.md reports and writes the upstream request rate per
//! simulated second as CSV.
//!
//! Scenarios (simulated seconds; `--scenario`):
//! - `outage-reboot` (default): 0..60 the fleet boots, spread uniformly; 120..300 steady
//!   state, the reference rate; 300..900 every Salesforce request is answered 503;
//!   1500 mass reboot: every agent stops, 30 s later all boot within one second
//!   (`--boot-spread SECS` widens that), restoring their token cache from disk; end 2100.
//! - `demand`: no outage or reboot; `--end` seconds of the `--profile` (never, hourly,
//!   every-second, mqtt), reporting exchanges per device per day after a 600 s warm-up.
//!
//! Run: `cargo bench --bench fleet -- --agents 10000 --csv docs/fleet-10k.csv`
//! (`scripts/bench.sh fleet` runs it and plots). Without `--bench` on its command line (as
//! under `cargo test --benches`) it does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/fleet.rs"]
mod fleet;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use asset_agent::config::RefreshPolicy;
use fleet::{
    Profile, Row, Scenario, exchanges_per_day, mean, peak, phases, simulate, time_to_share,
};

fn parse_args() -> Option<(Scenario, Option<PathBuf>)> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if !argv.iter().any(|a| a == "--bench") {
        return None;
    }
    let mut sc = Scenario::default();
    let mut csv = None;
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = |v: String| -> u64 { v.parse().unwrap_or_else(|_| panic!("not a number: {v}")) };
        match flag.as_str() {
            "--bench" => {}
            "--agents" => sc.agents = usize::try_from(num(value())).unwrap(),
            "--token-lifetime" => sc.token_lifetime = num(value()),
            "--seed" => sc.seed = num(value()),
            "--end" => sc.end = num(value()),
            "--boot-spread" => {
                let s = num(value());
                sc.reboot = sc.reboot.map(|(a, d, _)| (a, d, s));
            }
            "--policy" => {
                sc.mode = match value().as_str() {
                    "eager" => RefreshPolicy::Eager,
                    "on_demand" => RefreshPolicy::OnDemand,
                    other => panic!("unknown policy {other}"),
                }
            }
            "--profile" => {
                let v = value();
                sc.profile = Profile::parse(&v).unwrap_or_else(|| panic!("unknown profile {v}"));
            }
            "--scenario" => match value().as_str() {
                "outage-reboot" => {}
                "demand" => {
                    sc.outage = None;
                    sc.reboot = None;
                    sc.end = 7800;
                }
                other => panic!("unknown scenario {other}"),
            },
            "--csv" => csv = Some(PathBuf::from(value())),
            other => panic!("unknown argument {other}"),
        }
    }
    Some((sc, csv))
}

fn main() {
    let Some((sc, csv)) = parse_args() else {
        println!("fleet: simulation skipped (run it with `cargo bench --bench fleet`)");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let out = rt.block_on(simulate(&sc));
    summarise(&sc, &out, started.elapsed());
    if let Some(path) = &csv {
        write_csv(path, &out.rows);
        println!("per-second series written to {}", path.display());
    }
}

fn summarise(sc: &Scenario, out: &fleet::Outcome, took: Duration) {
    let rows = &out.rows;
    println!(
        "fleet of {} agents, {} s tokens, policy {}, demand: {}, seed {}; {} simulated s in {:.1} s of wall time",
        sc.agents,
        sc.token_lifetime,
        sc.mode.as_str(),
        sc.profile.name(),
        sc.seed,
        sc.end,
        took.as_secs_f64()
    );
    if sc.outage.is_none() && sc.reboot.is_none() {
        let from = 600.min(sc.end / 2);
        println!(
            "exchanges per device per day ({from}..{} s): {:.1}",
            sc.end,
            exchanges_per_day(rows, from, sc.end, sc.agents)
        );
    } else {
        let steady = mean(rows, sc.steady.0, sc.steady.1);
        println!(
            "steady upstream rate ({}..{} s): {steady:.2} req/s; exchanges per device per day there: {:.1}",
            sc.steady.0,
            sc.steady.1,
            exchanges_per_day(rows, sc.steady.0, sc.steady.1, sc.agents)
        );
        let mut worst10: f64 = 0.0;
        for (name, from, to) in phases(sc) {
            let (p1, t1) = peak(rows, from, to, 1);
            let (p10, t10) = peak(rows, from, to, 10);
            let (p60, t60) = peak(rows, from, to, 60);
            worst10 = worst10.max(p10 / steady);
            println!(
                "{name:>9} {from:>5}..{to:<5}: peak 1 s {p1:>8.1} req/s (x{:.2} at {t1}), 10 s {p10:>8.1} (x{:.2} at {t10}), 60 s {p60:>8.1} (x{:.2} at {t60})",
                p1 / steady,
                p10 / steady,
                p60 / steady
            );
        }
        println!("worst 10 s window of any phase: x{worst10:.2} the steady rate");
        if let Some((_, end)) = sc.outage {
            let t = |s| {
                time_to_share(rows, end, sc.agents, s)
                    .map_or("never".into(), |t: u64| format!("{t} s"))
            };
            println!(
                "after the outage: 50 % hold a token after {}, 99 % after {}",
                t(0.5),
                t(0.99)
            );
        }
    }
    println!(
        "token requests served {} (expired: {}), unavailable {}; expired tokens held at a sample: {}",
        out.served, out.expired_served, out.unavailable, out.expired_held
    );
    println!(
        "refresh failures counted by the agents after the outage / since the reboot: {}",
        out.failures_after_outage
    );
    let total: u64 = rows.iter().map(|r| r.total).sum();
    let exchanges: u64 = rows.iter().map(|r| r.exchange).sum();
    println!("upstream requests: {total} ({exchanges} exchanges)");
}

fn write_csv(path: &Path, rows: &[Row]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        f,
        "t,requests,refresh_grant,exchange,jwks,faulted,agents_with_live_token,agents_running"
    )
    .unwrap();
    for r in rows {
        writeln!(
            f,
            "{},{},{},{},{},{},{},{}",
            r.t, r.total, r.refresh_grant, r.exchange, r.jwks, r.faulted, r.live, r.running
        )
        .unwrap();
    }
}
