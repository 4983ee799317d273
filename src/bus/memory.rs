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

use super::idempotency::MemoryIdempotency;
use std::time::Duration;

use super::{DirectMessage, PresenceChange, RoomMessage, SendOutcome};
use crate::history::memory::MemoryHistory;
use crate::history::order::Fill;
use crate::history::{HistoryRead, HistoryRule, Query};
use crate::hub::Hub;
use crate::offline::{MemoryOffline, Queued};

pub struct MemoryBus {
    hub: Arc<Hub>,
    offline: MemoryOffline,
    /// The server API's idempotency records.
    pub(crate) idempotency: MemoryIdempotency,
    history: MemoryHistory,
}

impl MemoryBus {
    pub fn new(hub: Arc<Hub>, offline: MemoryOffline) -> Self {
        MemoryBus {
            hub,
            offline,
            idempotency: MemoryIdempotency::default(),
            history: MemoryHistory::default(),
        }
    }

    /// Appends to the room's history and delivers to the local members,
    /// in offset order (both under the room's history lock).
    pub fn history_publish(
        &self,
        room: &Arc<str>,
        rule: &HistoryRule,
        keep: Duration,
        msg: RoomMessage,
    ) {
        let mut fill = None;
        self.history.append(room, rule, keep, msg, |m| {
            fill = self.hub.ordered.offer(&self.hub.registry, room, m);
        });
        if let Some(fill) = fill {
            self.history_fill(fill);
        }
    }

    pub fn history_read(
        &self,
        room: &Arc<str>,
        rule: &HistoryRule,
        keep: Duration,
        query: Query,
    ) -> HistoryRead {
        self.history.read(room, rule, keep, query)
    }

    /// Offsets are assigned and delivered under one lock here, so a gap
    /// cannot open; should one, it is filled from memory at once.
    pub fn history_fill(&self, fill: Fill) {
        let mut next = Some(fill);
        while let Some(f) = next.take() {
            let read = self
                .history
                .read(&f.room, &f.rule, f.keep, Query::After(f.after));
            next = self
                .hub
                .ordered
                .fill_done(&self.hub.registry, &f.room, Some(read));
        }
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
        self.idempotency.sweep();
        self.history.sweep();
    }
}
