//! The real binary's file work never holds its socket or its refresh schedule: a frozen
//! filesystem under a sink or the state directory, a FIFO where a hook's PID file was. And
//! what a rotation hook leaves behind: its background processes, its output in the log.
//!
//! The frozen-filesystem tests need root (a loop-mounted ext4 image and `fsfreeze`); without
//! it they pass only when `ASSET_AGENT_REQUIRE_ROOT` is unset, as `.ci/run` sets it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // real processes on the real clock: measured, not scheduled

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, alive, emulator, status, write_0600};
use emulator::{Emulator, Grant};
use wire::clock::Clock;

/// The agent binary, killed and reaped however the test ends.
struct Agent {
    child: std::process::Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Starts `asset-agent run` on `config`, its stderr in `dir/agent.log`, and waits for
    /// its first token.
    async fn start(dir: &Path, config: &Path) -> Self {
        let log = dir.join("agent.log");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("ASSET_AGENT_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let agent = Self {
            child,
            socket: dir.join("run/agent.sock"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = agent.probe("/v1/token").await {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "no token within 30 s; the log:\n{}",
                agent.logged()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GETs `path` with a 2 s limit: the status and how long it took, `None` when no
    /// answer came.
    async fn probe(&self, path: &str) -> Option<(u16, Duration)> {
        let started = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(2),
            asset_agent::client::get_json(&self.socket, path),
        )
        .await;
        match got {
            Ok(Ok(r)) => Some((r.status.as_u16(), started.elapsed())),
            _ => None,
        }
    }

    async fn status(&self) -> serde_json::Value {
        status(&self.socket).await
    }

    fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (at most 10 s) for the exit.
    fn stop(mut self) -> String {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the agent did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.logged()
    }
}

/// A device directory (0755, so sinks below it may be read by others) with the key and a
/// refresh token, and its agent.toml with `state` as the state directory (the refresh
/// token goes there too) and `extra` appended.
fn device(emu: &Emulator, dir: &Path, state: &Path, extra: &str) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    write_0600(&dir.join("device-key.pem"), common::DEVICE_KEY.as_bytes());
    let rt = emu.mint_refresh_token().unwrap();
    write_0600(&state.join("refresh-token"), rt.expose().as_bytes());
    let toml = format!(
        r#"[salesforce]
instance_url = "{url}"
client_id = "{client_id}"
timeout = "5s"

[auth]
refresh_token_file = "{state}/refresh-token"

[asset]
device_id = "device-0001"
name = "Pump 7"
serial_number = "00123"
account_id = "0011i000006kiTc"

[key]
path = "{dir}/device-key.pem"

[state]
dir = "{state}"

[token]
verify = "jwks"
issuer = "{url}"

[api]
socket = "{dir}/run/agent.sock"
{extra}
"#,
        url = emu.base_url(),
        client_id = emulator::DEFAULT_CLIENT_ID,
        dir = dir.display(),
        state = state.display(),
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, toml).unwrap();
    p
}

/// An ext4 image loop-mounted on a directory; thawed and unmounted however the test ends.
struct LoopFs {
    mount: PathBuf,
    frozen: bool,
}

impl LoopFs {
    /// `None` when this is not root (and root is not required).
    fn new(dir: &Path) -> Option<Self> {
        testkit::available(
            testkit::ROOT,
            testkit::is_root(),
            "root (a loop mount and fsfreeze): run the tests as root",
        )?;
        let image = dir.join("fs.img");
        let mount = dir.join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        };
        run(Command::new("truncate").arg("-s").arg("16M").arg(&image));
        run(Command::new("mkfs.ext4").arg("-q").arg(&image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount));
        std::fs::set_permissions(&mount, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(Self {
            mount,
            frozen: false,
        })
    }

    fn freeze(&mut self) {
        let ok = Command::new("fsfreeze")
            .arg("-f")
            .arg(&self.mount)
            .status()
            .unwrap();
        assert!(ok.success(), "fsfreeze -f failed");
        self.frozen = true;
    }

    fn thaw(&mut self) {
        if self.frozen {
            let _ = Command::new("fsfreeze").arg("-u").arg(&self.mount).status();
            self.frozen = false;
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.thaw();
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

/// Polls `/v1/health/live` and `/v1/token` every 100 ms for `period`; returns the number
/// of probes that got no 200 within 2 s and the slowest answer.
async fn poll(agent: &Agent, period: Duration) -> (usize, usize, Duration) {
    let end = Instant::now() + period;
    let (mut probes, mut failed, mut slowest) = (0, 0, Duration::ZERO);
    while Instant::now() < end {
        for path in ["/v1/health/live", "/v1/token"] {
            probes += 1;
            match agent.probe(path).await {
                Some((200, took)) => slowest = slowest.max(took),
                _ => failed += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (probes, failed, slowest)
}

#[tokio::test]
async fn a_frozen_sink_filesystem_holds_neither_the_socket_nor_the_refresh_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut fs) = LoopFs::new(tmp.path()) else {
        return;
    };
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(6);
    })
    .await;
    let sink = fs.mount.join("token.jwt");
    let config = device(
        &emu,
        tmp.path(),
        tmp.path(),
        &format!("\n[[sink]]\npath = \"{}\"\n", sink.display()),
    );
    let agent = Agent::start(tmp.path(), &config).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sink.exists() {
        assert!(Instant::now() < deadline, "the sink was never written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fs.freeze();
    let before = emu.grant_count(Grant::TokenExchange);
    // 6 s tokens are refreshed every 3-4.8 s: at least two rotations meet the frozen sink.
    let (probes, failed, slowest) = poll(&agent, Duration::from_secs(12)).await;
    let exchanges = emu.grant_count(Grant::TokenExchange) - before;
    fs.thaw();
    assert_eq!(
        failed,
        0,
        "{failed} of {probes} probes failed; the log:\n{}",
        agent.logged()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer {slowest:?}"
    );
    assert!(exchanges >= 2, "{exchanges} refreshes during the freeze");
    // Once thawed, the sink catches up with the current token.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = asset_agent::client::get_json(&agent.socket, "/v1/token")
            .await
            .unwrap();
        let current: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if std::fs::read_to_string(&sink).ok().as_deref() == current["token"].as_str() {
            break;
        }
        assert!(Instant::now() < deadline, "the sink never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = agent.status().await;
    assert_eq!(s["sinks"][0]["present"], true, "{s}");
    agent.stop();
    assert!(!sink.exists(), "the sink file outlived the agent");
}

#[tokio::test]
async fn a_frozen_state_directory_holds_neither_the_socket_nor_the_refresh_schedule_and_loses_no_refresh_token()
 {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mut fs) = LoopFs::new(tmp.path()) else {
        return;
    };
    // Short sessions with rotation: refreshes during the freeze need the refresh-token
    // grant, each of which rotates the token the agent must keep.
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(6);
        c.session_lifetime = Duration::from_secs(3);
        c.rotate_refresh_tokens = true;
    })
    .await;
    let state = fs.mount.clone();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = device(&emu, tmp.path(), &state, "");
    let agent = Agent::start(tmp.path(), &config).await;
    fs.freeze();
    let before = emu.grant_count(Grant::RefreshToken);
    let (probes, failed, slowest) = poll(&agent, Duration::from_secs(12)).await;
    let rotations = emu.grant_count(Grant::RefreshToken) - before;
    fs.thaw();
    assert_eq!(
        failed,
        0,
        "{failed} of {probes} probes failed; the log:\n{}",
        agent.logged()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "slowest answer {slowest:?}"
    );
    assert!(
        rotations >= 2,
        "{rotations} refresh-token grants during the freeze"
    );
    // After the thaw the newest refresh token reaches the file: a new agent with no
    // cache (so it must use the file's refresh token) gets a token.
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.stop();
    std::fs::remove_file(state.join(asset_agent::token::cache::FILE_NAME)).unwrap();
    assert!(
        !tmp.path()
            .join("run")
            .join(asset_agent::agent::UNSAVED_REFRESH_TOKEN)
            .exists(),
        "the rotated refresh token never reached the file"
    );
    let again = Agent::start(tmp.path(), &config).await;
    again.stop();
}

/// A FIFO where a hook's PID file was: the hook fails with a clear error and the agent
/// answers throughout (a blocking open would wait for a writer for ever).
#[tokio::test]
async fn a_fifo_at_the_pid_file_holds_nothing_up() {
    let tmp = tempfile::tempdir().unwrap();
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(4);
    })
    .await;
    let sinks = tmp.path().join("sinks");
    std::fs::create_dir(&sinks).unwrap();
    std::fs::set_permissions(&sinks, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pid_file = tmp.path().join("app.pid");
    assert!(
        Command::new("mkfifo")
            .arg(&pid_file)
            .status()
            .unwrap()
            .success()
    );
    let config = device(
        &emu,
        tmp.path(),
        tmp.path(),
        &format!(
            "\n[[sink]]\npath = \"{}\"\npid_file = \"{}\"\nsignal = \"HUP\"\n",
            sinks.join("token").display(),
            pid_file.display()
        ),
    );
    let agent = Agent::start(tmp.path(), &config).await;
    // 4 s tokens: two or more rotations, each running the hook.
    let (probes, failed, _) = poll(&agent, Duration::from_secs(6)).await;
    assert_eq!(
        failed,
        0,
        "{failed} of {probes} probes failed; the log:\n{}",
        agent.logged()
    );
    let s = agent.status().await;
    assert!(s["sinks"][0]["hook_failures"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        s["sinks"][0]["last_hook_error"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{s}"
    );
    agent.stop();
}

/// Whether `pid` is alive (a zombie counts as gone).
/// Starts an agent whose sink's hook is `script` (run by /bin/sh) and waits until the
/// hook has written `marker`.
async fn with_hook(tmp: &Path, emu: &Emulator, script: &str, marker: &Path) -> Agent {
    let sinks = tmp.join("sinks");
    std::fs::create_dir(&sinks).unwrap();
    std::fs::set_permissions(&sinks, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = device(
        emu,
        tmp,
        tmp,
        &format!(
            "\n[[sink]]\npath = \"{}\"\ncommand = [\"/bin/sh\", \"-c\", {}]\n",
            sinks.join("token").display(),
            serde_json::to_string(script).unwrap()
        ),
    );
    let agent = Agent::start(tmp, &config).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the hook never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent
}

/// A hook that starts a daemon: the daemon goes when the hook exits, not one left per
/// rotation to outlive the agent.
#[tokio::test]
async fn a_hooks_background_process_goes_when_the_hook_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let emu = emulator(Clock::system(), |_| {}).await;
    let pids = tmp.path().join("daemon.pid");
    let script = format!(
        "sleep 100000 >/dev/null 2>&1 & echo $! > {p}.tmp; mv {p}.tmp {p}",
        p = pids.display()
    );
    let agent = with_hook(tmp.path(), &emu, &script, &pids).await;
    let daemon: i32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(daemon) {
        if Instant::now() >= deadline {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(daemon).unwrap(),
                rustix::process::Signal::KILL,
            );
            panic!("the hook's background process {daemon} outlived it");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.stop();
}

/// A hook that prints the token it was handed: the log shows its length, not the token.
#[tokio::test]
async fn a_hook_that_prints_the_token_does_not_put_it_in_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let emu = emulator(Clock::system(), |_| {}).await;
    let done = tmp.path().join("done");
    let script = format!(
        "echo \"token: $(cat \"$ASSET_AGENT_SINK\")\"; touch {}",
        done.display()
    );
    let agent = with_hook(tmp.path(), &emu, &script, &done).await;
    let r = asset_agent::client::get_json(&agent.socket, "/v1/token")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.logged().contains("token: ") {
        assert!(
            Instant::now() < deadline,
            "the hook's output was not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = agent.stop();
    let signature = token.rsplit('.').next().unwrap();
    assert!(!log.contains(signature), "the token is in the log:\n{log}");
    assert!(log.contains("token: [redacted: "), "{log}");
}
