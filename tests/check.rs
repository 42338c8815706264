//! `asset-agent check --json`: one test per finding, each provoked for real against the
//! real binary: wrong file modes, an unwritable directory (as an unprivileged user), a
//! regular file where the socket goes, a host that does not resolve, a closed port, a
//! server that does not speak TLS, a skewed server clock, a wrong system clock (through
//! libfaketime), and real token exchanges against the emulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{BIN, Device, chmod, emulator, write_0600};
use emulator::Emulator;
use serde_json::Value;
use testkit::is_root;
use wire::clock::Clock;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const NOBODY: u32 = 65534;

struct Checked {
    code: Option<i32>,
    report: Value,
}

impl Checked {
    fn findings(&self, check: &str) -> Vec<&Value> {
        self.report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == check)
            .collect()
    }

    /// The one finding of `check` with `severity` whose message contains `text`.
    fn expect(&self, check: &str, severity: &str, text: &str) -> &Value {
        self.findings(check)
            .into_iter()
            .find(|f| f["severity"] == severity && f["message"].as_str().unwrap().contains(text))
            .unwrap_or_else(|| {
                panic!(
                    "no {severity} `{check}` finding containing {text:?} in:\n{:#}",
                    self.report
                )
            })
    }

    fn fix(&self, check: &str, severity: &str, text: &str) -> String {
        self.expect(check, severity, text)["fix"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Runs `asset-agent check --json --config <config> <extra>` with a clean environment.
async fn check(config: &Path, extra: &[&str], env: &[(&str, &str)], uid: Option<u32>) -> Checked {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["check", "--json", "--config"])
        .arg(config)
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // The exit code follows the report.
    let code = out.status.code();
    assert_eq!(code == Some(0), report["ok"] == true, "{report:#}");
    Checked { code, report }
}

/// A device (key, refresh token) configured for `emu`, and its config file.
fn device(emu: &Emulator) -> (Device, std::path::PathBuf) {
    let dev = Device::new(emu);
    let config = dev.write_config(emu, "", "");
    (dev, config)
}

fn edit(config: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(config, text.replace(from, to)).unwrap();
}

/// Runs as `nobody` when we are root (root writes anywhere, so an unwritable directory
/// needs an unprivileged user to be real); otherwise as ourselves, with the directory
/// made read-only.
async fn check_unprivileged(dev: &Device, config: &Path, read_only_dir: &Path) -> Checked {
    chmod(dev.dir.path(), 0o755);
    chmod(config, 0o644);
    if is_root() {
        check(config, &[], &[], Some(NOBODY)).await
    } else {
        chmod(read_only_dir, 0o555);
        let c = check(config, &[], &[], None).await;
        chmod(read_only_dir, 0o755);
        c
    }
}

#[tokio::test]
async fn a_healthy_device_passes_every_check() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    std::fs::create_dir(dev.path("run")).unwrap();
    let c = check(&config, &[], &[], None).await;
    assert_eq!(c.code, Some(0), "{:#}", c.report);
    assert_eq!(c.report["errors"], 0);
    assert_eq!(c.report["warnings"], 0, "{:#}", c.report);
    for id in [
        "config",
        "key",
        "credentials",
        "state_dir",
        "runtime_dir",
        "socket",
        "clock",
        "dns",
        "connect",
        "clock.skew",
    ] {
        assert_eq!(c.findings(id)[0]["severity"], "ok", "{id}: {:#}", c.report);
    }
    c.expect("tls", "info", "plain http on loopback");
    assert!(c.findings("exchange").is_empty(), "only with --exchange");
}

#[tokio::test]
async fn config_problems_are_one_finding_each_naming_key_and_file() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (_dev, config) = device(&emu);
    edit(
        &config,
        "verify = \"jwks\"",
        "verify = \"jwks\"\nrefresh_at = \"99%\"",
    );
    edit(&config, "name = \"Pump 7\"", "name = \"\"");
    let c = check(&config, &[], &[], None).await;
    assert_eq!(c.code, Some(1));
    let all = c.findings("config");
    assert_eq!(all.len(), 2, "{:#}", c.report);
    let f = c.expect("config", "error", "token.refresh_at");
    assert!(f["message"].as_str().unwrap().contains("agent.toml"), "{f}");
    c.expect("config", "error", "asset.name");
    assert!(
        c.fix("config", "error", "asset.name")
            .contains("asset-agent check")
    );
    assert!(
        c.findings("key").is_empty(),
        "nothing else without a config"
    );
}

