//! The refresh loop: one task that owns the [`Flow`] and publishes the current token.
//!
//! Only this task talks to Salesforce, so concurrent callers wanting a fresh token can never
//! cause more than one exchange at a time (single flight): they ask through [`Handle`] and
//! wait on the `watch` channel.
//!
//! Rules, each there for a fleet of devices sharing one org (every exchange publishes an
//! `AssetTokenEvent` that counts against the org's event allocation):
//!
//! - **Refresh point.** Each cycle's refresh point is drawn afresh, uniformly over a wide
//!   band of the lifetime (from `refresh_at - 30 %` to `refresh_at`, at least half of
//!   `refresh_at`), so a fleet that refreshed in lock-step (a mass reboot) disperses within a
//!   few cycles instead of keeping its phase.
//! - **Policy.** [`Mode::Eager`] refreshes every token ahead of expiry. [`Mode::OnDemand`]
//!   does so only while something uses the token (a request within the demand window, an
//!   open watch stream, the MQTT session: see [`Handle::hold`]); otherwise the token lapses
//!   and the next request fetches one.
//! - **Retry budget.** A device makes at most 2 upstream attempts per normal refresh
//!   interval (a token bucket of 2 credits, refilled one per half interval), whatever asks:
//!   the schedule, a `min_ttl` request or an admin. After a retryable failure the next
//!   attempt is drawn uniformly in 0.5–1.0 refresh intervals (so an outage costs the fleet
//!   ~1.3x its steady rate, and every device retries within one interval once Salesforce is
//!   back); `Retry-After` is a floor.
//! - **Boot spread.** A refresh that is overdue, or due within the spread, when the agent
//!   starts with a cached token (a reboot) is drawn uniformly over [`BOOT_SPREAD`] refresh
//!   intervals, with fresh randomness per boot, instead of all devices of a rebooted fleet
//!   calling at once. A request that finds no live token does not wait for that slot.
//! - **Admin refresh** ([`Handle::admin_refresh`]): one attempt now, even while retrying
//!   after failures, at most one per [`ADMIN_INTERVAL`], and only with a budget credit.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::cache::Cache;
use super::flow::{Flow, MAX_CALLS_PER_FETCH, Progress};
use super::gate::Gate;
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
/// Width of the band each refresh point is drawn from, as a fraction of the lifetime.
pub const REFRESH_BAND: f64 = 0.3;
/// Upstream attempts a device may make per normal refresh interval (the bucket's size).
pub const BUDGET_PER_INTERVAL: f64 = 2.0;
/// After a retryable failure the next attempt is drawn in this range of refresh intervals.
pub const RETRY_RANGE: (f64, f64) = (0.5, 1.0);
/// Overdue refreshes at start-up are spread over this many refresh intervals. A device's
/// first attempt after a boot could cost two requests (the exchange and a JWKS fetch) when
/// the org's keys were not in the cache, so over two intervals a fleet rebooting at once
/// stays at about its steady rate.
pub const BOOT_SPREAD: f64 = 2.0;
/// An admin refresh makes an attempt at most this often.
pub const ADMIN_INTERVAL: Duration = Duration::from_secs(10);
pub use crate::config::DEFAULT_DEMAND_WINDOW;

/// The refresh policy (`token.refresh`).
pub use crate::config::RefreshPolicy as Mode;

/// Tuning for the loop.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The latest refresh point, as a fraction of each token's lifetime (0.8 = 80 %); each
    /// cycle draws its point in the [`REFRESH_BAND`] below it.
    pub refresh_at: f64,
    /// Longest wait between failed attempts (the retry budget may still make it longer).
    pub backoff_cap: Duration,
    /// The longest one attempt can take (its upstream calls each have a timeout); the
    /// loop counts as stalled past it.
    pub attempt_budget: Duration,
    /// Eager or on demand.
    pub mode: Mode,
    /// A token request within this window counts as demand.
    pub demand_window: Duration,
}

impl Policy {
    /// `attempt_budget` for an upstream timeout: an attempt makes at most
    /// [`MAX_CALLS_PER_FETCH`] calls, each limited by the timeout.
    pub fn budget_for(timeout: Duration) -> Duration {
        timeout.saturating_mul(MAX_CALLS_PER_FETCH)
    }

