//! The in-process bus of the standalone mode: publishing is local fan-out
//! and offline queues live in memory.
//!
//! Ordering invariant: `send` (queue or deliver) and `attach` (register the
//! connection, then drain the backlog into its queue) both run under the
//! offline entry's shard lock of that user, so a message either is in the
//! backlog the new connection drains or is delivered after it, never before.

use std::collections::VecDeque;
use std::sync::Arc;

use dashmap::mapref::entry::Entry;

use super::{DirectMessage, RoomEvent, SendOutcome};
use crate::conn::handle::{ConnHandle, Outbound};
use crate::fanout;
use crate::offline::{MemoryOffline, Queued};
use crate::registry::{LeaveChange, Registry, unscoped};

pub struct MemoryBus {
    registry: Arc<Registry>,
    offline: MemoryOffline,
}

impl MemoryBus {
    pub fn new(registry: Arc<Registry>, offline: MemoryOffline) -> Self {
        MemoryBus { registry, offline }
    }

    pub fn room_interest(&self, _room: &Arc<str>, _on: bool) -> Result<(), super::BusError> {
        // Every room is local in standalone mode; nothing to route.
        Ok(())
    }

    pub fn publish(&self, room: &Arc<str>, event: RoomEvent) -> Result<(), super::BusError> {
        fanout::deliver_room(&self.registry, room, &event.to_server_event(unscoped(room)));
        Ok(())
    }

    pub fn presence_count(&self, room: &str) -> u64 {
        self.registry
            .with_room(room, |m| m.users.len() as u64)
            .unwrap_or(0)
    }

    pub fn presence(&self, room: &str) -> Vec<String> {
        self.registry.room_users(room)
    }

    pub fn send(&self, user: &Arc<str>, msg: DirectMessage) -> SendOutcome {
        let event = msg.to_server_event(false);
        match self.offline.queues.entry(user.clone()) {
            Entry::Occupied(mut e) => {
                if fanout::deliver_user(&self.registry, user, &event) > 0 {
                    return SendOutcome::Delivered;
                }
                self.offline.push_into(e.get_mut(), msg);
            }
            Entry::Vacant(v) => {
                if fanout::deliver_user(&self.registry, user, &event) > 0 {
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

    pub fn attach(&self, conn: &Arc<ConnHandle>) {
        match self.offline.queues.entry(conn.user.clone()) {
            Entry::Occupied(mut e) => {
                self.registry.add_conn(conn);
                self.offline.expire(e.get_mut());
                queue_backlog(conn, e.get().iter());
            }
            Entry::Vacant(_) => self.registry.add_conn(conn),
        }
    }

    pub fn detach(&self, conn: &Arc<ConnHandle>) -> Vec<(Arc<str>, LeaveChange)> {
        self.registry.remove_conn(conn)
    }

    pub fn offline_written(&self, user: &Arc<str>, upto: u64) {
        self.offline.ack(user, upto);
    }

    pub fn sweep(&self) {
        self.offline.sweep();
    }
}

/// Queues a user's backlog to one connection as a single outbound item, so
/// it cannot be split by a full queue; the writer acknowledges it after the
/// flush.
pub fn queue_backlog<'q>(conn: &ConnHandle, backlog: impl Iterator<Item = &'q Queued>) {
    let mut upto = 0;
    let frames: Vec<_> = backlog
        .filter_map(|q| {
            upto = q.seq;
            fanout::encode(conn.codec, &q.msg.to_server_event(true))
        })
        .collect();
    if !frames.is_empty() {
        let _ = conn.push(Outbound::Queued { frames, upto });
    }
}
