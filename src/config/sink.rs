//! `[[sink]]`: files the agent keeps the current asset token in, for software that cannot
//! use the socket (src/sink), and what to do when the token rotates.
//!
//! Each entry is one file. Keys: `path` (required), `format` (`jwt` or `json`), `group`
//! (name or gid), `mode` (default `0640`; bits for others are refused), and at most one
//! rotation hook: `pid_file` or `unit` (with `signal`, default `HUP`), or `command` (with
//! `timeout`). A drop-in's `[[sink]]` list replaces the main file's.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use super::rules::Check;
use super::units::{self, HumanDuration, Named};

/// Default for `sink.mode`: the owner (the agent) and the sink's group may read.
pub const DEFAULT_SINK_MODE: u32 = 0o640;
/// The permission bits `sink.mode` may use: read and write for owner and group only. A
/// token file is never readable by others, and never executable.
pub const SINK_MODE_MASK: u32 = 0o660;
/// Default for `sink.timeout`: how long a hook command may run before it is killed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// One `[[sink]]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Sink {
    /// Absolute path of the file; its directory must exist.
    pub path: PathBuf,
    pub format: SinkFormat,
    /// The file's group; `None` keeps the agent's own.
    pub group: Option<Group>,
    /// Permission bits, within [`SINK_MODE_MASK`].
    pub mode: u32,
    /// What to do after each new token is written.
    pub hook: Option<Hook>,
}

/// `sink.format`: what the file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SinkFormat {
    /// The bare JWT, no trailing newline.
    #[default]
    Jwt,
    /// The `GET /v1/token` JSON object, newline-terminated.
    Json,
}

/// `sink.group`: a group name (looked up in /etc/group when the sink starts) or a gid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Group {
    Name(String),
    Id(u32),
}

/// A rotation hook.
#[derive(Clone, Debug, PartialEq)]
pub enum Hook {
    /// Send `signal` to the process whose pid `pid_file` holds.
    PidFile { path: PathBuf, signal: Signal },
    /// `systemctl kill --kill-who=main --signal=SIG UNIT`.
    Unit { unit: String, signal: Signal },
    /// Run `argv` (no shell), killed with its process group after `timeout`.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

/// The signals a hook may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Hup,
    Usr1,
    Usr2,
    Term,
    Int,
    Quit,
    Winch,
    Alrm,
    Cont,
}

/// `[[sink]]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a [[sink]] table")]
pub(crate) struct RawSink {
    #[serde(deserialize_with = "units::strict_path")]
    pub path: Option<PathBuf>,
    pub format: Option<SinkFormat>,
    pub group: Option<StrOrInt>,
    pub mode: Option<StrOrInt>,
    pub signal: Option<Signal>,
    #[serde(deserialize_with = "units::strict_path")]
    pub pid_file: Option<PathBuf>,
    #[serde(deserialize_with = "units::strict_string")]
    pub unit: Option<String>,
    pub command: Option<Vec<String>>,
    pub timeout: Option<HumanDuration>,
}

/// A value written either as a string or as an integer (`mode`, `group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrOrInt {
    Str(String),
    Int(i64),
}

// === impl Check: [[sink]] ===

