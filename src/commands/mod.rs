//! The subcommands. Each returns `Result<(), Error>`; `main` prints the cause chain and
//! exits with [`Error::exit_code`].

mod check;
mod client;
pub mod enroll;
pub mod exec;
mod key;
mod refresh;
mod reload;
mod run;
mod watch;

use std::path::PathBuf;

use crate::cli::{Cli, Command};
use crate::config::{self, Config, LoadOptions};

/// Exit codes (README, "Commands").
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 78;
/// EX_TEMPFAIL: a full disk (or quota) at start; systemd restarts the unit, and the next
/// try may succeed once space is freed.
pub const EXIT_TEMPFAIL: u8 = 75;

/// A command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration")]
    Config(#[source] Box<config::Error>),
    #[error("could not start the agent")]
    Agent(#[source] crate::agent::Error),
    #[error(transparent)]
    Client(#[from] crate::client::Error),
    #[error(transparent)]
    Key(#[from] crate::keys::OpenError),
    #[error("{0}")]
    Failed(String),
    #[error("could not set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("the agent stopped because one of its tasks ended")]
    Task(#[source] std::sync::Arc<crate::tasks::Unexpected>),
    #[error(transparent)]
    Enroll(#[from] enroll::Error),
    /// `exec`: the child ended with this exit code (not a failure of ours; nothing to print).
    #[error("the command exited with status {0}")]
    Exit(u8),
    #[error("could not bind {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        if disk_full(self) {
            return EXIT_TEMPFAIL;
        }
        match self {
            Error::Config(_) | Error::Key(_) => EXIT_CONFIG,
            // A key token not there yet (late at boot): systemd starts the agent again.
            Error::Agent(crate::agent::Error::Key(e)) if e.is_transient() => EXIT_TEMPFAIL,
            Error::Agent(e) if e.is_config() => EXIT_CONFIG,
            Error::Enroll(e) => e.exit_code(),
            Error::Exit(code) => *code,
            _ => EXIT_FAILURE,
        }
    }
}

/// Whether anything in `err`'s cause chain is a full disk or an exhausted quota.
fn disk_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Runs the chosen command.
///
/// # Errors
/// The command's failure.
pub async fn dispatch(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run => run::run(cli.config).await,
        Command::Token(args) => client::token(cli.config, args).await,
        Command::Status(args) => client::status(cli.config, args).await,
        Command::Watch(args) => watch::run(cli.config, args).await,
        Command::Refresh(args) => refresh::run(cli.config, args).await,
        Command::Reload(args) => reload::run(cli.config, args).await,
        Command::Check(args) => check::run(cli.config, args).await,
        Command::Key(cmd) => key::run(cli.config, cmd),
        Command::Enroll => enroll::run(cli.config).await,
        Command::Exec(args) => exec::run(cli.config, args).await,
    }
}

/// Loads the config the way `run` does (file, drop-ins, environment).
///
/// # Errors
/// [`Error::Config`].
pub fn load_config(path: Option<PathBuf>) -> Result<Config, Error> {
    Config::load(&LoadOptions::from_process(path)).map_err(|e| Error::Config(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil;
    use crate::keys::{LoadError, OpenError};

    fn key_store_error(errno: i32) -> Error {
        Error::Agent(crate::agent::Error::Key(OpenError::File(LoadError::Store(
            fsutil::Error::WriteTemp {
                path: "/var/lib/asset-agent/.device-key.pem.tmp-1".into(),
                source: std::io::Error::from_raw_os_error(errno),
            },
        ))))
    }

    #[test]
    fn a_full_disk_at_start_is_a_temporary_failure() {
        assert_eq!(key_store_error(libc::ENOSPC).exit_code(), EXIT_TEMPFAIL);
        assert_eq!(key_store_error(libc::EDQUOT).exit_code(), EXIT_TEMPFAIL);
        let state_dir = Error::Agent(crate::agent::Error::StateDir(fsutil::Error::CreateDir {
            path: "/var/lib/asset-agent".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }));
        assert_eq!(state_dir.exit_code(), EXIT_TEMPFAIL);
        // Anything else that needs a person stays a configuration error.
        assert_eq!(key_store_error(libc::EACCES).exit_code(), EXIT_CONFIG);
    }
}
