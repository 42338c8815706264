//! Counters and state of the MQTT uplink, for `/v1/status`, `/metrics` and the heartbeat.
//!
//! [`Stats`] is plain atomics so any task (the session, API handlers, a metrics renderer)
//! reads or bumps them without a lock or an await.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::metrics::{Collect, Writer};

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No live asset token yet: nothing to log in with.
    WaitingForToken,
    /// A connection attempt is under way.
    Connecting,
    /// CONNACK received; the session is up.
    Connected,
    /// A planned reconnect with a fresh token (local publishes are still accepted).
    Rotating,
    /// Waiting before the next attempt after a failure.
    Backoff,
    /// The agent is shutting down.
    Stopped,
}

/// The uplink's counters. All monotonic except `state` and `queued`.
#[derive(Debug, Default)]
pub struct Stats {
    state: AtomicU8,
    /// Sessions established (CONNACK accepted).
    pub connects: AtomicU64,
    /// Connection attempts that failed before a CONNACK.
    pub connect_failures: AtomicU64,
    /// Of those, refused logins: CONNACK "not authorised"/"bad user name or password", or
    /// the broker dropping the CONNECT.
    pub auth_refusals: AtomicU64,
    /// Token refreshes the uplink asked for (a refused login, or a session token nearing
    /// expiry with no newer token held).
    pub forced_refreshes: AtomicU64,
    /// Planned reconnects that put a fresh token into use.
    pub rotations: AtomicU64,
    /// Established sessions lost unexpectedly (broker, network).
    pub disconnects: AtomicU64,
    /// PUBLISH packets written to the broker (all topics, including resends).
    pub sent: AtomicU64,
    /// PUBACKs received.
    pub acked: AtomicU64,
    /// Local publishes accepted into the queue.
    pub local_accepted: AtomicU64,
    /// Local publishes refused because the queue was full.
    pub local_rejected_full: AtomicU64,
    /// Local publishes refused because there was no session.
    pub local_rejected_disconnected: AtomicU64,
    /// Messages given up: the agent's own messages that found the request channel full,
    /// and queued local messages still unsent at shutdown.
    pub dropped: AtomicU64,
    /// Messages carried over a lost or rotated session and sent again on the next one.
    pub requeued: AtomicU64,
    /// Commands received on the command topic.
    pub commands: AtomicU64,
    /// Local messages waiting in the queue (gauge).
    pub queued: AtomicU64,
}

/// The `mqtt` object of `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub connected: bool,
    pub broker: String,
    pub client_id: String,
    /// When the token authenticating the live session expires (RFC 3339).
    pub session_token_expires_at: Option<String>,
    pub last_error: Option<String>,
    pub connects: u64,
    pub connect_failures: u64,
    pub auth_refusals: u64,
    pub forced_refreshes: u64,
    pub rotations: u64,
    pub disconnects: u64,
    pub sent: u64,
    pub acked: u64,
    pub local_accepted: u64,
    pub local_rejected_full: u64,
    pub local_rejected_disconnected: u64,
    pub dropped: u64,
    pub requeued: u64,
    pub commands: u64,
    pub queued: u64,
}

// === impl State ===

impl State {
    const ALL: [State; 6] = [
        State::WaitingForToken,
        State::Connecting,
        State::Connected,
        State::Rotating,
        State::Backoff,
        State::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::WaitingForToken => "waiting_for_token",
            State::Connecting => "connecting",
            State::Connected => "connected",
            State::Rotating => "rotating",
            State::Backoff => "backoff",
            State::Stopped => "stopped",
        }
    }
}

// === impl Stats ===

impl Stats {
    pub fn state(&self) -> State {
        let n = usize::from(self.state.load(Ordering::Relaxed));
        State::ALL.get(n).copied().unwrap_or(State::WaitingForToken)
    }

