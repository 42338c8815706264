//! The route table of the v1 socket API (docs/api.md): authorisation and dispatch to the
//! handlers in [`super::routes`], one file per route.
//!
//! Order of checks for every request: a caller with no role gets 403 whatever it asks for
//! (and its connection is closed); then the path (404), then the role the route needs
//! (403), then the method (405). A 403 body never carries token bytes.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{ALLOW, CONNECTION, HeaderValue};
use hyper::{Method, Request, StatusCode};

use super::Shared;
use super::body::{ApiReply, full};
use super::conns::BusyGuard;
use super::peer::{Caller, Role};
use super::reply::{Answer, error};
use super::routes::{
    assets, health, metrics, mqtt_publish, refresh, reload, sign, status, token, watch,
};
use wire::http::Reply;

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
    /// `POST /v1/reload` (routes/reload.rs).
    Reload,
    /// `POST /v1/mqtt/publish` (`routes::mqtt_publish`).
    MqttPublish,
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

    /// The route's answer when it comes from the request head alone (a GET with no body
    /// and no stream): what the fast path may serve.
    pub fn head_only(self) -> Option<HeadOnly> {
        match self {
            Route::Token => Some(HeadOnly::Token),
            Route::Status => Some(HeadOnly::Status),
            Route::Live => Some(HeadOnly::Live),
            Route::Ready => Some(HeadOnly::Ready),
            Route::Metrics => Some(HeadOnly::Metrics),
            Route::Watch | Route::Sign | Route::Refresh | Route::Reload | Route::MqttPublish => {
                None
            }
        }
    }
}

/// The routes answered from the request head alone, by [`HeadOnly::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadOnly {
    Token,
    Status,
    Live,
    Ready,
    Metrics,
}

impl HeadOnly {
    /// The whole answer; authorisation and the method are the caller's to check.
    pub async fn answer(self, shared: &Shared, ask: token::Ask<'_>) -> Answer {
        match self {
            HeadOnly::Token => token::reply(shared, ask).await,
            HeadOnly::Status => status::reply(shared).into(),
            HeadOnly::Live => health::live(shared).into(),
            HeadOnly::Ready => health::ready(shared).into(),
            HeadOnly::Metrics => metrics::reply(shared).into(),
        }
    }
}

/// Handles one request; `busy` marks the connection busy for as long as the answer needs.
pub async fn handle(
    shared: Arc<Shared>,
    caller: Arc<Caller>,
    req: Request<Incoming>,
    busy: BusyGuard,
) -> ApiReply {
    // Child routes (gateway mode); the path is copied only for them, not on the hot path.
    if req.uri().path().starts_with(assets::PREFIX) {
        let path = req.uri().path().to_owned();
        if let Some(target) = assets::parse(&path) {
            let counted = match &target {
                assets::Target::List => assets::PREFIX,
                assets::Target::Child(_, action) => action.template(),
            };
            let reply = assets::reply(&shared, &caller, target, req, busy).await;
            shared.state.requests.count(counted, reply.status());
            return reply;
        }
    }
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
    let ask = token::Ask::of(&req);
    match route {
        Route::Token => full(HeadOnly::Token.answer(shared, ask).await.into_reply()),
        Route::Status => full(HeadOnly::Status.answer(shared, ask).await.into_reply()),
        Route::Live => full(HeadOnly::Live.answer(shared, ask).await.into_reply()),
        Route::Ready => full(HeadOnly::Ready.answer(shared, ask).await.into_reply()),
        Route::Metrics => full(HeadOnly::Metrics.answer(shared, ask).await.into_reply()),
        Route::Watch => watch::reply(shared.clone(), (*caller.shutdown).clone(), busy),
        Route::Sign => full(sign::reply(shared, caller, req).await),
        Route::Refresh => full(refresh::reply(shared).await),
        Route::Reload => full(reload::reply(shared).await),
        // Token role: whoever may read the token could log in to the broker with it anyway.
        Route::MqttPublish => full(mqtt_publish::reply(shared.mqtt.as_ref(), req).await),
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
}
