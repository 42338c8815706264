//! The counters the refresh loop and the HTTPS client bump: refreshes by outcome and the
//! latency of every call to Salesforce. They live in the [`super::Registry`] the agent
//! builds and passes to the parts that count, so two agents in one process (tests, a
//! gateway) never share numbers.
//!
//! Label values that come from outside (OAuth error codes in failure reasons) are
//! sanitised and their number capped, so a misbehaving server cannot grow the series set
//! without bound.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the upstream latency histogram's buckets; `+Inf` is implied.
pub const UPSTREAM_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// At most this many distinct failure reasons are kept; later ones count as `other`.
const MAX_REASONS: usize = 32;
/// A reason label is cut to this many characters.
const MAX_REASON_LEN: usize = 48;

/// Refresh outcomes and upstream latencies.
#[derive(Debug, Default)]
pub struct Counters {
    refresh_ok: AtomicU64,
    refresh_failed: Mutex<Vec<(String, u64)>>,
    upstream: Mutex<Vec<(String, Histogram)>>,
}

/// A latency histogram: cumulative counts are computed when read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    counts: [u64; UPSTREAM_BUCKETS.len() + 1],
    sum_seconds: f64,
}

// === impl Histogram ===

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let slot = UPSTREAM_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(UPSTREAM_BUCKETS.len());
        self.counts[slot] += 1;
        self.sum_seconds += seconds;
    }

    /// `(le, cumulative count)` for every bucket, ending with `+Inf`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        UPSTREAM_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .map(|(le, n)| {
                total += n;
                (le, total)
            })
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_seconds
    }
}

/// What the refresh loop and the HTTPS client have counted so far.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub refreshes_ok: u64,
    /// `(reason, count)`, in order of first occurrence.
    pub refreshes_failed: Vec<(String, u64)>,
    /// `(endpoint, histogram)`, in order of first call.
    pub upstream: Vec<(String, Histogram)>,
}

// === impl Counters ===

impl Counters {
    /// A refresh attempt succeeded.
    pub fn refresh_succeeded(&self) {
        self.refresh_ok.fetch_add(1, Ordering::Relaxed);
    }

    /// A refresh attempt failed for `reason` (the short reason shown in status).
    pub fn refresh_failed(&self, reason: &str) {
        let reason = sanitize(reason);
        let mut map = lock(&self.refresh_failed);
        if let Some(entry) = map.iter_mut().find(|(r, _)| *r == reason) {
            entry.1 += 1;
            return;
        }
        let key = if map.len() < MAX_REASONS {
            reason
        } else {
            "other".to_owned()
        };
        match map.iter_mut().find(|(r, _)| *r == key) {
            Some(entry) => entry.1 += 1,
            None => map.push((key, 1)),
        }
    }

    /// One call to Salesforce's `endpoint` took `elapsed` (whatever its outcome, timeouts
    /// included). `endpoint` is the label the caller names its step by (`access_token`);
    /// a constant of the caller's, never text from outside.
    pub fn upstream_call(&self, endpoint: &'static str, elapsed: Duration) {
        let label = sanitize(endpoint);
        let mut map = lock(&self.upstream);
        let seconds = elapsed.as_secs_f64();
        match map.iter_mut().find(|(l, _)| *l == label) {
            Some((_, h)) => h.observe(seconds),
            None => {
                let mut h = Histogram::default();
                h.observe(seconds);
                map.push((label, h));
            }
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            refreshes_ok: self.refresh_ok.load(Ordering::Relaxed),
            refreshes_failed: lock(&self.refresh_failed).clone(),
            upstream: lock(&self.upstream).clone(),
        }
    }
}

/// Lower-case ASCII letters, digits, `_`, `.` and `-` only, at most [`MAX_REASON_LEN`].
fn sanitize(raw: &str) -> String {
    let s: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_REASON_LEN)
        .collect();
    if s.is_empty() {
        "unknown".to_owned()
    } else {
        s
    }
}

/// A poisoned lock only means another thread panicked mid-update of a counter; the
/// numbers are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_ends_at_inf() {
        let mut h = Histogram::default();
        for s in [0.01, 0.07, 0.07, 3.0, 1000.0] {
            h.observe(s);
        }
        let c = h.cumulative();
        assert_eq!(c.len(), UPSTREAM_BUCKETS.len() + 1);
        assert_eq!(c[0], (0.05, 1));
        assert_eq!(c[1], (0.1, 3));
        assert_eq!(c.last().copied(), Some((f64::INFINITY, 5)));
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(h.count(), 5);
        assert!((h.sum_seconds() - 1003.15).abs() < 1e-9);
    }

    #[test]
    fn labels_are_tame() {
        assert_eq!(sanitize("Invalid \"grant\"\n"), "invalid__grant__");
        assert_eq!(sanitize(""), "unknown");
        assert_eq!(sanitize(&"x".repeat(500)).len(), MAX_REASON_LEN);
    }

    #[test]
    fn reasons_are_capped() {
        let counters = Counters::default();
        for i in 0..(MAX_REASONS * 2) {
            counters.refresh_failed(&format!("metrics_test_reason_{i}"));
        }
        let s = counters.snapshot();
        assert!(s.refreshes_failed.len() <= MAX_REASONS + 1);
        assert!(
            s.refreshes_failed
                .iter()
                .any(|(r, n)| r == "other" && *n > 0)
        );
    }
}
