//! The counted faults currently armed, and how requests consume them.
//!
//! Kept apart from the control surface (`faults`) because this is the part the request
//! pipeline touches on every request, under a short std `Mutex` section.

use std::time::Duration;

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use super::stats::{Endpoint, Grant};

/// Which requests a counted fault applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every Salesforce-facing request (token endpoint, JWKS, unknown paths).
    #[default]
    Any,
    /// Only `POST /services/oauth2/token`.
    TokenEndpoint,
    /// Only token requests of this grant, e.g. `{"grant": "token_exchange"}`.
    Grant(Grant),
}

/// An armed status failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedFailure {
    pub remaining: u32,
    pub status: u16,
    pub retry_after_secs: Option<u64>,
    pub scope: Scope,
}

/// An armed delay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedDelay {
    pub millis: u64,
    /// `None`: until cleared.
    pub remaining: Option<u32>,
    pub scope: Scope,
}

/// An armed body fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArmedMalformed {
    pub remaining: u32,
    pub scope: Scope,
}

/// The counted faults still armed, plus the immediate settings (`GET /__emulator/faults`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFaults {
    pub fail: Option<ArmedFailure>,
    pub delay: Option<ArmedDelay>,
    pub malformed_json: Option<ArmedMalformed>,
    pub wrong_issued_token_type: u32,
    pub bad_signature: u32,
    pub clock_skew_secs: i64,
    pub accepting: bool,
}

/// The counted faults, consumed by matching requests. Arming a kind again replaces it.
#[derive(Debug, Default)]
pub(crate) struct Armed {
    pub(super) fail: Option<ArmedFailure>,
    pub(super) delay: Option<ArmedDelay>,
    pub(super) malformed: Option<ArmedMalformed>,
    pub(super) wrong_type: u32,
    pub(super) bad_signature: u32,
}

/// Marks a 200 response whose content a fault spoilt, so it is not counted a success.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spoiled;

// === impl Scope ===

impl Scope {
    /// Whether a request to `endpoint` (of `grant`, for token requests) is in scope.
    pub(crate) fn matches(self, endpoint: Endpoint, grant: Option<Grant>) -> bool {
        match self {
            Self::Any => true,
            Self::TokenEndpoint => endpoint == Endpoint::Token,
            Self::Grant(g) => grant == Some(g),
        }
    }
}

// === impl Armed ===

impl Armed {
    /// The status (and `Retry-After`) to fail this request with, consuming one count.
    pub fn take_failure(
        &mut self,
        endpoint: Endpoint,
        grant: Option<Grant>,
    ) -> Option<(StatusCode, Option<u64>)> {
        let f = self
            .fail
            .as_mut()
            .filter(|f| f.scope.matches(endpoint, grant))?;
        f.remaining = f.remaining.saturating_sub(1);
        let out = (StatusCode::from_u16(f.status).ok()?, f.retry_after_secs);
        if f.remaining == 0 {
            self.fail = None;
        }
        Some(out)
    }

    /// The delay for this request, consuming one count.
    pub fn take_delay(&mut self, endpoint: Endpoint, grant: Option<Grant>) -> Option<Duration> {
        let d = self
            .delay
            .as_mut()
            .filter(|d| d.scope.matches(endpoint, grant))?;
        let out = Duration::from_millis(d.millis);
        if let Some(n) = d.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.delay = None;
            }
        }
        Some(out)
    }

    /// Whether this successful token response must be spoilt, consuming one count.
    pub fn take_malformed(&mut self, grant: Option<Grant>) -> bool {
        let Some(m) = self.malformed.as_mut() else {
            return false;
        };
        if !m.scope.matches(Endpoint::Token, grant) {
            return false;
        }
        m.remaining = m.remaining.saturating_sub(1);
        if m.remaining == 0 {
            self.malformed = None;
        }
        true
    }

    pub fn take_wrong_type(&mut self) -> bool {
        take_count(&mut self.wrong_type)
    }

    pub fn take_bad_signature(&mut self) -> bool {
        take_count(&mut self.bad_signature)
    }
}

fn take_count(n: &mut u32) -> bool {
    if *n == 0 {
        return false;
    }
    *n -= 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_are_consumed_by_matching_requests_only() {
        let mut a = Armed {
            fail: Some(ArmedFailure {
                remaining: 2,
                status: 503,
                retry_after_secs: Some(3),
                scope: Scope::Grant(Grant::TokenExchange),
            }),
            ..Armed::default()
        };
        assert_eq!(a.take_failure(Endpoint::Jwks, None), None);
        assert_eq!(
            a.take_failure(Endpoint::Token, Some(Grant::RefreshToken)),
            None
        );
        let hit = a.take_failure(Endpoint::Token, Some(Grant::TokenExchange));
        assert_eq!(hit, Some((StatusCode::SERVICE_UNAVAILABLE, Some(3))));
        assert!(
            a.take_failure(Endpoint::Token, Some(Grant::TokenExchange))
                .is_some()
        );
        assert!(
            a.take_failure(Endpoint::Token, Some(Grant::TokenExchange))
                .is_none()
        );

        a.delay = Some(ArmedDelay {
            millis: 10,
            remaining: None,
            scope: Scope::TokenEndpoint,
        });
        assert_eq!(a.take_delay(Endpoint::Jwks, None), None);
        for _ in 0..3 {
            assert_eq!(
                a.take_delay(Endpoint::Token, None),
                Some(Duration::from_millis(10))
            );
        }

        a.malformed = Some(ArmedMalformed {
            remaining: 1,
            scope: Scope::Any,
        });
        assert!(a.take_malformed(Some(Grant::RefreshToken)));
        assert!(!a.take_malformed(Some(Grant::RefreshToken)));
        a.wrong_type = 1;
        assert!(a.take_wrong_type());
        assert!(!a.take_wrong_type());
    }
}
