//! Lifecycle beyond faults: enrollment by the device flow, every subject-token
//! method end to end, and the token cache across restarts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asset_agent::commands::enroll::{self, EXIT_DENIED, EXIT_EXPIRED, Progress, enroll};
use asset_agent::config::{Config, LoadOptions};
use asset_agent::keys::{FileKey, Signer as _};
use asset_agent::token::cache::FILE_NAME;
use common::{Agent, Device, emulator, get, mode, verify_with_jwks, wait_for_token, write_0600};
use emulator::{Emulator, Endpoint, Grant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use wire::clock::Clock;

/// The common config with `auth` lines in `[auth]` and `salesforce` lines in `[salesforce]`.
fn config_with(dev: &Device, emu: &Emulator, auth: &str, salesforce: &str) -> Config {
    let p = dev.write_config(emu, "", "");
    let toml = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("[auth]\n", &format!("[auth]\n{auth}\n"), 1)
        .replacen(
            "timeout = \"5s\"\n",
            &format!("timeout = \"5s\"\n{salesforce}\n"),
            1,
        );
    std::fs::write(&p, toml).unwrap();
    Config::load(&LoadOptions::new(Some(p), HashMap::new())).unwrap()
}

/// Log lines of everything run on this thread (the tests' runtime is single-threaded).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn enroll_options(clock: &Clock) -> enroll::Options {
    enroll::Options {
        clock: clock.clone(),
        ..enroll::Options::default()
    }
}

#[tokio::test(start_paused = true)]
async fn device_flow_enrolls_a_waiting_agent_without_restart() {
    let (logs, _guard) = Logs::capture();
    let clock = Clock::tokio_driven();
    let emu = emulator(clock.clone(), |c| c.rotate_refresh_tokens = true).await;
    let dev = Device::new(&emu);
    std::fs::remove_file(dev.path("refresh-token")).unwrap();
    let config = config_with(
        &dev,
        &emu,
        "method = \"device_flow\"\nscope = \"api refresh_token\"",
        "",
    );
    let agent = Agent::start(&config, clock.clone()).await;
    let mut status = agent.running.tokens.status.clone();
    status
        .wait_for(|s| s.state.as_str() == "needs_enrollment")
        .await
        .unwrap();
    // A minute of waiting: no crash loop, no upstream call, one warning saying what to run.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let s: serde_json::Value =
        serde_json::from_slice(&get(&dev.socket(), "/v1/status").await.body).unwrap();
    assert_eq!(s["state"], "needs_enrollment", "{s}");
    assert_eq!(get(&dev.socket(), "/v1/health/live").await.status, 200);
    assert_eq!(get(&dev.socket(), "/v1/health/ready").await.status, 503);
    let r = get(&dev.socket(), "/v1/token").await;
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("enroll"));
    assert_eq!(emu.stats().total, 0);
    let text = logs.text();
    assert_eq!(text.matches("not enrolled yet").count(), 1, "{text}");
    assert!(text.contains("run 'asset-agent enroll'"), "{text}");

    let started = Instant::now();
    let enrolled = enroll(&config, enroll_options(&clock), |p| {
        if let Progress::Code(auth) = p {
            assert!(auth.verification_uri.starts_with(emu.base_url()));
            emu.approve_device(&auth.user_code).unwrap();
        }
    })
    .await
    .unwrap();
    // Approved at once: the first poll, one interval (5 s) later, brings the tokens.
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(enrolled.path, dev.path("refresh-token"));
    assert_eq!(mode(&enrolled.path), 0o600);
    assert!(!enrolled.replaced);

    // The agent picks the token up at its next check (every 10 s).
    let mut current = agent.running.tokens.current.clone();
    tokio::time::timeout(Duration::from_secs(11), current.wait_for(|t| t.is_some()))
        .await
        .expect("token within 10 s of enrollment")
        .unwrap();
    let body = wait_for_token(&dev.socket()).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    assert_eq!(emu.grant_count(Grant::DeviceCode), 1);
    assert_eq!(emu.grant_count(Grant::Device), 1);
    assert_eq!(emu.grant_count(Grant::RefreshToken), 1);
    // Rotation: the file now holds the rotated token, not the enrolled one.
    let stored = std::fs::read_to_string(&enrolled.path).unwrap();
    assert!(stored.starts_with("5Aep861"));
    assert!(logs.text().contains("refresh token rotated and stored"));
    agent.stop().await;
}

