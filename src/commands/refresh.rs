//! `asset-agent refresh`: `POST /v1/refresh` (admin), then the new token's expiry.

use std::path::PathBuf;

use hyper::StatusCode;
use serde::Deserialize;

use super::Error;
use super::client::{countdown, refused, socket};
use crate::cli::RefreshArgs;
use crate::client;

#[derive(Deserialize)]
struct Refreshed {
    refreshed: bool,
    expires_at: String,
    expires_in: u64,
    asset_id: Option<String>,
}

pub async fn run(config: Option<PathBuf>, args: RefreshArgs) -> Result<(), Error> {
    let socket = socket(config, args.socket)?;
    let resp = client::post_json(&socket, "/v1/refresh", bytes::Bytes::new()).await?;
    if resp.status != StatusCode::OK {
        return Err(refused(&socket, &resp));
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(&resp.body).trim_end());
        return Ok(());
    }
    let r: Refreshed = serde_json::from_slice(&resp.body)
        .map_err(|e| Error::Failed(format!("unexpected answer from the agent: {e}")))?;
    let what = if r.refreshed {
        "refreshed"
    } else {
        "already fresh (obtained moments ago)"
    };
    println!(
        "{what}: asset {}, token expires in {} (at {})",
        r.asset_id.as_deref().unwrap_or("-"),
        countdown(r.expires_in),
        r.expires_at
    );
    Ok(())
}