#[tokio::test]
async fn a_misspelt_variable_is_a_warning() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (_dev, config) = device(&emu);
    let env = [(
        "ASSET_AGENT_SALESFORCE_INSTANCE_URL",
        "https://x.example.com",
    )];
    let c = check(&config, &[], &env, None).await;
    let fix = c.fix(
        "config.env",
        "warning",
        "ASSET_AGENT_SALESFORCE_INSTANCE_URL",
    );
    assert!(fix.contains("two underscores"), "{fix}");
}

#[tokio::test]
async fn a_missing_key_is_a_warning_not_an_error() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    std::fs::remove_file(dev.path("device-key.pem")).unwrap();
    let c = check(&config, &[], &[], None).await;
    assert!(
        c.fix("key", "warning", "no device key yet")
            .contains("generates it")
    );
    assert_eq!(c.code, Some(0));
}

#[tokio::test]
async fn a_group_readable_key_is_an_error_with_the_chmod() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    let key = dev.path("device-key.pem");
    chmod(&key, 0o640);
    let c = check(&config, &[], &[], None).await;
    assert_eq!(c.code, Some(1));
    let fix = c.fix("key", "error", "readable or writable by others");
    assert_eq!(fix, format!("chmod 600 {}", key.display()));
}

#[tokio::test]
async fn a_small_or_non_rsa_key_is_an_error() {
    let emu = emulator(Clock::system(), |_| {}).await;
    for (file, text) in [
        ("rsa1024-key.pem", "1024 bits"),
        ("ec-key.pem", "not an RSA key"),
    ] {
        let (dev, config) = device(&emu);
        let pem = std::fs::read_to_string(Path::new("tests/data").join(file)).unwrap();
        write_0600(&dev.path("device-key.pem"), pem.as_bytes());
        let c = check(&config, &[], &[], None).await;
        assert!(
            c.fix("key", "error", text).contains("key generate"),
            "{file}"
        );
    }
}

#[tokio::test]
async fn a_secret_owned_by_root_in_the_service_state_dir_is_an_error() {
    testkit::require!(
        testkit::ROOT,
        is_root(),
        "root (the check looks for files root left behind): run the tests as root"
    );
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, _) = device(&emu);
    // The state dir belongs to the service user; the key was left behind by root.
    std::os::unix::fs::chown(dev.dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    // The config itself stays root's (config files others could change are refused).
    let etc = tempfile::tempdir().unwrap();
    let config = etc.path().join("agent.toml");
    std::fs::copy(dev.path("agent.toml"), &config).unwrap();
    let c = check(&config, &[], &[], None).await;
    let fix = c.fix("key", "error", "which cannot read it");
    assert!(fix.starts_with("chown 65534:"), "{fix}");
    c.expect("credentials", "error", "which cannot read it");
}

#[tokio::test]
async fn refresh_token_missing_warns_and_open_refresh_token_errors() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    let rt = dev.path("refresh-token");
    chmod(&rt, 0o644);
    let c = check(&config, &[], &[], None).await;
    assert_eq!(
        c.fix("credentials", "error", "readable by others"),
        format!("chmod 600 {}", rt.display())
    );
    std::fs::remove_file(&rt).unwrap();
    let c = check(&config, &[], &[], None).await;
    assert!(
        c.fix("credentials", "warning", "not enrolled yet")
            .contains("asset-agent enroll")
    );
}

#[tokio::test]
async fn a_readable_client_secret_is_an_error() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    let secret = dev.path("client-secret");
    std::fs::write(&secret, "s3cr3t").unwrap();
    chmod(&secret, 0o644);
    let line = format!(
        "client_secret_file = \"{}\"\ntimeout = \"5s\"",
        secret.display()
    );
    edit(&config, "timeout = \"5s\"", &line);
    let c = check(&config, &[], &[], None).await;
    assert!(
        c.fix("credentials", "error", "client secret file")
            .contains("chmod 600")
    );
}

