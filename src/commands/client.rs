//! Client commands `token` and `status`, and what every client command shares: finding the
//! socket, and turning the agent's refusals into messages that say what to do.

use std::path::{Path, PathBuf};

use hyper::{Method, StatusCode};

use super::{Error, load_config};
use crate::api::routes::status::Status;
use crate::cli::{SocketArg, StatusArgs, TokenArgs};
use crate::client;

/// The socket: `--socket`/`ASSET_AGENT_SOCKET`; else the config's `api.socket` when
/// something is there; else the system agent's socket ([`SYSTEM_SOCKET`]).
///
/// A client needs nothing from the config but the socket's path, and whoever runs it may
/// have no usable config at all: a member of the agent's group has no `RUNTIME_DIRECTORY`
/// and often no `XDG_RUNTIME_DIR`, and `/etc/asset-agent/agent.toml` may be one it cannot
/// read or (for `asset-agent reload`) one the agent is about to refuse. Only an explicit
/// `--config` whose socket cannot be worked out, with no system socket present either,
/// is an error.
pub(super) fn socket(config: Option<PathBuf>, arg: SocketArg) -> Result<PathBuf, Error> {
    if let Some(s) = arg.socket {
        return Ok(s);
    }
    let explicit = config.is_some();
    Ok(match load_config(config) {
        Ok(c) => pick(Some(c.api.socket), present),
        Err(e) if explicit && !present(Path::new(SYSTEM_SOCKET)) => return Err(e),
        Err(e) => {
            tracing::debug!(error = %crate::error::chain(&e), "no socket from the config");
            pick(None, present)
        }
    })
}

/// The system agent's socket (the unit's `RuntimeDirectory=`, the socket unit's
/// `ListenStream=`).
pub const SYSTEM_SOCKET: &str = "/run/asset-agent/agent.sock";

/// The configured socket if something is there, else the system socket if something is
/// there, else the configured one (so "not running" names the path the config gave).
fn pick(configured: Option<PathBuf>, present: impl Fn(&Path) -> bool) -> PathBuf {
    let system = PathBuf::from(SYSTEM_SOCKET);
    match configured {
        Some(c) if present(&c) || !present(&system) => c,
        _ => system,
    }
}

/// Whether something is at `path`: a socket we may not be allowed to see into still
/// counts (connecting then says "permission denied" and how to join the group).
fn present(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    }
}

pub async fn token(config: Option<PathBuf>, args: TokenArgs) -> Result<(), Error> {
    let socket = socket(config, args.socket)?;
    let base = args.asset.base();
    let path = match args.min_ttl {
        Some(s) => format!("{base}/token?min_ttl={s}"),
        None => format!("{base}/token"),
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
    let resp = client::get_json(&socket, &format!("{}/status", args.asset.base())).await?;
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
    if let Some(warning) = s.clock_skew_seconds.and_then(skew_warning) {
        let _ = writeln!(out, "CLOCK SKEW:   {warning}");
    }
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
                "token:        valid, expires in {} (at {})",
                countdown(t.expires_in),
                t.expires_at
            );
        }
        None => {
            let _ = writeln!(out, "token:        none");
        }
    }
    if let Some(n) = &s.next_refresh_at {
        let _ = writeln!(out, "next refresh: {n}");
    }
    if let Some(r) = &s.refresh {
        let demand = match (r.demand, r.lapsed) {
            (true, _) => "in use",
            (false, true) => "not in use; the token lapses",
            (false, false) => "not in use",
        };
        let _ = writeln!(
            out,
            "refresh:      {} ({demand}); {} exchanges, {} attempts",
            r.policy, r.exchanges, r.attempts
        );
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
    if let Some(children) = &s.children {
        let ready = children.iter().filter(|c| c.state == "ready").count();
        let _ = writeln!(
            out,
            "children:     {} ({ready} ready; `asset-agent status NAME` for one)",
            children.len()
        );
        for c in children.iter().filter(|c| c.state != "ready") {
            let why = c.last_error_reason.as_deref().unwrap_or("-");
            let _ = writeln!(out, "  {}: {} ({why})", c.name, c.state);
        }
    }
    for k in &s.sinks {
        let state = match (k.present, k.expires_in_s) {
            (true, _) => "holds a token",
            (false, None) => "no file",
            (false, Some(0)) => "holds an EXPIRED token",
            (false, Some(_)) => "holds an older token; the last write failed",
        };
        let _ = write!(
            out,
            "sink:         {} ({state}; {} writes",
            k.path, k.writes
        );
        if k.write_failures > 0 {
            let _ = write!(out, ", {} failed", k.write_failures);
        }
        if let Some(h) = &k.hook {
            let _ = write!(
                out,
                "; {h} hook: {} ok, {} failed",
                k.hook_runs_ok, k.hook_failures
            );
        }
        let _ = writeln!(out, ")");
        if let Some(e) = k.last_error.as_ref().or(k.last_hook_error.as_ref()) {
            let _ = writeln!(out, "              {e}");
        }
    }
    let _ = writeln!(out, "version:      {}", s.version);
    out
}

