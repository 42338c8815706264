//! The fleet simulation shared by `benches/fleet.rs` (10,000 agents) and `tests/fleet.rs`
//! (a few hundred, asserting the bounds): many copies of the agent's real refresh loop in
//! one process, against the real emulator, on tokio's paused clock.
//!
//! Each simulated agent is what `agent::start` assembles minus the socket server: its own
//! [`Flow`] (own refresh-token file, own `did`/serial number, own JWKS verifier and access
//! token), its own [`Refresher`] and its own token cache file (so a reboot restores what a
//! real device would). Shared, as a simplification that does not change *when* requests are
//! made: the device key (RSA signing is the dominant cost) and one HTTP client. Randomness
//! is seeded (per agent and per boot), so a run is reproducible.
//!
//! Demand profiles: nothing ever asks; one request per device per hour (at a random phase);
//! one per second; an MQTT session (a [`DemandGuard`] held for the agent's life).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_precision_loss
)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use asset_agent::actor::Identity;
use asset_agent::backoff::Jitter;
use asset_agent::config::{self, RefreshPolicy};
use asset_agent::keys::{FileKey, Signer};
use asset_agent::salesforce::Upstream;
use asset_agent::salesforce::subject::{Credentials, RefreshToken};
use asset_agent::salesforce::verify::Verifier;
use asset_agent::skew::Skew;
use asset_agent::token::cache::{Cache, Owner};
use asset_agent::token::flow::Flow;
use asset_agent::token::refresher::{DemandGuard, Handle, Policy, Refresher};
use emulator::{self, Emulator, Endpoint, Fault, Grant, Scope, Stats};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use wire::clock::Clock;
use wire::oauth::AssetFields;

const DEVICE_KEY: &[u8] = include_bytes!("../data/device-key.pem");
const EMULATOR_KEY: &str = include_str!("../data/emulator-key.pem");
const OTHER_KEY: &str = include_str!("../data/other-key.pem");

/// Who asks for tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Never,
    Hourly,
    EverySecond,
    Mqtt,
}

impl Profile {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "never" => Self::Never,
            "hourly" => Self::Hourly,
            "every-second" => Self::EverySecond,
            "mqtt" => Self::Mqtt,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Never => "never asked",
            Self::Hourly => "once an hour",
            Self::EverySecond => "every second",
            Self::Mqtt => "MQTT on",
        }
    }
}

/// A run's settings (simulated seconds).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub agents: usize,
    pub token_lifetime: u64,
    pub mode: RefreshPolicy,
    pub profile: Profile,
    /// The fleet boots spread uniformly over `0..boot_window`.
    pub boot_window: u64,
    /// The reference phase for the steady rate.
    pub steady: (u64, u64),
    /// Every Salesforce request answered 503 in this span.
    pub outage: Option<(u64, u64)>,
    /// At `.0` every agent stops; `.1` s later all boot within `.2` s.
    pub reboot: Option<(u64, u64, u64)>,
    pub end: u64,
    pub seed: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            agents: 1000,
            token_lifetime: 60,
            mode: RefreshPolicy::OnDemand,
            profile: Profile::Mqtt,
            boot_window: 60,
            steady: (120, 300),
            outage: Some((300, 900)),
            reboot: Some((1500, 30, 1)),
            end: 2100,
            seed: 7,
        }
    }
}

/// One row per simulated second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Row {
    pub t: u64,
    pub total: u64,
    pub refresh_grant: u64,
    pub exchange: u64,
    pub jwks: u64,
    pub faulted: u64,
    pub live: usize,
    pub running: usize,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: Vec<Row>,
    /// Token requests answered with a token, and of those, tokens past their `exp`.
    pub served: u64,
    pub expired_served: u64,
    /// Requests answered "unavailable".
    pub unavailable: u64,
    /// Held tokens seen past their `exp` at a per-second sample.
    pub expired_held: u64,
    /// Refresh failures the agents counted after the outage (must be 0).
    pub failures_after_outage: u64,
}

/// Uniform randomness from a seed (splitmix64), one stream per agent and boot.
pub struct Seeded(AtomicU64);

