//! The log filter: `target=level` directives, as `RUST_LOG` takes them without regexes.
//!
//! A directive is a level (`debug`, or a number `0`–`5`), a target (`rumqttc`: everything
//! from it), or `target=level`; directives are separated by commas. The most specific
//! directive whose target is a prefix of an event's target decides (the longest target; a
//! bare level is the least specific); nothing matching means the event is dropped. A
//! `target[{field,...}]=level` directive applies only to events that have those fields.
//! Spans are filtered like events. These are the rules of `tracing-subscriber`'s `Targets`,
//! which this replaces to keep its machinery out of the binary.
//!
//! A leaf: `config` checks `log.level` with it and `logging` filters with it, and neither
//! of those two has to reach into the other for the syntax.

use std::cmp::Ordering;
use std::fmt;

use tracing::Metadata;
use tracing::level_filters::LevelFilter;

/// Parses a filter: a level (`debug`), or `target=level` directives separated by commas
/// (`asset_agent=debug,rumqttc=warn,info`), as `RUST_LOG` takes them. (Span and field
/// value filters are not supported: matching them needs a regex engine, which would cost
/// the device binary more than the feature is worth.)
///
/// # Errors
/// A directive that is not of that form.
pub fn parse(directive: &str) -> Result<Filter, ParseError> {
    Filter::parse(directive.trim())
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Most specific first.
    directives: Vec<Directive>,
    /// The most verbose level any directive enables.
    max: LevelFilter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    target: Option<Box<str>>,
    fields: Vec<Box<str>>,
    level: LevelFilter,
}

/// A filter directive that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(Kind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Msg(&'static str),
    Level,
}

// === impl Filter ===

impl Filter {
    /// Everything at `level` and above.
    pub fn level(level: LevelFilter) -> Self {
        Self {
            directives: vec![Directive {
                target: None,
                fields: Vec::new(),
                level,
            }],
            max: level,
        }
    }

    /// Parses comma-separated directives (see the module documentation).
    ///
    /// # Errors
    /// A directive with more than one `=`, a malformed field list, or an unknown level.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut filter = Self {
            directives: Vec::new(),
            max: LevelFilter::OFF,
        };
        for part in s.split(',') {
            filter.add(Directive::parse(part)?);
        }
        Ok(filter)
    }

    fn add(&mut self, directive: Directive) {
        if directive.level > self.max {
            self.max = directive.level;
        }
        match self
            .directives
            .binary_search_by(|d| specificity(d, &directive))
        {
            Ok(i) => self.directives[i] = directive,
            Err(i) => self.directives.insert(i, directive),
        }
    }

    /// Whether an event or span with this metadata passes.
    pub fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.directives
            .iter()
            .find(|d| d.matches(meta))
            .is_some_and(|d| d.level >= *meta.level())
    }

    /// The most verbose level anything can pass at.
    pub fn max_level(&self) -> LevelFilter {
        self.max
    }
}

/// Orders the more specific directive first: a longer target, then more fields, then (only
/// to make the order total) the target and field names themselves, reversed.
fn specificity(a: &Directive, b: &Directive) -> Ordering {
    let len = |d: &Directive| d.target.as_ref().map(|t| t.len());
    len(a)
        .cmp(&len(b))
        .then_with(|| a.fields.len().cmp(&b.fields.len()))
        .then_with(|| a.target.cmp(&b.target))
        .then_with(|| a.fields.cmp(&b.fields))
        .reverse()
}

// === impl Directive ===

impl Directive {
    fn parse(s: &str) -> Result<Self, ParseError> {
        let mut split = s.split('=');
        let part0 = split.next().unwrap_or_default();
        let Some(part1) = split.next() else {
            // A bare level or a bare target.
            return Ok(match part0.parse::<LevelFilter>() {
                Ok(level) => Self {
                    target: None,
                    fields: Vec::new(),
                    level,
                },
                Err(_) => Self {
                    target: Some(part0.into()),
                    fields: Vec::new(),
                    level: LevelFilter::TRACE,
                },
            });
        };
        if split.next().is_some() {
            return Err(ParseError(Kind::Msg(
                "too many '=' in filter directive, expected 0 or 1",
            )));
        }
        let mut split = part0.split("[{");
        let target = split.next().map(Box::from);
        let mut fields = Vec::new();
        if let Some(list) = split.next() {
            if split.next().is_some() {
                return Err(ParseError(Kind::Msg(
                    "too many '[{' in filter directive, expected 0 or 1",
                )));
            }
            let Some(list) = list.strip_suffix("}]") else {
                return Err(ParseError(Kind::Msg(
                    "expected fields list to end with '}]'",
                )));
            };
            fields.extend(list.split(',').filter(|f| !f.is_empty()).map(Box::from));
        }
        let level = part1
            .parse::<LevelFilter>()
            .map_err(|_| ParseError(Kind::Level))?;
        Ok(Self {
            target,
            fields,
            level,
        })
    }

    fn matches(&self, meta: &Metadata<'_>) -> bool {
        if let Some(target) = &self.target
            && !meta.target().starts_with(&**target)
        {
            return false;
        }
        !meta.is_event()
            || self
                .fields
                .iter()
                .all(|name| meta.fields().field(&**name).is_some())
    }
}

