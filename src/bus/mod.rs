//! The bus: what crosses instances. Room events to the other instances,
//! room interest (subscriptions), user routes, direct messages to users
//! elsewhere and the offline queues. One type, two implementations:
//! [`memory`] for the standalone mode (no other instance: only the offline
//! queues) and [`redis`] for cluster mode. Local delivery and registration
//! are the hub's ([`crate::hub`]); the bus calls the hub for what arrives
//! from elsewhere. The rest of the server calls only the methods here and
//! never learns which implementation runs.

pub mod idempotency;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use idempotency::IdemClaim;

use crate::history::order::Fill;
use crate::history::{HistoryRead, HistoryRule, Query};
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
    /// Rooms with history: the message's offset and the room's epoch
    /// (on Redis channels the publish script writes them; `wire.rs`).
    #[serde(skip)]
    pub offset: Option<u64>,
    #[serde(skip)]
    pub epoch: Option<Arc<str>>,
}

impl RoomMessage {
    /// The `message` event of this message in `room` (unscoped name).
    pub fn to_server_event<'a>(&'a self, room: &'a str) -> ServerEvent<'a> {
        ServerEvent::Message {
            room: Cow::Borrowed(room),
            from: Cow::Borrowed(&self.from),
            data: Cow::Borrowed(&self.data),
            ts: self.ts,
            mid: Cow::Borrowed(&self.mid),
            offset: self.offset,
            epoch: self.epoch.as_deref().map(Cow::Borrowed),
            key: self.key.as_deref().map(Cow::Borrowed),
        }
    }
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
        match self {
            RoomEvent::Message(m) => m.to_server_event(room),
            RoomEvent::Joined { user, count } => ServerEvent::Joined {
                room: Cow::Borrowed(room),
                user: Cow::Borrowed(user),
                count: *count,
            },
            RoomEvent::Left { user, count } => ServerEvent::Left {
                room: Cow::Borrowed(room),
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

impl DirectMessage {
    /// The same message as a broadcast event.
    pub fn to_broadcast_event(&self) -> ServerEvent<'_> {
        ServerEvent::Broadcast {
            from: Cow::Borrowed(&self.from),
            data: Cow::Borrowed(&self.data),
            ts: self.ts,
            mid: Cow::Borrowed(&self.mid),
        }
    }
}

/// Who receives a broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// Every connection of the cluster, whatever its tenant.
    All,
    /// Every connection of one tenant (`""` is the default tenant).
    Tenant(Arc<str>),
}

impl Audience {
    /// Whether a connection of `user` (a scoped user key) is in it.
    pub fn includes(&self, user: &str) -> bool {
        match self {
            Audience::All => true,
            Audience::Tenant(t) => user
                .split_once('/')
                .is_some_and(|(tenant, _)| tenant == &**t),
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

    /// Publishes a message of a room with history: the store assigns its
    /// offset (and the epoch), keeps it, and it reaches the local members
    /// (in offset order, through the hub's order) and the other instances.
    /// Without the store (Redis unreachable) nothing is published.
    pub async fn history_publish(
        &self,
        room: &Arc<str>,
        rule: &HistoryRule,
        keep: Duration,
        msg: RoomMessage,
    ) -> Result<(), BusError> {
        match self {
            Bus::Memory(b) => {
                b.history_publish(room, rule, keep, msg);
                Ok(())
            }
            Bus::Redis(b) => Box::pin(b.history_publish(room, rule, keep, msg)).await,
        }
    }

    /// Reads a history room's position and the messages `query` asks for.
    pub async fn history_read(
        &self,
        room: &Arc<str>,
        rule: &HistoryRule,
        keep: Duration,
        query: Query,
    ) -> Result<HistoryRead, BusError> {
        match self {
            Bus::Memory(b) => Ok(b.history_read(room, rule, keep, query)),
            Bus::Redis(b) => Box::pin(b.history_read(room, rule, keep, query)).await,
        }
    }

    /// Reads what a history room's local order misses and hands it back.
    pub fn history_fill(&self, fill: Fill) {
        match self {
            Bus::Memory(b) => b.history_fill(fill),
            Bus::Redis(b) => b.history_fill(fill),
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

    /// Sends a broadcast to the other instances (the node has delivered it
    /// to local connections already).
    pub async fn broadcast(
        &self,
        audience: &Audience,
        msg: &DirectMessage,
    ) -> Result<(), BusError> {
        match self {
            Bus::Memory(_) => Ok(()),
            Bus::Redis(b) => Box::pin(b.broadcast(audience, msg)).await,
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

    /// Claims a server API idempotency key (scoped by the caller) for
    /// `window`, or finds the record of the request that claimed it.
    pub async fn idem_claim(
        &self,
        key: &str,
        fingerprint: &str,
        window: std::time::Duration,
    ) -> Result<IdemClaim, BusError> {
        match self {
            Bus::Memory(b) => b
                .idempotency
                .claim(key, fingerprint, window)
                .ok_or_else(|| BusError::Unavailable("idempotency store full".into())),
            Bus::Redis(b) => Box::pin(b.idem_claim(key, fingerprint, window)).await,
        }
    }

    /// Records the answer of the request that claimed `key`.
    pub async fn idem_finish(
        &self,
        key: &str,
        fingerprint: &str,
        answer: &str,
        window: std::time::Duration,
    ) -> Result<(), BusError> {
        match self {
            Bus::Memory(b) => {
                b.idempotency.finish(key, fingerprint, answer, window);
                Ok(())
            }
            Bus::Redis(b) => Box::pin(b.idem_finish(key, fingerprint, answer, window)).await,
        }
    }

    /// Forgets a claim whose request delivered nothing (it may be retried).
    pub async fn idem_release(&self, key: &str) {
        match self {
            Bus::Memory(b) => b.idempotency.release(key),
            Bus::Redis(b) => Box::pin(b.idem_release(key)).await,
        }
    }

    /// Whether the bus can carry traffic now (for `/ready`).
    pub fn is_ready(&self) -> bool {
        match self {
            Bus::Memory(_) => true,
            Bus::Redis(b) => b.is_ready(),
        }
    }

    /// Where admin commands from other instances go (cluster mode).
    pub fn admin_sink(&self, tx: tokio::sync::mpsc::Sender<crate::admin::Control>) {
        if let Bus::Redis(b) = self {
            b.admin_sink(tx);
        }
    }

    /// Refreshes "an admin watches" when `local` (this instance has a
    /// stats subscriber); whether anyone in the cluster watches.
    pub async fn admin_watch(&self, local: bool, ttl: std::time::Duration) -> bool {
        match self {
            Bus::Memory(_) => local,
            Bus::Redis(b) => Box::pin(b.admin_watch(local, ttl)).await,
        }
    }

    /// Shares this instance's admin figures with the watching instances.
    pub async fn admin_share(&self, stats: String, ttl: std::time::Duration) {
        if let Bus::Redis(b) = self {
            Box::pin(b.admin_share(stats, ttl)).await;
        }
    }

    /// The admin figures every other live instance shared (JSON texts).
    pub async fn admin_collect(&self) -> Vec<String> {
        match self {
            Bus::Memory(_) => Vec::new(),
            Bus::Redis(b) => Box::pin(b.admin_collect()).await,
        }
    }

    /// The heartbeat records of the live instances (cluster mode; `None`
    /// standalone).
    pub async fn heartbeats(&self) -> Option<Result<Vec<String>, BusError>> {
        match self {
            Bus::Memory(_) => None,
            Bus::Redis(b) => Some(Box::pin(b.heartbeats()).await),
        }
    }

    /// Whether another instance `id` is alive (always false standalone).
    pub async fn instance_live(&self, id: &str) -> Result<bool, BusError> {
        match self {
            Bus::Memory(_) => Ok(false),
            Bus::Redis(b) => Box::pin(b.instance_live(id)).await,
        }
    }

    /// Sends an admin command to instance `target`, or to every instance;
    /// how many received it (0 standalone).
    pub async fn admin_publish(
        &self,
        target: Option<&str>,
        control: &crate::admin::Control,
    ) -> Result<u64, BusError> {
        match self {
            Bus::Memory(_) => Ok(0),
            Bus::Redis(b) => Box::pin(b.admin_publish(target, control)).await,
        }
    }

    /// One page of the cluster's rooms (cluster mode; `None` standalone,
    /// where the registry holds every room).
    pub async fn room_page(
        &self,
        prefix: &str,
        cursor: &str,
        limit: usize,
    ) -> Option<Result<(Vec<(String, u64)>, String), BusError>> {
        match self {
            Bus::Memory(_) => None,
            Bus::Redis(b) => Some(Box::pin(b.room_page(prefix, cursor, limit)).await),
        }
    }

    /// A room's cluster-wide user count.
    pub async fn room_user_count(&self, room: &str) -> Result<Option<u64>, BusError> {
        match self {
            Bus::Memory(_) => Ok(None),
            Bus::Redis(b) => Box::pin(b.room_user_count(room)).await.map(Some),
        }
    }

    /// Messages waiting in offline queues, when this instance holds them
    /// (standalone; in cluster mode they live in Redis).
    pub fn offline_depth(&self) -> Option<u64> {
        match self {
            Bus::Memory(b) => Some(b.offline_depth()),
            Bus::Redis(_) => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_audience_holds_only_its_tenant() {
        let acme = Audience::Tenant("acme".into());
        assert!(acme.includes("acme/bob"));
        assert!(!acme.includes("other/bob") && !acme.includes("/bob"));
        assert!(!acme.includes("acme-2/bob") && !acme.includes("acm/e"));
        let default = Audience::Tenant("".into());
        assert!(default.includes("/bob") && !default.includes("acme/bob"));
        assert!(Audience::All.includes("acme/bob") && Audience::All.includes("/bob"));
    }
}
