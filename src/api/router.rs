//! The route table of the v1 socket API (docs/api.md), authorisation and dispatch to the
//! handlers in [`super::routes`], one file per route.
//!
//! Every route is a [`Route`]: its path, method, the least [`Role`] a caller needs on the
//! identity it serves, and whose identity that is (the device's own, or the child named
//! in the path). Each of those is an exhaustive `match` with no default arm, so a route
//! added without a role does not compile. One handler serves an action for every identity:
//! `/v1/token` and `/v1/assets/NAME/token` are both `token::reply`.
//!
//! Order of checks for every request: a caller with no role (and no child's grant, on a
//! child route) gets 403 whatever it asks for, and its connection is closed; then the
//! path (404); then [`authorize`] (403; a child that does not exist is 403 too, except to
//! admins, who get 404); then the method (405). A 403 body never carries token bytes.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{ALLOW, CONNECTION, HeaderValue};
use hyper::{Method, Request, StatusCode};

use super::Shared;
pub use super::authorize::{Denied, authorize};
use super::body::{ApiReply, full};
use super::conns::BusyGuard;
use super::peer::{Caller, Role};
use super::reply::error;
use super::routes::{
    assets, health, metrics, mqtt_publish, refresh, reload, sign, status, token, watch,
};
use crate::gateway::Identity;
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
    /// `GET /v1/assets`: the children a caller may use.
    Assets,
    ChildToken,
    ChildWatch,
    ChildStatus,
    ChildSign,
}

/// Whose identity a route serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// The device's own (and the agent's: health, metrics, reload).
    Own,
    /// The child named by the path's `{name}`.
    Child,
}

// === impl Route ===

impl Route {
    pub const ALL: [Route; 15] = [
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
        Route::Assets,
        Route::ChildToken,
        Route::ChildWatch,
        Route::ChildStatus,
        Route::ChildSign,
    ];

    /// The path; `{name}` stands for a child's name. Also the route's label in
    /// `/metrics`.
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
            Route::Assets => "/v1/assets",
            Route::ChildToken => "/v1/assets/{name}/token",
            Route::ChildWatch => "/v1/assets/{name}/token/watch",
            Route::ChildStatus => "/v1/assets/{name}/status",
            Route::ChildSign => "/v1/assets/{name}/sign",
        }
    }

    pub fn method(self) -> Method {
        match self {
            Route::Sign
            | Route::Refresh
            | Route::Reload
            | Route::MqttPublish
            | Route::ChildSign => Method::POST,
            Route::Token
            | Route::Watch
            | Route::Status
            | Route::Live
            | Route::Ready
            | Route::Metrics
            | Route::Assets
            | Route::ChildToken
            | Route::ChildWatch
            | Route::ChildStatus => Method::GET,
        }
    }

    /// The least role a caller needs on the route's identity.
    pub fn role(self) -> Role {
        match self {
            Route::Refresh | Route::Reload => Role::Admin,
            Route::Sign | Route::ChildSign => Role::Signer,
            // Token role: whoever may read the token could log in to the broker with it
            // anyway.
            Route::MqttPublish => Role::Token,
            // `/v1/assets` needs it on some identity, and lists those it holds it on.
            Route::Assets => Role::Token,
            Route::Token
            | Route::Watch
            | Route::Status
            | Route::Live
            | Route::Ready
            | Route::Metrics
            | Route::ChildToken
            | Route::ChildWatch
            | Route::ChildStatus => Role::Token,
        }
    }

    /// Whose identity the route serves.
    pub fn whose(self) -> Whose {
        match self {
            Route::ChildToken | Route::ChildWatch | Route::ChildStatus | Route::ChildSign => {
                Whose::Child
            }
            Route::Token
            | Route::Watch
            | Route::Status
            | Route::Live
            | Route::Ready
            | Route::Metrics
            | Route::Sign
            | Route::Refresh
            | Route::Reload
            | Route::MqttPublish
            | Route::Assets => Whose::Own,
        }
    }

    /// The route `path` names, and the child's name for a child route. A name is one
    /// non-empty segment taken as sent (no decoding): a spelling that is not a child's
    /// exact name names no child.
    pub fn find(path: &str) -> Option<(Route, Option<&str>)> {
        Route::ALL
            .into_iter()
            .find_map(|r| match r.path().split_once("{name}") {
                None => (r.path() == path).then_some((r, None)),
                Some((before, after)) => {
                    let name = path.strip_prefix(before)?.strip_suffix(after)?;
                    (!name.is_empty() && !name.contains('/')).then_some((r, Some(name)))
                }
            })
    }
}

