//! The upstream gate every refresh loop of one agent passes before an attempt: at most
//! [`Gate::concurrency`] attempts in flight, and attempts started at least
//! [`Gate::spacing`] apart. A gateway with 200 children therefore never sends 200
//! exchanges at once (at boot, all of them want a token), and its steady rate stays
//! within what one device's rules allow per identity.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::{Instant, sleep_until};

/// Default for [`Gate::spacing`]: at most 10 attempts started per second.
pub const DEFAULT_SPACING: Duration = Duration::from_millis(100);
/// Default for [`Gate::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 4;

/// See the module docs. Shared (`Arc`) by every refresh loop of an agent.
#[derive(Debug)]
pub struct Gate {
    permits: Semaphore,
    concurrency: usize,
    spacing: Duration,
    /// The earliest start of the next attempt.
    next: Mutex<Option<Instant>>,
}

// === impl Gate ===

impl Default for Gate {
    fn default() -> Self {
        Self::new(DEFAULT_CONCURRENCY, DEFAULT_SPACING)
    }
}

impl Gate {
    /// A gate for `concurrency` attempts in flight (at least one), started `spacing` apart.
    pub fn new(concurrency: usize, spacing: Duration) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            permits: Semaphore::new(concurrency),
            concurrency,
            spacing,
            next: Mutex::new(None),
        }
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    pub fn spacing(&self) -> Duration {
        self.spacing
    }

    /// Reserves the next start slot (now, or [`Gate::spacing`] after the last one).
    pub fn reserve(&self) -> Instant {
        let now = Instant::now();
        match self.next.lock() {
            Ok(mut next) => {
                let slot = next.map_or(now, |n| n.max(now));
                *next = Some(slot + self.spacing);
                slot
            }
            // A poisoned lock only means another loop panicked mid-update: no spacing.
            Err(_) => now,
        }
    }

    /// Waits for `slot` (from [`Gate::reserve`]) and a free place; the attempt holds the
    /// permit until it ends. `None` only if the gate was closed (it never is).
    pub async fn enter(&self, slot: Instant) -> Option<SemaphorePermit<'_>> {
        sleep_until(slot).await;
        self.permits.acquire().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_and_places_bounded() {
        let gate = Gate::new(2, Duration::from_millis(100));
        let t0 = Instant::now();
        let slots: Vec<Instant> = (0..4).map(|_| gate.reserve()).collect();
        let offsets: Vec<u128> = slots.iter().map(|s| (*s - t0).as_millis()).collect();
        assert_eq!(offsets, [0, 100, 200, 300]);
        let a = gate.enter(slots[0]).await;
        let b = gate.enter(slots[1]).await;
        assert!(a.is_some() && b.is_some());
        // Both places taken: the third waits past its slot until one is given back.
        let third = tokio::time::timeout(Duration::from_secs(5), gate.enter(slots[2])).await;
        assert!(third.is_err());
        drop(a);
        assert!(gate.enter(slots[2]).await.is_some());
        // After a quiet spell the next slot is now again.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(gate.reserve(), Instant::now());
    }
}
