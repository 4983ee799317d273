//! Local delivery: an event is encoded at most once per codec and the same
//! bytes are queued to every recipient. No push waits and none runs under
//! a registry lock; a full queue is the slow consumer's problem, never the
//! room's. Big rooms are delivered by lanes so they do not hold up others.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::bus::RoomEvent;
use crate::conn::handle::{ConnHandle, Delivery, Outbound};
use crate::delivery::WriteDelays;
use crate::metrics;
use crate::protocol::{Codec, ServerEvent};
use crate::registry::{Registry, unscoped};
use crate::ws;

/// Wraps an encoded payload in a WebSocket frame of the codec's type: text
/// for JSON, binary for MessagePack. The frame is complete, header
/// included, so every recipient gets the very same bytes.
pub fn to_frame(codec: Codec, payload: &[u8]) -> Bytes {
    ws::frame(opcode(codec), payload)
}

/// The frame opcode of a codec's messages.
pub fn opcode(codec: Codec) -> u8 {
    match codec {
        Codec::Json => ws::OP_TEXT,
        Codec::MsgPack => ws::OP_BINARY,
    }
}

/// Encodes one event for one codec into a frame.
pub fn encode(codec: Codec, event: &ServerEvent<'_>) -> Option<Bytes> {
    match codec.encode(event) {
        Ok(bytes) => {
            metrics::encoded(codec);
            Some(to_frame(codec, &bytes))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode event");
            None
        }
    }
}

/// The frames of one event, encoded lazily, once per codec.
pub struct Frames<'e, 'a> {
    event: &'e ServerEvent<'a>,
    cache: [Option<Option<Bytes>>; 2],
}

impl<'e, 'a> Frames<'e, 'a> {
    pub fn new(event: &'e ServerEvent<'a>) -> Self {
        Frames {
            event,
            cache: [None, None],
        }
    }

    pub fn get(&mut self, codec: Codec) -> Option<Bytes> {
        let event = self.event;
        self.cache[codec.index()]
            .get_or_insert_with(|| encode(codec, event))
            .clone()
    }

    /// How many encodings were made (at most one per codec).
    pub fn encodes(&self) -> usize {
        self.cache.iter().filter(|c| c.is_some()).count()
    }

    /// Queues the event to each connection; returns how many took it.
    pub fn send_to<'c>(&mut self, conns: impl IntoIterator<Item = &'c Arc<ConnHandle>>) -> usize {
        let mut sent = 0;
        for conn in conns {
            if let Some(frame) = self.get(conn.codec)
                && conn.push(Outbound::Frame(frame)).is_ok()
            {
                sent += 1;
            }
        }
        sent
    }

    /// Queues a room event to each connection as `delivery` says (write
    /// delay, latest-wins key); returns how many took it.
    pub fn send_room<'c>(
        &mut self,
        conns: impl IntoIterator<Item = &'c Arc<ConnHandle>>,
        delivery: &Delivery,
    ) -> usize {
        let mut sent = 0;
        for conn in conns {
            if let Some(frame) = self.get(conn.codec)
                && conn.push_room(frame, delivery).is_ok()
            {
                sent += 1;
            }
        }
        sent
    }
}

/// Rooms with more local members than this are delivered by a lane task
/// (below) instead of by the caller.
pub const LANE_MIN_MEMBERS: usize = 256;

/// Members pushed between two yields of a lane task: about a millisecond of
/// direct writes, so other rooms' deliveries and requests run in between.
pub const LANE_CHUNK: usize = 256;

/// Room deliveries that must not hold up the caller. A big room's fan-out
/// costs one push (often a direct write) per member; run by a subscriber
/// loop or a publishing connection's task, it would delay every other
/// room and request behind it. So a room above [`LANE_MIN_MEMBERS`] gets a
/// lane: a FIFO of its events drained by one task that yields every
/// [`LANE_CHUNK`] members. A room's events go through its lane while the
/// lane exists, so they keep their order; the lane ends when it is empty.
#[derive(Default)]
pub struct Lanes {
    /// Each room's pending events, changed only under the map's shard lock
    /// (held to push or pop, never across a push to a connection or an
    /// await).
    queues: DashMap<Arc<str>, VecDeque<RoomEvent>>,
    /// How many lanes exist, so small rooms skip the map while none does.
    active: AtomicUsize,
    /// The write delay of each room.
    delays: WriteDelays,
}

