//! Logging refused callers without letting a looping client flood the journal.
//!
//! The first denial of a uid is logged at once; further denials of that uid within
//! [`INTERVAL`] are only counted, and the next line logged for it says how many were
//! suppressed. Every denial is still counted in the metrics.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::peer::{Peer, Role};

/// At most one log line per uid per this interval.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Uids remembered at once; beyond it, forgotten entries simply log again.
const MAX_TRACKED: usize = 1024;

/// Rate-limited denial log.
#[derive(Debug, Default)]
pub struct DenialLog {
    seen: Mutex<HashMap<u32, Seen>>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    logged_at: Instant,
    suppressed: u64,
}

// === impl DenialLog ===

impl DenialLog {
    /// Records that `peer` (holding `has`) was refused `route`, which needs `needs`; logs it
    /// unless this uid was logged recently. Returns the number of suppressed denials the
    /// line reported, or `None` when this one was suppressed.
    pub fn record(&self, peer: &Peer, route: &str, needs: Role, has: Option<Role>) -> Option<u64> {
        let now = Instant::now();
        let reported = {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.len() >= MAX_TRACKED {
                seen.retain(|_, s| now.duration_since(s.logged_at) < INTERVAL);
                if seen.len() >= MAX_TRACKED {
                    seen.clear();
                }
            }
            match seen.get_mut(&peer.uid) {
                Some(s) if now.duration_since(s.logged_at) < INTERVAL => {
                    s.suppressed += 1;
                    return None;
                }
                Some(s) => {
                    let n = s.suppressed;
                    *s = Seen {
                        logged_at: now,
                        suppressed: 0,
                    };
                    n
                }
                None => {
                    seen.insert(
                        peer.uid,
                        Seen {
                            logged_at: now,
                            suppressed: 0,
                        },
                    );
                    0
                }
            }
        };
        tracing::warn!(
            uid = peer.uid,
            gid = peer.gid,
            groups = ?peer.groups,
            pid = peer.pid,
            route,
            needs = needs.as_str(),
            has = has.map_or("none", Role::as_str),
            suppressed_since_last = reported,
            "refused a caller"
        );
        Some(reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: Some(1),
            groups: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_line_per_uid_per_interval_with_the_suppressed_count() {
        let log = DenialLog::default();
        assert_eq!(
            log.record(&peer(7), "/v1/token", Role::Token, None),
            Some(0)
        );
        for _ in 0..999 {
            assert_eq!(log.record(&peer(7), "/v1/token", Role::Token, None), None);
        }
        // Another uid is not held back by the first.
        assert_eq!(
            log.record(&peer(8), "/v1/refresh", Role::Admin, Some(Role::Token)),
            Some(0)
        );
        tokio::time::advance(INTERVAL).await;
        assert_eq!(
            log.record(&peer(7), "/v1/token", Role::Token, None),
            Some(999)
        );
        assert_eq!(log.record(&peer(7), "/v1/token", Role::Token, None), None);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded() {
        let log = DenialLog::default();
        for uid in 0..(MAX_TRACKED as u32 * 3) {
            log.record(&peer(uid), "/", Role::Token, None);
        }
        assert!(log.seen.lock().unwrap().len() <= MAX_TRACKED);
    }
}
