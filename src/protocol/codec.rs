//! The two codecs: JSON text frames and MessagePack binary frames.
//! Pure functions on bytes; nothing here does I/O.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use super::codes::ErrorCode;
use super::message::{ClientFrame, Rejected, Request};

pub const JSON_SUBPROTOCOL: &str = "roomcast.v1.json";
pub const MSGPACK_SUBPROTOCOL: &str = "roomcast.v1.msgpack";

/// Nesting limit of both decoders: a frame may nest at most `MAX_DEPTH - 1`
/// arrays and objects, counting its own object. This is serde_json's fixed
/// limit; MessagePack is held to the same one.
pub const MAX_DEPTH: usize = 128;

/// The codec of one connection, fixed at the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// `roomcast.v1.json`: UTF-8 JSON in text frames.
    Json,
    /// `roomcast.v1.msgpack`: MessagePack (maps with named fields) in binary frames.
    MsgPack,
}

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("frame is not a valid {codec:?} object: {detail}")]
    Malformed { codec: Codec, detail: String },
    #[error("{0:?}")]
    Rejected(Rejected),
}

#[derive(Debug, Error)]
#[error("cannot encode event: {0}")]
pub struct EncodeError(String);

impl Codec {
    /// Both codecs, in the order of [`Codec::index`].
    pub const ALL: [Codec; 2] = [Codec::Json, Codec::MsgPack];

    /// Picks the first protocol the server knows from a
    /// `Sec-WebSocket-Protocol` header value. `None` when the header names
    /// only unknown protocols.
    pub fn from_subprotocols(header: &str) -> Option<Codec> {
        header.split(',').map(str::trim).find_map(|p| match p {
            JSON_SUBPROTOCOL => Some(Codec::Json),
            MSGPACK_SUBPROTOCOL => Some(Codec::MsgPack),
            _ => None,
        })
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Codec::Json => JSON_SUBPROTOCOL,
            Codec::MsgPack => MSGPACK_SUBPROTOCOL,
        }
    }

    /// A dense index for per-codec caches.
    pub fn index(self) -> usize {
        match self {
            Codec::Json => 0,
            Codec::MsgPack => 1,
        }
    }

    /// Decodes and validates one client frame.
    pub fn decode_request(self, bytes: &[u8]) -> Result<Request, DecodeError> {
        // serde would also read a struct from an array of its fields; the
        // protocol allows only an object (map) as the frame.
        if !self.starts_with_map(bytes) {
            return Err(DecodeError::Malformed {
                codec: self,
                detail: "frame is not an object".into(),
            });
        }
        let frame: ClientFrame = self.decode(bytes)?;
        frame.into_request().map_err(DecodeError::Rejected)
    }

    /// Decodes any protocol value (used by clients and tests). The frame
    /// must hold exactly one value, within the [`MAX_DEPTH`] nesting limit.
    pub fn decode<T: serde::de::DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        let malformed = |detail: String| DecodeError::Malformed {
            codec: self,
            detail,
        };
        match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string())),
            Codec::MsgPack => {
                // rmp-serde allows 1024 levels by default, which overflows a
                // 2 MiB thread stack in debug builds, and it ignores trailing bytes.
                let mut rest = bytes;
                let mut de = rmp_serde::Deserializer::new(&mut rest);
                de.set_max_depth(MAX_DEPTH);
                let value = T::deserialize(&mut de).map_err(|e| malformed(e.to_string()))?;
                if !rest.is_empty() {
                    return Err(malformed(format!("{} trailing bytes", rest.len())));
                }
                Ok(value)
            }
        }
    }

    /// Whether the first value of a frame is an object (JSON) or map (MessagePack).
    fn starts_with_map(self, bytes: &[u8]) -> bool {
        match self {
            Codec::Json => bytes
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
                .is_some_and(|&b| b == b'{'),
            // fixmap, map 16, map 32.
            Codec::MsgPack => bytes
                .first()
                .is_some_and(|&b| matches!(b, 0x80..=0x8f | 0xde | 0xdf)),
        }
    }

    /// Encodes any protocol value: a server event or a client frame.
    pub fn encode<T: serde::Serialize>(self, value: &T) -> Result<Bytes, EncodeError> {
        match self {
            Codec::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
            Codec::MsgPack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(|e| EncodeError(e.to_string())),
        }
    }

    /// Joins already encoded events into one `batch` event, byte for byte
    /// what encoding [`ServerEvent::Batch`](super::message::ServerEvent::Batch)
    /// would give, without re-encoding.
    pub fn batch<'a>(self, events: impl ExactSizeIterator<Item = &'a [u8]>) -> Bytes {
        let parts = self.batch_parts(events.len());
        let mut out = BytesMut::new();
        parts.write(events, &mut out);
        out.freeze()
    }

    /// How a `batch` event of `n` encoded events is laid out, so that a
    /// writer can size its buffer once and copy each event once.
    pub fn batch_parts(self, n: usize) -> BatchParts {
        match self {
            Codec::Json => BatchParts {
                head: BatchHead::Static(br#"{"ev":"batch","events":["#),
                sep: b",",
                tail: b"]}",
            },
            Codec::MsgPack => {
                let mut head = Vec::with_capacity(24);
                // Writing into a Vec cannot fail, so the results carry no information.
                let _ = rmp::encode::write_map_len(&mut head, 2);
                let _ = rmp::encode::write_str(&mut head, "ev");
                let _ = rmp::encode::write_str(&mut head, "batch");
                let _ = rmp::encode::write_str(&mut head, "events");
                let _ = rmp::encode::write_array_len(&mut head, n as u32);
                BatchParts {
                    head: BatchHead::Built(head),
                    sep: b"",
                    tail: b"",
                }
            }
        }
    }
}

/// The bytes around the events of a `batch` event ([`Codec::batch_parts`]).
pub struct BatchParts {
    head: BatchHead,
    sep: &'static [u8],
    tail: &'static [u8],
}

enum BatchHead {
    Static(&'static [u8]),
    Built(Vec<u8>),
}

impl BatchParts {
    /// The encoded length of the batch of these events.
    pub fn len<'a>(&self, events: impl ExactSizeIterator<Item = &'a [u8]>) -> usize {
        let n = events.len();
        let head = match &self.head {
            BatchHead::Static(h) => h.len(),
            BatchHead::Built(h) => h.len(),
        };
        head + events.map(<[u8]>::len).sum::<usize>()
            + self.sep.len() * n.saturating_sub(1)
            + self.tail.len()
    }

    /// Appends the batch of these events to `out`.
    pub fn write<'a>(&self, events: impl Iterator<Item = &'a [u8]>, out: &mut BytesMut) {
        out.put_slice(match &self.head {
            BatchHead::Static(h) => h,
            BatchHead::Built(h) => h,
        });
        for (i, ev) in events.enumerate() {
            if i > 0 {
                out.put_slice(self.sep);
            }
            out.put_slice(ev);
        }
        out.put_slice(self.tail);
    }
}

/// The error code for a decode failure.
impl DecodeError {
    pub fn into_rejected(self) -> Rejected {
        match self {
            DecodeError::Malformed { detail, .. } => {
                let mut text = detail;
                text.truncate(text.floor_char_boundary(200));
                Rejected {
                    id: None,
                    code: ErrorCode::BadFrame,
                    text,
                }
            }
            DecodeError::Rejected(r) => r,
        }
    }
}