impl Check<'_> {
    pub(super) fn sinks(&mut self, raw: Vec<RawSink>) -> Vec<Sink> {
        let mut out: Vec<Sink> = Vec::new();
        for (i, r) in raw.into_iter().enumerate() {
            let key = |k: &str| format!("sink[{i}].{k}");
            let path = match r.path {
                None => {
                    self.missing(&key("path"), " (every [[sink]] needs one)");
                    None
                }
                Some(p) => self.path(&key("path"), Some(p)),
            };
            if let Some(p) = &path
                && out.iter().any(|s| &s.path == p)
            {
                self.invalid(
                    &key("path"),
                    format!("{} is already another sink", p.display()),
                );
            }
            let group = match r.group {
                None => None,
                Some(StrOrInt::Int(n)) => match u32::try_from(n) {
                    Ok(gid) => Some(Group::Id(gid)),
                    Err(_) => {
                        self.invalid(&key("group"), format!("{n} is not a gid"));
                        None
                    }
                },
                Some(StrOrInt::Str(s)) => match s.parse::<u32>() {
                    Ok(gid) => Some(Group::Id(gid)),
                    Err(_) if valid_group_name(&s) => Some(Group::Name(s)),
                    Err(_) => {
                        self.invalid(&key("group"), format!("{s:?} is not a group name or gid"));
                        None
                    }
                },
            };
            let mode = match r.mode.map(parse_mode) {
                None => DEFAULT_SINK_MODE,
                Some(Ok(m)) if m & !SINK_MODE_MASK == 0 && m & 0o400 != 0 => m,
                Some(Ok(m)) => {
                    self.invalid(
                        &key("mode"),
                        format!(
                            "{m:04o} is not allowed: a token file may be read (and written) by its owner and group only, never by others and never executable; use \"0640\" (the default) or \"0600\""
                        ),
                    );
                    DEFAULT_SINK_MODE
                }
                Some(Err(rule)) => {
                    self.invalid(&key("mode"), rule);
                    DEFAULT_SINK_MODE
                }
            };
            let hook = self.hook(i, r.signal, r.pid_file, r.unit, r.command, r.timeout);
            if let Some(path) = path {
                out.push(Sink {
                    path,
                    format: r.format.unwrap_or_default(),
                    group,
                    mode,
                    hook,
                });
            }
        }
        out
    }

    fn hook(
        &mut self,
        i: usize,
        signal: Option<Signal>,
        pid_file: Option<PathBuf>,
        unit: Option<String>,
        command: Option<Vec<String>>,
        timeout: Option<HumanDuration>,
    ) -> Option<Hook> {
        let key = |k: &str| format!("sink[{i}].{k}");
        let set = [pid_file.is_some(), unit.is_some(), command.is_some()];
        if set.iter().filter(|s| **s).count() > 1 {
            self.invalid(
                &key("pid_file"),
                "pid_file, unit and command are alternatives: set at most one rotation hook per sink",
            );
            return None;
        }
        if command.is_none() && timeout.is_some() {
            self.invalid(&key("timeout"), "is only used with sink.command");
        }
        if command.is_some() && signal.is_some() {
            self.invalid(
                &key("signal"),
                "is only used with sink.pid_file or sink.unit",
            );
        }
        let signal = signal.unwrap_or(Signal::Hup);
        if let Some(argv) = command {
            let timeout = self.duration(
                &key("timeout"),
                timeout,
                DEFAULT_HOOK_TIMEOUT,
                Duration::from_secs(1)..=Duration::from_secs(600),
            );
            return match argv.first() {
                Some(prog) if std::path::Path::new(prog).is_absolute() => {
                    Some(Hook::Command { argv, timeout })
                }
                Some(prog) => {
                    self.invalid(
                        &key("command"),
                        format!("the program {prog:?} must be an absolute path (no shell and no PATH search is used)"),
                    );
                    None
                }
                None => {
                    self.invalid(
                        &key("command"),
                        "must name a program: [\"/path/to/program\", \"arg\", ...]",
                    );
                    None
                }
            };
        }
        if let Some(p) = pid_file {
            return self
                .path(&key("pid_file"), Some(p))
                .map(|path| Hook::PidFile { path, signal });
        }
        if let Some(u) = unit {
            let ok = !u.is_empty()
                && !u.starts_with('-')
                && u.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
            if !ok {
                self.invalid(
                    &key("unit"),
                    format!("{u:?} is not a systemd unit name such as \"app.service\""),
                );
                return None;
            }
            return Some(Hook::Unit { unit: u, signal });
        }
        None
    }
}

