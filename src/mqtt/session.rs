//! The session task: the one owner of rumqttc's `EventLoop`.
//!
//! rumqttc reconnects whenever `poll` is called after an error, with whatever credentials
//! are in `EventLoop::mqtt_options` at that moment, and has no backoff of its own. This task
//! decides *when* to poll, and with which token:
//!
//! - It connects only with a live asset token as the password, and writes every new token
//!   into the options as it arrives, so any reconnect uses the freshest one.
//! - **Rotation** (`mqtt.reconnect_on_rotation`, off by default). Without it the session
//!   stays up across token rotations and a new token is used at the next reconnect. A broker
//!   that enforces `exp` cuts a session when its CONNECT token expires; for those, at
//!   `exp - reconnect_margin` of the session's token, the task ends the session
//!   cleanly (DISCONNECT, so the Last Will does not fire) and reconnects with the newer
//!   token. Deferring the switch to that point (rather than reconnecting on every new
//!   token) keeps forced refreshes by apps (`?min_ttl=`) from churning the session: it
//!   reconnects at most once per token lifetime. With no newer token by then, it asks the
//!   refresher for one and rotates as soon as it arrives.
//! - **Refused logins.** A CONNACK refusal, or a broker that drops the connection after
//!   CONNECT (rumqttd does), forces one token refresh per failure streak; every failure
//!   then waits a full-jitter exponential backoff ([`crate::backoff`]).
//! - **Nothing accepted is lost.** Publishes left unacknowledged (or unsent) by a lost or
//!   rotated session go back to the front of the local queue and are sent again on the next
//!   session, whether or not the broker kept the session (rumqttc itself would drop them
//!   when it did not). This is at-least-once: a message may arrive twice.
//!
//! Cancellation: `EventLoop::poll` is dropped whenever another branch of the `select!`
//! wins. Its connect and read paths are cancel-safe (buffered in rumqttc's framed codec);
//! the rare loss is an ack not yet written when the write buffer was full, which the broker
//! answers by redelivering.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS, Request,
    SubscribeReasonCode,
};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use super::command::Dispatcher;
use super::failure::is_refused_login;
use super::options::MAX_INFLIGHT;
use super::presence;
use super::queue::{Queue, carried};
use super::stats::{State, Stats};
use super::topics::Topics;
use super::{Detail, lock};
use crate::backoff::{Backoff, Jitter};
use crate::error::chain;
use crate::token::AssetToken;
use crate::token::refresher::{DemandGuard, Handle};
use wire::clock::Clock;

/// How long a clean goodbye (DISCONNECT, or the final `offline`) may take.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);
/// How long a rotation waits for the broker to close the old connection.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The session task's state; see the module docs.
pub(super) struct Session {
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    pub tokens: Handle,
    pub topics: Arc<Topics>,
    pub queue: Arc<Queue>,
    pub stats: Arc<Stats>,
    pub detail: Arc<std::sync::Mutex<Detail>>,
    pub clock: Clock,
    pub device_id: String,
    pub username: String,
    pub margin: Duration,
    /// `token.refresh_at`: the margin never reaches back past the refresh point.
    pub refresh_at: f64,
    /// Reconnect before the session token's `exp` (`mqtt.reconnect_on_rotation`).
    pub rotate: bool,
    pub heartbeat_every: Duration,
    pub backoff: Backoff,
    pub jitter: Box<dyn Jitter>,
    /// The session is a user of the token: it keeps an on-demand refresher refreshing.
    pub _demand: DemandGuard,
    /// The token whose JWT is in `eventloop.mqtt_options` (the next CONNECT uses it).
    pub creds: Option<Arc<AssetToken>>,
    /// The token the live session logged in with.
    pub session_token: Option<Arc<AssetToken>>,
    pub connected: bool,
    /// The command subscription was acknowledged (and the broker kept the session since).
    pub subscribed: bool,
    /// A refresh was already forced in the current run of failed connects.
    pub refresh_forced: bool,
    /// The rotation point passed with no newer token held; rotate as soon as one comes.
    pub rotation_due: bool,
    /// No connect attempt before this (backoff).
    pub retry_at: Option<Instant>,
    /// When the current rotation began (for logging how long the switch took).
    pub rotating_since: Option<Instant>,
    pub next_heartbeat: Instant,
    pub commands: Dispatcher,
}

/// Builds the fields that start empty.
pub(super) struct Parts {
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    pub tokens: Handle,
    pub topics: Arc<Topics>,
    pub queue: Arc<Queue>,
    pub stats: Arc<Stats>,
    pub detail: Arc<std::sync::Mutex<Detail>>,
    pub clock: Clock,
    pub device_id: String,
    pub username: String,
    pub margin: Duration,
    /// `token.refresh_at`: the margin never reaches back past the refresh point.
    pub refresh_at: f64,
    pub rotate: bool,
    pub heartbeat_every: Duration,
    pub backoff: Backoff,
    pub jitter: Box<dyn Jitter>,
}