    /// The band refresh points are drawn from, as fractions of the lifetime.
    pub fn band(&self) -> (f64, f64) {
        let hi = self.refresh_at;
        let lo = (hi - REFRESH_BAND).max(hi / 2.0);
        (lo, hi)
    }

    /// The mean interval between refreshes of tokens with this `lifetime`.
    pub fn interval(&self, lifetime: Duration) -> Duration {
        let (lo, hi) = self.band();
        lifetime.mul_f64((lo + hi) / 2.0).max(MIN_REFRESH_DELAY)
    }
}

/// What users of the token have shown lately; shared by the loop and every [`Handle`].
#[derive(Debug, Default)]
struct Demand {
    /// When the last token request arrived.
    last_request: Mutex<Option<Instant>>,
    /// Open holders: watch streams, the MQTT session.
    holders: AtomicUsize,
    /// A request needs a token the held one cannot give (none, or too little time left).
    urgent: AtomicBool,
}

/// What is shared between the loop and the handles.
#[derive(Debug)]
struct Inner {
    wake: Notify,
    demand: Demand,
    window: Duration,
    mode: Mode,
}

/// Whether anything uses the token now, for status and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct DemandView {
    /// Whether anything uses the token now (always true under the eager policy).
    pub active: bool,
    /// Open watch streams and MQTT sessions.
    pub holders: usize,
    /// Seconds since the last token request, if any.
    pub last_request_s: Option<u64>,
}

/// Keeps demand up while held (a watch stream, the MQTT session). See [`Handle::hold`].
#[derive(Debug)]
pub struct DemandGuard(Arc<Inner>);

/// Why an admin refresh was not allowed to make an attempt now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The last admin attempt was less than [`ADMIN_INTERVAL`] ago.
    RateLimited { retry_in: Duration },
    /// The retry budget has no credit left.
    Budget { retry_in: Duration },
    /// The loop has stopped.
    Stopped,
}

/// The refresh loop; see the module docs. Start it with [`Refresher::run`].
pub struct Refresher {
    flow: Flow,
    cache: Option<Cache>,
    policy: Policy,
    jitter: Box<dyn Jitter>,
    current: watch::Sender<Option<Arc<AssetToken>>>,
    status: watch::Sender<Snapshot>,
    inner: Arc<Inner>,
    admin: mpsc::Receiver<oneshot::Sender<Result<(), Refused>>>,
    /// The lifetime of the last token seen (also an expired cached one), which sets the
    /// refresh interval the budget and the retry delays are scaled to.
    lifetime: Option<Duration>,
    /// The agent started from a token cache (a restart, not a first boot).
    restarted: bool,
    /// Shared with the agent's other refresh loops (gateway mode): bounds how many
    /// attempts are in flight and how fast they start.
    gate: Option<Arc<Gate>>,
    /// Cache saves queued so far: a queued save that a newer one overtook is skipped.
    cache_saves: Arc<AtomicU64>,
}

/// How long a refresh waits for the token cache to be saved (on the state directory's
/// file-work lane) before it publishes the token anyway.
pub const CACHE_WAIT: Duration = Duration::from_secs(1);

/// What other tasks hold: the current token, the status, and a way to ask for a refresh.
#[derive(Clone, Debug)]
pub struct Handle {
    pub current: Current,
    pub status: watch::Receiver<Snapshot>,
    inner: Arc<Inner>,
    admin: mpsc::Sender<oneshot::Sender<Result<(), Refused>>>,
    progress: broadcast::Sender<Progress>,
}

/// No token with enough time left could be had within the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// The retry budget: a token bucket of [`BUDGET_PER_INTERVAL`] credits, refilled at that
/// many per refresh interval. Every upstream attempt takes one.
#[derive(Debug, Clone)]
struct Budget {
    credits: f64,
    at: Instant,
}

// === impl Budget ===