/// Every identity the agent serves: its own first, then the children by name.
pub fn identities(shared: &Shared) -> Vec<Arc<Identity>> {
    let mut all = vec![shared.own.clone()];
    if let Some(c) = &shared.children {
        all.extend(c.identities());
    }
    all
}

/// Handles one request; `busy` marks the connection busy for as long as the answer needs.
pub async fn handle(
    shared: Arc<Shared>,
    caller: Arc<Caller>,
    req: Request<Incoming>,
    busy: BusyGuard,
) -> ApiReply {
    let found = Route::find(req.uri().path());
    let route = found.map(|(r, _)| r);
    // The name is copied only for child routes.
    let name = found.and_then(|(_, n)| n).map(str::to_owned);
    let reply = dispatch(&shared, &caller, route, name.as_deref(), req, busy).await;
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
    name: Option<&str>,
    req: Request<Incoming>,
    busy: BusyGuard,
) -> ApiReply {
    let label = route.map_or("other", Route::path);
    // A caller with no role is served only child routes, and only when some child lists
    // it; to anyone else every path is as closed as every other (403, connection closed).
    if caller.role.is_none() {
        let child_route = route.is_some_and(|r| r.whose() == Whose::Child || r == Route::Assets);
        let listed = child_route
            && identities(shared)
                .iter()
                .any(|i| authorize(caller, i, Role::Token).is_ok());
        if !listed {
            return full(stranger(shared, caller, label));
        }
    }
    let Some(route) = route else {
        return full(error(StatusCode::NOT_FOUND, "not_found", "no such route"));
    };
    let admin = caller.role == Some(Role::Admin);
    let identity = match (route.whose(), name) {
        (Whose::Own, _) => shared.own.clone(),
        (Whose::Child, name) => {
            let name = name.unwrap_or_default();
            match shared.children.as_ref().and_then(|c| c.identity(name)) {
                Some(i) => i,
                None if admin => {
                    return full(error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        &format!("no child asset {name:?}"),
                    ));
                }
                // As a child the caller may not use: probing discloses no name.
                None => {
                    let denied = Denied {
                        needs: route.role(),
                        has: None,
                    };
                    return full(forbidden(shared, caller, route, Some(name), denied));
                }
            }
        }
    };
    let allowed = match route {
        // Some identity will do; the list shows those the caller may use.
        Route::Assets => identities(shared)
            .iter()
            .map(|i| authorize(caller, i, route.role()))
            .find(Result::is_ok)
            .unwrap_or(Err(Denied {
                needs: route.role(),
                has: caller.role,
            })),
        _ => authorize(caller, &identity, route.role()),
    };
    if let Err(denied) = allowed {
        return full(forbidden(
            shared,
            caller,
            route,
            identity.name.as_deref(),
            denied,
        ));
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
        Route::Token | Route::ChildToken => {
            full(token::reply(shared, &identity, token::Ask::of(&req)).await)
        }
        Route::Watch | Route::ChildWatch => {
            watch::reply(&identity, (*caller.shutdown).clone(), busy)
        }
        Route::Status | Route::ChildStatus => full(status::reply(shared, &identity)),
        Route::Sign | Route::ChildSign => full(sign::reply(shared, &identity, caller, req).await),
        Route::Refresh => full(refresh::reply(shared, &identity).await),
        Route::Live => full(health::live(&identity)),
        Route::Ready => full(health::ready(&identity)),
        Route::Metrics => full(metrics::reply(shared)),
        Route::Reload => full(reload::reply(shared).await),
        Route::MqttPublish => full(mqtt_publish::reply(shared.mqtt.as_ref(), req).await),
        Route::Assets => full(assets::list(shared, caller)),
    }
}