#[tokio::test]
async fn an_unwritable_state_dir_is_an_error() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    std::fs::create_dir(dev.path("run")).unwrap();
    chmod(&dev.path("run"), 0o777);
    let c = check_unprivileged(&dev, &config, dev.dir.path()).await;
    assert_eq!(c.code, Some(1));
    let fix = c.fix("state_dir", "error", "is not writable");
    assert!(fix.contains("chown asset-agent:"), "{fix}");
    assert_eq!(c.findings("runtime_dir")[0]["severity"], "ok");
}

#[tokio::test]
async fn an_unwritable_runtime_dir_is_an_error() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    let run = dev.path("run");
    std::fs::create_dir(&run).unwrap();
    chmod(&run, 0o755);
    if is_root() {
        // The state dir stays writable for nobody; only the socket's directory is not.
        chmod(dev.dir.path(), 0o777);
    }
    let c = check_unprivileged(&dev, &config, &run).await;
    c.expect("runtime_dir", "error", "is not writable");
    // A missing runtime dir under a writable parent is fine: the agent creates it.
    std::fs::remove_dir(&run).unwrap();
    let c = check(&config, &[], &[], None).await;
    c.expect("runtime_dir", "info", "does not exist yet");
}

#[tokio::test]
async fn the_socket_path_is_checked() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    let sock = dev.socket();
    std::fs::create_dir(sock.parent().unwrap()).unwrap();

    std::fs::write(&sock, "not a socket").unwrap();
    let c = check(&config, &[], &[], None).await;
    assert!(
        c.fix("socket", "error", "is not a socket")
            .starts_with("remove ")
    );
    std::fs::remove_file(&sock).unwrap();

    // Bound and closed: a stale socket file.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let c = check(&config, &[], &[], None).await;
    c.expect("socket", "warning", "stale socket");
    std::fs::remove_file(&sock).unwrap();

    let _live = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let c = check(&config, &[], &[], None).await;
    c.expect("socket", "info", "is serving");
}

#[tokio::test]
async fn a_user_outside_the_group_cannot_reach_the_socket() {
    testkit::require!(
        testkit::ROOT,
        is_root(),
        "root (to run the check as another user): run the tests as root"
    );
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    let run = dev.path("run");
    std::fs::create_dir(&run).unwrap();
    chmod(&run, 0o750); // as RuntimeDirectoryMode=0750: group only
    let c = check_unprivileged(&dev, &config, &run).await;
    let fix = c.fix("socket", "error", "cannot reach");
    assert!(fix.contains("usermod -aG asset-agent"), "{fix}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_dns_error() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (_dev, config) = device(&emu);
    // .invalid never resolves (RFC 6761).
    edit(&config, emu.base_url(), "https://asset-agent-test.invalid");
    let c = check(&config, &[], &[], None).await;
    assert!(
        c.fix("dns", "error", "asset-agent-test.invalid")
            .contains("resolv.conf")
    );
    assert!(c.findings("connect").is_empty(), "later steps skipped");
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (_dev, config) = device(&emu);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    edit(
        &config,
        emu.base_url(),
        &format!("https://127.0.0.1:{port}"),
    );
    let c = check(&config, &[], &[], None).await;
    c.expect("dns", "ok", "nothing to resolve");
    assert!(
        c.fix("connect", "error", "cannot open a TCP connection")
            .contains("firewall")
    );
    assert!(c.findings("tls").is_empty());
}

#[tokio::test]
async fn a_server_that_does_not_speak_tls_is_a_tls_error() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (_dev, config) = device(&emu);
    // The emulator speaks plain HTTP; asking it for HTTPS fails the handshake.
    let https = emu.base_url().replace("http://", "https://");
    edit(&config, emu.base_url(), &https);
    let c = check(&config, &[], &[], None).await;
    c.expect("connect", "ok", "opened");
    assert!(
        c.fix("tls", "error", "could not reach Salesforce")
            .contains("ca_file")
    );
}

