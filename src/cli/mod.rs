//! The command line (README, "Commands"; docs/api.md, "CLI"), declared with clap's derive.
//!
//! clap parses, renders `--help` and words the mistakes; this module adds what it does not
//! do the way the agent did before:
//! - `ASSET_AGENT_CONFIG` and `ASSET_AGENT_SOCKET` are read here, not by clap's `env`: a
//!   variable that is set but empty is a mistake that names the variable (clap would hand
//!   the empty value to the path parser, whose error names only the option), and the help
//!   shows the variable's name, never its value;
//! - `--version` prints `asset-agent VERSION` in every subcommand (clap would print
//!   `asset-agent-token VERSION`);
//! - a group without its subcommand (`asset-agent --config x`, `asset-agent key`) prints
//!   the group's help on stderr, as a bare `asset-agent` does;
//! - `exec` without a command says to give it after `--`.
//!
//! Mistakes exit [`EXIT_USAGE`] (2) with clap's message, which names the argument.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory as _, FromArgMatches as _};

/// The exit code of a command-line mistake (README, "Commands").
pub const EXIT_USAGE: u8 = 2;

const BIN: &str = "asset-agent";
const CONFIG_ENV: &str = "ASSET_AGENT_CONFIG";
const SOCKET_ENV: &str = "ASSET_AGENT_SOCKET";

/// Looks up an environment variable (the process environment, or a table in tests).
pub(crate) type Env<'a> = dyn Fn(&str) -> Option<OsString> + 'a;

/// The parsed command line.
#[derive(Debug)]
pub struct Cli {
    /// Config file (default /etc/asset-agent/agent.toml, or ~/.config/asset-agent/agent.toml
    /// when not root).
    pub config: Option<PathBuf>,
    pub command: Command,
}

/// What clap parses; [`Cli::parse_from`] completes it from the environment.
#[derive(Debug, clap::Parser)]
#[command(
    name = BIN,
    bin_name = BIN,
    version,
    about,
    propagate_version = true,
    arg_required_else_help = true
)]
struct Args {
    /// `--config`, accepted before and after the subcommand (the later one wins).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help = "Config file (default /etc/asset-agent/agent.toml, or ~/.config/asset-agent/agent.toml when not root) [env: ASSET_AGENT_CONFIG]"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    #[command(about = "Run the agent (what systemd starts)")]
    Run,
    #[command(about = "Print the current asset token")]
    Token(TokenArgs),
    #[command(about = "Show the agent's state")]
    Status(StatusArgs),
    #[command(about = "Follow token rotations as they happen (one line per new token)")]
    Watch(WatchArgs),
    #[command(about = "Force a refresh now (admin: root or the agent's user by default)")]
    Refresh(RefreshArgs),
    #[command(
        about = "Make the running agent re-read its configuration and report the outcome; exits 1 when the agent refuses it (the unit's ExecReload=, so `systemctl reload` fails too)"
    )]
    Reload(ReloadArgs),
    #[command(
        about = "Validate the config and the environment without starting (exit 1 on errors)"
    )]
    Check(CheckArgs),
    #[command(
        subcommand,
        about = "Show or create the device key",
        arg_required_else_help = true
    )]
    Key(KeyCommand),
    #[command(
        about = "Enroll this device with the OAuth device flow: shows a code to approve in a browser, then stores the refresh token for the agent"
    )]
    Enroll,
    #[command(
        about = "Run a command with the asset token in an environment variable and/or a file, kept current on rotation; forwards signals and exits with the command's status"
    )]
    Exec(ExecArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[arg(
        long,
        value_name = "NAME",
        help = "Put the token in this environment variable (default ASSET_TOKEN when neither --env nor --file is given)"
    )]
    pub env: Option<String>,
    #[arg(
        long,
        value_name = "PATH",
        help = "Keep the token in this file (mode 0600, yours), rewritten on every rotation and removed when no valid token is held and when the command ends"
    )]
    pub file: Option<PathBuf>,
    #[arg(
        long,
        value_enum,
        value_name = "ACTION",
        help = "On rotation: restart the command with the new token (the default with --env), send it --signal (the file is rewritten first), or do nothing but rewrite the file (the default with only --file)"
    )]
    pub on_rotation: Option<OnRotation>,
    #[arg(
        long,
        value_name = "SIG",
        default_value = "HUP",
        help = "The signal --on-rotation=signal sends"
    )]
    pub signal: String,
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = humantime::parse_duration,
        help = "How long to wait for a first token before giving up"
    )]
    pub wait: Duration,
    #[command(flatten)]
    pub socket: SocketArg,
    #[arg(
        value_name = "CMD",
        last = true,
        required = true,
        help = "The command and its arguments, after `--`"
    )]
    pub command: Vec<OsString>,
}

