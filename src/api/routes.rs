//! The route table, authorisation, dispatch, and the token handlers of the v1 socket API
//! (docs/api.md).
//!
//! Order of checks for every request: a caller with no role gets 403 whatever it asks for
//! (and its connection is closed); then the path (404), then the role the route needs
//! (403), then the method (405). A 403 body never carries token bytes.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONNECTION, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::body::{ApiReply, full};
use super::conns::BusyGuard;
use super::peer::{Peer, Role};
use super::{Shared, prometheus, refresh, reload, sign, status, watch};
use crate::token::AssetToken;
use wire::clock;
use wire::http::{self, Reply};

/// Every route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Token,
    Watch,
    Status,
    Live,
    Ready,
    Metrics,
    Sign,
    Refresh,
    /// `POST /v1/reload` (src/api/reload.rs).
    Reload,
    /// `POST /v1/mqtt/publish` (src/mqtt/publish.rs).
    MqttPublish,
}

/// Who is on the other end of a connection, and how the server is doing.
#[derive(Debug)]
pub struct Caller {
    pub peer: Peer,
    pub role: Option<Role>,
    /// Fires when the server shuts down (streams end then).
    pub shutdown: CancellationToken,
}

// === impl Route ===

impl Route {
    pub const ALL: [Route; 10] = [
        Route::Token,
        Route::Watch,
        Route::Status,
        Route::Live,
        Route::Ready,
        Route::Metrics,
        Route::Sign,
        Route::Refresh,
        Route::Reload,
        Route::MqttPublish,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Route::Token => "/v1/token",
            Route::Watch => "/v1/token/watch",
            Route::Status => "/v1/status",
            Route::Live => "/v1/health/live",
            Route::Ready => "/v1/health/ready",
            Route::Metrics => "/metrics",
            Route::Sign => "/v1/sign",
            Route::Refresh => "/v1/refresh",
            Route::Reload => "/v1/reload",
            Route::MqttPublish => "/v1/mqtt/publish",
        }
    }

    pub fn method(self) -> Method {
        match self {
            Route::Sign | Route::Refresh | Route::Reload | Route::MqttPublish => Method::POST,
            _ => Method::GET,
        }
    }

    /// The least role that may use the route.
    pub fn role(self) -> Role {
        match self {
            Route::Sign => Role::Signer,
            Route::Refresh | Route::Reload => Role::Admin,
            _ => Role::Token,
        }
    }

    pub fn find(path: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.path() == path)
    }
}

/// Handles one request; `busy` marks the connection busy for as long as the answer needs.
pub async fn handle(
    shared: Arc<Shared>,
    caller: Arc<Caller>,
    req: Request<Incoming>,
    busy: BusyGuard,
) -> ApiReply {
    let route = Route::find(req.uri().path());
    let reply = dispatch(&shared, &caller, route, req, busy).await;
    shared
        .state
        .requests
        .count(route.map_or("other", Route::path), reply.status());
    reply
}

async fn dispatch(
    shared: &Arc<Shared>,
    caller: &Caller,
    route: Option<Route>,
    req: Request<Incoming>,
    busy: BusyGuard,
) -> ApiReply {
    let path = route.map_or("other", Route::path);
    let Some(role) = caller.role else {
        let mut r = forbidden(shared, caller, path, Role::Token);
        // Nothing more to say to this caller on this connection.
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return full(r);
    };
    let Some(route) = route else {
        return full(error(StatusCode::NOT_FOUND, "not_found", "no such route"));
    };
    if role < route.role() {
        return full(forbidden(shared, caller, path, route.role()));
    }
    if req.method() != route.method() {
        let method = route.method();
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("use {method}"),
        );
        if let Ok(v) = HeaderValue::from_str(method.as_str()) {
            r.headers_mut().insert(ALLOW, v);
        }
        return full(r);
    }
    match route {
        Route::Token => full(token(shared, &req).await),
        Route::Watch => watch::reply(shared.clone(), caller.shutdown.clone(), busy),
        Route::Status => full(status::reply(shared)),
        Route::Live => full(live(shared)),
        Route::Ready => full(ready(shared)),
        Route::Metrics => full(prometheus::reply(shared)),
        Route::Sign => full(sign::reply(shared, caller, req).await),
        Route::Refresh => full(refresh::reply(shared).await),
        Route::Reload => full(reload::reply(shared).await),
        // Token role: whoever may read the token could log in to the broker with it anyway.
        Route::MqttPublish => full(crate::mqtt::publish::handle(shared.mqtt.as_ref(), req).await),
    }
}

