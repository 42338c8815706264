//! What the agent says about itself over MQTT: the retained status (`online`, and
//! `offline` from the Last Will or a clean shutdown) and the periodic heartbeat.
//!
//! Plain `online`/`offline` strings, not JSON, because that is what dashboards and
//! availability topics (Home Assistant, Node-RED) expect; the heartbeat carries the detail.

use serde::Serialize;

use super::stats::Stats;
use crate::token::refresher::Handle;
use wire::clock::{self, Clock};

pub const ONLINE: &str = "online";
pub const OFFLINE: &str = "offline";

#[derive(Serialize)]
struct Heartbeat<'a> {
    device_id: &'a str,
    /// The token refresher's state (`ready`, `degraded`, ...).
    state: &'static str,
    at: String,
    token_expires_at: Option<String>,
    token_expires_in: Option<u64>,
    consecutive_failures: u32,
    mqtt_connects: u64,
    mqtt_rotations: u64,
    mqtt_disconnects: u64,
    version: &'static str,
}

/// The heartbeat payload (JSON). Holds no secret: expiry, never the token.
pub fn heartbeat(device_id: &str, tokens: &Handle, stats: &Stats, clock: &Clock) -> Vec<u8> {
    use std::sync::atomic::Ordering::Relaxed;
    let snap = tokens.snapshot();
    let token = crate::token::live(&tokens.current);
    let body = Heartbeat {
        device_id,
        state: snap.state.as_str(),
        at: clock::rfc3339(clock.unix()),
        token_expires_at: token.as_ref().map(|t| clock::rfc3339(t.claims.exp)),
        token_expires_in: token.as_ref().map(|t| t.remaining().as_secs()),
        consecutive_failures: snap.consecutive_failures,
        mqtt_connects: stats.connects.load(Relaxed),
        mqtt_rotations: stats.rotations.load(Relaxed),
        mqtt_disconnects: stats.disconnects.load(Relaxed),
        version: env!("CARGO_PKG_VERSION"),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}
