//! The socket API's series for `/metrics`: requests by route and status, denials by the
//! role that was missing, and the connection table.

use std::sync::atomic::Ordering;

use super::State;
use crate::metrics::{Collect, Writer};

impl Collect for State {
    fn collect(&self, w: &mut Writer) {
        let requests = &self.requests;
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
        if let Some(conns) = self.conns.get() {
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
    }
}
