//! Configuration: where it comes from, what it may say, and the validated [`Config`].
//!
//! Loading happens in two stages (style guide, "Configuration"):
//! 1. **Raw**: the sources are read with the `config` crate and deserialised into serde
//!    types that deny unknown keys and make every field optional (`raw.rs`).
//! 2. **Validated**: one `validate` pass fills defaults, checks every rule and produces
//!    [`Config`] with typed values: `PathBuf`, `Duration`, `Url`, enums (`validate.rs`).
//!
//! Runtime code only ever sees [`Config`]. Its invariants (an `https` or loopback
//! `instance_url`, a `refresh_at` between 10% and 95%, the settings a chosen auth method
//! needs) hold by construction, so nothing downstream re-checks them.
//!
//! Sources, later ones overriding earlier ones key by key (tables merge, lists replace):
//! 1. the main file: `--config`/`ASSET_AGENT_CONFIG`, else the default (see `paths.rs`);
//! 2. drop-ins `agent.d/*.toml` next to the main file, in byte order of their names;
//! 3. environment variables `ASSET_AGENT_<SECTION>__<KEY>`, e.g.
//!    `ASSET_AGENT_SALESFORCE__INSTANCE_URL` for `salesforce.instance_url`.
//!
//! The config holds *paths* to secrets, never secrets: this module reads no secret file
//! (the only file it reads besides the config is `/etc/machine-id`), and the
//! [`Display`](Config#impl-Display-for-Config) summary is safe to log.
//!
//! Files: `load.rs` (sources and merging), `source.rs` (reading one file as a source),
//! `trust.rs` (who may write a config file), `raw.rs`, `validate.rs` (per section), `key.rs` (`[key]`, reusable for any key table) and
//! `rules.rs` (shared rules), `diff.rs` (which keys differ, for reloads), `origin.rs` (which file or variable set a key), `units.rs` (durations, fractions, lists), `paths.rs` (default
//! locations), `error.rs`; tests in `tests/`.

mod children;
mod diff;
mod error;
mod key;
mod load;
mod mqtt;
mod origin;
mod paths;
mod raw;
mod rules;
mod sink;
mod source;
mod trust;
mod units;
mod url;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use self::url::Url;
pub use children::{Access, CHILDREN_DIR, Child, Gateway, valid_name};
pub use diff::changed_keys;
pub use error::Error;
pub use key::{DEFAULT_KEY_FILE, Key, KeyBackend, Pkcs11, Pkcs11Uri};
pub use load::{LoadOptions, NON_CONFIG_VARS};
pub use mqtt::{
    ClientCert, DEFAULT_MQTT_BACKOFF_MAX, DEFAULT_MQTT_HEARTBEAT, DEFAULT_MQTT_KEEP_ALIVE,
    DEFAULT_MQTT_QUEUE, DEFAULT_MQTT_RECONNECT_MARGIN, DEFAULT_MQTT_TOPIC_PREFIX, MAX_MQTT_QUEUE,
    Mqtt,
};
pub use paths::{DROP_IN_DIR, SYSTEM_CONFIG_FILE, SYSTEM_SOCKET, SYSTEM_STATE_DIR};
pub use sink::{
    DEFAULT_HOOK_TIMEOUT, DEFAULT_SINK_MODE, Group, Hook, SINK_MODE_MASK, Signal, Sink, SinkFormat,
};

