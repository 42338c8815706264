//! The refresh loop: one task that owns the [`Flow`] and publishes the current token.
//!
//! Only this task talks to Salesforce, so concurrent callers wanting a fresh token can never
//! cause more than one exchange at a time (single flight): they ask through [`Handle`] and
//! wait on the `watch` channel. The loop sleeps on tokio's monotonic clock until the
//! earliest of: the next scheduled refresh, the current token's expiry (to drop it), or a
//! refresh request, which is ignored while backing off so clients cannot turn an outage into
//! a retry storm.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::cache::Cache;
use super::flow::{Flow, MAX_CALLS_PER_FETCH, Progress};
use super::status::{LIVENESS_SLACK, Snapshot, State};
use super::{AssetToken, Current, live};
use crate::backoff::{self, Backoff, Jitter};
use crate::error::chain;
use crate::salesforce::Class;

/// How often to look for a refresh token while waiting for enrollment, and for a changed
/// one while waiting out a fatal failure (someone re-enrolled the device).
pub const ENROLLMENT_POLL: Duration = Duration::from_secs(10);
/// Refresh no sooner than this after receiving a token, however short-lived it is.
const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);
/// The refresh point is spread over this fraction of the lifetime before `refresh_at`.
const REFRESH_JITTER: f64 = 0.1;

/// Tuning for the loop.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Refresh at this fraction of each token's lifetime (0.8 = 80 %).
    pub refresh_at: f64,
    /// Longest backoff between failed attempts.
    pub backoff_cap: Duration,
    /// The longest one attempt can take (its upstream calls each have a timeout); the
    /// loop counts as stalled past it.
    pub attempt_budget: Duration,
}

impl Policy {
    /// `attempt_budget` for an upstream timeout: an attempt makes at most
    /// [`MAX_CALLS_PER_FETCH`] calls, each limited by the timeout.
    pub fn budget_for(timeout: Duration) -> Duration {
        timeout.saturating_mul(MAX_CALLS_PER_FETCH)
    }
}

/// The refresh loop; see the module docs. Start it with [`Refresher::run`].
pub struct Refresher {
    flow: Flow,
    cache: Option<Cache>,
    policy: Policy,
    jitter: Box<dyn Jitter>,
    current: watch::Sender<Option<Arc<AssetToken>>>,
    status: watch::Sender<Snapshot>,
    wake: Arc<Notify>,
}

/// What other tasks hold: the current token, the status, and a way to ask for a refresh.
#[derive(Clone, Debug)]
pub struct Handle {
    pub current: Current,
    pub status: watch::Receiver<Snapshot>,
    wake: Arc<Notify>,
    progress: broadcast::Sender<Progress>,
}

/// No token with enough time left could be had within the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

// === impl Refresher ===

impl Refresher {
    /// A loop for `flow`. With a `cache`, what it still holds is restored first (a live
    /// asset token is served at once and refreshed on its normal schedule) and every new
    /// token is saved to it.
    pub fn new(
        mut flow: Flow,
        policy: Policy,
        jitter: Box<dyn Jitter>,
        cache: Option<Cache>,
    ) -> (Self, Handle) {
        let restored = cache
            .as_ref()
            .map(|c| c.load(flow.now(), &flow.verifier))
            .unwrap_or_default();
        if let Some(access) = restored.access_token {
            flow.restore_access_token(access);
        }
        let initial = restored.asset_token.map(Arc::new);
        if let Some(t) = &initial {
            tracing::info!(
                remaining_s = t.remaining().as_secs(),
                asset_id = t.asset_id().unwrap_or("-"),
                "serving the cached asset token"
            );
        }
        let mut snapshot = Snapshot::starting();
        if initial.is_some() {
            snapshot.state = State::Ready;
        }
        let (current, current_rx) = watch::channel(initial);
        let (status, status_rx) = watch::channel(snapshot);
        let wake = Arc::new(Notify::new());
        let handle = Handle {
            current: current_rx,
            status: status_rx,
            wake: wake.clone(),
            progress: flow.progress.clone(),
        };
        let refresher = Self {
            flow,
            cache,
            policy,
            jitter,
            current,
            status,
            wake,
        };
        (refresher, handle)
    }

