//! Fault injection: making the emulator misbehave on purpose so tests can prove the agent
//! recovers (spec §6).
//!
//! A [`Fault`] is one instruction, the same value whether it comes from a test through
//! [`Faults::inject`] or as JSON from `POST /__emulator/faults`. Counted faults are armed
//! in `armed::Armed` and consumed by the requests they match; one-shot faults (expire sessions,
//! revoke refresh tokens, skew the clock, stop listening) act immediately. Control routes
//! are never subject to faults, so a test can always reach the emulator.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::armed::Scope;
use super::armed::{Armed, ArmedDelay, ArmedFailure, ArmedMalformed, PendingFaults};
use super::common::lock;
use super::{Error, Shared};
use wire::Secret;

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

/// The fault control of a running emulator; cheap to clone.
#[derive(Clone)]
pub struct Faults {
    shared: Arc<Shared>,
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
                return Err(Error::BadFault(format!(
                    "{} is not a counted fault",
                    other.kind()
                )));
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
    pub async fn delay(
        &self,
        delay: Duration,
        count: Option<u32>,
        scope: Scope,
    ) -> Result<(), Error> {
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
    /// [`wire::clock::Clock`] is left alone: it may be shared with the agent under test.
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
    use crate::stats::Grant;

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
        let f: Fault = serde_json::from_str(
            r#"{"kind":"malformed_json","count":1,"scope":{"grant":"token_exchange"}}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            Fault::MalformedJson {
                count: 1,
                scope: Scope::Grant(Grant::TokenExchange)
            }
        );
        assert!(
            serde_json::from_str::<Fault>(r#"{"kind":"bad_signature","count":1,"x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<Fault>(r#"{"kind":"explode"}"#).is_err());
    }
}
