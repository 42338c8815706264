//! Configuration errors: each names the step, the file or variable, the key and the rule.
//!
//! The `config` crate reports serde failures as text with the dotted key appended; the file
//! is often missing because serde errors carry no origin. We deserialise every source on
//! its own (see `load`), so we always know the origin, and we take the `config` crate's
//! error apart here to say "unknown key `salesforce.instanse_url` in /etc/…/agent.toml".

use std::fmt;
use std::io;
use std::path::PathBuf;

use config::ConfigError;

/// Everything that can go wrong between finding the config files and a validated `Config`.
/// `main` maps every variant to exit code 78 (EX_CONFIG).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The config file given with `--config`/`ASSET_AGENT_CONFIG` does not exist.
    #[error("config file {} does not exist", path.display())]
    FileMissing { path: PathBuf },

    /// A config file or drop-in exists but could not be read (permissions, not UTF-8, …).
    #[error("could not read config file {}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A config file (the main file, a drop-in, a child's file), or a directory on its
    /// way, could be changed by a user other than root and the agent's: whoever can write
    /// it can give itself an identity or a role, so it is not read.
    #[error("config file {} is not trusted", path.display())]
    Untrusted {
        path: PathBuf,
        #[source]
        source: Box<crate::secure_path::Error>,
    },

    /// The drop-in directory exists but could not be listed.
    #[error("could not list drop-in directory {}", dir.display())]
    ReadDropIns {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A file is not valid TOML. The source carries line and column.
    #[error("config file {} is not valid TOML", path.display())]
    Syntax {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An `ASSET_AGENT_<SECTION>__<KEY>` variable is set to the empty string. We refuse it
    /// rather than guess whether it means "unset" or "empty value".
    #[error("environment variable {var} is empty: unset it or give it a value")]
    EmptyEnv { var: String },

    /// A key that the schema does not know (a typo, or a section not built yet).
    #[error("unknown key `{key}` in {origin} ({expected})")]
    UnknownKey {
        /// Dotted key, e.g. `salesforce.instanse_url`.
        key: String,
        /// The file path or environment variable that set it.
        origin: String,
        /// What serde expected there ("expected one of `instance_url`, …").
        expected: String,
    },

    /// A value of the wrong type or form, or one that breaks a rule.
    #[error("invalid `{key}`{}: {rule}", In(origin.as_deref()))]
    Invalid {
        /// Dotted key, e.g. `token.refresh_at`.
        key: String,
        /// The file path or environment variable that set it, when known.
        origin: Option<String>,
        /// The rule broken, e.g. "must be between 10% and 95%, got 99%".
        rule: String,
    },

    /// A required key is absent from every file and the environment.
    #[error("missing `{key}`{condition}: {hint}")]
    Missing {
        /// Dotted key, e.g. `salesforce.instance_url`.
        key: String,
        /// Why it is required here, e.g. ` (required when auth.method = "jwt_bearer")`.
        condition: String,
        /// Where to set it.
        hint: String,
    },

    /// `asset.device_id` is unset and the machine id could not be read.
    #[error(
        "`asset.device_id` is not set and no machine id could be read from {}: set asset.device_id",
        path.display()
    )]
    DeviceId {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// More than one problem; each is reported so they can all be fixed in one go.
    #[error("{} configuration problems: {}", .0.len(), Joined(.0))]
    Several(Vec<Error>),

    /// A `config` crate failure we could not take apart further.
    #[error("could not load configuration from {origin}")]
    Other {
        origin: String,
        #[source]
        source: ConfigError,
    },
}

/// Formats " in ORIGIN" when an origin is known.
struct In<'a>(Option<&'a str>);

/// Formats a list of errors, each with its causes, separated by "; ".
struct Joined<'a>(&'a [Error]);

// === impl Error ===

impl Error {
    /// Turns a `config` crate deserialisation error into one of ours, naming `origin`.
    pub(crate) fn from_config(err: ConfigError, origin: &str) -> Self {
        match err {
            ConfigError::Message(msg) => classify(msg, None, origin),
            ConfigError::At { error, key, .. } => match *error {
                ConfigError::Message(msg) => classify(msg, key, origin),
                ConfigError::Type {
                    unexpected,
                    expected,
                    ..
                } => Self::Invalid {
                    key: key.unwrap_or_default(),
                    origin: Some(origin.to_owned()),
                    rule: format!("expected {expected}, found {unexpected}"),
                },
                other => Self::Invalid {
                    key: key.unwrap_or_default(),
                    origin: Some(origin.to_owned()),
                    rule: other.to_string(),
                },
            },
            ConfigError::Type {
                unexpected,
                expected,
                key,
                ..
            } => Self::Invalid {
                key: key.unwrap_or_default(),
                origin: Some(origin.to_owned()),
                rule: format!("expected {expected}, found {unexpected}"),
            },
            other => Self::Other {
                origin: origin.to_owned(),
                source: other,
            },
        }
    }

    /// Every individual problem: the list for [`Error::Several`], else just `self`.
    /// `asset-agent check` prints one finding per entry.
    pub fn problems(&self) -> Vec<&Error> {
        match self {
            Self::Several(all) => all.iter().collect(),
            one => vec![one],
        }
    }
}

/// Serde's unknown-field message is `unknown field `x`, expected one of ...`; the `config`
/// crate appends nothing to it but wraps it with the key of the enclosing table.
fn classify(msg: String, table: Option<String>, origin: &str) -> Error {
    let unknown = msg
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'));
    if let Some((field, tail)) = unknown {
        let key = match &table {
            Some(t) if !t.is_empty() => format!("{t}.{field}"),
            _ => field.to_owned(),
        };
        return Error::UnknownKey {
            key,
            origin: origin.to_owned(),
            expected: tail.trim_start_matches([',', ' ']).to_owned(),
        };
    }
    Error::Invalid {
        key: table.unwrap_or_else(|| "(top level)".to_owned()),
        origin: Some(origin.to_owned()),
        rule: msg,
    }
}

impl fmt::Display for In<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(o) => write!(f, " in {o}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}
