//! `asset-agent watch`: follows `GET /v1/token/watch` and prints one line per event until
//! the agent closes the stream (it shuts down) or Ctrl-C.

use std::io::Write as _;
use std::path::PathBuf;

use hyper::StatusCode;
use serde::Deserialize;

use super::Error;
use super::client::{countdown, refused, socket};
use crate::cli::WatchArgs;
use crate::client;

/// One NDJSON line: a token, or why there is none.
#[derive(Deserialize)]
struct Event {
    token: Option<String>,
    expires_at: Option<String>,
    expires_in: Option<u64>,
    asset_id: Option<String>,
    reason: Option<String>,
}

pub async fn run(config: Option<PathBuf>, args: WatchArgs) -> Result<(), Error> {
    let socket = socket(config, args.socket)?;
    let path = format!("{}/token/watch", args.asset.base());
    let mut lines = client::watch_path(&socket, &path).await?;
    if lines.status != StatusCode::OK {
        let body = lines.next_line().await?.unwrap_or_default();
        let resp = client::Response {
            status: lines.status,
            headers: lines.headers.clone(),
            body,
        };
        return Err(refused(&socket, &resp));
    }
    let mut out = std::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let text = if args.json {
            Some(String::from_utf8_lossy(&line).into_owned())
        } else {
            let event: Event = serde_json::from_slice(&line)
                .map_err(|e| Error::Failed(format!("unexpected line from the agent: {e}")))?;
            describe(&event, args.raw)
        };
        if let Some(text) = text {
            // A closed pipe (`| head -1`) ends the command quietly.
            if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
    Err(Error::Failed(format!(
        "the agent at {} closed the stream (it is shutting down)",
        socket.display()
    )))
}

fn describe(e: &Event, raw: bool) -> Option<String> {
    match (&e.token, raw) {
        (Some(t), true) => Some(t.clone()),
        (None, true) => None,
        (Some(_), false) => Some(format!(
            "new token: asset {}, expires in {} (at {})",
            e.asset_id.as_deref().unwrap_or("-"),
            countdown(e.expires_in.unwrap_or(0)),
            e.expires_at.as_deref().unwrap_or("?")
        )),
        (None, false) => Some(format!(
            "no valid token: {}",
            e.reason.as_deref().unwrap_or("unknown")
        )),
    }
}
