//! The refresh schedule: every fleet rule of the refresh loop as a state machine with no I/O.
//!
//! [`Schedule::on`] takes what happened ([`Event`]) and the monotonic time it happened at,
//! and answers what to do ([`Decision`]); [`Schedule::wake_at`] says when the driver (the
//! refresh loop, which does the I/O) must wake at the latest. Randomness (the refresh
//! point drawn in the band, the boot spread's slot, the retry delay) comes from the
//! [`Jitter`] it is given, so with a fixed or seeded one the schedule is deterministic.
//!
//! Rules, each there for a fleet of devices sharing one org (every exchange publishes an
//! `AssetTokenEvent` that counts against the org's event allocation):
//!
//! - **Refresh point.** Each cycle's refresh point is drawn afresh, uniformly over a wide
//!   band of the lifetime (from `refresh_at - 30 %` to `refresh_at`, at least half of
//!   `refresh_at`), so a fleet that refreshed in lock-step (a mass reboot) disperses within a
//!   few cycles instead of keeping its phase. Never sooner than [`MIN_REFRESH_DELAY`] after
//!   a token arrived.
//! - **Policy.** [`Mode::Eager`] refreshes every token ahead of expiry. [`Mode::OnDemand`]
//!   does so only while something uses the token (a request within the demand window, an
//!   open watch stream, the MQTT session); otherwise the token lapses and the next request
//!   fetches one. Until the first token the schedule tries whatever the demand (a booting
//!   device checks that its credentials work).
//! - **Retry budget.** A device makes at most 2 upstream attempts per normal refresh
//!   interval (a token bucket of 2 credits, refilled one per half interval), whatever asks:
//!   the schedule, a `min_ttl` request or an admin. After a retryable failure the next
//!   attempt is drawn uniformly in 0.5–1.0 refresh intervals (so an outage costs the fleet
//!   ~1.3x its steady rate, and every device retries within one interval once Salesforce is
//!   back); `Retry-After` is a floor. While no lifetime is known, full-jitter backoff.
//! - **Hold-off.** After a failure no attempt is made before the retry time, whoever asks
//!   (except an admin). A fatal failure waits at least the backoff cap, and the credentials
//!   are looked at every [`ENROLLMENT_POLL`]: a changed one is tried at once. A device not
//!   enrolled yet looks every [`ENROLLMENT_POLL`] and spends no budget (no upstream call).
//! - **Boot spread.** A refresh that is overdue, or due within the spread, when the agent
//!   starts with a cached token (a reboot) is drawn uniformly over [`BOOT_SPREAD`] refresh
//!   intervals, with fresh randomness per boot, instead of all devices of a rebooted fleet
//!   calling at once. A request that finds no live token does not wait for that slot.
//! - **Demand for a token now** (`min_ttl`, no live token): an attempt now, unless the
//!   schedule is holding off after a failure (then at the retry time) or the budget is spent.
//! - **Admin refresh**: one attempt now, even while holding off after failures, at most one
//!   per [`ADMIN_INTERVAL`], and only with a budget credit.
//! - **Expiry.** The held token is dropped the moment it expires; the schedule wakes for it.

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::{self, Backoff, Jitter};
pub use crate::config::DEFAULT_DEMAND_WINDOW;

/// The refresh policy (`token.refresh`).
pub use crate::config::RefreshPolicy as Mode;

/// How often to look for a refresh token while waiting for enrollment, and for a changed
/// one while waiting out a fatal failure (someone re-enrolled the device).
pub const ENROLLMENT_POLL: Duration = Duration::from_secs(10);
/// Refresh no sooner than this after receiving a token, however short-lived it is.
pub const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);
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
/// How often an idle schedule (nothing planned) still wakes its driver, to show it is alive.
pub const IDLE_TICK: Duration = Duration::from_secs(60);
/// The longest `Retry-After` honoured, so a hostile header cannot park the agent forever.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Tuning for the schedule.
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

/// When a token was received and when it expires (monotonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub received: Instant,
    pub expires: Instant,
}

/// What the driver knew at start-up, from the token cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct Restored {
    /// The lifetime of the last token seen (also an expired cached one): a restart, not a
    /// first boot.
    pub lifetime: Option<Duration>,
    /// The cached token, if it is still live.
    pub token: Option<Validity>,
}

/// How an attempt failed, as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth trying again (an outage, a timeout, a throttle).
    Retryable { retry_after: Option<Duration> },
    /// Needs a human (revoked credentials, a misconfigured org).
    Fatal { retry_after: Option<Duration> },
    /// The device is not enrolled yet: no upstream call was made.
    NotEnrolled,
}