/// Default for `salesforce.timeout`: the limit on every upstream HTTP call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `auth.audience` (jwt_bearer). Sandboxes use `https://test.salesforce.com`.
pub const DEFAULT_JWT_AUDIENCE: &str = "https://login.salesforce.com";
/// Default for `key.bits`.
pub const DEFAULT_KEY_BITS: usize = 2048;
/// The RSA sizes `key.bits` accepts.
pub const KEY_BITS: [usize; 3] = [2048, 3072, 4096];
/// Default for `token.refresh_at`.
pub const DEFAULT_REFRESH_AT: f64 = 0.8;
/// Bounds for `token.refresh_at`: earlier wastes tokens, later risks serving one that
/// expires before the refresh (with jitter and retries) has finished.
pub const MIN_REFRESH_AT: f64 = 0.10;
/// See [`MIN_REFRESH_AT`].
pub const MAX_REFRESH_AT: f64 = 0.95;
/// Default for `token.leeway`: tolerated clock difference when checking `exp`/`nbf`/`iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default for `token.backoff_max`: the ceiling of the retry backoff.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Default for `token.demand_window`: a token request within it keeps the token fresh.
/// Shorter than the earliest refresh point of 60 s tokens (50 % = 30 s), so an app that asks
/// once an hour costs one exchange an hour, not a chain of refreshes after each request.
pub const DEFAULT_DEMAND_WINDOW: Duration = Duration::from_secs(30);
/// Default for `token.min_ttl_wait`: how long a `?min_ttl=` request waits for its refresh.
pub const DEFAULT_MIN_TTL_WAIT: Duration = Duration::from_secs(2);
/// Default for `token.ready_timeout`: how long start-up waits for a usable token before
/// telling systemd the agent is ready anyway (boot must not wait for the network).
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `api.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Default for `api.max_connections_per_uid`.
pub const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 32;
/// Upper bound for `api.max_connections`: each connection holds a file descriptor.
pub const MAX_MAX_CONNECTIONS: usize = 65_536;
/// Default for `log.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// The validated configuration. Built only by [`Config::load`].
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub salesforce: Salesforce,
    pub auth: Auth,
    pub asset: Asset,
    pub key: Key,
    pub token: Token,
    pub state: State,
    pub api: Api,
    /// `[mqtt]`: the MQTT uplink, `None` (off) unless `mqtt.url` is set.
    pub mqtt: Option<Mqtt>,
    /// `[[sink]]`: files kept holding the current token (empty: none).
    pub sinks: Vec<Sink>,
    pub log: Log,
    /// `[gateway]`: where child files come from.
    pub gateway: Gateway,
    /// Child identities (gateway mode), sorted by name; empty for a plain device.
    pub children: Vec<Child>,
    /// The files that were read, in the order they were applied (main file, drop-ins).
    pub files: Vec<PathBuf>,
    /// `ASSET_AGENT_*` variables that are neither config keys (no `__`) nor one of
    /// [`NON_CONFIG_VARS`]: probably typos such as `ASSET_AGENT_SALESFORCE_INSTANCE_URL`.
    /// They are ignored; `main` should warn about them.
    pub ignored_env: Vec<String>,
}

/// `[salesforce]`: the org and the connected app.
#[derive(Clone, Debug, PartialEq)]
pub struct Salesforce {
    /// My Domain or Experience Cloud site URL; a site's path prefix is kept, a trailing
    /// slash is not. `https`, or `http` for loopback hosts only (the emulator).
    pub instance_url: Url,
    /// The connected app's consumer key, exactly as written.
    pub client_id: String,
    /// File holding the consumer secret (confidential clients, `client_credentials`).
    pub client_secret_file: Option<PathBuf>,
    /// Extra trust anchors (PEM) for a TLS-inspecting proxy or a test server.
    pub ca_file: Option<PathBuf>,
    /// Limit on every upstream call.
    pub timeout: Duration,
}

/// `[auth]`: how the agent obtains the subject access token.
#[derive(Clone, Debug, PartialEq)]
pub struct Auth {
    pub method: AuthMethod,
    /// Read by `refresh_token` and `device_flow`, rewritten when the token rotates, and
    /// written by `asset-agent enroll`. Default `<state.dir>/refresh-token`.
    pub refresh_token_file: PathBuf,
}

