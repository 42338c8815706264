//! Stage two: `RawConfig` → `Config`. The one place defaults are filled and rules checked.
//!
//! Every problem is collected rather than returning at the first, so `asset-agent check`
//! (and a failed start) shows all of them at once. Each names the dotted key, the file or
//! variable that set it, and the rule.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::Error;
use super::paths;
use super::raw::{
    MethodName, RawApi, RawAsset, RawAuth, RawConfig, RawLog, RawSalesforce, RawToken, RefreshName,
    VerifyName,
};
use super::rules::{Check, Context, instance_url};
use super::units::{Named, percent};
use super::{
    Api, Asset, Auth, AuthMethod, Config, DEFAULT_BACKOFF_MAX, DEFAULT_JWT_AUDIENCE,
    DEFAULT_LEEWAY, DEFAULT_LOG_LEVEL, DEFAULT_MIN_TTL_WAIT, DEFAULT_READY_TIMEOUT,
    DEFAULT_REFRESH_AT, DEFAULT_TIMEOUT, JwtBearer, Log, LogFormat, MAX_REFRESH_AT, MIN_REFRESH_AT,
    Salesforce, State, Token, Verify,
};
use super::{DEFAULT_DEMAND_WINDOW, RefreshPolicy};
use super::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID, MAX_MAX_CONNECTIONS};

/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Field lengths of the Asset object (Name 255, SerialNumber 80).
const MAX_NAME: usize = 255;
const MAX_SERIAL: usize = 80;

/// Validates `raw` and fills defaults. `files` and `ignored_env` are left empty for the
/// caller to fill.
///
/// # Errors
/// The problem found, or [`Error::Several`] when there is more than one.
pub(super) fn validate(
    raw: RawConfig,
    ctx: &Context<'_>,
    mut declared: Vec<super::children::Declared>,
) -> Result<Config, Error> {
    let mut c = Check {
        ctx,
        problems: Vec::new(),
    };
    let state_dir = c.state_dir(raw.state.dir);
    let base = state_dir.clone().unwrap_or_default();
    let salesforce = c.salesforce(raw.salesforce);
    let auth = c.auth(raw.auth, &base, salesforce.as_ref());
    let asset = c.asset(raw.asset);
    let key = c.key("key", raw.key, &base);
    let token = c.token(raw.token);
    let api = c.api(raw.api);
    let mqtt = c.mqtt(raw.mqtt, asset.as_ref().map(|a| a.device_id.as_str()));
    let sinks = c.sinks(raw.sink);
    let log = c.log(raw.log);
    let gateway = super::Gateway {
        children_dir: c.children_dir(raw.gateway.children_dir),
    };
    declared.extend(
        raw.children
            .into_iter()
            .map(|(name, raw)| super::children::Declared {
                name,
                raw,
                file: None,
            }),
    );
    let children = c.children(declared, &base, asset.as_ref(), &key);
    match (salesforce, auth, asset, state_dir, api) {
        (Some(salesforce), Some(auth), Some(asset), Some(dir), Some(api))
            if c.problems.is_empty() =>
        {
            Ok(Config {
                salesforce,
                auth,
                asset,
                key,
                token,
                state: State { dir },
                api,
                mqtt,
                sinks,
                log,
                gateway,
                children,
                files: Vec::new(),
                ignored_env: Vec::new(),
            })
        }
        _ => Err(c.into_error()),
    }
}

// === impl Check: one method per section ===