/// What woke the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// [`Schedule::wake_at`] came.
    Timer,
    /// A handle asked: a token request that found the token lapsed, a new holder, or
    /// (`urgent`) a request the held token cannot answer (none, or too little time left).
    Request { urgent: bool },
    /// An admin's explicit refresh; [`Decision::admin`] holds the answer.
    Admin,
}

/// An input to the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The driver woke.
    Wake {
        cause: Cause,
        /// Whether anything uses the token now (a recent request, a holder).
        demand: bool,
        /// Whether the credentials changed; the driver looks only when
        /// [`Schedule::recheck_due`] says so (after a fatal failure).
        credentials_changed: bool,
    },
    /// The attempt [`Action::Attempt`] asked for ended.
    Fetched(Result<Validity, Failure>),
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing now: wait for [`Schedule::wake_at`] or another event.
    Wait,
    /// Nothing uses the token (on demand): it lapses, no attempt until demand returns.
    Lapse,
    /// An attempt is due but the retry budget is spent: it waits this long.
    Starved { wait: Duration },
    /// Make one upstream attempt now (its budget credit is taken) and report it with
    /// [`Event::Fetched`].
    Attempt,
}

/// The answer to one [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The held token expired before it was refreshed: stop serving it.
    pub expired: bool,
    /// The credentials changed after a fatal failure: the schedule retries at once.
    pub credentials_changed: bool,
    /// The answer to an admin's refresh.
    pub admin: Option<Result<(), Refused>>,
    pub action: Action,
}

/// What the schedule plans, for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The next attempt; `None` while lapsed.
    pub next: Option<Instant>,
    /// The held token's refresh point.
    pub point: Option<Instant>,
    /// The normal refresh interval, once a token's lifetime is known.
    pub interval: Option<Duration>,
}

/// The retry budget: a token bucket of [`BUDGET_PER_INTERVAL`] credits, refilled at that
/// many per refresh interval. Every upstream attempt takes one.
#[derive(Debug, Clone)]
struct Budget {
    credits: f64,
    at: Instant,
}

/// See the module docs.
pub struct Schedule {
    policy: Policy,
    jitter: Box<dyn Jitter>,
    /// The lifetime of the last token seen, which sets the refresh interval the budget and
    /// the retry delays are scaled to.
    lifetime: Option<Duration>,
    budget: Budget,
    /// Backoff while no lifetime is known, and the floor after a fatal failure.
    backoff: Backoff,
    /// The next planned attempt; `None` while lapsed (on demand, nothing uses the token).
    next: Option<Instant>,
    /// The held token's refresh point.
    point: Option<Instant>,
    /// The held token, until it expires.
    held: Option<Validity>,
    /// A token was obtained (or a restored one is not yet due): on demand applies. Before
    /// it, the schedule tries whatever the demand.
    first_done: bool,
    /// After a failure: no attempt before this, whoever asks (except an admin).
    not_before: Option<Instant>,
    last_admin: Option<Instant>,
    /// While waiting out a fatal failure: when to look whether the credentials changed.
    recheck: Option<Instant>,
}

// === impl Policy ===

