//! Log lines as the real binary writes them: journald's `<N>` priority prefixes (and no
//! timestamps) only when stderr is the stream `JOURNAL_STREAM` names; plain lines without
//! colour codes anywhere else; JSON on request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // real processes on the real clock: measured, not scheduled

mod common;

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::BIN;

/// Runs the agent for a moment with stderr going to a file, then stops it with SIGTERM,
/// and returns what it logged. `journal`: set `JOURNAL_STREAM` to that file's identity.
/// The agent finds no refresh token, so it logs a warning ("not enrolled yet")
/// right after start; that line is what we wait for.
fn run_logging(dir: &Path, format: &str, journal: bool, extra_env: &[(&str, &str)]) -> String {
    run_logging_with(dir, format, "info", journal, extra_env, |_| {})
}

/// [`run_logging`] at `log.level = level`, calling `during` with the config's path once
/// the warning is logged, before the agent is stopped.
fn run_logging_with(
    dir: &Path,
    format: &str,
    level: &str,
    journal: bool,
    extra_env: &[(&str, &str)],
    during: impl FnOnce(&Path),
) -> String {
    let config = write_config(dir, format, level);
    let log_path = dir.join(format!("stderr-{format}-{journal}.log"));
    let log = File::create(&log_path).unwrap();
    let meta = log.metadata().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(log);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    // Wait for the warning, then stop it.
    for _ in 0..200 {
        if std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("not enrolled yet")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    during(&config);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    std::fs::read_to_string(&log_path).unwrap()
}

/// A key and a config that starts the agent unenrolled, serving on `dir/agent.sock`.
fn write_config(dir: &Path, format: &str, level: &str) -> std::path::PathBuf {
    let key = dir.join("device-key.pem");
    common::write_0600(&key, common::DEVICE_KEY.as_bytes());
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[salesforce]
instance_url = "https://127.0.0.1:1"
client_id = "3MVG9abc"
timeout = "1s"
[asset]
device_id = "d1"
name = "Pump 7"
serial_number = "00123"
[state]
dir = "{d}"
[api]
socket = "{d}/agent.sock"
[log]
level = "{level}"
format = "{format}"
"#,
            d = dir.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn journal_stream_gets_priority_prefixes_and_no_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let log = run_logging(dir.path(), "text", true, &[]);
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line.starts_with("<6>") || line.starts_with("<4>") || line.starts_with("<3>"),
            "every line has a syslog priority: {line:?}"
        );
        assert!(!line.contains('\x1b'), "no colour codes: {line:?}");
        assert!(
            !line.contains(" INFO ") && !line[3..].starts_with("20"),
            "no level word, no timestamp: {line:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>asset-agent starting")),
        "{log}"
    );
    // No refresh token yet: a warning, priority 4.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("not enrolled yet")),
        "{log}"
    );
}

#[test]
fn a_file_gets_plain_lines_without_colours() {
    let dir = tempfile::tempdir().unwrap();
    let log = run_logging(dir.path(), "text", false, &[]);
    assert!(log.contains("asset-agent starting"), "{log}");
    assert!(!log.contains('\x1b'), "no colour codes in a file: {log}");
    assert!(
        !log.starts_with('<'),
        "no priority prefix off the journal: {log}"
    );
    assert!(
        log.lines().next().unwrap().starts_with("20"),
        "timestamped: {log}"
    );
}

#[test]
fn a_stale_journal_stream_is_not_trusted() {
    // JOURNAL_STREAM set but naming another stream (stderr was redirected since).
    let dir = tempfile::tempdir().unwrap();
    let log = run_logging(dir.path(), "text", false, &[("JOURNAL_STREAM", "1:2")]);
    assert!(!log.starts_with('<'), "{log}");
}

#[test]
fn json_lines_under_the_journal_keep_the_prefix_and_pure_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = run_logging(dir.path(), "json", true, &[]);
    for line in log.lines() {
        let (prio, json) = line.split_at(3);
        assert!(prio.starts_with('<') && prio.ends_with('>'), "{line}");
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert!(v["level"].is_string() && v["fields"].is_object(), "{v}");
    }
}

#[test]
fn asset_agent_log_overrides_the_config_level() {
    let dir = tempfile::tempdir().unwrap();
    let log = run_logging(dir.path(), "text", false, &[("ASSET_AGENT_LOG", "warn")]);
    assert!(
        !log.contains("asset-agent starting"),
        "info is filtered: {log}"
    );
    assert!(log.contains("WARN"), "warnings pass: {log}");
}

#[test]
fn a_closed_stderr_does_not_stop_the_agent() {
    // stderr is a pipe whose reader is gone: every log line fails with EPIPE. The
    // library's default reports that with `eprintln!`, which panics writing to the same
    // stderr, and the release build aborts on a panic.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "text", "info");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ASSET_AGENT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    let socket = dir.path().join("agent.sock");
    for _ in 0..200 {
        if socket.exists() || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent died logging to a closed stderr"
    );
    assert!(socket.exists(), "the agent started serving");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// Starts the agent at `log.level = "warn"`, changes it to `info` and reloads; returns the
/// log.
fn reload_to_info(extra_env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    run_logging_with(dir.path(), "text", "warn", false, extra_env, |config| {
        let toml = std::fs::read_to_string(config).unwrap();
        std::fs::write(config, toml.replace("\"warn\"", "\"info\"")).unwrap();
        let out = Command::new(BIN)
            .args(["reload", "--socket"])
            .arg(&socket)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    })
}

#[test]
fn a_reload_changes_the_level_at_once() {
    let log = reload_to_info(&[]);
    assert!(log.contains("not enrolled yet"), "{log}");
    assert!(!log.contains("asset-agent starting"), "info is off: {log}");
    assert!(log.contains("shutting down"), "then on: {log}");
}

#[test]
fn the_environment_still_wins_after_a_reload() {
    let log = reload_to_info(&[("ASSET_AGENT_LOG", "warn")]);
    assert!(log.contains("not enrolled yet"), "{log}");
    assert!(!log.contains("shutting down"), "info stays off: {log}");
}
