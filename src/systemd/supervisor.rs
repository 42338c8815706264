//! The task that reports the refresh loop's state to systemd.
//!
//! **Readiness.** `READY=1` is sent once, when the first of these happens:
//! - the agent holds a live asset token that is not yet past its refresh point (a token
//!   restored from the cache that is already due for refresh does not count: the refresh
//!   loop renews it first, so apps ordered after the agent do not start with a token about
//!   to expire);
//! - `token.ready_timeout` has passed since start. Then `READY=1` goes out anyway, with a
//!   `STATUS=` that says no usable token is held and why: an offline or unenrolled device
//!   must still finish booting, and whatever is ordered after the agent must not hang.
//!   Units that need a token wait for one on the socket (`?min_ttl=`, `/v1/health/ready`).
//!
//! Before `READY=1`, every live tick also sends `EXTEND_TIMEOUT_USEC=`, so a
//! `token.ready_timeout` longer than `TimeoutStartSec=` is not cut short while the loop is
//! healthy; a stalled loop stops extending and the start times out.
//!
//! **Liveness.** The refresh loop publishes `Snapshot::expect_by`, its promise of when it
//! will next report (its next wake-up, or the end of the current attempt's time budget).
//! A `WATCHDOG=1` ping is sent only while that promise holds ([`Snapshot::is_live`]), so a
//! loop stuck anywhere (a hung key backend, a blocked thread, a bug) stops the pings and
//! systemd restarts the agent after `WatchdogSec=`. The pings come from this task, not
//! from the loop itself, because the loop sleeps for most of a token's lifetime: it
//! cannot ping every few seconds, but it always says when it will be back.
//!
//! **Status.** `STATUS=` names the state and the current token's expiry; it is resent only
//! when its text changes, so it carries absolute times, not countdowns. Whoever else sets
//! `STATUS=` (a reload) calls [`Resync`] afterwards, and the state's line comes back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;

use super::Notifier;
use crate::token::refresher::Handle;
use crate::token::status::{Snapshot, State};
use crate::token::{AssetToken, live};
use wire::clock;

/// How often to report when systemd runs no watchdog: only `EXTEND_TIMEOUT_USEC` needs it.
const TICK_WITHOUT_WATCHDOG: Duration = Duration::from_secs(10);
/// The shortest tick, whatever `WATCHDOG_USEC` says.
const MIN_TICK: Duration = Duration::from_millis(50);
/// The start timeout extension is at least this long.
const MIN_EXTENSION: Duration = Duration::from_secs(10);

/// Drives `READY=1`, `STATUS=` and `WATCHDOG=1` from the refresh loop's [`Handle`].
pub struct Supervisor {
    notifier: Arc<Notifier>,
    tokens: Handle,
    /// Ping interval: half the watchdog timeout, as `sd_watchdog_enabled(3)` recommends.
    tick: Duration,
    readiness: Readiness,
    resync: Arc<Notify>,
}

/// When start-up counts as complete; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    /// When the process started: the bounded wait counts from here, so slow start-up
    /// work (generating the device key on first start) is part of it.
    pub started: Instant,
    /// `token.ready_timeout`: `READY=1` goes out at the latest this long after start.
    pub timeout: Duration,
    /// `token.refresh_at`: a token past this fraction of its lifetime is due for refresh
    /// and does not make the agent ready on its own.
    pub refresh_at: f64,
}

/// Makes the supervisor resend the state's `STATUS=` line (after someone else set one).
#[derive(Debug, Clone)]
pub struct Resync(Arc<Notify>);

impl Resync {
    pub fn now(&self) {
        self.0.notify_one();
    }
}

/// Why `READY=1` went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A live token not yet past its refresh point is held.
    Token,
    /// `token.ready_timeout` passed without one.
    Timeout,
}

impl Readiness {
    /// Whether start-up is complete at `now`, holding `token`.
    pub fn check(&self, token: Option<&AssetToken>, now: Instant) -> Option<Why> {
        if token.is_some_and(|t| now < t.expires && !self.due(t, now)) {
            Some(Why::Token)
        } else if now >= self.started + self.timeout {
            Some(Why::Timeout)
        } else {
            None
        }
    }