#[tokio::test]
async fn server_clock_skew_is_graded() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (_dev, config) = device(&emu);
    emu.faults().skew_clock(60);
    let c = check(&config, &[], &[], None).await;
    c.expect("clock.skew", "warning", "behind the instance's");
    emu.faults().skew_clock(-3600);
    let c = check(&config, &[], &[], None).await;
    assert!(
        c.fix("clock.skew", "error", "ahead of the instance's")
            .contains("set-ntp")
    );
}

#[tokio::test]
async fn a_system_clock_in_2001_is_an_error() {
    testkit::require!(
        testkit::FAKETIME,
        Path::new(LIBFAKETIME).exists(),
        "libfaketime (apt-get install faketime)"
    );
    let emu = emulator(Clock::system(), |_| {}).await;
    let (_dev, config) = device(&emu);
    // Only this process's wall clock is wrong; its monotonic clock and the emulator's
    // (our) clock are real, so the Date header shows the skew too.
    let env = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", "@2001-01-01 00:00:00"),
        ("DONT_FAKE_MONOTONIC", "1"),
    ];
    let c = check(&config, &[], &env, None).await;
    assert!(c.fix("clock", "error", "2001-01-01").contains("set-ntp"));
    c.expect("clock.skew", "error", "behind the instance's");
}

#[tokio::test]
async fn exchange_runs_the_real_flow() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    let c = check(&config, &["--exchange"], &[], None).await;
    c.expect(
        "exchange",
        "ok",
        "exchanged and verified an asset token for 02i",
    );
    assert_eq!(emu.events().len(), 1, "one real exchange");
    assert!(
        !c.report.to_string().contains("eyJ"),
        "the token is never printed"
    );

    // A revoked refresh token: the grant is refused, and the fix says to enroll again.
    emu.faults().revoke_all_refresh_tokens();
    let c = check(&config, &["--exchange"], &[], None).await;
    assert!(
        c.fix("exchange", "error", "invalid_grant")
            .contains("enroll again")
    );

    // While an agent serves the socket, the dry run would race it for the refresh token.
    std::fs::create_dir(dev.path("run")).unwrap();
    let _agent = std::os::unix::net::UnixListener::bind(dev.socket()).unwrap();
    let c = check(&config, &["--exchange"], &[], None).await;
    c.expect("exchange", "warning", "an agent is running");
}

#[tokio::test]
async fn sinks_are_checked_for_path_mode_and_hook() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let (dev, config) = device(&emu);
    std::fs::create_dir(dev.path("run")).unwrap();
    let sinks = dev.path("sinks");
    std::fs::create_dir(&sinks).unwrap();
    let open = dev.path("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    std::fs::write(sinks.join("old.jwt"), "x").unwrap();
    chmod(&sinks.join("old.jwt"), 0o600);
    std::os::unix::fs::symlink("/etc/passwd", sinks.join("link")).unwrap();
    let pid_file = dev.path("app.pid");
    std::fs::write(&pid_file, "1234").unwrap();
    // Writable by its group: the group would choose what the agent signals.
    chmod(&pid_file, 0o664);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[sink]]\npath = \"{s}/good.jwt\"\ncommand = [\"/bin/true\"]\n\n[[sink]]\npath = \"{s}/link\"\n\n[[sink]]\npath = \"{o}/token\"\n\n[[sink]]\npath = \"{s}/old.jwt\"\npid_file = \"{p}\"\n\n[[sink]]\npath = \"{s}/x\"\ncommand = [\"/nonexistent/reload\"]\n",
        s = sinks.display(),
        o = open.display(),
        p = pid_file.display()
    ));
    std::fs::write(&config, text).unwrap();
    let c = check(&config, &[], &[], None).await;
    assert_eq!(c.code, Some(1), "{:#}", c.report);
    c.expect("sink", "ok", "good.jwt");
    c.expect("sink", "error", "is a symbolic link");
    assert!(
        c.fix("sink", "error", "anyone can write")
            .contains("chmod o-w")
    );
    c.expect("sink", "warning", "is mode 0600");
    assert!(c.fix("sink", "error", "PID file").contains("chmod go-w"));
    c.expect("sink", "error", "/nonexistent/reload is not an executable");
}
