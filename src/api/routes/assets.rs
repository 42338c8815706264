//! `GET /v1/assets`: the children of a gateway a caller may use. Each child is served
//! like the gateway's own identity under its name, by the same handlers
//! ([`super::super::router`]'s table):
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

use hyper::StatusCode;
use serde::Serialize;

use crate::api::Shared;
use crate::api::authorize::authorize;
use crate::api::peer::{Caller, Role};
use wire::http::{self, Reply};

/// The children `caller` may use, with their state.
pub fn list(shared: &Shared, caller: &Caller) -> Reply {
    #[derive(Serialize)]
    struct Listed<'a> {
        name: &'a str,
        device_id: &'a str,
        state: &'static str,
    }
    let children = shared
        .children
        .as_ref()
        .map(|c| c.identities())
        .unwrap_or_default();
    let visible: Vec<Listed<'_>> = children
        .iter()
        .filter(|c| authorize(caller, c, Role::Token).is_ok())
        .map(|c| Listed {
            name: c.name.as_deref().unwrap_or_default(),
            device_id: &c.info.device_id,
            state: c.tokens.snapshot().state.as_str(),
        })
        .collect();
    http::json(StatusCode::OK, &visible)
}
