//! The real binary: exit codes, error messages, and a trace-level log
//! that must not contain a single secret.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::process::output;
use common::{BIN, Device, emulator, wait_for_token};
use wire::clock::Clock;

/// Runs `asset-agent run --config <file>` with a clean environment.
fn run_with(config: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap()
}

const GOOD: &str = r#"
[salesforce]
instance_url = "https://acme.my.salesforce.com"
client_id = "3MVG9abc"
[asset]
device_id = "d1"
name = "Pump 7"
serial_number = "00123"
"#;

#[test]
fn bad_config_exits_78_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown key",
            GOOD.replace("[asset]", "[asset]\nserial = \"x\""),
            "serial",
        ),
        (
            "wrong type",
            format!("{GOOD}\n[key]\nbits = \"big\"\n"),
            "key.bits",
        ),
        (
            "missing instance_url",
            GOOD.replace("instance_url = \"https://acme.my.salesforce.com\"", ""),
            "salesforce.instance_url",
        ),
        (
            "http to a remote host",
            GOOD.replace("https://acme", "http://acme"),
            "salesforce.instance_url",
        ),
    ];
    for (what, toml, key) in cases {
        let p = dir.path().join("agent.toml");
        std::fs::write(&p, toml).unwrap();
        let out = run_with(&p);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{what}: {stderr}");
        assert!(
            stderr.contains(key),
            "{what}: message must name {key}: {stderr}"
        );
        assert!(
            stderr.contains("agent.toml"),
            "{what}: message must name the file: {stderr}"
        );
    }
}

#[test]
fn group_readable_key_refuses_to_start_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device-key.pem");
    std::fs::write(&key, common::DEVICE_KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let toml = format!(
        "{GOOD}\n[key]\npath = \"{}\"\n[state]\ndir = \"{d}\"\n[api]\nsocket = \"{d}/agent.sock\"\n",
        key.display(),
        d = dir.path().display()
    );
    let p = dir.path().join("agent.toml");
    std::fs::write(&p, toml).unwrap();
    let out = run_with(&p);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!("chmod 600 {}", key.display())),
        "{stderr}"
    );
}

/// Runs the binary with `args` and no ASSET_AGENT_* variables: (exit code, stdout, stderr).
fn cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    output(
        Command::new(BIN)
            .args(args)
            .env_remove("ASSET_AGENT_CONFIG")
            .env_remove("ASSET_AGENT_SOCKET")
            .envs(env.iter().copied()),
    )
}

/// Each kind of mistake: exit 2, one line naming the argument on stderr, then where to
/// find help; nothing on stdout.
#[test]
fn bad_command_line_exits_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "'frobnicate'"),
        (&["key", "frob"], "'frob'"),
        (&["token", "--bogus"], "'--bogus'"),
        (&["token", "--socket"], "'--socket"),
        (&["token", "--raw", "--raw"], "'--raw'"),
        (
            &["token", "--raw", "--json"],
            "'--raw' cannot be used with '--json'",
        ),
        (
            &["watch", "--raw", "--json"],
            "'--raw' cannot be used with '--json'",
        ),
        (
            &["key", "show", "--jwk", "--thumbprint"],
            "'--jwk' cannot be used with '--thumbprint'",
        ),
        (&["token", "--min-ttl", "soon"], "'soon' for '--min-ttl"),
        (&["exec", "--wait", "3x", "--", "true"], "'3x' for '--wait"),
        (
            &["exec", "--on-rotation", "maybe", "--", "true"],
            "'maybe' for '--on-rotation",
        ),
        (&["exec", "true"], "'true'"),
        (&["exec", "--"], "after '--'"),
        (&["status", "a", "b"], "'b'"),
    ];
    for (args, names) in cases {
        let (code, stdout, stderr) = cli(args, &[]);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        let mut lines = stderr.lines();
        let first = lines.next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(names),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("--help'."), "{args:?}: {stderr}");
    }
    // An empty variable is a mistake too, named.
    let (code, _, stderr) = cli(&["status"], &[("ASSET_AGENT_SOCKET", "")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("ASSET_AGENT_SOCKET"), "{stderr}");
    // No subcommand: the help, on stderr.
    let (code, stdout, stderr) = cli(&[], &[]);
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("Usage: asset-agent [OPTIONS] <COMMAND>"),
        "{stderr}"
    );
}

