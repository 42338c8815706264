//! The children's series for `/metrics`, one sample per child labelled `identity="NAME"`.
//! The gateway's own identity keeps the unlabelled `asset_agent_*` series.

use std::sync::Arc;

use super::Children;
use crate::metrics::{Collect, Writer};
use crate::token::status::State;

/// Exports every running child's state and token.
pub struct ChildMetrics(pub Arc<Children>);

const STATES: [State; 5] = [
    State::Starting,
    State::Ready,
    State::Degraded,
    State::Failing,
    State::NeedsEnrollment,
];

impl Collect for ChildMetrics {
    fn collect(&self, w: &mut Writer) {
        let children = self.0.all();
        w.family(
            "asset_agent_children",
            "gauge",
            "Child identities this gateway holds.",
        );
        w.sample("asset_agent_children", &[], children.len());
        let snaps: Vec<_> = children
            .iter()
            .map(|c| {
                (
                    c.name(),
                    c.identity.tokens.snapshot(),
                    crate::token::live(&c.identity.tokens.current),
                )
            })
            .collect();
        w.family(
            "asset_agent_identity_state",
            "gauge",
            "Each child identity's state: 1 for the current one.",
        );
        for (name, snap, _) in &snaps {
            for state in STATES {
                let on = u8::from(snap.state == state);
                w.sample(
                    "asset_agent_identity_state",
                    &[("identity", name), ("state", state.as_str())],
                    on,
                );
            }
        }
        w.family(
            "asset_agent_identity_token_valid",
            "gauge",
            "1 while the child identity holds a valid asset token.",
        );
        for (name, _, token) in &snaps {
            let valid = u8::from(token.is_some());
            w.sample(
                "asset_agent_identity_token_valid",
                &[("identity", name)],
                valid,
            );
        }
        w.family(
            "asset_agent_identity_token_expires_in_seconds",
            "gauge",
            "Seconds until the child identity's asset token expires (monotonic clock).",
        );
        for (name, _, token) in &snaps {
            if let Some(t) = token {
                let left = t.remaining().as_secs();
                w.sample(
                    "asset_agent_identity_token_expires_in_seconds",
                    &[("identity", name)],
                    left,
                );
            }
        }
        w.family(
            "asset_agent_identity_token_exchanges_total",
            "counter",
            "Token exchanges made for the child identity since it started.",
        );
        for (name, snap, _) in &snaps {
            w.sample(
                "asset_agent_identity_token_exchanges_total",
                &[("identity", name)],
                snap.refreshes_ok,
            );
        }
        w.family(
            "asset_agent_identity_upstream_attempts_total",
            "counter",
            "Refresh attempts sent upstream for the child identity, failed ones included.",
        );
        for (name, snap, _) in &snaps {
            w.sample(
                "asset_agent_identity_upstream_attempts_total",
                &[("identity", name)],
                snap.attempts,
            );
        }
        w.family(
            "asset_agent_identity_refresh_consecutive_failures",
            "gauge",
            "Failed refresh attempts of the child identity since its last success.",
        );
        for (name, snap, _) in &snaps {
            w.sample(
                "asset_agent_identity_refresh_consecutive_failures",
                &[("identity", name)],
                snap.consecutive_failures,
            );
        }
    }
}
