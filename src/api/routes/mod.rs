//! The handlers of the socket API, one file per route (docs/api.md). [`super::router`]
//! authorises each request and dispatches it here; replies are built with
//! `api::reply`.

pub mod assets;
pub mod health;
pub mod metrics;
pub mod mqtt_publish;
pub mod refresh;
pub mod reload;
pub mod sign;
pub mod status;
pub mod token;
pub mod watch;
