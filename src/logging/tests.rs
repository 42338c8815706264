use std::fmt;
use std::sync::{Arc, Mutex};

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

// === the subscriber ===

const PLAIN: Style = Style {
    json: false,
    journal: false,
    ansi: false,
};
const TERMINAL: Style = Style {
    json: false,
    journal: false,
    ansi: true,
};
const JOURNAL: Style = Style {
    json: false,
    journal: true,
    ansi: false,
};
const JSON: Style = Style {
    json: true,
    journal: false,
    ansi: false,
};
const JSON_JOURNAL: Style = Style {
    json: true,
    journal: true,
    ansi: false,
};

#[test]
fn styles_follow_the_sink_and_format() {
    assert_eq!(Style::of(Sink::Terminal, LogFormat::Text), TERMINAL);
    assert_eq!(Style::of(Sink::Plain, LogFormat::Text), PLAIN);
    assert_eq!(Style::of(Sink::Journal, LogFormat::Text), JOURNAL);
    assert_eq!(Style::of(Sink::Terminal, LogFormat::Json), JSON);
    assert_eq!(Style::of(Sink::Journal, LogFormat::Json), JSON_JOURNAL);
}

/// Our subscriber for `style` and `filter`, writing into the returned buffer.
fn agent(style: Style, filter: &str) -> (tracing::Dispatch, FilterHandle, Captured) {
    let cap = Captured::default();
    let w = cap.clone();
    let (subscriber, handle) =
        subscriber(log_filter::parse(filter).unwrap(), style, move || w.clone());
    (tracing::Dispatch::new(subscriber), handle, cap)
}

/// What our subscriber writes for `f`.
fn ours(style: Style, filter: &str, f: impl FnOnce()) -> String {
    let (dispatch, _handle, cap) = agent(style, filter);
    tracing::dispatcher::with_default(&dispatch, f);
    cap.text()
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What `tracing-subscriber`, configured as this module configured it before it had its own
/// subscriber (whose lines matched these byte for byte), writes for `f` (the journal's
/// `<N>` prefix left out).
fn reference(style: Style, f: impl FnOnce()) -> String {
    let cap = Captured::default();
    let w = cap.clone();
    let base = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_max_level(Level::TRACE)
        .with_target(false)
        .with_ansi(style.ansi);
    match (style.json, style.journal) {
        (false, false) => tracing::subscriber::with_default(base.finish(), f),
        (false, true) => {
            tracing::subscriber::with_default(base.without_time().with_level(false).finish(), f)
        }
        (true, _) => tracing::subscriber::with_default(base.json().finish(), f),
    }
    cap.text()
}

/// Replaces every `2026-12-03T18:03:54.123456Z` by `TS`.
fn mask_times(s: &str) -> String {
    let shape = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let fits = b.len() - i >= shape.len()
            && shape.iter().zip(&b[i..]).all(|(p, c)| match p {
                b'd' => c.is_ascii_digit(),
                p => p == c,
            });
        if fits {
            out.push_str("TS");
            i += shape.len();
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

#[derive(Debug)]
struct Outer(Inner);
#[derive(Debug)]
struct Inner;
impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not read the key")
    }
}
impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("permission \"denied\"")
    }
}
impl std::error::Error for Inner {}

