//! The in-memory offline queue of the standalone mode: per user, ordered,
//! capped in count, each message with a time to live. Entries leave the
//! queue only when the writer confirms they were flushed to a socket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::bus::DirectMessage;
use crate::config::OfflineConfig;
use crate::metrics;

#[derive(Debug, Clone)]
pub struct Queued {
    /// Increasing per store; acknowledgements remove everything up to one.
    pub seq: u64,
    pub at: Instant,
    pub msg: DirectMessage,
}

pub struct MemoryOffline {
    /// Per user queue. The shard lock of a user's entry is also what orders
    /// "queue or deliver" against "connect and drain" (see `bus::memory`).
    pub(crate) queues: DashMap<Arc<str>, VecDeque<Queued>>,
    seq: AtomicU64,
    cfg: OfflineConfig,
}

impl MemoryOffline {
    pub fn new(cfg: OfflineConfig) -> Self {
        MemoryOffline {
            queues: DashMap::new(),
            seq: AtomicU64::new(0),
            cfg,
        }
    }

    /// Appends to a queue, dropping the oldest beyond the cap.
    pub fn push_into(&self, queue: &mut VecDeque<Queued>, msg: DirectMessage) {
        if self.cfg.max_per_user == 0 {
            metrics::offline_dropped("cap");
            return;
        }
        self.expire(queue);
        while queue.len() >= self.cfg.max_per_user {
            queue.pop_front();
            metrics::offline_dropped("cap");
        }
        queue.push_back(Queued {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at: Instant::now(),
            msg,
        });
        metrics::offline_queued();
    }

    /// Drops expired messages from the front (the queue is in time order).
    pub fn expire(&self, queue: &mut VecDeque<Queued>) {
        while queue.front().is_some_and(|q| q.at.elapsed() > self.cfg.ttl) {
            queue.pop_front();
            metrics::offline_dropped("ttl");
        }
    }

    pub fn ack(&self, user: &Arc<str>, upto: u64) {
        if let Entry::Occupied(mut e) = self.queues.entry(user.clone()) {
            let q = e.get_mut();
            let mut n = 0;
            while q.front().is_some_and(|m| m.seq <= upto) {
                q.pop_front();
                n += 1;
            }
            metrics::offline_delivered(n);
            if q.is_empty() {
                e.remove();
            }
        }
    }

    pub fn sweep(&self) {
        self.queues.retain(|_, q| {
            self.expire(q);
            !q.is_empty()
        });
    }
}
