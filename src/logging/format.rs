//! The two line formats, written by hand so one small code path serves every sink.
//!
//! Text is what `tracing-subscriber`'s default format printed (target off):
//! `2026-12-03T18:03:54.123456Z  INFO child{name=pump-7}: message key=value`; without the
//! timestamp and level under the journal, where `<6>` stands in front instead. The message
//! comes first, then the other fields as `name=value` with values in their `Debug` form
//! (`%x` values print as `Display`, string literals are quoted). Control characters that
//! drive a terminal (ESC, BEL, BS, FF, DEL, C1) are escaped in the message.
//!
//! JSON is one object per line, with the fields of `tracing-subscriber`'s JSON format:
//! `{"timestamp":…,"level":"INFO","fields":{"message":…,…},"span":{…,"name":"child"},
//! "spans":[…]}`. Numbers and booleans stay JSON numbers and booleans; everything else is a
//! string.

use std::fmt::{self, Write as _};
use std::time::SystemTime;

use tracing::Level;
use tracing::field::{Field, Visit};

const BOLD: &str = "\x1b[1m";
const DIM: &str = "\x1b[2m";
const ITALIC: &str = "\x1b[3m";
const RESET: &str = "\x1b[0m";

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// JSON objects rather than text.
    pub json: bool,
    /// Prefix `<priority>`; text lines then carry no timestamp and no level.
    pub journal: bool,
    /// Colours (text only).
    pub ansi: bool,
}

/// A span's fields, formatted when recorded, in the form the style needs.
#[derive(Debug, Default)]
pub struct SpanFields {
    /// Text: `name=value name2=value2`.
    text: String,
    /// JSON: `(name, JSON value)`, sorted by name, one entry per name.
    json: Vec<(&'static str, String)>,
}

// === impl SpanFields ===

impl SpanFields {
    /// Records `values` (a span's attributes, or a later `record`).
    pub fn record(&mut self, style: Style, values: &dyn Recordable) {
        if style.json {
            values.record_into(&mut JsonSpanVisitor(&mut self.json));
        } else {
            let first = self.text.is_empty();
            values.record_into(&mut TextVisitor {
                out: &mut self.text,
                ansi: style.ansi,
                first,
            });
        }
    }
}

/// Something that records fields: an event, a span's attributes, a span record.
pub trait Recordable {
    fn record_into(&self, visitor: &mut dyn Visit);
}

impl Recordable for tracing::Event<'_> {
    fn record_into(&self, visitor: &mut dyn Visit) {
        self.record(visitor);
    }
}

impl Recordable for tracing::span::Attributes<'_> {
    fn record_into(&self, visitor: &mut dyn Visit) {
        self.record(visitor);
    }
}

impl Recordable for tracing::span::Record<'_> {
    fn record_into(&self, visitor: &mut dyn Visit) {
        self.record(visitor);
    }
}

/// The part of a line before the spans: priority, timestamp, level; for JSON also the
/// event's fields. `now` is `None` where no timestamp is wanted.
pub fn head(
    out: &mut String,
    style: Style,
    level: Level,
    now: Option<SystemTime>,
    event: &dyn Recordable,
) {
    if style.journal {
        let _ = write!(out, "<{}>", super::priority(level));
    }
    if style.json {
        out.push_str("{\"timestamp\":\"");
        if let Some(now) = now {
            let _ = write!(out, "{}", humantime::format_rfc3339_micros(now));
        }
        out.push_str("\",\"level\":\"");
        out.push_str(level.as_str());
        out.push_str("\",\"fields\":{");
        event.record_into(&mut JsonEventVisitor { out, first: true });
        out.push('}');
        return;
    }
    if style.journal {
        return;
    }
    if let Some(now) = now {
        let time = humantime::format_rfc3339_micros(now);
        let _ = if style.ansi {
            write!(out, "{DIM}{time}{RESET} ")
        } else {
            write!(out, "{time} ")
        };
    }
    let word = match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    };
    if style.ansi {
        let colour = match level {
            Level::TRACE => "35",
            Level::DEBUG => "34",
            Level::INFO => "32",
            Level::WARN => "33",
            Level::ERROR => "31",
        };
        let _ = write!(out, "\x1b[{colour}m{word}{RESET} ");
    } else {
        out.push_str(word);
        out.push(' ');
    }
}

/// One span of the text scope (root first): `name{fields}:`. After the last, the caller
/// writes a space.
pub fn text_span(out: &mut String, style: Style, name: &str, fields: &SpanFields) {
    let (bold, dim, reset) = if style.ansi {
        (BOLD, DIM, RESET)
    } else {
        ("", "", "")
    };
    let _ = write!(out, "{bold}{name}{reset}");
    if !fields.text.is_empty() {
        let _ = write!(out, "{bold}{{{reset}{}{bold}}}{reset}", fields.text);
    }
    let _ = write!(out, "{dim}:{reset}");
}