/// `exec --on-rotation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnRotation {
    Restart,
    Signal,
    None,
}

/// Which identity a client command is about (gateway mode).
#[derive(Debug, clap::Args)]
pub struct AssetArg {
    #[arg(
        value_name = "NAME",
        help = "A child asset of a gateway, by name (`[children.NAME]` or children.d/NAME.toml); the agent's own identity when absent"
    )]
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
#[derive(Debug, clap::Args)]
pub struct SocketArg {
    #[arg(
        long,
        value_name = "PATH",
        help = "The agent's socket (default: the config's `api.socket` when something is there, else the system agent's /run/asset-agent/agent.sock) [env: ASSET_AGENT_SOCKET]"
    )]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[arg(
        long,
        conflicts_with = "json",
        help = "Print only the JWT (for `$(asset-agent token --raw)` in scripts)"
    )]
    pub raw: bool,
    #[arg(long, help = "Print the full JSON answer (the default)")]
    pub json: bool,
    #[arg(
        long,
        value_name = "SECS",
        allow_negative_numbers = true,
        help = "Refresh first unless the token has at least this many seconds left"
    )]
    pub min_ttl: Option<u64>,
    #[command(flatten)]
    pub asset: AssetArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, help = "Print the status document as JSON")]
    pub json: bool,
    #[command(flatten)]
    pub asset: AssetArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[arg(
        long,
        conflicts_with = "raw",
        help = "Print each event as the agent's NDJSON line"
    )]
    pub json: bool,
    #[arg(
        long,
        help = "Print only each new JWT, one per line (for `while read -r token` loops)"
    )]
    pub raw: bool,
    #[command(flatten)]
    pub asset: AssetArg,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Args)]
pub struct RefreshArgs {
    #[arg(long, help = "Print the agent's JSON answer")]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    #[arg(long, help = "Print the agent's JSON answer")]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long, help = "Print the findings as JSON")]
    pub json: bool,
    #[arg(
        long,
        help = "Also perform one real token exchange (registers or links the Asset, as the agent would; the token is verified and discarded)"
    )]
    pub exchange: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    #[command(about = "Print the device public key (default: a summary with thumbprint and PEM)")]
    Show(KeyShowArgs),
    #[command(about = "Create the device key if it does not exist yet (`run` also does this)")]
    Generate,
}

#[derive(Debug, clap::Args)]
pub struct KeyShowArgs {
    #[arg(
        long,
        conflicts_with_all = ["pem", "thumbprint"],
        help = "As a JWK (what the actor token's cnf.jwk carries)"
    )]
    pub jwk: bool,
    #[arg(
        long,
        conflicts_with = "thumbprint",
        help = "As an SPKI PEM public key"
    )]
    pub pem: bool,
    #[arg(long, help = "Only the RFC 7638 thumbprint (the actor token's kid)")]
    pub thumbprint: bool,
}

/// Why the command line names nothing to run: help, the version, or a mistake.
#[derive(Debug)]
pub enum Stop {
    /// What clap stopped at, or a mistake of ours worded as clap's.
    Clap(clap::Error),
    /// A group without its subcommand: its help, on stderr, exit 2.
    MissingCommand(String),
}

// === impl Cli ===

impl Cli {
    /// The process's command line and environment.
    ///
    /// # Errors
    /// [`Stop`]: help, the version or a mistake, to print with [`Stop::exit`].
    pub fn from_env() -> Result<Cli, Stop> {
        Cli::parse_from(std::env::args_os().skip(1), &|name: &str| {
            std::env::var_os(name)
        })
    }

    /// `args` without the program name; `env` looks up `ASSET_AGENT_CONFIG` and
    /// `ASSET_AGENT_SOCKET`.
    pub(crate) fn parse_from(
        args: impl IntoIterator<Item = OsString>,
        env: &Env<'_>,
    ) -> Result<Cli, Stop> {
        let argv = std::iter::once(OsString::from(BIN)).chain(args);
        let matches = command().try_get_matches_from(argv).map_err(explain)?;
        let Args {
            config,
            mut command,
        } = Args::from_arg_matches(&matches).map_err(Stop::Clap)?;
        let config = match config {
            Some(path) => Some(path),
            None => env_path(env, CONFIG_ENV, subcommand_path(&command))?,
        };
        let path = subcommand_path(&command);
        if let Some(socket) = command.socket_mut()
            && socket.socket.is_none()
        {
            socket.socket = env_path(env, SOCKET_ENV, path)?;
        }
        Ok(Cli { config, command })
    }
}

/// The whole command tree, as clap builds it (for tests that walk every command).
pub fn command() -> clap::Command {
    Args::command()
}