    /// Runs until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(backoff::MIN, self.policy.backoff_cap);
        let held = self.current.borrow().clone();
        let mut next = match &held {
            Some(t) => self.schedule(t),
            None => Instant::now(),
        };
        self.status
            .send_modify(|s| s.next_refresh = held.as_ref().map(|_| next));
        let mut backing_off = false;
        // While waiting out a fatal failure: when to look whether the credentials changed.
        let mut recheck: Option<Instant> = None;
        loop {
            let expiry = self.current.borrow().as_ref().map(|t| t.expires);
            let wake_at = match expiry {
                Some(e) if e < next => e,
                _ => next,
            };
            self.status
                .send_modify(|s| s.expect_by = wake_at + LIVENESS_SLACK);
            tokio::select! {
                () = cancel.cancelled() => break,
                () = sleep_until(wake_at) => {}
                () = self.wake.notified(), if !backing_off => next = Instant::now(),
                () = sleep_until(recheck.unwrap_or(wake_at)), if recheck.is_some() => {
                    if self.flow.credentials.changed() {
                        tracing::info!("the credentials changed; retrying now");
                        next = Instant::now();
                        recheck = None;
                    } else {
                        recheck = Some(Instant::now() + ENROLLMENT_POLL);
                    }
                }
            }
            let now = Instant::now();
            self.status.send_modify(|s| s.heartbeat = now);
            if expiry.is_some_and(|e| e <= now) {
                tracing::warn!(
                    "the asset token expired before it could be refreshed; no token is served until a new one is obtained"
                );
                self.current.send_replace(None);
                self.status.send_modify(|s| {
                    if s.state == State::Degraded {
                        s.state = State::Failing;
                    }
                });
            }
            if now < next {
                continue;
            }
            let budget = self.policy.attempt_budget;
            self.status
                .send_modify(|s| s.expect_by = Instant::now() + budget + LIVENESS_SLACK);
            let result = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.flow.fetch() => r,
            };
            // Refresh requests made during the attempt are answered by it: drop them, or
            // they would start another exchange right away.
            tokio::select! {
                biased;
                () = self.wake.notified() => {}
                () = std::future::ready(()) => {}
            }
            match result {
                Ok(token) => {
                    self.flow.upstream.metrics().counters().refresh_succeeded();
                    backoff.reset();
                    backing_off = false;
                    recheck = None;
                    next = self.schedule(&token);
                    let in_ = next.saturating_duration_since(Instant::now());
                    tracing::info!(next_refresh_in_s = in_.as_secs(), "next refresh scheduled");
                    self.flow.emit(Progress::RefreshScheduled { in_ });
                    let token = Arc::new(token);
                    if let Some(cache) = &self.cache {
                        cache.save(
                            Some(&token),
                            self.flow.access_token(),
                            self.flow.verifier.known_keys(),
                            self.flow.now(),
                        );
                    }
                    self.current.send_replace(Some(token));
                    self.status.send_modify(|s| {
                        s.state = State::Ready;
                        s.consecutive_failures = 0;
                        s.failing_since = None;
                        s.next_refresh = Some(next);
                        s.last_success = Some(Instant::now());
                        s.refreshes_ok += 1;
                    });
                }
                Err(err) => {
                    let class = err.class();
                    let enrolling = err.needs_enrollment();
                    let delay = if enrolling {
                        ENROLLMENT_POLL
                    } else if class == Class::Fatal {
                        // Needs a human; keep trying, slowly, so a fix is picked up.
                        backoff.next(self.jitter.as_ref(), err.retry_after());
                        backoff.cap()
                    } else {
                        backoff.next(self.jitter.as_ref(), err.retry_after())
                    };
                    backing_off = true;
                    next = Instant::now() + delay;
                    recheck = (class == Class::Fatal && !enrolling)
                        .then(|| Instant::now() + ENROLLMENT_POLL);
                    let message = chain(&err);
                    let reason = err.reason();
                    self.flow
                        .upstream
                        .metrics()
                        .counters()
                        .refresh_failed(&reason);
                    let has_token = live(&self.current.subscribe()).is_some();
                    let was_enrolling = self.status.borrow().state == State::NeedsEnrollment;
                    if enrolling && was_enrolling {
                        tracing::debug!("still waiting for enrollment");
                    } else if enrolling {
                        tracing::warn!(
                            "this device is not enrolled yet (checking again every {} s): {message}",
                            ENROLLMENT_POLL.as_secs()
                        );
                    } else {
                        tracing::warn!(reason = %reason, class = ?class, retry_in_s = delay.as_secs(),
                            serving_cached = has_token, "refresh failed: {message}");
                    }
                    self.flow.emit(Progress::RefreshFailed {
                        reason: reason.clone(),
                        retry_in: delay,
                    });
                    self.status.send_modify(|s| {
                        s.state = match (enrolling, has_token) {
                            (_, true) => State::Degraded,
                            (true, false) => State::NeedsEnrollment,
                            (false, false) => State::Failing,
                        };
                        s.consecutive_failures += 1;
                        s.failing_since.get_or_insert(Instant::now());
                        s.last_error = Some(message);
                        s.last_error_reason = Some(reason);
                        s.next_refresh = Some(next);
                        s.refreshes_failed += 1;
                    });
                }
            }
        }
        tracing::debug!("refresh loop stopped");
    }

    /// When to refresh `token`: at `refresh_at` of its lifetime, pulled earlier by up to
    /// [`REFRESH_JITTER`] of the lifetime so a fleet does not refresh in lock-step.
    fn schedule(&self, token: &AssetToken) -> Instant {
        let lifetime = token.lifetime();
        let jitter = lifetime.mul_f64(REFRESH_JITTER * self.jitter.unit().clamp(0.0, 1.0));
        let at = lifetime
            .mul_f64(self.policy.refresh_at)
            .saturating_sub(jitter);
        (token.received + at).max(Instant::now() + MIN_REFRESH_DELAY.min(token.remaining()))
    }
}

