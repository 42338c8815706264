//! `/v1/assets/...`: a gateway's child identities (gateway mode), each served like the
//! gateway's own under its name:
//!
//! | route | method | who |
//! |---|---|---|
//! | `/v1/assets` | GET | anyone with a role or a child grant: the children it may use |
//! | `/v1/assets/NAME/token` | GET | admins, the child's `allow_*` and `signer_*` callers |
//! | `/v1/assets/NAME/token/watch` | GET | as `token` |
//! | `/v1/assets/NAME/status` | GET | as `token` |
//! | `/v1/assets/NAME/sign` | POST | admins, the child's `signer_*` callers |
//!
//! A caller's role on the gateway (the `[api]` lists, the socket's group) gives no access
//! to a child's token: only admins and the child's own lists do, so the uid of a Modbus
//! bridge allowed pump-7 gets pump-7's token and 403 for everything else. A child that does
//! not exist answers 403 like one the caller may not use (except to admins, who get 404),
//! so probing these routes discloses no name (callers with a role on the gateway see the
//! names in `/v1/status` and `/metrics`); a removed child is gone from the next request on.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use super::{sign, status, token, watch};
use crate::api::Shared;
use crate::api::body::{ApiReply, full};
use crate::api::conns::BusyGuard;
use crate::api::peer::{Caller, Peer, Role};
use crate::api::reply::error;
use crate::gateway::Running;
use wire::http::{self, Reply};

/// The prefix of every child route.
pub const PREFIX: &str = "/v1/assets";

/// What a child route asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Token,
    Watch,
    Status,
    Sign,
}

/// A parsed child path.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// `/v1/assets`
    List,
    /// `/v1/assets/NAME/...`
    Child(&'a str, Action),
}

/// What a child's caller may do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grant {
    /// Its token, watch stream and status.
    Token,
    /// Also `sign` with its key.
    Signer,
}

// === impl Action ===

impl Action {
    fn method(self) -> Method {
        match self {
            Action::Sign => Method::POST,
            _ => Method::GET,
        }
    }

    fn needs(self) -> Grant {
        match self {
            Action::Sign => Grant::Signer,
            _ => Grant::Token,
        }
    }

    /// The path template, for request counters.
    pub fn template(self) -> &'static str {
        match self {
            Action::Token => "/v1/assets/{name}/token",
            Action::Watch => "/v1/assets/{name}/token/watch",
            Action::Status => "/v1/assets/{name}/status",
            Action::Sign => "/v1/assets/{name}/sign",
        }
    }
}

/// Parses `path` if it is a child route (`None` otherwise, or for an unknown action).
pub fn parse(path: &str) -> Option<Target<'_>> {
    let rest = path.strip_prefix(PREFIX)?;
    if rest.is_empty() {
        return Some(Target::List);
    }
    let rest = rest.strip_prefix('/')?;
    let (name, action) = rest.split_once('/')?;
    let action = match action {
        "token" => Action::Token,
        "token/watch" => Action::Watch,
        "status" => Action::Status,
        "sign" => Action::Sign,
        _ => return None,
    };
    (!name.is_empty()).then_some(Target::Child(name, action))
}

/// Answers a child route.
pub async fn reply(
    shared: &Arc<Shared>,
    caller: &Caller,
    target: Target<'_>,
    req: Request<Incoming>,
    busy: BusyGuard,
) -> ApiReply {
    // A caller with no role on the gateway is only served when some child lists it; to
    // anyone else these routes are as closed as every other (403, connection closed),
    // whether or not the agent is a gateway.
    let listed = shared
        .children
        .as_ref()
        .is_some_and(|c| c.all().iter().any(|c| grant(c, &caller.peer).is_some()));
    if caller.role.is_none() && !listed {
        return full(stranger(shared, caller, &target));
    }
    let Some(children) = shared.children.clone() else {
        return full(error(StatusCode::NOT_FOUND, "not_found", "no such route"));
    };
    let admin = caller.role == Some(Role::Admin);
    let (name, action) = match target {
        Target::List => {
            if req.method() != Method::GET {
                return full(method_not_allowed(Method::GET));
            }
            #[derive(Serialize)]
            struct Listed<'a> {
                name: &'a str,
                device_id: &'a str,
                state: &'static str,
            }
            let all = children.all();
            let visible: Vec<Listed<'_>> = all
                .iter()
                .filter(|c| admin || grant(c, &caller.peer).is_some())
                .map(|c| Listed {
                    name: c.name(),
                    device_id: &c.info.device_id,
                    state: c.tokens.snapshot().state.as_str(),
                })
                .collect();
            return full(http::json(StatusCode::OK, &visible));
        }
        Target::Child(name, action) => (name, action),
    };
    let child = children.get(name);
    let Some(child) = child.filter(|c| allows(c, caller.role, &caller.peer, action.needs())) else {
        if admin {
            return full(error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no child asset {name:?}"),
            ));
        }
        return full(forbidden(shared, caller, action, name));
    };
    if req.method() != action.method() {
        return full(method_not_allowed(action.method()));
    }
    match action {
        Action::Token => full(
            token::reply_for(
                shared,
                &child.tokens,
                &child.token_body,
                &child.info.device_id,
                token::Ask::of(&req),
            )
            .await
            .into_reply(),
        ),
        Action::Watch => watch::reply_for(
            child.tokens.clone(),
            child.info.device_id.clone(),
            (*caller.shutdown).clone(),
            busy,
        ),
        Action::Status => full(http::json(
            StatusCode::OK,
            &status::build_for(shared, &child.tokens, &child.info),
        )),
        Action::Sign => full(
            sign::reply_with(
                shared,
                child.signer.clone(),
                &child.info.device_id,
                caller,
                req,
            )
            .await,
        ),
    }
}

