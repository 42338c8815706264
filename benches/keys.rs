//! Sign latency per device key backend (docs/benchmarks.md, "Key backends"): one RS256
//! signature over a 300-byte actor-token-sized input, through [`keys::open`] exactly as the
//! agent opens its key. The file backend always; SoftHSM2 and swtpm when
//! `scripts/bench-keys.sh` has set up their tokens and passes their `[key]` tables as TOML
//! files in ASSET_AGENT_BENCH_KEYS (colon-separated `name=path` pairs).
//!
//! Usage: `scripts/bench-keys.sh` (it builds, sets up the tokens and runs this). Without
//! `--bench` on its command line (as under `cargo test --benches`) it does nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::disallowed_methods)] // measured on the real clock, not scheduled

use std::path::Path;
use std::time::{Duration, Instant};

use asset_agent::config::{Key, KeyBackend};
use asset_agent::keys::{self, Mode};

const SIGNS: usize = 200;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = Key {
        backend: KeyBackend::File {
            path: dir.path().join("device-key.pem"),
        },
        bits: 2048,
    };
    let mut backends = vec![("file".to_owned(), file)];
    for pair in std::env::var("ASSET_AGENT_BENCH_KEYS")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
    {
        let (name, path) = pair.split_once('=').unwrap();
        backends.push((name.to_owned(), load(Path::new(path))));
    }
    let message = vec![b'a'; 300];
    println!("backend   open(first, ms)  sign p50 (ms)  sign p90 (ms)  sign max (ms)");
    for (name, key) in backends {
        let t = Instant::now();
        let opened = keys::open(&key, Mode::OpenOrCreate).unwrap();
        let open = t.elapsed();
        let mut times: Vec<Duration> = (0..SIGNS)
            .map(|_| {
                let t = Instant::now();
                let sig = opened.signer.sign_rs256(&message).unwrap();
                let d = t.elapsed();
                assert!(opened.signer.public_jwk().verify_rs256(&message, &sig));
                d
            })
            .collect();
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name:<9} {:>15.1}  {:>13.2}  {:>13.2}  {:>13.2}",
            ms(open),
            ms(times[SIGNS / 2]),
            ms(times[SIGNS * 9 / 10]),
            ms(times[SIGNS - 1])
        );
    }
}

/// A whole agent config file whose `[key]` is the one to bench.
fn load(path: &Path) -> Key {
    let options = asset_agent::config::LoadOptions::new(
        Some(path.to_owned()),
        std::collections::HashMap::new(),
    );
    asset_agent::config::Config::load(&options).unwrap().key
}
