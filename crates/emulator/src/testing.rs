//! Test fixtures: a `Shared` without a server, for driving handlers directly under
//! paused time, and the checked-in keys.

use std::net::SocketAddr;
use std::sync::Arc;

use super::state::State;
use super::{Config, Shared, signing};
use wire::Secret;
use wire::clock::Clock;
use wire::jose::RsaKey;

pub const EMULATOR_KEY: &str = include_str!("../../../tests/data/emulator-key.pem");
pub const OTHER_KEY: &str = include_str!("../../../tests/data/other-key.pem");
pub const DEVICE_KEY: &str = include_str!("../../../tests/data/device-key.pem");

pub fn config() -> Config {
    Config {
        client_secret: Some(Secret::new("s3cret")),
        signing_key_pem: Some(Secret::new(EMULATOR_KEY)),
        impostor_key_pem: Some(Secret::new(OTHER_KEY)),
        clock: Clock::tokio_driven(),
        ..Config::default()
    }
}

pub async fn shared(config: Config) -> Arc<Shared> {
    let keys = signing::Keys::load(
        config.signing_key_pem.clone(),
        config.impostor_key_pem.clone(),
    )
    .await
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], 1));
    Arc::new(Shared::new(
        config,
        addr,
        "http://127.0.0.1:1".to_owned(),
        keys,
        State::default(),
    ))
}

pub fn device_key() -> RsaKey {
    crate::signing::key_from_pem(DEVICE_KEY.as_bytes()).unwrap()
}

pub fn other_key() -> RsaKey {
    crate::signing::key_from_pem(OTHER_KEY.as_bytes()).unwrap()
}