fn method_not_allowed(method: Method) -> Reply {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {method}"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(method.as_str()) {
        r.headers_mut().insert(hyper::header::ALLOW, v);
    }
    r
}

/// 403 for a caller with no role on the gateway and no child's grant, as the router
/// answers such a caller on every other route: the connection is closed after it.
fn stranger(shared: &Shared, caller: &Caller, target: &Target<'_>) -> Reply {
    let path = match target {
        Target::List => PREFIX,
        Target::Child(_, action) => action.template(),
    };
    shared.state.requests.denied(Role::Token);
    shared
        .state
        .denials
        .record(&caller.peer, path, Role::Token, caller.role);
    let reason = format!(
        "uid {} (gid {}) may not use this socket; ask for it to be added to [api] allow_uids or allow_gids, or join the socket's group",
        caller.peer.uid, caller.peer.gid
    );
    let mut r = error(StatusCode::FORBIDDEN, "forbidden", &reason);
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}

/// 403 for a child the caller may not use (or that does not exist), logged and counted.
fn forbidden(shared: &Shared, caller: &Caller, action: Action, name: &str) -> Reply {
    let peer = &caller.peer;
    let needs = match action.needs() {
        Grant::Signer => Role::Signer,
        Grant::Token => Role::Token,
    };
    shared.state.requests.denied(needs);
    shared
        .state
        .denials
        .record(peer, action.template(), needs, caller.role);
    let list = match action.needs() {
        Grant::Signer => "signer_uids or signer_gids",
        Grant::Token => "allow_uids or allow_gids",
    };
    let reason = format!(
        "uid {} may not use child asset {name:?}; ask for it to be added to that child's {list}",
        peer.uid
    );
    error(StatusCode::FORBIDDEN, "forbidden", &reason)
}

/// What `peer`, going by `child`'s lists alone, may do with it (admins are decided by the
/// caller's role, see [`allows`]).
pub fn grant(child: &Running, peer: &Peer) -> Option<Grant> {
    let a = &child.config.access;
    let member = |uids: &[u32], gids: &[u32]| {
        uids.contains(&peer.uid)
            || gids.contains(&peer.gid)
            || peer.groups.iter().any(|g| gids.contains(g))
    };
    if member(&a.signer_uids, &a.signer_gids) {
        Some(Grant::Signer)
    } else if member(&a.allow_uids, &a.allow_gids) {
        Some(Grant::Token)
    } else {
        None
    }
}

/// Whether a caller with `role` (on the gateway) and `peer` credentials may have `needs`
/// on `child`: admins may use every child; anyone else only what the child's own lists
/// grant.
pub fn allows(child: &Running, role: Option<Role>, peer: &Peer, needs: Grant) -> bool {
    role == Some(Role::Admin) || grant(child, peer).is_some_and(|g| g >= needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse("/v1/assets"), Some(Target::List));
        assert_eq!(
            parse("/v1/assets/pump-7/token"),
            Some(Target::Child("pump-7", Action::Token))
        );
        assert_eq!(
            parse("/v1/assets/pump-7/token/watch"),
            Some(Target::Child("pump-7", Action::Watch))
        );
        assert_eq!(
            parse("/v1/assets/pump-7/status"),
            Some(Target::Child("pump-7", Action::Status))
        );
        assert_eq!(
            parse("/v1/assets/pump-7/sign"),
            Some(Target::Child("pump-7", Action::Sign))
        );
        for other in [
            "/v1/assets/",
            "/v1/assets//token",
            "/v1/assets/pump-7",
            "/v1/assets/pump-7/token/",
            "/v1/assets/pump-7/refresh",
            "/v1/assetsx",
            "/v1/token",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }
}