// === impl ParseError ===

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Kind::Msg(msg) => write!(f, "invalid filter directive: {msg}"),
            Kind::Level => f.write_str(
                "error parsing level filter: expected one of \"off\", \"error\", \
                 \"warn\", \"info\", \"debug\", \"trace\", or a number 0-5",
            ),
        }
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use tracing::callsite::{Callsite, Identifier};
    use tracing::field::FieldSet;
    use tracing::metadata::Kind as MetaKind;
    use tracing::subscriber::Interest;
    use tracing::{Level, Metadata};

    use super::*;

    struct Cs;
    impl Callsite for Cs {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!()
        }
    }
    static CS: Cs = Cs;

    fn meta(
        target: &'static str,
        level: Level,
        fields: &'static [&'static str],
    ) -> Metadata<'static> {
        Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(fields, Identifier(&CS)),
            MetaKind::EVENT,
        )
    }

    fn span(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "span",
            target,
            level,
            None,
            None,
            None,
            FieldSet::new(&[], Identifier(&CS)),
            MetaKind::SPAN,
        )
    }

    fn on(filter: &str, target: &'static str, level: Level) -> bool {
        Filter::parse(filter)
            .unwrap()
            .enabled(&meta(target, level, &["message"]))
    }

    #[test]
    fn a_bare_level_applies_everywhere() {
        assert!(on("info", "asset_agent::agent", Level::INFO));
        assert!(on("info", "rumqttc", Level::WARN));
        assert!(!on("info", "asset_agent", Level::DEBUG));
        assert!(on("DEBUG", "x", Level::DEBUG), "levels ignore case");
        assert!(on("3", "x", Level::INFO) && !on("3", "x", Level::DEBUG));
        assert!(!on("off", "x", Level::ERROR));
        assert!(!on("0", "x", Level::ERROR));
    }

    #[test]
    fn the_longest_matching_target_decides() {
        let f = "warn,asset_agent=debug,asset_agent::mqtt=error";
        assert!(on(f, "asset_agent::agent", Level::DEBUG));
        assert!(!on(f, "asset_agent::agent", Level::TRACE));
        assert!(!on(f, "asset_agent::mqtt::conn", Level::WARN));
        assert!(on(f, "asset_agent::mqtt::conn", Level::ERROR));
        assert!(!on(f, "hyper", Level::INFO));
        assert!(on(f, "hyper", Level::WARN));
        // Order in the string does not matter.
        let g = "asset_agent::mqtt=error,asset_agent=debug,warn";
        assert_eq!(Filter::parse(f).unwrap(), Filter::parse(g).unwrap());
    }

    #[test]
    fn targets_match_by_prefix_and_nothing_matching_drops() {
        assert!(on("asset_agent=info", "asset_agent::api", Level::INFO));
        assert!(!on("asset_agent=info", "rumqttc", Level::ERROR));
        assert!(
            on("rumqttc", "rumqttc::state", Level::TRACE),
            "a bare target"
        );
    }

    #[test]
    fn a_repeated_target_takes_the_last_level() {
        assert!(on("x=error,x=debug", "x", Level::DEBUG));
        assert!(!on("x=debug,x=error", "x", Level::WARN));
    }

    #[test]
    fn field_directives_apply_to_events_with_those_fields() {
        let f = Filter::parse("info,asset_agent[{key}]=debug").unwrap();
        assert!(f.enabled(&meta("asset_agent::x", Level::DEBUG, &["message", "key"])));
        assert!(!f.enabled(&meta("asset_agent::x", Level::DEBUG, &["message"])));
        // Spans: the target alone.
        assert!(f.enabled(&span("asset_agent::x", Level::DEBUG)));
        assert!(!f.enabled(&span("other", Level::DEBUG)));
    }

    #[test]
    fn spans_are_filtered_like_events() {
        let f = Filter::parse("asset_agent=warn").unwrap();
        assert!(!f.enabled(&span("asset_agent::gateway", Level::INFO)));
        assert!(f.enabled(&span("asset_agent::gateway", Level::ERROR)));
    }

    #[test]
    fn max_level_is_the_most_verbose_directive() {
        let max = |s: &str| Filter::parse(s).unwrap().max_level();
        assert_eq!(max("info"), LevelFilter::INFO);
        assert_eq!(max("warn,asset_agent=trace"), LevelFilter::TRACE);
        assert_eq!(max("off"), LevelFilter::OFF);
        assert_eq!(
            Filter::level(LevelFilter::INFO).max_level(),
            LevelFilter::INFO
        );
    }

    #[test]
    fn bad_directives_say_what_is_wrong() {
        let err = |s: &str| Filter::parse(s).unwrap_err().to_string();
        assert_eq!(
            err("a=b=c"),
            "invalid filter directive: too many '=' in filter directive, expected 0 or 1"
        );
        assert!(err("asset_agent=loud").starts_with("error parsing level filter: expected one of"));
        assert_eq!(
            err("a[{x}]b=info"),
            "invalid filter directive: expected fields list to end with '}]'"
        );
        assert_eq!(
            err("a[{x}][{y}]=info"),
            "invalid filter directive: too many '[{' in filter directive, expected 0 or 1"
        );
    }
}
