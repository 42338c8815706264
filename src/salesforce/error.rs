//! What can go wrong talking to Salesforce, and how the agent should react to it.
//!
//! Every upstream failure is sorted into a [`Class`] (style guide: Retryable vs Fatal), and
//! the refresh loop branches on the class, never on message text.

use std::time::Duration;

use hyper::StatusCode;

use wire::oauth::OAuthError;

/// How the refresh loop should react to a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Transient: connect error, timeout, 5xx, 429, malformed body. Back off and retry.
    Retryable,
    /// The subject access token was rejected: get a new one and retry once.
    Reauthenticate,
    /// Needs a human: bad client credentials, revoked refresh token, rejected key.
    Fatal,
}

/// The step of the flow that failed, for messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    AccessToken,
    Exchange,
    Jwks,
    DeviceCode,
    DevicePoll,
}

// === impl Step ===

impl Step {
    /// The step's name in metrics (`endpoint="access_token"`).
    pub fn label(self) -> &'static str {
        match self {
            Step::AccessToken => "access_token",
            Step::Exchange => "exchange",
            Step::Jwks => "jwks",
            Step::DeviceCode => "device_code",
            Step::DevicePoll => "device_poll",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::AccessToken => "obtaining the access token",
            Step::Exchange => "the token exchange",
            Step::Jwks => "fetching the asset-token signing keys",
            Step::DeviceCode => "starting the device flow",
            Step::DevicePoll => "polling for the device approval",
        })
    }
}

/// A failed call to Salesforce.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step} failed: could not reach Salesforce")]
    Transport {
        step: Step,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{step} failed: Salesforce timed out after {}s", timeout.as_secs())]
    Timeout { step: Step, timeout: Duration },
    #[error("{step} was refused: HTTP {status}{}", describe(.oauth.as_ref()))]
    Status {
        step: Step,
        status: StatusCode,
        oauth: Option<OAuthError>,
        retry_after: Option<Duration>,
    },
    #[error("{step} failed: malformed response ({reason})")]
    Malformed { step: Step, reason: String },
}

fn describe(oauth: Option<&OAuthError>) -> String {
    match oauth {
        Some(OAuthError {
            error,
            error_description: Some(d),
        }) => format!(" {error}: {d}"),
        Some(OAuthError { error, .. }) => format!(" {error}"),
        None => String::new(),
    }
}

// === impl Error ===

impl Error {
    /// Sorts the failure: see [`Class`].
    pub fn class(&self) -> Class {
        match self {
            Error::Transport { .. } | Error::Timeout { .. } | Error::Malformed { .. } => {
                Class::Retryable
            }
            Error::Status {
                step,
                status,
                oauth,
                ..
            } => {
                if status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS {
                    return Class::Retryable;
                }
                let code = oauth.as_ref().map(|o| o.error.as_str());
                match (step, code) {
                    // An exchange refused for the subject token: a new access token fixes it.
                    (Step::Exchange, Some("invalid_grant")) => Class::Reauthenticate,
                    (Step::Exchange, _) if *status == StatusCode::UNAUTHORIZED => {
                        Class::Reauthenticate
                    }
                    _ => Class::Fatal,
                }
            }
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The OAuth error code (`invalid_grant`, ...), if the server sent one.
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            Error::Status { oauth, .. } => oauth.as_ref().map(|o| o.error.as_str()),
            _ => None,
        }
    }

    /// A short machine-readable reason for metrics and status.
    pub fn reason(&self) -> String {
        match self {
            Error::Transport { .. } => "connect".to_owned(),
            Error::Timeout { .. } => "timeout".to_owned(),
            Error::Malformed { .. } => "malformed".to_owned(),
            Error::Status { status, oauth, .. } => match oauth {
                Some(o) => o.error.clone(),
                None => format!("http_{}", status.as_u16()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(step: Step, code: u16, error: Option<&str>) -> Error {
        Error::Status {
            step,
            status: StatusCode::from_u16(code).unwrap(),
            oauth: error.map(|e| OAuthError {
                error: e.into(),
                error_description: None,
            }),
            retry_after: None,
        }
    }

    #[test]
    fn classes() {
        let table = [
            (status(Step::Exchange, 500, None), Class::Retryable),
            (status(Step::Exchange, 503, None), Class::Retryable),
            (status(Step::AccessToken, 429, None), Class::Retryable),
            (
                status(Step::Exchange, 400, Some("invalid_grant")),
                Class::Reauthenticate,
            ),
            (status(Step::Exchange, 401, None), Class::Reauthenticate),
            (
                status(Step::Exchange, 400, Some("invalid_request")),
                Class::Fatal,
            ),
            (
                status(Step::AccessToken, 400, Some("invalid_grant")),
                Class::Fatal,
            ),
            (
                status(Step::AccessToken, 400, Some("invalid_client")),
                Class::Fatal,
            ),
            (
                Error::Malformed {
                    step: Step::Exchange,
                    reason: "x".into(),
                },
                Class::Retryable,
            ),
            (
                Error::Timeout {
                    step: Step::Exchange,
                    timeout: Duration::from_secs(10),
                },
                Class::Retryable,
            ),
        ];
        for (err, class) in table {
            assert_eq!(err.class(), class, "{err}");
        }
    }

    #[test]
    fn step_labels_are_the_snake_case_names() {
        let table = [
            (Step::AccessToken, "access_token"),
            (Step::Exchange, "exchange"),
            (Step::Jwks, "jwks"),
            (Step::DeviceCode, "device_code"),
            (Step::DevicePoll, "device_poll"),
        ];
        for (step, label) in table {
            assert_eq!(step.label(), label);
            // The label names the variant (what `metrics` derived it from before).
            assert_eq!(
                format!("{step:?}").to_ascii_lowercase(),
                label.replace('_', "")
            );
        }
    }

    #[test]
    fn message_carries_oauth_error() {
        let e = status(Step::Exchange, 400, Some("invalid_grant"));
        assert_eq!(
            e.to_string(),
            "the token exchange was refused: HTTP 400 Bad Request invalid_grant"
        );
        assert_eq!(e.reason(), "invalid_grant");
    }
}
