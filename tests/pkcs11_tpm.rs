//! The PKCS#11 key backend against a software TPM 2.0: swtpm, started by the test in a temp
//! dir, reached by tpm2-pkcs11 straight over its TCP TCTI (no resource manager), with the
//! tpm2-pkcs11 store in the same temp dir. One TPM for the whole path (RSA key generation
//! in swtpm is slow): a wrong PIN first (tried once: the TPM's lockout counter reads 1), then
//! the key generated in the TPM, the token path and `/v1/sign` on it, the TPM killed and
//! restarted while serving, the agent restarted (same key, same Asset), the key deleted.
//!
//! Skips when swtpm or tpm2-pkcs11 is missing, unless ASSET_AGENT_REQUIRE_PKCS11 is set (CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::pkcs11::{config, log_of, public_jwk, sign, sign_jwt, spawn, stop, thumbprint, verify};
use common::{Device, emulator, verify_with_jwks, wait_for_token, write_0600};
use tokio::process::Child;
use wire::clock::Clock;

const MODULES: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
    "/usr/lib/aarch64-linux-gnu/pkcs11/libtpm2_pkcs11.so",
];
const PIN: &str = "4711";
const SO_PIN: &str = "12345678";

fn installed(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// What the TPM tests need, and how to get it.
const TPM: &str =
    "swtpm, tpm2-tools, opensc and libtpm2-pkcs11-1 (scripts/ci-packages.sh installs them)";

/// tpm2-pkcs11's module, when it and the tools the tests drive are installed.
fn module() -> Option<PathBuf> {
    let tools = ["swtpm", "pkcs11-tool", "tpm2_getcap"]
        .iter()
        .all(|t| installed(t));
    let m = MODULES.iter().map(PathBuf::from).find(|p| p.exists());
    m.filter(|_| tools)
}

/// A free port whose successor is free too: the swtpm TCTI finds the control channel
/// on the port after the TPM's.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two adjacent free ports");
}

/// A swtpm process with its state, and the tpm2-pkcs11 store, in `dir`.
struct Tpm {
    dir: PathBuf,
    port: u16,
    ctrl: u16,
    process: Option<std::process::Child>,
}

