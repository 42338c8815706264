//! Shared by the PKCS#11 tests (SoftHSM2 and swtpm): the agent binary with a token's
//! environment, a config naming the token, and checks on what it signs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Child;
use wire::jose::{RsaPublicJwk, jws};

use crate::common::{Device, body, post, process, status};

/// The agent binary with `args`, `--config config`, the token's `env`, stderr to `log`.
pub fn spawn(env: &[(&str, OsString)], args: &[&str], config: &Path, log: &Path) -> Child {
    let mut c = process::command("info", log);
    c.args(args)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

pub fn config(dev: &Device, emu: &emulator::Emulator, module: &Path) -> PathBuf {
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

pub async fn stop(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

/// The JWK `asset-agent key show --jwk` (already spawned as `child`) prints.
pub async fn public_jwk(child: Child, log: &Path) -> RsaPublicJwk {
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(log).unwrap()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// POST /v1/sign: the JWT, or the status when it is not 200.
pub async fn sign_jwt(socket: &Path) -> Result<String, u16> {
    let r = post(
        socket,
        "/v1/sign",
        r#"{"aud":"https://backend.example.com"}"#,
    )
    .await;
    if r.status != 200 {
        return Err(r.status.as_u16());
    }
    Ok(body(&r)["jwt"].as_str().unwrap().to_owned())
}

/// Checks that `jwt` is signed by `jwk` and names it as its `kid`.
pub fn verify(jwt: &str, jwk: &RsaPublicJwk) {
    let parts = jws::decode_unverified::<Value, Value>(jwt).unwrap();
    assert!(jwk.verify_rs256(parts.signing_input.as_bytes(), &parts.signature));
    assert_eq!(parts.header["kid"], jwk.kid.as_str());
}

/// POST /v1/sign, verified with `jwk`; the status when it is not 200.
pub async fn sign(socket: &Path, jwk: &RsaPublicJwk) -> Result<(), u16> {
    let jwt = sign_jwt(socket).await?;
    verify(&jwt, jwk);
    Ok(())
}

/// The key thumbprint `/v1/status` reports.
pub async fn thumbprint(socket: &Path) -> String {
    status(socket).await["key_thumbprint"]
        .as_str()
        .unwrap()
        .to_owned()
}

pub fn log_of(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
