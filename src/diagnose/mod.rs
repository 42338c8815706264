//! `asset-agent check`: validate the configuration and the environment without starting.
//!
//! Each check produces [`Finding`]s: a stable `check` id, a [`Severity`], what was found
//! and, unless all is well, the fix. The ids are what the README's troubleshooting table
//! and scripts key on:
//!
//! | id | what |
//! |---|---|
//! | `config` | the config loads and validates (one finding per problem) |
//! | `config.env` | `ASSET_AGENT_*` variables that are not config keys (typos) |
//! | `key` | device key present, owner-only, PKCS#8 RSA of a usable size |
//! | `credentials` | refresh token / client secret / JWT-bearer key for `auth.method` |
//! | `state_dir` | the state directory is writable (or can be created) |
//! | `runtime_dir` | the socket's directory is writable (or can be created) |
//! | `sandbox` | a PKCS#11 key's TPM node or SoftHSM2 token directory is within reach of `asset-agent.service`'s sandbox |
//! | `sink` | each `[[sink]]`: path rule, group, existing file's mode, hook PID file or program |
//! | `socket` | the socket path is free, stale, or served; matches the socket unit |
//! | `clock` | the system clock's year is plausible |
//! | `dns` | `instance_url`'s host resolves |
//! | `connect` | a TCP connection to it opens |
//! | `tls` | the TLS handshake succeeds with the agent's trust anchors and it answers HTTP |
//! | `clock.skew` | the device clock against the instance's `Date` header |
//! | `exchange` | `--exchange`: a real token exchange through the agent's own flow |
//!
//! Checks run as the invoking user: run it as the service user (or root) to see what the
//! service sees. Layout: `files` (key, credentials, directories, socket), `net` (clock,
//! DNS, TCP, TLS, skew), `sandbox` (the unit's sandbox against the key's hardware),
//! `exchange` (the dry run).

mod exchange;
mod files;
mod net;
mod sandbox;
mod sinks;

use std::path::PathBuf;

use serde::Serialize;

use crate::config::{Config, LoadOptions};
use wire::clock::Clock;

/// How bad a finding is. Only `Error` makes `check` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    Info,
    Warning,
    Error,
}

/// One result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable id of the check (see the module docs).
    pub check: &'static str,
    pub severity: Severity,
    /// What was found.
    pub message: String,
    /// What to do about it; absent when all is well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Everything `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No finding is an error.
    pub ok: bool,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--config`, as for `run`.
    pub config: Option<PathBuf>,
    /// `--exchange`: also perform a real token exchange.
    pub exchange: bool,
    pub clock: Clock,
}

// === impl Finding ===

impl Finding {
    pub fn ok(check: &'static str, message: impl Into<String>) -> Self {
        Self {
            check,
            severity: Severity::Ok,
            message: message.into(),
            fix: None,
        }
    }

    pub fn info(check: &'static str, message: impl Into<String>) -> Self {
        Self {
            check,
            severity: Severity::Info,
            message: message.into(),
            fix: None,
        }
    }

    pub fn warning(
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            check,
            severity: Severity::Warning,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn error(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            check,
            severity: Severity::Error,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

// === impl Report ===

impl Report {
    fn new(findings: Vec<Finding>) -> Self {
        let count = |s| findings.iter().filter(|f| f.severity == s).count();
        let errors = count(Severity::Error);
        let warnings = count(Severity::Warning);
        Self {
            ok: errors == 0,
            errors,
            warnings,
            findings,
        }
    }
}

/// Runs every check. Without a valid configuration only the `config` findings (one per
/// problem) are reported: the other checks need to know which paths and host to look at.
pub async fn run(opts: &Options) -> Report {
    let load = LoadOptions::from_process(opts.config.clone());
    let config = match Config::load(&load) {
        Ok(c) => c,
        Err(e) => return Report::new(config_problems(&e)),
    };
    let mut findings = vec![config_ok(&config)];
    for var in &config.ignored_env {
        findings.push(Finding::warning(
            "config.env",
            format!("{var} is set but is not a config key, so it is ignored"),
            "config variables look like ASSET_AGENT_<SECTION>__<KEY> (two underscores), e.g. ASSET_AGENT_SALESFORCE__INSTANCE_URL; fix or unset it",
        ));
    }
    findings.extend(files::check(&config));
    findings.extend(sandbox::check(&config));
    findings.extend(sinks::check(&config));
    findings.extend(net::check(&config, &opts.clock).await);
    if opts.exchange {
        findings.push(exchange::check(&config, &opts.clock).await);
    }
    Report::new(findings)
}

fn config_ok(config: &Config) -> Finding {
    let files: Vec<String> = config
        .files
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let from = if files.is_empty() {
        "no file (defaults and environment only)".to_owned()
    } else {
        files.join(", ")
    };
    Finding::ok(
        "config",
        format!(
            "valid; read from {from}; auth.method = {}",
            config.auth.method.name()
        ),
    )
}

/// One finding per configuration problem, each naming its file or variable and key.
fn config_problems(err: &crate::config::Error) -> Vec<Finding> {
    err.problems()
        .into_iter()
        .map(|p| {
            Finding::error(
                "config",
                crate::error::chain(p),
                "edit the key in the file or environment variable named above (config/agent.toml documents every key), then run `asset-agent check` again",
            )
        })
        .collect()
}
