//! What every handler shares: configuration, keys, tables, faults, counters and the
//! emulator's clock.
//!
//! The emulator's wall time is `config.clock` plus its own skew (the skew fault). The skew
//! lives here rather than in the `Clock`'s offset because a test often hands the same
//! `Clock` to the agent, whose time must not move when the emulator's is skewed.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::task::TaskTracker;

use super::{Config, Stats, armed, server, signing, state};
use wire::clock;

/// What every handler shares: configuration, keys, tables, faults and counters.
pub(crate) struct Shared {
    /// The configuration, key PEMs removed.
    pub config: Config,
    pub addr: SocketAddr,
    /// `http://IP:PORT` plus the site prefix: `instance_url`, asset-token `iss`.
    pub base_url: String,
    pub keys: signing::Keys,
    pub state: Mutex<state::State>,
    pub faults: Mutex<armed::Armed>,
    pub stats: Mutex<Stats>,
    pub listen: server::ListenControl,
    /// The emulator's own clock skew (ms), on top of `config.clock`: the clock may be
    /// shared with the agent under test, whose time must not move with ours.
    skew_ms: AtomicI64,
    /// Tracks connection tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
}

// === impl Shared ===

impl Shared {
    pub fn new(
        config: Config,
        addr: SocketAddr,
        base_url: String,
        keys: signing::Keys,
        state: state::State,
    ) -> Self {
        Self {
            config,
            addr,
            base_url,
            keys,
            state: Mutex::new(state),
            faults: Mutex::new(armed::Armed::default()),
            stats: Mutex::new(Stats::default()),
            listen: server::ListenControl::new(),
            skew_ms: AtomicI64::new(0),
            tracker: TaskTracker::new(),
        }
    }

    /// The emulator's wall time: the configured clock plus its own skew.
    pub fn now(&self) -> SystemTime {
        let base = self.config.clock.now();
        let skew = self.skew_ms.load(Ordering::Relaxed);
        let delta = Duration::from_millis(skew.unsigned_abs());
        if skew >= 0 {
            base + delta
        } else {
            base.checked_sub(delta).unwrap_or(UNIX_EPOCH)
        }
    }

    /// Unix seconds of [`Shared::now`].
    pub fn unix(&self) -> i64 {
        clock::unix_seconds(self.now())
    }

    /// Unix milliseconds of [`Shared::now`].
    pub fn unix_ms(&self) -> i64 {
        match self.now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    pub fn set_skew(&self, seconds: i64) {
        self.skew_ms
            .store(seconds.saturating_mul(1000), Ordering::Relaxed);
    }

    pub fn skew(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed) / 1000
    }
}
