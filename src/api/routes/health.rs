//! `GET /v1/health/live` and `GET /v1/health/ready`: probes for supervisors.

use crate::api::reply::probe;
use crate::gateway::Identity;
use wire::http::Reply;

/// Live while the refresh loop keeps its promise to make progress.
pub fn live(own: &Identity) -> Reply {
    let snap = own.tokens.snapshot();
    probe(
        snap.is_live(),
        "refresh loop is making progress",
        "refresh loop is stalled",
    )
}

/// Ready while a valid asset token is held.
pub fn ready(own: &Identity) -> Reply {
    let ready = crate::token::live(&own.tokens.current).is_some();
    probe(
        ready,
        "a valid asset token is held",
        "no valid asset token is held",
    )
}
