//! The task that reports the refresh loop's state to systemd.
//!
//! **Readiness.** `READY=1` is sent once, when the agent first holds a valid asset token
//! (cached or new), not when the socket is bound. Units that need a token order themselves
//! `After=asset-agent.service` and start only when one can be had. Until then `STATUS=`
//! says why not (starting, waiting for enrollment, failing and why), and every live tick
//! sends `EXTEND_TIMEOUT_USEC=` so a start that waits for a human or an outage is not
//! killed by `TimeoutStartSec=` while the loop is healthy; a stalled loop stops extending
//! and the start times out. (The unit sets `DefaultDependencies=no` so that boot itself
//! never waits for the token; see `systemd/asset-agent.service`.)
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
//! when its text changes, so it carries absolute times, not countdowns.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
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
}

// === impl Supervisor ===

impl Supervisor {
    /// A supervisor for `tokens`; `watchdog` is the timeout from `WATCHDOG_USEC`, if any.
    pub fn new(notifier: Arc<Notifier>, tokens: Handle, watchdog: Option<Duration>) -> Self {
        let tick = watchdog.map_or(TICK_WITHOUT_WATCHDOG, |w| (w / 2).max(MIN_TICK));
        Self {
            notifier,
            tokens,
            tick,
        }
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
        loop {
            let token = live(&current_rx);
            let snap = self.tokens.snapshot();
            if stalled && snap.is_live() {
                stalled = false;
                tracing::info!("the refresh loop is making progress again; watchdog pings resumed");
            }
            let text = describe(&snap, token.as_deref(), stalled);
            if token.is_some() && !self.notifier.is_ready() {
                tracing::info!("first asset token held: notifying systemd that the agent is ready");
                reporter.check(self.notifier.ready(&text));
                reporter.last_status = text;
            } else if text != reporter.last_status {
                reporter.check(self.notifier.status(&text));
                reporter.last_status = text;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
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
        (State::Starting, _) => "starting: obtaining the first asset token".to_owned(),
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

    #[tokio::test]
    async fn status_lines_name_state_expiry_and_reason() {
        let t = token();
        let mut s = Snapshot::starting();
        assert_eq!(
            describe(&s, None, false),
            "starting: obtaining the first asset token"
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