impl Policy {
    /// `attempt_budget` for an upstream timeout: an attempt makes at most
    /// [`super::flow::MAX_CALLS_PER_FETCH`] calls, each limited by the timeout.
    pub fn budget_for(timeout: Duration) -> Duration {
        timeout.saturating_mul(super::flow::MAX_CALLS_PER_FETCH)
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

// === impl Validity ===

impl Validity {
    /// Its whole validity period as received.
    pub fn lifetime(&self) -> Duration {
        self.expires.saturating_duration_since(self.received)
    }
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

// === impl Decision ===

impl Decision {
    fn new(action: Action) -> Self {
        Self {
            expired: false,
            credentials_changed: false,
            admin: None,
            action,
        }
    }
}

// === impl Schedule ===

impl Schedule {
    /// The schedule of a loop starting at `now` with what the cache held: a first boot
    /// tries at once; a restart takes a slot in the boot spread for a refresh that is
    /// overdue or due within it, and otherwise keeps the restored token's refresh point.
    pub fn new(policy: Policy, jitter: Box<dyn Jitter>, restored: Restored, now: Instant) -> Self {
        let backoff = Backoff::new(backoff::MIN, policy.backoff_cap);
        let mut s = Self {
            policy,
            jitter,
            lifetime: restored.lifetime,
            budget: Budget::full(now),
            backoff,
            next: None,
            point: None,
            held: restored.token,
            first_done: false,
            not_before: None,
            last_admin: None,
            recheck: None,
        };
        s.next = Some(match restored.token {
            Some(t) => {
                // A restart: every device of a rebooted fleet would refresh within the
                // same few seconds (overdue ones at once, the others at points bunched in
                // the rest of their lifetime), so any refresh due within the boot spread
                // takes a slot in it instead.
                let p = s.draw_point(t);
                s.point = Some(p);
                if p <= now + s.boot_window() {
                    s.boot_slot(now)
                } else {
                    p
                }
            }
            None if restored.lifetime.is_some() => s.boot_slot(now),
            None => now,
        });
        // A restored token already past its refresh point counts as no token for this: the
        // start-up refresh (in its boot-spread slot) happens whatever the demand, so the
        // agent does not declare itself ready on a token about to expire.
        s.first_done = s.point.is_some_and(|p| p > now);
        s
    }

    /// What the schedule plans now.
    pub fn plan(&self) -> Plan {
        Plan {
            next: self.next,
            point: self.point,
            interval: self.interval(),
        }
    }

    /// When the driver must wake at the latest, seen at `now`: the next attempt, the held
    /// token's expiry or a credentials check, and at least every [`IDLE_TICK`].
    pub fn wake_at(&self, now: Instant) -> Instant {
        let idle = now + IDLE_TICK;
        [self.next, self.held.map(|t| t.expires), self.recheck]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(idle)
            .min(idle)
    }

    /// Whether the driver should look at the credentials at this wake (waiting out a fatal
    /// failure), and report it in [`Event::Wake`].
    pub fn recheck_due(&self, now: Instant) -> bool {
        self.recheck.is_some_and(|r| r <= now)
    }

    /// The held token, as the schedule sees it (never one expired at the last event).
    pub fn held(&self) -> Option<Validity> {
        self.held
    }

    /// Feeds `event`, which happened at `now`, and says what to do.
    pub fn on(&mut self, event: Event, now: Instant) -> Decision {
        match event {
            Event::Wake {
                cause,
                demand,
                credentials_changed,
            } => self.woke(cause, demand, credentials_changed, now),
            Event::Fetched(Ok(token)) => {
                self.succeeded(token, now);
                Decision::new(Action::Wait)
            }
            Event::Fetched(Err(failure)) => {
                self.failed(failure, now);
                // The attempt may have outlasted the held token.
                let mut d = Decision::new(Action::Wait);
                d.expired = self.drop_expired(now);
                d
            }
        }
    }

    /// Drops the held token if it has expired at `now`; says whether it did.
    fn drop_expired(&mut self, now: Instant) -> bool {
        let expired = self.held.is_some_and(|t| t.expires <= now);
        if expired {
            self.held = None;
            self.point = None;
        }
        expired
    }

    fn woke(&mut self, cause: Cause, demand: bool, changed: bool, now: Instant) -> Decision {
        let mut d = Decision::new(Action::Wait);
        d.expired = self.drop_expired(now);
        if self.recheck_due(now) {
            if changed {
                d.credentials_changed = true;
                self.next = Some(now);
                self.not_before = None;
                self.recheck = None;
            } else {
                self.recheck = Some(now + ENROLLMENT_POLL);
            }
        }
        let mut forced = false;
        match cause {
            Cause::Timer => {}
            Cause::Request { urgent } => {
                let past = self.point.is_none_or(|p| p <= now);
                if urgent || (self.next.is_none() && past && demand) {
                    let at = self.not_before.map_or(now, |nb| nb.max(now));
                    self.next = Some(self.next.map_or(at, |n| n.min(at)));
                }
            }
            Cause::Admin => {
                let answer = match self.last_admin {
                    Some(last) if now < last + ADMIN_INTERVAL => Err(Refused::RateLimited {
                        retry_in: (last + ADMIN_INTERVAL) - now,
                    }),
                    _ => match self.budget.wait(now, self.interval()) {
                        w if w.is_zero() => Ok(()),
                        w => Err(Refused::Budget { retry_in: w }),
                    },
                };
                forced = answer.is_ok();
                if forced {
                    self.last_admin = Some(now);
                }
                d.admin = Some(answer);
            }
        }
        if !forced {
            if self.next.is_none_or(|n| n > now) {
                return d;
            }
            if self.policy.mode == Mode::OnDemand && self.first_done && !demand {
                self.next = None;
                d.action = Action::Lapse;
                return d;
            }
            let wait = self.budget.wait(now, self.interval());
            if !wait.is_zero() {
                self.next = Some(now + wait);
                d.action = Action::Starved { wait };
                return d;
            }
        }
        self.budget.take();
        d.action = Action::Attempt;
        d
    }

    fn succeeded(&mut self, token: Validity, now: Instant) {
        self.backoff.reset();
        self.first_done = true;
        self.not_before = None;
        self.recheck = None;
        self.lifetime = Some(token.lifetime());
        let remaining = token.expires.saturating_duration_since(now);
        let p = self
            .draw_point(token)
            .max(now + MIN_REFRESH_DELAY.min(remaining));
        self.point = Some(p);
        self.next = Some(p);
        self.held = Some(token);
    }

    fn failed(&mut self, failure: Failure, now: Instant) {
        let delay = match failure {
            Failure::NotEnrolled => {
                // No upstream call was made.
                self.budget.give_back();
                ENROLLMENT_POLL
            }
            Failure::Fatal { retry_after } => {
                // Needs a human; keep trying, slowly, so a fix is picked up.
                self.backoff.next(self.jitter.as_ref(), retry_after);
                let drawn = self.retry_delay(retry_after);
                self.backoff.cap().max(drawn)
            }
            Failure::Retryable { retry_after } => self.retry_delay(retry_after),
        };
        let at = now + delay;
        self.next = Some(at);
        self.not_before = Some(at);
        self.recheck = matches!(failure, Failure::Fatal { .. }).then(|| now + ENROLLMENT_POLL);
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
    fn draw_point(&self, token: Validity) -> Instant {
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
    fn retry_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        match self.interval() {
            Some(i) => {
                let (lo, hi) = RETRY_RANGE;
                let drawn = i.mul_f64(lo + (hi - lo) * self.unit());
                let floor = retry_after.map_or(Duration::ZERO, |ra| ra.min(MAX_RETRY_AFTER));
                drawn
                    .min(self.policy.backoff_cap)
                    .max(backoff::MIN)
                    .max(floor)
            }
            None => self.backoff.next(self.jitter.as_ref(), retry_after),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;

    use super::*;

    /// The refresh_rules timing: 60 s tokens, jitter 1/3: the point at 42 s, the interval
    /// 39 s, a retry 26 s after a failure, a credit every 19.5 s, a boot slot at 26 s.
    const L: Duration = Duration::from_secs(60);

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&self) -> f64 {
            self.0
        }
    }

    /// Draws from a list in turn, round and round.
    struct Draws {
        values: Vec<f64>,
        next: AtomicUsize,
    }
    impl Jitter for Draws {
        fn unit(&self) -> f64 {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            self.values
                .get(i % self.values.len().max(1))
                .copied()
                .unwrap_or(0.5)
        }
    }

    fn policy(refresh_at: f64, mode: Mode) -> Policy {
        Policy {
            refresh_at,
            backoff_cap: backoff::DEFAULT_CAP,
            attempt_budget: Duration::from_secs(90),
            mode,
            demand_window: DEFAULT_DEMAND_WINDOW,
        }
    }

    /// A fixed origin far enough from the clock's start to go back in time from.
    fn origin() -> Instant {
        Instant::now() + Duration::from_secs(86_400)
    }

    fn at(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    fn schedule(mode: Mode, restored: Restored, t0: Instant) -> Schedule {
        Schedule::new(policy(0.8, mode), Box::new(Fixed(1.0 / 3.0)), restored, t0)
    }

    fn token(received: Instant, lifetime: Duration) -> Validity {
        Validity {
            received,
            expires: received + lifetime,
        }
    }

    fn wake(cause: Cause, demand: bool) -> Event {
        Event::Wake {
            cause,
            demand,
            credentials_changed: false,
        }
    }

    const TIMER: Cause = Cause::Timer;
    const REQUEST: Cause = Cause::Request { urgent: false };
    const URGENT: Cause = Cause::Request { urgent: true };
    const RETRYABLE: Failure = Failure::Retryable { retry_after: None };

    /// A first boot's schedule after its first token, fetched at `t0`.
    fn running(mode: Mode, t0: Instant) -> Schedule {
        let mut s = schedule(mode, Restored::default(), t0);
        assert_eq!(s.on(wake(TIMER, false), t0).action, Action::Attempt);
        s.on(Event::Fetched(Ok(token(t0, L))), t0);
        s
    }

    #[test]
    fn band_is_wide_and_stays_in_the_lifetime() {
        assert_eq!(policy(0.8, Mode::Eager).band(), (0.5, 0.8));
        let (lo, hi) = policy(0.1, Mode::Eager).band();
        assert!((lo - 0.05).abs() < 1e-9 && (hi - 0.1).abs() < 1e-9);
        assert_eq!(
            policy(0.8, Mode::Eager).interval(Duration::from_secs(60)),
            Duration::from_secs(39)
        );
    }

    #[test]
    fn budget_allows_two_per_interval() {
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

    #[test]
    fn a_first_boot_tries_at_once_then_refreshes_at_the_drawn_point() {
        let t0 = origin();
        let mut s = schedule(Mode::Eager, Restored::default(), t0);
        assert_eq!(s.plan().next, Some(t0));
        assert_eq!(s.on(wake(TIMER, false), t0).action, Action::Attempt);
        s.on(Event::Fetched(Ok(token(t0, L))), t0);
        // 80 % - 1/3 of the 30 % band: 70 % of 60 s.
        let plan = s.plan();
        assert_eq!(plan.next, Some(at(t0, 42.0)));
        assert_eq!(plan.point, plan.next);
        assert_eq!(plan.interval, Some(Duration::from_secs(39)));
        assert_eq!(s.wake_at(t0), at(t0, 42.0));
        // Eager: refreshed at the point whatever the demand; a request before it is not
        // a reason to refresh early.
        assert_eq!(s.on(wake(REQUEST, true), at(t0, 20.0)).action, Action::Wait);
        assert_eq!(
            s.on(wake(TIMER, false), at(t0, 42.0)).action,
            Action::Attempt
        );
    }

    #[test]
    fn on_demand_lets_an_unused_token_lapse_and_a_request_wakes_it() {
        let t0 = origin();
        let mut s = running(Mode::OnDemand, t0);
        let d = s.on(wake(TIMER, false), at(t0, 42.0));
        assert_eq!(d.action, Action::Lapse);
        assert_eq!(s.plan().next, None);
        // The token expires at 60 s: the schedule wakes for it and drops it.
        assert_eq!(s.wake_at(at(t0, 42.0)), at(t0, 60.0));
        let d = s.on(wake(TIMER, false), at(t0, 60.0));
        assert!(d.expired && s.held().is_none());
        assert_eq!(d.action, Action::Wait);
        // The next request (demand) fetches one at once.
        assert_eq!(
            s.on(wake(REQUEST, true), at(t0, 100.0)).action,
            Action::Attempt
        );
        s.on(Event::Fetched(Ok(token(at(t0, 100.0), L))), at(t0, 100.0));
        // Demand at the point (a request within the window): refreshed.
        assert_eq!(
            s.on(wake(TIMER, true), at(t0, 142.0)).action,
            Action::Attempt
        );
    }

    #[test]
    fn a_request_the_token_cannot_answer_refreshes_now_but_not_while_holding_off() {
        let t0 = origin();
        let mut s = running(Mode::OnDemand, t0);
        // min_ttl above what is left: before the band, at once.
        assert_eq!(
            s.on(wake(URGENT, true), at(t0, 10.0)).action,
            Action::Attempt
        );
        s.on(Event::Fetched(Err(RETRYABLE)), at(t0, 10.0));
        // Retry drawn at 1/2 + 1/6 of the 39 s interval.
        assert_eq!(s.plan().next, Some(at(t0, 36.0)));
        assert_eq!(s.on(wake(URGENT, true), at(t0, 20.0)).action, Action::Wait);
        assert_eq!(s.plan().next, Some(at(t0, 36.0)));
        assert_eq!(
            s.on(wake(TIMER, true), at(t0, 36.0)).action,
            Action::Attempt
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_an_hour_at_most() {
        let t0 = origin();
        let mut s = running(Mode::Eager, t0);
        s.on(wake(TIMER, false), at(t0, 42.0));
        let ra = |secs| Failure::Retryable {
            retry_after: Some(Duration::from_secs(secs)),
        };
        s.on(Event::Fetched(Err(ra(100))), at(t0, 42.0));
        assert_eq!(s.plan().next, Some(at(t0, 142.0)));
        s.on(wake(TIMER, false), at(t0, 142.0));
        s.on(Event::Fetched(Err(ra(86_400))), at(t0, 142.0));
        assert_eq!(s.plan().next, Some(at(t0, 3742.0)));
    }

    #[test]
    fn the_retry_budget_holds_back_a_third_attempt() {
        let t0 = origin();
        let mut s = running(Mode::Eager, t0);
        // The first attempt left one credit (2 - 1, a lifetime was not known yet).
        assert_eq!(
            s.on(wake(URGENT, true), at(t0, 1.0)).action,
            Action::Attempt
        );
        s.on(Event::Fetched(Ok(token(at(t0, 1.0), L))), at(t0, 1.0));
        // 2 / 19.5 credits gained since: the next one is 17.5 s away.
        let d = s.on(wake(URGENT, true), at(t0, 2.0));
        let Action::Starved { wait } = d.action else {
            panic!("{d:?}");
        };
        assert!((17.5..17.502).contains(&wait.as_secs_f64()), "{wait:?}");
        assert_eq!(s.plan().next, Some(at(t0, 2.0) + wait));
        assert_eq!(
            s.on(wake(TIMER, true), at(t0, 2.0) + wait).action,
            Action::Attempt
        );
    }

    #[test]
    fn an_admin_refresh_is_rate_limited_budgeted_and_overrides_hold_off() {
        let t0 = origin();
        let mut s = running(Mode::Eager, t0);
        s.on(wake(TIMER, false), at(t0, 42.0));
        s.on(Event::Fetched(Err(RETRYABLE)), at(t0, 42.0));
        // Holding off until 68; the admin's attempt is now.
        let d = s.on(wake(Cause::Admin, false), at(t0, 50.0));
        assert_eq!((d.admin, d.action), (Some(Ok(())), Action::Attempt));
        s.on(Event::Fetched(Err(RETRYABLE)), at(t0, 50.0));
        let d = s.on(wake(Cause::Admin, false), at(t0, 55.0));
        assert_eq!(
            d.admin,
            Some(Err(Refused::RateLimited {
                retry_in: Duration::from_secs(5)
            }))
        );
        assert_eq!(d.action, Action::Wait);
        let d = s.on(wake(Cause::Admin, false), at(t0, 61.0));
        assert!(
            matches!(d.admin, Some(Err(Refused::Budget { .. }))),
            "{d:?}"
        );
        assert_eq!(d.action, Action::Wait);
    }

    #[test]
    fn a_restart_spreads_a_due_refresh_over_two_intervals() {
        let t0 = origin();
        // The cached token, received 40 s ago: its point (2 s from now) is within the
        // spread (78 s), so it takes the slot at 1/3 of it.
        let restored = Restored {
            lifetime: Some(L),
            token: Some(token(t0 - Duration::from_secs(40), L)),
        };
        let mut s = schedule(Mode::Eager, restored, t0);
        assert_eq!(s.plan().point, Some(at(t0, 2.0)));
        assert_eq!(s.plan().next, Some(at(t0, 26.0)));
        // The token expires first (at 20 s): dropped, and the slot still waits.
        assert_eq!(s.wake_at(t0), at(t0, 20.0));
        let d = s.on(wake(TIMER, false), at(t0, 20.0));
        assert!(d.expired);
        assert_eq!(d.action, Action::Wait);
        assert_eq!(
            s.on(wake(TIMER, false), at(t0, 26.0)).action,
            Action::Attempt
        );
        // A restart whose cached token had expired: the slot too, whatever the demand.
        let restored = Restored {
            lifetime: Some(L),
            token: None,
        };
        let mut s = schedule(Mode::OnDemand, restored, t0);
        assert_eq!(s.plan().next, Some(at(t0, 26.0)));
        assert_eq!(
            s.on(wake(TIMER, false), at(t0, 26.0)).action,
            Action::Attempt
        );
    }

    #[test]
    fn not_enrolled_costs_no_budget_and_looks_again_every_poll() {
        let t0 = origin();
        let mut s = running(Mode::Eager, t0);
        let mut now = at(t0, 42.0);
        for _ in 0..10 {
            assert_eq!(s.on(wake(TIMER, false), now).action, Action::Attempt);
            s.on(Event::Fetched(Err(Failure::NotEnrolled)), now);
            now += ENROLLMENT_POLL;
            assert_eq!(s.plan().next, Some(now));
        }
    }

    #[test]
    fn a_fatal_failure_waits_the_cap_and_retries_when_the_credentials_change() {
        let t0 = origin();
        let mut s = running(Mode::Eager, t0);
        s.on(wake(TIMER, false), at(t0, 42.0));
        let fatal = Failure::Fatal { retry_after: None };
        s.on(Event::Fetched(Err(fatal)), at(t0, 42.0));
        assert_eq!(s.plan().next, Some(at(t0, 342.0)), "the 300 s backoff cap");
        assert!(!s.recheck_due(at(t0, 51.0)));
        assert_eq!(s.wake_at(at(t0, 42.0)), at(t0, 52.0));
        assert!(s.recheck_due(at(t0, 52.0)));
        assert_eq!(s.on(wake(TIMER, false), at(t0, 52.0)).action, Action::Wait);
        assert_eq!(s.wake_at(at(t0, 52.0)), at(t0, 60.0), "the token's expiry");
        let changed = Event::Wake {
            cause: TIMER,
            demand: false,
            credentials_changed: true,
        };
        let d = s.on(changed, at(t0, 62.0));
        assert!(d.credentials_changed && d.expired);
        assert_eq!(d.action, Action::Attempt);
    }

    #[test]
    fn a_short_lived_token_is_refreshed_no_sooner_than_a_second_after_it_came() {
        let t0 = origin();
        let mut s = running(Mode::Eager, t0);
        s.on(wake(TIMER, false), at(t0, 42.0));
        let short = Duration::from_millis(1200);
        s.on(Event::Fetched(Ok(token(at(t0, 42.0), short))), at(t0, 42.0));
        assert_eq!(s.plan().next, Some(at(t0, 43.0)));
    }

    /// One generated run: a policy, what the cache held, the jitter's draws, the outcomes
    /// of successive attempts, and the events between them.
    #[derive(Debug, Clone)]
    struct Case {
        eager: bool,
        refresh_at: f64,
        lifetime_s: u64,
        /// 0: first boot; 1: a restart with the cached token expired; 2: with it live.
        restored: u8,
        age: f64,
        draws: Vec<f64>,
        /// (outcome 0..6, Retry-After s, how long the attempt takes in ms)
        outcomes: Vec<(u8, u64, u64)>,
        /// (small gap?, gap, event kind 0..6)
        steps: Vec<(bool, u64, u8)>,
    }

    fn cases() -> impl Strategy<Value = Case> {
        (
            any::<bool>(),
            0.2f64..0.95,
            5u64..7200,
            0u8..3,
            0.0f64..1.0,
            proptest::collection::vec(0.0f64..=1.0, 1..16),
            proptest::collection::vec((0u8..6, 0u64..400, 0u64..5000), 1..16),
            proptest::collection::vec((any::<bool>(), any::<u64>(), 0u8..6), 1..80),
        )
            .prop_map(
                |(eager, refresh_at, lifetime_s, restored, age, draws, outcomes, steps)| Case {
                    eager,
                    refresh_at,
                    lifetime_s,
                    restored,
                    age,
                    draws,
                    outcomes,
                    steps,
                },
            )
    }

    #[derive(Debug)]
    struct Attempt {
        at: Instant,
        /// The exchange made an upstream call (it counts against the budget).
        upstream: bool,
        /// The token fetched last, held at the attempt, if no request it could not answer
        /// and no admin asked since it came.
        unasked: Option<Validity>,
    }

    #[derive(Debug, Default)]
    struct Trace {
        attempts: Vec<Attempt>,
        admin_ok: Vec<Instant>,
        /// Since when the budget is scaled to a known lifetime.
        known_from: Option<Instant>,
        /// Every violation of "no expired token held, and the driver never sleeps past
        /// the held one's expiry", as text.
        expired: Vec<String>,
    }

    /// Drives a schedule as the refresher would: timers at `wake_at`, the case's events in
    /// between, each attempt's outcome fed back after it took its time.
    fn simulate(case: &Case) -> Trace {
        let lifetime = Duration::from_secs(case.lifetime_s);
        let t0 = origin();
        let restored = match case.restored {
            0 => Restored::default(),
            1 => Restored {
                lifetime: Some(lifetime),
                token: None,
            },
            _ => Restored {
                lifetime: Some(lifetime),
                token: Some(token(t0 - lifetime.mul_f64(case.age), lifetime)),
            },
        };
        let mode = if case.eager {
            Mode::Eager
        } else {
            Mode::OnDemand
        };
        let jitter = Draws {
            values: case.draws.clone(),
            next: AtomicUsize::new(0),
        };
        let mut s = Schedule::new(
            policy(case.refresh_at, mode),
            Box::new(jitter),
            restored,
            t0,
        );
        let mut trace = Trace {
            known_from: restored.lifetime.map(|_| t0),
            ..Trace::default()
        };
        let mut now = t0;
        let mut demand = false;
        let credentials_changed = std::cell::Cell::new(false);
        let mut fetched: Option<Validity> = None;
        let mut asked = false;
        let mut outcomes = case.outcomes.iter().cycle();
        let mut deliver = |s: &mut Schedule, now: &mut Instant, cause: Cause, demand: bool| {
            if matches!(cause, Cause::Admin | Cause::Request { urgent: true }) {
                asked = true;
            }
            let changed = s.recheck_due(*now) && credentials_changed.get();
            if changed {
                credentials_changed.set(false);
            }
            let event = Event::Wake {
                cause,
                demand,
                credentials_changed: changed,
            };
            let d = s.on(event, *now);
            check_held(s, *now, &mut trace);
            if d.admin == Some(Ok(())) {
                trace.admin_ok.push(*now);
            }
            if d.action != Action::Attempt {
                return;
            }
            let Some(&(outcome, ra, took)) = outcomes.next() else {
                return;
            };
            let held = s.held();
            trace.attempts.push(Attempt {
                at: *now,
                upstream: outcome != 5,
                unasked: fetched.filter(|f| !asked && held == Some(*f)),
            });
            *now += Duration::from_millis(took);
            let retry_after = (ra % 2 == 0).then(|| Duration::from_secs(ra));
            let result = match outcome {
                0..=1 => Ok(token(*now, lifetime)),
                2..=3 => Err(Failure::Retryable { retry_after }),
                4 => Err(Failure::Fatal { retry_after }),
                _ => Err(Failure::NotEnrolled),
            };
            if let Ok(t) = result {
                fetched = Some(t);
                asked = false;
                trace.known_from.get_or_insert(*now);
            }
            s.on(Event::Fetched(result), *now);
            check_held(s, *now, &mut trace);
        };
        for &(small, gap, kind) in &case.steps {
            let gap = if small {
                Duration::from_millis(gap % 3000)
            } else {
                Duration::from_millis(gap % (case.lifetime_s * 1500))
            };
            let target = now + gap;
            for _ in 0..10_000 {
                let w = s.wake_at(now);
                if w > target {
                    break;
                }
                now = now.max(w);
                deliver(&mut s, &mut now, Cause::Timer, demand);
            }
            now = now.max(target);
            let cause = match kind {
                0 => Cause::Timer,
                1 => Cause::Request { urgent: false },
                2 => Cause::Request { urgent: true },
                3 => Cause::Admin,
                4 => {
                    // A holder comes or goes (a watch stream, the MQTT session).
                    demand = !demand;
                    Cause::Request { urgent: false }
                }
                _ => {
                    credentials_changed.set(true);
                    Cause::Timer
                }
            };
            let d = demand || matches!(cause, Cause::Request { .. });
            deliver(&mut s, &mut now, cause, d);
        }
        trace
    }

    fn check_held(s: &Schedule, now: Instant, trace: &mut Trace) {
        if let Some(t) = s.held() {
            if t.expires <= now {
                trace
                    .expired
                    .push(format!("held at {now:?}, expired {:?}", t.expires));
            }
            if s.wake_at(now) > t.expires {
                trace.expired.push(format!(
                    "sleeps until {:?} past the expiry {:?}",
                    s.wake_at(now),
                    t.expires
                ));
            }
        }
    }

    proptest! {
        /// Once a lifetime is known, the upstream attempts in any stretch of time are at
        /// most the bucket (2) plus one per half interval, whoever asked (the schedule,
        /// requests the token cannot answer, admins); admin attempts are 10 s apart.
        #[test]
        fn never_more_attempts_than_the_retry_budget_allows(case in cases()) {
            let trace = simulate(&case);
            let p = policy(case.refresh_at, Mode::Eager);
            let per_credit = p
                .interval(Duration::from_secs(case.lifetime_s))
                .as_secs_f64()
                / BUDGET_PER_INTERVAL;
            let counted: Vec<Instant> = trace
                .attempts
                .iter()
                .filter(|a| a.upstream && trace.known_from.is_some_and(|k| a.at >= k))
                .map(|a| a.at)
                .collect();
            for (i, a) in counted.iter().enumerate() {
                for (j, b) in counted.iter().enumerate().skip(i) {
                    let allowed = BUDGET_PER_INTERVAL + (*b - *a).as_secs_f64() / per_credit;
                    let made = (j - i + 1) as f64;
                    prop_assert!(
                        made <= allowed + 1e-6,
                        "{made} attempts in {:?}, {allowed:.3} allowed",
                        *b - *a
                    );
                }
            }
            for pair in trace.admin_ok.windows(2) {
                prop_assert!(pair[1] - pair[0] >= ADMIN_INTERVAL);
            }
        }

        /// The schedule never holds an expired token after an event, and never lets its
        /// driver sleep past the held token's expiry (so the refresher drops it on time).
        #[test]
        fn never_an_expired_token_held_or_slept_past(case in cases()) {
            let trace = simulate(&case);
            prop_assert!(trace.expired.is_empty(), "{:?}", trace.expired);
        }

        /// An attempt while holding a token it fetched is never before the band's earliest
        /// point of that token, unless something asked since (an admin, a request the
        /// token could not answer: `min_ttl`). Losing the token happens after the band
        /// anyway; a restored token's boot-spread slot is the other exception (it is no
        /// fetched token here).
        #[test]
        fn never_a_refresh_before_the_band(case in cases()) {
            let trace = simulate(&case);
            let (lo, _) = policy(case.refresh_at, Mode::Eager).band();
            for a in &trace.attempts {
                if let Some(t) = a.unasked {
                    let earliest = t.received + t.lifetime().mul_f64(lo);
                    prop_assert!(
                        a.at + Duration::from_millis(1) >= earliest,
                        "attempt {:?} before the band's start {:?}",
                        a.at - t.received,
                        earliest - t.received
                    );
                }
            }
        }
    }
}