/// 403, logged (rate-limited) and counted.
fn forbidden(shared: &Shared, caller: &Caller, path: &str, needs: Role) -> Reply {
    let peer = &caller.peer;
    shared.state.requests.denied(needs);
    shared.state.denials.record(peer, path, needs, caller.role);
    let reason = match caller.role {
        None => format!(
            "uid {} (gid {}) may not use this socket; ask for it to be added to [api] allow_uids or allow_gids, or join the socket's group",
            peer.uid, peer.gid
        ),
        Some(has) => format!(
            "{path} needs the {} role; uid {} has {}",
            needs.as_str(),
            peer.uid,
            has.as_str()
        ),
    };
    error(StatusCode::FORBIDDEN, "forbidden", &reason)
}

/// `{"error": code, "reason": text}` with `status`.
pub fn error(status: StatusCode, code: &str, reason: &str) -> Reply {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        reason: &'a str,
    }
    http::json(
        status,
        &Body {
            error: code,
            reason,
        },
    )
}

/// The answer of `GET /v1/token` (and each line of the watch stream).
#[derive(Serialize)]
pub struct TokenBody<'a> {
    pub token: &'a str,
    pub token_type: &'a str,
    pub issued_token_type: &'a str,
    pub expires_at: String,
    pub expires_in: u64,
    pub asset_id: Option<&'a str>,
    pub device_id: &'a str,
}

impl<'a> TokenBody<'a> {
    pub fn new(shared: &'a Shared, token: &'a AssetToken) -> Self {
        Self {
            token: token.jwt.expose(),
            token_type: &token.token_type,
            issued_token_type: &token.issued_token_type,
            expires_at: clock::rfc3339(token.claims.exp),
            expires_in: token.remaining().as_secs(),
            asset_id: token.asset_id(),
            device_id: &shared.info.device_id,
        }
    }
}

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

async fn token(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let min_ttl = match parse_min_ttl(req.uri().query()) {
        Ok(t) => t,
        Err(reason) => return error(StatusCode::BAD_REQUEST, "bad_request", reason),
    };
    let token = match shared.tokens.token_with(min_ttl, shared.min_ttl_wait).await {
        Ok(t) => t,
        Err(_) => return unavailable(shared, min_ttl),
    };
    let plain = req
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/plain") && !v.contains("application/json"));
    if plain {
        let mut body = token.jwt.expose().to_owned();
        body.push('\n');
        return http::with_type(StatusCode::OK, "text/plain; charset=utf-8", body);
    }
    token_reply(shared, &token)
}

/// The JSON answer for a held token.
pub fn token_reply(shared: &Shared, token: &AssetToken) -> Reply {
    http::json(StatusCode::OK, &TokenBody::new(shared, token))
}

/// Why no token can be served, and when to ask again.
pub fn unavailable_reason(shared: &Shared, min_ttl: Duration) -> (String, Duration) {
    let snap = shared.tokens.snapshot();
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
pub fn unavailable(shared: &Shared, min_ttl: Duration) -> Reply {
    let (reason, retry) = unavailable_reason(shared, min_ttl);
    with_retry_after(
        error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &reason),
        retry,
    )
}

/// Adds `Retry-After: <whole seconds, at least 1>`.
pub fn with_retry_after(mut r: Reply, after: Duration) -> Reply {
    let secs = after.as_secs().max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
    r
}

fn live(shared: &Shared) -> Reply {
    let snap = shared.tokens.snapshot();
    probe(
        snap.is_live(),
        "refresh loop is making progress",
        "refresh loop is stalled",
    )
}

fn ready(shared: &Shared) -> Reply {
    let ready = crate::token::live(&shared.tokens.current).is_some();
    probe(
        ready,
        "a valid asset token is held",
        "no valid asset token is held",
    )
}

fn probe(ok: bool, yes: &str, no: &str) -> Reply {
    #[derive(Serialize)]
    struct Body<'a> {
        ok: bool,
        reason: &'a str,
    }
    let (status, reason) = if ok {
        (StatusCode::OK, yes)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, no)
    };
    http::json(status, &Body { ok, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_table_is_consistent() {
        for r in Route::ALL {
            assert_eq!(Route::find(r.path()), Some(r));
        }
        assert_eq!(Route::find("/v1/token/"), None);
        assert_eq!(Route::find("/V1/TOKEN"), None);
        assert_eq!(Route::Refresh.role(), Role::Admin);
        assert_eq!(Route::Sign.role(), Role::Signer);
        assert_eq!(Route::Metrics.role(), Role::Token);
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
