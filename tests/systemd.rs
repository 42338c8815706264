//! systemd integration, against a fake service manager: a `UnixDatagram` in a temp dir
//! handed to the agent as `NOTIFY_SOCKET`.
//!
//! - the real binary: `READY=1` only once the first asset token is held (within
//!   `token.ready_timeout`), `STATUS=` while failing or waiting for enrollment, watchdog
//!   pings, reloads by SIGHUP and by `asset-agent reload` (a good one applied, a bad one
//!   refused, with a non-zero exit, while tokens keep flowing; `STATUS=` back to the state
//!   afterwards), SIGTERM → `STOPPING=1` and exit 0; a refused reload names every key
//!   that changed;
//! - the bounded wait: Salesforce unreachable, `READY=1` after `token.ready_timeout` with a
//!   `STATUS=` saying no token is held; a cached token past its refresh point is refreshed
//!   before `READY=1`;
//! - in-process: the real refresh loop stuck inside its key backend stops the pings, and
//!   they resume when it recovers; a slow Salesforce (responses slower than the timeout)
//!   does not stop them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::Duration;

use asset_agent::actor::Identity;
use asset_agent::backoff::OsJitter;
use asset_agent::keys::{FileKey, SignError, Signer};
use asset_agent::salesforce::Upstream;
use asset_agent::salesforce::subject::{Credentials, RefreshToken};
use asset_agent::salesforce::verify::Verifier;
use asset_agent::skew::Skew;
use asset_agent::systemd::{Notifier, Readiness, Supervisor};
use asset_agent::token::flow::Flow;
use asset_agent::token::refresher::{Policy, Refresher};
use common::process::output;
use common::{BIN, Device, emulator};
use emulator::{Emulator, Grant, Scope};
use tokio::net::UnixDatagram;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use wire::clock::Clock;
use wire::jose::RsaPublicJwk;
use wire::oauth::AssetFields;

/// The fake service manager's end of `NOTIFY_SOCKET`.
struct Manager {
    sock: UnixDatagram,
}

impl Manager {
    fn bind(dir: &Path) -> Self {
        Self {
            sock: UnixDatagram::bind(dir.join("notify.sock")).unwrap(),
        }
    }

    /// The next datagram, or `None` after `wait`.
    async fn next(&self, wait: Duration) -> Option<String> {
        let mut buf = vec![0u8; 4096];
        let n = timeout(wait, self.sock.recv(&mut buf)).await.ok()?.unwrap();
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Datagrams until one satisfies `done` (included), failing after `wait`.
    async fn until(&self, wait: Duration, done: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.next(left).await else {
                panic!("timed out; seen: {seen:#?}");
            };
            let stop = done(&msg);
            seen.push(msg);
            if stop {
                return seen;
            }
        }
    }

    /// Everything sent during `window`.
    async fn collect(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut seen = Vec::new();
        while let Some(m) = self
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            seen.push(m);
        }
        seen
    }
}

fn is_ready(m: &str) -> bool {
    m.lines().any(|l| l == "READY=1")
}

fn is_ping(m: &str) -> bool {
    m.lines().any(|l| l == "WATCHDOG=1")
}

/// No line repeats a step: "X failed: X failed: ..." (split at ": ", no two neighbours
/// equal), and no "caused by:" line starts with the text before it.
fn assert_no_repeats(text: &str) {
    for line in text.lines() {
        let parts: Vec<&str> = line.split(": ").collect();
        assert!(
            parts.windows(2).all(|w| w[0] != w[1] || w[0].len() < 8),
            "repeats itself: {line}"
        );
    }
    let chain: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            l.strip_prefix("error: ")
                .or_else(|| l.trim_start().strip_prefix("caused by: "))
        })
        .collect();
    for (i, earlier) in chain.iter().enumerate() {
        for later in &chain[i + 1..] {
            assert!(!later.starts_with(earlier), "repeats a prefix: {chain:#?}");
        }
    }
}

/// Runs a client command of the real binary against `socket`: (exit code, stdout, stderr).
fn cli(socket: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    output(
        Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(socket)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default()),
    )
}

/// A loopback port nothing listens on: Salesforce unreachable.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn spawn_agent(config: &Path, dir: &Path) -> Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NOTIFY_SOCKET", dir.join("notify.sock"))
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// Waits for the child to exit (bounded) and returns its exit code and stderr.
async fn finish(mut child: Child) -> (Option<i32>, String) {
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).unwrap();
            }
            return (status.code(), err);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    panic!("the agent did not exit within 10 s");
}

