//! Wall-clock time, the one place it is read.
//!
//! Scheduling uses `tokio::time::Instant` (monotonic, and virtual under
//! `tokio::time::pause`). Wall time is only needed for JWT timestamps (`iat`, `exp`, `nbf`)
//! and RFC 3339 output, and it comes from a [`Clock`]:
//! - [`Clock::system`] reads the system clock;
//! - [`Clock::tokio_driven`] derives wall time from tokio's clock, so a test that pauses and
//!   advances tokio time moves JWT time with it and can check expiry without sleeping.
//!
//! Either can carry a deliberate offset, which tests use to model a device clock that is
//! wrong and the emulator uses for its "skewed clock" fault.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time. Cheap to clone; clones share the offset.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: Source,
    /// Added to every reading, in milliseconds.
    offset_ms: AtomicI64,
}

#[derive(Debug)]
enum Source {
    System,
    Tokio {
        base_wall: SystemTime,
        base: tokio::time::Instant,
    },
}

// === impl Clock ===

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self::with_source(Source::System)
    }

    /// Wall time that advances with tokio's clock (virtual when paused), starting from the
    /// system time at construction.
    pub fn tokio_driven() -> Self {
        #[allow(clippy::disallowed_methods)] // the one sanctioned read of SystemTime
        let base_wall = SystemTime::now();
        Self::with_source(Source::Tokio {
            base_wall,
            base: tokio::time::Instant::now(),
        })
    }

    fn with_source(source: Source) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                offset_ms: AtomicI64::new(0),
            }),
        }
    }

    /// The current wall time, offset applied.
    pub fn now(&self) -> SystemTime {
        #[allow(clippy::disallowed_methods)]
        let raw = match &self.inner.source {
            Source::System => SystemTime::now(),
            Source::Tokio { base_wall, base } => *base_wall + base.elapsed(),
        };
        let offset = self.inner.offset_ms.load(Ordering::Relaxed);
        let delta = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 {
            raw + delta
        } else {
            raw.checked_sub(delta).unwrap_or(UNIX_EPOCH)
        }
    }

    /// Seconds since the Unix epoch (negative before 1970, which a broken RTC can produce).
    pub fn unix(&self) -> i64 {
        unix_seconds(self.now())
    }

    /// Milliseconds since the Unix epoch (negative before 1970).
    pub fn unix_ms(&self) -> i64 {
        match self.now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Sets the deliberate offset from the underlying source, in seconds.
    pub fn set_offset(&self, seconds: i64) {
        self.inner
            .offset_ms
            .store(seconds.saturating_mul(1000), Ordering::Relaxed);
    }

    /// The deliberate offset, in seconds.
    pub fn offset(&self) -> i64 {
        self.inner.offset_ms.load(Ordering::Relaxed) / 1000
    }
}

/// Seconds since the Unix epoch for `t`.
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The `SystemTime` for a Unix timestamp (clamped at the epoch).
pub fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// RFC 3339 with second precision, UTC (`2026-11-28T19:36:48Z`).
pub fn rfc3339(secs: i64) -> String {
    humantime::format_rfc3339_seconds(from_unix(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_driven_follows_virtual_time() {
        let clock = Clock::tokio_driven();
        let t0 = clock.unix();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.unix() - t0, 3600);
    }

    #[test]
    fn offset_applies_both_ways() {
        let clock = Clock::system();
        let t0 = clock.unix();
        clock.set_offset(-3600);
        assert!((t0 - 3600 - clock.unix()).abs() <= 1);
        clock.set_offset(7200);
        assert!((clock.unix() - t0 - 7200).abs() <= 1);
        assert_eq!(clock.offset(), 7200);
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(unix_seconds(from_unix(42)), 42);
    }
}
