//! In-process cost of one refresh cycle, step by step (docs/benchmarks.md).
//!
//! - `actor/mint`: building and RS256-signing an actor token with the device key (2048-bit
//!   RSA, the checked-in test key), what the agent does once per refresh.
//! - `asset_token/verify`: checking an emulator-issued asset token (JWKS key already cached,
//!   as in steady state: RS256 signature, `iss`, `aud`, `exp`/`nbf`).
//! - `refresh/cycle_with_emulator`: one whole `Flow::fetch` (mint, exchange over loopback
//!   HTTP, verify) against the in-process emulator. This includes the emulator's own work
//!   (verifying the actor token, signing the asset token) on the same thread, so it is an
//!   upper bound on the agent's share; `scripts/bench.sh` measures the agent process alone.
//!
//! Run: `cargo bench --bench refresh`. Not part of `cargo test`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use asset_agent::actor::{self, Identity};
use asset_agent::keys::{FileKey, Signer};
use asset_agent::salesforce::Upstream;
use asset_agent::salesforce::subject::{Credentials, RefreshToken};
use asset_agent::salesforce::verify::Verifier;
use asset_agent::skew::Skew;
use asset_agent::token::flow::Flow;
use criterion::{Criterion, criterion_group, criterion_main};
use emulator::{self, Emulator};
use wire::clock::Clock;
use wire::oauth::AssetFields;

const DEVICE_KEY: &[u8] = include_bytes!("../tests/data/device-key.pem");
const EMULATOR_KEY: &str = include_str!("../tests/data/emulator-key.pem");
const OTHER_KEY: &str = include_str!("../tests/data/other-key.pem");

fn identity() -> Identity {
    Identity {
        device_id: "device-0001".into(),
        token_name: "Asset Token: device-0001".into(),
        asset: AssetFields {
            name: Some("Pump 7".into()),
            serial_number: Some("00123".into()),
            account_id: Some("0011i000006kiTc".into()),
            ..AssetFields::default()
        },
    }
}

fn device_key() -> Arc<dyn Signer> {
    Arc::new(FileKey::from_pem(Path::new("device-key.pem"), DEVICE_KEY).unwrap())
}

/// An emulator on 127.0.0.1:0 and a flow wired to it the way `agent::start` wires one.
struct Setup {
    rt: tokio::runtime::Runtime,
    _emu: Emulator,
    _dir: tempfile::TempDir,
    flow: Flow,
    upstream: Upstream,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    asset_agent::crypto::install();
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::system();
    let (emu, flow, upstream) = rt.block_on(async {
        let cfg = emulator::Config {
            signing_key_pem: Some(EMULATOR_KEY.to_owned().into()),
            impostor_key_pem: Some(OTHER_KEY.to_owned().into()),
            asset_token_lifetime: Duration::from_secs(3600),
            ..emulator::Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emu = Emulator::start(cfg, listener).await.unwrap();
        let rt_path = dir.path().join("refresh-token");
        std::fs::write(&rt_path, emu.mint_refresh_token().unwrap().expose()).unwrap();
        std::fs::set_permissions(&rt_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let url = asset_agent::config::Url::parse(emu.base_url()).unwrap();
        let upstream = Upstream::new(
            &url,
            None,
            Duration::from_secs(10),
            clock.clone(),
            Arc::new(Skew::default()),
        )
        .unwrap();
        let credentials = Credentials::RefreshToken(RefreshToken::new(
            emulator::DEFAULT_CLIENT_ID.into(),
            None,
            rt_path,
        ));
        let verifier = Verifier::new(
            Verifier::jwks(),
            vec![emulator::DEFAULT_AUDIENCE.into()],
            Some(emu.base_url().to_owned()),
            Duration::from_secs(30),
        );
        let flow = Flow::new(
            upstream.clone(),
            credentials,
            device_key(),
            identity(),
            verifier,
            clock,
            tokio::sync::broadcast::channel(1).0,
        );
        (emu, flow, upstream)
    });
    Setup {
        rt,
        _emu: emu,
        _dir: dir,
        flow,
        upstream,
    }
}

fn mint(c: &mut Criterion) {
    let key = device_key();
    let id = identity();
    c.bench_function("actor/mint", |b| {
        b.iter(|| actor::mint(key.as_ref(), black_box(&id), black_box(1_790_000_000)).unwrap())
    });
}

fn verify(c: &mut Criterion) {
    let mut s = setup();
    // One real pass gives an emulator-signed token and fills the verifier's JWKS cache.
    let token = s.rt.block_on(s.flow.fetch()).unwrap();
    let now = s.flow.now();
    let verifier = &s.flow.verifier;
    c.bench_function("asset_token/verify", |b| {
        b.iter(|| {
            s.rt.block_on(verifier.verify(&s.upstream, black_box(&token.jwt), now))
                .unwrap()
        })
    });
}

fn cycle(c: &mut Criterion) {
    let mut s = setup();
    s.rt.block_on(s.flow.fetch()).unwrap();
    let mut group = c.benchmark_group("refresh");
    group.sample_size(30);
    group.bench_function("cycle_with_emulator", |b| {
        b.iter(|| s.rt.block_on(s.flow.fetch()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, mint, verify, cycle);
criterion_main!(benches);
