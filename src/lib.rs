//! asset-agent: gives a Linux device its Salesforce identity.
//!
//! The agent holds an RSA device key, obtains a Salesforce access token, mints actor tokens
//! describing the device and its Asset, exchanges them for asset tokens (the OAuth 2.0 Asset
//! Token Flow, RFC 8693), keeps a verified asset token fresh and hands it to local apps over
//! a Unix socket.
//!
//! Layout (docs/architecture.md has the whole picture, bottom layer first):
//! - foundations: [`config`] (TOML + drop-ins + environment, validated once), [`fsutil`]
//!   (0600 atomic writes), [`secure_path`] (the one rule every secret and state file must
//!   pass), [`skew`] (clock error against Salesforce), `error` (cause
//!   chains), `tls` (trust anchors), [`crypto`] (ring for rustls and jsonwebtoken),
//!   `metrics` (the one registry), [`backoff`], [`log_filter`] (the `log.level` syntax),
//!   [`logging`];
//! - identity: [`keys`] (the device key behind `Signer`), [`actor`] (actor tokens);
//! - Salesforce: [`salesforce`] (the HTTPS client, subject-token grants, the device flow,
//!   the exchange, verification);
//! - the token: [`token`] (one fetch: `flow`; keeping it fresh: `refresher`; the cache;
//!   state);
//! - serving: [`api`] (the socket: `router`, `routes/*`, peer roles), [`mqtt`] (the
//!   uplink), [`sink`] (token files and rotation hooks), [`systemd`] (notify, watchdog);
//! - assembly: [`agent`] (builds and starts everything, `tasks` supervises it), `reload`,
//!   [`commands`] + [`cli`] + [`client`] (the binary's subcommands).
//!
//! Wire types, JOSE and the wall clock come from the `wire` crate, shared with the
//! Salesforce emulator; the agent reaches the emulator only in tests.

pub mod actor;
pub mod agent;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod crypto;
pub(crate) mod diagnose;
pub(crate) mod error;
pub mod filework;
pub mod fsutil;
pub mod gateway;
pub mod keys;
pub mod log_filter;
pub mod logging;
pub(crate) mod metrics;
pub mod mqtt;
pub(crate) mod reload;
pub mod salesforce;
pub mod secure_path;
pub mod sink;
pub mod skew;
pub(crate) mod spawn;
pub mod systemd;
pub(crate) mod tasks;
pub(crate) mod tls;
pub mod token;
