//! The built-in Salesforce emulator: an offline stand-in for an org, used by the tests, the
//! demo and developers without an org (spec §6).
//!
//! It serves the same paths, fields and error bodies as Salesforce for every grant the
//! agent uses (refresh token, client credentials, JWT bearer, device flow), the RFC 8693
//! token exchange with Asset registration, and `/id/keys`. It is deliberately strict
//! (exact exchange fields, verified actor tokens, dead rotated refresh tokens) so the agent
//! is tested against the rules rather than against a forgiving fake, and it can be told to
//! misbehave ([`Faults`]) so tests can prove the agent recovers.
//!
//! Everything a test needs is reachable twice: over HTTP under `/__emulator/` (for the demo
//! and out-of-process use) and as a method on [`Emulator`] (for in-process tests).
//!
//! All wall time comes from [`Config::clock`] plus the emulator's own skew, so tests can
//! run it on tokio's paused clock.
//!
//! Layout: `shared` (what handlers share, the emulator clock), `server` (accept loop,
//! routing, `Date`), `token_endpoint` (the token endpoint's dispatch), `oauth` + `bearer`
//! (subject-token grants),
//! `device` (device flow), `exchange` + `actor` (token exchange), `state` (tables),
//! `signing` (key, JWKS, certificate), `faults` + `armed`, `stats`, `inspect` (control routes),
//! `common` (error bodies, forms, randomness).

mod actor;
mod armed;
mod bearer;
mod common;
mod device;
mod device_auth;
mod exchange;
mod faults;
mod inspect;
mod oauth;
mod server;
mod shared;
mod signing;
mod state;
mod stats;
#[cfg(test)]
mod testing;
mod token_endpoint;

pub use armed::{ArmedDelay, ArmedFailure, ArmedMalformed, PendingFaults};
pub use faults::{Fault, Faults, Scope};
pub use signing::KeyError;
pub use state::{Asset, AssetTokenEvent, Registration};
pub use stats::{Endpoint, FaultKind, Grant, Stats};

pub(crate) use shared::Shared;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::lock;
use wire::Secret;
use wire::clock::Clock;
use wire::jose::RsaPublicJwk;
use wire::oauth::Jwks;

/// The consumer key the emulator's connected app has unless configured otherwise.
pub const DEFAULT_CLIENT_ID: &str = "3MVG9EMULATOR.asset-agent";
/// Lifetime of opaque access tokens (the org's session timeout).
pub const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(2 * 3600);
/// Lifetime of asset tokens; Salesforce's own sample shows 60 s.
pub const DEFAULT_ASSET_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// The audience configured on the emulated connected app.
pub const DEFAULT_AUDIENCE: &str = "https://ingest.example.com";
pub const DEFAULT_DEVICE_POLL_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_DEVICE_CODE_LIFETIME: Duration = Duration::from_secs(600);
/// Where the control and inspection routes live, outside any Salesforce path.
pub const CONTROL_PREFIX: &str = "/__emulator";