/// The warning for a device clock off from Salesforce's by more than the agent corrects
/// for silently: tokens' `exp` is Salesforce time, so a consumer comparing it with this
/// device's clock sees tokens as expired (clock ahead) or as living too long (behind).
/// `expires_in` is counted on corrected time and is right.
pub(crate) fn skew_warning(server_minus_local: i64) -> Option<String> {
    if server_minus_local.abs() <= crate::skew::DEFAULT_SKEW_THRESHOLD_SECS {
        return None;
    }
    let abs = server_minus_local.unsigned_abs();
    let (dir, seen) = if server_minus_local < 0 {
        ("ahead of", "already expired")
    } else {
        ("behind", "valid for longer than they are")
    };
    Some(format!(
        "this device's clock is {abs}s {dir} Salesforce's; token exp is Salesforce time, so by this clock tokens look {seen}: use expires_in (counted on corrected time), or fix the clock (NTP)"
    ))
}

/// `4m 05s`, `1h 02m`, `59s`: how long until expiry, readable at a glance.
pub(super) fn countdown(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m"),
    }
}

/// The error for a non-200 answer: for 403, who is refused and what to do about it.
pub(super) fn refused(socket: &Path, resp: &client::Response) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        error: String,
        reason: String,
    }
    let uid = rustix::process::geteuid().as_raw();
    let gid = rustix::process::getegid().as_raw();
    match serde_json::from_slice::<Body>(&resp.body) {
        Ok(b) if resp.status == StatusCode::FORBIDDEN => Error::Failed(format!(
            "access denied by the agent at {} (uid {uid}, gid {gid}): {}. To read tokens, {}; for signing or admin routes, ask for [api] signer_uids/admin_uids in the agent's config",
            socket.display(),
            b.reason,
            client::join_hint(socket),
        )),
        Ok(b) => Error::Failed(format!("{} ({}): {}", resp.status, b.error, b.reason)),
        Err(_) => Error::Failed(format!("the agent answered {}", resp.status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_socket_is_the_fallback() {
        let system = PathBuf::from(SYSTEM_SOCKET);
        let mine = PathBuf::from("/run/user/1000/asset-agent/agent.sock");
        let only = |p: &'static str| move |q: &Path| q == Path::new(p);
        type Present<'a> = &'a dyn Fn(&Path) -> bool;
        let rows: [(Option<PathBuf>, Present<'_>, &PathBuf); 5] = [
            // A user's own agent is running: it wins.
            (
                Some(mine.clone()),
                &only("/run/user/1000/asset-agent/agent.sock"),
                &mine,
            ),
            // Nothing at the user's path, the system agent is there.
            (Some(mine.clone()), &only(SYSTEM_SOCKET), &system),
            // Neither: report the configured path as not running.
            (Some(mine.clone()), &|_: &Path| false, &mine),
            // No usable config (a group member without XDG_RUNTIME_DIR).
            (None, &only(SYSTEM_SOCKET), &system),
            (None, &|_: &Path| false, &system),
        ];
        for (configured, present, want) in rows {
            assert_eq!(&pick(configured.clone(), present), want, "{configured:?}");
        }
    }

    #[test]
    fn countdowns() {
        assert_eq!(countdown(0), "0s");
        assert_eq!(countdown(59), "59s");
        assert_eq!(countdown(245), "4m 05s");
        assert_eq!(countdown(3720), "1h 02m");
    }
}

#[cfg(test)]
mod skew_tests {
    use super::skew_warning;

    #[test]
    fn a_large_skew_is_called_out_with_what_it_means_for_exp() {
        assert_eq!(skew_warning(0), None);
        assert_eq!(skew_warning(-10), None);
        let ahead = skew_warning(-3600).unwrap();
        assert!(
            ahead.contains("3600s ahead of") && ahead.contains("already expired"),
            "{ahead}"
        );
        let behind = skew_warning(120).unwrap();
        assert!(
            behind.contains("120s behind") && behind.contains("expires_in"),
            "{behind}"
        );
    }
}