impl Tpm {
    async fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::create_dir_all(dir.join("store")).unwrap();
        let port = free_port_pair();
        let mut t = Self {
            dir: dir.to_owned(),
            port,
            ctrl: port + 1,
            process: None,
        };
        t.run().await;
        t
    }

    async fn run(&mut self) {
        let child = std::process::Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", self.dir.join("state").display()))
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.ctrl))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.process = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("swtpm did not listen on {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("TPM2_PKCS11_TCTI", self.tcti().into()),
            ("TPM2_PKCS11_STORE", self.dir.join("store").into()),
            ("TPM2_PKCS11_LOG_LEVEL", "0".into()),
        ]
    }

    fn tool(&self, name: &str) -> std::process::Command {
        let mut c = std::process::Command::new(name);
        c.envs(self.env()).env("TPM2TOOLS_TCTI", self.tcti());
        c
    }

    fn run_tool(&self, name: &str, args: &[&str]) -> String {
        if name == "pkcs11-tool" {
            self.flush_transients();
        }
        let out = self.tool(name).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{name} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// With no resource manager between the processes and swtpm, a process that exits
    /// leaves its loaded objects and sessions in the TPM (a board's `/dev/tpmrm0` or
    /// tpm2-abrmd flushes them); swtpm holds only a few, so flush them before a tool runs
    /// while no agent is running.
    fn flush_transients(&self) {
        for kind in ["-t", "-l", "-s"] {
            let out = self.tool("tpm2_flushcontext").arg(kind).output().unwrap();
            assert!(
                out.status.success(),
                "tpm2_flushcontext {kind}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn agent(&self, args: &[&str], config: &Path, log: &Path) -> Child {
        spawn(&self.env(), args, config, log)
    }

    /// TPM2_PT_LOCKOUT_COUNTER: failed authorisations the TPM counts towards lockout.
    fn lockout_counter(&self) -> u64 {
        let out = self.run_tool("tpm2_getcap", &["properties-variable"]);
        let line = out
            .lines()
            .skip_while(|l| !l.starts_with("TPM2_PT_LOCKOUT_COUNTER"))
            .nth(0)
            .unwrap_or_else(|| panic!("{out}"));
        let hex = line.rsplit("0x").next().unwrap().trim();
        u64::from_str_radix(hex, 16).unwrap()
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn key_in_a_software_tpm_serves_survives_restarts_and_fails_clearly() {
    let module = testkit::require!(testkit::PKCS11, module(), "{TPM}");
    let emu = emulator(Clock::system(), |_| {}).await;
    let dev = Device::new(&emu);
    std::fs::remove_file(dev.path("device-key.pem")).unwrap();
    let mut tpm = Tpm::start(&dev.path("tpm")).await;
    let m = module.to_str().unwrap();
    tpm.run_tool(
        "pkcs11-tool",
        &[
            "--module",
            m,
            "--init-token",
            "--label",
            "agent",
            "--so-pin",
            SO_PIN,
        ],
    );
    tpm.run_tool(
        "pkcs11-tool",
        &[
            "--module",
            m,
            "--token-label",
            "agent",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--init-pin",
            "--pin",
            PIN,
        ],
    );
    let config = config(&dev, &emu, &module);
    let pin = dev.path("pin");

    // A wrong PIN: one attempt, the exact message, and the TPM counted exactly one failure.
    let before = tpm.lockout_counter();
    write_0600(&pin, b"9999\n");
    let log = dev.path("wrong.log");
    let out = tpm
        .agent(&["run"], &config, &log)
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", log_of(&log));
    let want = format!(
        "the token pkcs11:token=agent;object=device-key (module {}) refused the PIN in {} (CKR_PIN_INCORRECT); it was tried once and is not retried",
        module.display(),
        pin.display()
    );
    assert!(log_of(&log).contains(&want), "{}", log_of(&log));
    assert!(
        tpm.lockout_counter() <= before + 1,
        "more than one PIN attempt"
    );

    // First start with the right PIN: the key is generated in the TPM. (Without a resource
    // manager a second process cannot load objects while the agent holds the TPM's few
    // slots, so the public key is read with `key show` once the agent has stopped.)
    write_0600(&pin, format!("{PIN}\n").as_bytes());
    let log = dev.path("agent-1.log");
    let agent = tpm.agent(&["run"], &config, &log);
    let body = wait_for_token(&dev.socket()).await;
    verify_with_jwks(&emu, body["token"].as_str().unwrap());
    assert!(
        log_of(&log).contains("device key generated"),
        "{}",
        log_of(&log)
    );
    let kid = thumbprint(&dev.socket()).await;
    let first = sign_jwt(&dev.socket()).await.unwrap();
    assert_eq!(emu.assets().len(), 1);

    // The TPM goes away while serving (swtpm killed) and comes back.
    tpm.kill();
    assert_eq!(sign_jwt(&dev.socket()).await, Err(503));
    tpm.run().await;
    let second = sign_jwt(&dev.socket())
        .await
        .unwrap_or_else(|s| panic!("after the TPM came back: {s}\n{}", log_of(&log)));
    assert!(
        log_of(&log).contains("the token session failed; re-opening it and trying once more"),
        "{}",
        log_of(&log)
    );
    stop(agent).await;
    let show = dev.path("show.log");
    let jwk = public_jwk(tpm.agent(&["key", "show", "--jwk"], &config, &show), &show).await;
    assert_eq!(jwk.kid, kid);
    verify(&first, &jwk);
    verify(&second, &jwk);

    // Restart: same key, same Asset.
    let _ = std::fs::remove_file(dev.path(asset_agent::token::cache::FILE_NAME));
    let log = dev.path("agent-2.log");
    let agent = tpm.agent(&["run"], &config, &log);
    wait_for_token(&dev.socket()).await;
    assert!(
        log_of(&log).contains("device key loaded"),
        "{}",
        log_of(&log)
    );
    assert_eq!(thumbprint(&dev.socket()).await, kid);
    sign(&dev.socket(), &jwk).await.unwrap();
    assert_eq!(emu.assets().len(), 1);
    stop(agent).await;

    // The key is deleted: the next open fails and says how to fix it. (tpm2-pkcs11 keeps
    // a process's objects loaded, so a deletion by another process shows at the next open.)
    tpm.run_tool(
        "pkcs11-tool",
        &[
            "--module",
            m,
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
        ],
    );
    let log = dev.path("deleted.log");
    let out = tpm
        .agent(&["key", "show"], &config, &log)
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let want = format!(
        "the token has no private key pkcs11:token=agent;object=device-key (module {}): it was deleted or never created; run `asset-agent key generate` to create one on the token",
        module.display()
    );
    assert!(log_of(&log).contains(&want), "{}", log_of(&log));
}
