//! One metrics registry for the whole agent, and the one place `GET /metrics` is rendered.
//!
//! The agent builds a [`Registry`] and passes it to the parts that count: the HTTPS client
//! records upstream latencies and the refresh loop its outcomes in the registry's
//! [`Counters`]; the parts that keep their own state (the token, the socket API, the MQTT
//! uplink) implement [`Collect`] and are registered once. There are no process-wide
//! statics, so two agents in one process never share numbers.
//!
//! Why no metrics crate: a few atomics and one small text [`Writer`] cover the dozen
//! series the agent exports, and a device binary should not carry a registry framework
//! for them. The output is checked against Prometheus's own text parser in the tests.
//!
//! Series absent for lack of data (no token, skew not measured yet) are left out rather
//! than reported as a misleading zero.

mod counters;
mod writer;

pub use counters::Counters;
pub use writer::Writer;

use std::sync::{Arc, Mutex, PoisonError};

/// A part of the agent that exports series from its own state when scraped.
pub trait Collect: Send + Sync {
    /// Writes this part's families and samples.
    fn collect(&self, w: &mut Writer);
}

/// The content type Prometheus expects for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every series the agent exports.
#[derive(Default)]
pub struct Registry {
    counters: Counters,
    collectors: Mutex<Vec<Arc<dyn Collect>>>,
}

// === impl Registry ===

impl Registry {
    /// The counters the refresh loop and the HTTPS client bump.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Adds a part whose series are written on every scrape, after those registered
    /// before it.
    pub fn register(&self, part: Arc<dyn Collect>) {
        self.collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(part);
    }

    /// The whole exposition.
    pub fn render(&self) -> String {
        let mut w = Writer::default();
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
        self.counters.collect(&mut w);
        let parts = self
            .collectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for part in parts {
            part.collect(&mut w);
        }
        w.finish()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Collect for Counters {
    fn collect(&self, w: &mut Writer) {
        let counted = self.snapshot();
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
    }
}
