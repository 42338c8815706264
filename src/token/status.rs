//! The refresh loop's state, as the socket API, `asset-agent status` and systemd see it.

use serde::Serialize;
use tokio::time::Instant;

/// What the status shows about an identity besides its token: the gateway's own, or a
/// child's.
#[derive(Debug, Clone)]
pub struct Info {
    pub device_id: String,
    pub key_thumbprint: String,
    pub auth_method: &'static str,
}

/// The agent's state (docs/api.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No attempt has finished yet.
    Starting,
    /// A valid token is held and the last refresh succeeded.
    Ready,
    /// A valid token is held but refreshing it fails.
    Degraded,
    /// No valid token, and obtaining one fails.
    Failing,
    /// No refresh token yet: someone has to run `asset-agent enroll`.
    NeedsEnrollment,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Degraded => "degraded",
            State::Failing => "failing",
            State::NeedsEnrollment => "needs_enrollment",
        }
    }
}

/// What the refresh loop publishes after every step. Times are monotonic; the API turns
/// them into wall-clock strings when it answers.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: State,
    /// The last failure, as a full cause chain (never contains a secret).
    pub last_error: Option<String>,
    /// Short machine-readable reason of the last failure.
    pub last_error_reason: Option<String>,
    pub consecutive_failures: u32,
    /// When refreshing started failing (monotonic), if it is failing now.
    pub failing_since: Option<Instant>,
    pub next_refresh: Option<Instant>,
    pub last_success: Option<Instant>,
    /// Updated every time the loop wakes.
    pub heartbeat: Instant,
    /// The loop promises to publish again by this time (its next wake-up, or the end of
    /// the current attempt's time budget). Past it, the loop is stalled: not live.
    pub expect_by: Instant,
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
    /// Upstream attempts made (each is one token exchange unless an earlier step failed).
    pub attempts: u64,
    /// The refresh policy.
    pub policy: crate::config::RefreshPolicy,
    /// The held token's refresh point for this cycle; `None` when no token is held.
    pub refresh_point: Option<Instant>,
    /// The normal refresh interval, once a token's lifetime is known.
    pub interval: Option<std::time::Duration>,
}

/// Grace added to every liveness promise.
pub const LIVENESS_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

impl Snapshot {
    /// Whether the refresh loop is making progress (keeps its promise to wake).
    pub fn is_live(&self) -> bool {
        Instant::now() <= self.expect_by
    }

    pub fn starting() -> Self {
        Self {
            state: State::Starting,
            last_error: None,
            last_error_reason: None,
            consecutive_failures: 0,
            failing_since: None,
            next_refresh: None,
            last_success: None,
            heartbeat: Instant::now(),
            expect_by: Instant::now() + LIVENESS_SLACK,
            refreshes_ok: 0,
            refreshes_failed: 0,
            attempts: 0,
            policy: crate::config::RefreshPolicy::default(),
            refresh_point: None,
            interval: None,
        }
    }

    /// Whether the held token is past its refresh point (`None` when no token is held).
    /// A token past it is still valid, but the loop wants (or, on demand with nothing
    /// using it, would want) a new one.
    pub fn past_refresh_point(&self) -> Option<bool> {
        self.past_refresh_point_at(Instant::now())
    }

    /// [`Snapshot::past_refresh_point`] at `now`.
    pub fn past_refresh_point_at(&self, now: Instant) -> Option<bool> {
        self.refresh_point.map(|p| now >= p)
    }

    /// The loop plans no attempt: on demand, nothing uses the token, and it lapses.
    pub fn lapsed(&self) -> bool {
        self.next_refresh.is_none()
    }
}
