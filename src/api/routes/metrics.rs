//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Everything is computed when scraped: the token and state from the refresher's channels,
//! refresh and upstream counters from [`crate::metrics`], request counters from this
//! server. Series absent for lack of data (no token, skew not measured yet) are left out
//! rather than reported as a misleading zero.

use std::fmt::{Display, Write as _};
use std::sync::atomic::Ordering;

use hyper::StatusCode;

use crate::api::Shared;
use crate::token::status::State;
use wire::http::{self, Reply};

/// The content type Prometheus expects for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn reply(shared: &Shared) -> Reply {
    http::with_type(StatusCode::OK, CONTENT_TYPE, render(shared))
}

/// The whole exposition.
pub fn render(shared: &Shared) -> String {
    let mut w = Writer::default();
    let snap = shared.tokens.snapshot();

    w.family(
        "asset_agent_build_info",
        "gauge",
        "Build information; always 1.",
    );
    w.sample(
        "asset_agent_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    w.family(
        "asset_agent_state",
        "gauge",
        "The agent's state: 1 for the current one.",
    );
    for state in [
        State::Starting,
        State::Ready,
        State::Degraded,
        State::Failing,
        State::NeedsEnrollment,
    ] {
        let on = u8::from(snap.state == state);
        w.sample("asset_agent_state", &[("state", state.as_str())], on);
    }

    let token = crate::token::live(&shared.tokens.current);
    w.family(
        "asset_agent_token_valid",
        "gauge",
        "1 while a valid asset token is held.",
    );
    w.sample("asset_agent_token_valid", &[], u8::from(token.is_some()));
    w.family(
        "asset_agent_token_expiry_timestamp_seconds",
        "gauge",
        "Expiry (exp claim, Unix time) of the asset token held.",
    );
    if let Some(t) = &token {
        let exp = t.claims.exp;
        w.sample("asset_agent_token_expiry_timestamp_seconds", &[], exp);
    }
    w.family(
        "asset_agent_token_expires_in_seconds",
        "gauge",
        "Seconds until the held asset token expires (monotonic clock).",
    );
    if let Some(t) = &token {
        let left = t.remaining().as_secs();
        w.sample("asset_agent_token_expires_in_seconds", &[], left);
    }

    let counted = crate::metrics::snapshot();
    w.family(
        "asset_agent_refreshes_total",
        "counter",
        "Refresh attempts by result, and by failure reason (\"none\" for successes).",
    );
    w.sample(
        "asset_agent_refreshes_total",
        &[("result", "ok"), ("reason", "none")],
        counted.refreshes_ok,
    );
    for (reason, n) in &counted.refreshes_failed {
        w.sample(
            "asset_agent_refreshes_total",
            &[("result", "error"), ("reason", reason)],
            n,
        );
    }
    w.family(
        "asset_agent_refresh_consecutive_failures",
        "gauge",
        "Failed refresh attempts since the last success.",
    );
    w.sample(
        "asset_agent_refresh_consecutive_failures",
        &[],
        snap.consecutive_failures,
    );

    let name = "asset_agent_upstream_request_duration_seconds";
    w.family(
        name,
        "histogram",
        "Duration of calls to Salesforce by endpoint.",
    );
    for (endpoint, h) in &counted.upstream {
        for (le, n) in h.cumulative() {
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                le.to_string()
            };
            w.sample(
                &format!("{name}_bucket"),
                &[("endpoint", endpoint), ("le", &le)],
                n,
            );
        }
        w.sample(
            &format!("{name}_sum"),
            &[("endpoint", endpoint)],
            h.sum_seconds(),
        );
        w.sample(
            &format!("{name}_count"),
            &[("endpoint", endpoint)],
            h.count(),
        );
    }

    w.family(
        "asset_agent_clock_skew_seconds",
        "gauge",
        "Salesforce's clock minus this device's, from the Date header of the last response.",
    );
    if let Some(skew) = shared.skew.measured() {
        w.sample("asset_agent_clock_skew_seconds", &[], skew);
    }

    let requests = &shared.state.requests;
    w.family(
        "asset_agent_api_requests_total",
        "counter",
        "Socket API requests by route and status.",
    );
    for ((route, status), n) in requests.by_route() {
        w.sample(
            "asset_agent_api_requests_total",
            &[("route", route), ("status", &status.to_string())],
            n,
        );
    }
    w.family(
        "asset_agent_api_denials_total",
        "counter",
        "Requests refused with 403, by the role they needed.",
    );
    for (role, n) in requests.denials() {
        w.sample("asset_agent_api_denials_total", &[("role", role)], n);
    }
    if let Some(conns) = shared.state.conns.get() {
        let (open, _) = conns.open();
        w.family(
            "asset_agent_api_connections",
            "gauge",
            "Open socket connections.",
        );
        w.sample("asset_agent_api_connections", &[], open);
        w.family(
            "asset_agent_api_connections_rejected_total",
            "counter",
            "Connections refused with 503 because every connection that could give way was busy.",
        );
        let rejected = conns.counters.rejected.load(Ordering::Relaxed);
        w.sample("asset_agent_api_connections_rejected_total", &[], rejected);
        w.family(
            "asset_agent_api_connections_evicted_total",
            "counter",
            "Idle connections closed to make room for new ones.",
        );
        let evicted = conns.counters.evicted.load(Ordering::Relaxed);
        w.sample("asset_agent_api_connections_evicted_total", &[], evicted);
    }
    if let Some(mqtt) = &shared.mqtt {
        mqtt.stats().render_prometheus(&mut w.out);
    }
    w.out
}

/// Writes families and samples in the text format.
#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// HELP text escapes backslash and newline.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Label values escape backslash, double quote and newline.
fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("x\\y\nz \"q\""), "x\\\\y\\nz \"q\"");
        let mut w = Writer::default();
        w.family("m", "counter", "help");
        w.sample("m", &[("a", "1"), ("b", "\"")], 2);
        w.sample("m", &[], 0.5);
        assert_eq!(
            w.out,
            "# HELP m help\n# TYPE m counter\nm{a=\"1\",b=\"\\\"\"} 2\nm 0.5\n"
        );
    }
}
