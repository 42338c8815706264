//! Salesforce's OAuth device flow (spec §5): for devices without a browser, a person
//! approves the device on another screen.
//!
//! [`start`] asks for a device code (`response_type=device_code`); the person opens the
//! verification URL and types the user code; meanwhile [`Authorization::wait`] polls with
//! Salesforce's non-standard `grant_type=device` + `code` (RFC 8628 calls them
//! `urn:ietf:params:oauth:grant-type:device_code` + `device_code`) every `interval` seconds,
//! until the person approves (tokens), denies (`access_denied`) or the code expires
//! (`expired_token`). `slow_down` adds 5 s to the interval (RFC 8628 §3.5). Transient
//! failures (timeouts, 5xx, 429, a dropped connection) do not end the wait: polling goes on,
//! backing off, until the local deadline.
//!
//! All waiting is on tokio's clock, so tests run the whole flow on paused time.

use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::error::{Class, Error as UpstreamError, Step};
use super::upstream::Upstream;
use wire::Secret;
use wire::oauth::{DeviceCodeResponse, OAuthTokenResponse};

/// RFC 8628 §3.5: each `slow_down` adds this to the polling interval.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Polls never come faster than this, whatever the server says.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// After transient failures the interval grows, up to this.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Salesforce sends no `expires_in` for the device code (its codes last 10 minutes); give
/// up locally after this in case the server never says `expired_token`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// How the device flow ended without tokens.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upstream error names the step ("starting the device flow failed: ...").
    #[error(transparent)]
    Start(UpstreamError),
    #[error("the device flow answer is unusable: {0}")]
    BadStart(&'static str),
    #[error("the request was denied: the person who opened {uri} refused access")]
    Denied { uri: String },
    #[error("the code {user_code} expired before it was approved")]
    Expired { user_code: String },
    #[error("the code {user_code} was not approved within {} s", waited.as_secs())]
    TimedOut { user_code: String, waited: Duration },
    /// The upstream error names the step ("polling for the device approval failed: ...").
    #[error(transparent)]
    Poll(UpstreamError),
    #[error(
        "Salesforce approved the device but sent no refresh token: add the refresh_token scope (auth.scope = \"api refresh_token\") and allow it on the connected app"
    )]
    NoRefreshToken,
}

/// A pending device authorisation: what to show the person, and how to poll.
#[derive(Debug)]
pub struct Authorization {
    pub user_code: String,
    pub verification_uri: String,
    /// The polling interval as the server asked.
    pub interval: Duration,
    device_code: Secret,
}

/// The client side of one device flow: which app, and how it authenticates.
#[derive(Debug, Clone)]
pub struct Client {
    pub client_id: String,
    pub client_secret: Option<Secret>,
}

/// Something the wait reports, for the person watching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `authorization_pending`: nobody has approved yet.
    Pending,
    /// `slow_down`: the interval is now this.
    SlowDown(Duration),
    /// A transient failure; polling goes on after this delay.
    Retrying { reason: String, in_: Duration },
}

/// One poll's answer.
enum Poll {
    Done(OAuthTokenResponse),
    Pending,
    SlowDown,
    Retry(UpstreamError),
}

/// Starts a device authorisation for `client` with `scope` (the app's scopes if `None`).
///
/// # Errors
/// [`Error::Start`] when Salesforce refuses or cannot be reached; [`Error::BadStart`]
/// when the answer lacks a code or URL.
pub async fn start(
    up: &Upstream,
    client: &Client,
    scope: Option<&str>,
) -> Result<Authorization, Error> {
    let mut form = vec![
        ("response_type", "device_code"),
        ("client_id", client.client_id.as_str()),
    ];
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    let resp: DeviceCodeResponse = up
        .post_form(Step::DeviceCode, wire::oauth::TOKEN_PATH, &form)
        .await
        .map_err(Error::Start)?;
    if resp.device_code.is_empty() {
        return Err(Error::BadStart("device_code is empty"));
    }
    if resp.user_code.trim().is_empty() {
        return Err(Error::BadStart("user_code is empty"));
    }
    if resp.verification_uri.trim().is_empty() {
        return Err(Error::BadStart("verification_uri is empty"));
    }
    Ok(Authorization {
        user_code: resp.user_code,
        verification_uri: resp.verification_uri,
        interval: Duration::from_secs(resp.interval).max(MIN_INTERVAL),
        device_code: resp.device_code,
    })
}