#[tokio::test]
async fn ready_only_after_the_first_token_then_reload_and_stop() {
    let emu = emulator(Clock::system(), |_| {}).await;
    // The first two exchanges fail: the agent is up, bound and failing, but holds no token.
    emu.faults()
        .fail_next_with(2, 503, None, Scope::Grant(Grant::TokenExchange))
        .await
        .unwrap();
    let dev = Device::new(&emu);
    // The bounded wait is tested below; here READY=1 must wait for the token.
    let config = dev.write_config(&emu, "", "ready_timeout = \"1h\"");
    let manager = Manager::bind(dev.dir.path());
    let child = spawn_agent(&config, dev.dir.path());

    let before = manager
        .until(Duration::from_secs(30), |m| {
            // READY=1 must never arrive while the emulator has issued no asset token.
            assert!(
                !is_ready(m) || !emu.events().is_empty(),
                "READY=1 before any token: {m}"
            );
            is_ready(m)
        })
        .await;
    let ready = before.last().unwrap();
    assert!(
        ready.contains("STATUS=ready: asset token for 02i") && ready.contains("valid until 20"),
        "{ready}"
    );
    let earlier = &before[..before.len() - 1];
    assert!(
        earlier
            .iter()
            .any(|m| m.contains("STATUS=failing: no valid asset token")),
        "STATUS said why it was not ready: {earlier:#?}"
    );
    assert!(
        earlier
            .iter()
            .any(|m| is_ping(m) && m.contains("EXTEND_TIMEOUT_USEC=")),
        "live before ready: pings extend the start timeout: {earlier:#?}"
    );
    let body = common::wait_for_token(&dev.socket()).await;
    assert_eq!(body["token_type"], "Bearer");

    // Ready: plain pings, every ~200 ms (half of WATCHDOG_USEC).
    let after = manager.collect(Duration::from_secs(2)).await;
    let pings = after.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 3, "about 10 expected: {after:#?}");

    // SIGHUP with a live change: RELOADING=1, then READY=1, then STATUS= is the state's
    // again (the outcome is in the log, not left standing in `systemctl status`).
    let toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{toml}\n[log]\nlevel = \"debug\"\n")).unwrap();
    signal(&child, rustix::process::Signal::HUP);
    let reload = manager.until(Duration::from_secs(10), is_ready).await;
    assert!(
        reload.iter().any(|m| m.starts_with("RELOADING=1")),
        "{reload:#?}"
    );
    manager
        .until(Duration::from_secs(10), |m| m.starts_with("STATUS=ready: "))
        .await;

    // `asset-agent reload` (the unit's ExecReload=), nothing changed since: accepted.
    let socket = dev.socket();
    let (code, out, err) = cli(&socket, &["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "configuration reloaded: no changes");

    // A broken file: refused with the reason and exit 1, the running config kept, tokens
    // still served, STATUS= back to the state.
    std::fs::write(
        &config,
        toml.replace("[asset]", "[asset]\nserial = \"typo\""),
    )
    .unwrap();
    let (code, out, err) = cli(&socket, &["reload"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("reload refused, running configuration kept") && err.contains("serial"),
        "{err}"
    );
    assert_no_repeats(&err);
    manager
        .until(Duration::from_secs(10), |m| m.starts_with("STATUS=ready: "))
        .await;
    // A change that needs a restart: refused, naming the key.
    std::fs::write(&config, toml.replace("00123", "00124")).unwrap();
    let (code, _, err) = cli(&socket, &["reload", "--json"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("asset.serial_number") && err.contains("systemctl restart"),
        "{err}"
    );
    assert_eq!(
        common::get(&dev.socket(), "/v1/token").await.status,
        200,
        "still serving after a bad reload"
    );

    // SIGTERM: STOPPING=1, clean exit, socket removed.
    signal(&child, rustix::process::Signal::TERM);
    manager
        .until(Duration::from_secs(10), |m| m.starts_with("STOPPING=1"))
        .await;
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("shutting down") && stderr.contains("stopped"),
        "{stderr}"
    );
    assert!(!dev.socket().exists());
}

/// `asset-agent reload` names every key that changed, the signer and admin lists, `[mqtt]`
/// and `token.refresh` included (once reported only as "other settings"); all need a
/// restart, so nothing is applied.
#[tokio::test]
async fn a_reload_names_every_changed_key() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "");
    // MQTT on, towards a port nothing answers on: the uplink keeps retrying, tokens flow.
    let broker = dead_url().replace("http://", "mqtt://");
    let toml = format!(
        "{}\n[mqtt]\nurl = \"{broker}\"\n",
        std::fs::read_to_string(&config).unwrap()
    );
    std::fs::write(&config, &toml).unwrap();
    let _manager = Manager::bind(dev.dir.path());
    let child = spawn_agent(&config, dev.dir.path());
    let socket = dev.socket();
    common::wait_for_token(&socket).await;

    let refused = |changed: &str| {
        std::fs::write(&config, changed).unwrap();
        let (code, out, err) = cli(&socket, &["reload"]);
        assert_eq!(code, Some(1), "{out}{err}");
        err
    };
    let err = refused(&toml.replace("[api]\n", "[api]\nsigner_uids = [4242]\n"));
    assert!(
        err.contains(
            "running configuration kept: api.signer_uids changed and need `systemctl restart"
        ),
        "{err}"
    );
    let err = refused(
        &toml
            .replace("[token]\n", "[token]\nrefresh = \"eager\"\n")
            .replace("[api]\n", "[api]\nadmin_gids = [4243]\n")
            .replace(
                "[mqtt]\n",
                "[mqtt]\nclient_id = \"pump-7\"\nkeep_alive = \"45s\"\n",
            ),
    );
    assert!(
        err.contains(
            ": token.refresh, api.admin_gids, mqtt.client_id, mqtt.keep_alive changed and need"
        ),
        "{err}"
    );
    assert!(!err.contains("other settings"), "{err}");
    // Nothing was applied: the original file is what runs.
    std::fs::write(&config, &toml).unwrap();
    let (code, out, err) = cli(&socket, &["reload"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "configuration reloaded: no changes");

    signal(&child, rustix::process::Signal::TERM);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn waiting_for_enrollment_is_not_ready_and_says_why() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    std::fs::remove_file(dev.path("refresh-token")).unwrap();
    let config = dev.write_config(&emu, "", "ready_timeout = \"1h\"");
    let manager = Manager::bind(dev.dir.path());
    let child = spawn_agent(&config, dev.dir.path());
    let seen = manager
        .until(Duration::from_secs(20), |m| {
            m.contains("STATUS=waiting for enrollment")
        })
        .await;
    assert!(
        seen.last().unwrap().contains("asset-agent enroll"),
        "{seen:#?}"
    );
    let more = manager.collect(Duration::from_secs(2)).await;
    assert!(!seen.iter().chain(&more).any(|m| is_ready(m)), "{more:#?}");
    assert!(
        more.iter()
            .any(|m| is_ping(m) && m.contains("EXTEND_TIMEOUT_USEC=")),
        "alive while waiting: {more:#?}"
    );
    signal(&child, rustix::process::Signal::INT);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn an_offline_device_is_ready_after_the_bounded_wait_and_says_it_has_no_token() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "ready_timeout = \"1s\"");
    let toml = std::fs::read_to_string(&config).unwrap();
    let toml = toml.replacen(
        &format!("instance_url = \"{}\"", emu.base_url()),
        &format!("instance_url = \"{}\"", dead_url()),
        1,
    );
    std::fs::write(&config, toml).unwrap();
    let manager = Manager::bind(dev.dir.path());
    let child = spawn_agent(&config, dev.dir.path());
    let seen = manager.until(Duration::from_secs(30), is_ready).await;
    let ready = seen.last().unwrap();
    assert!(
        ready.contains("STATUS=starting: no asset token yet")
            || ready.contains("STATUS=failing: no valid asset token"),
        "{ready}"
    );
    assert_no_repeats(ready);
    // Still no token, still saying why, and no repeated step in what `status` prints.
    let (code, out, err) = cli(&dev.socket(), &["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("token:        none"), "{out}");
    assert!(out.contains("could not reach Salesforce"), "{out}");
    assert_no_repeats(&out);
    let (code, _, err) = cli(&dev.socket(), &["token"]);
    assert_eq!(code, Some(1));
    assert_no_repeats(&err);
    signal(&child, rustix::process::Signal::TERM);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("ready anyway"), "{stderr}");
    assert_no_repeats(&stderr);
}

#[tokio::test]
async fn a_cached_token_past_its_refresh_point_is_refreshed_before_ready() {
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(8);
    })
    .await;
    let dev = Device::new(&emu);
    let config = dev.write_config(&emu, "", "refresh_at = \"50%\"\nready_timeout = \"1h\"");
    // First run: a token, cached.
    let manager = Manager::bind(dev.dir.path());
    let child = spawn_agent(&config, dev.dir.path());
    manager.until(Duration::from_secs(30), is_ready).await;
    signal(&child, rustix::process::Signal::TERM);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "{stderr}");
    drop(manager);
    std::fs::remove_file(dev.path("notify.sock")).unwrap();
    // Past its refresh point (4 s of 8), still live.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let issued = emu.events().len();

    let manager = Manager::bind(dev.dir.path());
    let child = spawn_agent(&config, dev.dir.path());
    let seen = manager.until(Duration::from_secs(30), is_ready).await;
    let refreshed_first = emu.events().len() > issued;
    signal(&child, rustix::process::Signal::TERM);
    let (code, stderr) = finish(child).await;
    assert!(
        refreshed_first,
        "READY=1 on the cached token, before refreshing it: {seen:#?}"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("serving the cached asset token"),
        "{stderr}"
    );
}

