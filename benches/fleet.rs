//! Fleet simulation (docs/benchmarks.md): many copies of the agent's real refresh scheduler in
//! one process, against the real built-in emulator, on tokio's paused clock, through an
//! upstream outage and a mass reboot. Prints a summary and writes the upstream request rate
//! per simulated second as CSV.
//!
//! Each simulated agent is what `agent::start` assembles minus the socket server: its own
//! [`Flow`] (own refresh-token file, own `did`/serial number, own JWKS verifier and access
//! token), its own [`Refresher`] with the default [`Policy`] and real OS jitter, and its own
//! token cache file (so a reboot restores what a real device would). Shared across agents, as
//! a simplification that does not change *when* requests are made: the device key (RSA
//! signing is the dominant cost) and one HTTP client (connection pool) to the emulator.
//!
//! Time is virtual (tokio `start_paused`): timers fire in order and the clock jumps when
//! every task is idle, so 35 simulated minutes take as long as the CPU work they contain.
//! Wall time given to JWTs follows the same clock (`Clock::tokio_driven`) on both sides.
//!
//! Timeline (simulated seconds, all configurable):
//! - 0..60: the fleet boots, spread uniformly (a fleet that has been running a while);
//! - 120..300: steady state, the reference rate;
//! - 300..900: upstream outage: every Salesforce request is answered 503 (no Retry-After);
//! - 1500: mass reboot: every agent stops; 30 s later all boot within one second
//!   (uniformly; `--boot-spread SECS` widens that), restoring their token cache from disk.
//!   (One second rather than one instant keeps the number of simultaneously open loopback
//!   connections under the file-descriptor limit; the 1 s bins look the same either way.)
//! - 2100: end.
//!
//! Run: `cargo bench --bench fleet -- --agents 1000 --csv docs/fleet-1k.csv`
//! (`scripts/bench.sh fleet` runs 1k and 10k and plots). Without `--bench` on its command
//! line (as under `cargo test --benches`) it does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // real processes on the real clock: measured, not scheduled

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use asset_agent::actor::Identity;
use asset_agent::backoff::{Jitter as _, OsJitter};
use asset_agent::config;
use asset_agent::keys::{FileKey, Signer};
use asset_agent::salesforce::Upstream;
use asset_agent::salesforce::subject::{Credentials, RefreshToken};
use asset_agent::salesforce::verify::Verifier;
use asset_agent::skew::Skew;
use asset_agent::token::cache::{Cache, Owner};
use asset_agent::token::flow::Flow;
use asset_agent::token::refresher::{Handle, Policy, Refresher};
use emulator::{self, Emulator, Endpoint, Fault, Grant, Scope, Stats};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use wire::clock::Clock;
use wire::oauth::AssetFields;

const DEVICE_KEY: &[u8] = include_bytes!("../tests/data/device-key.pem");
const EMULATOR_KEY: &str = include_str!("../tests/data/emulator-key.pem");
const OTHER_KEY: &str = include_str!("../tests/data/other-key.pem");

#[derive(Debug, Clone)]
struct Args {
    agents: usize,
    token_lifetime: u64,
    boot_window: u64,
    steady: (u64, u64),
    outage: (u64, u64),
    reboot_at: u64,
    reboot_down: u64,
    boot_spread: u64,
    end: u64,
    csv: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            agents: 1000,
            token_lifetime: 60,
            boot_window: 60,
            steady: (120, 300),
            outage: (300, 900),
            reboot_at: 1500,
            reboot_down: 30,
            boot_spread: 1,
            end: 2100,
            csv: None,
        }
    }
}