    /// Whether `token` is past its refresh point (without the jitter the loop adds, which
    /// only ever moves the refresh earlier).
    pub fn due(&self, token: &AssetToken, now: Instant) -> bool {
        let point = token.received + token.lifetime().mul_f64(self.refresh_at.clamp(0.0, 1.0));
        now >= point
    }
}

// === impl Supervisor ===

impl Supervisor {
    /// A supervisor for `tokens`; `watchdog` is the timeout from `WATCHDOG_USEC`, if any.
    pub fn new(
        notifier: Arc<Notifier>,
        tokens: Handle,
        watchdog: Option<Duration>,
        readiness: Readiness,
    ) -> Self {
        let tick = watchdog.map_or(TICK_WITHOUT_WATCHDOG, |w| (w / 2).max(MIN_TICK));
        Self {
            notifier,
            tokens,
            tick,
            readiness,
            resync: Arc::new(Notify::new()),
        }
    }

    /// A handle that makes the running supervisor resend `STATUS=`.
    pub fn resync(&self) -> Resync {
        Resync(self.resync.clone())
    }

    /// Runs until `cancel` fires. Send failures are logged once and otherwise ignored:
    /// the agent's job is serving tokens, not talking to systemd.
    pub async fn run(self, cancel: CancellationToken) {
        let mut status_rx = self.tokens.status.clone();
        let mut current_rx = self.tokens.current.clone();
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let extension = (self.tick * 3).max(MIN_EXTENSION);
        let mut reporter = Reporter::default();
        let mut loop_gone = false;
        let mut stalled = false;
        let ready_by = self.readiness.started + self.readiness.timeout;
        loop {
            let token = live(&current_rx);
            let snap = self.tokens.snapshot();
            if stalled && snap.is_live() {
                stalled = false;
                tracing::info!("the refresh loop is making progress again; watchdog pings resumed");
            }
            let text = describe(&snap, token.as_deref(), stalled);
            let why = (!self.notifier.is_ready())
                .then(|| self.readiness.check(token.as_deref(), Instant::now()))
                .flatten();
            if let Some(why) = why {
                match why {
                    Why::Token => tracing::info!(
                        "asset token held: notifying systemd that the agent is ready"
                    ),
                    Why::Timeout => tracing::warn!(
                        ready_timeout_s = self.readiness.timeout.as_secs(),
                        "no usable asset token within token.ready_timeout: notifying systemd that the agent is ready anyway ({text}); units that need a token should wait on the socket"
                    ),
                }
                reporter.check(self.notifier.ready(&text));
                reporter.last_status = text;
            } else if text != reporter.last_status {
                reporter.check(self.notifier.status(&text));
                reporter.last_status = text;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = sleep_until(ready_by), if !self.notifier.is_ready() => {}
                () = self.resync.notified() => reporter.last_status.clear(),
                r = status_rx.changed(), if !loop_gone => loop_gone = r.is_err(),
                r = current_rx.changed(), if !loop_gone => loop_gone = r.is_err(),
                _ = ticker.tick() => {
                    let is_live = self.tokens.snapshot().is_live();
                    if is_live {
                        reporter.check(self.notifier.watchdog(extension));
                    }
                    if !is_live && !stalled {
                        stalled = true;
                        tracing::error!("the refresh loop missed its deadline; withholding watchdog pings so systemd restarts the agent");
                    }
                }
            }
        }
    }
}

/// Remembers what was last sent and whether a send failure was already logged.
#[derive(Default)]
struct Reporter {
    last_status: String,
    warned: bool,
}

impl Reporter {
    fn check(&mut self, result: Result<(), super::Error>) {
        if let Err(e) = result {
            if !self.warned {
                tracing::warn!(error = %crate::error::chain(&e), "could not notify systemd; carrying on");
                self.warned = true;
            }
        } else {
            self.warned = false;
        }
    }
}