/// `auth.method`, with the settings only that method uses.
#[derive(Clone, Debug, PartialEq)]
pub enum AuthMethod {
    /// A stored refresh token (from `asset-agent enroll` or provisioning).
    RefreshToken,
    /// The OAuth 2.0 JWT bearer flow with a pre-authorised user.
    JwtBearer(JwtBearer),
    /// The client credentials flow; `salesforce.client_secret_file` is guaranteed set.
    ClientCredentials,
    /// The device flow (`asset-agent enroll`), then refresh tokens.
    DeviceFlow {
        /// Scopes to request, space separated; Salesforce uses the app's when absent.
        scope: Option<String>,
    },
}

/// Settings of the JWT bearer flow.
#[derive(Clone, Debug, PartialEq)]
pub struct JwtBearer {
    /// The Salesforce username the assertion's `sub` names.
    pub username: String,
    /// The PEM key that signs the assertion (its certificate is on the connected app).
    pub assertion_key_file: PathBuf,
    /// The assertion's `aud`.
    pub audience: String,
}

/// `[asset]`: what the actor token says about this device.
#[derive(Clone, Debug, PartialEq)]
pub struct Asset {
    /// Stable device identifier (the actor token's `did`). Default: `/etc/machine-id`.
    pub device_id: String,
    /// `Asset.Name`.
    pub name: String,
    /// `Asset.SerialNumber`, an exact string: "00123" stays "00123".
    pub serial_number: String,
    /// `Asset.AccountId` (001…).
    pub account_id: Option<String>,
    /// `Asset.ContactId` (003…).
    pub contact_id: Option<String>,
    /// An existing Asset record (02i…) to link instead of creating one.
    pub id: Option<String>,
    /// The actor token's `Name`. Default "Asset Token: <device_id>".
    pub token_name: String,
}

/// `[token]`: refreshing and verifying asset tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// Fraction of each token's lifetime after which it is refreshed (jitter is added).
    pub refresh_at: f64,
    pub verify: Verify,
    /// Expected `aud` values; empty means "do not check".
    pub audience: Vec<String>,
    /// Expected `iss`; `None` means "do not check".
    pub issuer: Option<String>,
    /// Tolerated clock difference when checking `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Ceiling of the exponential retry backoff.
    pub backoff_max: Duration,
    /// How long `GET /v1/token?min_ttl=` waits for its forced refresh before answering.
    pub min_ttl_wait: Duration,
    /// `token.refresh`: refresh ahead of expiry always, or only while the token is used.
    pub refresh: RefreshPolicy,
    /// `token.demand_window`: a token request within it counts as demand.
    pub demand_window: Duration,
    /// How long start-up waits for a token not yet due for refresh before `READY=1` goes
    /// out anyway (with a `STATUS=` saying no usable token is held).
    pub ready_timeout: Duration,
}

/// `token.refresh`: when the agent refreshes a token ahead of its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefreshPolicy {
    /// Always, whether or not anything uses the token.
    Eager,
    /// Only while something uses it (a request within `token.demand_window`, an open
    /// watch stream, the MQTT session); otherwise it lapses and the next request fetches one.
    #[default]
    OnDemand,
}

// === impl RefreshPolicy ===

impl RefreshPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eager => "eager",
            Self::OnDemand => "on_demand",
        }
    }
}

/// `token.verify`: how the agent checks the asset tokens it receives.
#[derive(Clone, Debug, PartialEq)]
pub enum Verify {
    /// Against the org's keys at `{instance_url}/id/keys`.
    Jwks,
    /// Against this certificate (PEM).
    Certificate(PathBuf),
    /// Not at all (emulator and debugging only).
    None,
}

/// `[state]`
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Holds the key, cached tokens and the refresh token. Default: `$STATE_DIRECTORY`,
    /// `/var/lib/asset-agent` (root) or `$XDG_DATA_HOME/asset-agent`.
    pub dir: PathBuf,
}

