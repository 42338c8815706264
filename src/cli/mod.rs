//! The command line (README, "Commands"; docs/api.md, "CLI"): a small hand-written parser
//! (clap cost the shipped binary 144,480 bytes on x86_64). `spec` holds what each command
//! accepts and its help text, `args` walks the arguments against it, and this module
//! turns the result into the typed [`Cli`] the commands use.
//!
//! Accepted as clap did: `--name value` and `--name=value`, `--` before a value that
//! starts with `-` (and before `exec`'s command), `--config` before or after the
//! subcommand (the later one wins), `-h`/`--help` and `-V`/`--version` everywhere,
//! `help [COMMAND]...`. Mistakes (an unknown argument or subcommand, a missing or invalid
//! value, an option given twice, options that exclude each other) exit 2 with one line
//! naming the argument and where to find help.

mod args;
mod spec;

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use args::Matches;
use spec::{Kind, Spec};

/// Builds a leaf's [`Command`] from what was found on the command line (the tables of
/// [`spec`] name one per command; [`args`] fills the [`Matches`]).
pub(crate) type Build = fn(&mut Matches, &Env<'_>) -> Result<Command, UsageError>;

/// The exit code of a command-line mistake (README, "Commands").
pub const EXIT_USAGE: u8 = 2;

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

#[derive(Debug)]
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
    Key(KeyCommand),
    /// Enroll this device with the OAuth device flow: shows a code to approve in a browser,
    /// then stores the refresh token for the agent.
    Enroll,
    /// Run a command with the asset token in an environment variable and/or a file, kept
    /// current on rotation; forwards signals and exits with the command's status.
    Exec(ExecArgs),
}

#[derive(Debug)]
pub struct ExecArgs {
    /// Put the token in this environment variable (default ASSET_TOKEN when neither
    /// --env nor --file is given).
    pub env: Option<String>,
    /// Keep the token in this file (mode 0600, yours), rewritten on every rotation and
    /// removed when no valid token is held and when the command ends.
    pub file: Option<PathBuf>,
    /// On rotation: restart the command with the new token (the default with --env),
    /// send it --signal (the file is rewritten first), or do nothing but rewrite the file
    /// (the default with only --file).
    pub on_rotation: Option<OnRotation>,
    /// The signal --on-rotation=signal sends.
    pub signal: String,
    /// How long to wait for a first token before giving up.
    pub wait: Duration,
    pub socket: SocketArg,
    /// The command and its arguments, after `--`.
    pub command: Vec<OsString>,
}

/// `exec --on-rotation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRotation {
    Restart,
    Signal,
    None,
}