/// The event's fields of a text line, and the end of the line.
pub fn text_tail(out: &mut String, style: Style, event: &dyn Recordable) {
    event.record_into(&mut TextVisitor {
        out,
        ansi: style.ansi,
        first: true,
    });
    out.push('\n');
}

/// A JSON span object: its fields, then `"name"` (the span's name).
pub fn json_span(out: &mut String, name: &str, fields: &SpanFields) {
    out.push('{');
    for (key, value) in &fields.json {
        json_str(out, key);
        out.push(':');
        out.push_str(value);
        out.push(',');
    }
    out.push_str("\"name\":");
    json_str(out, name);
    out.push('}');
}

/// Writes `s` as a JSON string, quotes included: `"` and `\` escaped, the short escapes
/// for backspace, form feed, newline, carriage return and tab, `\u00XX` for the other
/// control characters; everything else (non-ASCII included) as it is, in UTF-8.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    let _ = JsonEscaper(out).write_str(s);
    out.push('"');
}

/// Escapes what is written through it into a JSON string body.
struct JsonEscaper<'a>(&'a mut String);

impl fmt::Write for JsonEscaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.push_str(&s[start..i]);
            if escape.is_empty() {
                let _ = write!(self.0, "\\u{b:04x}");
            } else {
                self.0.push_str(escape);
            }
            start = i + 1;
        }
        self.0.push_str(&s[start..]);
        Ok(())
    }
}

/// Writes a `Debug` value as a JSON string.
fn json_debug(out: &mut String, value: &dyn fmt::Debug) {
    out.push('"');
    let _ = write!(JsonEscaper(out), "{value:?}");
    out.push('"');
}

/// Escapes the characters that drive a terminal, as they are written through it.
struct TerminalEscaper<'a>(&'a mut String);

impl fmt::Write for TerminalEscaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '\x1b' => self.0.push_str("\\x1b"),
                '\x07' => self.0.push_str("\\x07"),
                '\x08' => self.0.push_str("\\x08"),
                '\x0c' => self.0.push_str("\\x0c"),
                '\x7f' => self.0.push_str("\\x7f"),
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

/// Text fields: the message as it is (terminal controls escaped), others `name=Debug`.
struct TextVisitor<'a> {
    out: &'a mut String,
    ansi: bool,
    first: bool,
}

impl TextVisitor<'_> {
    fn name(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.out.push(' ');
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        let _ = if self.ansi {
            write!(self.out, "{ITALIC}{name}{RESET}{DIM}={RESET}")
        } else {
            write!(self.out, "{name}=")
        };
    }
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.name(field);
        let _ = write!(TerminalEscaper(self.out), "{value}");
        if value.source().is_some() {
            // The list starts at the first source (the error itself is written above).
            let name = field.name();
            let _ = if self.ansi {
                write!(
                    self.out,
                    " {ITALIC}{name}{RESET}{ITALIC}.sources{RESET}{DIM}={RESET}["
                )
            } else {
                write!(self.out, " {name}.sources=[")
            };
            let mut err = value.source();
            let mut first = true;
            while let Some(e) = err {
                if !std::mem::take(&mut first) {
                    self.out.push_str(", ");
                }
                let _ = write!(TerminalEscaper(self.out), "{e}");
                err = e.source();
            }
            self.out.push(']');
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            if !std::mem::take(&mut self.first) {
                self.out.push(' ');
            }
            let _ = write!(TerminalEscaper(self.out), "{value:?}");
        } else {
            self.name(field);
            let _ = write!(self.out, "{value:?}");
        }
    }
}

/// An event's fields as JSON members, in the order they were recorded.
struct JsonEventVisitor<'a> {
    out: &'a mut String,
    first: bool,
}

impl JsonEventVisitor<'_> {
    fn key(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        json_str(self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for JsonEventVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        json_f64(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        json_str(self.out, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        json_debug(self.out, value);
    }
}

/// A finite number as JSON writes it; JSON has no NaN or infinity, so those are `null`.
fn json_f64(out: &mut String, value: f64) {
    match serde_json::Number::from_f64(value) {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
}

/// A span's fields as `(name, JSON value)`, sorted by name; a name recorded again replaces
/// its value.
struct JsonSpanVisitor<'a>(&'a mut Vec<(&'static str, String)>);

impl JsonSpanVisitor<'_> {
    fn put(&mut self, name: &'static str, value: String) {
        match self.0.binary_search_by(|(k, _)| (*k).cmp(name)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (name, value)),
        }
    }
}

impl Visit for JsonSpanVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let mut s = String::new();
        json_f64(&mut s, value);
        self.put(field.name(), s);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), value.to_string());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), value.to_string());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), value.to_string());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let mut s = String::new();
        json_str(&mut s, value);
        self.put(field.name(), s);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        let mut s = String::new();
        json_debug(&mut s, value);
        self.put(name.strip_prefix("r#").unwrap_or(name), s);
    }
}
