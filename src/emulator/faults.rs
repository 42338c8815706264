//! Fault injection: making the emulator misbehave on purpose so tests can prove the agent
//! recovers (spec §6).
//!
//! A [`Fault`] is one instruction, the same value whether it comes from a test through
//! [`Faults::inject`] or as JSON from `POST /__emulator/faults`. Counted faults are armed
//! in [`Armed`] and consumed by the requests they match; one-shot faults (expire sessions,
//! revoke refresh tokens, skew the clock, stop listening) act immediately. Control routes
//! are never subject to faults, so a test can always reach the emulator.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use super::common::lock;
use super::stats::{Endpoint, Grant};
use super::{Error, Shared};
use crate::secret::Secret;

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

/// One fault-injection instruction. JSON: `{"kind": "fail", "count": 2, "status": 503}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Answer the next `count` matching requests with `status` (4xx/5xx) and a
    /// `temporarily_unavailable`/`server_error` body, plus `Retry-After` if given.
    Fail {
        count: u32,
        status: u16,
        #[serde(default)]
        retry_after_secs: Option<u64>,
        #[serde(default)]
        scope: Scope,
    },
    /// Hold back matching responses by `millis` (tokio time): the next `count`, or all
    /// until cleared when `count` is absent.
    Delay {
        millis: u64,
        #[serde(default)]
        count: Option<u32>,
        #[serde(default)]
        scope: Scope,
    },
    /// Replace the body of the next `count` successful (200) token responses with
    /// truncated JSON.
    MalformedJson {
        count: u32,
        #[serde(default)]
        scope: Scope,
    },
    /// Report `issued_token_type` = access_token on the next `count` exchanges.
    WrongIssuedTokenType { count: u32 },
    /// Sign the next `count` asset tokens with another key under the emulator's `kid`.
    BadSignature { count: u32 },
    /// End every access token's session now.
    ExpireAccessTokens,
    /// Revoke one refresh token.
    RevokeRefreshToken { refresh_token: Secret },
    /// Revoke every refresh token.
    RevokeAllRefreshTokens,
    /// Set the emulator clock's skew to `seconds` (replaces any earlier skew).
    SkewClock { seconds: i64 },
    /// Close the listener and open connections; re-bind the same address after
    /// `resume_after_millis` if given (over HTTP there is no other way back).
    StopAccepting {
        #[serde(default)]
        resume_after_millis: Option<u64>,
    },
    /// Disarm every counted fault and reset the skew.
    Clear,
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
    fail: Option<ArmedFailure>,
    delay: Option<ArmedDelay>,
    malformed: Option<ArmedMalformed>,
    wrong_type: u32,
    bad_signature: u32,
}

/// Marks a 200 response whose content a fault spoilt, so it is not counted a success.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spoiled;

/// The fault control of a running emulator; cheap to clone.
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

// === impl Scope ===

impl Scope {
    fn matches(self, endpoint: Endpoint, grant: Option<Grant>) -> bool {
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
        let f = self.fail.as_mut().filter(|f| f.scope.matches(endpoint, grant))?;
        f.remaining = f.remaining.saturating_sub(1);
        let out = (StatusCode::from_u16(f.status).ok()?, f.retry_after_secs);
        if f.remaining == 0 {
            self.fail = None;
        }
        Some(out)
    }

    /// The delay for this request, consuming one count.
    pub fn take_delay(&mut self, endpoint: Endpoint, grant: Option<Grant>) -> Option<Duration> {
        let d = self.delay.as_mut().filter(|d| d.scope.matches(endpoint, grant))?;
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

// === impl Faults ===

impl Faults {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Applies one fault instruction. `StopAccepting` returns once the listener is closed.
    ///
    /// # Errors
    /// [`Error::BadFault`] for a status outside 400..=599 or a zero count.
    pub async fn inject(&self, fault: Fault) -> Result<(), Error> {
        tracing::debug!(kind = fault.kind(), "emulator fault injected");
        match fault {
            Fault::ExpireAccessTokens => {
                self.expire_access_tokens();
            }
            Fault::RevokeRefreshToken { refresh_token } => {
                self.revoke_refresh_token(&refresh_token);
            }
            Fault::RevokeAllRefreshTokens => {
                self.revoke_all_refresh_tokens();
            }
            Fault::SkewClock { seconds } => self.skew_clock(seconds),
            Fault::Clear => self.clear(),
            Fault::StopAccepting {
                resume_after_millis,
            } => {
                self.stop_accepting().await;
                if let Some(ms) = resume_after_millis {
                    let me = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        if let Err(e) = me.resume_accepting().await {
                            tracing::debug!(error = %e, "emulator could not resume listening");
                        }
                    });
                }
            }
            counted => self.arm(counted)?,
        }
        Ok(())
    }

