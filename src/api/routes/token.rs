//! `GET /v1/token`: the current asset token, as JSON or `text/plain`, optionally with at
//! least `min_ttl` seconds left (waiting up to `api.min_ttl_wait` for a refresh). The JSON
//! is the token's [`Prepared`] body.

use std::time::Duration;

use hyper::header::ACCEPT;
use hyper::{Request, StatusCode};

use tokio::time::Instant;

use crate::api::Shared;
use crate::api::reply::{error, with_retry_after};
use crate::gateway::Identity;
pub use crate::token::body::{Prepared, TokenBody};
use crate::token::refresher::Handle;
use wire::http::{self, Reply};

/// `min_ttl` from a query string: absent is zero.
///
/// # Errors
/// A message for the 400 answer.
pub fn parse_min_ttl(query: Option<&str>) -> Result<Duration, &'static str> {
    let value = query.and_then(|q| {
        http::form_urlencoded_pairs(q.as_bytes())
            .into_iter()
            .find(|(k, _)| k == "min_ttl")
            .map(|(_, v)| v)
    });
    match value.map(|v| v.parse::<u32>()) {
        None => Ok(Duration::ZERO),
        Some(Ok(secs)) => Ok(Duration::from_secs(secs.into())),
        Some(Err(_)) => Err("min_ttl must be a whole number of seconds"),
    }
}

/// What a token request asks for, from its head: the query string and `Accept`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask<'a> {
    pub query: Option<&'a str>,
    /// The first `Accept` field's value, as sent.
    pub accept: Option<&'a [u8]>,
}

impl<'a> Ask<'a> {
    pub fn of<B>(req: &'a Request<B>) -> Self {
        Self {
            query: req.uri().query(),
            accept: req.headers().get(ACCEPT).map(|v| v.as_bytes()),
        }
    }

    /// The bare JWT is wanted: `Accept` names `text/plain` and not `application/json`
    /// (a value with other than visible ASCII counts as neither).
    fn plain(&self) -> bool {
        let Some(v) = self.accept else { return false };
        let has = |what: &[u8]| v.windows(what.len()).any(|w| w == what);
        v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
            && has(b"text/plain")
            && !has(b"application/json")
    }
}

/// Answers `GET /v1/token` and `GET /v1/assets/NAME/token`: `identity`'s token.
pub async fn reply(shared: &Shared, identity: &Identity, ask: Ask<'_>) -> Reply {
    let tokens = &identity.tokens;
    let min_ttl = match parse_min_ttl(ask.query) {
        Ok(t) => t,
        Err(reason) => return error(StatusCode::BAD_REQUEST, "bad_request", reason),
    };
    // The one clock read of an answer: the token's checks and its `expires_in`.
    let now = Instant::now();
    let token = match tokens.token_at(now, min_ttl, shared.min_ttl_wait).await {
        Ok(t) => t,
        Err(_) => return unavailable(tokens, min_ttl),
    };
    if ask.plain() {
        let mut body = token.jwt.expose().to_owned();
        body.push('\n');
        return http::with_type(StatusCode::OK, "text/plain; charset=utf-8", body);
    }
    // A token that waited for a refresh is answered with its time left now.
    let now = if token.received > now {
        Instant::now()
    } else {
        now
    };
    let device_id = identity.info.device_id.as_str();
    match identity.token_body.body(device_id, &token, now) {
        Some(body) => http::with_type(StatusCode::OK, "application/json", body),
        None => http::json(StatusCode::OK, &TokenBody::of(device_id, &token)),
    }
}

/// Why no token of the identity whose tokens `tokens` holds can be served, and when to
/// ask again.
pub fn unavailable_reason(tokens: &Handle, min_ttl: Duration) -> (String, Duration) {
    let snap = tokens.snapshot();
    let retry = snap
        .next_refresh
        .map(|n| n.saturating_duration_since(tokio::time::Instant::now()))
        .unwrap_or(Duration::from_secs(1))
        .clamp(Duration::from_secs(1), Duration::from_secs(300));
    let reason = match (&snap.last_error, min_ttl.is_zero()) {
        (Some(e), _) => format!("no valid asset token ({}): {e}", snap.state.as_str()),
        (None, false) => format!(
            "no asset token with at least {}s left could be obtained in time",
            min_ttl.as_secs()
        ),
        (None, true) => format!("no asset token yet ({})", snap.state.as_str()),
    };
    (reason, retry)
}

/// 503 + `Retry-After` + `{"error":"unavailable","reason"}`.
pub fn unavailable(tokens: &Handle, min_ttl: Duration) -> Reply {
    let (reason, retry) = unavailable_reason(tokens, min_ttl);
    with_retry_after(
        error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &reason),
        retry,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_is_asked_for_by_accept_alone() {
        let ask = |accept: &'static [u8]| Ask {
            query: None,
            accept: Some(accept),
        };
        assert!(ask(b"text/plain").plain());
        assert!(ask(b"text/plain;q=0.9, */*").plain());
        assert!(!ask(b"application/json, text/plain").plain());
        assert!(!ask(b"*/*").plain());
        assert!(!ask(b"text/plain\xff").plain());
        assert!(!Ask::default().plain());
    }

    #[test]
    fn min_ttl_parsing() {
        assert_eq!(parse_min_ttl(None), Ok(Duration::ZERO));
        assert_eq!(parse_min_ttl(Some("a=b")), Ok(Duration::ZERO));
        assert_eq!(
            parse_min_ttl(Some("min_ttl=30")),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(
            parse_min_ttl(Some("min_ttl=%33")),
            Ok(Duration::from_secs(3))
        );
        for bad in [
            "min_ttl=",
            "min_ttl=-1",
            "min_ttl=1.5",
            "min_ttl=99999999999",
        ] {
            assert!(parse_min_ttl(Some(bad)).is_err(), "{bad}");
        }
    }
}
