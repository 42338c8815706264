//! A deterministic test rig on tokio's paused clock: emulator and in-process agent share
//! virtual time, jitter is fixed, and the rig samples the agent once per virtual second,
//! recording when upstream requests arrived and when attempts ended, and checking at every
//! sample that what the socket serves is valid.
//!
//! Timing with [`JITTER`] and the emulator's 60 s tokens: a token received at `r0` is
//! refreshed at `r0 + 42 s` (80 % of the lifetime minus a third of the 30 % band) and
//! expires at `r0 + 60 s`; a failed attempt is retried 26 s later (the retry budget: 2/3 of
//! the 39 s refresh interval), while no token lifetime is known yet the backoff is 1, 2, 4,
//! 8, ... s (the full-jitter ceiling at 1/3).
//! Samples are taken half a second after each whole second since `r0`, when nothing is
//! scheduled, so every event is attributed to its exact second.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, UNIX_EPOCH};

use asset_agent::agent::{self, Options};
use asset_agent::backoff::Jitter;
use asset_agent::token::refresher::Handle;
use emulator::Emulator;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use wire::clock::Clock;

use crate::common::{Agent, Device, emulator, get, verify_with_jwks};

/// The rig's jitter: refresh points at 42 s of 60 s tokens (80 % - 1/3 of the 30 % band),
/// retries 26 s after a failure (1/2 + 1/6 of the 39 s refresh interval).
pub const JITTER: f64 = 1.0 / 3.0;

/// A jitter source that always answers the same value.
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn unit(&self) -> f64 {
        self.0
    }
}

/// Config line for the rig's agents unless a test sets its own: 503 at once when no token
/// is held (no min_ttl wait, so sampling never blocks). The common config sets a 5 s
/// upstream timeout.
pub const FAST_503: &str = "min_ttl_wait = \"0s\"";

/// Starts an agent with a fixed jitter on `clock`.
pub async fn start_agent(config: &asset_agent::config::Config, clock: Clock, jitter: f64) -> Agent {
    let cancel = CancellationToken::new();
    let options = Options {
        clock,
        jitter: Box::new(FixedJitter(jitter)),
        ..Options::default()
    };
    let running = agent::start(config, options, cancel.clone()).await.unwrap();
    Agent { running, cancel }
}

/// One sample's view.
#[derive(Debug, Clone)]
pub struct Sample {
    pub second: u64,
    pub state: String,
    pub served: bool,
}

pub struct Rig {
    pub emu: Emulator,
    pub dev: Device,
    pub agent: Agent,
    /// The wall clock the emulator uses.
    pub clock: Clock,
    /// The agent's wall clock: the emulator's, or its own when the test asked for one.
    pub agent_clock: Clock,
    /// When the first token was received (virtual).
    pub r0: Instant,
    /// (second, new upstream requests) for every second that saw any.
    pub requests: Vec<(u64, u64)>,
    /// (second, ok) for every attempt that ended.
    pub outcomes: Vec<(u64, bool)>,
    pub samples: Vec<Sample>,
    next_second: u64,
    seen_requests: u64,
    seen_ok: u64,
    seen_failed: u64,
}