/// A device key whose backend can be made to hang (a PKCS#11 token or TPM that stops
/// answering): the refresh loop calls it synchronously while minting the actor token.
struct HangingKey {
    inner: FileKey,
    /// (armed, released)
    gate: Mutex<(bool, bool)>,
    cond: Condvar,
    entered: Mutex<Option<mpsc::Sender<()>>>,
}

impl HangingKey {
    fn arm(&self, entered: mpsc::Sender<()>) {
        *self.entered.lock().unwrap() = Some(entered);
        *self.gate.lock().unwrap() = (true, false);
    }

    fn release(&self) {
        self.gate.lock().unwrap().1 = true;
        self.cond.notify_all();
    }
}

impl Signer for HangingKey {
    fn public_jwk(&self) -> &RsaPublicJwk {
        self.inner.public_jwk()
    }

    fn sign_rs256(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let mut gate = self.gate.lock().unwrap();
        if gate.0 {
            if let Some(tx) = self.entered.lock().unwrap().take() {
                let _ = tx.send(());
            }
            while !gate.1 {
                gate = self.cond.wait(gate).unwrap();
            }
            gate.0 = false;
        }
        drop(gate);
        self.inner.sign_rs256(message)
    }

    fn public_key_pem(&self) -> Result<String, SignError> {
        self.inner.public_key_pem()
    }