#[tokio::test(start_paused = true)]
async fn device_flow_denied_and_expired() {
    let clock = Clock::tokio_driven();
    let emu = emulator(clock.clone(), |c| {
        c.device_code_lifetime = Duration::from_secs(12);
    })
    .await;
    let dev = Device::new(&emu);
    std::fs::remove_file(dev.path("refresh-token")).unwrap();
    let config = config_with(&dev, &emu, "method = \"device_flow\"", "");

    let err = enroll(&config, enroll_options(&clock), |p| {
        if let Progress::Code(auth) = p {
            emu.deny_device(&auth.user_code).unwrap();
        }
    })
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), EXIT_DENIED, "{err}");
    let chain = common_chain(&err);
    assert!(
        chain.contains("denied") && chain.contains("enroll' again"),
        "{chain}"
    );

    let started = Instant::now();
    let err = enroll(&config, enroll_options(&clock), |_| {})
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), EXIT_EXPIRED, "{err}");
    assert!(common_chain(&err).contains("expired"));
    // Polls at 5 and 10 s (pending), at 15 s the 12 s code has expired.
    assert_eq!(started.elapsed(), Duration::from_secs(15));
    assert_eq!(emu.grant_count(Grant::Device), 1 + 3);
    assert!(!dev.path("refresh-token").exists(), "nothing stored");
}

fn common_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// A scripted token endpoint: answers each connection's request with the next (status,
/// body) and records when each request came and its body.
async fn scripted(
    script: Vec<(u16, &'static str)>,
) -> (String, Arc<Mutex<Vec<(Instant, String)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        for (status, body) in script {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let request = loop {
                let n = s.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break body.to_owned();
                    }
                }
            };
            record.lock().unwrap().push((Instant::now(), request));
            let reply = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(reply.as_bytes()).await.unwrap();
            let _ = s.shutdown().await;
        }
    });
    (url, seen)
}