    /// Arms a counted fault, replacing one of the same kind.
    fn arm(&self, fault: Fault) -> Result<(), Error> {
        let nonzero = |n: u32| {
            if n == 0 {
                Err(Error::BadFault("count must be at least 1".to_owned()))
            } else {
                Ok(())
            }
        };
        let mut armed = lock(&self.shared.faults);
        match fault {
            Fault::Fail {
                count,
                status,
                retry_after_secs,
                scope,
            } => {
                nonzero(count)?;
                if !(400..=599).contains(&status) {
                    return Err(Error::BadFault(format!("status {status} is not 4xx/5xx")));
                }
                armed.fail = Some(ArmedFailure {
                    remaining: count,
                    status,
                    retry_after_secs,
                    scope,
                });
            }
            Fault::Delay {
                millis,
                count,
                scope,
            } => {
                if let Some(n) = count {
                    nonzero(n)?;
                }
                armed.delay = Some(ArmedDelay {
                    millis,
                    remaining: count,
                    scope,
                });
            }
            Fault::MalformedJson { count, scope } => {
                nonzero(count)?;
                armed.malformed = Some(ArmedMalformed {
                    remaining: count,
                    scope,
                });
            }
            Fault::WrongIssuedTokenType { count } => armed.wrong_type = count,
            Fault::BadSignature { count } => armed.bad_signature = count,
            other => {
                return Err(Error::BadFault(format!("{} is not a counted fault", other.kind())));
            }
        }
        Ok(())
    }

    /// Fails the next `count` requests matching `scope` with `status`, adding
    /// `Retry-After` when given.
    ///
    /// # Errors
    /// As [`Faults::inject`].
    pub async fn fail_next_with(
        &self,
        count: u32,
        status: u16,
        retry_after: Option<Duration>,
        scope: Scope,
    ) -> Result<(), Error> {
        self.inject(Fault::Fail {
            count,
            status,
            retry_after_secs: retry_after.map(|d| d.as_secs()),
            scope,
        })
        .await
    }

    /// Fails the next `count` Salesforce-facing requests with `status`.
    ///
    /// # Errors
    /// As [`Faults::inject`].
    pub async fn fail_next(&self, count: u32, status: u16) -> Result<(), Error> {
        self.inject(Fault::Fail {
            count,
            status,
            retry_after_secs: None,
            scope: Scope::Any,
        })
        .await
    }

    /// Delays matching responses by `delay`: the next `count`, or all when `None`.
    ///
    /// # Errors
    /// As [`Faults::inject`].
    pub async fn delay(&self, delay: Duration, count: Option<u32>, scope: Scope) -> Result<(), Error> {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.inject(Fault::Delay {
            millis,
            count,
            scope,
        })
        .await
    }

    /// Spoils the next `count` successful token responses with malformed JSON.
    pub fn malformed_json(&self, count: u32) {
        lock(&self.shared.faults).malformed = Some(ArmedMalformed {
            remaining: count,
            scope: Scope::Any,
        });
    }

    /// Reports the wrong `issued_token_type` on the next `count` exchanges.
    pub fn wrong_issued_token_type(&self, count: u32) {
        lock(&self.shared.faults).wrong_type = count;
    }

    /// Signs the next `count` asset tokens with a key other than the published one.
    pub fn bad_signature(&self, count: u32) {
        lock(&self.shared.faults).bad_signature = count;
    }