    fn bits(&self) -> usize {
        self.inner.bits()
    }
}

/// The real refresh loop for `emu`, on its own thread and runtime (so that when it blocks,
/// only it blocks), plus a supervisor reporting to a fake manager with a 400 ms watchdog.
struct Loop {
    manager: Manager,
    key: Arc<HangingKey>,
    cancel: CancellationToken,
    _dev: Device,
}

impl Loop {
    fn start(emu: &Emulator, upstream_timeout: Duration) -> Self {
        asset_agent::crypto::install();
        let dev = Device::new(emu);
        let key = Arc::new(HangingKey {
            inner: FileKey::load(&dev.path("device-key.pem")).unwrap(),
            gate: Mutex::new((false, false)),
            cond: Condvar::new(),
            entered: Mutex::new(None),
        });
        let clock = Clock::system();
        let url = asset_agent::config::Url::parse(emu.base_url()).unwrap();
        let upstream = Upstream::new(
            &url,
            None,
            upstream_timeout,
            clock.clone(),
            Arc::new(Skew::default()),
        )
        .unwrap();
        let credentials = Credentials::RefreshToken(RefreshToken::new(
            emulator::DEFAULT_CLIENT_ID.to_owned(),
            None,
            dev.path("refresh-token"),
        ));
        let identity = Identity {
            device_id: "device-0001".into(),
            token_name: "Asset Token: device-0001".into(),
            asset: AssetFields {
                id: None,
                name: Some("Pump 7".into()),
                serial_number: Some("00123".into()),
                account_id: None,
                contact_id: None,
            },
        };
        let verifier = Verifier::new(Verifier::jwks(), vec![], None, Duration::from_secs(30));
        let flow = Flow::new(
            upstream,
            credentials,
            key.clone(),
            identity,
            verifier,
            clock,
            tokio::sync::broadcast::channel(16).0,
        );
        let policy = Policy {
            refresh_at: 0.5,
            backoff_cap: Duration::from_secs(1),
            attempt_budget: Policy::budget_for(upstream_timeout),
            mode: asset_agent::config::RefreshPolicy::Eager,
            demand_window: asset_agent::config::DEFAULT_DEMAND_WINDOW,
        };
        let (refresher, handle) = Refresher::new(flow, policy, Box::new(OsJitter), None);
        let cancel = CancellationToken::new();
        let loop_cancel = cancel.child_token();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(refresher.run(loop_cancel));
        });
        let manager = Manager::bind(dev.dir.path());
        let notifier =
            Arc::new(Notifier::connect(dev.path("notify.sock").to_str().unwrap()).unwrap());
        let readiness = Readiness {
            started: Instant::now(),
            timeout: Duration::from_secs(3600),
            refresh_at: 0.5,
        };
        tokio::spawn(
            Supervisor::new(
                notifier,
                handle,
                Some(Duration::from_millis(400)),
                readiness,
            )
            .run(cancel.child_token()),
        );
        Self {
            manager,
            key,
            cancel,
            _dev: dev,
        }
    }
}

