//! Connection accounting: caps on concurrent connections (all callers, and per uid), and
//! who gives way when the caps are reached.
//!
//! Why eviction rather than a queue: the listener must keep accepting, or a thousand idle
//! connections fill the kernel backlog and a legitimate client cannot even connect. So
//! every connection is accepted and admitted at once; when a cap is reached, the *idle*
//! connection (no request being handled) that was quiet the longest gives way, taken from
//! the newcomer's own uid when that uid is at its cap, else from the uid holding the most
//! connections. Only when every candidate is busy is the newcomer refused (503). An idle
//! or slowloris client therefore delays no one: it is the first to go.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Caps, from `[api]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_uid: usize,
}

/// Counters for the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub rejected: AtomicU64,
    pub evicted: AtomicU64,
}

/// The open connections.
#[derive(Debug)]
pub struct Registry {
    caps: Caps,
    epoch: Instant,
    inner: Mutex<Inner>,
    pub counters: Counters,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    conns: HashMap<u64, Entry, Ids>,
    per_uid: HashMap<u32, usize, Ids>,
}

#[derive(Debug)]
struct Entry {
    uid: u32,
    activity: Arc<Activity>,
}

/// Whether a connection is handling a request, when it last finished one, and whether
/// the registry closed it to make room. One allocation per connection, shared by the
/// registry and the connection.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    busy: AtomicUsize,
    /// Milliseconds since `epoch` of its admission or the end of its last request: only
    /// an idle connection is ever compared, so the start of a request is not recorded.
    last_ms: AtomicU64,
    evicted: AtomicBool,
    /// Wakes the connection when `evicted` is set.
    evict: Notify,
}

/// Marks its connection busy while alive (a request in a handler, or a streaming answer).
#[derive(Debug)]
pub struct BusyGuard(Arc<Activity>);

/// A connection's place in the registry; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    registry: Arc<Registry>,
    id: u64,
    pub activity: Arc<Activity>,
}

/// No room: every connection that could give way is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("too many connections from this uid, all of them busy")]
    Uid,
    #[error("too many connections, all of them busy")]
    Total,
}

// === impl Registry ===