    /// Ends every session now; returns how many were live.
    pub fn expire_access_tokens(&self) -> usize {
        let now = self.shared.unix_ms();
        lock(&self.shared.state).expire_sessions(now)
    }

    /// Revokes one refresh token; true if it was live.
    pub fn revoke_refresh_token(&self, token: &Secret) -> bool {
        lock(&self.shared.state).revoke_refresh_token(token.expose())
    }

    /// Revokes every refresh token; returns how many were live.
    pub fn revoke_all_refresh_tokens(&self) -> usize {
        lock(&self.shared.state).revoke_all_refresh_tokens()
    }

    /// Skews the emulator clock by `seconds` (replacing any earlier skew). The configured
    /// [`crate::clock::Clock`] is left alone: it may be shared with the agent under test.
    pub fn skew_clock(&self, seconds: i64) {
        self.shared.set_skew(seconds);
    }

    /// Closes the listener and all open connections (in-flight responses finish first);
    /// returns once the port is closed.
    pub async fn stop_accepting(&self) {
        self.shared.listen.stop().await;
    }

    /// Listens on the same address again; returns once connections are accepted.
    ///
    /// # Errors
    /// [`Error::Rebind`] if the address is taken; [`Error::Stopped`] after shutdown.
    pub async fn resume_accepting(&self) -> Result<(), Error> {
        self.shared.listen.resume(self.shared.addr).await
    }

    /// Disarms every counted fault and resets the clock skew.
    pub fn clear(&self) {
        *lock(&self.shared.faults) = Armed::default();
        self.shared.set_skew(0);
    }

    /// What is armed now.
    pub fn pending(&self) -> PendingFaults {
        let a = lock(&self.shared.faults);
        PendingFaults {
            fail: a.fail.clone(),
            delay: a.delay.clone(),
            malformed_json: a.malformed.clone(),
            wrong_issued_token_type: a.wrong_type,
            bad_signature: a.bad_signature,
            clock_skew_secs: self.shared.skew(),
            accepting: self.shared.listen.is_accepting(),
        }
    }
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

// === impl Fault ===

impl Fault {
    /// The fault's kind, for logs (never its values).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Fail { .. } => "fail",
            Self::Delay { .. } => "delay",
            Self::MalformedJson { .. } => "malformed_json",
            Self::WrongIssuedTokenType { .. } => "wrong_issued_token_type",
            Self::BadSignature { .. } => "bad_signature",
            Self::ExpireAccessTokens => "expire_access_tokens",
            Self::RevokeRefreshToken { .. } => "revoke_refresh_token",
            Self::RevokeAllRefreshTokens => "revoke_all_refresh_tokens",
            Self::SkewClock { .. } => "skew_clock",
            Self::StopAccepting { .. } => "stop_accepting",
            Self::Clear => "clear",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_json_shapes() {
        let f: Fault = serde_json::from_str(
            r#"{"kind":"fail","count":2,"status":503,"retry_after_secs":7,"scope":"token_endpoint"}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            Fault::Fail {
                count: 2,
                status: 503,
                retry_after_secs: Some(7),
                scope: Scope::TokenEndpoint
            }
        );
        let f: Fault =
            serde_json::from_str(r#"{"kind":"malformed_json","count":1,"scope":{"grant":"token_exchange"}}"#)
                .unwrap();
        assert_eq!(
            f,
            Fault::MalformedJson {
                count: 1,
                scope: Scope::Grant(Grant::TokenExchange)
            }
        );
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"bad_signature","count":1,"x":1}"#).is_err());
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"explode"}"#).is_err());
    }

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
        assert_eq!(a.take_failure(Endpoint::Token, Some(Grant::RefreshToken)), None);
        let hit = a.take_failure(Endpoint::Token, Some(Grant::TokenExchange));
        assert_eq!(hit, Some((StatusCode::SERVICE_UNAVAILABLE, Some(3))));
        assert!(a.take_failure(Endpoint::Token, Some(Grant::TokenExchange)).is_some());
        assert!(a.take_failure(Endpoint::Token, Some(Grant::TokenExchange)).is_none());

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
