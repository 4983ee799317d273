//! The in-process bus of the standalone mode. There is no other instance,
//! so publishing carries nothing; what it keeps is the offline queues.
//!
//! Ordering invariant: `send` re-checks the user's local connections (the
//! hub, attach gate included) and queues under the user's offline entry
//! lock, and `attach` reads the backlog under the same lock after the hub
//! has begun the attach. So a message is either in the backlog a new
//! connection reads, or buffered by the gate and delivered after it.

use std::collections::VecDeque;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;

use super::{DirectMessage, PresenceChange, SendOutcome};
use crate::hub::Hub;
use crate::offline::{MemoryOffline, Queued};

pub struct MemoryBus {
    hub: Arc<Hub>,
    offline: MemoryOffline,
}

impl MemoryBus {
    pub fn new(hub: Arc<Hub>, offline: MemoryOffline) -> Self {
        MemoryBus { hub, offline }
    }

    /// Every member is local: the count is the local one, and every local
    /// change is a change.
    pub fn presence_update(&self, room: &str) -> PresenceChange {
        PresenceChange {
            count: self.hub.room_user_count(room),
            changed: true,
        }
    }

    pub fn presence(&self, room: &str) -> Vec<String> {
        self.hub.room_users(room)
    }

    /// Queues a direct message that no local connection took, unless a
    /// connection of the user appeared since (then it gets it).
    pub fn send(&self, user: &Arc<str>, msg: DirectMessage, local: bool) -> SendOutcome {
        if local {
            return SendOutcome::Delivered;
        }
        match self.offline.queues.entry(user.clone()) {
            Entry::Occupied(mut e) => {
                if self.hub.deliver_direct(user, &msg) > 0 {
                    return SendOutcome::Delivered;
                }
                self.offline.push_into(e.get_mut(), msg);
            }
            Entry::Vacant(v) => {
                if self.hub.deliver_direct(user, &msg) > 0 {
                    return SendOutcome::Delivered;
                }
                let mut q = VecDeque::new();
                self.offline.push_into(&mut q, msg);
                if !q.is_empty() {
                    v.insert(q);
                }
            }
        }
        SendOutcome::Queued
    }

    /// The user's backlog, for a connection the hub began attaching.
    pub fn attach(&self, user: &Arc<str>) -> Vec<Queued> {
        match self.offline.queues.entry(user.clone()) {
            Entry::Occupied(mut e) => {
                self.offline.expire(e.get_mut());
                e.get().iter().cloned().collect()
            }
            Entry::Vacant(_) => Vec::new(),
        }
    }

    pub fn offline_written(&self, user: &Arc<str>, upto: u64) {
        self.offline.ack(user, upto);
    }

    /// Messages waiting in every offline queue (admin figures).
    pub fn offline_depth(&self) -> u64 {
        self.offline.queues.iter().map(|q| q.len() as u64).sum()
    }

    pub fn sweep(&self) {
        self.offline.sweep();
    }
}
