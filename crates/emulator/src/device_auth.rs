//! One device-flow authorisation as the org keeps it, and the RFC 8628 §3.5 rules a poll
//! is answered by. A row of the state's device table; `device` drives it.

use hyper::StatusCode;

use super::common::Rejection;

/// RFC 8628 §3.5: each `slow_down` adds this to the interval.
const SLOW_DOWN_STEP_MS: i64 = 5_000;

/// One device authorisation, keyed by its device code in the state.
#[derive(Debug, Clone)]
pub(crate) struct DeviceAuth {
    pub user_code: String,
    pub scope: String,
    pub expires_at_ms: i64,
    pub interval_ms: i64,
    pub last_poll_ms: Option<i64>,
    pub decision: Decision,
}

/// Where a person's decision on a user code stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Pending,
    Approved,
    Denied,
    /// Approved and already exchanged for tokens.
    Used,
}

// === impl DeviceAuth ===

impl DeviceAuth {
    /// One poll at `now_ms`: the granted scope, or the RFC 8628 error to answer.
    pub(crate) fn poll(&mut self, now_ms: i64) -> Result<String, Rejection> {
        let err = |code, what: &str| Rejection::new(StatusCode::BAD_REQUEST, code, what);
        if now_ms >= self.expires_at_ms {
            return Err(err("expired_token", "the device code has expired"));
        }
        match self.decision {
            Decision::Denied => return Err(err("access_denied", "the user denied the request")),
            Decision::Used => return Err(Rejection::invalid_grant("device code already used")),
            Decision::Pending | Decision::Approved => {}
        }
        let too_fast = self
            .last_poll_ms
            .is_some_and(|last| now_ms - last < self.interval_ms);
        self.last_poll_ms = Some(now_ms);
        if too_fast {
            self.interval_ms += SLOW_DOWN_STEP_MS;
            return Err(err(
                "slow_down",
                &format!(
                    "polling too fast: wait {} s between polls",
                    self.interval_ms / 1000
                ),
            ));
        }
        if self.decision == Decision::Pending {
            return Err(err(
                "authorization_pending",
                "the user has not approved yet",
            ));
        }
        self.decision = Decision::Used;
        Ok(self.scope.clone())
    }
}