/// Every kind of field and span the agent logs, and a few it does not.
fn scenario() {
    tracing::info!("asset-agent starting");
    tracing::warn!(
        key = "quoted \"value\"\n",
        n = 5_u64,
        i = -3_i64,
        ok = true,
        f = 1.5_f64,
        nan = f64::NAN,
        d = %"display",
        q = ?"debug",
        "with {} args",
        2
    );
    tracing::error!(message = "explicit message field", file = %"/etc/asset-agent/agent.toml");
    tracing::debug!(
        ctrl = "\x1b[31m\t\u{7}",
        "terminal \x1b[31mred\x1b[0m \u{85} bell\x07 \x7f del"
    );
    tracing::trace!("unicode: é 中文 🚀 \u{2028} \u{0}");
    let e = Outer(Inner);
    tracing::warn!(
        error = &e as &(dyn std::error::Error + 'static),
        "refresh failed"
    );
    tracing::warn!(error = %e, "refresh failed");
    let child = tracing::info_span!("child", name = %"pump-7");
    child.in_scope(|| {
        tracing::info!(attempt = 1, "refreshing");
        let inner = tracing::debug_span!("inner", n = 2, s = "x", late = tracing::field::Empty);
        inner.record("late", "now");
        inner.in_scope(|| tracing::warn!("nested"));
        tracing::info!(parent: None, "a root event inside a span");
    });
    tracing::info_span!("bare").in_scope(|| tracing::info!("in a span without fields"));
    tracing::info!(parent: &child, "explicit parent, no current span");
}

#[test]
fn text_lines_are_what_tracing_subscriber_wrote() {
    let ours = ours(PLAIN, "trace", scenario);
    let theirs = reference(PLAIN, scenario);
    assert_eq!(mask_times(&ours), mask_times(&theirs));
    assert!(
        ours.lines()
            .all(|l| l.len() > 28 && l.as_bytes()[27] == b' ')
    );
    assert!(
        ours.contains(" INFO child{name=pump-7}: refreshing attempt=1\n"),
        "{ours}"
    );
    assert!(
        ours.contains(" WARN child{name=pump-7}:inner{n=2 s=\"x\" late=\"now\"}: nested\n"),
        "{ours}"
    );
}

#[test]
fn coloured_lines_are_what_tracing_subscriber_wrote() {
    let ours = ours(TERMINAL, "trace", scenario);
    assert_eq!(
        mask_times(&ours),
        mask_times(&reference(TERMINAL, scenario))
    );
    assert!(ours.contains("\x1b[32m INFO\x1b[0m \x1b[1mchild\x1b[0m\x1b[1m{\x1b[0m\x1b[3mname\x1b[0m\x1b[2m=\x1b[0mpump-7\x1b[1m}\x1b[0m\x1b[2m:\x1b[0m refreshing"), "{ours:?}");
}

#[test]
fn journal_lines_have_the_priority_and_no_time_or_level() {
    let ours = ours(JOURNAL, "trace", scenario);
    let theirs = reference(JOURNAL, scenario);
    let stripped: String = ours
        .lines()
        .map(|l| {
            let (prio, rest) = l.split_at(3);
            assert!(["<3>", "<4>", "<6>", "<7>"].contains(&prio), "{l}");
            format!("{rest}\n")
        })
        .collect();
    assert_eq!(stripped, theirs);
    // The gap `Journal` fills: the library alone writes no priority.
    assert!(theirs.starts_with("asset-agent starting\n"), "{theirs}");
    assert!(
        ours.starts_with("<6>asset-agent starting\n<4>with 2 args key="),
        "{ours}"
    );
    assert!(
        ours.contains("<6>child{name=pump-7}: refreshing attempt=1\n"),
        "{ours}"
    );
}

#[test]
fn json_lines_are_what_tracing_subscriber_wrote() {
    let ours = ours(JSON, "trace", scenario);
    assert_eq!(mask_times(&ours), mask_times(&reference(JSON, scenario)));
    for line in ours.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            v["timestamp"].is_string() && v["fields"]["message"].is_string(),
            "{v}"
        );
    }
    assert!(
        mask_times(&ours).contains(r#"{"timestamp":"TS","level":"INFO","fields":{"message":"refreshing","attempt":1},"span":{"name":"pump-7","name":"child"},"spans":[{"name":"pump-7","name":"child"}]}"#),
        "{ours}"
    );
}

#[test]
fn json_under_the_journal_is_prefixed_and_otherwise_the_same() {
    let ours = ours(JSON_JOURNAL, "trace", scenario);
    let theirs = reference(JSON, scenario);
    let stripped: String = ours.lines().map(|l| format!("{}\n", &l[3..])).collect();
    assert_eq!(mask_times(&stripped), mask_times(&theirs));
    assert!(ours.starts_with("<6>{\"timestamp\":\""), "{ours}");
}

#[test]
fn the_message_cannot_drive_the_terminal() {
    let out = ours(PLAIN, "trace", || {
        tracing::info!("a \x1b[2J b \x07 c \u{9b}31m d");
    });
    assert!(!out.contains('\x1b') && !out.contains('\x07') && !out.contains('\u{9b}'));
    assert!(
        out.ends_with(" INFO a \\x1b[2J b \\x07 c \\u{9b}31m d\n"),
        "{out:?}"
    );
}

#[test]
fn the_filter_drops_and_can_be_swapped() {
    let (dispatch, handle, cap) = agent(PLAIN, "warn,asset_agent::logging=info");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!("one");
        tracing::debug!("two");
        tracing::info!(target: "rumqttc", "three");
        tracing::warn!(target: "rumqttc", "four");
        handle.reload(log_filter::parse("debug").unwrap()).unwrap();
        tracing::debug!("five");
        tracing::info!(target: "rumqttc", "six");
        handle.reload(log_filter::parse("error").unwrap()).unwrap();
        tracing::warn!("seven");
    });
    let text = cap.text();
    let messages: Vec<&str> = text
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(messages, ["one", "four", "five", "six"]);
}

#[test]
fn disabled_spans_leave_no_prefix() {
    let out = ours(PLAIN, "warn", || {
        tracing::info_span!("child", name = "x").in_scope(|| tracing::warn!("w"));
    });
    assert!(out.ends_with(" WARN w\n"), "{out}");
}

#[tokio::test]
async fn a_span_belongs_to_its_task_not_to_the_thread() {
    let (dispatch, _handle, cap) = agent(JOURNAL, "trace");
    let _guard = tracing::dispatcher::set_default(&dispatch);
    let ticks = |what: &'static str| async move {
        for _ in 0..2 {
            tracing::info!("{what}");
            tokio::task::yield_now().await;
        }
    };
    let span = tracing::info_span!("child", name = %"pump-7");
    let a = tokio::spawn(tracing::Instrument::instrument(ticks("a"), span));
    let b = tokio::spawn(ticks("b"));
    a.await.unwrap();
    b.await.unwrap();
    let text = cap.text();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "<6>b",
            "<6>b",
            "<6>child{name=pump-7}: a",
            "<6>child{name=pump-7}: a"
        ]
    );
}