#[test]
fn help_and_version_go_to_stdout_and_exit_0() {
    for (args, want) in [
        (&["--help"][..], "Usage: asset-agent [OPTIONS] <COMMAND>"),
        (&["-h"], "Usage: asset-agent [OPTIONS] <COMMAND>"),
        (&["help"], "Usage: asset-agent [OPTIONS] <COMMAND>"),
        (
            &["token", "--help"],
            "Usage: asset-agent token [OPTIONS] [NAME]",
        ),
        (
            &["help", "exec"],
            "Usage: asset-agent exec [OPTIONS] -- <CMD>...",
        ),
        (
            &["key", "show", "-h"],
            "--thumbprint     Only the RFC 7638 thumbprint",
        ),
        (
            &["--version"],
            concat!("asset-agent ", env!("CARGO_PKG_VERSION"), "\n"),
        ),
        (
            &["status", "-V"],
            concat!("asset-agent ", env!("CARGO_PKG_VERSION"), "\n"),
        ),
    ] {
        let (code, stdout, stderr) = cli(args, &[]);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert!(stdout.contains(want), "{args:?}: {stdout}");
    }
}

/// ASSET_AGENT_SOCKET and ASSET_AGENT_CONFIG reach the commands; the options win over them.
#[test]
fn socket_and_config_come_from_the_environment_unless_given() {
    let dir = tempfile::tempdir().unwrap();
    let env_sock = dir.path().join("env.sock");
    let flag_sock = dir.path().join("flag.sock");
    let env_sock = env_sock.to_str().unwrap();
    let (code, _, stderr) = cli(&["status"], &[("ASSET_AGENT_SOCKET", env_sock)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(env_sock), "{stderr}");
    let (code, _, stderr) = cli(
        &["status", "--socket", flag_sock.to_str().unwrap()],
        &[("ASSET_AGENT_SOCKET", env_sock)],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(flag_sock.to_str().unwrap()), "{stderr}");
    assert!(!stderr.contains(env_sock), "{stderr}");

    let env_config = dir.path().join("from-env.toml");
    let env_config = env_config.to_str().unwrap();
    let (code, stdout, _) = cli(&["check"], &[("ASSET_AGENT_CONFIG", env_config)]);
    assert_eq!(code, Some(1));
    assert!(stdout.contains(env_config), "{stdout}");
    let (code, stdout, _) = cli(
        &["check", "--config", "/nonexistent/from-flag.toml"],
        &[("ASSET_AGENT_CONFIG", env_config)],
    );
    assert_eq!(code, Some(1));
    assert!(stdout.contains("from-flag.toml"), "{stdout}");
    assert!(!stdout.contains(env_config), "{stdout}");
}

/// A full run at trace level, through token fetches and a rotation, leaks nothing.
#[tokio::test]
async fn trace_log_of_a_full_run_contains_no_secret() {
    let emu = emulator(Clock::system(), |c| {
        c.rotate_refresh_tokens = true;
        c.asset_token_lifetime = Duration::from_secs(5);
    })
    .await;
    let dev = Device::new(&emu);
    let first_refresh = std::fs::read_to_string(dev.path("refresh-token")).unwrap();
    let config = dev.write_config(&emu, "", "");
    let child = tokio::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("ASSET_AGENT_LOG", "trace")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let first = wait_for_token(&dev.socket()).await;
    // Let at least one refresh happen (5 s tokens refresh at ~4 s).
    let mut second = first.clone();
    for _ in 0..100 {
        second = wait_for_token(&dev.socket()).await;
        if second["token"] != first["token"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(second["token"], first["token"], "a refresh happened");
    let pid = child.id().unwrap();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("asset token issued and verified"), "{log}");
    assert!(log.contains("TRACE"), "trace level really on");

    let rotated = std::fs::read_to_string(dev.path("refresh-token")).unwrap();
    assert_ne!(rotated, first_refresh, "rotation happened");
    let mut secrets: Vec<String> = vec![first_refresh, rotated];
    for t in [&first, &second] {
        let jwt = t["token"].as_str().unwrap();
        secrets.push(jwt.to_owned());
        // Each part on its own, too: the signature and the payload.
        secrets.extend(jwt.split('.').skip(1).map(str::to_owned));
    }
    // Key material: every base64 line of the private key.
    secrets.extend(
        common::DEVICE_KEY
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 20)
            .map(str::to_owned),
    );
    for issued in emu.issued_access_tokens() {
        secrets.push(issued.expose().to_owned());
    }
    assert!(secrets.len() > 10);
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "the log leaks a secret ({} chars)",
            s.len()
        );
    }
    assert!(!log.contains("PRIVATE KEY"));
}