/// The words after `asset-agent` that select `command`.
fn subcommand_path(command: &Command) -> &'static [&'static str] {
    match command {
        Command::Run => &["run"],
        Command::Token(_) => &["token"],
        Command::Status(_) => &["status"],
        Command::Watch(_) => &["watch"],
        Command::Refresh(_) => &["refresh"],
        Command::Reload(_) => &["reload"],
        Command::Check(_) => &["check"],
        Command::Key(KeyCommand::Show(_)) => &["key", "show"],
        Command::Key(KeyCommand::Generate) => &["key", "generate"],
        Command::Enroll => &["enroll"],
        Command::Exec(_) => &["exec"],
    }
}

// === impl Command ===

impl Command {
    /// Its `--socket`, for the commands that talk to the agent.
    fn socket_mut(&mut self) -> Option<&mut SocketArg> {
        match self {
            Command::Token(a) => Some(&mut a.socket),
            Command::Status(a) => Some(&mut a.socket),
            Command::Watch(a) => Some(&mut a.socket),
            Command::Refresh(a) => Some(&mut a.socket),
            Command::Reload(a) => Some(&mut a.socket),
            Command::Exec(a) => Some(&mut a.socket),
            Command::Run | Command::Check(_) | Command::Key(_) | Command::Enroll => None,
        }
    }
}

/// A path from the environment variable `name`, when it is set; `path` is the command
/// the mistake is reported against.
fn env_path(env: &Env<'_>, name: &'static str, path: &[&str]) -> Result<Option<PathBuf>, Stop> {
    match env(name) {
        Some(v) if v.is_empty() => Err(mistake(
            path,
            ErrorKind::InvalidValue,
            format!("the environment variable {name} is set but empty (unset it or give a path)"),
        )),
        v => Ok(v.map(PathBuf::from)),
    }
}

/// A mistake of ours, worded and laid out as clap's, against the command at `path`.
fn mistake(path: &[&str], kind: ErrorKind, message: String) -> Stop {
    Stop::Clap(built(path).error(kind, message))
}

/// The command at `path` (as far as it names commands), built: its usage line and help
/// name it `asset-agent WORDS`.
fn built(path: &[&str]) -> clap::Command {
    let mut cmd = command();
    cmd.build();
    for word in path {
        match cmd.find_subcommand(word) {
            Some(sub) => cmd = sub.clone(),
            None => break,
        }
    }
    cmd
}

/// Turns clap's stops into ours where the agent words them differently (module doc).
fn explain(error: clap::Error) -> Stop {
    match error.kind() {
        // A group without its subcommand: its help, as a mistake (stderr, exit 2).
        ErrorKind::MissingSubcommand => {
            let group = match error.get(ContextKind::InvalidSubcommand) {
                Some(ContextValue::String(name)) => name.clone(),
                _ => BIN.to_owned(),
            };
            let words: Vec<&str> = group.split(' ').skip(1).collect();
            Stop::MissingCommand(built(&words).render_help().to_string())
        }
        // `exec` or `exec --`: say where the command goes.
        ErrorKind::MissingRequiredArgument
            if matches!(
                error.get(ContextKind::InvalidArg),
                Some(ContextValue::Strings(args)) if args.iter().any(|a| a.starts_with("<CMD>"))
            ) =>
        {
            mistake(
                &["exec"],
                ErrorKind::MissingRequiredArgument,
                "the command to run is missing: give it after '--'".to_owned(),
            )
        }
        _ => Stop::Clap(error),
    }
}

// === impl Stop ===

impl Stop {
    /// 0 for help and version, [`EXIT_USAGE`] for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            Stop::Clap(e) if !e.use_stderr() => 0,
            Stop::Clap(_) | Stop::MissingCommand(_) => EXIT_USAGE,
        }
    }

    /// What clap says happened (help, version, which mistake).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Stop::Clap(e) => e.kind(),
            Stop::MissingCommand(_) => ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
        }
    }

    /// What to print; it goes to stdout when the exit code is 0, else to stderr.
    pub fn text(&self) -> String {
        match self {
            Stop::Clap(e) if e.kind() == ErrorKind::DisplayVersion => {
                format!("{BIN} {}\n", env!("CARGO_PKG_VERSION"))
            }
            Stop::Clap(e) => e.render().to_string(),
            Stop::MissingCommand(help) => help.clone(),
        }
    }

    /// Prints [`Stop::text`] where it belongs and gives the exit code.
    pub fn exit(&self) -> ExitCode {
        let code = self.exit_code();
        // Nothing sensible is left to do when stdout or stderr is gone.
        let _ = if code == 0 {
            std::io::stdout().write_all(self.text().as_bytes())
        } else {
            std::io::stderr().write_all(self.text().as_bytes())
        };
        ExitCode::from(code)
    }
}

#[cfg(test)]
mod tests;