#[tokio::test]
async fn watchdog_pings_stop_while_the_refresh_loop_is_stuck() {
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(4);
    })
    .await;
    // Upstream timeout 1 s → attempt budget 5 s; past it (+5 s slack) the loop is stalled.
    let l = Loop::start(&emu, Duration::from_secs(1));
    l.manager.until(Duration::from_secs(20), is_ready).await;

    // The key backend hangs on the next signature, i.e. the next refresh (~2 s away).
    let (tx, rx) = mpsc::channel();
    l.key.arm(tx);
    tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("the refresh loop reached the key");
    let stuck_at = Instant::now();

    // Pings continue while the attempt is within its budget, then stop.
    let seen = l
        .manager
        .until(Duration::from_secs(20), |m| m.contains("STATUS=stalled"))
        .await;
    let stalled_after = stuck_at.elapsed();
    assert!(
        stalled_after >= Duration::from_secs(9),
        "not before budget + slack: {stalled_after:?}"
    );
    assert!(seen.iter().any(|m| is_ping(m)), "pings while within budget");
    let quiet = l.manager.collect(Duration::from_secs(2)).await;
    assert!(
        !quiet.iter().any(|m| is_ping(m)),
        "no pings while stalled: {quiet:#?}"
    );

    // The backend answers again: the loop finishes its attempt and pings resume.
    l.key.release();
    // (The token and the status are two publishes; a transitional STATUS between them is
    // fine, what matters is that the agent ends up ready and pinging.)
    l.manager
        .until(Duration::from_secs(10), |m| m.starts_with("STATUS=ready"))
        .await;
    let resumed = l.manager.collect(Duration::from_secs(1)).await;
    assert!(
        resumed.iter().any(|m| is_ping(m)),
        "pings resume: {resumed:#?}"
    );
    l.cancel.cancel();
}

#[tokio::test]
async fn a_slow_salesforce_does_not_stop_the_pings() {
    let emu = emulator(Clock::system(), |c| {
        c.asset_token_lifetime = Duration::from_secs(4);
    })
    .await;
    let l = Loop::start(&emu, Duration::from_secs(1));
    l.manager.until(Duration::from_secs(20), is_ready).await;
    // Every exchange now answers after 3 s, three times the upstream timeout: each attempt
    // times out, is retried with backoff, and the loop keeps every promise it makes.
    emu.faults()
        .delay(
            Duration::from_secs(3),
            None,
            Scope::Grant(Grant::TokenExchange),
        )
        .await
        .unwrap();
    let seen = l.manager.collect(Duration::from_secs(8)).await;
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=degraded") || m.contains("STATUS=failing")),
        "the timeouts were noticed: {seen:#?}"
    );
    assert!(
        !seen.iter().any(|m| m.contains("STATUS=stalled")),
        "{seen:#?}"
    );
    let pings = seen.iter().filter(|m| is_ping(m)).count();
    // About 40 at one per 200 ms; a stall would leave at most the ~5 before it.
    assert!(pings >= 20, "pings kept coming, got {pings}: {seen:#?}");
    l.cancel.cancel();
}
