//! The hub: this instance's local side. It owns the registry, delivers
//! events to local connections, and orders a new connection's offline
//! backlog before the live direct messages that arrive while it is read.
//!
//! The node calls it for what its own connections do; the bus calls it for
//! what arrives from other instances (room events, direct messages) and to
//! read the local state it mirrors in Redis. The bus itself carries only
//! what crosses instances.
//!
//! The attach gate: registering a connection and reading its user's
//! backlog are two steps (the backlog may live in Redis). While a read is
//! in flight, live direct messages for the connections waiting on it are
//! buffered; `finish_attach` registers the connection, queues the backlog,
//! then the buffered messages, under the user's gate lock, so nothing live
//! slips in before the backlog.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::bus::{Audience, DirectMessage, RoomEvent};
use crate::conn::handle::{ConnHandle, ConnId, Outbound};
use crate::delivery::WriteDelays;
use crate::fanout::{self, Lanes};
use crate::history::order::Ordered;
use crate::offline::Queued;
use crate::presence_diff::PresenceDiffs;
use crate::protocol::ServerEvent;
use crate::registry::{LeaveChange, Registry};

/// A backlog read in flight for some connections of one user.
struct Pending {
    token: u64,
    targets: Vec<Arc<ConnHandle>>,
    /// The targets are new connections, registered on completion.
    register: bool,
    /// Live messages that arrived meanwhile, in order.
    buffered: Vec<DirectMessage>,
}

/// A backlog read begun with [`Hub::begin_attach`]; hand it back to
/// [`Hub::finish_attach`].
#[must_use]
pub struct AttachToken {
    user: Arc<str>,
    token: u64,
}

pub struct Hub {
    pub registry: Arc<Registry>,
    lanes: Arc<Lanes>,
    /// Per user, the backlog reads in flight. Lock order: this map's shard
    /// lock, then the registry's (never the reverse).
    pending: DashMap<Arc<str>, Vec<Pending>>,
    next_token: AtomicU64,
    /// The local order of history rooms (offsets, joins, gaps).
    pub ordered: Ordered,
    /// With a presence interval: the joins and leaves gathered per room
    /// (see [`crate::presence_diff`]); `None` sends `joined`/`left` at once.
    presence: Option<(Duration, PresenceDiffs)>,
}

impl Hub {
    pub fn new(registry: Arc<Registry>) -> Hub {
        Hub::with_delays(registry, WriteDelays::default())
    }

    /// A hub whose room messages wait in members' queues as `delays` says.
    pub fn with_delays(registry: Arc<Registry>, delays: WriteDelays) -> Hub {
        Hub {
            registry,
            lanes: Arc::new(Lanes::with_delays(delays)),
            pending: DashMap::new(),
            next_token: AtomicU64::new(0),
            ordered: Ordered::default(),
            presence: None,
        }
    }

    /// Gathers joins and leaves per room over `interval` into one
    /// `presence_diff` (zero: `joined`/`left` at once). Run
    /// [`Hub::presence_flusher`] when it is set.
    pub fn with_presence_interval(mut self, interval: Duration) -> Hub {
        self.presence = (!interval.is_zero()).then(|| (interval, PresenceDiffs::default()));
        self
    }

    /// Sends the gathered presence diffs every interval; returns at once
    /// without a presence interval.
    pub async fn presence_flusher(self: Arc<Self>) {
        let Some((every, _)) = &self.presence else {
            return;
        };
        let mut tick = tokio::time::interval(*every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush_presence();
        }
    }

    /// Sends each room's gathered joins and leaves to its local members.
    pub fn flush_presence(&self) {
        let Some((_, diffs)) = &self.presence else {
            return;
        };
        for (room, diff) in diffs.take() {
            let (joins, leaves) = (diff.joins(), diff.leaves());
            if joins.is_empty() && leaves.is_empty() {
                continue;
            }
            let Some(members) = self.registry.room_members(&room) else {
                continue;
            };
            let event = ServerEvent::PresenceDiff {
                room: Cow::Borrowed(crate::registry::unscoped(&room)),
                joins: joins.into_iter().map(Cow::Borrowed).collect(),
                leaves: leaves.into_iter().map(Cow::Borrowed).collect(),
                count: diff.count,
            };
            fanout::deliver_members(&members, &event);
        }
    }

    /// Delivers a room event to the room's local members (joins and
    /// leaves are gathered instead while there is a presence interval).
    pub fn deliver_room(&self, room: &str, event: &RoomEvent) {
        if let Some((_, diffs)) = &self.presence {
            match event {
                RoomEvent::Joined { user, count } => return diffs.record(room, user, true, *count),
                RoomEvent::Left { user, count } => return diffs.record(room, user, false, *count),
                RoomEvent::Message(_) => {}
            }
        }
        self.lanes.deliver_room(&self.registry, room, event);
    }

