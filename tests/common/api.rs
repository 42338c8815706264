//! Helpers for the socket API tests: agents with extra `[api]` settings, clients running
//! under other uids (`setpriv`), and raw HTTP over the socket.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use asset_agent::config::{Config, LoadOptions};
use emulator::Emulator;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use crate::common::{BIN, Device};

/// The unprivileged uid/gid the tests use as "someone else".
pub const NOBODY: u32 = 65534;

/// What tests that switch uids need (CI runs as root and sets `ASSET_AGENT_REQUIRE_ROOT`):
/// the `missing` text of their `testkit::require!` guard.
pub const NEEDS_ROOT: &str = "root, to run clients under other uids: run the tests as root";

/// Whether this test may switch uids; if not, it says so and goes on without that part
/// (or fails, where CI sets `ASSET_AGENT_REQUIRE_ROOT`).
pub fn root() -> bool {
    testkit::available(testkit::ROOT, testkit::is_root(), NEEDS_ROOT).is_some()
}

/// The device's config with `api_extra` lines appended to its `[api]` table (the last one).
pub fn config_with_api(dev: &Device, emu: &Emulator, api_extra: &str) -> Config {
    let path = dev.write_config(emu, "", "");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str(api_extra);
    toml.push('\n');
    std::fs::write(&path, toml).unwrap();
    Config::load(&LoadOptions::new(Some(path), HashMap::new())).unwrap()
}

/// Lets every uid reach the socket at the filesystem level (dir 0755, socket 0666), so
/// that only the agent's SO_PEERCRED policy decides.
pub fn open_to_everyone(dev: &Device) {
    let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(dev.dir.path(), 0o755).unwrap();
    mode(&dev.path("run"), 0o755).unwrap();
    mode(&dev.socket(), 0o666).unwrap();
}

/// `setpriv` running `program` as `uid`/`gid` with exactly the supplementary `groups`.
pub fn as_user(uid: u32, gid: u32, groups: &[u32], program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", list.join(",")));
    }
    c.arg("--").arg(program);
    c
}

/// What curl got.
#[derive(Debug)]
pub struct Curl {
    pub status: u16,
    pub body: String,
}

/// `curl` as `uid`/`gid`/`groups`: `method path` with an optional JSON body.
pub fn curl_as(
    uid: u32,
    gid: u32,
    groups: &[u32],
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Curl {
    let mut c = as_user(uid, gid, groups, "curl");
    c.args(["-s", "--max-time", "10", "-X", method, "--unix-socket"])
        .arg(socket)
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    c.arg(format!("http://localhost{path}"));
    let out = c.output().expect("setpriv and curl are installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    Curl {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}

/// Writes `request` raw and shuts down the write side (as `nc -N` does), then reads until
/// the server closes or `wait` passes.
pub async fn raw(socket: &Path, request: &[u8], wait: Duration) -> String {
    let mut s = UnixStream::connect(socket).await.unwrap();
    // The server may answer and close before reading everything (e.g. 431).
    let _ = s.write_all(request).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A copy of the binary that any uid can execute (the build tree may not be reachable).
pub fn public_binary(dir: &Path) -> PathBuf {
    // tempfile's directories follow the umask, which may be 077.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dst = dir.join("asset-agent");
    std::fs::copy(BIN, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// The JWT-looking run of a token body, to assert it is absent.
pub fn has_jwt(text: &str) -> bool {
    text.contains("eyJ")
}
