//! Local delivery: an event is encoded at most once per codec and the same
//! bytes are queued to every recipient. Nothing here awaits; a full queue
//! is the slow consumer's problem, never the room's.

use bytes::Bytes;

use crate::conn::handle::{ConnHandle, Outbound};
use crate::metrics;
use crate::protocol::{Codec, ServerEvent};
use crate::registry::Registry;
use crate::ws;

/// Wraps an encoded payload in a WebSocket frame of the codec's type: text
/// for JSON, binary for MessagePack. The frame is complete, header
/// included, so every recipient gets the very same bytes.
pub fn to_frame(codec: Codec, payload: &[u8]) -> Bytes {
    let op = match codec {
        Codec::Json => ws::OP_TEXT,
        Codec::MsgPack => ws::OP_BINARY,
    };
    ws::frame(op, payload)
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
    pub fn send_to<'c>(
        &mut self,
        conns: impl IntoIterator<Item = &'c std::sync::Arc<ConnHandle>>,
    ) -> usize {
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
}

/// Delivers an event to every local member of a room.
pub fn deliver_room(registry: &Registry, room: &str, event: &ServerEvent<'_>) -> usize {
    let sent = registry
        .with_room(room, |m| {
            let mut frames = Frames::new(event);
            let sent = frames.send_to(&m.conns);
            metrics::room_fanout(frames.encodes());
            sent
        })
        .unwrap_or(0);
    metrics::delivered(sent);
    sent
}

/// Delivers an event to every local connection of a user; returns how
/// many connections the user has here (0: the user is not on this instance).
pub fn deliver_user(registry: &Registry, user: &str, event: &ServerEvent<'_>) -> usize {
    let (conns, sent) = registry
        .with_user(user, |c| (c.len(), Frames::new(event).send_to(c)))
        .unwrap_or((0, 0));
    metrics::delivered(sent);
    conns
}
