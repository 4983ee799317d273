//! What the loadgen puts on the wire and how it reads what comes back.
//!
//! Outbound frames are small borrowed structs encoded with the project's
//! [`Codec`]. Inbound frames are decoded into [`Inbound`], a flat struct
//! that names only the fields the loadgen needs, so decoding a delivery
//! skips `from`, `room`, `ts`, `mid` and the padding without allocating.
//! A frame that does not decode is counted as malformed by the caller.

use roomcast::protocol::{Codec, Limits, ReqId};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::Utf8Bytes};

/// The measurement stamp carried in `data` of every publish and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp {
    /// Send instant, ns since the loadgen-wide start instant.
    pub t: u64,
    /// Publisher (sender) index, unique in the run.
    pub p: u32,
    /// Per-publisher sequence number, from 0.
    pub s: u64,
}

#[derive(Serialize)]
struct OutData<'a> {
    t: u64,
    p: u32,
    s: u64,
    /// Padding, so that frames have the size the workload asks for.
    x: &'a str,
}

#[derive(Serialize)]
struct OutFrame<'a> {
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<OutData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

/// A client operation the loadgen sends.
pub enum Op<'a> {
    Join {
        id: u64,
        room: &'a str,
    },
    Publish {
        room: &'a str,
        stamp: Stamp,
        /// Latest-wins key (W7).
        key: Option<&'a str>,
    },
    Send {
        to: &'a str,
        stamp: Stamp,
    },
    Ping {
        id: u64,
    },
}

/// Encodes one operation into a WebSocket message of the codec's frame type.
pub fn encode(codec: Codec, op: &Op<'_>, pad: &str) -> anyhow::Result<Message> {
    let data = |s: &Stamp| {
        Some(OutData {
            t: s.t,
            p: s.p,
            s: s.s,
            x: pad,
        })
    };
    let frame = match op {
        Op::Join { id, room } => OutFrame {
            op: "join",
            id: Some(*id),
            room: Some(room),
            to: None,
            data: None,
            key: None,
        },
        Op::Publish { room, stamp, key } => OutFrame {
            op: "publish",
            id: None,
            room: Some(room),
            to: None,
            data: data(stamp),
            key: *key,
        },
        Op::Send { to, stamp } => OutFrame {
            op: "send",
            id: None,
            room: None,
            to: Some(to),
            data: data(stamp),
            key: None,
        },
        Op::Ping { id } => OutFrame {
            op: "ping",
            id: Some(*id),
            room: None,
            to: None,
            data: None,
            key: None,
        },
    };
    let bytes = codec.encode(&frame)?;
    Ok(match codec {
        Codec::Json => Message::Text(Utf8Bytes::try_from(bytes)?),
        Codec::MsgPack => Message::Binary(bytes),
    })
}

/// The event kinds of the protocol; unknown kinds decode as `Other` so that
/// a newer server does not make every frame malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Welcome,
    Ack,
    Error,
    Joined,
    Left,
    Presence,
    Message,
    Direct,
    Pong,
    Reconnect,
    Batch,
    #[serde(other)]
    Other,
}

/// One server event, with only the fields the loadgen reads.
#[derive(Debug, Deserialize)]
pub struct Inbound {
    pub ev: Kind,
    #[serde(default)]
    pub id: Option<ReqId>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub data: Option<Stamp>,
    #[serde(default)]
    pub queued: Option<bool>,
    #[serde(default)]
    pub limits: Option<Limits>,
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<Inbound>>,
}

impl Inbound {
    /// The numeric request id this event answers, if any.
    pub fn num_id(&self) -> Option<u64> {
        match self.id {
            Some(ReqId::Num(n)) => Some(n),
            _ => None,
        }
    }
}

/// Decodes one data frame; the caller picks the codec from the frame type
/// (text: JSON, binary: MessagePack). `None` means malformed.
pub fn decode(payload: &[u8], codec: Codec) -> Option<Inbound> {
    codec.decode::<Inbound>(payload).ok()
}

