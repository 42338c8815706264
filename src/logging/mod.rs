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
//! The subscriber is our own: one filter ([`Filter`]), one table of open spans, one
//! formatter for text and JSON (`format`). `tracing-subscriber`'s layered machinery did the
//! same through a generic pipeline per output format, at several times the code size.

mod format;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use wire::clock::Clock;

use format::{SpanFields, Style};

use crate::config::LogFormat;
use crate::log_filter;
pub use crate::log_filter::{Filter, ParseError};

/// The variables that override `log.level`, strongest first.
pub const ENV_FILTERS: [&str; 2] = ["ASSET_AGENT_LOG", "RUST_LOG"];

/// The installed filter, and whether the environment chose it.
static FILTER: OnceLock<(Arc<RwLock<Filter>>, bool)> = OnceLock::new();

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
    let filter = log_filter::parse(&directive).unwrap_or_else(|_| Filter::level(LevelFilter::INFO));
    let filter = Arc::new(RwLock::new(filter));
    let sink = sink();
    let style = Style {
        json: format == LogFormat::Json,
        journal: sink == Sink::Journal,
        ansi: format == LogFormat::Text && sink == Sink::Terminal,
    };
    let subscriber = Agent {
        style,
        clock: Clock::system(),
        filter: Arc::clone(&filter),
        spans: Mutex::default(),
        out: Output::Stderr,
    };
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = FILTER.set((filter, from_env));
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
    replace(installed, filter);
    Ok(LevelChange::Applied)
}

/// Puts `filter` in force.
fn replace(installed: &RwLock<Filter>, filter: Filter) {
    *installed.write().unwrap_or_else(PoisonError::into_inner) = filter;
    // Callsites cache whether they are enabled; ask them all again.
    tracing::callsite::rebuild_interest_cache();
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

/// The subscriber: filters, keeps the spans, formats each event into one line and writes it
/// to stderr in one `write`.
struct Agent {
    style: Style,
    clock: Clock,
    filter: Arc<RwLock<Filter>>,
    spans: Mutex<Spans>,
    out: Output,
}

/// Where lines go.
enum Output {
    Stderr,
    #[cfg(test)]
    Buffer(Arc<Mutex<String>>),
}

/// The open spans. There are few (one per gateway child), so a map behind a lock will do.
#[derive(Default)]
struct Spans {
    last: u64,
    open: HashMap<u64, SpanData>,
}

struct SpanData {
    meta: &'static Metadata<'static>,
    parent: Option<u64>,
    fields: SpanFields,
    /// Handles to this span, plus one per child span.
    refs: usize,
}

thread_local! {
    /// The spans entered on this thread, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The innermost span entered on this thread.
fn current() -> Option<u64> {
    ENTERED.with(|e| e.borrow().last().copied())
}

// === impl Agent ===

impl Agent {
    fn filter(&self) -> std::sync::RwLockReadGuard<'_, Filter> {
        self.filter.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn spans(&self) -> std::sync::MutexGuard<'_, Spans> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Spans {
    /// `id` and its parents, root first.
    fn scope(&self, id: Option<u64>) -> Vec<&SpanData> {
        let mut chain = Vec::new();
        let mut next = id;
        while let Some(span) = next.and_then(|id| self.open.get(&id)) {
            chain.push(span);
            next = span.parent;
        }
        chain.reverse();
        chain
    }
}

impl Subscriber for Agent {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.filter().enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.filter().enabled(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.filter().max_level())
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut fields = SpanFields::default();
        fields.record(self.style, attrs);
        let parent = match attrs.parent() {
            Some(id) => Some(id.into_u64()),
            None if attrs.is_contextual() => current(),
            None => None,
        };
        let mut spans = self.spans();
        let parent = parent.filter(|p| match spans.open.get_mut(p) {
            Some(span) => {
                span.refs += 1;
                true
            }
            None => false,
        });
        spans.last += 1;
        let id = spans.last;
        spans.open.insert(
            id,
            SpanData {
                meta: attrs.metadata(),
                parent,
                fields,
                refs: 1,
            },
        );
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        // Formatting runs outside the lock: a value's `Debug` may log.
        let taken = self
            .spans()
            .open
            .get_mut(&span.into_u64())
            .map(|s| std::mem::take(&mut s.fields));
        if let Some(mut fields) = taken {
            fields.record(self.style, values);
            if let Some(s) = self.spans().open.get_mut(&span.into_u64()) {
                s.fields = fields;
            }
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let style = self.style;
        let level = *event.metadata().level();
        let now = (style.json || !style.journal).then(|| self.clock.now());
        let mut line = String::with_capacity(256);
        format::head(&mut line, style, level, now, event);
        let current = current();
        {
            let spans = self.spans();
            if style.json {
                // As `tracing-subscriber` chose: the explicit parent, else the current
                // span, even for an event marked as a root.
                let span = event
                    .parent()
                    .and_then(|id| spans.open.get(&id.into_u64()))
                    .or_else(|| current.and_then(|id| spans.open.get(&id)));
                if let Some(span) = span {
                    line.push_str(",\"span\":");
                    format::json_span(&mut line, span.meta.name(), &span.fields);
                    line.push_str(",\"spans\":[");
                    for (i, span) in spans.scope(current).into_iter().enumerate() {
                        if i > 0 {
                            line.push(',');
                        }
                        format::json_span(&mut line, span.meta.name(), &span.fields);
                    }
                    line.push(']');
                }
                line.push_str("}\n");
            } else {
                let parent = match event.parent() {
                    Some(id) => Some(id.into_u64()),
                    None if event.is_contextual() => current,
                    None => None,
                };
                let scope = spans.scope(parent);
                for span in &scope {
                    format::text_span(&mut line, style, span.meta.name(), &span.fields);
                }
                if !scope.is_empty() {
                    line.push(' ');
                }
            }
        }
        if !style.json {
            format::text_tail(&mut line, style, event);
        }
        match &self.out {
            Output::Stderr => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            #[cfg(test)]
            Output::Buffer(buf) => buf
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(&line),
        }
    }

    fn enter(&self, span: &Id) {
        ENTERED.with(|e| e.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        let id = span.into_u64();
        ENTERED.with(|e| {
            let mut entered = e.borrow_mut();
            if let Some(i) = entered.iter().rposition(|&x| x == id) {
                entered.remove(i);
            }
        });
    }

    fn clone_span(&self, span: &Id) -> Id {
        if let Some(s) = self.spans().open.get_mut(&span.into_u64()) {
            s.refs += 1;
        }
        span.clone()
    }

    fn try_close(&self, span: Id) -> bool {
        let mut spans = self.spans();
        let mut next = Some(span.into_u64());
        let mut closed = false;
        while let Some(id) = next.take() {
            let Some(s) = spans.open.get_mut(&id) else {
                break;
            };
            s.refs = s.refs.saturating_sub(1);
            if s.refs > 0 {
                break;
            }
            let parent = spans.open.remove(&id).and_then(|s| s.parent);
            closed |= id == span.into_u64();
            next = parent;
        }
        closed
    }
}

#[cfg(test)]
mod tests;