// === impl Authorization ===

impl Authorization {
    /// Polls until the person decides, the code expires or `max_wait` passes. The first
    /// poll comes one interval after the start, as RFC 8628 asks.
    ///
    /// # Errors
    /// [`Error::Denied`], [`Error::Expired`], [`Error::TimedOut`], [`Error::Poll`] for a
    /// refusal that polling again cannot fix (e.g. `invalid_client`), and
    /// [`Error::NoRefreshToken`] when approval brought no refresh token.
    pub async fn wait(
        &self,
        up: &Upstream,
        client: &Client,
        max_wait: Duration,
        mut on_event: impl FnMut(&Event),
    ) -> Result<OAuthTokenResponse, Error> {
        let started = Instant::now();
        let deadline = started + max_wait;
        let mut interval = self.interval;
        let mut delay = interval;
        loop {
            if Instant::now() + delay > deadline {
                return Err(Error::TimedOut {
                    user_code: self.user_code.clone(),
                    waited: started.elapsed(),
                });
            }
            sleep(delay).await;
            delay = interval;
            match self.poll(up, client).await? {
                Poll::Done(resp) => {
                    return match &resp.refresh_token {
                        Some(rt) if !rt.is_empty() => Ok(resp),
                        _ => Err(Error::NoRefreshToken),
                    };
                }
                Poll::Pending => on_event(&Event::Pending),
                Poll::SlowDown => {
                    interval += SLOW_DOWN_STEP;
                    delay = interval;
                    on_event(&Event::SlowDown(interval));
                }
                Poll::Retry(e) => {
                    // Back off on trouble, honouring Retry-After, without ever polling
                    // faster than the server asked.
                    let grown = (interval * 2).min(MAX_INTERVAL).max(interval);
                    delay = e.retry_after().map_or(grown, |ra| ra.max(interval));
                    interval = grown;
                    on_event(&Event::Retrying {
                        reason: e.to_string(),
                        in_: delay,
                    });
                }
            }
        }
    }

    async fn poll(&self, up: &Upstream, client: &Client) -> Result<Poll, Error> {
        let mut form = vec![
            ("grant_type", wire::oauth::GRANT_DEVICE),
            ("client_id", client.client_id.as_str()),
            ("code", self.device_code.expose()),
        ];
        if let Some(secret) = &client.client_secret {
            form.push(("client_secret", secret.expose()));
        }
        match up
            .post_form::<OAuthTokenResponse>(Step::DevicePoll, wire::oauth::TOKEN_PATH, &form)
            .await
        {
            Ok(resp) => Ok(Poll::Done(resp)),
            Err(e) => match e.oauth_code() {
                Some("authorization_pending") => Ok(Poll::Pending),
                Some("slow_down") => Ok(Poll::SlowDown),
                Some("access_denied") => Err(Error::Denied {
                    uri: self.verification_uri.clone(),
                }),
                Some("expired_token") => Err(Error::Expired {
                    user_code: self.user_code.clone(),
                }),
                _ if e.class() == Class::Retryable => Ok(Poll::Retry(e)),
                _ => Err(Error::Poll(e)),
            },
        }
    }
}

// === impl Error ===

impl Error {
    /// Whether the configuration (client id, secret, scope, URL) is what needs fixing.
    pub fn is_config(&self) -> bool {
        let refused = |e: &UpstreamError| {
            matches!(
                e.oauth_code(),
                Some("invalid_client" | "invalid_scope" | "unauthorized_client")
            ) || matches!(e, UpstreamError::Status { status, .. } if status.as_u16() == 404)
        };
        match self {
            Error::Start(e) | Error::Poll(e) => refused(e),
            Error::NoRefreshToken => true,
            _ => false,
        }
    }
}
