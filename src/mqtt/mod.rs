//! The MQTT uplink: an MQTT session authenticated by the asset token, kept alive across
//! token rotations so device software never handles tokens.
//!
//! JWT-authenticated brokers (EMQX, HiveMQ, Mosquitto with an auth plugin, cloud IoT
//! brokers) take the token as the MQTT password and cut the client off when it expires.
//! The agent logs in with the current asset token, reconnects with a fresh one before the
//! old one's `exp`, announces the device's presence, takes commands, and lets local apps
//! publish through its session.
//!
//! One task ([`Uplink::run`], `session.rs`) owns rumqttc's `EventLoop`; everything else
//! talks to it through [`Handle`]: the local publish queue, the counters and the status.
//!
//! Files: `session.rs` (the task: connect, rotate, back off), `failure.rs` (refused
//! login or not), `options.rs`
//! (`MqttOptions` and TLS), `queue.rs` (local publishes; the socket route is `api::routes::mqtt_publish`),
//! `command.rs` (`.../agent/cmd`), `presence.rs` (status and heartbeat), `topics.rs`,
//! `stats.rs` (counters for status and `/metrics`).
//!
//! Secrets: `MqttOptions`' `Debug` prints the password (the asset token), so no options,
//! event loop or login is ever formatted; errors are logged through their `Display`.

mod command;
mod failure;
mod options;
mod presence;
mod queue;
mod session;
pub(crate) mod stats;
pub(crate) mod topics;

pub use options::{MAX_INFLIGHT, MAX_PAYLOAD};
pub use queue::{Queue, Rejected};
pub use stats::{State, Stats, Status};
pub use topics::Topics;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rumqttc::AsyncClient;
use tokio_util::sync::CancellationToken;

use crate::backoff::{self, Backoff, Jitter};
use crate::config;
use crate::token::refresher::Handle as Tokens;
use wire::clock::{self, Clock};

/// The uplink could not be set up (a configuration problem).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not set up the MQTT connection to {url}")]
    Options {
        url: String,
        #[source]
        source: options::Error,
    },
}

/// The session task, ready to run.
pub struct Uplink {
    session: session::Session,
}

/// What the rest of the agent holds: publish, read counters and status.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<Queue>,
    stats: Arc<Stats>,
    detail: Arc<Mutex<Detail>>,
    topics: Arc<Topics>,
    broker: String,
    client_id: String,
}

/// What the session reports besides counters.
#[derive(Debug, Default)]
pub(crate) struct Detail {
    /// `exp` (Unix seconds) of the token the live session logged in with.
    pub session_token_exp: Option<i64>,
    /// The last connection failure, as a cause chain (never holds a secret).
    pub last_error: Option<String>,
}

fn lock(detail: &Mutex<Detail>) -> MutexGuard<'_, Detail> {
    detail.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Uplink ===

impl Uplink {
    /// An uplink for `config`, logging in as `device_id`'s asset tokens from `tokens`.
    ///
    /// # Errors
    /// [`Error::Options`] when TLS cannot be set up (unreadable CA or client certificate).
    /// `refresh_at` is the token's refresh point (`token.refresh_at`): a planned rotation
    /// never comes before it, so it never forces an extra exchange.
    pub fn new(
        config: &config::Mqtt,
        device_id: &str,
        tokens: Tokens,
        clock: Clock,
        jitter: Box<dyn Jitter>,
        refresh_at: f64,
    ) -> Result<(Self, Handle), Error> {
        let topics = Arc::new(Topics::new(
            &config.topic_prefix,
            device_id,
            &config.publish_prefix,
        ));
        let opts = options::build(config, &topics).map_err(|source| Error::Options {
            url: config.url.to_string(),
            source,
        })?;
        let (client, eventloop): (AsyncClient, _) =
            AsyncClient::new(opts, options::REQUEST_CHANNEL);
        let stats = Arc::new(Stats::default());
        let queue = Arc::new(Queue::new(config.queue, stats.clone()));
        let detail = Arc::new(Mutex::new(Detail::default()));
        let session = session::Session::new(session::Parts {
            eventloop,
            client,
            tokens,
            topics: topics.clone(),
            queue: queue.clone(),
            stats: stats.clone(),
            detail: detail.clone(),
            clock,
            device_id: device_id.to_owned(),
            username: config.username.clone(),
            margin: config.reconnect_margin,
            refresh_at,
            rotate: config.reconnect_on_rotation,
            heartbeat_every: config.heartbeat,
            backoff: Backoff::new(backoff::MIN, config.backoff_max),
            jitter,
        });
        let handle = Handle {
            inner: Arc::new(Inner {
                queue,
                stats,
                detail,
                topics,
                broker: config.url.to_string(),
                client_id: config.client_id.clone(),
            }),
        };
        Ok((Self { session }, handle))
    }

    /// Runs the session until `cancel` fires; see `session.rs`.
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(
            broker = %self.session.eventloop.mqtt_options.broker_address().0,
            "MQTT uplink starting"
        );
        self.session.run(cancel).await;
    }
}

// === impl Handle ===

impl Handle {
    /// The counters (registered with the metrics registry, and read by status).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    pub fn topics(&self) -> &Topics {
        &self.inner.topics
    }

    /// The local publish queue.
    pub fn queue(&self) -> &Queue {
        &self.inner.queue
    }

    /// The `mqtt` object of `/v1/status`.
    pub fn status(&self) -> Status {
        let (exp, last_error) = {
            let d = lock(&self.inner.detail);
            (d.session_token_exp, d.last_error.clone())
        };
        let connected = self.inner.stats.state() == State::Connected;
        self.inner.stats.status(
            &self.inner.broker,
            &self.inner.client_id,
            exp.filter(|_| connected).map(clock::rfc3339),
            last_error,
        )
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("mqtt::Handle")
            .field("broker", &self.inner.broker)
            .field("client_id", &self.inner.client_id)
            .field("state", &self.inner.stats.state())
            .finish_non_exhaustive()
    }
}