/// Which identity a client command is about (gateway mode).
#[derive(Debug)]
pub struct AssetArg {
    /// A child asset of a gateway, by name (`[children.NAME]` or children.d/NAME.toml);
    /// the agent's own identity when absent.
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
#[derive(Debug)]
pub struct SocketArg {
    /// The agent's socket (default: the config's `api.socket` when something is there,
    /// else the system agent's /run/asset-agent/agent.sock).
    pub socket: Option<PathBuf>,
}

#[derive(Debug)]
pub struct TokenArgs {
    /// Print only the JWT (for `$(asset-agent token --raw)` in scripts).
    pub raw: bool,
    /// Print the full JSON answer (the default).
    pub json: bool,
    /// Refresh first unless the token has at least this many seconds left.
    pub min_ttl: Option<u64>,
    pub asset: AssetArg,
    pub socket: SocketArg,
}

#[derive(Debug)]
pub struct StatusArgs {
    /// Print the status document as JSON.
    pub json: bool,
    pub asset: AssetArg,
    pub socket: SocketArg,
}

#[derive(Debug)]
pub struct WatchArgs {
    /// Print each event as the agent's NDJSON line.
    pub json: bool,
    /// Print only each new JWT, one per line (for `while read -r token` loops).
    pub raw: bool,
    pub asset: AssetArg,
    pub socket: SocketArg,
}

#[derive(Debug)]
pub struct RefreshArgs {
    /// Print the agent's JSON answer.
    pub json: bool,
    pub socket: SocketArg,
}

#[derive(Debug)]
pub struct ReloadArgs {
    /// Print the agent's JSON answer.
    pub json: bool,
    pub socket: SocketArg,
}

#[derive(Debug)]
pub struct CheckArgs {
    /// Print the findings as JSON.
    pub json: bool,
    /// Also perform one real token exchange (registers or links the Asset, as the agent
    /// would; the token is verified and discarded).
    pub exchange: bool,
}

#[derive(Debug)]
pub enum KeyCommand {
    /// Print the device public key (default: a summary with thumbprint and PEM).
    Show(KeyShowArgs),
    /// Create the device key if it does not exist yet (`run` also does this).
    Generate,
}

#[derive(Debug)]
pub struct KeyShowArgs {
    /// As a JWK (what the actor token's cnf.jwk carries).
    pub jwk: bool,
    /// As an SPKI PEM public key.
    pub pem: bool,
    /// Only the RFC 7638 thumbprint (the actor token's kid).
    pub thumbprint: bool,
}

/// Why the command line names nothing to run.
#[derive(Debug)]
pub enum Stop {
    /// `--help`, `-h` or `help`: this text on stdout, exit 0.
    Help(String),
    /// `--version` or `-V`: exit 0.
    Version,
    /// A group without its subcommand (`asset-agent`, `asset-agent key`): its help on
    /// stderr, exit 2.
    MissingCommand(String),
    /// A mistake in the arguments of `command` (`key show`; "" for the top level): exit 2.
    Usage {
        error: UsageError,
        command: &'static str,
    },
}

/// A mistake on the command line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unrecognized subcommand '{0}'")]
    UnknownCommand(String),
    #[error("unexpected argument '{0}'")]
    UnexpectedArgument(String),
    #[error("a value is required for '--{0}' but none was supplied")]
    MissingValue(&'static str),
    #[error("'--{0}' takes no value, but got '{1}'")]
    UnexpectedValue(&'static str, String),
    #[error("the argument '--{0}' cannot be used multiple times")]
    Duplicate(&'static str),
    #[error("the argument '--{0}' cannot be used with '--{1}'")]
    Conflict(&'static str, &'static str),
    #[error("invalid value '{value}' for '--{arg}': {reason}")]
    InvalidValue {
        arg: &'static str,
        value: String,
        reason: String,
    },
    #[error("the value of '--{0}' is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("the command to run is missing: give it after '--'")]
    MissingCommand,
    #[error("the environment variable {0} is set but empty (unset it or give a path)")]
    EmptyEnv(&'static str),
}

// === impl Cli ===

impl Cli {
    /// The process's command line and environment.
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
        let mut args = args.into_iter();
        let mut spec: &'static Spec = &spec::TOP;
        let mut config = None;
        loop {
            let (mut m, next) = args::walk(spec, &mut args)?;
            let usage = |error| Stop::Usage {
                error,
                command: spec.path,
            };
            // A `--config` after the subcommand wins over one before it.
            if let Some(path) = m.take_path("config").map_err(usage)? {
                config = Some(path);
            }
            match (next, &spec.kind) {
                (Some(sub), _) if matches!(sub.kind, Kind::Help) => {
                    return Err(help_topic(spec, args));
                }
                (Some(sub), _) => spec = sub,
                (None, Kind::Leaf { build, .. }) => {
                    let command = build(&mut m, env).map_err(usage)?;
                    let config = match config {
                        Some(path) => Some(path),
                        None => env_path(env, spec::CONFIG_ENV).map_err(usage)?,
                    };
                    return Ok(Cli { config, command });
                }
                (None, _) => return Err(Stop::MissingCommand(spec.help())),
            }
        }
    }
}

/// `help [COMMAND]...` under `group`: the help of the command the words name.
fn help_topic(group: &'static Spec, words: impl Iterator<Item = OsString>) -> Stop {
    let mut spec = group;
    for word in words {
        let word = word.to_string_lossy();
        match spec.command(&word) {
            Some(sub) => spec = sub,
            None => {
                return Stop::Usage {
                    error: UsageError::UnknownCommand(word.into_owned()),
                    command: spec.path,
                };
            }
        }
    }
    Stop::Help(spec.help())
}

/// A path from the environment variable `name`, when it is set.
fn env_path(env: &Env<'_>, name: &'static str) -> Result<Option<PathBuf>, UsageError> {
    match env(name) {
        Some(v) if v.is_empty() => Err(UsageError::EmptyEnv(name)),
        v => Ok(v.map(PathBuf::from)),
    }
}

// === impl Stop ===

impl Stop {
    /// 0 for help and version, [`EXIT_USAGE`] for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            Stop::Help(_) | Stop::Version => 0,
            Stop::MissingCommand(_) | Stop::Usage { .. } => EXIT_USAGE,
        }
    }

    /// What to print; it goes to stdout when the exit code is 0, else to stderr.
    pub fn text(&self) -> String {
        match self {
            Stop::Help(text) | Stop::MissingCommand(text) => text.clone(),
            Stop::Version => format!("{} {}\n", spec::BIN, env!("CARGO_PKG_VERSION")),
            Stop::Usage { error, command } => format!(
                "error: {error}\n\nFor more information, try '{} --help'.\n",
                spec::display_name(command)
            ),
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

// === building the commands (the `build` of each leaf in `spec`) ===

fn socket(m: &mut Matches, env: &Env<'_>) -> Result<SocketArg, UsageError> {
    let socket = match m.take_path("socket")? {
        Some(path) => Some(path),
        None => env_path(env, spec::SOCKET_ENV)?,
    };
    Ok(SocketArg { socket })
}

fn asset(m: &mut Matches) -> Result<AssetArg, UsageError> {
    let asset = match m.positional.pop() {
        Some(name) => Some(
            name.into_string()
                .map_err(|_| UsageError::NotUtf8("NAME"))?,
        ),
        None => None,
    };
    Ok(AssetArg { asset })
}

fn build_run(_: &mut Matches, _: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Run)
}

fn build_token(m: &mut Matches, env: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Token(TokenArgs {
        raw: m.flag("raw"),
        json: m.flag("json"),
        min_ttl: m.take_parsed("min-ttl", str::parse::<u64>)?,
        asset: asset(m)?,
        socket: socket(m, env)?,
    }))
}

fn build_status(m: &mut Matches, env: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Status(StatusArgs {
        json: m.flag("json"),
        asset: asset(m)?,
        socket: socket(m, env)?,
    }))
}

fn build_watch(m: &mut Matches, env: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Watch(WatchArgs {
        json: m.flag("json"),
        raw: m.flag("raw"),
        asset: asset(m)?,
        socket: socket(m, env)?,
    }))
}

