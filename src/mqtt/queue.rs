//! The bounded queue between local apps (`POST /v1/mqtt/publish`) and the session task.
//!
//! Why not rumqttc's own request channel: the session must be able to put messages that a
//! lost session left unacknowledged back at the *front*, in order, and feed the event loop
//! no more than its in-flight window allows (rumqttc replays its `pending` list without
//! flow control, and a packet-id collision there overwrites a message). A `VecDeque` under
//! a short std `Mutex` (never held across an await) does both; `Notify` wakes the session.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rumqttc::{Publish, Request};
use tokio::sync::Notify;

use super::stats::Stats;
use super::topics::Topics;

/// Local messages waiting for the broker.
#[derive(Debug)]
pub struct Queue {
    items: Mutex<VecDeque<Publish>>,
    /// New messages are refused at this length (carried-over ones may exceed it briefly).
    capacity: usize,
    /// Whether a session exists (or is being rotated) to send them on.
    accepting: AtomicBool,
    notify: Notify,
    stats: Arc<Stats>,
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the MQTT publish queue is full")]
    Full,
    #[error("the MQTT session is not connected")]
    Disconnected,
}

// === impl Queue ===

impl Queue {
    pub fn new(capacity: usize, stats: Arc<Stats>) -> Self {
        Self {
            items: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
            accepting: AtomicBool::new(false),
            notify: Notify::new(),
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Publish>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `publish` for the session.
    ///
    /// # Errors
    /// [`Rejected::Disconnected`] without a session, [`Rejected::Full`] at capacity.
    pub fn push(&self, publish: Publish) -> Result<(), Rejected> {
        if !self.accepting.load(Ordering::Acquire) {
            Stats::bump(&self.stats.local_rejected_disconnected);
            return Err(Rejected::Disconnected);
        }
        {
            let mut items = self.lock();
            if items.len() >= self.capacity {
                drop(items);
                Stats::bump(&self.stats.local_rejected_full);
                return Err(Rejected::Full);
            }
            items.push_back(publish);
            self.publish_len(items.len());
        }
        Stats::bump(&self.stats.local_accepted);
        self.notify.notify_one();
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn set_accepting(&self, accepting: bool) {
        self.accepting.store(accepting, Ordering::Release);
    }

    /// Up to `n` messages from the front.
    pub(super) fn take(&self, n: usize) -> Vec<Publish> {
        let mut items = self.lock();
        let n = n.min(items.len());
        let out: Vec<Publish> = items.drain(..n).collect();
        self.publish_len(items.len());
        out
    }

    /// Puts `carried` (oldest first) back in front of everything queued, so a lost session
    /// costs no message and no reordering.
    pub(super) fn requeue_front(&self, carried: Vec<Publish>) {
        if carried.is_empty() {
            return;
        }
        let mut items = self.lock();
        for p in carried.into_iter().rev() {
            items.push_front(p);
        }
        self.publish_len(items.len());
    }

    /// Empties the queue (at shutdown), returning how many were waiting.
    pub(super) fn clear(&self) -> usize {
        let mut items = self.lock();
        let n = items.len();
        items.clear();
        self.publish_len(0);
        n
    }

    /// Resolves after a `push` (at once if one happened since the last wait).
    pub(super) async fn pushed(&self) {
        self.notify.notified().await;
    }

    fn publish_len(&self, len: usize) {
        self.stats
            .queued
            .store(u64::try_from(len).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// The publishes to send again from what a lost or ended session left in rumqttc's
/// `pending` list, oldest first, ready for [`Queue::requeue_front`].
///
/// rumqttc appends the unacknowledged in-flight messages (which carry a packet id) *after*
/// whatever was still waiting unsent (packet id 0, as the queue hands them over), though
/// they were sent earlier; a stable partition restores the order. Packet ids are cleared
/// so the next session numbers them afresh, and the agent's own presence messages are left
/// out: fresh ones follow every connect.
pub(super) fn carried(pending: VecDeque<Request>, topics: &Topics) -> Vec<Publish> {
    let (mut sent, unsent): (Vec<Publish>, Vec<Publish>) = pending
        .into_iter()
        .filter_map(|r| match r {
            Request::Publish(p) if p.topic != topics.status && p.topic != topics.heartbeat => {
                Some(p)
            }
            _ => None,
        })
        .partition(|p| p.pkid != 0);
    sent.extend(unsent);
    for p in &mut sent {
        p.pkid = 0;
        p.dup = false;
    }
    sent
}

#[cfg(test)]
mod tests {
    use rumqttc::{PingReq, QoS};

    use super::*;

    fn msg(n: u8) -> Publish {
        Publish::new(format!("t/{n}"), QoS::AtLeastOnce, vec![n])
    }

    #[test]
    fn bounded_and_gated() {
        let stats = Arc::new(Stats::default());
        let q = Queue::new(2, stats.clone());
        assert_eq!(q.push(msg(0)), Err(Rejected::Disconnected));
        q.set_accepting(true);
        assert_eq!(q.push(msg(1)), Ok(()));
        assert_eq!(q.push(msg(2)), Ok(()));
        assert_eq!(q.push(msg(3)), Err(Rejected::Full));
        assert_eq!(stats.queued.load(Ordering::Relaxed), 2);
        let first = q.take(1);
        assert_eq!(first[0].topic, "t/1");
        q.requeue_front(vec![msg(8), msg(9)]);
        let all: Vec<String> = q.take(10).into_iter().map(|p| p.topic).collect();
        assert_eq!(all, ["t/8", "t/9", "t/2"]);
        assert_eq!(stats.local_accepted.load(Ordering::Relaxed), 2);
        assert_eq!(stats.local_rejected_full.load(Ordering::Relaxed), 1);
        assert_eq!(stats.local_rejected_disconnected.load(Ordering::Relaxed), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn carried_over_in_send_order_without_presence() {
        let topics = Topics::new("devices", "d", "devices/d/");
        let mut inflight = msg(1);
        inflight.pkid = 7;
        let pending: VecDeque<Request> = [
            Request::Publish(msg(2)),
            Request::Publish(Publish::new(
                topics.heartbeat.clone(),
                QoS::AtMostOnce,
                "{}",
            )),
            Request::PingReq(PingReq),
            Request::Publish(inflight),
            Request::Publish(msg(3)),
        ]
        .into();
        let out = carried(pending, &topics);
        let topics: Vec<&str> = out.iter().map(|p| p.topic.as_str()).collect();
        assert_eq!(topics, ["t/1", "t/2", "t/3"]);
        assert!(out.iter().all(|p| p.pkid == 0));
    }
}
