//! The log filter syntax: `tracing-subscriber`'s [`Targets`], `target=level` directives as
//! `RUST_LOG` takes them, without regexes.
//!
//! A leaf: `config` checks `log.level` with it and `logging` filters with it, and neither
//! of those two has to reach into the other for the syntax.

pub use tracing_subscriber::filter::ParseError;
use tracing_subscriber::filter::Targets;

/// A parsed filter.
pub type Filter = Targets;

/// Parses a filter: a level (`debug`, or a number `0`–`5`), a target (`rumqttc`:
/// everything from it), or `target=level` directives separated by commas
/// (`asset_agent=debug,rumqttc=warn,info`). The longest matching target decides; nothing
/// matching drops the event. `Targets` takes no span or field-value filters (those need
/// `EnvFilter`, and with it a regex engine).
///
/// What this adds to `Targets`' own `FromStr`: surrounding whitespace (a trailing newline
/// from a file or a quoted variable) is ignored, where `Targets` reads `"debug\n"` as a
/// target named so, enabling everything at `trace` for no event at all.
///
/// # Errors
/// A directive that is not of that form.
pub fn parse(directive: &str) -> Result<Filter, ParseError> {
    directive.trim().parse()
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    fn on(filter: &str, target: &str, level: Level) -> bool {
        parse(filter).unwrap().would_enable(target, &level)
    }

    #[test]
    fn the_targets_rules_apply() {
        let f = "warn,asset_agent=debug,asset_agent::mqtt=error";
        assert!(on(f, "asset_agent::agent", Level::DEBUG));
        assert!(!on(f, "asset_agent::agent", Level::TRACE));
        assert!(!on(f, "asset_agent::mqtt::conn", Level::WARN));
        assert!(on(f, "hyper", Level::WARN) && !on(f, "hyper", Level::INFO));
        assert!(on("3", "x", Level::INFO) && !on("3", "x", Level::DEBUG));
        assert!(!on("asset_agent=info", "rumqttc", Level::ERROR));
    }

    #[test]
    fn surrounding_whitespace_is_ignored_where_targets_would_misread_it() {
        assert!(on(" debug\n", "asset_agent", Level::DEBUG));
        assert!(!on(" debug\n", "asset_agent", Level::TRACE));
        // The gap: `Targets` alone takes `debug\n` for a target and drops every event.
        let raw: Targets = "debug\n".parse().unwrap();
        assert!(!raw.would_enable("asset_agent", &Level::DEBUG));
    }

    #[test]
    fn bad_directives_say_what_is_wrong() {
        let err = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(
            err("a=b=c"),
            "invalid filter directive: too many '=' in filter directive, expected 0 or 1"
        );
        assert!(err("asset_agent=loud").starts_with("error parsing level filter: expected one of"));
        assert_eq!(
            err("a[{x}]b=info"),
            "invalid filter directive: expected fields list to end with '}]'"
        );
    }
}