// === impl Handle ===

impl Handle {
    /// Asks the loop to refresh now (ignored while it is backing off after a failure).
    pub fn refresh_now(&self) {
        self.wake.notify_one();
    }

    /// Follows the flow's steps (for the demo's narration).
    pub fn progress(&self) -> broadcast::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The live token if it has at least `min_ttl` left; otherwise asks for a refresh and
    /// waits up to `wait` for one that does.
    ///
    /// # Errors
    /// [`Unavailable`] when no such token arrived in time.
    pub async fn token_with(
        &self,
        min_ttl: Duration,
        wait: Duration,
    ) -> Result<Arc<AssetToken>, Unavailable> {
        let good = |t: &Option<Arc<AssetToken>>| {
            t.as_ref()
                .filter(|t| t.is_live() && t.remaining() >= min_ttl)
                .cloned()
        };
        if let Some(t) = good(&self.current.borrow()) {
            return Ok(t);
        }
        // Backing off after a failure, with the next attempt beyond the wait: no token can
        // come in time, so answer at once rather than hold the caller for nothing.
        let now = Instant::now();
        let hopeless = {
            let s = self.status.borrow();
            s.consecutive_failures > 0 && s.next_refresh.is_some_and(|n| n > now + wait)
        };
        if hopeless {
            return Err(Unavailable);
        }
        // Tokens get the lifetime the org configures, so when the held one's whole lifetime
        // is below min_ttl a fresh one will not meet it either: asking for one per request
        // would only hammer Salesforce. Answer at once.
        let held_lifetime = self
            .current
            .borrow()
            .as_ref()
            .filter(|t| t.is_live())
            .map(|t| t.lifetime());
        if held_lifetime.is_some_and(|l| l <= min_ttl) {
            return Err(Unavailable);
        }
        if min_ttl > Duration::ZERO {
            self.refresh_now();
        }
        let mut rx = self.current.clone();
        let wait_for = async {
            loop {
                if rx.changed().await.is_err() {
                    return None;
                }
                if let Some(t) = good(&rx.borrow_and_update()) {
                    return Some(t);
                }
            }
        };
        match tokio::time::timeout(wait, wait_for).await {
            Ok(Some(t)) => Ok(t),
            _ => Err(Unavailable),
        }
    }

    /// The status as last published.
    pub fn snapshot(&self) -> Snapshot {
        self.status.borrow().clone()
    }
}
