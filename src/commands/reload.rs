//! `asset-agent reload`: `POST /v1/reload` (admin). Prints the outcome; a refused reload
//! exits 1 with the agent's reason, so `systemctl reload asset-agent` (whose
//! `ExecReload=` this is) fails and says why.

use std::path::PathBuf;

use hyper::StatusCode;
use serde::Deserialize;

use super::Error;
use super::client::{refused, socket};
use crate::cli::ReloadArgs;
use crate::client;

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn run(config: Option<PathBuf>, args: ReloadArgs) -> Result<(), Error> {
    let socket = socket(config, args.socket)?;
    let resp = client::post_json(&socket, "/v1/reload", bytes::Bytes::new()).await?;
    let answer = serde_json::from_slice::<Answer>(&resp.body).ok();
    match resp.status {
        StatusCode::OK => {
            if args.json {
                println!("{}", String::from_utf8_lossy(&resp.body).trim_end());
            } else {
                let summary = answer.and_then(|a| a.summary);
                println!("{}", summary.as_deref().unwrap_or("configuration reloaded"));
            }
            Ok(())
        }
        StatusCode::CONFLICT => {
            if args.json {
                println!("{}", String::from_utf8_lossy(&resp.body).trim_end());
            }
            let reason = answer.and_then(|a| a.reason);
            Err(Error::Failed(reason.unwrap_or_else(|| {
                "the agent refused the new configuration".to_owned()
            })))
        }
        _ => Err(refused(&socket, &resp)),
    }
}
