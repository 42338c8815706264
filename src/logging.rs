//! Log output: `tracing` to stderr, in a form that suits where stderr goes.
//!
//! - **Under systemd** stderr is connected to the journal, and systemd says so in
//!   `JOURNAL_STREAM` (`device:inode` of that stream). Then every line starts with the
//!   syslog priority in angle brackets, the `sd-daemon(3)` convention journald turns into
//!   the entry's `PRIORITY=` (so `journalctl -p warning` works), and carries no timestamp
//!   (journald records its own) and no colour.
//! - **On a terminal**: human lines with colours (unless `NO_COLOR` is set).
//! - **Anywhere else** (a file, a pipe, a container log): the same lines without colours.
//! - `log.format = "json"`: one JSON object per line, for log shippers; under the journal
//!   it gets the priority prefix too, which journald strips, so `MESSAGE=` is pure JSON.
//!
//! The filter comes from `ASSET_AGENT_LOG`, else `RUST_LOG`, else the config's `log.level`.
//! It sits behind a reload handle so `SIGHUP` can change `log.level` without a restart
//! ([`set_level`]); the environment, fixed for the life of the process, still wins.

use std::fmt;
use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, Registry, reload};

use crate::config::LogFormat;

/// The variables that override `log.level`, strongest first.
pub const ENV_FILTERS: [&str; 2] = ["ASSET_AGENT_LOG", "RUST_LOG"];

/// The installed filter's reload handle, and whether the environment chose the filter.
static FILTER: OnceLock<(reload::Handle<Targets, Registry>, bool)> = OnceLock::new();

/// Where stderr goes, which decides the line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The systemd journal (`JOURNAL_STREAM` names our stderr).
    Journal,
    /// A terminal that may show colours.
    Terminal,
    /// Anything else: a file or pipe; no colours.
    Plain,
}

/// `log.level` could not be changed at runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{level}` is not a valid log filter")]
    Directive {
        level: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("logging was not initialised by this process")]
    NotInitialised,
    #[error("could not swap the log filter")]
    Reload(#[source] reload::Error),
}

/// What [`set_level`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelChange {
    /// The new filter is in force.
    Applied,
    /// `ASSET_AGENT_LOG` or `RUST_LOG` is set and keeps precedence; nothing changed.
    OverriddenBy(&'static str),
}

/// Installs the global subscriber. `level` is the config's `log.level`; the environment
/// wins when set. A second call (tests, demo) keeps the first subscriber.
pub fn init(level: &str, format: LogFormat) {
    let (directive, from_env) = match env_filter() {
        Some((_, value)) => (value, true),
        None => (level.to_owned(), false),
    };
    let filter =
        parse_filter(&directive).unwrap_or_else(|_| Targets::new().with_default(Level::INFO));
    let (filter, handle) = reload::Layer::new(filter);
    let sink = sink();
    let base = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let output = match (format, sink) {
        (LogFormat::Text, Sink::Journal) => base
            .with_ansi(false)
            .event_format(Prefixed(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false)
                    .with_target(false)
                    .with_ansi(false),
            ))
            .boxed(),
        (LogFormat::Text, sink) => base.with_ansi(sink == Sink::Terminal).boxed(),
        (LogFormat::Json, Sink::Journal) => base
            .json()
            .with_ansi(false)
            .event_format(Prefixed(
                tracing_subscriber::fmt::format().json().with_target(false),
            ))
            .boxed(),
        (LogFormat::Json, _) => base.json().with_ansi(false).boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set((handle, from_env));
    }
}

/// Replaces the filter with `level` (the `log.level` of a reloaded config).
///
/// # Errors
/// An invalid directive (config validation already rejects those), or no subscriber of
/// ours installed.
pub fn set_level(level: &str) -> Result<LevelChange, Error> {
    let filter = parse_filter(level).map_err(|source| Error::Directive {
        level: level.to_owned(),
        source,
    })?;
    let (handle, from_env) = FILTER.get().ok_or(Error::NotInitialised)?;
    if *from_env {
        let var = env_filter().map_or(ENV_FILTERS[0], |(var, _)| var);
        return Ok(LevelChange::OverriddenBy(var));
    }
    handle.reload(filter).map_err(Error::Reload)?;
    Ok(LevelChange::Applied)
}

/// Parses a filter: a level (`debug`), or `target=level` directives separated by commas
/// (`asset_agent=debug,rumqttc=warn,info`), as `RUST_LOG` takes them. (Span and field
/// filters are not supported: matching them needs a regex engine, which would cost the
/// device binary more than the feature is worth.)
///
/// # Errors
/// A directive that is not of that form.
pub fn parse_filter(directive: &str) -> Result<Targets, tracing_subscriber::filter::ParseError> {
    directive.trim().parse()
}

/// The first of [`ENV_FILTERS`] that is set and non-empty, with its value.
fn env_filter() -> Option<(&'static str, String)> {
    ENV_FILTERS.into_iter().find_map(|var| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (var, v))
    })
}

/// Where stderr goes, from `JOURNAL_STREAM`, the terminal test and `NO_COLOR`.
pub fn sink() -> Sink {
    let journal = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_stream(&v));
    if journal.is_some() && journal == stderr_identity() {
        return Sink::Journal;
    }
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    if std::io::stderr().is_terminal() && !no_color {
        Sink::Terminal
    } else {
        Sink::Plain
    }
}

/// `JOURNAL_STREAM` is `device:inode` in decimal.
fn parse_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Device and inode of our stderr. If stderr was redirected after systemd set it up (a
/// wrapper script piping into something), they differ and we do not prefix.
fn stderr_identity() -> Option<(u64, u64)> {
    let st = rustix::fs::fstat(std::io::stderr()).ok()?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)] // widths differ by target
    Some((st.st_dev as u64, u64::from(st.st_ino)))
}

/// The syslog priority of a `tracing` level (RFC 5424: 3 err, 4 warning, 6 info, 7 debug).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Prefixes each event with `<priority>` for journald, then formats it with `F`.
struct Prefixed<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parses() {
        assert_eq!(parse_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_stream(" 8:1\n"), Some((8, 1)));
        assert_eq!(parse_stream("8"), None);
        assert_eq!(parse_stream("a:b"), None);
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::TRACE), 7);
    }

    #[test]
    fn stderr_has_an_identity() {
        assert!(stderr_identity().is_some());
    }
}
