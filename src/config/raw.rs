//! Stage one: the config exactly as written, before defaults and checks.
//!
//! Every field is optional, even the required ones: a drop-in or a single environment
//! variable is deserialised on its own (so an error names the file or variable it came
//! from), and a drop-in rightly leaves most keys out. Whether a required key is present is
//! decided once, on the merged result, in `validate`. Every table denies unknown fields, so
//! a misspelt key is an error rather than a silently ignored line.

use std::path::PathBuf;

use serde::Deserialize;

use super::LogFormat;
pub(crate) use super::key::RawKey;
use super::units::{self, Fraction, HumanDuration, List, Named};

/// The top-level tables, in the order the example file documents them.
pub(crate) const SECTIONS: [&str; 11] = [
    "salesforce",
    "auth",
    "asset",
    "key",
    "token",
    "state",
    "api",
    "mqtt",
    "log",
    "gateway",
    "children",
];

/// The whole file (or the merge of all files and the environment).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a table of config sections")]
pub(crate) struct RawConfig {
    pub salesforce: RawSalesforce,
    pub auth: RawAuth,
    pub asset: RawAsset,
    pub key: RawKey,
    pub token: RawToken,
    pub state: RawState,
    pub api: RawApi,
    pub mqtt: super::mqtt::RawMqtt,
    pub sink: Vec<super::sink::RawSink>,
    pub log: RawLog,
    pub gateway: RawGateway,
    /// `[children.NAME]` tables (gateway mode).
    pub children: std::collections::BTreeMap<String, RawChild>,
}

/// `[salesforce]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [salesforce] table")]
pub(crate) struct RawSalesforce {
    #[serde(deserialize_with = "units::strict_string")]
    pub instance_url: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub client_id: Option<String>,
    #[serde(deserialize_with = "units::strict_path")]
    pub client_secret_file: Option<PathBuf>,
    #[serde(deserialize_with = "units::strict_path")]
    pub ca_file: Option<PathBuf>,
    pub timeout: Option<HumanDuration>,
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [auth] table")]
pub(crate) struct RawAuth {
    pub method: Option<MethodName>,
    #[serde(deserialize_with = "units::strict_path")]
    pub refresh_token_file: Option<PathBuf>,
    #[serde(deserialize_with = "units::strict_string")]
    pub username: Option<String>,
    #[serde(deserialize_with = "units::strict_path")]
    pub assertion_key_file: Option<PathBuf>,
    #[serde(deserialize_with = "units::strict_string")]
    pub audience: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub scope: Option<String>,
}

/// `[asset]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [asset] table")]
pub(crate) struct RawAsset {
    #[serde(deserialize_with = "units::strict_string")]
    pub device_id: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub serial_number: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub account_id: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub contact_id: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub token_name: Option<String>,
}

/// `[token]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [token] table")]
pub(crate) struct RawToken {
    pub refresh_at: Option<Fraction>,
    pub verify: Option<VerifyName>,
    #[serde(deserialize_with = "units::strict_path")]
    pub certificate: Option<PathBuf>,
    pub audience: Option<List<String>>,
    #[serde(deserialize_with = "units::strict_string")]
    pub issuer: Option<String>,
    pub leeway: Option<HumanDuration>,
    pub backoff_max: Option<HumanDuration>,
    pub min_ttl_wait: Option<HumanDuration>,
    pub refresh: Option<RefreshName>,
    pub demand_window: Option<HumanDuration>,
    pub ready_timeout: Option<HumanDuration>,
}

/// `[state]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [state] table")]
pub(crate) struct RawState {
    #[serde(deserialize_with = "units::strict_path")]
    pub dir: Option<PathBuf>,
}

/// `[api]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [api] table")]
pub(crate) struct RawApi {
    #[serde(deserialize_with = "units::strict_path")]
    pub socket: Option<PathBuf>,
    pub allow_uids: Option<List<u32>>,
    pub allow_gids: Option<List<u32>>,
    pub signer_uids: Option<List<u32>>,
    pub signer_gids: Option<List<u32>>,
    pub admin_uids: Option<List<u32>>,
    pub admin_gids: Option<List<u32>>,
    pub max_connections: Option<usize>,
    pub max_connections_per_uid: Option<usize>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [log] table")]
pub(crate) struct RawLog {
    #[serde(deserialize_with = "units::strict_string")]
    pub level: Option<String>,
    pub format: Option<LogFormat>,
}

/// `auth.method` as written; `validate` turns it into `AuthMethod` with its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MethodName {
    RefreshToken,
    JwtBearer,
    ClientCredentials,
    DeviceFlow,
}

/// `token.verify` as written; `validate` turns it into `Verify` with its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VerifyName {
    Jwks,
    Certificate,
    None,
}

/// `token.refresh` as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefreshName {
    Eager,
    OnDemand,
}

// === impl RefreshName ===

impl Named for RefreshName {
    const NAMES: &'static [(&'static str, Self)] =
        &[("eager", Self::Eager), ("on_demand", Self::OnDemand)];
}

impl<'de> Deserialize<'de> for RefreshName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::named(d)
    }
}

// === impl MethodName ===

impl Named for MethodName {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("refresh_token", Self::RefreshToken),
        ("jwt_bearer", Self::JwtBearer),
        ("client_credentials", Self::ClientCredentials),
        ("device_flow", Self::DeviceFlow),
    ];
}

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::named(d)
    }
}

// === impl VerifyName ===

impl Named for VerifyName {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("jwks", Self::Jwks),
        ("certificate", Self::Certificate),
        ("none", Self::None),
    ];
}

impl<'de> Deserialize<'de> for VerifyName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::named(d)
    }
}

/// `[gateway]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "the [gateway] table")]
pub(crate) struct RawGateway {
    #[serde(deserialize_with = "units::strict_path")]
    pub children_dir: Option<PathBuf>,
}

/// One child as written: a `[children.NAME]` table or a file in the children directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a child table")]
pub(crate) struct RawChild {
    #[serde(deserialize_with = "units::strict_string")]
    pub device_id: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub name: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub serial_number: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub account_id: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub contact_id: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub id: Option<String>,
    #[serde(deserialize_with = "units::strict_string")]
    pub token_name: Option<String>,
    pub allow_uids: Option<List<u32>>,
    pub allow_gids: Option<List<u32>>,
    pub signer_uids: Option<List<u32>>,
    pub signer_gids: Option<List<u32>>,
    pub key: Option<RawKey>,
}
