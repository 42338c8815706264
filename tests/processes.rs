//! Real agent processes (the binary) against the in-process emulator: SIGKILL right after
//! a refresh-token rotation, over and over, and `asset-agent enroll` as a person sees it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use asset_agent::token::cache::FILE_NAME;
use common::process::spawn_run;
use common::{BIN, Device, emulator, verify_with_jwks, wait_for_token};
use emulator::Grant;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::time::{Instant, sleep};
use wire::clock::Clock;

const KILLS: usize = 24;

/// The refresh token file as it is now; it must never be missing, empty or torn.
fn stored(path: &Path) -> String {
    let t = std::fs::read_to_string(path).unwrap();
    assert!(
        t.starts_with("5Aep861") && t.len() > 20,
        "refresh token file torn: {} bytes",
        t.len()
    );
    t
}

#[tokio::test]
async fn sigkill_right_after_rotation_never_bricks_the_device() {
    let emu = emulator(Clock::system(), |c| {
        c.rotate_refresh_tokens = true;
        c.asset_token_lifetime = Duration::from_secs(5);
    })
    .await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "");
    let rt = dev.path("refresh-token");
    let started = Instant::now();
    for i in 0..KILLS {
        // Without a cached token the agent starts with the refresh-token grant at once.
        let _ = std::fs::remove_file(dev.path(FILE_NAME));
        let before = stored(&rt);
        let exchanges = emu.stats().success(Grant::TokenExchange);
        let log = dev.path(&format!("agent-{i}.log"));
        let mut child = spawn_run(&config, "debug", &log);
        let deadline = Instant::now() + Duration::from_secs(15);
        while stored(&rt) == before {
            assert!(
                Instant::now() < deadline,
                "iteration {i}: no rotation; the restart could not obtain tokens:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            sleep(Duration::from_millis(1)).await;
        }
        // Vary the moment: at once, after the exchange it was rotated for, or a few ms on.
        match i % 3 {
            0 => {}
            1 => {
                while emu.stats().success(Grant::TokenExchange) == exchanges {
                    assert!(Instant::now() < deadline, "iteration {i}: no exchange");
                    sleep(Duration::from_millis(1)).await;
                }
            }
            _ => sleep(Duration::from_millis((i % 7) as u64 * 3)).await,
        }
        child.start_kill().unwrap(); // SIGKILL
        let status = child.wait().await.unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert_eq!(
            std::fs::metadata(&rt).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // One more start: it obtains tokens with whatever the last killed agent stored.
    let _ = std::fs::remove_file(dev.path(FILE_NAME));
    let mut child = spawn_run(&config, "debug", &dev.path("agent-final.log"));
    let body = wait_for_token(&dev.socket()).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // Every refresh-token grant of every restart succeeded: none was refused because a
    // rotated token had been lost.
    let stats = emu.stats();
    let grants = stats.grant(Grant::RefreshToken);
    assert_eq!(grants, KILLS as u64 + 1, "{stats:?}");
    assert_eq!(stats.success(Grant::RefreshToken), grants, "{stats:?}");
    eprintln!("{KILLS} SIGKILLs after rotation in {:?}", started.elapsed());
}

fn enroll_config(dev: &Device, emu: &emulator::Emulator) -> std::path::PathBuf {
    let p = dev.write_config(emu, "", "");
    let toml = std::fs::read_to_string(&p).unwrap().replacen(
        "[auth]\n",
        "[auth]\nmethod = \"device_flow\"\n",
        1,
    );
    std::fs::write(&p, toml).unwrap();
    std::fs::remove_file(dev.path("refresh-token")).unwrap();
    p
}

/// Runs `asset-agent enroll`, reads the user code off its stdout and lets `decide` act on
/// it; returns the exit code, stdout and stderr.
async fn enroll_cli(config: &Path, decide: impl FnOnce(&str)) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(["enroll", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    let code = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("enroll prints the code")
            .unwrap()
            .expect("stdout open");
        stdout.push_str(&line);
        stdout.push('\n');
        let t = line.trim();
        if t.len() == 9 && t.as_bytes()[4] == b'-' {
            break t.to_owned();
        }
    };
    decide(&code);
    while let Some(line) = lines.next_line().await.unwrap() {
        stdout.push_str(&line);
        stdout.push('\n');
    }
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("enroll ends")
        .unwrap();
    (
        out.status.code(),
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn enroll_command_shows_the_code_and_stores_the_token() {
    let emu = emulator(Clock::system(), |c| {
        c.device_poll_interval = Duration::from_secs(1);
    })
    .await;
    let dev = Device::new(&emu);
    let config = enroll_config(&dev, &emu);
    let (code, stdout, stderr) =
        enroll_cli(&config, |user_code| emu.approve_device(user_code).unwrap()).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("    {}/setup/connect", emu.base_url())),
        "{stdout}"
    );
    assert!(stdout.contains("Enrolled."), "{stdout}");
    let rt = dev.path("refresh-token");
    assert!(stdout.contains(&rt.display().to_string()), "{stdout}");
    assert_eq!(
        std::fs::metadata(&rt).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&rt).unwrap().starts_with("5Aep861"));
}

#[tokio::test]
async fn enroll_command_denied_exits_77() {
    let emu = emulator(Clock::system(), |c| {
        c.device_poll_interval = Duration::from_secs(1);
    })
    .await;
    let dev = Device::new(&emu);
    let config = enroll_config(&dev, &emu);
    let (code, stdout, stderr) =
        enroll_cli(&config, |user_code| emu.deny_device(user_code).unwrap()).await;
    assert_eq!(code, Some(77), "{stdout}\n{stderr}");
    assert!(stderr.contains("denied"), "{stderr}");
    assert!(
        stderr.contains("run 'asset-agent enroll' again"),
        "{stderr}"
    );
    assert!(!dev.path("refresh-token").exists());
}
