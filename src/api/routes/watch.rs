//! `GET /v1/token/watch`: follow token rotations as they happen.
//!
//! The answer is `application/x-ndjson`: one JSON object per line, the current state at
//! once and then one line per change of the refresher's `current` channel. A line is either
//! the `GET /v1/token` body (a new token) or `{"error":"unavailable","reason":...}` (no valid
//! token, e.g. at start or after expiry). The stream ends when the agent shuts down;
//! clients reconnect and get the current state again, so nothing is missed.
//!
//! A producer task feeds the body through a small channel; it stops as soon as the client
//! goes away (the body, and with it the receiver, is dropped).

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::token::{TokenBody, unavailable_reason};
use crate::api::body::{ApiBody, ApiReply};
use crate::api::conns::BusyGuard;
use crate::gateway::Identity;
use crate::token::AssetToken;
use crate::token::refresher::Handle;

/// Lines buffered for a slow reader before the producer waits.
const BUFFER: usize = 4;

/// Starts the stream of `identity`'s tokens.
pub fn reply(identity: &Identity, shutdown: CancellationToken, busy: BusyGuard) -> ApiReply {
    let tokens = identity.tokens.clone();
    let device_id = identity.info.device_id.clone();
    let (tx, body) = ApiBody::lines(busy, BUFFER);
    tokio::spawn(crate::spawn::boxed(produce(
        tokens, device_id, shutdown, tx,
    )));
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn produce(
    tokens: Handle,
    device_id: String,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Bytes>,
) {
    // An open stream uses the token: an on-demand refresher keeps it fresh meanwhile.
    let _demand = tokens.hold();
    let mut current = tokens.current.clone();
    // What the last line said: a token (by identity) or "none".
    let mut last: Option<Option<Arc<AssetToken>>> = None;
    loop {
        let now = current
            .borrow_and_update()
            .as_ref()
            .filter(|t| t.is_live())
            .cloned();
        let same = last.as_ref().is_some_and(|prev| match (prev, &now) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        });
        if !same {
            let line = line(&tokens, &device_id, now.as_deref());
            tokio::select! {
                sent = tx.send(line) => if sent.is_err() { return },
                () = shutdown.cancelled() => return,
            }
            last = Some(now);
        }
        tokio::select! {
            changed = current.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
            () = shutdown.cancelled() => return,
        }
    }
}

/// One NDJSON line for the token (or its absence).
fn line(tokens: &Handle, device_id: &str, token: Option<&AssetToken>) -> Bytes {
    #[derive(Serialize)]
    struct Unavailable<'a> {
        error: &'a str,
        reason: &'a str,
    }
    let json = match token {
        Some(t) => serde_json::to_vec(&TokenBody::of(device_id, t)),
        None => {
            let (reason, _) = unavailable_reason(tokens, std::time::Duration::ZERO);
            serde_json::to_vec(&Unavailable {
                error: "unavailable",
                reason: &reason,
            })
        }
    };
    let mut bytes =
        json.unwrap_or_else(|_| br#"{"error":"internal","reason":"encoding"}"#.to_vec());
    bytes.push(b'\n');
    bytes.into()
}
