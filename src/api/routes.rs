//! Request dispatch and the handlers of the v1 socket API (interface.md).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{ACCEPT, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use super::peer::Peer;
use super::{Shared, status};
use crate::clock;
use crate::http::{self, Reply};
use crate::token::AssetToken;

/// Handles one request from `peer`.
pub async fn handle(shared: Arc<Shared>, peer: Peer, req: Request<Incoming>) -> Reply {
    if !shared.policy.allows(&peer) {
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            pid = peer.pid,
            "refused a caller that is not allowed"
        );
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this uid/gid may not use the asset-agent socket",
        );
    }
    let path = req.uri().path().to_owned();
    let route = match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/token") => return token(&shared, &req).await,
        (&Method::GET, "/v1/status") => return status::reply(&shared),
        (&Method::GET, "/v1/health/live") => return live(&shared),
        (&Method::GET, "/v1/health/ready") => return ready(&shared),
        (_, "/v1/mqtt/publish") => {
            return crate::mqtt::publish::handle(shared.mqtt.as_ref(), req).await;
        }
        (_, "/v1/token" | "/v1/status" | "/v1/health/live" | "/v1/health/ready") => "GET",
        _ => "",
    };
    if route.is_empty() {
        error(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET"));
        r
    }
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

#[derive(Serialize)]
struct TokenBody<'a> {
    token: &'a str,
    token_type: &'a str,
    issued_token_type: &'a str,
    expires_at: String,
    expires_in: u64,
    asset_id: Option<&'a str>,
    device_id: &'a str,
}

async fn token(shared: &Shared, req: &Request<Incoming>) -> Reply {
    let min_ttl = match http::query_param(req, "min_ttl").map(|v| v.parse::<u64>()) {
        None => Duration::ZERO,
        Some(Ok(secs)) => Duration::from_secs(secs),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "min_ttl must be a whole number of seconds",
            );
        }
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

/// The JSON answer for a held token (also used by the refresh route later).
pub fn token_reply(shared: &Shared, token: &AssetToken) -> Reply {
    http::json(
        StatusCode::OK,
        &TokenBody {
            token: token.jwt.expose(),
            token_type: &token.token_type,
            issued_token_type: &token.issued_token_type,
            expires_at: clock::rfc3339(token.claims.exp),
            expires_in: token.remaining().as_secs(),
            asset_id: token.asset_id(),
            device_id: &shared.info.device_id,
        },
    )
}

fn unavailable(shared: &Shared, min_ttl: Duration) -> Reply {
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
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &reason);
    if let Ok(v) = HeaderValue::from_str(&retry.as_secs().to_string()) {
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
