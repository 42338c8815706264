//! The refresh loop: one task that owns the [`Flow`] and publishes the current token.
//!
//! Only this task talks to Salesforce, so concurrent callers wanting a fresh token can never
//! cause more than one exchange at a time (single flight): they ask through [`Handle`] and
//! wait on the `watch` channel.
//!
//! The loop is a driver: *when* to make an attempt (the refresh band, on-demand lapse, the
//! retry budget, the boot spread, hold-off after failures, admin refreshes) is decided by
//! its [`Schedule`], which does no I/O; see [`super::schedule`] for the rules. The loop
//! waits for the next event (its timer, a handle's request, an admin, shutdown), feeds it
//! to the schedule, and does what the [`Decision`] asks: an upstream attempt, whose result
//! it feeds back, publishing the token, the status and the cache.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::cache::Cache;
use super::flow::{Flow, Progress};
use super::gate::Gate;
use super::schedule::{
    Action, Cause, Decision, Event, Failure, Plan, Restored, Schedule, Validity,
};
use super::status::{LIVENESS_SLACK, Snapshot, State};
use super::{AssetToken, Current, live};
use crate::backoff::{Jitter, OsJitter};
use crate::error::chain;
use crate::salesforce::Class;

pub use super::schedule::{
    ADMIN_INTERVAL, BOOT_SPREAD, BUDGET_PER_INTERVAL, DEFAULT_DEMAND_WINDOW, ENROLLMENT_POLL, Mode,
    Policy, REFRESH_BAND, RETRY_RANGE, Refused,
};

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

/// The refresh loop; see the module docs. Start it with [`Refresher::run`].
pub struct Refresher {
    flow: Flow,
    cache: Option<Cache>,
    policy: Policy,
    /// Taken by the schedule when the loop starts.
    jitter: Option<Box<dyn Jitter>>,
    current: watch::Sender<Option<Arc<AssetToken>>>,
    status: watch::Sender<Snapshot>,
    inner: Arc<Inner>,
    admin: mpsc::Receiver<oneshot::Sender<Result<(), Refused>>>,
    /// The lifetime of the last token the cache held (also an expired one): a restart.
    restored_lifetime: Option<Duration>,
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
            jitter: Some(jitter),
            current,
            status,
            inner,
            admin: admin_rx,
            restored_lifetime: restored.lifetime,
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

