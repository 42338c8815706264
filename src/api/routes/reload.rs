//! `POST /v1/reload` (admin): re-read the configuration and answer with the outcome.
//!
//! The daemon does the reload (`crate::reload`, all or nothing, in the layer above): it
//! owns the running configuration, so it hands this route a [`Requests`] sender and
//! answers each [`Pending`] request with a [`Report`]. This route asks and waits, so the caller learns whether the new configuration was taken. `asset-agent
//! reload`, the unit's `ExecReload=`, turns a refusal into a non-zero exit, and with it
//! `systemctl reload asset-agent` fails with the reason.

use std::time::Duration;

use hyper::StatusCode;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::api::Shared;
use crate::api::reply::error;
use wire::http::{self, Reply};

/// Loading and validating a configuration takes milliseconds; this bounds a daemon that
/// is busy shutting down.
pub const WAIT: Duration = Duration::from_secs(30);

/// A reload's outcome as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// False when the new configuration was refused (the running one is kept).
    pub accepted: bool,
    /// `unchanged`, `applied`, `needs_restart` or `invalid`.
    pub outcome: &'static str,
    /// The one-line summary the log shows.
    pub summary: String,
}

/// A reload asked for over the socket: the daemon answers on it.
pub type Pending = oneshot::Sender<Report>;

/// How the socket API asks the daemon for a reload. `None` where no daemon serves
/// requests (an agent embedded in tests or the demo): the API then answers 503.
#[derive(Debug, Clone, Default)]
pub struct Requests(Option<mpsc::Sender<Pending>>);

/// The daemon will not reload now (nobody serves requests, or it did not answer in time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// Requests and the daemon's end of them. A few may queue; more are refused as busy.
pub fn channel() -> (Requests, mpsc::Receiver<Pending>) {
    let (tx, rx) = mpsc::channel(4);
    (Requests(Some(tx)), rx)
}

impl Requests {
    /// Asks for a reload and waits up to `wait` for its report.
    ///
    /// # Errors
    /// [`Unavailable`] when no daemon takes requests, the queue is full, or it did not
    /// answer within `wait`.
    pub async fn reload(&self, wait: Duration) -> Result<Report, Unavailable> {
        let tx = self.0.as_ref().ok_or(Unavailable)?;
        let (reply, answer) = oneshot::channel();
        tx.try_send(reply).map_err(|_| Unavailable)?;
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(report)) => Ok(report),
            _ => Err(Unavailable),
        }
    }
}

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
        Err(Unavailable) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this agent does not take reload requests now (not the daemon, busy, or shutting down)",
        ),
    }
}