impl Rig {
    /// Emulator (tweaked) and agent (with `token_extra` in `[token]`) on paused time.
    /// With `agent_offset`, the agent gets a wall clock of its own (which a test can then
    /// jump) that is off by that many seconds; otherwise it shares the emulator's. Returns
    /// once the first token is held. Must run under `#[tokio::test(start_paused = true)]`.
    pub async fn start(
        tweak: impl FnOnce(&mut emulator::Config),
        token_extra: &str,
        agent_offset: Option<i64>,
    ) -> Self {
        let clock = Clock::tokio_driven();
        // Made right after the emulator's, so it runs a few microseconds ahead of it, never
        // behind (which would put it a whole second behind on a whole second).
        let agent_clock = match agent_offset {
            Some(offset) => {
                let c = Clock::tokio_driven();
                c.set_offset(offset);
                c
            }
            None => clock.clone(),
        };
        // Start on a whole wall-clock second, so that tokens (whose exp is whole seconds)
        // live exactly 60 s and every event falls on a whole second after r0.
        let frac = clock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        tokio::time::sleep(Duration::from_secs(1) - Duration::from_nanos(frac.into())).await;
        let emu = emulator(clock.clone(), tweak).await;
        let dev = Device::new(&emu);
        let fast = if token_extra.contains("min_ttl_wait") {
            ""
        } else {
            FAST_503
        };
        let config = dev.config(&emu, "", &format!("{fast}\n{token_extra}"));
        let agent = start_agent(&config, agent_clock.clone(), JITTER).await;
        let handle = agent.running.tokens.clone();
        let mut current = handle.current.clone();
        let token =
            tokio::time::timeout(Duration::from_secs(30), current.wait_for(|t| t.is_some()))
                .await
                .expect("a first token")
                .unwrap()
                .clone()
                .unwrap();
        let lifetime = token.lifetime();
        assert!(
            lifetime > Duration::from_millis(59_990) && lifetime <= Duration::from_secs(60),
            "the rig needs whole-second tokens: {lifetime:?}"
        );
        let seen_requests = emu.stats().total;
        let snap = handle.snapshot();
        Self {
            emu,
            dev,
            agent,
            clock,
            agent_clock,
            r0: token.received,
            requests: Vec::new(),
            outcomes: Vec::new(),
            samples: Vec::new(),
            next_second: 1,
            seen_requests,
            seen_ok: snap.refreshes_ok,
            seen_failed: snap.refreshes_failed,
        }
    }

    pub fn handle(&self) -> &Handle {
        &self.agent.running.tokens
    }

    /// Samples every second up to and including `second` (after `r0`).
    pub async fn run_to(&mut self, second: u64) {
        while self.next_second <= second {
            let s = self.next_second;
            self.next_second += 1;
            sleep_until(self.r0 + Duration::from_millis(s * 1000 + 500)).await;
            self.sample(s).await;
        }
    }

    async fn sample(&mut self, second: u64) {
        let total = self.emu.stats().total;
        if total > self.seen_requests {
            self.requests.push((second, total - self.seen_requests));
            self.seen_requests = total;
        }
        let snap = self.handle().snapshot();
        for _ in self.seen_ok..snap.refreshes_ok {
            self.outcomes.push((second, true));
        }
        for _ in self.seen_failed..snap.refreshes_failed {
            self.outcomes.push((second, false));
        }
        self.seen_ok = snap.refreshes_ok;
        self.seen_failed = snap.refreshes_failed;
        if snap.state == asset_agent::token::status::State::Degraded {
            assert!(
                snap.failing_since.is_some(),
                "degraded without failing_since"
            );
        }
        let served = self.check_served().await;
        self.samples.push(Sample {
            second,
            state: snap.state.as_str().to_owned(),
            served,
        });
    }

    /// What the socket serves is a valid, verified, unexpired token or a clean 503.
    async fn check_served(&self) -> bool {
        let held = asset_agent::token::live(&self.handle().current);
        let r = get(&self.dev.socket(), "/v1/token").await;
        match r.status.as_u16() {
            200 => {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                let jwt = body["token"].as_str().unwrap();
                let claims = verify_with_jwks(&self.emu, jwt);
                let exp = claims["exp"].as_i64().unwrap();
                assert!(exp > self.clock.unix(), "served an expired token");
                let held = held.expect("served a token the agent does not hold as live");
                assert_eq!(held.jwt.expose(), jwt);
                true
            }
            503 => {
                assert!(held.is_none(), "503 while a live token is held");
                assert!(r.headers.contains_key("retry-after"));
                assert!(!String::from_utf8_lossy(&r.body).contains("eyJ"));
                false
            }
            other => panic!("unexpected status {other}"),
        }
    }

    /// The state seen at `second`.
    pub fn state_at(&self, second: u64) -> &str {
        &self
            .samples
            .iter()
            .find(|s| s.second == second)
            .expect("sampled")
            .state
    }

    /// Whether a token was served at `second`.
    pub fn served_at(&self, second: u64) -> bool {
        self.samples
            .iter()
            .find(|s| s.second == second)
            .expect("sampled")
            .served
    }

    pub async fn stop(self) {
        self.agent.stop().await;
    }
}