#[tokio::test(start_paused = true)]
async fn device_flow_slows_down_and_rides_out_transient_errors() {
    let (url, seen) = scripted(vec![
        (
            200,
            r#"{"device_code":"dc-1","user_code":"BCDF-0001","verification_uri":"https://example.com/setup/connect","interval":5}"#,
        ),
        (400, r#"{"error":"slow_down"}"#),
        (400, r#"{"error":"authorization_pending"}"#),
        (503, ""),
        (200, r#"{"access_token":"00D!x","refresh_token":"5Aep861scripted"}"#),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[salesforce]\ninstance_url = \"{url}\"\nclient_id = \"3MVGscript\"\n[auth]\nmethod = \"device_flow\"\nscope = \"api refresh_token\"\nrefresh_token_file = \"{d}/state/refresh-token\"\n[asset]\ndevice_id = \"d1\"\nname = \"n\"\nserial_number = \"s\"\n[state]\ndir = \"{d}/state\"\n",
        d = dir.path().display()
    );
    let p = dir.path().join("agent.toml");
    std::fs::write(&p, toml).unwrap();
    let config = Config::load(&LoadOptions::new(Some(p), HashMap::new())).unwrap();
    let clock = Clock::tokio_driven();
    let mut events = Vec::new();
    let enrolled = enroll(&config, enroll_options(&clock), |p| {
        if let Progress::Poll(e) = p {
            events.push(format!("{e:?}"));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&enrolled.path).unwrap(),
        "5Aep861scripted"
    );
    assert_eq!(mode(&enrolled.path), 0o600);
    let seen = seen.lock().unwrap().clone();
    let t0 = seen[0].0;
    let at: Vec<u64> = seen.iter().map(|(t, _)| (*t - t0).as_secs()).collect();
    // slow_down at 5 s: interval 10 s; pending at 15; 503 at 25: back off to 20 s; 45: done.
    assert_eq!(at, [0, 5, 15, 25, 45], "{events:?}");
    assert_eq!(
        seen[0].1,
        "response_type=device_code&client_id=3MVGscript&scope=api+refresh_token"
    );
    assert_eq!(
        seen[1].1,
        "grant_type=device&client_id=3MVGscript&code=dc-1"
    );
    assert!(events[0].contains("SlowDown(10s)"), "{events:?}");
}

#[tokio::test]
async fn jwt_bearer_end_to_end() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    write_0600(&dev.path("assertion-key.pem"), common::OTHER_KEY.as_bytes());
    let key = FileKey::from_pem(std::path::Path::new("k"), common::OTHER_KEY.as_bytes()).unwrap();
    emu.register_jwt_bearer_key(key.public_jwk().clone());
    let auth = format!(
        "method = \"jwt_bearer\"\nusername = \"device-fleet@example.com\"\nassertion_key_file = \"{}\"",
        dev.path("assertion-key.pem").display()
    );
    let config = config_with(&dev, &emu, &auth, "");
    let agent = Agent::start(&config, Clock::system()).await;
    let body = wait_for_token(&dev.socket()).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    assert_eq!(emu.grant_count(Grant::JwtBearer), 1);
    assert_eq!(emu.grant_count(Grant::RefreshToken), 0);
    let s: serde_json::Value =
        serde_json::from_slice(&get(&dev.socket(), "/v1/status").await.body).unwrap();
    assert_eq!(s["auth_method"], "jwt_bearer");
    agent.stop().await;
}

#[tokio::test]
async fn client_credentials_end_to_end() {
    let emu = emulator(Clock::system(), |c| {
        c.client_secret = Some("s3cret-of-the-app".to_owned().into());
    })
    .await;
    let dev = Device::new(&emu);
    write_0600(&dev.path("client-secret"), b"s3cret-of-the-app\n");
    let secret = format!(
        "client_secret_file = \"{}\"",
        dev.path("client-secret").display()
    );
    let config = config_with(&dev, &emu, "method = \"client_credentials\"", &secret);
    let agent = Agent::start(&config, Clock::system()).await;
    let body = wait_for_token(&dev.socket()).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    assert_eq!(emu.grant_count(Grant::ClientCredentials), 1);
    agent.stop().await;

    // A wrong secret is fatal (invalid_client) and says so.
    write_0600(&dev.path("client-secret"), b"wrong");
    std::fs::remove_file(dev.path(FILE_NAME)).unwrap();
    let agent = Agent::start(&config, Clock::system()).await;
    let s = common::wait_for_failure(&dev.socket()).await;
    assert_eq!(s["state"], "failing", "{s}");
    assert_eq!(s["last_error_reason"], "invalid_client", "{s}");
    agent.stop().await;
}

#[tokio::test]
async fn restart_with_a_cached_token_makes_no_upstream_call() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.config(&emu, "", "");
    let agent = Agent::start(&config, Clock::system()).await;
    let first = wait_for_token(&dev.socket()).await;
    agent.stop().await;
    assert_eq!(mode(&dev.path(FILE_NAME)), 0o600);

    let before = emu.stats();
    let agent = Agent::start(&config, Clock::system()).await;
    // The very first request after the restart.
    let r = get(&dev.socket(), "/v1/token").await;
    assert_eq!(r.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["token"], first["token"]);
    assert_eq!(emu.stats(), before, "zero upstream calls");
    let s: serde_json::Value =
        serde_json::from_slice(&get(&dev.socket(), "/v1/status").await.body).unwrap();
    assert_eq!(s["state"], "ready");
    agent.stop().await;
}

#[tokio::test(start_paused = true)]
async fn offline_boot_serves_the_cached_token_until_it_expires() {
    let clock = Clock::tokio_driven();
    let emu = emulator(clock.clone(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.config(&emu, "", "");
    let agent = Agent::start(&config, clock.clone()).await;
    let mut current = agent.running.tokens.current.clone();
    let received = current
        .wait_for(|t| t.is_some())
        .await
        .unwrap()
        .clone()
        .unwrap()
        .received;
    agent.stop().await;

    emu.faults().stop_accepting().await;
    let total = emu.stats().total;
    let agent = Agent::start(&config, clock.clone()).await;
    assert_eq!(get(&dev.socket(), "/v1/token").await.status, 200);
    tokio::time::sleep_until(received + Duration::from_secs(57)).await;
    assert_eq!(get(&dev.socket(), "/v1/token").await.status, 200);
    tokio::time::sleep_until(received + Duration::from_secs(61)).await;
    let r = get(&dev.socket(), "/v1/token").await;
    assert_eq!(r.status, 503);
    assert!(!String::from_utf8_lossy(&r.body).contains("eyJ"));
    assert_eq!(emu.stats().total, total, "the emulator was unreachable");
    agent.stop().await;
}

/// A restart after the cached token expired needs a new exchange, but not the org's JWKS:
/// the keys kept with the cache verify the fresh token (a fleet reboot costs no JWKS fetch
/// per device).
#[tokio::test(start_paused = true)]
async fn a_restart_verifies_with_the_kept_jwks_without_fetching_it() {
    let clock = Clock::tokio_driven();
    let emu = emulator(clock.clone(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.config(&emu, "", "");
    let agent = Agent::start(&config, clock.clone()).await;
    let mut current = agent.running.tokens.current.clone();
    current.wait_for(|t| t.is_some()).await.unwrap();
    agent.stop().await;
    assert_eq!(emu.request_count(Endpoint::Jwks), 1);

    // Down longer than the token lives.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let exchanges = emu.grant_count(Grant::TokenExchange);
    let agent = Agent::start(&config, clock.clone()).await;
    let mut current = agent.running.tokens.current.clone();
    current.wait_for(|t| t.is_some()).await.unwrap();
    assert_eq!(emu.grant_count(Grant::TokenExchange), exchanges + 1);
    assert_eq!(
        emu.request_count(Endpoint::Jwks),
        1,
        "no JWKS fetch after the restart"
    );
    agent.stop().await;
}

#[tokio::test]
async fn corrupt_or_foreign_cache_is_discarded_with_a_warning() {
    let (logs, _guard) = Logs::capture();
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.config(&emu, "", "");
    write_0600(&dev.path(FILE_NAME), b"{\"version\": 1, \"owner\": tru");
    let agent = Agent::start(&config, Clock::system()).await;
    wait_for_token(&dev.socket()).await;
    agent.stop().await;
    assert!(logs.text().contains("discarding the token cache"));
    assert!(logs.text().contains("not a JWS"));
    assert_eq!(emu.grant_count(Grant::TokenExchange), 1);

    // The same state directory, another device: the cache is foreign.
    let path = dev.write_config(&emu, "", "");
    let toml = std::fs::read_to_string(&path)
        .unwrap()
        .replace("device-0001", "device-0002");
    std::fs::write(&path, toml).unwrap();
    let other = Config::load(&LoadOptions::new(Some(path), HashMap::new())).unwrap();
    let agent = Agent::start(&other, Clock::system()).await;
    let body = wait_for_token(&dev.socket()).await;
    let claims = verify_with_jwks(&emu, body["token"].as_str().unwrap());
    assert_eq!(claims["did"], "device-0002");
    assert_eq!(emu.grant_count(Grant::TokenExchange), 2);
    assert!(logs.text().contains("belongs to another"));
    agent.stop().await;
}

/// A token cache that is readable by others or a symbolic link is set aside with a warning
/// naming it, and the agent goes on with a fresh exchange (it used to exit 78, which
/// systemd does not restart). The link's target is left alone and a private file replaces
/// the link.
#[tokio::test]
async fn a_loose_or_linked_token_cache_is_discarded_not_fatal() {
    for linked in [false, true] {
        let (logs, _guard) = Logs::capture();
        let emu = emulator(Clock::system(), |_| {}).await;
        let dev = Device::new(&emu);
        let config = dev.config(&emu, "", "");
        let agent = Agent::start(&config, Clock::system()).await;
        wait_for_token(&dev.socket()).await;
        agent.stop().await;
        let cache = dev.path(FILE_NAME);
        let saved = std::fs::read(&cache).unwrap();
        let elsewhere = dev.path("elsewhere");
        if linked {
            std::fs::create_dir(&elsewhere).unwrap();
            std::fs::rename(&cache, elsewhere.join(FILE_NAME)).unwrap();
            std::os::unix::fs::symlink(elsewhere.join(FILE_NAME), &cache).unwrap();
        } else {
            std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let exchanges = emu.grant_count(Grant::TokenExchange);

        let agent = Agent::start(&config, Clock::system()).await;
        wait_for_token(&dev.socket()).await;
        agent.stop().await;
        assert_eq!(
            emu.grant_count(Grant::TokenExchange),
            exchanges + 1,
            "linked {linked}: the cached token was not used"
        );
        let text = logs.text();
        assert!(text.contains("discarding the token cache"), "{text}");
        let why = if linked { "symbolic link" } else { "chmod 600" };
        assert!(text.contains(why), "linked {linked}: {text}");
        assert!(text.contains(&cache.display().to_string()), "{text}");
        let meta = std::fs::symlink_metadata(&cache).unwrap();
        assert!(meta.is_file(), "linked {linked}: {meta:?}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "linked {linked}");
        if linked {
            assert_eq!(std::fs::read(elsewhere.join(FILE_NAME)).unwrap(), saved);
        }
    }
}

/// The cache file's payload, decoded (not verified).
fn cache_body(dev: &Device) -> serde_json::Value {
    let text = std::fs::read_to_string(dev.path(FILE_NAME)).unwrap();
    let payload = text.split('.').nth(1).unwrap();
    serde_json::from_slice(&wire::jose::b64url_decode(payload).unwrap()).unwrap()
}

/// `jwt` with its claims changed by `edit` and its original signature kept.
fn alter_claims(jwt: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = jwt.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&wire::jose::b64url_decode(parts[1]).unwrap()).unwrap();
    edit(&mut claims);
    let claims = wire::jose::b64url(&serde_json::to_vec(&claims).unwrap());
    format!("{}.{claims}.{}", parts[0], parts[2])
}

/// An altered cached token is never served: edited in place (the file's device-key
/// signature breaks), or even re-signed with the device key itself (the token's own org
/// signature breaks). The restart fetches a fresh token, or answers 503 when none can be
/// had, and the warning names the file.
#[tokio::test]
async fn an_altered_cache_is_never_served() {
    let (logs, _guard) = Logs::capture();
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.config(&emu, "", "");
    let agent = Agent::start(&config, Clock::system()).await;
    let first = wait_for_token(&dev.socket()).await;
    agent.stop().await;
    let good_file = std::fs::read(dev.path(FILE_NAME)).unwrap();
    let body = cache_body(&dev);
    assert!(
        body["jwks"].as_array().is_some_and(|k| !k.is_empty()),
        "the org's keys are kept for an offline restart: {body}"
    );
    let jwt = body["asset_token"]["jwt"].as_str().unwrap().to_owned();
    let altered = alter_claims(&jwt, |c| {
        c["sub"] = "02iEVIL00000000AAA".into();
        c["exp"] = (c["exp"].as_i64().unwrap() + 3600).into();
    });

    // 1. Edited in place, file signature kept.
    let mut edited = body.clone();
    edited["asset_token"]["jwt"] = altered.clone().into();
    let text = String::from_utf8(good_file.clone()).unwrap();
    let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
    parts[1] = wire::jose::b64url(&serde_json::to_vec(&edited).unwrap());
    write_0600(&dev.path(FILE_NAME), parts.join(".").as_bytes());
    let exchanges = emu.grant_count(Grant::TokenExchange);
    let agent = Agent::start(&config, Clock::system()).await;
    let r = get(&dev.socket(), "/v1/token").await;
    if r.status == 200 {
        let b: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_ne!(b["token"].as_str(), Some(altered.as_str()));
        assert_ne!(b["token"], first["token"]);
    }
    let fresh = wait_for_token(&dev.socket()).await;
    assert_ne!(fresh["token"].as_str(), Some(altered.as_str()));
    verify_with_jwks(&emu, fresh["token"].as_str().unwrap());
    assert_eq!(emu.grant_count(Grant::TokenExchange), exchanges + 1);
    agent.stop().await;
    let cache_path = dev.path(FILE_NAME).display().to_string();
    assert!(
        logs.text().contains("not signed by this device's key")
            && logs.text().contains(&cache_path),
        "{}",
        logs.text()
    );

    // 2. Re-signed with the device key (an attacker who could use it): the token itself
    //    still fails verification. With Salesforce unreachable, the answer is 503.
    let key = FileKey::load(&dev.path("device-key.pem")).unwrap();
    let mut body = cache_body(&dev);
    body["asset_token"]["jwt"] = alter_claims(body["asset_token"]["jwt"].as_str().unwrap(), |c| {
        c["sub"] = "02iEVIL00000000AAA".into();
    })
    .into();
    let forged = wire::jose::jws::sign(&key, &body).unwrap();
    write_0600(&dev.path(FILE_NAME), forged.as_bytes());
    emu.faults().stop_accepting().await;
    let agent = Agent::start(&config, Clock::system()).await;
    let r = get(&dev.socket(), "/v1/token").await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(!String::from_utf8_lossy(&r.body).contains("eyJ"));
    agent.stop().await;
    assert!(
        logs.text().contains("not serving the cached asset token"),
        "{}",
        logs.text()
    );
}

/// The exchange refusing the actor token itself (here: an Asset.Id that does not exist;
/// on a real org also a rejected device key) is fatal after exactly one re-authentication,
/// and retried slowly (after the backoff cap), with the reason in the status.
#[tokio::test]
async fn refused_actor_token_is_fatal_after_one_reauthentication() {
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let config = dev.config(&emu, "id = \"02iEM9999999999AAA\"", "");
    let agent = Agent::start(&config, Clock::system()).await;
    let s = common::wait_for_failure(&dev.socket()).await;
    assert_eq!(s["state"], "failing", "{s}");
    assert_eq!(s["last_error_reason"], "invalid_grant", "{s}");
    assert!(
        s["last_error"].as_str().unwrap().contains("does not exist"),
        "{s}"
    );
    assert!(s["refresh_failing_since"].is_string(), "{s}");
    // Access token, exchange refused, a new access token, refused again: then stop.
    assert_eq!(emu.grant_count(Grant::RefreshToken), 2);
    assert_eq!(emu.grant_count(Grant::TokenExchange), 2);
    let snap = agent.running.tokens.snapshot();
    let wait = snap.next_refresh.unwrap() - Instant::now();
    assert!(wait > Duration::from_secs(290), "slow retry: {wait:?}");
    assert_eq!(get(&dev.socket(), "/v1/token").await.status, 503);
    agent.stop().await;
}

/// A rotated refresh token that cannot be written is not lost: it waits in memory, is
/// written before the next grant, and that grant (with it) succeeds.
#[tokio::test]
async fn rotated_refresh_token_survives_a_failed_write() {
    use asset_agent::salesforce::Upstream;
    use asset_agent::salesforce::subject::{Credentials, RefreshToken};
    let emu = emulator(Clock::system(), |c| c.rotate_refresh_tokens = true).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt");
    write_0600(&path, emu.mint_refresh_token().unwrap().expose().as_bytes());
    asset_agent::crypto::install();
    let up = Upstream::new(
        &emu.base_url().parse().unwrap(),
        None,
        Duration::from_secs(5),
        Clock::system(),
        Arc::default(),
    )
    .unwrap();
    let creds = Credentials::RefreshToken(RefreshToken::new(
        emulator::DEFAULT_CLIENT_ID.to_owned(),
        None,
        path.clone(),
    ));
    // A directory where the temporary file must go: the write fails, even for root.
    let blocker = dir.path().join(format!(".rt.tmp-{}", std::process::id()));
    std::fs::create_dir(&blocker).unwrap();
    let before = std::fs::read_to_string(&path).unwrap();
    // The grant still yields its access token: the agent serves on.
    creds.obtain(&up).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        before,
        "old (dead) token"
    );

    std::fs::remove_dir(&blocker).unwrap();
    creds.obtain(&up).await.unwrap();
    assert_ne!(std::fs::read_to_string(&path).unwrap(), before);
    assert_eq!(
        emu.stats().success(Grant::RefreshToken),
        2,
        "the kept token worked"
    );
    assert_eq!(emu.grant_count(Grant::RefreshToken), 2);
}