/// `mode` as written: an octal string ("0640", "640", "0o640") or an integer (TOML's
/// `0o640`). A decimal integer such as `640` is refused: it is not what it looks like.
fn parse_mode(v: StrOrInt) -> Result<u32, String> {
    match v {
        StrOrInt::Str(s) => {
            let digits = s.strip_prefix("0o").unwrap_or(&s);
            u32::from_str_radix(digits, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| format!("{s:?} is not an octal mode such as \"0640\""))
        }
        StrOrInt::Int(n) => match u32::try_from(n) {
            Ok(m) if m <= 0o777 => Ok(m),
            _ => Err(format!(
                "{n} is not a mode: write it in quotes as octal (\"0640\") or as 0o640"
            )),
        },
    }
}

/// POSIX-ish group names: what `groupadd` accepts.
fn valid_group_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || c == '$')
}

// === impl SinkFormat ===

impl SinkFormat {
    pub fn name(self) -> &'static str {
        units::Named::name(self)
    }
}

impl Named for SinkFormat {
    const NAMES: &'static [(&'static str, Self)] = &[("jwt", Self::Jwt), ("json", Self::Json)];
}

impl<'de> serde::Deserialize<'de> for SinkFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        units::named(d)
    }
}

// === impl Signal ===

impl Signal {
    /// The name without `SIG`, as `kill -l` prints it.
    pub fn name(self) -> &'static str {
        units::Named::name(self)
    }

    /// The signal number.
    pub fn number(self) -> i32 {
        match self {
            Self::Hup => libc::SIGHUP,
            Self::Usr1 => libc::SIGUSR1,
            Self::Usr2 => libc::SIGUSR2,
            Self::Term => libc::SIGTERM,
            Self::Int => libc::SIGINT,
            Self::Quit => libc::SIGQUIT,
            Self::Winch => libc::SIGWINCH,
            Self::Alrm => libc::SIGALRM,
            Self::Cont => libc::SIGCONT,
        }
    }

    /// Parses `HUP`, `SIGHUP` or `hup`.
    pub fn parse(s: &str) -> Option<Self> {
        let upper = s.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == bare)
            .map(|(_, v)| *v)
    }
}

impl Named for Signal {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("HUP", Self::Hup),
        ("USR1", Self::Usr1),
        ("USR2", Self::Usr2),
        ("TERM", Self::Term),
        ("INT", Self::Int),
        ("QUIT", Self::Quit),
        ("WINCH", Self::Winch),
        ("ALRM", Self::Alrm),
        ("CONT", Self::Cont),
    ];
}

impl<'de> serde::Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            let all: Vec<&str> = Self::NAMES.iter().map(|(n, _)| *n).collect();
            de::Error::custom(format!("{s:?} is not one of {}", all.join(", ")))
        })
    }
}

// === impl StrOrInt ===

impl<'de> serde::Deserialize<'de> for StrOrInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StrOrInt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(StrOrInt::Str(s.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(StrOrInt::Int(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                i64::try_from(n)
                    .map(StrOrInt::Int)
                    .map_err(|_| E::custom(format!("{n} is too large")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode(StrOrInt::Str("0640".into())), Ok(0o640));
        assert_eq!(parse_mode(StrOrInt::Str("0o600".into())), Ok(0o600));
        assert_eq!(parse_mode(StrOrInt::Int(0o640)), Ok(0o640));
        assert!(parse_mode(StrOrInt::Int(640)).is_err());
        assert!(parse_mode(StrOrInt::Str("rw-r-----".into())).is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(Signal::parse("SIGHUP"), Some(Signal::Hup));
        assert_eq!(Signal::parse("usr1"), Some(Signal::Usr1));
        assert_eq!(Signal::parse("KILL"), None);
        assert_eq!(Signal::Hup.number(), libc::SIGHUP);
    }

    #[test]
    fn group_names() {
        assert!(valid_group_name("node-red"));
        assert!(!valid_group_name("-x"));
        assert!(!valid_group_name("a b"));
    }
}