/// How the emulated org and its connected app are set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The connected app's consumer key; every grant must present it.
    pub client_id: String,
    /// The consumer secret. When set, refresh-token and client-credentials requests must
    /// carry it (form field or HTTP Basic); client credentials need one.
    pub client_secret: Option<Secret>,
    /// How long an access token stays valid (Salesforce's session timeout).
    pub session_lifetime: Duration,
    /// `exp - iat` of issued asset tokens, also reported as `expires_in`.
    pub asset_token_lifetime: Duration,
    /// Refresh-token rotation: each refresh returns a new refresh token, the old one dies.
    pub rotate_refresh_tokens: bool,
    /// The `aud` values put into asset tokens.
    pub audiences: Vec<String>,
    /// The device-flow `interval`; polling faster earns `slow_down`.
    pub device_poll_interval: Duration,
    /// How long a device code can be polled before `expired_token`.
    pub device_code_lifetime: Duration,
    /// The asset-token signing key (PKCS#8 PEM). `None` generates a 2048-bit key.
    pub signing_key_pem: Option<Secret>,
    /// The key behind the bad-signature fault (PKCS#8 PEM). `None` generates one on first use.
    pub impostor_key_pem: Option<Secret>,
    /// Certificates (as JWKs) accepted for JWT-bearer assertions, in addition to those
    /// registered later.
    pub jwt_bearer_keys: Vec<RsaPublicJwk>,
    /// Status for an unknown or expired `subject_token` in an exchange. The spec allows 400
    /// or 401; the emulator answers 400 `invalid_grant` (RFC 6749 §5.2) unless told otherwise,
    /// so tests can cover both.
    pub subject_token_error_status: StatusCode,
    /// A path prefix for the Salesforce routes, like an Experience Cloud site
    /// (`/support`); empty for a My Domain URL. Control routes stay at the root.
    pub site_prefix: String,
    /// Wall time for everything the emulator issues and checks.
    pub clock: Clock,
}

