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

use asset_agent::client;
use common::pkcs11::{config, log_of, public_jwk, sign, spawn, stop};
use common::{Device, emulator, verify_with_jwks, wait_for_token, write_0600};
use serde_json::Value;
use tokio::process::Child;
use wire::clock::Clock;
const MODULES: [&str; 2] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
];
const PIN: &str = "4711";

/// What the SoftHSM tests need, and how to get it.
const SOFTHSM: &str = "SoftHSM2 (scripts/ci-packages.sh installs it: apt-get install softhsm2)";

/// SoftHSM2's PKCS#11 module, when SoftHSM2 is installed.
fn module() -> Option<PathBuf> {
    let tool = std::process::Command::new("softhsm2-util")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let m = MODULES.iter().map(PathBuf::from).find(|p| p.exists());
    m.filter(|_| tool)
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

    /// `pkcs11-tool` logged in to the token as its user, with `args`; its stdout.
    fn as_user(&self, module: &Path, args: &[&str]) -> String {
        let out = self
            .tool("pkcs11-tool")
            .arg("--module")
            .arg(module)
            .args(["--token-label", "agent", "--login", "--pin", PIN])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn agent(&self, args: &[&str], config: &Path, log: &Path) -> Child {
        spawn(
            &[("SOFTHSM2_CONF", self.conf.clone().into())],
            args,
            config,
            log,
        )
    }
}

#[tokio::test]
async fn key_on_softhsm_serves_signs_survives_restart_and_token_loss() {
    let module = testkit::require!(testkit::PKCS11, module(), "{SOFTHSM}");
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
    let show = dev.path("show.log");
    let jwk = public_jwk(
        token.agent(&["key", "show", "--jwk"], &config, &show),
        &show,
    )
    .await;
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
    assert_eq!(gone, Err(503), "{}", log_of(&log));
    let text = log_of(&log);
    assert!(
        text.contains("the token session failed; re-opening it and trying once more")
            && text.contains(&format!(
                "the PKCS#11 module {} failed to initialise (for pkcs11:token=agent;object=device-key): check that the token is present",
                module.display()
            )),
        "{text}"
    );
    sign(&dev.socket(), &jwk).await.unwrap_or_else(|s| {
        panic!(
            "after the token came back: {s} (while gone: {gone:?})\n{}",
            log_of(&log)
        )
    });
    stop(agent).await;

    // Started while the token is not there (an HSM enumerated late at boot): exit 75
    // (EX_TEMPFAIL), so systemd starts it again (78 would stop it for good:
    // RestartPreventExitStatus=78).
    std::fs::rename(&token.dir, &away).unwrap();
    let log = dev.path("absent.log");
    let out = token
        .agent(&["run"], &config, &log)
        .wait_with_output()
        .await
        .unwrap();
    std::fs::rename(&away, &token.dir).unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", log_of(&log));
    assert!(
        log_of(&log).contains("check that the token is present"),
        "{}",
        log_of(&log)
    );

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
    token.as_user(
        &module,
        &[
            "--delete-object",
            "--type",
            "privkey",
            "--label",
            "device-key",
        ],
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

/// The `key` finding of `asset-agent check --json`.
async fn check_key(token: &Token, config: &Path, log: &Path) -> Value {
    let out = token
        .agent(&["check", "--json"], config, log)
        .wait_with_output()
        .await
        .unwrap();
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", log_of(log)));
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "key")
        .cloned()
        .unwrap_or_else(|| panic!("{report:#}"))
}

#[tokio::test]
async fn a_wrong_pin_is_tried_once_and_named_with_the_fix() {
    let module = testkit::require!(testkit::PKCS11, module(), "{SOFTHSM}");
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

    // `check` names the same problem and its fix; it too offers the PIN once.
    let key = check_key(&token, &config, &dev.path("check-1.log")).await;
    assert_eq!(key["severity"], "error", "{key}");
    assert!(
        key["message"].as_str().unwrap().contains("refused the PIN"),
        "{key}"
    );
    assert!(
        key["fix"]
            .as_str()
            .unwrap()
            .contains("never retries a refused PIN"),
        "{key}"
    );

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
    let key = check_key(&token, &config, &dev.path("check-2.log")).await;
    assert_eq!(key["severity"], "ok", "{key}");
    assert!(
        key["message"].as_str().unwrap().contains(
            "module loaded, token found, logged in, RSA 2048 bits, test signature verified, thumbprint "
        ),
        "{key}"
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
    let module = testkit::require!(testkit::PKCS11, module(), "{SOFTHSM}");
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
    let listing = token.as_user(&module, &["--list-objects", "--type", "privkey"]);
    assert_eq!(
        listing.matches("label:      device-key").count(),
        1,
        "{listing}"
    );
}

/// A gateway whose children keep their keys on one token and share a PIN file with the
/// wrong PIN: the token is offered that PIN once in all, not once per child (a token
/// that locks after a few wrong PINs would be locked by a handful of children), and every
/// child names the refused PIN file.
#[tokio::test]
async fn children_sharing_a_token_offer_a_refused_pin_once_in_all() {
    let module = testkit::require!(testkit::PKCS11, module(), "{SOFTHSM}");
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    let token = Token::init(&dev);
    let pin = dev.path("pin");
    write_0600(&pin, b"95173\n");
    let config = dev.write_config(&emu, "", "");
    let mut toml = std::fs::read_to_string(&config).unwrap();
    let names = ["meter-2", "pump-7", "tag-9"];
    for (i, name) in names.iter().enumerate() {
        toml.push_str(&format!(
            "\n[children.{name}]\ndevice_id = \"gw-{name}\"\nname = \"{name}\"\nserial_number = \"S-{i}\"\n[children.{name}.key]\nbackend = \"pkcs11\"\nuri = \"pkcs11:token=agent;object={name}\"\nmodule = \"{}\"\npin_file = \"{}\"\n",
            module.display(),
            pin.display()
        ));
    }
    std::fs::write(&config, toml).unwrap();
    let log = dev.path("children.log");
    let agent = spawn(
        &[
            ("SOFTHSM2_CONF", token.conf.clone().into()),
            ("ASSET_AGENT_LOG", "debug".into()),
        ],
        &["run"],
        &config,
        &log,
    );
    wait_for_token(&dev.socket()).await;
    let mut text = String::new();
    for _ in 0..300 {
        text = log_of(&log);
        if text.matches("could not start the child").count() == names.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop(agent).await;
    let failed = text.matches("could not start the child").count();
    assert_eq!(failed, names.len(), "{text}");
    assert_eq!(
        text.matches(&format!("refused the PIN in {}", pin.display()))
            .count(),
        names.len(),
        "{text}"
    );
    assert_eq!(
        text.matches("offering the user PIN to the token").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("95173"), "the PIN is never printed: {text}");
}