impl Seeded {
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }
    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Jitter for Seeded {
    fn unit(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct World {
    emu: Emulator,
    upstream: Upstream,
    key: Arc<dyn Signer>,
    clock: Clock,
    dir: PathBuf,
    scenario: Scenario,
}

struct Agent {
    cancel: CancellationToken,
    handle: Option<Handle>,
    task: Option<JoinHandle<()>>,
    demand: Option<DemandGuard>,
    boots: u64,
}

fn agent_dir(world: &World, i: usize) -> PathBuf {
    world.dir.join(format!("agent-{i:05}"))
}

fn build(world: &World, i: usize, boot: u64) -> (Refresher, Handle) {
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
        mode: world.scenario.mode,
        demand_window: config::DEFAULT_DEMAND_WINDOW,
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
    let seed = world.scenario.seed ^ ((i as u64) << 20) ^ (boot << 48);
    Refresher::new(flow, policy, Box::new(Seeded::new(seed)), Some(cache))
}

fn boot(world: &World, agent: &mut Agent, i: usize) {
    let (refresher, handle) = build(world, i, agent.boots);
    agent.boots += 1;
    agent.cancel = CancellationToken::new();
    agent.task = Some(tokio::spawn(refresher.run(agent.cancel.clone())));
    if world.scenario.profile == Profile::Mqtt {
        agent.demand = Some(handle.hold());
    }
    agent.handle = Some(handle);
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

#[derive(Default)]
struct Served {
    served: AtomicU64,
    expired: AtomicU64,
    unavailable: AtomicU64,
}

/// Runs `sc` on the current (paused-clock) runtime.
pub async fn simulate(sc: &Scenario) -> Outcome {
    asset_agent::crypto::install();
    let clock = Clock::tokio_driven();
    let emu_cfg = emulator::Config {
        signing_key_pem: Some(EMULATOR_KEY.to_owned().into()),
        impostor_key_pem: Some(OTHER_KEY.to_owned().into()),
        asset_token_lifetime: Duration::from_secs(sc.token_lifetime),
        clock: clock.clone(),
        ..emulator::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emu = Emulator::start(emu_cfg, listener).await.unwrap();
    let url = asset_agent::config::Url::parse(emu.base_url()).unwrap();
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
        clock: clock.clone(),
        dir: base.path().to_owned(),
        scenario: sc.clone(),
    };
    let rng = Seeded::new(sc.seed);
    let mut agents: Vec<Agent> = Vec::with_capacity(sc.agents);
    // When each device asks, as an offset within the hour (hourly profile).
    let mut phase = Vec::with_capacity(sc.agents);
    for i in 0..sc.agents {
        let dir = agent_dir(&world, i);
        std::fs::create_dir_all(&dir).unwrap();
        let rt = world.emu.mint_refresh_token().unwrap();
        let file = dir.join("refresh-token");
        std::fs::write(&file, rt.expose()).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        agents.push(Agent {
            cancel: CancellationToken::new(),
            handle: None,
            task: None,
            demand: None,
            boots: 0,
        });
        phase.push(rng.next_u64() % 3600);
    }
    let mut boots: Vec<(Duration, usize)> = (0..sc.agents)
        .map(|i| (Duration::from_secs(sc.boot_window).mul_f64(rng.unit()), i))
        .collect();
    boots.sort();
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut next_boot = boots.into_iter().peekable();
    let mut out = Outcome::default();
    let served = Arc::new(Served::default());
    let mut last = counters(&world.emu.stats());
    let mut outage_on = false;
    let mut failed_at_outage_end = 0;
    for sec in 0..=sc.end {
        let second_end = at(sec + 1);
        if let Some((stop, down, spread)) = sc.reboot {
            if sec == stop {
                for a in &mut agents {
                    a.cancel.cancel();
                    if let Some(t) = a.task.take() {
                        t.abort();
                    }
                    a.demand = None;
                    a.handle = None;
                }
            }
            if sec == stop + down {
                let spread = Duration::from_secs(spread);
                let mut order: Vec<(Duration, usize)> = (0..sc.agents)
                    .map(|i| (at(sec) - t0 + spread.mul_f64(rng.unit()), i))
                    .collect();
                order.sort();
                next_boot = order.into_iter().peekable();
            }
        }
        if let Some((from, to)) = sc.outage {
            if sec == from && !outage_on {
                let fault = Fault::Fail {
                    count: u32::MAX,
                    status: 503,
                    retry_after_secs: None,
                    scope: Scope::Any,
                };
                world.emu.faults().inject(fault).await.unwrap();
                outage_on = true;
            }
            if sec == to && outage_on {
                world.emu.faults().inject(Fault::Clear).await.unwrap();
                outage_on = false;
                failed_at_outage_end = failures(&agents);
            }
        }
        // Boots due within this second, in time order.
        while let Some(when) = next_boot.peek().map(|(d, _)| t0 + *d) {
            if when >= second_end {
                break;
            }
            sleep_until(when).await;
            let (_, i) = next_boot.next().unwrap();
            boot(&world, &mut agents[i], i);
        }
        // This second's token requests.
        for (i, a) in agents.iter().enumerate() {
            let Some(h) = &a.handle else { continue };
            let asks = match sc.profile {
                Profile::EverySecond => true,
                Profile::Hourly => sec % 3600 == phase[i],
                Profile::Never | Profile::Mqtt => false,
            };
            if asks {
                let h = h.clone();
                let served = served.clone();
                let clock = clock.clone();
                tokio::spawn(async move {
                    match h
                        .token_at(
                            tokio::time::Instant::now(),
                            Duration::ZERO,
                            config::DEFAULT_MIN_TTL_WAIT,
                        )
                        .await
                    {
                        Ok(t) => {
                            served.served.fetch_add(1, Ordering::Relaxed);
                            if t.claims.exp.saturating_mul(1000) <= clock.unix_ms() {
                                served.expired.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            served.unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
        sleep_until(second_end).await;
        let now = counters(&world.emu.stats());
        let now_ms = clock.unix_ms();
        let mut live = 0;
        for a in &agents {
            let Some(h) = &a.handle else { continue };
            if let Some(t) = asset_agent::token::live(&h.current) {
                live += 1;
                if t.claims.exp.saturating_mul(1000) <= now_ms {
                    out.expired_held += 1;
                }
            }
        }
        out.rows.push(Row {
            t: sec,
            total: now.0 - last.0,
            refresh_grant: now.1 - last.1,
            exchange: now.2 - last.2,
            jwks: now.3 - last.3,
            faulted: now.4 - last.4,
            live,
            running: agents.iter().filter(|a| a.task.is_some()).count(),
        });
        last = now;
    }
    // Failures counted after the outage, by agents that were not rebooted since: none
    // expected (a virtual-time artefact such as a spurious timeout would show here).
    if sc.outage.is_some() && sc.reboot.is_none() {
        out.failures_after_outage = failures(&agents) - failed_at_outage_end;
    } else if sc.reboot.is_some() {
        out.failures_after_outage = failures(&agents);
    }
    for a in &agents {
        a.cancel.cancel();
    }
    for a in &mut agents {
        a.demand = None;
        if let Some(t) = a.task.take() {
            let _ = t.await;
        }
    }
    out.served = served.served.load(Ordering::Relaxed);
    out.expired_served = served.expired.load(Ordering::Relaxed);
    out.unavailable = served.unavailable.load(Ordering::Relaxed);
    out
}

fn failures(agents: &[Agent]) -> u64 {
    agents
        .iter()
        .filter_map(|a| a.handle.as_ref())
        .map(|h| h.snapshot().refreshes_failed)
        .sum()
}

/// Mean upstream rate over `from..to`.
pub fn mean(rows: &[Row], from: u64, to: u64) -> f64 {
    let sel: Vec<_> = rows.iter().filter(|r| r.t >= from && r.t < to).collect();
    sel.iter().map(|r| r.total as f64).sum::<f64>() / sel.len().max(1) as f64
}

/// The highest mean rate over any `bin`-second window within `from..to`, and where.
pub fn peak(rows: &[Row], from: u64, to: u64, bin: u64) -> (f64, u64) {
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

/// Seconds after `from` until at least `share` of `agents` hold a live token.
pub fn time_to_share(rows: &[Row], from: u64, agents: usize, share: f64) -> Option<u64> {
    rows.iter()
        .filter(|r| r.t >= from)
        .find(|r| r.live as f64 >= share * agents as f64)
        .map(|r| r.t - from)
}

/// Token exchanges per device per day over `from..to`.
pub fn exchanges_per_day(rows: &[Row], from: u64, to: u64, agents: usize) -> f64 {
    let n: u64 = rows
        .iter()
        .filter(|r| r.t >= from && r.t < to)
        .map(|r| r.exchange)
        .sum();
    n as f64 / agents as f64 * 86_400.0 / (to - from) as f64
}

/// The phases of `sc` to check, as `(name, from, to)`.
pub fn phases(sc: &Scenario) -> Vec<(&'static str, u64, u64)> {
    let mut v = vec![("steady", sc.steady.0, sc.steady.1)];
    let mut cursor = sc.steady.1;
    if let Some((from, to)) = sc.outage {
        v.push(("outage", from, to));
        cursor = to;
    }
    if let Some((stop, _, _)) = sc.reboot {
        v.push(("recovery", cursor, stop));
        v.push(("reboot", stop, sc.end));
    } else if cursor < sc.end {
        v.push(("recovery", cursor, sc.end));
    }
    v
}