/// Per-receiver, per-publisher order tracking with a 64-message window.
///
/// A delivery whose sequence number is not above the highest seen from that
/// publisher counts as out of order (the peers' definition: a repeat counts
/// too); if the window remembers that exact number it is also a duplicate.
#[derive(Debug, Default)]
pub struct OrderTracker {
    /// (publisher, highest sequence seen, bitmap of the 64 numbers up to it).
    /// A receiver hears from one or a few publishers, so a vector is the
    /// smallest and fastest map.
    seen: Vec<(u32, u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    InOrder,
    OutOfOrder,
    Duplicate,
}

impl OrderTracker {
    pub fn observe(&mut self, publisher: u32, seq: u64) -> Seen {
        let Some(entry) = self.seen.iter_mut().find(|e| e.0 == publisher) else {
            self.seen.push((publisher, seq, 1));
            return Seen::InOrder;
        };
        let (_, max, bits) = entry;
        if seq > *max {
            let shift = seq - *max;
            *bits = if shift >= 64 { 0 } else { *bits << shift };
            *bits |= 1;
            *max = seq;
            return Seen::InOrder;
        }
        let back = *max - seq;
        if back >= 64 {
            return Seen::OutOfOrder;
        }
        let bit = 1u64 << back;
        if *bits & bit != 0 {
            Seen::Duplicate
        } else {
            *bits |= bit;
            Seen::OutOfOrder
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_tracker_classifies() {
        let mut t = OrderTracker::default();
        assert_eq!(t.observe(1, 0), Seen::InOrder);
        assert_eq!(t.observe(1, 2), Seen::InOrder);
        assert_eq!(t.observe(1, 1), Seen::OutOfOrder);
        assert_eq!(t.observe(1, 1), Seen::Duplicate);
        assert_eq!(t.observe(1, 2), Seen::Duplicate);
        assert_eq!(t.observe(2, 0), Seen::InOrder);
        assert_eq!(t.observe(1, 200), Seen::InOrder);
        assert_eq!(t.observe(1, 100), Seen::OutOfOrder);
    }

    #[test]
    fn decodes_batch_of_deliveries_in_both_codecs() {
        let json = br#"{"ev":"batch","events":[
            {"ev":"message","room":"r","from":"u","data":{"t":5,"p":1,"s":2,"x":"pad"},"ts":1,"mid":"m"},
            {"ev":"direct","from":"u","data":{"t":6,"p":3,"s":4},"ts":1,"mid":"m","queued":true},
            {"ev":"something_new","x":1}]}"#;
        let ev = decode(json, Codec::Json).expect("json batch");
        assert_eq!(ev.ev, Kind::Batch);
        let events = ev.events.expect("events");
        assert_eq!(events[0].data, Some(Stamp { t: 5, p: 1, s: 2 }));
        assert_eq!(events[1].queued, Some(true));
        assert_eq!(events[2].ev, Kind::Other);

        let value: serde_json::Value = serde_json::from_slice(json).expect("value");
        let packed = rmp_serde::to_vec_named(&value).expect("msgpack");
        let ev = decode(&packed, Codec::MsgPack).expect("msgpack batch");
        assert_eq!(ev.events.map(|e| e.len()), Some(3));
    }

    #[test]
    fn malformed_frames_are_none() {
        assert!(decode(b"{\"ev\":", Codec::Json).is_none());
        assert!(decode(b"[1,2]", Codec::Json).is_none());
        assert!(decode(b"\xc1", Codec::MsgPack).is_none());
    }

    #[test]
    fn publish_encodes_stamp_and_padding() {
        let stamp = Stamp { t: 9, p: 2, s: 7 };
        let msg = encode(
            Codec::Json,
            &Op::Publish {
                room: "r1",
                stamp,
                key: None,
            },
            "xx",
        )
        .expect("encode");
        let Message::Text(text) = msg else {
            panic!("json must be a text frame")
        };
        assert_eq!(
            text.as_str(),
            r#"{"op":"publish","room":"r1","data":{"t":9,"p":2,"s":7,"x":"xx"}}"#
        );
    }
}