impl Lanes {
    /// Lanes whose rooms' messages wait as `delays` says.
    pub fn with_delays(delays: WriteDelays) -> Lanes {
        Lanes {
            delays,
            ..Lanes::default()
        }
    }

    /// Delivers a room event to every local member: at once when the room
    /// is small, otherwise through the room's lane.
    pub fn deliver_room(self: &Arc<Self>, registry: &Arc<Registry>, room: &str, event: &RoomEvent) {
        let Some(members) = registry.room_members(room) else {
            return;
        };
        let big = members.len() > LANE_MIN_MEMBERS;
        if !big && self.active.load(Ordering::Acquire) == 0 {
            self.deliver_to(&members, room, event);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run a lane on (micro-benchmarks).
            self.deliver_to(&members, room, event);
            return;
        };
        if let Some(mut lane) = self.queues.get_mut(room) {
            lane.push_back(event.clone());
            return;
        }
        if !big {
            self.deliver_to(&members, room, event);
            return;
        }
        match self.queues.entry(Arc::from(room)) {
            Entry::Occupied(mut e) => e.get_mut().push_back(event.clone()),
            Entry::Vacant(v) => {
                let room = v.key().clone();
                v.insert(VecDeque::from([event.clone()]));
                self.active.fetch_add(1, Ordering::AcqRel);
                runtime.spawn(self.clone().drain(registry.clone(), room));
            }
        }
    }

    /// Runs a room's lane until it is empty.
    async fn drain(self: Arc<Self>, registry: Arc<Registry>, room: Arc<str>) {
        loop {
            let next = match self.queues.entry(room.clone()) {
                Entry::Occupied(mut e) => {
                    let popped = e.get_mut().pop_front();
                    if popped.is_none() {
                        // Removed under the map's lock: a concurrent event
                        // either got in before (and was popped) or finds no
                        // lane and is delivered by its caller.
                        e.remove();
                        self.active.fetch_sub(1, Ordering::AcqRel);
                    }
                    popped
                }
                Entry::Vacant(_) => None,
            };
            let Some(event) = next else {
                return;
            };
            // A fresh snapshot per event: members who joined meanwhile get it.
            let Some(members) = registry.room_members(&room) else {
                continue;
            };
            let server_event = event.to_server_event(unscoped(&room));
            let delivery = self.delays.delivery(&room, &event);
            let mut frames = Frames::new(&server_event);
            let mut sent = 0;
            for chunk in members.chunks(LANE_CHUNK) {
                sent += frames.send_room(chunk, &delivery);
                tokio::task::yield_now().await;
            }
            metrics::room_fanout(frames.encodes());
            metrics::delivered(sent);
        }
    }
}

impl Lanes {
    /// Delivers a room event to a snapshot of its members.
    fn deliver_to(&self, members: &[Arc<ConnHandle>], room: &str, event: &RoomEvent) -> usize {
        let delivery = self.delays.delivery(room, event);
        let server_event = event.to_server_event(unscoped(room));
        let mut frames = Frames::new(&server_event);
        let sent = frames.send_room(members, &delivery);
        metrics::room_fanout(frames.encodes());
        metrics::delivered(sent);
        sent
    }
}

/// Delivers one room event to every connection of a member snapshot.
pub fn deliver_members(members: &[Arc<ConnHandle>], event: &ServerEvent<'_>) -> usize {
    let mut frames = Frames::new(event);
    let sent = frames.send_to(members);
    metrics::room_fanout(frames.encodes());
    metrics::delivered(sent);
    sent
}

/// Delivers an event to the given connections of one user.
pub fn deliver_conns(conns: &[Arc<ConnHandle>], event: &ServerEvent<'_>) -> usize {
    let sent = Frames::new(event).send_to(conns);
    metrics::delivered(sent);
    sent
}
