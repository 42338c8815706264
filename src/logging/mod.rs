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
//! It can be swapped at runtime, so `SIGHUP` changes `log.level` without a restart
//! ([`set_level`]); the environment, fixed for the life of the process, still wins.
//!
//! The pieces are `tracing-subscriber`'s: its registry, its `Targets` filter behind a
//! `reload` layer, and its fmt layer (the full text format, or JSON). What it lacks is the
//! journal's `<N>` prefix (`journal::Journal`, around either format) and knowing where stderr goes
//! ([`sink`]).

mod journal;

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{Layer, Registry, reload};

use crate::config::LogFormat;
use crate::log_filter;
pub use crate::log_filter::{Filter, ParseError};
use journal::Journal;

/// The variables that override `log.level`, strongest first.
pub const ENV_FILTERS: [&str; 2] = ["ASSET_AGENT_LOG", "RUST_LOG"];

/// The handle to the installed filter, and whether the environment chose it.
static FILTER: OnceLock<(FilterHandle, bool)> = OnceLock::new();

/// Swaps the filter of the installed subscriber.
type FilterHandle = reload::Handle<Filter, Registry>;

/// The subscriber below the output layer: the registry and the filter.
type Filtered = tracing_subscriber::layer::Layered<reload::Layer<Filter, Registry>, Registry>;

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
        source: ParseError,
    },
    #[error("logging was not initialised by this process")]
    NotInitialised,
    #[error("the log filter could not be swapped")]
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
    let filter = log_filter::parse(&directive)
        .unwrap_or_else(|_| Filter::new().with_default(LevelFilter::INFO));
    let (subscriber, handle) = subscriber(filter, Style::of(sink(), format), std::io::stderr);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = FILTER.set((handle, from_env));
    }
}

/// How lines look: what [`init`] makes of the sink and `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Style {
    /// JSON objects rather than text.
    json: bool,
    /// Prefix `<priority>`; text lines then carry no timestamp and no level.
    journal: bool,
    /// Colours (text only).
    ansi: bool,
}

impl Style {
    fn of(sink: Sink, format: LogFormat) -> Self {
        Self {
            json: format == LogFormat::Json,
            journal: sink == Sink::Journal,
            ansi: format == LogFormat::Text && sink == Sink::Terminal,
        }
    }
}

/// The registry, `filter` behind a reload layer, and the output layer for `style` writing
/// to `writer`; with the handle that swaps the filter.
fn subscriber<W>(
    filter: Filter,
    style: Style,
    writer: W,
) -> (impl tracing::Subscriber + Send + Sync, FilterHandle)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, handle) = reload::Layer::new(filter);
    let subscriber = Registry::default().with(filter).with(output(style, writer));
    (subscriber, handle)
}

/// The fmt layer for `style`: the full text format or JSON, without the target; under the
/// journal with the `<N>` prefix, and text then without timestamp and level.
fn output<W>(style: Style, writer: W) -> Box<dyn Layer<Filtered> + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(style.ansi)
        // On a failed write (stderr closed) the library would report it with `eprintln!`,
        // which panics when stderr is gone: the process would abort over a log line.
        .log_internal_errors(false);
    match (style.json, style.journal) {
        (true, false) => layer.json().boxed(),
        (true, true) => layer.json().map_event_format(Journal).boxed(),
        (false, false) => layer.boxed(),
        (false, true) => layer
            .without_time()
            .with_level(false)
            .map_event_format(Journal)
            .boxed(),
    }
}

/// Replaces the filter with `level` (the `log.level` of a reloaded config).
///
/// # Errors
/// An invalid directive (config validation already rejects those), or no subscriber of
/// ours installed.
pub fn set_level(level: &str) -> Result<LevelChange, Error> {
    let filter = log_filter::parse(level).map_err(|source| Error::Directive {
        level: level.to_owned(),
        source,
    })?;
    let (installed, from_env) = FILTER.get().ok_or(Error::NotInitialised)?;
    if *from_env {
        let var = env_filter().map_or(ENV_FILTERS[0], |(var, _)| var);
        return Ok(LevelChange::OverriddenBy(var));
    }
    // The reload layer asks every callsite again whether it is enabled.
    installed.reload(filter).map_err(Error::Reload)?;
    Ok(LevelChange::Applied)
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

#[cfg(test)]
mod tests;