/// 403 for a caller with no role and no child's grant, on any path; the connection is
/// closed after it.
fn stranger(shared: &Shared, caller: &Caller, label: &str) -> Reply {
    let peer = &caller.peer;
    shared.state.requests.denied(Role::Token);
    shared
        .state
        .denials
        .record(peer, label, Role::Token, caller.role);
    let reason = format!(
        "uid {} (gid {}) may not use this socket; ask for it to be added to [api] allow_uids or allow_gids, or join the socket's group",
        peer.uid, peer.gid
    );
    let mut r = error(StatusCode::FORBIDDEN, "forbidden", &reason);
    // Nothing more to say to this caller on this connection.
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// 403, logged (rate-limited) and counted.
fn forbidden(
    shared: &Shared,
    caller: &Caller,
    route: Route,
    child: Option<&str>,
    denied: Denied,
) -> Reply {
    let peer = &caller.peer;
    let needs = denied.needs;
    shared.state.requests.denied(needs);
    shared
        .state
        .denials
        .record(peer, route.path(), needs, caller.role);
    let reason = match child {
        Some(name) => {
            let list = match needs {
                Role::Token => "allow_uids or allow_gids",
                Role::Signer | Role::Admin => "signer_uids or signer_gids",
            };
            format!(
                "uid {} may not use child asset {name:?}; ask for it to be added to that child's {list}",
                peer.uid
            )
        }
        None => format!(
            "{} needs the {} role; uid {} has {}",
            route.path(),
            needs.as_str(),
            peer.uid,
            caller.role.map_or("none", Role::as_str)
        ),
    };
    error(StatusCode::FORBIDDEN, "forbidden", &reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::authorize::decide;
    use crate::gateway::Grant;

    #[test]
    fn route_table_is_consistent() {
        for r in Route::ALL {
            let path = r.path().replace("{name}", "pump-7");
            let name = (r.whose() == Whose::Child).then_some("pump-7");
            assert_eq!(Route::find(&path), Some((r, name)), "{path}");
        }
        for other in [
            "/v1/token/",
            "/V1/TOKEN",
            "/v1/assets/",
            "/v1/assets//token",
            "/v1/assets/pump-7",
            "/v1/assets/pump-7/token/",
            "/v1/assets/a/b/token",
            "/v1/assets/pump-7/refresh",
            "/v1/assetsx",
        ] {
            assert_eq!(Route::find(other), None, "{other}");
        }
        assert_eq!(Route::Refresh.role(), Role::Admin);
        assert_eq!(Route::Sign.role(), Role::Signer);
        assert_eq!(Route::ChildSign.role(), Role::Signer);
        assert_eq!(Route::Metrics.role(), Role::Token);
    }

    #[test]
    fn authorize_fails_closed() {
        use Role::{Admin, Signer, Token};
        let grants = [None, Some(Grant::Token), Some(Grant::Signer)];
        for needs in [Token, Signer, Admin] {
            for grant in grants {
                // Admins may do everything, whatever the lists say.
                assert!(decide(Some(Admin), || grant, needs).is_ok());
                // Anyone else: the identity's lists alone, never the role on the socket.
                for role in [None, Some(Token), Some(Signer)] {
                    let allowed = match (grant, needs) {
                        (_, Admin) | (None, _) => false,
                        (Some(Grant::Token), Signer) => false,
                        (Some(_), Token) | (Some(Grant::Signer), Signer) => true,
                    };
                    assert_eq!(
                        decide(role, || grant, needs).is_ok(),
                        allowed,
                        "{role:?} {grant:?} {needs:?}"
                    );
                }
            }
        }
    }

    /// On the device's own identity, [`authorize`] grants what the caller's role on the
    /// socket says.
    #[test]
    fn the_own_identity_s_lists_are_the_roles() {
        use super::super::peer::Peer;
        let policy = super::super::peer::tests::sample_policy();
        let access = policy.own_access();
        for (uid, gid, groups) in [
            (0, 0, vec![]),
            (990, 5, vec![]),
            (1002, 5, vec![]),
            (7, 7, vec![3, 70]),
            (1001, 1001, vec![]),
            (7, 7, vec![60]),
            (1234, 991, vec![]),
            (1234, 1234, vec![991]),
            (1000, 1000, vec![]),
            (77, 50, vec![]),
            (65534, 65534, vec![65534, 100]),
        ] {
            let peer = Peer {
                uid,
                gid,
                pid: None,
                groups: groups.clone(),
            };
            let role = policy.role(&peer);
            for needs in [Role::Token, Role::Signer, Role::Admin] {
                let by_lists = decide(
                    role,
                    || crate::gateway::grant(&access, uid, gid, &groups),
                    needs,
                );
                assert_eq!(
                    by_lists.is_ok(),
                    role.is_some_and(|r| r >= needs),
                    "uid {uid} gid {gid} {groups:?} {needs:?}"
                );
            }
        }
    }
}