fn parse_args() -> Option<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if !argv.iter().any(|a| a == "--bench") {
        return None;
    }
    let mut a = Args::default();
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut num = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--bench" => {}
            "--agents" => a.agents = usize::try_from(num()).unwrap(),
            "--token-lifetime" => a.token_lifetime = num(),
            "--outage-start" => a.outage.0 = num(),
            "--outage-end" => a.outage.1 = num(),
            "--reboot-at" => a.reboot_at = num(),
            "--reboot-down" => a.reboot_down = num(),
            "--boot-spread" => a.boot_spread = num(),
            "--end" => a.end = num(),
            "--csv" => a.csv = it.next().map(PathBuf::from),
            other => panic!("unknown argument {other}"),
        }
    }
    Some(a)
}

/// Everything the simulated agents share.
struct World {
    emu: Emulator,
    upstream: Upstream,
    key: Arc<dyn Signer>,
    clock: Clock,
    dir: PathBuf,
}

/// One simulated device: its refresher task and what it publishes.
struct Agent {
    cancel: CancellationToken,
    handle: Option<Handle>,
    task: Option<JoinHandle<()>>,
}

fn agent_dir(world: &World, i: usize) -> PathBuf {
    world.dir.join(format!("agent-{i:05}"))
}

/// What `agent::start` builds for one device, with the defaults of `config`.
fn build(world: &World, i: usize) -> (Refresher, Handle) {
    let dir = agent_dir(world, i);
    let did = format!("device-{i:05}");
    let url = world.emu.base_url().to_owned();
    let credentials = Credentials::RefreshToken(RefreshToken::new(
        emulator::DEFAULT_CLIENT_ID.into(),
        None,
        dir.join("refresh-token"),
    ));
    let verifier = Verifier::new(
        Verifier::jwks(),
        vec![emulator::DEFAULT_AUDIENCE.into()],
        Some(url.clone()),
        config::DEFAULT_LEEWAY,
    );
    let verification = verifier.fingerprint();
    let identity = Identity {
        device_id: did.clone(),
        token_name: format!("Asset Token: {did}"),
        asset: AssetFields {
            name: Some(format!("Pump {i}")),
            serial_number: Some(format!("SN-{i:05}")),
            ..AssetFields::default()
        },
    };
    let flow = Flow::new(
        world.upstream.clone(),
        credentials,
        world.key.clone(),
        identity,
        verifier,
        world.clock.clone(),
        tokio::sync::broadcast::channel(1).0,
    );
    let policy = Policy {
        refresh_at: config::DEFAULT_REFRESH_AT,
        backoff_cap: config::DEFAULT_BACKOFF_MAX,
        attempt_budget: Policy::budget_for(config::DEFAULT_TIMEOUT),
    };
    let cache = Cache::new(
        &dir,
        Owner {
            instance_url: url,
            client_id: emulator::DEFAULT_CLIENT_ID.into(),
            device_id: did,
            key_thumbprint: world.key.public_jwk().kid.clone(),
            verification,
        },
        world.key.clone(),
    );
    Refresher::new(flow, policy, Box::new(OsJitter), Some(cache))
}

/// Boots agent `i` now.
fn boot(world: &World, agent: &mut Agent, i: usize) {
    let (refresher, handle) = build(world, i);
    agent.cancel = CancellationToken::new();
    agent.task = Some(tokio::spawn(refresher.run(agent.cancel.clone())));
    agent.handle = Some(handle);
}

/// One row per simulated second.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    t: u64,
    total: u64,
    refresh_grant: u64,
    exchange: u64,
    jwks: u64,
    faulted: u64,
    live: usize,
    running: usize,
}

fn counters(s: &Stats) -> (u64, u64, u64, u64, u64) {
    (
        s.total,
        s.grant(Grant::RefreshToken),
        s.grant(Grant::TokenExchange),
        s.endpoint(Endpoint::Jwks),
        s.faulted,
    )
}

