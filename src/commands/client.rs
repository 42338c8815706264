//! Client commands: `token` and `status` talk to a running agent over its socket.

use std::path::PathBuf;

use hyper::{Method, StatusCode};

use super::{Error, load_config};
use crate::api::status::Status;
use crate::cli::{SocketArg, StatusArgs, TokenArgs};
use crate::client;

/// The socket: `--socket`/`ASSET_AGENT_SOCKET`, else the config's, else the default.
fn socket(config: Option<PathBuf>, arg: SocketArg) -> Result<PathBuf, Error> {
    if let Some(s) = arg.socket {
        return Ok(s);
    }
    Ok(load_config(config)?.api.socket)
}

pub async fn token(config: Option<PathBuf>, args: TokenArgs) -> Result<(), Error> {
    let socket = socket(config, args.socket)?;
    let path = match args.min_ttl {
        Some(s) => format!("/v1/token?min_ttl={s}"),
        None => "/v1/token".to_owned(),
    };
    let accept = if args.raw {
        "text/plain"
    } else {
        "application/json"
    };
    let resp = client::request(&socket, Method::GET, &path, accept).await?;
    if resp.status != StatusCode::OK {
        return Err(refused(&socket, &resp));
    }
    let text = String::from_utf8_lossy(&resp.body);
    print!("{}", text.trim_end());
    println!();
    Ok(())
}

pub async fn status(config: Option<PathBuf>, args: StatusArgs) -> Result<(), Error> {
    let socket = socket(config, args.socket)?;
    let resp = client::get_json(&socket, "/v1/status").await?;
    if resp.status != StatusCode::OK {
        return Err(refused(&socket, &resp));
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(&resp.body).trim_end());
        return Ok(());
    }
    let s: Status = serde_json::from_slice(&resp.body)
        .map_err(|e| Error::Failed(format!("unexpected status answer: {e}")))?;
    print!("{}", human(&s));
    Ok(())
}

/// The human summary of `asset-agent status`.
fn human(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "state:        {}", s.state);
    let _ = writeln!(out, "device:       {}", s.device_id);
    let _ = writeln!(
        out,
        "asset:        {}",
        s.asset_id.as_deref().unwrap_or("-")
    );
    let _ = writeln!(out, "key:          {}", s.key_thumbprint);
    let _ = writeln!(out, "auth:         {}", s.auth_method);
    match &s.token {
        Some(t) => {
            let _ = writeln!(
                out,
                "token:        expires {} (in {}s)",
                t.expires_at, t.expires_in
            );
        }
        None => {
            let _ = writeln!(out, "token:        none");
        }
    }
    if let Some(n) = &s.next_refresh_at {
        let _ = writeln!(out, "next refresh: {n}");
    }
    if let Some(skew) = s.clock_skew_seconds {
        let _ = writeln!(out, "clock skew:   {skew}s (Salesforce minus this device)");
    }
    if s.consecutive_failures > 0 {
        let _ = writeln!(
            out,
            "failing:      {} attempts since {}",
            s.consecutive_failures,
            s.refresh_failing_since.as_deref().unwrap_or("?")
        );
    }
    if let Some(e) = &s.last_error {
        let _ = writeln!(out, "last error:   {e}");
    }
    let _ = writeln!(out, "version:      {}", s.version);
    out
}

fn refused(socket: &std::path::Path, resp: &client::Response) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        error: String,
        reason: String,
    }
    match serde_json::from_slice::<Body>(&resp.body) {
        Ok(b) if resp.status == StatusCode::FORBIDDEN => Error::Failed(format!(
            "access denied by the agent at {} ({}): your uid/gid is not allowed; join the socket's group or ask for [api] allow_uids/allow_gids",
            socket.display(),
            b.reason
        )),
        Ok(b) => Error::Failed(format!("{} ({}): {}", resp.status, b.error, b.reason)),
        Err(_) => Error::Failed(format!("the agent answered {}", resp.status)),
    }
}