impl Budget {
    fn full(now: Instant) -> Self {
        Self {
            credits: BUDGET_PER_INTERVAL,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant, interval: Option<Duration>) {
        let Some(interval) = interval else {
            // No lifetime known yet: nothing to scale to, the backoff alone applies.
            self.credits = BUDGET_PER_INTERVAL;
            self.at = now;
            return;
        };
        let per_credit = interval.as_secs_f64() / BUDGET_PER_INTERVAL;
        let gained = now.saturating_duration_since(self.at).as_secs_f64() / per_credit;
        self.credits = (self.credits + gained).min(BUDGET_PER_INTERVAL);
        self.at = now;
    }

    /// How long until a credit is available (zero when one is).
    fn wait(&mut self, now: Instant, interval: Option<Duration>) -> Duration {
        self.refill(now, interval);
        match interval {
            Some(i) if self.credits < 1.0 => {
                let per_credit = i.as_secs_f64() / BUDGET_PER_INTERVAL;
                // Round up to whole milliseconds so the wake-up finds the credit there.
                Duration::from_millis(((1.0 - self.credits) * per_credit * 1000.0).ceil() as u64)
            }
            _ => Duration::ZERO,
        }
    }

    fn take(&mut self) {
        self.credits -= 1.0;
    }

    fn give_back(&mut self) {
        self.credits = (self.credits + 1.0).min(BUDGET_PER_INTERVAL);
    }
}

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
        let lifetime = restored.lifetime;
        let initial = restored.asset_token.map(Arc::new);
        if let Some(t) = &initial {
            tracing::info!(
                remaining_s = t.remaining().as_secs(),
                asset_id = t.asset_id().unwrap_or("-"),
                "serving the cached asset token"
            );
        }
        let mut snapshot = Snapshot::starting();
        snapshot.policy = policy.mode;
        if initial.is_some() {
            snapshot.state = State::Ready;
        }
        let (current, current_rx) = watch::channel(initial);
        let (status, status_rx) = watch::channel(snapshot);
        let inner = Arc::new(Inner {
            wake: Notify::new(),
            demand: Demand::default(),
            window: policy.demand_window,
            mode: policy.mode,
        });
        let (admin_tx, admin_rx) = mpsc::channel(8);
        let handle = Handle {
            current: current_rx,
            status: status_rx,
            inner: inner.clone(),
            admin: admin_tx,
            progress: flow.progress.clone(),
        };
        let refresher = Self {
            flow,
            cache,
            policy,
            jitter,
            current,
            status,
            inner,
            admin: admin_rx,
            lifetime,
            restarted: lifetime.is_some(),
            gate: None,
            cache_saves: Arc::new(AtomicU64::new(0)),
        };
        (refresher, handle)
    }

    /// Passes every attempt through `gate` (shared by the agent's refresh loops).
    #[must_use]
    pub fn with_gate(mut self, gate: Arc<Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The normal refresh interval, once a token's lifetime is known.
    fn interval(&self) -> Option<Duration> {
        self.lifetime.map(|l| self.policy.interval(l))
    }

    /// A uniform draw in `[0, 1]`.
    fn unit(&self) -> f64 {
        self.jitter.unit().clamp(0.0, 1.0)
    }

    /// This cycle's refresh point for `token`, drawn uniformly over the policy's band
    /// (unclamped: it may lie in the past for a restored token).
    fn draw_point(&self, token: &AssetToken) -> Instant {
        let (lo, hi) = self.policy.band();
        let fraction = hi - (hi - lo) * self.unit();
        token.received + token.lifetime().mul_f64(fraction)
    }

    /// A slot in the boot spread: uniform over [`BOOT_SPREAD`] refresh intervals from now.
    fn boot_slot(&self, now: Instant) -> Instant {
        now + self.boot_window().mul_f64(self.unit())
    }

    fn boot_window(&self) -> Duration {
        self.interval()
            .unwrap_or(Duration::ZERO)
            .mul_f64(BOOT_SPREAD)
    }

    /// The wait after a retryable failure: uniform in [`RETRY_RANGE`] refresh intervals
    /// (capped by `backoff_cap`), or the exponential backoff while no lifetime is known;
    /// `Retry-After` is a floor either way.
    fn retry_delay(&self, backoff: &mut Backoff, retry_after: Option<Duration>) -> Duration {
        match self.interval() {
            Some(i) => {
                let (lo, hi) = RETRY_RANGE;
                let drawn = i.mul_f64(lo + (hi - lo) * self.unit());
                let floor =
                    retry_after.map_or(Duration::ZERO, |ra| ra.min(Duration::from_secs(3600)));
                drawn
                    .min(self.policy.backoff_cap)
                    .max(backoff::MIN)
                    .max(floor)
            }
            None => backoff.next(self.jitter.as_ref(), retry_after),
        }
    }

    /// Whether anything uses the token now.
    fn demand(&self, now: Instant) -> bool {
        self.inner.demand.active(now, self.inner.window)
    }

    /// Runs until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(backoff::MIN, self.policy.backoff_cap);
        let start = Instant::now();
        let mut budget = Budget::full(start);
        let held = self.current.borrow().clone();
        // The next planned attempt; `None` while lapsed (on demand, nothing uses the token).
        let mut next: Option<Instant>;
        // The held token's refresh point.
        let mut point: Option<Instant> = None;
        match &held {
            Some(t) => {
                // A restart: every device of a rebooted fleet would refresh within the
                // same few seconds (overdue ones at once, the others at points bunched in
                // the rest of their lifetime), so any refresh due within the boot spread
                // takes a slot in it instead.
                let p = self.draw_point(t);
                point = Some(p);
                let spread_end = start + self.boot_window();
                next = Some(if p <= spread_end {
                    self.boot_slot(start)
                } else {
                    p
                });
            }
            None if self.restarted => next = Some(self.boot_slot(start)),
            None => next = Some(start),
        }
        // Until the first token, the loop tries whatever the demand (a booting device
        // checks that its credentials work); after it, on demand applies.
        // A restored token already past its refresh point counts as no token for this: the
        // start-up refresh (in its boot-spread slot) happens whatever the demand, so the
        // agent does not declare itself ready on a token about to expire.
        let mut first_done = point.is_some_and(|p| p > start);
        // After a failure: no attempt before this, whoever asks.
        let mut not_before: Option<Instant> = None;
        let mut last_admin: Option<Instant> = None;
        // While waiting out a fatal failure: when to look whether the credentials changed.
        let mut recheck: Option<Instant> = None;
        self.publish_plan(next, point);
        loop {
            let expiry = self.current.borrow().as_ref().map(|t| t.expires);
            let now = Instant::now();
            // With nothing planned the loop still wakes now and then, to stay live.
            let idle = now + IDLE_TICK;
            let wake_at = [next, expiry, recheck]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(idle)
                .min(idle);
            self.status
                .send_modify(|s| s.expect_by = wake_at + LIVENESS_SLACK);
            let mut woken = false;
            let mut admin = None;
            tokio::select! {
                () = cancel.cancelled() => break,
                () = sleep_until(wake_at) => {}
                () = self.inner.wake.notified() => woken = true,
                Some(reply) = self.admin.recv() => admin = Some(reply),
            }
            let now = Instant::now();
            self.status.send_modify(|s| s.heartbeat = now);
            if expiry.is_some_and(|e| e <= now) {
                tracing::warn!(
                    "the asset token expired before it was refreshed; no token is served until a new one is obtained"
                );
                self.current.send_replace(None);
                point = None;
                self.status.send_modify(|s| {
                    s.refresh_point = None;
                    if s.state == State::Degraded {
                        s.state = State::Failing;
                    }
                });
            }
            if recheck.is_some_and(|r| r <= now) {
                if self.flow.credentials.changed() {
                    tracing::info!("the credentials changed; retrying now");
                    next = Some(now);
                    not_before = None;
                    recheck = None;
                } else {
                    recheck = Some(now + ENROLLMENT_POLL);
                }
            }
            let demand = self.demand(now);
            if woken {
                let urgent = self.inner.demand.urgent.swap(false, Ordering::Relaxed);
                let past = point.is_none_or(|p| p <= now);
                if urgent || (next.is_none() && past && demand) {
                    let at = not_before.map_or(now, |nb| nb.max(now));
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            let mut forced = false;
            if let Some(reply) = admin {
                let answer = match last_admin {
                    Some(last) if now < last + ADMIN_INTERVAL => Err(Refused::RateLimited {
                        retry_in: (last + ADMIN_INTERVAL) - now,
                    }),
                    _ => match budget.wait(now, self.interval()) {
                        w if w.is_zero() => Ok(()),
                        w => Err(Refused::Budget { retry_in: w }),
                    },
                };
                forced = answer.is_ok();
                if forced {
                    last_admin = Some(now);
                }
                // The caller may have given up; it learns the outcome from the status.
                let _ = reply.send(answer);
            }
            if !forced {
                if next.is_none_or(|n| n > now) {
                    self.publish_plan(next, point);
                    continue;
                }
                if self.policy.mode == Mode::OnDemand && first_done && !demand {
                    tracing::debug!("nothing uses the asset token; letting it lapse");
                    next = None;
                    self.publish_plan(next, point);
                    continue;
                }
                let wait = budget.wait(now, self.interval());
                if !wait.is_zero() {
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "retry budget spent; waiting"
                    );
                    next = Some(now + wait);
                    self.publish_plan(next, point);
                    continue;
                }
            }
            budget.take();
            let attempt_budget = self.policy.attempt_budget;
            let gate = self.gate.clone();
            let _permit = match &gate {
                Some(gate) => {
                    let slot = gate.reserve();
                    self.status.send_modify(|s| {
                        s.expect_by = slot + attempt_budget + LIVENESS_SLACK;
                    });
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        p = gate.enter(slot) => p,
                    }
                }
                None => None,
            };
            self.status.send_modify(|s| {
                s.expect_by = Instant::now() + attempt_budget + LIVENESS_SLACK;
                s.attempts += 1;
            });
            let result = tokio::select! {
                () = cancel.cancelled() => break,
                r = self.flow.fetch() => r,
            };
            // Refresh requests made during the attempt are answered by it: drop them, or
            // they would start another exchange right away.
            tokio::select! {
                biased;
                () = self.inner.wake.notified() => {}
                () = std::future::ready(()) => {}
            }
            self.inner.demand.urgent.store(false, Ordering::Relaxed);
            match result {
                Ok(token) => {
                    self.flow.upstream.metrics().counters().refresh_succeeded();
                    backoff.reset();
                    first_done = true;
                    not_before = None;
                    recheck = None;
                    self.lifetime = Some(token.lifetime());
                    let p = self
                        .draw_point(&token)
                        .max(Instant::now() + MIN_REFRESH_DELAY.min(token.remaining()));
                    point = Some(p);
                    next = Some(p);
                    let in_ = p.saturating_duration_since(Instant::now());
                    tracing::info!(next_refresh_in_s = in_.as_secs(), "next refresh scheduled");
                    self.flow.emit(Progress::RefreshScheduled { in_ });
                    let token = Arc::new(token);
                    if let Some(cache) = &self.cache {
                        let (access, keys, now) = (
                            self.flow.access_token(),
                            self.flow.verifier.known_keys(),
                            self.flow.now(),
                        );
                        // On the state directory's file-work lane (its signature too, which
                        // may be a hardware key's): a stalled disk delays the token's
                        // publication by at most CACHE_WAIT, and only the newest queued
                        // save is written when the disk answers again.
                        let generation = self.cache_saves.fetch_add(1, Ordering::Relaxed) + 1;
                        let (cache, token, saves) =
                            (cache.clone(), token.clone(), self.cache_saves.clone());
                        let saved =
                            crate::filework::Lane::for_file(cache.path()).submit(move || {
                                if saves.load(Ordering::Relaxed) == generation {
                                    cache.save(Some(&token), access.as_ref(), keys, now);
                                }
                            });
                        if tokio::time::timeout(CACHE_WAIT, saved).await.is_err() {
                            tracing::warn!(
                                "the token cache was not saved within {} s (the state directory's filesystem does not answer); serving on",
                                CACHE_WAIT.as_secs()
                            );
                        }
                    }
                    self.current.send_replace(Some(token));
                    self.status.send_modify(|s| {
                        s.state = State::Ready;
                        s.consecutive_failures = 0;
                        s.failing_since = None;
                        s.last_success = Some(Instant::now());
                        s.refreshes_ok += 1;
                    });
                    self.publish_plan(next, point);
                }
                Err(err) => {
                    let class = err.class();
                    let enrolling = err.needs_enrollment();
                    let delay = if enrolling {
                        // No upstream call was made.
                        budget.give_back();
                        ENROLLMENT_POLL
                    } else if class == Class::Fatal {
                        // Needs a human; keep trying, slowly, so a fix is picked up.
                        backoff.next(self.jitter.as_ref(), err.retry_after());
                        backoff
                            .cap()
                            .max(self.retry_delay(&mut backoff, err.retry_after()))
                    } else {
                        self.retry_delay(&mut backoff, err.retry_after())
                    };
                    let at = Instant::now() + delay;
                    next = Some(at);
                    not_before = Some(at);
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
                        s.refreshes_failed += 1;
                    });
                    self.publish_plan(next, point);
                }
            }
        }
        tracing::debug!("refresh loop stopped");
    }

    /// Publishes what the loop plans: the next attempt and the held token's refresh point.
    fn publish_plan(&self, next: Option<Instant>, point: Option<Instant>) {
        let interval = self.interval();
        self.status.send_if_modified(|s| {
            let changed =
                s.next_refresh != next || s.refresh_point != point || s.interval != interval;
            s.next_refresh = next;
            s.refresh_point = point;
            s.interval = interval;
            changed
        });
    }
}