    /// Delivers a direct message to the user's local connections (those
    /// waiting for their backlog get it after the backlog); returns how
    /// many connections the user has here (0: none).
    pub fn deliver_direct(&self, user: &str, msg: &DirectMessage) -> usize {
        let event = msg.to_server_event(false);
        let Some(mut pending) = self.pending.get_mut(user) else {
            let conns = self.registry.user_conns(user);
            fanout::deliver_conns(&conns, &event);
            return conns.len();
        };
        let mut waiting: Vec<ConnId> = Vec::new();
        for p in pending.iter_mut() {
            p.buffered.push(msg.clone());
            waiting.extend(p.targets.iter().map(|c| c.id));
        }
        // Still under the gate lock: a connection cannot finish its attach
        // (and get this message a second time) meanwhile.
        let free: Vec<_> = self
            .registry
            .user_conns(user)
            .into_iter()
            .filter(|c| !waiting.contains(&c.id))
            .collect();
        fanout::deliver_conns(&free, &event);
        free.len() + waiting.len()
    }

    /// Delivers a broadcast to every local connection in the audience, from
    /// a task of its own that yields between chunks: tens of thousands of
    /// pushes must not hold up the caller (a request or the bus's receive
    /// loop). Returns how many connections it will be offered to.
    pub fn deliver_broadcast(&self, audience: &Audience, msg: &DirectMessage) -> usize {
        let conns: Vec<Arc<ConnHandle>> = self
            .registry
            .all_conns()
            .into_iter()
            .filter(|c| audience.includes(&c.user))
            .collect();
        let count = conns.len();
        if count == 0 {
            return 0;
        }
        let msg = msg.clone();
        tokio::spawn(async move {
            let event = msg.to_broadcast_event();
            let mut frames = fanout::Frames::new(&event);
            for chunk in conns.chunks(fanout::LANE_CHUNK) {
                crate::metrics::delivered(frames.send_to(chunk));
                tokio::task::yield_now().await;
            }
        });
        count
    }

    /// Starts attaching a new connection: live direct messages for it are
    /// buffered until [`Hub::finish_attach`].
    pub fn begin_attach(&self, conn: &Arc<ConnHandle>) -> AttachToken {
        self.begin(&conn.user, vec![conn.clone()], true)
    }

    /// Starts delivering a backlog to registered connections of a user (the
    /// resync after Redis came back).
    pub fn begin_redeliver(&self, user: &Arc<str>, conns: Vec<Arc<ConnHandle>>) -> AttachToken {
        self.begin(user, conns, false)
    }

    fn begin(&self, user: &Arc<str>, targets: Vec<Arc<ConnHandle>>, register: bool) -> AttachToken {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.pending.entry(user.clone()).or_default().push(Pending {
            token,
            targets,
            register,
            buffered: Vec::new(),
        });
        AttachToken {
            user: user.clone(),
            token,
        }
    }

    /// Ends a backlog read: registers new connections, then queues the
    /// backlog and the buffered live messages to the targets, all under the
    /// user's gate lock.
    pub fn finish_attach(&self, attach: AttachToken, backlog: &[Queued]) {
        let Entry::Occupied(mut e) = self.pending.entry(attach.user) else {
            return;
        };
        let Some(pos) = e.get().iter().position(|p| p.token == attach.token) else {
            return;
        };
        let done = e.get_mut().swap_remove(pos);
        if done.register {
            for conn in &done.targets {
                self.registry.add_conn(conn);
            }
        }
        for conn in &done.targets {
            queue_backlog(conn, backlog);
        }
        for msg in &done.buffered {
            fanout::deliver_conns(&done.targets, &msg.to_server_event(false));
        }
        if e.get().is_empty() {
            e.remove();
        }
    }

    /// Removes a closed connection from the registry; returns each room it
    /// was in and what its departure changed there.
    pub fn remove_conn(&self, conn: &ConnHandle) -> Vec<(Arc<str>, LeaveChange)> {
        self.registry.remove_conn(conn)
    }

    /// Whether the user has a connection here or one being attached.
    pub fn holds_user(&self, user: &str) -> bool {
        self.registry.user_conn_count(user) > 0 || self.pending.contains_key(user)
    }

    pub fn has_room(&self, room: &str) -> bool {
        self.registry.has_room(room)
    }

    pub fn has_member(&self, room: &str, user: &str) -> bool {
        self.registry.has_member(room, user)
    }

    pub fn room_user_count(&self, room: &str) -> u64 {
        self.registry.room_user_count(room)
    }

    /// Distinct local users of a room, unscoped.
    pub fn room_users(&self, room: &str) -> Vec<String> {
        self.registry.room_users(room)
    }

    /// Every local room with its distinct local users.
    pub fn memberships(&self) -> HashMap<Arc<str>, HashSet<Arc<str>>> {
        self.registry.memberships()
    }

    /// Every local user with its registered connections.
    pub fn users(&self) -> Vec<(Arc<str>, Vec<Arc<ConnHandle>>)> {
        self.registry.users()
    }

    pub fn conn_count(&self) -> usize {
        self.registry.conn_count()
    }

    pub fn room_count(&self) -> usize {
        self.registry.room_count()
    }
}

/// Queues a user's backlog to one connection as a single outbound item, so
/// it cannot be split by a full queue; the socket reports it written and
/// the bus acknowledges it then.
fn queue_backlog(conn: &ConnHandle, backlog: &[Queued]) {
    let mut upto = 0;
    let frames: Vec<_> = backlog
        .iter()
        .filter_map(|q| {
            upto = q.seq;
            fanout::encode(conn.codec, &q.msg.to_server_event(true))
        })
        .collect();
    if !frames.is_empty() {
        let _ = conn.push(Outbound::Queued { frames, upto });
    }
}