/// `[api]`: the Unix socket.
#[derive(Clone, Debug, PartialEq)]
pub struct Api {
    /// Default: `$RUNTIME_DIRECTORY/agent.sock`, `/run/asset-agent/agent.sock` (root) or
    /// `$XDG_RUNTIME_DIR/asset-agent/agent.sock`.
    pub socket: PathBuf,
    /// Uids allowed to read tokens, besides root and the socket's group.
    pub allow_uids: Vec<u32>,
    /// Gids allowed to read tokens, besides the socket's group.
    pub allow_gids: Vec<u32>,
    /// Uids that may also sign proof-of-possession JWTs (`POST /v1/sign`).
    pub signer_uids: Vec<u32>,
    /// Gids that may also sign proof-of-possession JWTs.
    pub signer_gids: Vec<u32>,
    /// Uids with every right, including `POST /v1/refresh`, besides root and the agent's.
    pub admin_uids: Vec<u32>,
    /// Gids with every right.
    pub admin_gids: Vec<u32>,
    /// Connections served at once, from all callers together.
    pub max_connections: usize,
    /// Connections served at once for one uid, so one busy app cannot crowd out others.
    pub max_connections_per_uid: usize,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq)]
pub struct Log {
    /// A `tracing` filter directive ("info", "asset_agent=debug,info"); checked to parse.
    /// `RUST_LOG`/`ASSET_AGENT_LOG` override it in `main`.
    pub level: String,
    pub format: LogFormat,
}

/// `log.format`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

// === impl Config ===

impl Config {
    /// A one-line summary of the effective config for the startup log. It names paths to
    /// secret files but never their contents (this module never reads them).
    pub fn redacted_summary(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sf = &self.salesforce;
        write!(
            f,
            "instance_url={} client_id={:?} timeout={} auth={}",
            sf.instance_url,
            sf.client_id,
            humantime::format_duration(sf.timeout),
            self.auth.method.name()
        )?;
        if let AuthMethod::JwtBearer(j) = &self.auth.method {
            write!(f, " username={:?} audience={}", j.username, j.audience)?;
        }
        let a = &self.asset;
        write!(
            f,
            " device_id={:?} asset.name={:?} serial_number={:?}",
            a.device_id, a.name, a.serial_number
        )?;
        if let Some(id) = &a.id {
            write!(f, " asset.id={id}")?;
        }
        let t = &self.token;
        write!(
            f,
            " key={} {} ({} bits) refresh_at={} verify={} state={} socket={} log={}/{}",
            self.key.backend_name(),
            self.key,
            self.key.bits,
            units::percent(t.refresh_at),
            t.verify.name(),
            self.state.dir.display(),
            self.api.socket.display(),
            self.log.level,
            self.log.format.name()
        )?;
        if let Some(m) = &self.mqtt {
            write!(f, " mqtt={} client_id={:?}", m.url, m.client_id)?;
        }
        for s in &self.sinks {
            write!(f, " sink={} ({})", s.path.display(), s.format.name())?;
        }
        let files: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        write!(f, " files=[{}]", files.join(", "))
    }
}

// === impl AuthMethod ===

impl AuthMethod {
    /// The `auth.method` spelling.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RefreshToken => "refresh_token",
            Self::JwtBearer(_) => "jwt_bearer",
            Self::ClientCredentials => "client_credentials",
            Self::DeviceFlow { .. } => "device_flow",
        }
    }
}

// === impl Verify ===

impl Verify {
    /// The `token.verify` spelling.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Jwks => "jwks",
            Self::Certificate(_) => "certificate",
            Self::None => "none",
        }
    }
}

// === impl LogFormat ===

impl LogFormat {
    /// The `log.format` spelling.
    pub fn name(self) -> &'static str {
        units::Named::name(self)
    }
}

impl units::Named for LogFormat {
    const NAMES: &'static [(&'static str, Self)] = &[("text", Self::Text), ("json", Self::Json)];
}

impl<'de> serde::Deserialize<'de> for LogFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::named(d)
    }
}
