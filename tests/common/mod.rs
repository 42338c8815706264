//! Shared test harness: an emulator on 127.0.0.1:0 and an agent in a temp dir, talking over
//! a temp-dir socket. Uses the checked-in keys in tests/data (key generation is slow in
//! debug builds).
//!
//! Every integration test declares `mod common;` and takes what it needs from here:
//! - this file: the emulator, a [`Device`] directory with its config, an in-process
//!   [`Agent`], verifying a token against the emulator's JWKS;
//! - [`socket`]: GET, POST and status over the agent's socket, waiting for a token;
//! - [`process`]: the agent binary as a process ([`BIN`], `run`, the CLI's output);
//! - [`fs`]: file modes;
//! - [`api`]: clients under other uids (`setpriv`, `curl`) and raw HTTP;
//! - [`rig`]: the deterministic rig on tokio's paused clock;
//! - [`mqtt`]: an embedded broker that verifies tokens, an observer, a stalling proxy;
//! - [`pkcs11`]: the agent on a PKCS#11 token (SoftHSM2, swtpm).
//!
//! Two files here are not part of the module: `prometheus.rs` (a strict exposition-format
//! parser with its own test, included with `#[path]` by the tests that scrape metrics, so
//! that test runs only there) and `fleet.rs` (the fleet simulation, shared with
//! `benches/fleet.rs`).
//!
//! A test that needs something the machine may lack guards itself with `testkit::require!`
//! (crates/testkit): it skips with a notice, or fails where CI sets `ASSET_AGENT_REQUIRE_*`.
// Each test binary compiles this module on its own and uses only part of it: what one
// binary leaves unused is not dead. Test code may unwrap and panic (a failed test).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;

use asset_agent::agent::{self, Options, Running};
use asset_agent::config::{Config, LoadOptions};
use emulator::{self, Emulator};
use tokio_util::sync::CancellationToken;
use wire::clock::Clock;

pub mod api;
pub mod fs;
pub mod mqtt;
pub mod pkcs11;
pub mod process;
pub mod rig;
pub mod socket;

// The everyday helpers, for `use common::{...}`; what a binary does not use is unused there.
#[allow(unused_imports)]
pub use fs::{chmod, mode, write_0600};
#[allow(unused_imports)]
pub use process::{BIN, alive};
#[allow(unused_imports)]
pub use socket::{body, get, post, status, wait_for_failure, wait_for_token};

pub const DEVICE_KEY: &str = include_str!("../data/device-key.pem");
pub const OTHER_KEY: &str = include_str!("../data/other-key.pem");
pub const EMULATOR_KEY: &str = include_str!("../data/emulator-key.pem");

/// Starts an emulator with the test signing key; `tweak` adjusts its config.
pub async fn emulator(clock: Clock, tweak: impl FnOnce(&mut emulator::Config)) -> Emulator {
    let mut cfg = emulator::Config {
        signing_key_pem: Some(EMULATOR_KEY.to_owned().into()),
        impostor_key_pem: Some(OTHER_KEY.to_owned().into()),
        clock,
        ..emulator::Config::default()
    };
    tweak(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Emulator::start(cfg, listener).await.unwrap()
}

/// A device directory: key, refresh token and socket live here.
pub struct Device {
    pub dir: tempfile::TempDir,
}

impl Device {
    /// A device with the checked-in key and a fresh refresh token from `emu`.
    pub fn new(emu: &Emulator) -> Self {
        Self::with_key(emu, DEVICE_KEY)
    }

    pub fn with_key(emu: &Emulator, key_pem: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = Self { dir };
        write_0600(&d.path("device-key.pem"), key_pem.as_bytes());
        let rt = emu.mint_refresh_token().unwrap();
        write_0600(&d.path("refresh-token"), rt.expose().as_bytes());
        d
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("run/agent.sock")
    }

    /// Writes agent.toml for `emu` with `extra` appended inside the sections given, and
    /// returns its path. `asset_extra` goes into [asset], `token_extra` into [token].
    pub fn write_config(&self, emu: &Emulator, asset_extra: &str, token_extra: &str) -> PathBuf {
        let dir = self.dir.path().display();
        let toml = format!(
            r#"[salesforce]
instance_url = "{url}"
client_id = "{client_id}"
timeout = "5s"

[auth]
refresh_token_file = "{dir}/refresh-token"

[asset]
device_id = "device-0001"
name = "Pump 7"
serial_number = "00123"
account_id = "0011i000006kiTc"
{asset_extra}

[key]
path = "{dir}/device-key.pem"

[state]
dir = "{dir}"

[token]
verify = "jwks"
issuer = "{url}"
{token_extra}

[api]
socket = "{dir}/run/agent.sock"
"#,
            url = emu.base_url(),
            client_id = emulator::DEFAULT_CLIENT_ID,
        );
        let p = self.path("agent.toml");
        std::fs::write(&p, toml).unwrap();
        p
    }

    pub fn config(&self, emu: &Emulator, asset_extra: &str, token_extra: &str) -> Config {
        let p = self.write_config(emu, asset_extra, token_extra);
        Config::load(&LoadOptions::new(Some(p), HashMap::new())).unwrap()
    }
}

/// A started in-process agent and its cancel token.
pub struct Agent {
    pub running: Running,
    pub cancel: CancellationToken,
}

impl Agent {
    pub async fn start(config: &Config, clock: Clock) -> Self {
        let cancel = CancellationToken::new();
        let options = Options {
            clock,
            ..Options::default()
        };
        let running = agent::start(config, options, cancel.clone()).await.unwrap();
        Self { running, cancel }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.running.wait().await;
    }
}

/// Verifies `jwt` against the emulator's JWKS (independently of the agent's verifier).
pub fn verify_with_jwks(emu: &Emulator, jwt: &str) -> serde_json::Value {
    asset_agent::crypto::install();
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    let kid = header.kid.unwrap();
    let jwks = emu.jwks();
    let key = jwks
        .keys
        .iter()
        .find(|k| k.kid.as_deref() == Some(kid.as_str()))
        .expect("kid in JWKS");
    let dk = jsonwebtoken::DecodingKey::from_rsa_components(
        key.n.as_deref().unwrap(),
        key.e.as_deref().unwrap(),
    )
    .unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(jwt, &dk, &v)
        .unwrap()
        .claims
}
