//! The device clock's error against Salesforce, measured from `Date` headers, and the
//! correction applied to the JWT timestamps the agent mints. Wall time itself comes from
//! [`wire::clock::Clock`], the one place it is read.

use std::sync::atomic::{AtomicI64, Ordering};

use wire::clock::Clock;

/// The device clock's error against Salesforce, measured from `Date` headers.
///
/// `Date` has one-second resolution and includes network delay, so offsets below
/// [`Skew::threshold`] are treated as zero: correcting by noise would make things worse.
/// Above it, JWT timestamps the agent mints (actor tokens, JWT-bearer assertions) are
/// computed on corrected time, so a device that booted with a wrong clock can still
/// authenticate (a failure other device agents have hit when booting without an RTC).
#[derive(Debug)]
pub struct Skew {
    /// server minus local, in seconds; `i64::MIN` until measured.
    offset: AtomicI64,
    threshold: i64,
}

impl Default for Skew {
    fn default() -> Self {
        Self::new(DEFAULT_SKEW_THRESHOLD_SECS)
    }
}

/// Offsets at or below this many seconds are not corrected.
pub const DEFAULT_SKEW_THRESHOLD_SECS: i64 = 10;

impl Skew {
    pub fn new(threshold_secs: i64) -> Self {
        Self {
            offset: AtomicI64::new(i64::MIN),
            threshold: threshold_secs,
        }
    }

    /// Records one measurement: server time minus local time, in seconds.
    pub fn observe(&self, server_minus_local: i64) {
        self.offset.store(server_minus_local, Ordering::Relaxed);
    }

    /// The last measured offset (server minus local), if any response carried a `Date`.
    pub fn measured(&self) -> Option<i64> {
        match self.offset.load(Ordering::Relaxed) {
            i64::MIN => None,
            v => Some(v),
        }
    }

    /// The correction to apply to local time: the measured offset if it exceeds the
    /// threshold, else zero.
    pub fn correction(&self) -> i64 {
        match self.measured() {
            Some(v) if v.abs() > self.threshold => v,
            _ => 0,
        }
    }

    pub fn threshold(&self) -> i64 {
        self.threshold
    }

    /// Corrected Unix time for `clock`.
    pub fn corrected_unix(&self, clock: &Clock) -> i64 {
        clock.unix().saturating_add(self.correction())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_corrects_only_above_threshold() {
        let skew = Skew::new(10);
        assert_eq!(skew.measured(), None);
        assert_eq!(skew.correction(), 0);
        skew.observe(4);
        assert_eq!(skew.correction(), 0);
        skew.observe(-3600);
        assert_eq!(skew.correction(), -3600);
        let clock = Clock::system();
        assert!((skew.corrected_unix(&clock) - (clock.unix() - 3600)).abs() <= 1);
    }
}