    /// Runs until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let restored = Restored {
            lifetime: self.restored_lifetime,
            token: self.current.borrow().as_deref().map(validity),
        };
        let jitter = self.jitter.take().unwrap_or_else(|| Box::new(OsJitter));
        let mut schedule = Schedule::new(self.policy.clone(), jitter, restored, Instant::now());
        self.publish_plan(schedule.plan());
        loop {
            let wake_at = schedule.wake_at(Instant::now());
            self.status
                .send_modify(|s| s.expect_by = wake_at + LIVENESS_SLACK);
            let mut admin = None;
            let cause = tokio::select! {
                () = cancel.cancelled() => break,
                () = sleep_until(wake_at) => Cause::Timer,
                () = self.inner.wake.notified() => Cause::Request {
                    urgent: self.inner.demand.urgent.swap(false, Ordering::Relaxed),
                },
                Some(reply) = self.admin.recv() => {
                    admin = Some(reply);
                    Cause::Admin
                }
            };
            let now = Instant::now();
            self.status.send_modify(|s| s.heartbeat = now);
            let event = Event::Wake {
                cause,
                demand: self.inner.demand.active(now, self.inner.window),
                credentials_changed: schedule.recheck_due(now) && self.flow.credentials.changed(),
            };
            let decision = schedule.on(event, now);
            self.follow(&decision, admin);
            if decision.action != Action::Attempt {
                self.publish_plan(schedule.plan());
                continue;
            }
            let Some(result) = self.attempt(&cancel).await else {
                break;
            };
            let now = Instant::now();
            let fetched = result.as_ref().map(validity).map_err(failure);
            let decision = schedule.on(Event::Fetched(fetched), now);
            self.follow(&decision, None);
            let plan = schedule.plan();
            match result {
                Ok(token) => self.succeeded(token, plan).await,
                Err(err) => self.failed(&err, plan),
            }
            self.answered_pending_requests().await;
            self.publish_plan(plan);
        }
        tracing::debug!("refresh loop stopped");
    }

    /// Does what a wake's `decision` asks besides an attempt: drops an expired token,
    /// answers the admin, and says why nothing happens.
    fn follow(&self, decision: &Decision, admin: Option<oneshot::Sender<Result<(), Refused>>>) {
        if decision.expired {
            tracing::warn!(
                "the asset token expired before it was refreshed; no token is served until a new one is obtained"
            );
            self.current.send_replace(None);
            self.status.send_modify(|s| {
                s.refresh_point = None;
                if s.state == State::Degraded {
                    s.state = State::Failing;
                }
            });
        }
        if decision.credentials_changed {
            tracing::info!("the credentials changed; retrying now");
        }
        if let (Some(reply), Some(answer)) = (admin, decision.admin.clone()) {
            // The caller may have given up; it learns the outcome from the status.
            let _ = reply.send(answer);
        }
        match decision.action {
            Action::Lapse => tracing::debug!("nothing uses the asset token; letting it lapse"),
            Action::Starved { wait } => tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "retry budget spent; waiting"
            ),
            Action::Wait | Action::Attempt => {}
        }
    }

    /// One upstream attempt, through the gate if there is one; `None` if cancelled.
    async fn attempt(
        &mut self,
        cancel: &CancellationToken,
    ) -> Option<Result<AssetToken, super::flow::Error>> {
        let attempt_budget = self.policy.attempt_budget;
        let gate = self.gate.clone();
        let _permit = match &gate {
            Some(gate) => {
                let slot = gate.reserve();
                self.status.send_modify(|s| {
                    s.expect_by = slot + attempt_budget + LIVENESS_SLACK;
                });
                tokio::select! {
                    () = cancel.cancelled() => return None,
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
            () = cancel.cancelled() => return None,
            r = self.flow.fetch() => r,
        };
        Some(result)
    }

    /// Drops the refresh requests made since the attempt began: its outcome, now published
    /// (the token, after its cache save; or the failure in the status), answers them, and
    /// they would otherwise start another exchange right away.
    async fn answered_pending_requests(&self) {
        tokio::select! {
            biased;
            () = self.inner.wake.notified() => {}
            () = std::future::ready(()) => {}
        }
        self.inner.demand.urgent.store(false, Ordering::Relaxed);
    }

    /// Publishes a new token (after saving it to the cache) and the status.
    async fn succeeded(&self, token: AssetToken, plan: Plan) {
        self.flow.upstream.metrics().counters().refresh_succeeded();
        let in_ = plan.next.map_or(Duration::ZERO, |p| {
            p.saturating_duration_since(Instant::now())
        });
        tracing::info!(next_refresh_in_s = in_.as_secs(), "next refresh scheduled");
        self.flow.emit(Progress::RefreshScheduled { in_ });
        let token = Arc::new(token);
        if let Some(cache) = &self.cache {
            let (access, keys, now) = (
                self.flow.access_token(),
                self.flow.verifier.known_keys(),
                self.flow.now(),
            );
            // On the state directory's file-work lane (its signature too, which may be a
            // hardware key's): a stalled disk delays the token's publication by at most
            // CACHE_WAIT, and only the newest queued save is written when the disk answers
            // again.
            let generation = self.cache_saves.fetch_add(1, Ordering::Relaxed) + 1;
            let (cache, token, saves) = (cache.clone(), token.clone(), self.cache_saves.clone());
            let saved = crate::filework::Lane::for_file(cache.path()).submit(move || {
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
    }

    /// Reports a failed attempt: log, progress, metrics and status.
    fn failed(&self, err: &super::flow::Error, plan: Plan) {
        let enrolling = err.needs_enrollment();
        let class = err.class();
        let delay = plan.next.map_or(Duration::ZERO, |n| {
            n.saturating_duration_since(Instant::now())
        });
        let message = chain(err);
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
    }

    /// Publishes what the schedule plans: the next attempt and the held token's refresh
    /// point.
    fn publish_plan(&self, plan: Plan) {
        self.status.send_if_modified(|s| {
            let changed = s.next_refresh != plan.next
                || s.refresh_point != plan.point
                || s.interval != plan.interval;
            s.next_refresh = plan.next;
            s.refresh_point = plan.point;
            s.interval = plan.interval;
            changed
        });
    }
}

/// What the schedule needs of a token.
fn validity(token: &AssetToken) -> Validity {
    Validity {
        received: token.received,
        expires: token.expires,
    }
}

/// What the schedule needs of a failed attempt.
fn failure(err: &super::flow::Error) -> Failure {
    let retry_after = err.retry_after();
    if err.needs_enrollment() {
        Failure::NotEnrolled
    } else if err.class() == Class::Fatal {
        Failure::Fatal { retry_after }
    } else {
        Failure::Retryable { retry_after }
    }
}

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
