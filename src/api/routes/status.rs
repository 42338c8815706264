//! `GET /v1/status`: the agent's state for people and monitoring.

use serde::Serialize;
use tokio::time::Instant;

use crate::api::Shared;
use wire::clock;
use wire::http::{self, Reply};

/// The status document (also what `asset-agent status --json` prints).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Status {
    pub state: String,
    pub version: String,
    pub device_id: String,
    pub key_thumbprint: String,
    pub auth_method: String,
    pub asset_id: Option<String>,
    pub token: Option<TokenStatus>,
    pub next_refresh_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_reason: Option<String>,
    pub consecutive_failures: u32,
    pub refresh_failing_since: Option<String>,
    pub refreshes_ok: u64,
    pub refreshes_failed: u64,
    pub clock_skew_seconds: Option<i64>,
    /// The MQTT uplink, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<crate::mqtt::Status>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct TokenStatus {
    pub issued_at: Option<String>,
    pub expires_at: String,
    pub expires_in: u64,
}

/// Builds the status from the live state.
pub fn build(shared: &Shared) -> Status {
    let snap = shared.tokens.snapshot();
    let token = crate::token::live(&shared.tokens.current);
    let now_mono = Instant::now();
    let now_wall = shared.clock.unix();
    // Monotonic instants → wall-clock strings at the moment of answering.
    let wall = |at: Instant| {
        let delta = i64::try_from(at.saturating_duration_since(now_mono).as_secs())
            .unwrap_or(i64::MAX)
            - i64::try_from(now_mono.saturating_duration_since(at).as_secs()).unwrap_or(0);
        clock::rfc3339(now_wall.saturating_add(delta))
    };
    Status {
        state: snap.state.as_str().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        device_id: shared.info.device_id.clone(),
        key_thumbprint: shared.info.key_thumbprint.clone(),
        auth_method: shared.info.auth_method.to_owned(),
        asset_id: token.as_ref().and_then(|t| t.asset_id().map(str::to_owned)),
        token: token.as_ref().map(|t| TokenStatus {
            issued_at: t.claims.iat.map(clock::rfc3339),
            expires_at: clock::rfc3339(t.claims.exp),
            expires_in: t.remaining().as_secs(),
        }),
        next_refresh_at: snap.next_refresh.map(wall),
        last_error: snap.last_error.clone(),
        last_error_reason: snap.last_error_reason.clone(),
        consecutive_failures: snap.consecutive_failures,
        refresh_failing_since: snap.failing_since.map(wall),
        refreshes_ok: snap.refreshes_ok,
        refreshes_failed: snap.refreshes_failed,
        clock_skew_seconds: shared.skew.measured(),
        mqtt: shared.mqtt.as_ref().map(crate::mqtt::Handle::status),
    }
}

pub fn reply(shared: &Shared) -> Reply {
    http::json(hyper::StatusCode::OK, &build(shared))
}