/// Why the emulator could not start or a control action failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not read the emulator's listening address")]
    LocalAddr(#[source] std::io::Error),
    #[error("could not load the emulator signing key")]
    SigningKey(#[source] KeyError),
    #[error("could not generate an RSA key for the emulator")]
    GenerateKey,
    #[error("could not make the asset-signing certificate")]
    Certificate(#[source] rcgen::Error),
    #[error("site prefix {0:?} must start with '/' and not end with one")]
    SitePrefix(String),
    #[error("could not listen on {addr} again")]
    Rebind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no device authorisation has user code {0}")]
    UnknownUserCode(String),
    #[error("fault not accepted: {0}")]
    BadFault(String),
    #[error("the emulator could not produce a random value")]
    Random,
    #[error("the emulator has shut down")]
    Stopped,
}

/// A running emulator. Dropping it stops the server (without waiting); prefer
/// [`Emulator::shutdown`] to also let open connections finish.
pub struct Emulator {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

// === impl Config ===

impl Config {
    /// The defaults for `client_id`: a 2-hour session, 60 s asset tokens, no rotation, one
    /// audience, generated keys, the system clock.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: None,
            session_lifetime: DEFAULT_SESSION_LIFETIME,
            asset_token_lifetime: DEFAULT_ASSET_TOKEN_LIFETIME,
            rotate_refresh_tokens: false,
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
            device_poll_interval: DEFAULT_DEVICE_POLL_INTERVAL,
            device_code_lifetime: DEFAULT_DEVICE_CODE_LIFETIME,
            signing_key_pem: None,
            impostor_key_pem: None,
            jwt_bearer_keys: Vec::new(),
            subject_token_error_status: StatusCode::BAD_REQUEST,
            site_prefix: String::new(),
            clock: Clock::system(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::new(DEFAULT_CLIENT_ID)
    }
}

// === impl Emulator ===

impl Emulator {
    /// Loads the keys and starts serving on `listener` in a spawned task.
    ///
    /// # Errors
    /// When the key or certificate cannot be made, the site prefix is malformed or the
    /// listener has no local address.
    pub async fn start(mut config: Config, listener: TcpListener) -> Result<Self, Error> {
        let prefix = &config.site_prefix;
        if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) {
            return Err(Error::SitePrefix(prefix.clone()));
        }
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        let keys = signing::Keys::load(
            config.signing_key_pem.take(),
            config.impostor_key_pem.take(),
        )
        .await?;
        let mut state = state::State::default();
        for jwk in std::mem::take(&mut config.jwt_bearer_keys) {
            state.add_jwt_bearer_key(jwk);
        }
        // A wildcard listener is reached over loopback; IPv6 literals need brackets.
        let host = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) if ip.is_unspecified() => format!("[{}]", Ipv6Addr::LOCALHOST),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let base_url = format!("http://{host}:{}{}", addr.port(), config.site_prefix);
        let shared = Arc::new(Shared::new(config, addr, base_url, keys, state));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::run(shared.clone(), listener, shutdown.clone()));
        tracing::debug!(%addr, "emulator listening");
        Ok(Self {
            shared,
            shutdown,
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The instance URL: `http://IP:PORT` plus the site prefix.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The fault-injection control.
    pub fn faults(&self) -> Faults {
        Faults::new(self.shared.clone())
    }

    /// Issues a refresh token, as if a person had authorised the app (same as
    /// `POST /__emulator/refresh-tokens`).
    ///
    /// # Errors
    /// [`Error::Random`] if no randomness is available.
    pub fn mint_refresh_token(&self) -> Result<Secret, Error> {
        inspect::mint_refresh_token(&self.shared).map_err(|_| Error::Random)
    }

    /// Issues an access token directly, skipping any grant (same as
    /// `POST /__emulator/access-tokens`).
    ///
    /// # Errors
    /// [`Error::Random`] if no randomness is available.
    pub fn mint_access_token(&self) -> Result<Secret, Error> {
        inspect::mint_access_token(&self.shared).map_err(|_| Error::Random)
    }

    /// Every access token issued so far, live or expired, so a test can check that none
    /// of them leaks into a log. (No HTTP route: tokens stay in-process.)
    pub fn issued_access_tokens(&self) -> Vec<Secret> {
        lock(&self.shared.state)
            .access_tokens()
            .map(Secret::new)
            .collect()
    }

    /// The Asset table (`GET /__emulator/assets`).
    pub fn assets(&self) -> Vec<Asset> {
        lock(&self.shared.state).assets().to_vec()
    }

    /// The AssetTokenEvent log, oldest first (`GET /__emulator/events`).
    pub fn events(&self) -> Vec<AssetTokenEvent> {
        lock(&self.shared.state).events().to_vec()
    }

    /// All counters (`GET /__emulator/stats`).
    pub fn stats(&self) -> Stats {
        lock(&self.shared.stats).clone()
    }

    /// Requests seen on `endpoint`.
    pub fn request_count(&self, endpoint: Endpoint) -> u64 {
        lock(&self.shared.stats).endpoint(endpoint)
    }

    /// Token-endpoint requests seen for `grant`.
    pub fn grant_count(&self, grant: Grant) -> u64 {
        lock(&self.shared.stats).grant(grant)
    }

    /// Approves a pending device authorisation (`POST /__emulator/device/approve`).
    ///
    /// # Errors
    /// [`Error::UnknownUserCode`] if no authorisation has that code.
    pub fn approve_device(&self, user_code: &str) -> Result<(), Error> {
        device::decide(&self.shared, user_code, true)
    }

    /// Denies a pending device authorisation (`POST /__emulator/device/deny`).
    ///
    /// # Errors
    /// [`Error::UnknownUserCode`] if no authorisation has that code.
    pub fn deny_device(&self, user_code: &str) -> Result<(), Error> {
        device::decide(&self.shared, user_code, false)
    }

    /// Accepts `jwk` for JWT-bearer assertions (`POST /__emulator/jwt-bearer-keys`).
    pub fn register_jwt_bearer_key(&self, jwk: RsaPublicJwk) {
        lock(&self.shared.state).add_jwt_bearer_key(jwk);
    }

    /// The JWKS served at `/id/keys`.
    pub fn jwks(&self) -> Jwks {
        self.shared.keys.jwks().clone()
    }

    /// The asset-signing certificate (`GET /__emulator/asset-signing-cert.pem`).
    pub fn certificate_pem(&self) -> &str {
        self.shared.keys.certificate_pem()
    }

    /// The emulator's current wall time (its clock plus any injected skew).
    pub fn now(&self) -> SystemTime {
        self.shared.now()
    }

    /// Stops the server and waits (up to 5 s) for open connections to finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.shared.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.tracker.wait()).await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}