// === impl Session ===

impl Session {
    pub(super) fn new(p: Parts) -> Self {
        Self {
            eventloop: p.eventloop,
            client: p.client,
            _demand: p.tokens.hold(),
            tokens: p.tokens,
            commands: Dispatcher::new(p.topics.clone(), p.stats.clone()),
            topics: p.topics,
            queue: p.queue,
            stats: p.stats,
            detail: p.detail,
            clock: p.clock,
            device_id: p.device_id,
            username: p.username,
            margin: p.margin,
            refresh_at: p.refresh_at,
            rotate: p.rotate,
            heartbeat_every: p.heartbeat_every,
            backoff: p.backoff,
            jitter: p.jitter,
            creds: None,
            session_token: None,
            connected: false,
            subscribed: false,
            refresh_forced: false,
            rotation_due: false,
            retry_at: None,
            rotating_since: None,
            next_heartbeat: Instant::now(),
        }
    }

    /// Runs until `cancel` fires, then says `offline` and disconnects cleanly.
    pub(super) async fn run(mut self, cancel: CancellationToken) {
        let mut current = self.tokens.current.clone();
        loop {
            if !self.connected && self.retry_at.is_none() {
                match crate::token::live(&current) {
                    Some(t) => self.use_token(&t),
                    None => {
                        self.stats.set_state(State::WaitingForToken);
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            r = current.changed() => if r.is_err() { break },
                        }
                        continue;
                    }
                }
                if self.stats.state() != State::Rotating {
                    self.stats.set_state(State::Connecting);
                }
            }
            self.feed();
            let far = Instant::now() + Duration::from_secs(86_400);
            let rotate_at = self.rotate_at().filter(|_| !self.rotation_due);
            let retry_at = self.retry_at;
            let can_feed = self.can_feed();
            tokio::select! {
                () = cancel.cancelled() => break,
                r = current.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let t = current.borrow_and_update().clone();
                    self.on_token(t).await;
                }
                () = sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => {
                    self.retry_at = None;
                }
                () = sleep_until(rotate_at.unwrap_or(far)), if rotate_at.is_some() => {
                    self.on_rotation_point().await;
                }
                () = sleep_until(self.next_heartbeat), if self.connected => self.heartbeat(),
                () = self.queue.pushed(), if can_feed => {}
                ev = self.eventloop.poll(), if retry_at.is_none() => self.on_poll(ev, &cancel),
            }
        }
        self.shutdown().await;
    }

    /// Puts `token` into the options for the next CONNECT.
    fn use_token(&mut self, token: &Arc<AssetToken>) {
        if self.creds.as_ref().is_some_and(|c| Arc::ptr_eq(c, token)) {
            return;
        }
        self.eventloop
            .mqtt_options
            .set_credentials(self.username.clone(), token.jwt.expose());
        self.creds = Some(token.clone());
    }

    /// When the live session must switch to a fresher token.
    fn rotate_at(&self) -> Option<Instant> {
        let t = self
            .session_token
            .as_ref()
            .filter(|_| self.connected && self.rotate)?;
        let margin = effective_margin(self.margin, t.lifetime(), self.refresh_at);
        Some(t.expires.checked_sub(margin).unwrap_or(t.received))
    }

    /// Whether the options hold a live token newer than the session's.
    fn has_newer_token(&self) -> bool {
        match (&self.creds, &self.session_token) {
            (Some(c), Some(s)) => !Arc::ptr_eq(c, s) && c.is_live() && c.expires > s.expires,
            (Some(c), None) => c.is_live(),
            _ => false,
        }
    }

    async fn on_token(&mut self, token: Option<Arc<AssetToken>>) {
        let Some(token) = token.filter(|t| t.is_live()) else {
            return;
        };
        self.use_token(&token);
        let due = self.rotation_due || self.rotate_at().is_some_and(|at| at <= Instant::now());
        if self.connected && due && self.has_newer_token() {
            self.rotate().await;
        }
    }

    async fn on_rotation_point(&mut self) {
        if self.has_newer_token() {
            self.rotate().await;
            return;
        }
        self.rotation_due = true;
        Stats::bump(&self.stats.forced_refreshes);
        self.tokens.refresh_now();
        let left = self
            .session_token
            .as_ref()
            .map_or(0, |t| t.remaining().as_secs());
        tracing::info!(
            session_token_expires_in_s = left,
            "the MQTT session's token expires soon and no newer token is held; asked for a refresh"
        );
    }

    /// Ends the session cleanly and lets the next poll reconnect with the newer token.
    ///
    /// After the DISCONNECT it waits (briefly) for the broker to close the old connection:
    /// a CONNECT with the same client id while the broker is still tearing the old session
    /// down can be caught in that teardown (rumqttd drops the new connection then). Acks
    /// read meanwhile still count, so acknowledged messages are not sent twice.
    async fn rotate(&mut self) {
        self.stats.set_state(State::Rotating);
        self.rotating_since = Some(Instant::now());
        let state = &mut self.eventloop.state;
        if let Some(net) = self.eventloop.network.as_mut() {
            let bye = async {
                net.write(Packet::Disconnect).await?;
                net.flush().await
            };
            if matches!(timeout(GOODBYE_WAIT, bye).await, Ok(Ok(()))) {
                let closed = async {
                    while let Ok(packet) = net.read().await {
                        let _ = state.handle_incoming_packet(packet);
                    }
                };
                if timeout(CLOSE_WAIT, closed).await.is_err() {
                    tracing::debug!("the broker kept the old connection open after DISCONNECT");
                }
            } else {
                tracing::debug!("DISCONNECT before rotation could not be sent");
            }
        }
        self.eventloop.clean();
        self.connected = false;
        self.session_token = None;
        self.rotation_due = false;
        self.carry_over();
        Stats::bump(&self.stats.rotations);
        tracing::info!("reconnecting to the MQTT broker with the fresh asset token");
    }

    fn on_poll(&mut self, ev: Result<Event, ConnectionError>, cancel: &CancellationToken) {
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => self.on_connected(ack.session_present),
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                self.subscribed = true;
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    tracing::warn!(topic = %self.topics.cmd,
                        "the broker refused the command subscription; commands will not arrive");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                self.commands
                    .dispatch(&p, &self.tokens, &self.client, cancel);
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => Stats::bump(&self.stats.acked),
            Ok(Event::Outgoing(Outgoing::Publish(_))) => Stats::bump(&self.stats.sent),
            Ok(_) => {}
            Err(e) => self.on_error(&e),
        }
    }

    fn on_connected(&mut self, session_present: bool) {
        self.connected = true;
        self.session_token = self.creds.clone();
        self.backoff.reset();
        self.refresh_forced = false;
        self.rotation_due = false;
        self.stats.set_state(State::Connected);
        self.queue.set_accepting(true);
        Stats::bump(&self.stats.connects);
        {
            let mut d = lock(&self.detail);
            d.session_token_exp = self.session_token.as_ref().map(|t| t.claims.exp);
            d.last_error = None;
        }
        if !session_present || !self.subscribed {
            self.subscribed = false;
            if self
                .client
                .try_subscribe(self.topics.cmd.clone(), QoS::AtLeastOnce)
                .is_err()
            {
                Stats::bump(&self.stats.dropped);
            }
        }
        self.send_own(&self.topics.status.clone(), presence::ONLINE.into(), true);
        self.next_heartbeat = Instant::now();
        let left = self
            .session_token
            .as_ref()
            .map_or(0, |t| t.remaining().as_secs());
        match self.rotating_since.take() {
            Some(t) => tracing::info!(
                session_present,
                token_expires_in_s = left,
                switch_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                "MQTT session up with the fresh token"
            ),
            None => tracing::info!(
                session_present,
                token_expires_in_s = left,
                "MQTT session up"
            ),
        }
    }

    fn on_error(&mut self, e: &ConnectionError) {
        let was_connected = self.connected;
        self.connected = false;
        self.rotating_since = None;
        self.session_token = None;
        self.queue.set_accepting(false);
        self.carry_over();
        let message = chain(e);
        if was_connected {
            Stats::bump(&self.stats.disconnects);
            tracing::warn!("MQTT session lost: {message}");
        } else {
            Stats::bump(&self.stats.connect_failures);
            if is_refused_login(e) {
                Stats::bump(&self.stats.auth_refusals);
                if !self.refresh_forced {
                    self.refresh_forced = true;
                    Stats::bump(&self.stats.forced_refreshes);
                    self.tokens.refresh_now();
                    tracing::info!("the broker refused the login; asked for a fresh token");
                }
            }
        }
        let delay = self.backoff.next(self.jitter.as_ref(), None);
        self.retry_at = Some(Instant::now() + delay);
        self.stats.set_state(State::Backoff);
        tracing::warn!(
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "MQTT connection failed: {message}"
        );
        lock(&self.detail).last_error = Some(message);
    }

    /// Moves the publishes a lost or ended session left behind to the front of the queue;
    /// the agent's own presence messages are not carried (fresh ones follow the connect).
    fn carry_over(&mut self) {
        let pending = std::mem::take(&mut self.eventloop.pending);
        let carried = carried(pending, &self.topics);
        if !carried.is_empty() {
            self.stats.requeued.fetch_add(
                u64::try_from(carried.len()).unwrap_or(0),
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::debug!(
                count = carried.len(),
                "carrying messages over to the next MQTT session"
            );
            self.queue.requeue_front(carried);
        }
    }

    /// Whether queued local messages can go to the event loop now.
    fn can_feed(&self) -> bool {
        self.connected
            && self.eventloop.pending.is_empty()
            && self.eventloop.state.inflight() < MAX_INFLIGHT
    }

    /// Hands queued local messages to the event loop, no more than its in-flight window
    /// has room for (see `queue.rs` for why not rumqttc's own channel).
    fn feed(&mut self) {
        if !self.can_feed() {
            return;
        }
        let free = MAX_INFLIGHT.saturating_sub(self.eventloop.state.inflight());
        for p in self.queue.take(usize::from(free)) {
            self.eventloop.pending.push_back(Request::Publish(p));
        }
    }

    fn heartbeat(&mut self) {
        self.next_heartbeat = Instant::now() + self.heartbeat_every;
        let payload = presence::heartbeat(&self.device_id, &self.tokens, &self.stats, &self.clock);
        self.send_own(&self.topics.heartbeat.clone(), payload, false);
    }

    /// Queues one of the agent's own messages (QoS 1 when retained, else 0) without ever
    /// waiting: when the channel is full the message is counted as dropped.
    fn send_own(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        let qos = if retain {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        if self
            .client
            .try_publish(topic, qos, retain, payload)
            .is_err()
        {
            Stats::bump(&self.stats.dropped);
        }
    }

    /// Says `offline` (retained) and DISCONNECTs, so the broker does not fire the Last Will
    /// for an orderly stop; counts what is still queued as dropped.
    async fn shutdown(&mut self) {
        self.queue.set_accepting(false);
        self.stats.set_state(State::Stopped);
        self.commands.close();
        if self.connected
            && let Some(net) = self.eventloop.network.as_mut()
        {
            let mut offline = Publish::new(
                self.topics.status.clone(),
                QoS::AtMostOnce,
                presence::OFFLINE,
            );
            offline.retain = true;
            let bye = async {
                net.write(Packet::Publish(offline)).await?;
                net.write(Packet::Disconnect).await?;
                net.flush().await
            };
            if !matches!(timeout(GOODBYE_WAIT, bye).await, Ok(Ok(()))) {
                tracing::debug!("could not say goodbye to the MQTT broker");
            }
        }
        self.eventloop.clean();
        self.carry_over();
        let unsent = self.queue.clear();
        if unsent > 0 {
            self.stats.dropped.fetch_add(
                u64::try_from(unsent).unwrap_or(0),
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::warn!(
                unsent,
                "MQTT messages still queued at shutdown were dropped"
            );
        }
        let _ = timeout(GOODBYE_WAIT, self.commands.wait()).await;
        tracing::debug!("MQTT uplink stopped");
    }
}

/// `margin`, clamped so the rotation point (`exp - margin`) stays at or after the token's
/// refresh point (`refresh_at` of the lifetime). A margin as long as the token would
/// otherwise demand a fresher token the moment one arrives: an extra exchange per token.
pub(crate) fn effective_margin(margin: Duration, lifetime: Duration, refresh_at: f64) -> Duration {
    let share = (1.0 - refresh_at).clamp(0.0, 1.0);
    margin.min(lifetime.mul_f64(share))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_clamped_to_the_token_lifetime() {
        let s = Duration::from_secs;
        // Long tokens: the configured margin as is.
        assert_eq!(effective_margin(s(10), s(3600), 0.8), s(10));
        assert_eq!(effective_margin(s(10), s(60), 0.8), s(10));
        // An earlier refresh point leaves room for a longer margin.
        assert_eq!(effective_margin(s(10), s(40), 0.5), s(10));
        assert_eq!(effective_margin(s(10), s(4), 0.5), s(2));
        // Tokens shorter than the margin: the rotation point stays after the refresh
        // point (80 % of the lifetime), never at the token's start.
        for lifetime in [s(4), s(8), s(10), s(30)] {
            let m = effective_margin(s(10), lifetime, 0.8);
            assert!(m < lifetime, "{lifetime:?}: {m:?}");
            assert!(lifetime - m >= lifetime.mul_f64(0.8), "{lifetime:?}: {m:?}");
        }
        assert_eq!(effective_margin(s(10), Duration::ZERO, 0.8), Duration::ZERO);
    }
}
