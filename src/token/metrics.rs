//! The token's series for `/metrics`: the agent's state, the token held and its expiry,
//! consecutive failures and the clock skew measured against Salesforce.

use std::sync::Arc;

use super::refresher::Handle;
use super::status::State;
use crate::metrics::{Collect, Writer};
use crate::skew::Skew;

/// What the refresh loop publishes, seen as metrics.
pub struct TokenMetrics {
    pub tokens: Handle,
    pub skew: Arc<Skew>,
}

impl Collect for TokenMetrics {
    fn collect(&self, w: &mut Writer) {
        let snap = self.tokens.snapshot();
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

        let token = super::live(&self.tokens.current);
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

        w.family(
            "asset_agent_clock_skew_seconds",
            "gauge",
            "Salesforce's clock minus this device's, from the Date header of the last response.",
        );
        if let Some(skew) = self.skew.measured() {
            w.sample("asset_agent_clock_skew_seconds", &[], skew);
        }
    }
}