/// How often an idle loop (nothing planned) still wakes, to show it is alive.
const IDLE_TICK: Duration = Duration::from_secs(60);

// === impl Demand ===

impl Demand {
    fn active(&self, now: Instant, window: Duration) -> bool {
        self.holders.load(Ordering::Relaxed) > 0
            || self
                .last_request
                .lock()
                .ok()
                .and_then(|l| *l)
                .is_some_and(|at| now.saturating_duration_since(at) < window)
    }
}

// === impl DemandGuard ===

impl Drop for DemandGuard {
    fn drop(&mut self) {
        self.0.demand.holders.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Handle ===

impl Handle {
    /// Asks the loop for a token now: one is fetched unless the loop is waiting out a
    /// failure or the retry budget is spent (then the next planned attempt answers).
    pub fn refresh_now(&self) {
        self.inner.demand.urgent.store(true, Ordering::Relaxed);
        self.inner.wake.notify_one();
    }

    /// An admin's explicit refresh: one attempt now, even while the loop waits out
    /// failures, at most one per [`ADMIN_INTERVAL`] and only with a retry-budget credit.
    /// `Ok` means the attempt has started; its outcome shows on `current` and `status`.
    ///
    /// # Errors
    /// [`Refused`] with when to ask again.
    pub async fn admin_refresh(&self) -> Result<(), Refused> {
        let (tx, rx) = oneshot::channel();
        self.admin.send(tx).await.map_err(|_| Refused::Stopped)?;
        rx.await.unwrap_or(Err(Refused::Stopped))
    }

    /// Counts as demand for as long as the guard lives (a watch stream, the MQTT session).
    pub fn hold(&self) -> DemandGuard {
        if self.inner.demand.holders.fetch_add(1, Ordering::Relaxed) == 0 {
            self.inner.wake.notify_one();
        }
        DemandGuard(self.inner.clone())
    }

    /// Records a token request made at `now` (demand); wakes a lapsed loop.
    fn note_request_at(&self, now: Instant) {
        if let Ok(mut l) = self.inner.demand.last_request.lock() {
            *l = Some(now);
        }
        let lapsed = {
            let s = self.status.borrow();
            s.next_refresh.is_none() || s.past_refresh_point_at(now) != Some(false)
        };
        if lapsed {
            self.inner.wake.notify_one();
        }
    }

    /// Whether anything uses the token now.
    pub fn demand(&self) -> DemandView {
        let now = Instant::now();
        let d = &self.inner.demand;
        DemandView {
            active: self.inner.mode == Mode::Eager || d.active(now, self.inner.window),
            holders: d.holders.load(Ordering::Relaxed),
            last_request_s: d
                .last_request
                .lock()
                .ok()
                .and_then(|l| *l)
                .map(|at| now.saturating_duration_since(at).as_secs()),
        }
    }

    /// Follows the flow's steps (for the demo's narration).
    pub fn progress(&self) -> broadcast::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// The live token if it has at least `min_ttl` left at `now` (the request's time: what
    /// a token answer reads the clock for, once); otherwise asks for one and waits up to
    /// `wait` for one that does. Counts as demand.
    ///
    /// # Errors
    /// [`Unavailable`] when no such token arrived in time, or at once when the loop's next
    /// attempt (after failures, or for want of retry budget) is due only after `wait`.
    pub async fn token_at(
        &self,
        now: Instant,
        min_ttl: Duration,
        wait: Duration,
    ) -> Result<Arc<AssetToken>, Unavailable> {
        self.note_request_at(now);
        if let Some(t) = good(&self.current.borrow(), min_ttl, now) {
            return Ok(t);
        }
        // Boxed: the wait is rare, and its state would otherwise make every request's
        // future (and every connection's task) larger.
        Box::pin(self.wait_for(min_ttl, wait)).await
    }

    /// Asks for a token with at least `min_ttl` left and waits up to `wait` for it.
    async fn wait_for(
        &self,
        min_ttl: Duration,
        wait: Duration,
    ) -> Result<Arc<AssetToken>, Unavailable> {
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
        // The loop is waiting out failures and will not try again within the wait: say so
        // now rather than hold the caller (the retry budget is not bypassed).
        {
            let s = self.status.borrow();
            let deadline = Instant::now() + wait;
            if s.consecutive_failures > 0 && s.next_refresh.is_some_and(|n| n > deadline) {
                return Err(Unavailable);
            }
        }
        self.refresh_now();
        let mut rx = self.current.clone();
        let arrival = async {
            loop {
                if rx.changed().await.is_err() {
                    return None;
                }
                if let Some(t) = good(&rx.borrow_and_update(), min_ttl, Instant::now()) {
                    return Some(t);
                }
            }
        };
        match tokio::time::timeout(wait, arrival).await {
            Ok(Some(t)) => Ok(t),
            _ => Err(Unavailable),
        }
    }

    /// The status as last published.
    pub fn snapshot(&self) -> Snapshot {
        self.status.borrow().clone()
    }
}

/// The held token, if it is live at `now` with at least `min_ttl` left.
fn good(
    held: &Option<Arc<AssetToken>>,
    min_ttl: Duration,
    now: Instant,
) -> Option<Arc<AssetToken>> {
    held.as_ref()
        .filter(|t| t.is_live_at(now) && t.remaining_at(now) >= min_ttl)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(refresh_at: f64) -> Policy {
        Policy {
            refresh_at,
            backoff_cap: backoff::DEFAULT_CAP,
            attempt_budget: Duration::from_secs(90),
            mode: Mode::OnDemand,
            demand_window: DEFAULT_DEMAND_WINDOW,
        }
    }

    #[test]
    fn band_is_wide_and_stays_in_the_lifetime() {
        assert_eq!(policy(0.8).band(), (0.5, 0.8));
        let (lo, hi) = policy(0.1).band();
        assert!((lo - 0.05).abs() < 1e-9 && (hi - 0.1).abs() < 1e-9);
        assert_eq!(
            policy(0.8).interval(Duration::from_secs(60)),
            Duration::from_secs(39)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_two_per_interval() {
        let now = Instant::now();
        let i = Some(Duration::from_secs(40));
        let mut b = Budget::full(now);
        for _ in 0..2 {
            assert_eq!(b.wait(now, i), Duration::ZERO);
            b.take();
        }
        assert_eq!(b.wait(now, i), Duration::from_secs(20));
        assert_eq!(b.wait(now + Duration::from_secs(20), i), Duration::ZERO);
        b.take();
        assert_eq!(
            b.wait(now + Duration::from_secs(20), i),
            Duration::from_secs(20)
        );
        // Unknown lifetime: no budget to scale, always allowed.
        assert_eq!(b.wait(now, None), Duration::ZERO);
    }
}
