//! Full-jitter exponential backoff (AWS architecture blog, "Exponential Backoff and Jitter").
//!
//! Attempt `n` waits a uniformly random time in `[min, min(cap, min * 2^n)]`. Full jitter is
//! what spreads a fleet that failed together (an org outage, a mass reboot) instead of
//! having it retry in lock-step. A server's `Retry-After` is a floor, never shortened.

use std::time::Duration;

use ring::rand::SecureRandom as _;

/// The shortest wait between attempts.
pub const MIN: Duration = Duration::from_secs(1);
/// The default longest wait.
pub const DEFAULT_CAP: Duration = Duration::from_secs(300);

/// Backoff state for one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    cap: Duration,
    attempt: u32,
}

/// A source of uniform randomness in `[0, 1)`; swapped for a fixed value in tests.
pub trait Jitter: Send + Sync {
    fn unit(&self) -> f64;
}

/// Jitter from the OS random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsJitter;

impl Jitter for OsJitter {
    fn unit(&self) -> f64 {
        let mut b = [0u8; 8];
        if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
            return 0.5;
        }
        // 53 random bits → [0, 1).
        (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
    }
}

// === impl Backoff ===

impl Backoff {
    /// A backoff between `min` and `cap` (`cap` is raised to `min` if smaller).
    pub fn new(min: Duration, cap: Duration) -> Self {
        Self {
            min,
            cap: cap.max(min),
            attempt: 0,
        }
    }

    /// The delay before the next attempt, honouring `retry_after` as a floor (itself capped
    /// at one hour so a hostile header cannot park the agent forever).
    pub fn next(&mut self, jitter: &dyn Jitter, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.min);
        let delay = self.min + span.mul_f64(jitter.unit().clamp(0.0, 1.0));
        match retry_after {
            Some(ra) => delay.max(ra.min(Duration::from_secs(3600))),
            None => delay,
        }
    }

    /// The upper bound of the next delay: `min(cap, min * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.min.saturating_mul(factor).min(self.cap)
    }

    /// Forget past failures (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failures since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn cap(&self) -> Duration {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&self) -> f64 {
            self.0
        }
    }

    #[test]
    fn ceiling_doubles_up_to_cap() {
        let mut b = Backoff::new(MIN, Duration::from_secs(10));
        let top: Vec<u64> = (0..6)
            .map(|_| b.next(&Fixed(1.0), None).as_secs())
            .collect();
        assert_eq!(top, [1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.next(&Fixed(1.0), None), MIN);
    }

    #[test]
    fn full_jitter_stays_in_bounds() {
        let mut b = Backoff::new(MIN, DEFAULT_CAP);
        for i in 0..40 {
            let ceiling = b.ceiling();
            let d = b.next(&OsJitter, None);
            assert!(d >= MIN && d <= ceiling, "attempt {i}: {d:?} > {ceiling:?}");
        }
        assert_eq!(b.ceiling(), DEFAULT_CAP);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::new(MIN, DEFAULT_CAP);
        assert_eq!(
            b.next(&Fixed(0.0), Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            b.next(&Fixed(0.0), Some(Duration::from_secs(86_400))),
            Duration::from_secs(3600)
        );
    }
}