/// The `STATUS=` line for a state. Never includes a token; error texts are the loop's
/// `last_error`, which holds no secrets.
pub fn describe(snap: &Snapshot, token: Option<&AssetToken>, stalled: bool) -> String {
    let expiry = |t: &AssetToken| {
        format!(
            "asset token{} valid until {}",
            t.asset_id()
                .map(|id| format!(" for {id}"))
                .unwrap_or_default(),
            clock::rfc3339(t.claims.exp)
        )
    };
    let error = || {
        let reason = snap.last_error_reason.as_deref().unwrap_or("unknown");
        let text = snap.last_error.as_deref().unwrap_or("no detail");
        format!("{reason}: {text}")
    };
    let base = match (snap.state, token) {
        (State::Ready, Some(t)) => format!("ready: {}", expiry(t)),
        (State::Degraded, Some(t)) => format!(
            "degraded: serving the {}; refreshing fails ({} in a row), {}",
            expiry(t),
            snap.consecutive_failures,
            error()
        ),
        (State::NeedsEnrollment, _) => format!(
            "waiting for enrollment: no refresh token yet; run 'asset-agent enroll' ({})",
            error()
        ),
        (State::Starting, None) => {
            "starting: no asset token yet, obtaining the first one".to_owned()
        }
        (_, None) if snap.last_error.is_some() => format!(
            "failing: no valid asset token ({} failures in a row), {}",
            snap.consecutive_failures,
            error()
        ),
        (_, None) => "waiting for an asset token".to_owned(),
        (_, Some(t)) => format!("{}: {}", snap.state.as_str(), expiry(t)),
    };
    if stalled {
        format!(
            "stalled: the refresh loop missed its deadline, watchdog pings withheld; was {base}"
        )
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;
    use wire::Secret;
    use wire::oauth::AssetTokenClaims;

    fn token() -> AssetToken {
        AssetToken {
            jwt: Secret::new("eyJsecret"),
            token_type: "Bearer".into(),
            issued_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            claims: AssetTokenClaims {
                iss: None,
                sub: Some("02i000000000001AAA".into()),
                aud: vec![],
                exp: 1_700_000_000,
                nbf: None,
                iat: None,
                jti: None,
                did: None,
                name: None,
                cnf: None,
            },
            received: Instant::now(),
            expires: Instant::now() + Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ready_on_a_token_not_yet_due_or_when_the_wait_is_over() {
        let t = token(); // 60 s lifetime from now: due for refresh at 48 s with 80 %
        let r = Readiness {
            started: Instant::now(),
            timeout: Duration::from_secs(100),
            refresh_at: 0.8,
        };
        let at = |s: u64| r.started + Duration::from_secs(s);
        let rows = [
            (Some(&t), at(0), Some(Why::Token)),
            (Some(&t), at(47), Some(Why::Token)),
            (None, at(47), None),
            // A restored token past its refresh point does not count ...
            (Some(&t), at(48), None),
            (Some(&t), at(59), None),
            // ... until the wait is over.
            (Some(&t), at(100), Some(Why::Timeout)),
            (None, at(99), None),
            (None, at(100), Some(Why::Timeout)),
        ];
        for (token, now, want) in rows {
            assert_eq!(r.check(token, now), want, "{:?}", now - r.started);
        }
    }

    #[tokio::test]
    async fn status_lines_name_state_expiry_and_reason() {
        let t = token();
        let mut s = Snapshot::starting();
        assert_eq!(
            describe(&s, None, false),
            "starting: no asset token yet, obtaining the first one"
        );
        s.state = State::Ready;
        assert_eq!(
            describe(&s, Some(&t), false),
            "ready: asset token for 02i000000000001AAA valid until 2023-11-14T22:13:20Z"
        );
        s.state = State::NeedsEnrollment;
        s.last_error_reason = Some("needs_enrollment".into());
        s.last_error = Some("no refresh token yet".into());
        assert!(describe(&s, None, false).starts_with("waiting for enrollment"));
        s.state = State::Failing;
        s.last_error_reason = Some("http_503".into());
        s.consecutive_failures = 3;
        let failing = describe(&s, None, false);
        assert!(
            failing.contains("3 failures") && failing.contains("http_503"),
            "{failing}"
        );
        s.state = State::Degraded;
        let degraded = describe(&s, Some(&t), false);
        assert!(
            degraded.starts_with("degraded: serving the asset token"),
            "{degraded}"
        );
        assert!(describe(&s, Some(&t), true).starts_with("stalled:"));
        for line in [failing, degraded] {
            assert!(!line.contains("eyJ"), "never a token: {line}");
        }
    }
}
