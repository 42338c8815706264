//! The command line (README, "Commands"; docs/api.md, "CLI").

use std::path::PathBuf;

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// asset-agent: gives this device its Salesforce identity and hands asset tokens to local apps.
#[derive(Debug, Parser)]
#[command(name = "asset-agent", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file (default /etc/asset-agent/agent.toml, or ~/.config/asset-agent/agent.toml
    /// when not root).
    #[arg(long, global = true, env = "ASSET_AGENT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (what systemd starts).
    Run,
    /// Print the current asset token.
    Token(TokenArgs),
    /// Show the agent's state.
    Status(StatusArgs),
    /// Follow token rotations as they happen (one line per new token).
    Watch(WatchArgs),
    /// Force a refresh now (admin: root or the agent's user by default).
    Refresh(RefreshArgs),
    /// Make the running agent re-read its configuration and report the outcome; exits 1
    /// when the agent refuses it (the unit's ExecReload=, so `systemctl reload` fails too).
    Reload(ReloadArgs),
    /// Validate the config and the environment without starting (exit 1 on errors).
    Check(CheckArgs),
    /// Show or create the device key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Enroll this device with the OAuth device flow: shows a code to approve in a browser,
    /// then stores the refresh token for the agent.
    Enroll,
    /// Run a command with the asset token in an environment variable and/or a file, kept
    /// current on rotation; forwards signals and exits with the command's status.
    Exec(ExecArgs),
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Put the token in this environment variable (default ASSET_TOKEN when neither
    /// --env nor --file is given).
    #[arg(long, value_name = "NAME")]
    pub env: Option<String>,
    /// Keep the token in this file (mode 0600, yours), rewritten on every rotation and
    /// removed when no valid token is held and when the command ends.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// On rotation: restart the command with the new token (the default with --env),
    /// send it --signal (the file is rewritten first), or do nothing but rewrite the file
    /// (the default with only --file).
    #[arg(long, value_enum, value_name = "ACTION")]
    pub on_rotation: Option<OnRotation>,
    /// The signal --on-rotation=signal sends.
    #[arg(long, default_value = "HUP", value_name = "SIG")]
    pub signal: String,
    /// How long to wait for a first token before giving up.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub wait: Duration,
    #[command(flatten)]
    pub socket: SocketArg,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `exec --on-rotation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnRotation {
    Restart,
    Signal,
    None,
}

/// Which identity a client command is about (gateway mode).
#[derive(Debug, Args)]
pub struct AssetArg {
    /// A child asset of a gateway, by name (`[children.NAME]` or children.d/NAME.toml);
    /// the agent's own identity when absent.
    #[arg(value_name = "NAME")]
    pub asset: Option<String>,
}

// === impl AssetArg ===

impl AssetArg {
    /// The API prefix for the identity: `/v1` for the agent's own,
    /// `/v1/assets/NAME` for a child.
    pub fn base(&self) -> String {
        match &self.asset {
            Some(name) => format!("/v1/assets/{name}"),
            None => "/v1".to_owned(),
        }
    }
}

/// Where client commands find the agent.
#[derive(Debug, Args)]
pub struct SocketArg {
    /// The agent's socket (default: the config's `api.socket` when something is there,
    /// else the system agent's /run/asset-agent/agent.sock).
    #[arg(long, env = "ASSET_AGENT_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Print only the JWT (for `$(asset-agent token --raw)` in scripts).
    #[arg(long, conflicts_with = "json")]
    pub raw: bool,
    /// Print the full JSON answer (the default).
    #[arg(long)]
    pub json: bool,
    /// Refresh first unless the token has at least this many seconds left.
    #[arg(long, value_name = "SECS")]
    pub min_ttl: Option<u64>,
    #[command(flatten)]
    pub asset: AssetArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status document as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub asset: AssetArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Print each event as the agent's NDJSON line.
    #[arg(long, conflicts_with = "raw")]
    pub json: bool,
    /// Print only each new JWT, one per line (for `while read -r token` loops).
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub asset: AssetArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    /// Print the agent's JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Print the agent's JSON answer.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also perform one real token exchange (registers or links the Asset, as the agent
    /// would; the token is verified and discarded).
    #[arg(long)]
    pub exchange: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print the device public key (default: a summary with thumbprint and PEM).
    Show(KeyShowArgs),
    /// Create the device key if it does not exist yet (`run` also does this).
    Generate,
}

#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct KeyShowArgs {
    /// As a JWK (what the actor token's cnf.jwk carries).
    #[arg(long)]
    pub jwk: bool,
    /// As an SPKI PEM public key.
    #[arg(long)]
    pub pem: bool,
    /// Only the RFC 7638 thumbprint (the actor token's kid).
    #[arg(long)]
    pub thumbprint: bool,
}
