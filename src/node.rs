//! The node: one instance's shared state (config, hub and registry, bus,
//! auth) and the execution of client commands against it: local delivery
//! and registration through the hub, what crosses instances through the
//! bus. Connection tasks hold an `Arc<Node>`; nothing here touches a socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::bus::{Audience, Bus, BusError, DirectMessage, RoomEvent, RoomMessage, SendOutcome};
use crate::config::Config;
use crate::conn::handle::{ConnHandle, ConnId};
use crate::hub::Hub;
use crate::protocol::{Data, ErrorCode};
use crate::registry::{JoinError, Registry, unscoped};
use crate::slots::Slots;
pub use crate::slots::{ConnSlot, SlotRefusal};

/// A command's failure, as the client will see it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpError {
    pub code: ErrorCode,
    pub text: String,
}

impl OpError {
    fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        OpError {
            code,
            text: text.into(),
        }
    }
}

impl From<BusError> for OpError {
    fn from(e: BusError) -> Self {
        OpError::new(ErrorCode::Unavailable, e.to_string())
    }
}

/// The server time and message id a message was stamped with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub ts: u64,
    pub mid: String,
}

/// The answer to a presence query.
pub struct PresenceInfo {
    pub users: Vec<String>,
}

/// What a broadcast did on this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcasted {
    pub mid: String,
    pub ts: u64,
    /// Local connections it was offered to (other instances not counted).
    pub local: usize,
}

pub struct Node {
    pub config: Config,
    /// The local side: registry and local delivery.
    pub hub: Arc<Hub>,
    /// The hub's registry (the same one), for readers of local state.
    pub registry: Arc<Registry>,
    pub bus: Bus,
    pub verifier: Verifier,
    pub metrics: Option<PrometheusHandle>,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    pub started: Instant,
    /// The admin side: stats subscribers, kick reasons, admin drain.
    pub admin: crate::admin::Admin,
    /// False once draining; `/ready` also asks the bus.
    accepting: AtomicBool,
    next_conn: AtomicU64,
    /// Connection slots per instance and per user, taken at the upgrade
    /// (so the limits also cover handshakes in flight).
    slots: Arc<Slots>,
    /// Random per-process prefix of message ids plus a counter: unique
    /// across instances without coordination.
    mid_prefix: String,
    mid_seq: AtomicU64,
}

