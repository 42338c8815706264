//! asset-agent: gives a Linux device its Salesforce identity.
//!
//! The agent holds an RSA device key, obtains a Salesforce access token, mints actor tokens
//! describing the device and its Asset, exchanges them for asset tokens (the OAuth 2.0 Asset
//! Token Flow, RFC 8693), keeps a verified asset token fresh and hands it to local apps over
//! a Unix socket.

pub mod actor;
pub mod agent;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod diagnose;
pub mod error;
pub mod fsutil;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod reload;
pub mod salesforce;
pub mod secure_path;
pub mod skew;
pub mod systemd;
pub mod tls;
pub mod token;
