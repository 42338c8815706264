//! `POST /v1/reload` (admin): re-read the configuration and answer with the outcome.
//!
//! The daemon does the reload (see `crate::reload`: all or nothing); this route asks it and
//! waits, so the caller learns whether the new configuration was taken. `asset-agent
//! reload`, the unit's `ExecReload=`, turns a refusal into a non-zero exit, and with it
//! `systemctl reload asset-agent` fails with the reason.

use std::time::Duration;

use hyper::StatusCode;
use serde::Serialize;

use crate::api::Shared;
use crate::api::reply::error;
use wire::http::{self, Reply};

/// Loading and validating a configuration takes milliseconds; this bounds a daemon that
/// is busy shutting down.
pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct Refused<'a> {
    error: &'static str,
    reason: &'a str,
    outcome: &'static str,
}

pub async fn reply(shared: &Shared) -> Reply {
    match shared.reload.reload(WAIT).await {
        Ok(report) if report.accepted => http::json(StatusCode::OK, &report),
        Ok(report) => http::json(
            StatusCode::CONFLICT,
            &Refused {
                error: "reload_refused",
                reason: &report.summary,
                outcome: report.outcome,
            },
        ),
        Err(crate::reload::Unavailable) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this agent does not take reload requests now (not the daemon, busy, or shutting down)",
        ),
    }
}
