//! The PKCS#11 key backend against SoftHSM2, driving the real binary (the module is loaded
//! once per process, and SoftHSM reads its config from the environment): the key is
//! generated on the token, the whole token path runs on it, a restart finds the same key,
//! and the failure cases (wrong PIN, token gone and back while serving, key deleted) show
//! the messages users see.
//!
//! Skips when SoftHSM2 is not installed, unless ASSET_AGENT_REQUIRE_PKCS11 is set (CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use asset_agent::client;
use common::{Device, emulator, verify_with_jwks, wait_for_token, write_0600};
use serde_json::Value;
use tokio::process::{Child, Command};
use wire::clock::Clock;
use wire::jose::{RsaPublicJwk, jws};

const BIN: &str = env!("CARGO_BIN_EXE_asset-agent");
const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];
const PIN: &str = "4711";

fn module() -> Option<PathBuf> {
    let tool = std::process::Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let m = MODULES.iter().map(PathBuf::from).find(|p| p.exists());
    match (tool, m) {
        (true, Some(m)) => Some(m),
        _ if std::env::var_os("ASSET_AGENT_REQUIRE_PKCS11").is_some() => {
            panic!(
                "ASSET_AGENT_REQUIRE_PKCS11 is set but SoftHSM2 is not installed (scripts/ci-packages.sh installs it)"
            )
        }
        _ => None,
    }
}

/// A SoftHSM token in `dev`'s directory.
struct Token {
    conf: PathBuf,
    dir: PathBuf,
}