fn build_refresh(m: &mut Matches, env: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Refresh(RefreshArgs {
        json: m.flag("json"),
        socket: socket(m, env)?,
    }))
}

fn build_reload(m: &mut Matches, env: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Reload(ReloadArgs {
        json: m.flag("json"),
        socket: socket(m, env)?,
    }))
}

fn build_check(m: &mut Matches, _: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Check(CheckArgs {
        json: m.flag("json"),
        exchange: m.flag("exchange"),
    }))
}

fn build_key_show(m: &mut Matches, _: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Key(KeyCommand::Show(KeyShowArgs {
        jwk: m.flag("jwk"),
        pem: m.flag("pem"),
        thumbprint: m.flag("thumbprint"),
    })))
}

fn build_key_generate(_: &mut Matches, _: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Key(KeyCommand::Generate))
}

fn build_enroll(_: &mut Matches, _: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Enroll)
}

fn build_exec(m: &mut Matches, env: &Env<'_>) -> Result<Command, UsageError> {
    Ok(Command::Exec(ExecArgs {
        env: m.take_string("env")?,
        file: m.take_path("file")?,
        on_rotation: m.take_parsed("on-rotation", OnRotation::parse)?,
        signal: m.take_string("signal")?.unwrap_or_else(|| "HUP".to_owned()),
        wait: m
            .take_parsed("wait", humantime::parse_duration)?
            .unwrap_or(DEFAULT_WAIT),
        socket: socket(m, env)?,
        command: std::mem::take(&mut m.positional),
    }))
}

/// `exec --wait`'s default.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

// === impl OnRotation ===

impl OnRotation {
    fn parse(text: &str) -> Result<OnRotation, &'static str> {
        match text {
            "restart" => Ok(OnRotation::Restart),
            "signal" => Ok(OnRotation::Signal),
            "none" => Ok(OnRotation::None),
            _ => Err("possible values: restart, signal, none"),
        }
    }
}

#[cfg(test)]
mod tests;