fn main() {
    let Some(args) = parse_args() else {
        println!("fleet: simulation skipped (run it with `cargo bench --bench fleet`)");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let rows = rt.block_on(simulate(&args));
    let cpu = started.elapsed();
    summarise(&args, &rows, cpu);
    if let Some(path) = &args.csv {
        write_csv(path, &rows);
        println!("per-second series written to {}", path.display());
    }
}

async fn simulate(args: &Args) -> Vec<Row> {
    asset_agent::crypto::install();
    let clock = Clock::tokio_driven();
    let emu_cfg = emulator::Config {
        signing_key_pem: Some(EMULATOR_KEY.to_owned().into()),
        impostor_key_pem: Some(OTHER_KEY.to_owned().into()),
        asset_token_lifetime: Duration::from_secs(args.token_lifetime),
        clock: clock.clone(),
        ..emulator::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emu = Emulator::start(emu_cfg, listener).await.unwrap();
    let url: reqwest::Url = emu.base_url().parse().unwrap();
    let upstream = Upstream::new(
        &url,
        None,
        config::DEFAULT_TIMEOUT,
        clock.clone(),
        Arc::new(Skew::default()),
    )
    .unwrap();
    // State directories on tmpfs when there is one: each agent fsyncs its cache per refresh.
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let world = World {
        emu,
        upstream,
        key: Arc::new(FileKey::from_pem(Path::new("device-key.pem"), DEVICE_KEY).unwrap()),
        clock,
        dir: base.path().to_owned(),
    };
    let mut agents: Vec<Agent> = Vec::with_capacity(args.agents);
    for i in 0..args.agents {
        let dir = agent_dir(&world, i);
        std::fs::create_dir_all(&dir).unwrap();
        let rt = world.emu.mint_refresh_token().unwrap();
        std::fs::write(dir.join("refresh-token"), rt.expose()).unwrap();
        std::fs::set_permissions(
            dir.join("refresh-token"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        agents.push(Agent {
            cancel: CancellationToken::new(),
            handle: None,
            task: None,
        });
    }

    // Boot offsets within the initial window, sorted so one loop can start them in order.
    let mut boots: Vec<(Duration, usize)> = (0..args.agents)
        .map(|i| {
            let at = Duration::from_secs(args.boot_window).mul_f64(OsJitter.unit());
            (at, i)
        })
        .collect();
    boots.sort();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut next_boot = boots.into_iter().peekable();
    let mut rows = Vec::with_capacity(usize::try_from(args.end).unwrap() + 1);
    let mut last = counters(&world.emu.stats());
    let mut outage_on = false;
    let mut rebooting: Option<Vec<(Duration, usize)>> = None;
    for sec in 0..=args.end {
        // Everything due within this second, in time order, then the sample at its end.
        let second_end = at(sec + 1);
        loop {
            let boot_due = next_boot.peek().map(|(d, _)| t0 + *d);
            match boot_due {
                Some(when) if when < second_end => {
                    sleep_until(when).await;
                    let (_, i) = next_boot.next().unwrap();
                    boot(&world, &mut agents[i], i);
                }
                _ => break,
            }
        }
        if sec == args.outage.0 && !outage_on {
            world
                .emu
                .faults()
                .inject(Fault::Fail {
                    count: u32::MAX,
                    status: 503,
                    retry_after_secs: None,
                    scope: Scope::Any,
                })
                .await
                .unwrap();
            outage_on = true;
        }
        if sec == args.outage.1 && outage_on {
            world.emu.faults().inject(Fault::Clear).await.unwrap();
            outage_on = false;
        }
        if sec == args.reboot_at {
            for a in &mut agents {
                a.cancel.cancel();
                if let Some(t) = a.task.take() {
                    t.abort();
                }
                a.handle = None;
            }
            let spread = Duration::from_secs(args.boot_spread);
            let mut order: Vec<(Duration, usize)> = (0..args.agents)
                .map(|i| (spread.mul_f64(OsJitter.unit()), i))
                .collect();
            order.sort();
            rebooting = Some(order);
        }
        if sec == args.reboot_at + args.reboot_down
            && let Some(order) = rebooting.take()
        {
            let base_at = at(sec);
            let mut v: Vec<(Duration, usize)> = order
                .into_iter()
                .map(|(d, i)| (base_at - t0 + d, i))
                .collect();
            v.sort();
            next_boot = v.into_iter().peekable();
            // Boots due in this very second happen now (a spread of 0 boots all at once).
            loop {
                match next_boot.peek().map(|(d, _)| t0 + *d) {
                    Some(when) if when < second_end => {
                        sleep_until(when).await;
                        let (_, i) = next_boot.next().unwrap();
                        boot(&world, &mut agents[i], i);
                    }
                    _ => break,
                }
            }
        }
        sleep_until(second_end).await;
        let now = counters(&world.emu.stats());
        let live = agents
            .iter()
            .filter(|a| {
                a.handle
                    .as_ref()
                    .is_some_and(|h| asset_agent::token::live(&h.current).is_some())
            })
            .count();
        let running = agents.iter().filter(|a| a.task.is_some()).count();
        rows.push(Row {
            t: sec,
            total: now.0 - last.0,
            refresh_grant: now.1 - last.1,
            exchange: now.2 - last.2,
            jwks: now.3 - last.3,
            faulted: now.4 - last.4,
            live,
            running,
        });
        last = now;
    }
    for a in &agents {
        a.cancel.cancel();
    }
    for a in &mut agents {
        if let Some(t) = a.task.take() {
            let _ = t.await;
        }
    }
    // Failures the agents counted outside the injected outage would mean the simulation
    // itself misbehaved (for instance a virtual-time timeout).
    let failed: u64 = agents
        .iter()
        .filter_map(|a| a.handle.as_ref())
        .map(|h| h.snapshot().refreshes_failed)
        .sum();
    println!("refresh failures counted by the agents since the reboot: {failed}");
    rows
}

fn mean(rows: &[Row], from: u64, to: u64) -> f64 {
    let sel: Vec<_> = rows.iter().filter(|r| r.t >= from && r.t < to).collect();
    sel.iter().map(|r| r.total as f64).sum::<f64>() / sel.len().max(1) as f64
}

/// The highest mean rate over any `bin`-second window within `from..to`.
fn peak(rows: &[Row], from: u64, to: u64, bin: u64) -> (f64, u64) {
    let mut best = (0.0, from);
    for start in from..=to.saturating_sub(bin) {
        let sel: Vec<_> = rows
            .iter()
            .filter(|r| r.t >= start && r.t < start + bin)
            .collect();
        if sel.len() as u64 != bin {
            continue;
        }
        let rate = sel.iter().map(|r| r.total as f64).sum::<f64>() / bin as f64;
        if rate > best.0 {
            best = (rate, start);
        }
    }
    best
}

fn summarise(args: &Args, rows: &[Row], took: Duration) {
    let steady = mean(rows, args.steady.0, args.steady.1);
    println!(
        "fleet of {} agents, {} s tokens, {} simulated s in {:.1} s of wall time",
        args.agents,
        args.token_lifetime,
        args.end,
        took.as_secs_f64()
    );
    println!(
        "steady upstream rate ({}..{} s): {steady:.2} req/s",
        args.steady.0, args.steady.1
    );
    let phases = [
        ("outage", args.outage.0, args.outage.1),
        ("recovery", args.outage.1, args.reboot_at),
        ("reboot", args.reboot_at, args.end),
        ("after warm-up", args.steady.0, args.end),
    ];
    for (name, from, to) in phases {
        let (p1, t1) = peak(rows, from, to, 1);
        let (p10, t10) = peak(rows, from, to, 10);
        let (p60, t60) = peak(rows, from, to, 60);
        println!(
            "{name:>13} {from:>5}..{to:<5}: peak 1 s {p1:>8.1} req/s (x{:.2} at {t1}), 10 s {p10:>8.1} (x{:.2} at {t10}), 60 s {p60:>8.1} (x{:.2} at {t60})",
            p1 / steady,
            p10 / steady,
            p60 / steady
        );
    }
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
