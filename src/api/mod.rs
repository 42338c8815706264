//! The local API: HTTP/1.1 + JSON over a Unix socket, so `curl --unix-socket` and any
//! language's HTTP client can fetch the asset token (docs/api.md).
//!
//! Layers, outside in:
//! - `listen`: the socket, from systemd ([`activation`]) or bound by us (0660 in a 0750
//!   directory);
//! - `serve`: the accept loop, and hyper serving each connection (hyper is the only HTTP
//!   code: no module here parses HTTP); `conns` caps connections and picks who gives way;
//!   `io` bounds writes and notices a client that hung up;
//! - `peer`: who the caller is (SO_PEERCRED, and SO_PEERGROUPS via `sys`, the crate's
//!   only unsafe code) and their role; `deny` logs refusals without flooding;
//! - [`router`]: the route table (each route's role) and dispatch; [`authorize`]: the one
//!   access rule every route goes through, failing closed;
//!   [`routes`]: one module per route, each serving every identity (the device's own and
//!   a gateway's children, [`crate::gateway::Identity`]); `reply`: the reply helpers they
//!   share.

pub mod activation;
pub mod authorize;
pub(crate) mod body;
pub(crate) mod conns;
pub(crate) mod deny;
pub(crate) mod io;
pub(crate) mod listen;
mod metrics;
pub(crate) mod peer;
pub(crate) mod reply;
pub mod router;
pub mod routes;
pub(crate) mod serve;
pub(crate) mod stats;
mod sys;

pub use listen::Server;

use std::io as stdio;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::gateway::Identity;
use crate::skew::Skew;
use wire::clock::Clock;

/// The socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create the socket directory {}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: stdio::Error,
    },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("another agent is already serving {}", path.display())]
    InUse { path: PathBuf },
    #[error("could not remove the stale socket {}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: stdio::Error,
    },
    #[error("could not bind {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: stdio::Error,
    },
    #[error("could not set the permissions of {}", path.display())]
    Chmod {
        path: PathBuf,
        #[source]
        source: stdio::Error,
    },
    #[error("socket activation failed")]
    Activation(#[source] activation::Error),
}

/// Most header fields in a request; more gets 431. This is hyper's own limit, kept rather
/// than configured: hyper parses into a fixed array of exactly this size, while a configured
/// limit costs it two heap arrays filled element by element on every request.
/// `tests/api_robust.rs` holds the server to it.
pub const MAX_HEADERS: usize = 100;

/// Bounds on what one client can make the server hold or wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Concurrent connections, in total and per uid (`[api]`).
    pub caps: conns::Caps,
    /// A client must send a complete request head within this time of connecting or of
    /// its previous answer; so idle keep-alive and slowloris connections are closed.
    pub header_timeout: Duration,
    /// A request body (only `POST /v1/sign` has one) must arrive within this time.
    pub body_timeout: Duration,
    /// A write to a client that stopped reading fails after this time.
    pub write_timeout: Duration,
    /// Largest request head (request line and headers); more gets 431. The number of
    /// header fields is capped too, at [`MAX_HEADERS`].
    pub max_head_bytes: usize,
    /// How long `POST /v1/refresh` waits for the new token.
    pub refresh_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            caps: conns::Caps {
                total: crate::config::DEFAULT_MAX_CONNECTIONS,
                per_uid: crate::config::DEFAULT_MAX_CONNECTIONS_PER_UID,
            },
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            // hyper's minimum; a token request needs a few hundred bytes.
            max_head_bytes: 16 * 1024,
            refresh_wait: Duration::from_secs(50),
        }
    }
}

/// The server's own bookkeeping.
#[derive(Debug, Default)]
pub struct State {
    pub requests: stats::Requests,
    pub denials: deny::DenialLog,
    /// The open connections, once the server runs.
    pub conns: OnceLock<Arc<conns::Registry>>,
    /// Forced refreshes run one at a time; see [`routes::refresh`].
    pub refresh_gate: tokio::sync::Mutex<()>,
}

/// State every request handler reads.
pub struct Shared {
    /// The device's own identity (`/v1/token`, `/v1/status`, ...).
    pub own: Arc<Identity>,
    /// Which callers hold which role on the socket (the own identity's lists and admins).
    pub policy: peer::Policy,
    pub clock: Clock,
    pub skew: Arc<Skew>,
    /// How long `GET /v1/token?min_ttl=` may wait for a refresh.
    pub min_ttl_wait: Duration,
    pub limits: Limits,
    /// The server's own bookkeeping (also exported as metrics).
    pub state: Arc<State>,
    /// Every series `GET /metrics` exports.
    pub metrics: Arc<crate::metrics::Registry>,
    /// The MQTT uplink, when `[mqtt]` is configured (`POST /v1/mqtt/publish`, status).
    pub mqtt: Option<crate::mqtt::Handle>,
    /// Where `POST /v1/reload` asks the daemon to reload.
    pub reload: routes::reload::Requests,
    /// A gateway's child identities (`/v1/assets/NAME/...`); `None` outside `agent::start`.
    pub children: Option<Arc<crate::gateway::Children>>,
    /// The file sinks, for status.
    pub sinks: Arc<crate::sink::Sinks>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("own", &self.own)
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}