impl Node {
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        bus: Bus,
        verifier: Verifier,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        let mid_prefix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        hub.ordered.configure(&config.history);
        let slots = Arc::new(Slots::new(
            config.limits.max_connections,
            config.limits.max_conns_per_user,
            hub.registry.clone(),
        ));
        Node {
            config,
            registry: hub.registry.clone(),
            hub,
            bus,
            verifier,
            metrics,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            started: Instant::now(),
            admin: crate::admin::Admin::new(),
            accepting: AtomicBool::new(true),
            next_conn: AtomicU64::new(1),
            slots,
            mid_prefix,
            mid_seq: AtomicU64::new(0),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Relaxed)
    }

    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::Relaxed);
    }

    /// Accepts upgrades again after an admin drain (never once shutdown began).
    pub fn resume_accepting(&self) {
        if !self.shutdown.is_cancelled() {
            self.accepting.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_ready(&self) -> bool {
        self.is_accepting() && self.bus.is_ready()
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a connection slot for `user` (a scoped user key), refused at
    /// the per-user or the per-instance limit. The slot is released when
    /// the returned value drops.
    pub fn try_open(&self, user: Arc<str>) -> Result<ConnSlot, SlotRefusal> {
        self.slots.try_take(user)
    }

    /// A short random tag of this process, unique in the cluster in practice.
    pub fn process_tag(&self) -> &str {
        &self.mid_prefix
    }

    fn next_mid(&self) -> String {
        let n = self.mid_seq.fetch_add(1, Ordering::Relaxed);
        mid_text(&self.mid_prefix, n)
    }

    /// Joins a room: local maps first, then the bus's routing (rolled back
    /// when the bus refuses), then presence.
    pub async fn join(&self, conn: &Arc<ConnHandle>, room: &Arc<str>) -> Result<(), OpError> {
        let change = match self
            .registry
            .join(conn, room, self.config.limits.max_rooms_per_conn)
        {
            Ok(change) => change,
            Err(JoinError::AlreadyJoined) => return Ok(()),
            Err(JoinError::TooManyRooms) => {
                return Err(OpError::new(
                    ErrorCode::TooManyRooms,
                    format!(
                        "at most {} rooms per connection",
                        self.config.limits.max_rooms_per_conn
                    ),
                ));
            }
            Err(JoinError::UnknownConnection) => {
                return Err(OpError::new(
                    ErrorCode::Unavailable,
                    "connection is closing",
                ));
            }
        };
        if change.first_local
            && let Err(e) = self.bus.room_interest(room, true).await
        {
            self.registry.leave(conn, room);
            return Err(e.into());
        }
        metrics::gauge!("roomcast_rooms").set(self.registry.room_count() as f64);
        if change.first_of_user {
            let presence = self.bus.presence_update(room, &conn.user).await?;
            if presence.changed && presence.count <= self.config.limits.presence_events_max {
                let user = unscoped(&conn.user).to_owned();
                let count = presence.count;
                self.publish_event(room, RoomEvent::Joined { user, count })
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn leave(&self, conn: &Arc<ConnHandle>, room: &Arc<str>) -> Result<(), OpError> {
        let Some(change) = self.registry.leave(conn, room) else {
            return Err(OpError::new(ErrorCode::NotJoined, "not in this room"));
        };
        self.after_leave(&conn.user, room, change.last_of_user, change.last_local)
            .await
    }

    async fn after_leave(
        &self,
        user: &Arc<str>,
        room: &Arc<str>,
        last_of_user: bool,
        last_local: bool,
    ) -> Result<(), OpError> {
        let mut result = Ok(());
        if last_of_user {
            match self.bus.presence_update(room, user).await {
                Ok(presence)
                    if presence.changed
                        && presence.count < self.config.limits.presence_events_max =>
                {
                    let user = unscoped(user).to_owned();
                    let count = presence.count;
                    result = self
                        .publish_event(room, RoomEvent::Left { user, count })
                        .await
                        .map_err(OpError::from);
                }
                Ok(_) => {}
                Err(e) => result = Err(e.into()),
            }
        }
        if last_local {
            if !self.config.history.rules.is_empty() {
                self.hub.ordered.forget(&self.registry, room);
            }
            if let Err(e) = self.bus.room_interest(room, false).await {
                tracing::warn!(error = %e, "cannot drop room routing");
            }
            metrics::gauge!("roomcast_rooms").set(self.registry.room_count() as f64);
        }
        result
    }

    pub async fn publish(
        &self,
        conn: &Arc<ConnHandle>,
        room: &Arc<str>,
        data: Data,
    ) -> Result<(), OpError> {
        self.publish_keyed(conn, room, data, None).await
    }

    /// Publishes with an optional latest-wins key (see [`crate::delivery`]).
    pub async fn publish_keyed(
        &self,
        conn: &Arc<ConnHandle>,
        room: &Arc<str>,
        data: Data,
        key: Option<String>,
    ) -> Result<(), OpError> {
        if !self.registry.is_member(conn.id, room) {
            return Err(OpError::new(
                ErrorCode::NotJoined,
                "join the room before publishing to it",
            ));
        }
        self.publish_as(unscoped(&conn.user), room, data, key)
            .await?;
        Ok(())
    }

    /// Publishes to a room as `from` (a member's user id, or a reserved
    /// sender such as `$server`), without a membership check: one `ts` and
    /// one `mid` for every recipient on every instance.
    pub async fn publish_as(
        &self,
        from: &str,
        room: &Arc<str>,
        data: Data,
        key: Option<String>,
    ) -> Result<Stamp, OpError> {
        let msg = RoomMessage {
            from: from.to_owned(),
            data,
            ts: now_ms(),
            mid: self.next_mid(),
            offset: None,
            epoch: None,
            key,
        };
        self.admin.count_message(room);
        let stamp = Stamp {
            ts: msg.ts,
            mid: msg.mid.clone(),
        };
        if let Some(rule) = self.config.history.rule(room) {
            self.publish_history(room, &rule.clone(), msg).await?;
            return Ok(stamp);
        }
        self.publish_event(room, RoomEvent::Message(msg)).await?;
        Ok(stamp)
    }

    /// Delivers a room event to local members at once, then to the other
    /// instances' members through the bus.
    async fn publish_event(&self, room: &Arc<str>, event: RoomEvent) -> Result<(), BusError> {
        self.hub.deliver_room(room, &event);
        self.bus.publish(room, &event).await
    }

    pub async fn send(
        &self,
        conn: &Arc<ConnHandle>,
        to: &Arc<str>,
        data: Data,
    ) -> Result<SendOutcome, OpError> {
        let (outcome, _) = self.send_as(unscoped(&conn.user), to, data).await?;
        Ok(outcome)
    }

    /// Sends a direct message to a user (a scoped key) as `from`: local
    /// connections first, then the user's other instances, or the offline
    /// queue when the user has no connection anywhere.
    pub async fn send_as(
        &self,
        from: &str,
        to: &Arc<str>,
        data: Data,
    ) -> Result<(SendOutcome, Stamp), OpError> {
        let msg = DirectMessage {
            from: from.to_owned(),
            data,
            ts: now_ms(),
            mid: self.next_mid(),
        };
        let stamp = Stamp {
            ts: msg.ts,
            mid: msg.mid.clone(),
        };
        let local = self.hub.deliver_direct(to, &msg) > 0;
        Ok((self.bus.send(to, msg, local).await?, stamp))
    }

    /// Sends `data` to every connection of the audience on every instance
    /// (spec §5's global broadcast, or one tenant's). `from` is a reserved
    /// sender (`$admin`, `$server`) that no token can claim. One `ts` and
    /// one `mid` for every recipient. Returns the message id and how many
    /// local connections it was offered to.
    pub async fn broadcast(
        &self,
        audience: Audience,
        from: &str,
        data: Data,
    ) -> Result<Broadcasted, OpError> {
        let msg = DirectMessage {
            from: from.to_owned(),
            data,
            ts: now_ms(),
            mid: self.next_mid(),
        };
        let local = self.hub.deliver_broadcast(&audience, &msg);
        self.bus.broadcast(&audience, &msg).await?;
        Ok(Broadcasted {
            mid: msg.mid,
            ts: msg.ts,
            local,
        })
    }

    /// Registers a new connection and queues its user's offline backlog to
    /// it, ahead of any live direct message (the hub's attach gate).
    pub async fn attach(&self, conn: &Arc<ConnHandle>) {
        let attach = self.hub.begin_attach(conn);
        let backlog = self.bus.attach(&conn.user).await;
        self.hub.finish_attach(attach, &backlog);
    }

    pub async fn presence(&self, room: &Arc<str>) -> Result<PresenceInfo, OpError> {
        Ok(PresenceInfo {
            users: self.bus.presence(room).await?,
        })
    }

    /// Removes a closed connection everywhere and tells its rooms.
    pub async fn disconnect(&self, conn: &Arc<ConnHandle>) {
        self.admin.forget(conn.id);
        let rooms = self.hub.remove_conn(conn);
        self.bus.detach(&conn.user).await;
        for (room, change) in rooms {
            if let Err(e) = self
                .after_leave(&conn.user, &room, change.last_of_user, change.last_local)
                .await
            {
                tracing::warn!(code = e.code.as_str(), "leave on disconnect: {}", e.text);
            }
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A message id: `<prefix>-<n in hex>`, written without the formatting
/// machinery (once per message, on the publish path).
fn mid_text(prefix: &str, n: u64) -> String {
    let digits = (64 - (n | 1).leading_zeros()).div_ceil(4);
    let mut mid = String::with_capacity(prefix.len() + 1 + digits as usize);
    mid.push_str(prefix);
    mid.push('-');
    for i in (0..digits).rev() {
        let d = ((n >> (i * 4)) & 0xf) as u32;
        mid.push(char::from_digit(d, 16).unwrap_or('0'));
    }
    mid
}

#[cfg(test)]
mod mid_tests {
    #[test]
    fn mid_text_is_prefix_dash_lower_hex() {
        for n in [0u64, 1, 9, 10, 15, 16, 255, 256, 0xdead_beef, u64::MAX] {
            assert_eq!(super::mid_text("a1b2c3d4", n), format!("a1b2c3d4-{n:x}"));
        }
    }
}