impl Token {
    fn init(dev: &Device) -> Self {
        let dir = dev.path("tokens");
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dev.path("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.display()
            ),
        )
        .unwrap();
        let t = Self { conf, dir };
        let out = t
            .tool("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                "agent",
                "--so-pin",
                "0000",
                "--pin",
                PIN,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tool(&self, name: &str) -> std::process::Command {
        let mut c = std::process::Command::new(name);
        c.env("SOFTHSM2_CONF", &self.conf);
        c
    }

    fn agent(&self, args: &[&str], config: &Path, log: &Path) -> Child {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SOFTHSM2_CONF", &self.conf)
            .env("ASSET_AGENT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }
}

fn config(dev: &Device, emu: &emulator::Emulator, module: &Path) -> PathBuf {
    let p = dev.write_config(emu, "", "");
    let toml = std::fs::read_to_string(&p).unwrap().replace(
        &format!("[key]\npath = \"{}/device-key.pem\"", dev.dir.path().display()),
        &format!(
            "[key]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=agent;object=device-key\"\nmodule = \"{}\"\npin_file = \"{}\"",
            module.display(),
            dev.path("pin").display()
        ),
    );
    assert!(toml.contains("backend = \"pkcs11\""));
    std::fs::write(&p, toml).unwrap();
    p
}

async fn stop(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

/// `asset-agent key show --jwk`.
async fn public_jwk(token: &Token, config: &Path, log: &Path) -> RsaPublicJwk {
    let out = token
        .agent(&["key", "show", "--jwk"], config, log)
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(log).unwrap()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// POST /v1/sign and the result: 200 with a JWT verified by `jwk`, or the status.
async fn sign(socket: &Path, jwk: &RsaPublicJwk) -> Result<(), u16> {
    let r = client::post_json(
        socket,
        "/v1/sign",
        r#"{"aud":"https://backend.example.com"}"#,
    )
    .await
    .unwrap();
    if r.status != 200 {
        return Err(r.status.as_u16());
    }
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    let jwt = body["jwt"].as_str().unwrap();
    let parts = jws::decode_unverified::<Value, Value>(jwt).unwrap();
    assert!(jwk.verify_rs256(parts.signing_input.as_bytes(), &parts.signature));
    assert_eq!(parts.header["kid"], jwk.kid.as_str());
    Ok(())
}

fn log_of(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test]
async fn key_on_softhsm_serves_signs_survives_restart_and_token_loss() {
    let Some(module) = module() else {
        eprintln!("skipped: SoftHSM2 is not installed");
        return;
    };
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    std::fs::remove_file(dev.path("device-key.pem")).unwrap();
    let token = Token::init(&dev);
    write_0600(&dev.path("pin"), format!("{PIN}\n").as_bytes());
    let config = config(&dev, &emu, &module);

    // First start: the key is generated on the token; the token path runs on it.
    let log = dev.path("agent-1.log");
    let agent = token.agent(&["run"], &config, &log);
    let body = wait_for_token(&dev.socket()).await;
    let claims = verify_with_jwks(&emu, body["token"].as_str().unwrap());
    assert!(
        log_of(&log).contains("device key generated"),
        "{}",
        log_of(&log)
    );
    let jwk = public_jwk(&token, &config, &dev.path("show.log")).await;
    assert_eq!(jwk.kid, jwk.thumbprint());
    let assets = emu.assets();
    assert_eq!(assets.len(), 1);
    assert_eq!(claims["sub"], assets[0].id.as_str());
    let status: Value = serde_json::from_slice(
        &client::get_json(&dev.socket(), "/v1/status")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(status["key_thumbprint"], jwk.kid.as_str(), "{status}");
    sign(&dev.socket(), &jwk).await.unwrap();
    assert!(
        !dev.path("device-key.pem").exists(),
        "no key file is written"
    );

    // The token goes away while serving, and comes back: the next signature after it is
    // back re-opens the session and succeeds.
    let away = dev.path("tokens-away");
    std::fs::rename(&token.dir, &away).unwrap();
    let gone = sign(&dev.socket(), &jwk).await;
    std::fs::rename(&away, &token.dir).unwrap();
    sign(&dev.socket(), &jwk).await.unwrap_or_else(|s| {
        panic!(
            "after the token came back: {s} (while gone: {gone:?})\n{}",
            log_of(&log)
        )
    });
    stop(agent).await;

    // Restart: the same key (same kid), the same Asset.
    let log = dev.path("agent-2.log");
    let agent = token.agent(&["run"], &config, &log);
    let _ = std::fs::remove_file(dev.path(asset_agent::token::cache::FILE_NAME));
    wait_for_token(&dev.socket()).await;
    assert!(
        log_of(&log).contains("device key loaded"),
        "{}",
        log_of(&log)
    );
    sign(&dev.socket(), &jwk).await.unwrap();
    assert_eq!(emu.assets().len(), 1);

    // The key is deleted from the token while serving: signing fails with the fix.
    let out = token
        .tool("pkcs11-tool")
        .args(["--module"])
        .arg(&module)
        .args([
            "--token-label",
            "agent",
            "--login",
            "--pin",
            PIN,
            "--delete-object",
            "--type",
            "privkey",
            "--label",
            "device-key",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sign(&dev.socket(), &jwk).await, Err(503));
    let text = log_of(&log);
    assert!(
        text.contains("the token has no private key pkcs11:token=agent;object=device-key (module ")
            && text.contains("run `asset-agent key generate` to create one on the token"),
        "{text}"
    );
    stop(agent).await;
}

#[tokio::test]
async fn a_wrong_pin_is_tried_once_and_named_with_the_fix() {
    let Some(module) = module() else {
        eprintln!("skipped: SoftHSM2 is not installed");
        return;
    };
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let token = Token::init(&dev);
    let config = config(&dev, &emu, &module);
    write_0600(&dev.path("pin"), b"0000\n");
    let log = dev.path("wrong.log");
    let out = token
        .agent(&["run"], &config, &log)
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", log_of(&log));
    let text = log_of(&log);
    let pin = dev.path("pin");
    let want = format!(
        "the token pkcs11:token=agent;object=device-key (module {}) refused the PIN in {} (CKR_PIN_INCORRECT); it was tried once and is not retried, so the agent does not lock the token: put the token's user PIN into {} and restart the agent",
        module.display(),
        pin.display(),
        pin.display()
    );
    assert!(text.contains(&want), "{text}");
    assert!(!text.contains("0000"), "the PIN is never printed: {text}");

    // The token is not locked: the right PIN works at once.
    write_0600(&pin, format!("{PIN}\n").as_bytes());
    let out = token
        .agent(&["key", "generate"], &config, &dev.path("gen.log"))
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", log_of(&dev.path("gen.log")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("created pkcs11:token=agent;object=device-key"),
        "{stdout}"
    );

    // A PIN in the URI is refused at load time.
    let bad = std::fs::read_to_string(&config)
        .unwrap()
        .replace("object=device-key\"", "object=device-key?pin-value=4711\"");
    std::fs::write(&config, bad).unwrap();
    let out = token
        .agent(&["key", "show"], &config, &dev.path("uri.log"))
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(log_of(&dev.path("uri.log")).contains("pin-value is not accepted"));
}

#[tokio::test]
async fn two_agents_creating_at_once_make_one_key() {
    let Some(module) = module() else {
        eprintln!("skipped: SoftHSM2 is not installed");
        return;
    };
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let token = Token::init(&dev);
    write_0600(&dev.path("pin"), PIN.as_bytes());
    let config = config(&dev, &emu, &module);
    let (a, b) = (dev.path("a.log"), dev.path("b.log"));
    let (ra, rb) = tokio::join!(
        token
            .agent(&["key", "generate"], &config, &a)
            .wait_with_output(),
        token
            .agent(&["key", "generate"], &config, &b)
            .wait_with_output(),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra.status.success() && rb.status.success(),
        "{}\n{}",
        log_of(&a),
        log_of(&b)
    );
    let outs = [
        String::from_utf8_lossy(&ra.stdout).into_owned(),
        String::from_utf8_lossy(&rb.stdout).into_owned(),
    ];
    let created = outs.iter().filter(|o| o.starts_with("created ")).count();
    assert_eq!(created, 1, "{outs:?}");
    let kid = |o: &str| o.lines().last().unwrap().to_owned();
    assert_eq!(kid(&outs[0]), kid(&outs[1]));
    let out = token
        .tool("pkcs11-tool")
        .args(["--module"])
        .arg(&module)
        .args([
            "--token-label",
            "agent",
            "--login",
            "--pin",
            PIN,
            "--list-objects",
            "--type",
            "privkey",
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        listing.matches("label:      device-key").count(),
        1,
        "{listing}"
    );
}