    pub(super) fn set_state(&self, state: State) {
        let n = State::ALL.iter().position(|s| *s == state).unwrap_or(0);
        self.state
            .store(u8::try_from(n).unwrap_or(0), Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters with the given identity and detail.
    pub fn status(
        &self,
        broker: &str,
        client_id: &str,
        session_token_expires_at: Option<String>,
        last_error: Option<String>,
    ) -> Status {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let state = self.state();
        Status {
            state,
            connected: state == State::Connected,
            broker: broker.to_owned(),
            client_id: client_id.to_owned(),
            session_token_expires_at,
            last_error,
            connects: g(&self.connects),
            connect_failures: g(&self.connect_failures),
            auth_refusals: g(&self.auth_refusals),
            forced_refreshes: g(&self.forced_refreshes),
            rotations: g(&self.rotations),
            disconnects: g(&self.disconnects),
            sent: g(&self.sent),
            acked: g(&self.acked),
            local_accepted: g(&self.local_accepted),
            local_rejected_full: g(&self.local_rejected_full),
            local_rejected_disconnected: g(&self.local_rejected_disconnected),
            dropped: g(&self.dropped),
            requeued: g(&self.requeued),
            commands: g(&self.commands),
            queued: g(&self.queued),
        }
    }
}

impl Collect for Stats {
    fn collect(&self, w: &mut Writer) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters: [(&str, &AtomicU64, &str); 14] = [
            ("connects", &self.connects, "MQTT sessions established"),
            (
                "connect_failures",
                &self.connect_failures,
                "MQTT connection attempts that failed",
            ),
            (
                "auth_refusals",
                &self.auth_refusals,
                "MQTT logins refused by the broker",
            ),
            (
                "forced_refreshes",
                &self.forced_refreshes,
                "token refreshes forced by the MQTT uplink",
            ),
            (
                "rotations",
                &self.rotations,
                "planned MQTT reconnects with a fresh token",
            ),
            (
                "disconnects",
                &self.disconnects,
                "established MQTT sessions lost unexpectedly",
            ),
            ("sent", &self.sent, "PUBLISH packets sent to the broker"),
            ("acked", &self.acked, "PUBACKs received from the broker"),
            (
                "local_accepted",
                &self.local_accepted,
                "local publishes accepted",
            ),
            (
                "local_rejected_full",
                &self.local_rejected_full,
                "local publishes refused: queue full",
            ),
            (
                "local_rejected_disconnected",
                &self.local_rejected_disconnected,
                "local publishes refused: no MQTT session",
            ),
            ("dropped", &self.dropped, "MQTT messages given up"),
            (
                "requeued",
                &self.requeued,
                "MQTT messages carried over a reconnect",
            ),
            ("commands", &self.commands, "commands received over MQTT"),
        ];
        for (name, counter, help) in counters {
            let metric = format!("asset_agent_mqtt_{name}_total");
            w.family(&metric, "counter", help);
            w.sample(&metric, &[], g(counter));
        }
        w.family(
            "asset_agent_mqtt_queued",
            "gauge",
            "local MQTT messages waiting",
        );
        w.sample("asset_agent_mqtt_queued", &[], g(&self.queued));
        w.family(
            "asset_agent_mqtt_connected",
            "gauge",
            "1 while the MQTT session is up",
        );
        let now = self.state();
        w.sample(
            "asset_agent_mqtt_connected",
            &[],
            u8::from(now == State::Connected),
        );
        w.family(
            "asset_agent_mqtt_state",
            "gauge",
            "the MQTT session state (1 = current)",
        );
        for s in State::ALL {
            w.sample(
                "asset_agent_mqtt_state",
                &[("state", s.as_str())],
                u8::from(s == now),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_renders() {
        let s = Stats::default();
        assert_eq!(s.state(), State::WaitingForToken);
        for st in State::ALL {
            s.set_state(st);
            assert_eq!(s.state(), st);
        }
        s.set_state(State::Connected);
        Stats::bump(&s.connects);
        let mut w = Writer::default();
        s.collect(&mut w);
        let out = w.finish();
        assert!(out.contains("asset_agent_mqtt_connects_total 1\n"), "{out}");
        assert!(out.contains("asset_agent_mqtt_connected 1\n"));
        assert!(out.contains("asset_agent_mqtt_state{state=\"connected\"} 1\n"));
        assert!(out.contains("asset_agent_mqtt_state{state=\"backoff\"} 0\n"));
        let st = s.status("mqtts://b:8883", "dev", None, None);
        assert!(st.connected);
        assert_eq!(st.connects, 1);
        let json = serde_json::to_value(&st).unwrap();
        assert_eq!(json["state"], "connected");
    }
}