impl Registry {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            epoch: Instant::now(),
            inner: Mutex::default(),
            counters: Counters::default(),
        })
    }

    /// Admits a new connection from `uid`, closing an idle one if a cap is reached.
    ///
    /// # Errors
    /// [`Full`] when no connection could give way.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, Full> {
        let mut inner = self.lock();
        if inner.per_uid.get(&uid).copied().unwrap_or(0) >= self.caps.per_uid
            && !self.evict(&mut inner, Some(uid))
        {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Full::Uid);
        }
        if inner.conns.len() >= self.caps.total && !self.evict_from_largest(&mut inner) {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Full::Total);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let activity = Arc::new(Activity {
            epoch: self.epoch,
            busy: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        });
        activity.touch();
        inner.conns.insert(
            id,
            Entry {
                uid,
                activity: activity.clone(),
            },
        );
        *inner.per_uid.entry(uid).or_default() += 1;
        Ok(Slot {
            registry: self.clone(),
            id,
            activity,
        })
    }

    /// Open connections: in total, and of the uid with the most.
    pub fn open(&self) -> (usize, usize) {
        let inner = self.lock();
        let max = inner.per_uid.values().copied().max().unwrap_or(0);
        (inner.conns.len(), max)
    }

    /// Closes the idle connection (of `uid`, or of anyone) quiet the longest.
    fn evict(&self, inner: &mut Inner, uid: Option<u32>) -> bool {
        let victim = inner
            .conns
            .iter()
            .filter(|(_, e)| uid.is_none_or(|u| e.uid == u) && e.activity.is_idle())
            .min_by_key(|(_, e)| e.activity.last_ms.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        let Some(id) = victim else {
            return false;
        };
        if let Some(entry) = remove(inner, id) {
            entry.activity.evicted.store(true, Ordering::Release);
            entry.activity.evict.notify_waiters();
            self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Evicts from the uid holding the most connections that has an idle one.
    fn evict_from_largest(&self, inner: &mut Inner) -> bool {
        let mut uids: Vec<(u32, usize)> = inner.per_uid.iter().map(|(u, n)| (*u, *n)).collect();
        uids.sort_unstable_by_key(|(_, n)| std::cmp::Reverse(*n));
        uids.into_iter()
            .any(|(uid, _)| self.evict(inner, Some(uid)))
    }

    fn release(&self, id: u64) {
        remove(&mut self.lock(), id);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn remove(inner: &mut Inner, id: u64) -> Option<Entry> {
    let entry = inner.conns.remove(&id)?;
    if let Some(n) = inner.per_uid.get_mut(&entry.uid) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            inner.per_uid.remove(&entry.uid);
        }
    }
    Some(entry)
}

// === impl Activity ===

impl Activity {
    /// Marks the connection busy until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::Relaxed);
        BusyGuard(self.clone())
    }

    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Slot ===

impl Slot {
    /// Whether the registry closed this connection to make room.
    pub fn is_evicted(&self) -> bool {
        self.activity.evicted.load(Ordering::Acquire)
    }

    /// Completes when the registry closes this connection to make room.
    pub async fn evicted(&self) {
        let notified = self.activity.evict.notified();
        tokio::pin!(notified);
        // Listening before looking: an eviction after the look still wakes this.
        notified.as_mut().enable();
        if !self.is_evicted() {
            notified.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.release(self.id);
    }
}

/// The registry's maps hash their keys with one multiplication (Fibonacci hashing). Their
/// keys are connection numbers the registry gives out and uids the kernel reports, none
/// chosen by a client, so SipHash's defence against crafted keys buys nothing here; its six
/// hashes per connection cost ~1,100 instructions.
type Ids = BuildHasherDefault<IdHasher>;

#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn registry(total: usize, per_uid: usize) -> Arc<Registry> {
        Registry::new(Caps { total, per_uid })
    }

    #[test]
    fn consecutive_ids_spread_over_the_table() {
        use std::collections::HashSet;
        use std::hash::BuildHasher as _;
        let hashes: Vec<u64> = (0..4096u64).map(|id| Ids::default().hash_one(id)).collect();
        // The bucket index (low bits) and the tag hashbrown keeps per slot (top 7 bits).
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(buckets.len(), 4096);
        assert_eq!(tags.len(), 128);
    }

    #[tokio::test(start_paused = true)]
    async fn per_uid_cap_evicts_that_uids_oldest_idle_connection() {
        let r = registry(100, 2);
        let a = r.admit(7).unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        let b = r.admit(7).unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        let c = r.admit(7).unwrap();
        assert!(a.is_evicted(), "the oldest idle one gave way");
        assert!(!b.is_evicted() && !c.is_evicted());
        assert_eq!(r.open(), (2, 2));
        drop(a);
        assert_eq!(r.open(), (2, 2), "an evicted slot is not released twice");
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_are_never_evicted() {
        let r = registry(100, 2);
        let a = r.admit(7).unwrap();
        let b = r.admit(7).unwrap();
        let _ga = a.activity.enter();
        let _gb = b.activity.enter();
        assert_eq!(r.admit(7).unwrap_err(), Full::Uid);
        // Other uids are unaffected.
        let _other = r.admit(8).unwrap();
        assert_eq!(r.counters.rejected.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn total_cap_takes_from_the_largest_uid() {
        let r = registry(4, 4);
        let victim_uid_conns: Vec<Slot> = (0..3).map(|_| r.admit(66).unwrap()).collect();
        let mine = r.admit(1).unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        let newcomer = r.admit(2).unwrap();
        assert!(!mine.is_evicted(), "the smaller uid keeps its connection");
        assert_eq!(
            victim_uid_conns.iter().filter(|s| s.is_evicted()).count(),
            1
        );
        assert!(!newcomer.is_evicted());
        assert_eq!(r.open().0, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_guard_marks_busy_then_idle_again() {
        let r = registry(1, 1);
        let a = r.admit(7).unwrap();
        {
            let _g = a.activity.enter();
            assert_eq!(r.admit(8).unwrap_err(), Full::Total);
        }
        let b = r.admit(8).unwrap();
        assert!(a.is_evicted());
        drop(b);
        assert_eq!(r.open(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_wakes_a_waiting_connection_and_one_that_looks_later() {
        let r = registry(100, 1);
        let a = r.admit(7).unwrap();
        let waiting = tokio::spawn(async move {
            a.evicted().await;
            a
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let _b = r.admit(7).unwrap();
        let a = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the eviction woke the waiting connection")
            .unwrap();
        // Already evicted: the future completes at once.
        tokio::time::timeout(Duration::from_millis(1), a.evicted())
            .await
            .expect("an evicted slot answers at once");
    }
}
