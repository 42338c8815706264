//! systemd socket activation with the real binary: `systemd-socket-activate` binds a
//! socket, passes it as fd 3 with `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, and the
//! agent serves tokens on it without binding `api.socket` itself.

// Helpers outside #[test] functions: unwrap and panic are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{BIN, Device, emulator, verify_with_jwks, wait_for_token};
use wire::clock::Clock;

/// `O_CLOEXEC` as `/proc/<pid>/fdinfo` shows it (octal flags).
const O_CLOEXEC: u32 = 0o2_000_000;

fn socket_activate_installed() -> bool {
    std::process::Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn a_socket_passed_through_listen_fds_is_served() {
    assert!(
        socket_activate_installed(),
        "this test needs systemd-socket-activate (Debian package `systemd`)"
    );
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "");
    let activated = dev.path("activated.sock");

    let child = tokio::process::Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(&activated)
        .arg("--fdname=api")
        .arg(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("ASSET_AGENT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // systemd-socket-activate binds first and execs the agent on the first connection,
    // which waits in the backlog meanwhile: nothing is lost.
    for _ in 0..100 {
        if activated.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = wait_for_token(&activated).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    assert!(!dev.socket().exists(), "api.socket was not bound");

    // The inherited descriptor no longer leaks into children: CLOEXEC is set.
    let pid = child.id().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("asset-agent"), "exec'd in place: {exe:?}");
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & O_CLOEXEC, 0, "fd 3 flags {flags:o}");

    // SIGTERM: a clean stop that leaves systemd's socket file alone.
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("stopped")
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("socket activation"), "{log}");
    assert!(activated.exists(), "the socket file belongs to systemd");
}

/// `LISTEN_PID` naming another process means the variables are not ours: the agent binds
/// its configured socket as usual.
#[tokio::test]
async fn listen_fds_for_another_pid_are_ignored() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "");
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("LISTEN_PID", "1")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "api")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_token(&dev.socket()).await;
    child.kill().await.unwrap();
}