impl Check<'_> {
    fn state_dir(&mut self, dir: Option<PathBuf>) -> Option<PathBuf> {
        if dir.is_some() {
            return self.path("state.dir", dir);
        }
        let found = paths::state_dir(self.ctx.env, self.ctx.euid);
        if found.is_none() {
            self.problems.push(Error::Missing {
                key: "state.dir".to_owned(),
                condition: String::new(),
                hint: "there is no default when not root and none of STATE_DIRECTORY, \
                       XDG_DATA_HOME and HOME is set"
                    .to_owned(),
            });
        }
        found
    }

    /// `gateway.children_dir`, else `children.d` next to the main file (if there is one).
    fn children_dir(&mut self, dir: Option<PathBuf>) -> Option<PathBuf> {
        if dir.is_some() {
            return self.path("gateway.children_dir", dir);
        }
        self.ctx.main_file.map(|f| {
            f.parent()
                .unwrap_or(Path::new("/"))
                .join(super::CHILDREN_DIR)
        })
    }

    fn salesforce(&mut self, raw: RawSalesforce) -> Option<Salesforce> {
        let url = self
            .required("salesforce.instance_url", raw.instance_url, "")
            .and_then(|s| match instance_url(&s) {
                Ok(url) => Some(url),
                Err(rule) => {
                    self.invalid("salesforce.instance_url", rule);
                    None
                }
            });
        let client_id = self.required("salesforce.client_id", raw.client_id, "");
        if client_id
            .as_ref()
            .is_some_and(|id| id.chars().any(char::is_whitespace))
        {
            self.invalid("salesforce.client_id", "must not contain whitespace");
        }
        let client_secret_file = self.path("salesforce.client_secret_file", raw.client_secret_file);
        let ca_file = self.path("salesforce.ca_file", raw.ca_file);
        let timeout = self.duration(
            "salesforce.timeout",
            raw.timeout,
            DEFAULT_TIMEOUT,
            Duration::from_secs(1)..=Duration::from_secs(600),
        );
        Some(Salesforce {
            instance_url: url?,
            client_id: client_id?,
            client_secret_file,
            ca_file,
            timeout,
        })
    }

    fn auth(&mut self, raw: RawAuth, state: &Path, sf: Option<&Salesforce>) -> Option<Auth> {
        let name = raw.method.unwrap_or(MethodName::RefreshToken);
        let got = name.name();
        let refresh_token_file = self
            .path("auth.refresh_token_file", raw.refresh_token_file)
            .unwrap_or_else(|| state.join("refresh-token"));
        if name != MethodName::JwtBearer {
            self.unused(
                "auth.username",
                &raw.username,
                "auth.method",
                "jwt_bearer",
                got,
            );
            let k = "auth.assertion_key_file";
            self.unused(k, &raw.assertion_key_file, "auth.method", "jwt_bearer", got);
            self.unused(
                "auth.audience",
                &raw.audience,
                "auth.method",
                "jwt_bearer",
                got,
            );
        }
        if name != MethodName::DeviceFlow {
            self.unused("auth.scope", &raw.scope, "auth.method", "device_flow", got);
        }
        let method = match name {
            MethodName::RefreshToken => AuthMethod::RefreshToken,
            MethodName::ClientCredentials => {
                let has_secret = sf.is_none_or(|s| s.client_secret_file.is_some());
                if !has_secret {
                    let when = " (required when auth.method = \"client_credentials\")";
                    self.missing("salesforce.client_secret_file", when);
                }
                AuthMethod::ClientCredentials
            }
            MethodName::DeviceFlow => AuthMethod::DeviceFlow {
                scope: raw.scope.and_then(|s| self.not_blank("auth.scope", s)),
            },
            MethodName::JwtBearer => {
                let when = " (required when auth.method = \"jwt_bearer\")";
                let username = self.required("auth.username", raw.username, when);
                let key_file = if raw.assertion_key_file.is_none() {
                    self.missing("auth.assertion_key_file", when);
                    None
                } else {
                    self.path("auth.assertion_key_file", raw.assertion_key_file)
                };
                let audience = match raw.audience {
                    Some(a) => self.not_blank("auth.audience", a),
                    None => Some(DEFAULT_JWT_AUDIENCE.to_owned()),
                };
                AuthMethod::JwtBearer(JwtBearer {
                    username: username?,
                    assertion_key_file: key_file?,
                    audience: audience?,
                })
            }
        };
        Some(Auth {
            method,
            refresh_token_file,
        })
    }

    fn asset(&mut self, raw: RawAsset) -> Option<Asset> {
        self.asset_at("asset", raw)
    }

    /// `[asset]`'s rules for the table at `at` (`asset`, or a child's `children.NAME`).
    pub(super) fn asset_at(&mut self, at: &str, raw: RawAsset) -> Option<Asset> {
        let k = |field: &str| format!("{at}.{field}");
        let device_id = match raw.device_id {
            Some(id) => self.not_blank(&k("device_id"), id),
            None => self.machine_id(),
        };
        if device_id
            .as_ref()
            .is_some_and(|id| id.chars().any(char::is_control))
        {
            self.invalid(&k("device_id"), "must not contain control characters");
        }
        let name = self.required(&k("name"), raw.name, "");
        self.max_len(&k("name"), name.as_deref(), MAX_NAME);
        let serial_number = self.required(&k("serial_number"), raw.serial_number, "");
        self.max_len(&k("serial_number"), serial_number.as_deref(), MAX_SERIAL);
        let account_id = self.record_id(&k("account_id"), raw.account_id, "001", "Account");
        let contact_id = self.record_id(&k("contact_id"), raw.contact_id, "003", "Contact");
        let id = self.record_id(&k("id"), raw.id, "02i", "Asset");
        let token_name = match raw.token_name {
            Some(n) => self.not_blank(&k("token_name"), n),
            None => device_id.as_ref().map(|d| format!("Asset Token: {d}")),
        };
        self.max_len(&k("token_name"), token_name.as_deref(), MAX_NAME);
        Some(Asset {
            device_id: device_id?,
            name: name?,
            serial_number: serial_number?,
            account_id,
            contact_id,
            id,
            token_name: token_name?,
        })
    }

    /// The default device id: the machine id, trimmed.
    fn machine_id(&mut self) -> Option<String> {
        let path = self.ctx.machine_id_path;
        let read = fs::read_to_string(path).and_then(|s| {
            let id = s.trim().to_owned();
            if id.is_empty() {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the file is empty",
                ))
            } else {
                Ok(id)
            }
        });
        match read {
            Ok(id) => Some(id),
            Err(source) => {
                self.problems.push(Error::DeviceId {
                    path: path.to_owned(),
                    source,
                });
                None
            }
        }
    }

    fn token(&mut self, raw: RawToken) -> Token {
        let refresh_at = raw.refresh_at.map_or(DEFAULT_REFRESH_AT, |f| f.0);
        if !(MIN_REFRESH_AT..=MAX_REFRESH_AT).contains(&refresh_at) {
            self.invalid(
                "token.refresh_at",
                format!(
                    "must be between {} and {}, got {}",
                    percent(MIN_REFRESH_AT),
                    percent(MAX_REFRESH_AT),
                    percent(refresh_at)
                ),
            );
        }
        let name = raw.verify.unwrap_or(VerifyName::Jwks);
        let verify = match name {
            VerifyName::Jwks => Verify::Jwks,
            VerifyName::None => Verify::None,
            VerifyName::Certificate => match raw.certificate.clone() {
                Some(p) => self
                    .path("token.certificate", Some(p))
                    .map_or(Verify::Jwks, Verify::Certificate),
                None => {
                    let when = " (required when token.verify = \"certificate\")";
                    self.missing("token.certificate", when);
                    Verify::Jwks
                }
            },
        };
        if name != VerifyName::Certificate {
            let got = name.name();
            let c = &raw.certificate;
            self.unused("token.certificate", c, "token.verify", "certificate", got);
        }
        let audience = raw.audience.map(|l| l.0).unwrap_or_default();
        if audience.iter().any(|a| a.trim().is_empty()) {
            self.invalid("token.audience", "must not contain empty entries");
        }
        let issuer = raw.issuer.and_then(|i| self.not_blank("token.issuer", i));
        let secs = Duration::from_secs;
        Token {
            refresh_at,
            verify,
            audience,
            issuer,
            leeway: self.duration(
                "token.leeway",
                raw.leeway,
                DEFAULT_LEEWAY,
                secs(0)..=secs(600),
            ),
            backoff_max: self.duration(
                "token.backoff_max",
                raw.backoff_max,
                DEFAULT_BACKOFF_MAX,
                secs(1)..=secs(86_400),
            ),
            min_ttl_wait: self.duration(
                "token.min_ttl_wait",
                raw.min_ttl_wait,
                DEFAULT_MIN_TTL_WAIT,
                secs(0)..=secs(300),
            ),
            refresh: match raw.refresh {
                Some(RefreshName::Eager) => RefreshPolicy::Eager,
                Some(RefreshName::OnDemand) | None => RefreshPolicy::OnDemand,
            },
            demand_window: self.duration(
                "token.demand_window",
                raw.demand_window,
                DEFAULT_DEMAND_WINDOW,
                secs(1)..=secs(86_400),
            ),
            ready_timeout: self.duration(
                "token.ready_timeout",
                raw.ready_timeout,
                DEFAULT_READY_TIMEOUT,
                secs(0)..=secs(3600),
            ),
        }
    }

    fn api(&mut self, raw: RawApi) -> Option<Api> {
        let socket = if raw.socket.is_some() {
            self.path("api.socket", raw.socket)
        } else {
            let found = paths::socket(self.ctx.env, self.ctx.euid);
            if found.is_none() {
                self.problems.push(Error::Missing {
                    key: "api.socket".to_owned(),
                    condition: String::new(),
                    hint: "there is no default when not root and neither RUNTIME_DIRECTORY \
                           nor XDG_RUNTIME_DIR is set"
                        .to_owned(),
                });
            }
            found
        };
        if let Some(s) = &socket {
            let n = s.as_os_str().len();
            if n > MAX_SOCKET_PATH {
                self.invalid(
                    "api.socket",
                    format!(
                        "is {n} bytes long; a Unix socket path can have at most {MAX_SOCKET_PATH}"
                    ),
                );
            }
        }
        let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=MAX_MAX_CONNECTIONS).contains(&max_connections) {
            self.invalid(
                "api.max_connections",
                format!("must be between 1 and {MAX_MAX_CONNECTIONS}, got {max_connections}"),
            );
        }
        let per_uid = raw
            .max_connections_per_uid
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_UID.min(max_connections));
        if !(1..=max_connections).contains(&per_uid) {
            self.invalid(
                "api.max_connections_per_uid",
                format!(
                    "must be between 1 and api.max_connections ({max_connections}), got {per_uid}"
                ),
            );
        }
        let list = |l: Option<super::units::List<u32>>| l.map(|l| l.0).unwrap_or_default();
        Some(Api {
            socket: socket?,
            allow_uids: list(raw.allow_uids),
            allow_gids: list(raw.allow_gids),
            signer_uids: list(raw.signer_uids),
            signer_gids: list(raw.signer_gids),
            admin_uids: list(raw.admin_uids),
            admin_gids: list(raw.admin_gids),
            max_connections,
            max_connections_per_uid: per_uid,
        })
    }

    fn log(&mut self, raw: RawLog) -> Log {
        let level = raw.level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
        if level.trim().is_empty() {
            self.invalid("log.level", "must not be empty");
        } else if let Err(e) = crate::log_filter::parse(&level) {
            self.invalid(
                "log.level",
                format!("{level:?} is not a valid tracing filter: {e}"),
            );
        }
        Log {
            level,
            format: raw.format.unwrap_or(LogFormat::Text),
        }
    }
}
