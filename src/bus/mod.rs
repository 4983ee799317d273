//! The bus: what crosses instances. Room events to the other instances,
//! room interest (subscriptions), user routes, direct messages to users
//! elsewhere and the offline queues. One type, two implementations:
//! [`memory`] for the standalone mode (no other instance: only the offline
//! queues) and [`redis`] for cluster mode. Local delivery and registration
//! are the hub's ([`crate::hub`]); the bus calls the hub for what arrives
//! from elsewhere. The rest of the server calls only the methods here and
//! never learns which implementation runs.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::offline::Queued;
use crate::protocol::{Data, ServerEvent};
use std::borrow::Cow;

/// A message published to a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomMessage {
    /// Sender's user id, unscoped.
    pub from: String,
    pub data: Data,
    pub ts: u64,
    pub mid: String,
    /// Latest-wins key (see [`crate::delivery`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// An event for every member of a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RoomEvent {
    Message(RoomMessage),
    Joined { user: String, count: u64 },
    Left { user: String, count: u64 },
}

impl RoomEvent {
    /// The client-facing event, for the room's unscoped name.
    pub fn to_server_event<'a>(&'a self, room: &'a str) -> ServerEvent<'a> {
        let room = Cow::Borrowed(room);
        match self {
            RoomEvent::Message(m) => ServerEvent::Message {
                room,
                from: Cow::Borrowed(&m.from),
                data: Cow::Borrowed(&m.data),
                ts: m.ts,
                mid: Cow::Borrowed(&m.mid),
                key: m.key.as_deref().map(Cow::Borrowed),
            },
            RoomEvent::Joined { user, count } => ServerEvent::Joined {
                room,
                user: Cow::Borrowed(user),
                count: *count,
            },
            RoomEvent::Left { user, count } => ServerEvent::Left {
                room,
                user: Cow::Borrowed(user),
                count: *count,
            },
        }
    }
}

/// A direct message to one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectMessage {
    pub from: String,
    pub data: Data,
    pub ts: u64,
    pub mid: String,
}

impl DirectMessage {
    pub fn to_server_event(&self, queued: bool) -> ServerEvent<'_> {
        ServerEvent::Direct {
            from: Cow::Borrowed(&self.from),
            data: Cow::Borrowed(&self.data),
            ts: self.ts,
            mid: Cow::Borrowed(&self.mid),
            queued,
        }
    }
}

/// The result of a presence update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceChange {
    /// The room's distinct users, cluster-wide, afterwards.
    pub count: u64,
    /// The user appeared in (or vanished from) the room cluster-wide, so
    /// members must hear `joined` (or `left`). False when the user is still
    /// present through another instance.
    pub changed: bool,
}

/// Where a direct message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued to at least one live connection of the user.
    Delivered,
    /// The user had no connection; the message waits in the offline queue.
    Queued,
}

#[derive(Debug, Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// The cluster-mode arms box their futures: Redis operations are large
/// state machines, and every connection task embeds the future of each
/// bus call it makes, so unboxed they would double the memory of every
/// connection, in standalone mode too.
pub enum Bus {
    Memory(memory::MemoryBus),
    Redis(redis::RedisBus),
}

impl Bus {
    /// Starts (`on`) or stops routing a room's events to this instance.
    /// Called on the room's first local join and after its last local leave.
    pub async fn room_interest(&self, room: &Arc<str>, on: bool) -> Result<(), BusError> {
        match self {
            // Every room is local in standalone mode; nothing to route.
            Bus::Memory(_) => Ok(()),
            Bus::Redis(b) => Box::pin(b.room_interest(room, on)).await,
        }
    }

    /// Publishes a room event to the room's members on the other
    /// instances (the node has delivered it to local members already).
    pub async fn publish(&self, room: &Arc<str>, event: &RoomEvent) -> Result<(), BusError> {
        match self {
            Bus::Memory(_) => Ok(()),
            Bus::Redis(b) => Box::pin(b.publish(room, event)).await,
        }
    }

    /// Brings the cluster's presence record of (room, user) in line with
    /// the local registry, after a user's first local connection joined the
    /// room or the last one left it.
    pub async fn presence_update(
        &self,
        room: &Arc<str>,
        user: &Arc<str>,
    ) -> Result<PresenceChange, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.presence_update(room)),
            Bus::Redis(b) => Box::pin(b.presence_update(room, user)).await,
        }
    }

    /// The distinct users (unscoped) of a room cluster-wide.
    pub async fn presence(&self, room: &Arc<str>) -> Result<Vec<String>, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.presence(room)),
            Bus::Redis(b) => Box::pin(b.presence(room)).await,
        }
    }

    /// Sends a direct message to the user's connections on other instances,
    /// or to the user's offline queue when the user has none anywhere.
    /// `local`: the node delivered it to a local connection already.
    pub async fn send(
        &self,
        user: &Arc<str>,
        msg: DirectMessage,
        local: bool,
    ) -> Result<SendOutcome, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.send(user, msg, local)),
            Bus::Redis(b) => Box::pin(b.send(user, msg, local)).await,
        }
    }

    /// Routes the user's direct messages to this instance and reads the
    /// user's offline backlog, for a connection the hub began attaching.
    pub async fn attach(&self, user: &Arc<str>) -> Vec<Queued> {
        match self {
            Bus::Memory(b) => b.attach(user),
            Bus::Redis(b) => Box::pin(b.attach(user)).await,
        }
    }

    /// A connection of the user closed: drops the user's route to this
    /// instance when it was the last one here.
    pub async fn detach(&self, user: &Arc<str>) {
        match self {
            Bus::Memory(_) => {}
            Bus::Redis(b) => Box::pin(b.detach(user)).await,
        }
    }

    /// The offline messages of `user` up to sequence `upto` were written to
    /// a socket and flushed: remove them from the queue.
    pub async fn offline_written(&self, user: &Arc<str>, upto: u64) {
        match self {
            Bus::Memory(b) => b.offline_written(user, upto),
            Bus::Redis(b) => Box::pin(b.offline_written(user, upto)).await,
        }
    }

    /// Whether the bus can carry traffic now (for `/ready`).
    pub fn is_ready(&self) -> bool {
        match self {
            Bus::Memory(_) => true,
            Bus::Redis(b) => b.is_ready(),
        }
    }

    /// Periodic housekeeping (expired offline messages).
    pub fn sweep(&self) {
        match self {
            Bus::Memory(b) => b.sweep(),
            // Redis expires queues itself (PEXPIRE, and TTL checks on read).
            Bus::Redis(_) => {}
        }
    }

    /// Leaves the cluster on graceful shutdown, after the connections were
    /// closed: writes held messages, removes this instance's registration,
    /// routes and presence.
    pub async fn shutdown(&self) {
        match self {
            Bus::Memory(_) => {}
            Bus::Redis(b) => Box::pin(b.shutdown()).await,
        }
    }
}
