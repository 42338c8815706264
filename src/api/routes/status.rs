//! `GET /v1/status`: the agent's state for people and monitoring.

use serde::Serialize;
use tokio::time::Instant;

use crate::api::Shared;
use crate::gateway::Identity;
use crate::token::refresher::Handle;
use crate::token::status::Info;
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
    /// The refresh policy and what it sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshStatus>,
    /// The MQTT uplink, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<crate::mqtt::Status>,
    /// A gateway's child identities, one line each (absent without children).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<ChildSummary>>,
    /// The file sinks (`[[sink]]`), when configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<crate::sink::Status>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct TokenStatus {
    pub issued_at: Option<String>,
    pub expires_at: String,
    pub expires_in: u64,
}

/// The `refresh` object: the policy, the demand it sees, and what it cost upstream.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct RefreshStatus {
    /// `eager` or `on_demand` (`token.refresh`).
    pub policy: String,
    /// Whether anything uses the token now (always true for `eager`).
    pub demand: bool,
    /// Open watch streams and MQTT sessions.
    pub demand_holders: usize,
    /// Seconds since the last token request, if any.
    pub last_request_s: Option<u64>,
    /// True while nothing uses the token and it is left to lapse (on demand).
    pub lapsed: bool,
    /// Whether the held token is past this cycle's refresh point (absent with no token).
    pub past_refresh_point: Option<bool>,
    /// Token exchanges made (successful refreshes since start).
    pub exchanges: u64,
    /// Upstream attempts made, failed ones included.
    pub attempts: u64,
    /// The normal refresh interval in seconds, once a token's lifetime is known.
    pub interval_s: Option<u64>,
}

/// The status of `identity`; the device's own also shows the MQTT uplink, the sinks and
/// the gateway's children.
pub fn build(shared: &Shared, identity: &Identity) -> Status {
    let mut status = of(shared, &identity.tokens, &identity.info);
    if identity.is_own() {
        status.mqtt = shared.mqtt.as_ref().map(crate::mqtt::Handle::status);
        status.sinks = shared.sinks.status();
        status.children = shared
            .children
            .as_ref()
            .map(|c| {
                c.identities()
                    .iter()
                    .map(|child| ChildSummary::of(child))
                    .collect()
            })
            .filter(|v: &Vec<ChildSummary>| !v.is_empty());
    }
    status
}

/// What every identity's status says.
fn of(shared: &Shared, tokens: &Handle, info: &Info) -> Status {
    let snap = tokens.snapshot();
    let token = crate::token::live(&tokens.current);
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
        device_id: info.device_id.clone(),
        key_thumbprint: info.key_thumbprint.clone(),
        auth_method: info.auth_method.to_owned(),
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
        refresh: Some({
            let demand = tokens.demand();
            RefreshStatus {
                policy: snap.policy.as_str().to_owned(),
                demand: demand.active,
                demand_holders: demand.holders,
                last_request_s: demand.last_request_s,
                lapsed: snap.lapsed(),
                past_refresh_point: token.as_ref().and(snap.past_refresh_point()),
                exchanges: snap.refreshes_ok,
                attempts: snap.attempts,
                interval_s: snap.interval.map(|i| i.as_secs()),
            }
        }),
        mqtt: None,
        children: None,
        sinks: Vec::new(),
    }
}

/// One line of `children` in the gateway's status.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ChildSummary {
    pub name: String,
    pub state: String,
    pub device_id: String,
    pub asset_id: Option<String>,
    pub expires_in: Option<u64>,
    pub consecutive_failures: u32,
    pub last_error_reason: Option<String>,
}

impl ChildSummary {
    fn of(child: &Identity) -> Self {
        let (tokens, info) = (&child.tokens, &child.info);
        let snap = tokens.snapshot();
        let token = crate::token::live(&tokens.current);
        Self {
            name: child.name.clone().unwrap_or_default(),
            state: snap.state.as_str().to_owned(),
            device_id: info.device_id.clone(),
            asset_id: token.as_ref().and_then(|t| t.asset_id().map(str::to_owned)),
            expires_in: token.as_ref().map(|t| t.remaining().as_secs()),
            consecutive_failures: snap.consecutive_failures,
            last_error_reason: snap.last_error_reason,
        }
    }
}

pub fn reply(shared: &Shared, identity: &Identity) -> Reply {
    http::json(hyper::StatusCode::OK, &build(shared, identity))
}
