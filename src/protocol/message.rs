//! Message types of the protocol, shared by both codecs.
//!
//! Clients send a flat [`ClientFrame`] (`op`, `id`, `room`, `to`, `data`);
//! the server validates it into a [`Request`]. Server events are the
//! internally tagged [`ServerEvent`] (`ev` field). Field order here is the
//! order of the test vectors in `proto/vectors.json`.

use std::borrow::Cow;

use super::codes::ErrorCode;
use super::payload::{Data, deserialize_via_value};
use serde::{Deserialize, Serialize};

/// Longest client-chosen request id, in bytes, when it is a string.
pub const MAX_REQ_ID_LEN: usize = 64;

/// Longest latest-wins `key` of a publish, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// A client-chosen request id: an unsigned integer or a short string,
/// echoed back unchanged, in the type it came in, in the answer it causes.
/// Nothing else is an id: null, MessagePack nil and bin, negative numbers
/// and floats are refused when decoding (`bad_frame`), never taken as no id
/// or turned into another type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum ReqId {
    Num(u64),
    Str(String),
}

impl<'de> Deserialize<'de> for ReqId {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(ReqIdVisitor)
    }
}

struct ReqIdVisitor;

impl serde::de::Visitor<'_> for ReqIdVisitor {
    type Value = ReqId;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an `id` that is an unsigned integer or a string (leave `id` out for none)")
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ReqId, E> {
        Ok(ReqId::Num(n))
    }

    // MessagePack may carry a non-negative integer in a signed form.
    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ReqId, E> {
        u64::try_from(n)
            .map(ReqId::Num)
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ReqId, E> {
        Ok(ReqId::Str(s.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<ReqId, E> {
        Ok(ReqId::Str(s))
    }

    // The two mistakes a client is likely to make get their own words.
    fn visit_unit<E: serde::de::Error>(self) -> Result<ReqId, E> {
        Err(E::custom("`id` is null: leave `id` out to send no id"))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<ReqId, E> {
        Err(E::custom("`id` is MessagePack bin: send it as str"))
    }
}

/// Reads a present `id` field: unlike `Option`'s own impl, null is not
/// taken as an absent id but refused like any other non-id.
fn present_id<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<ReqId>, D::Error> {
    ReqId::deserialize(de).map(Some)
}

/// What a client sends, before validation. Unknown fields are ignored so
/// that newer clients can talk to older servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(
        default,
        deserialize_with = "present_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<ReqId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The command of an `admin` op (PROTOCOL.md §10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// `join` and `history`: the position the client last saw (room history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
    /// `history`: how many of the latest messages to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `publish` only: the latest-wins key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A position in a room's history: the offset of the last message a client
/// saw and the epoch it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// Longest epoch a client may send back, in bytes.
pub const MAX_EPOCH_LEN: usize = 64;

impl ClientFrame {
    pub fn new(op: &str) -> Self {
        ClientFrame {
            op: Some(op.to_owned()),
            ..Default::default()
        }
    }

    pub fn id(mut self, id: impl Into<ReqId>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn room(mut self, room: &str) -> Self {
        self.room = Some(room.to_owned());
        self
    }

    pub fn to(mut self, user: &str) -> Self {
        self.to = Some(user.to_owned());
        self
    }

    pub fn cmd(mut self, cmd: &str) -> Self {
        self.cmd = Some(cmd.to_owned());
        self
    }

    pub fn data(mut self, data: impl Into<Data>) -> Self {
        self.data = Some(data.into());
        self
    }

    pub fn since(mut self, offset: u64, epoch: &str) -> Self {
        self.since = Some(Since {
            offset,
            epoch: epoch.to_owned(),
        });
        self
    }

    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }
}

impl From<u64> for ReqId {
    fn from(n: u64) -> Self {
        ReqId::Num(n)
    }
}

impl From<&str> for ReqId {
    fn from(s: &str) -> Self {
        ReqId::Str(s.to_owned())
    }
}

/// A validated client operation.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    Join {
        room: String,
        since: Option<Since>,
    },
    Leave {
        room: String,
    },
    Publish {
        room: String,
        data: Data,
        /// Latest-wins key: an unsent message of the same room and key is
        /// replaced by this one.
        key: Option<String>,
    },
    Send {
        to: String,
        data: Data,
    },
    Presence {
        room: String,
    },
    Ping,
    /// An administrator's command; `args` is the frame's `data`.
    Admin {
        cmd: String,
        args: Data,
    },
    /// Read a room's history: after `since`, or the latest `limit`.
    History {
        room: String,
        since: Option<Since>,
        limit: Option<u64>,
    },
}

/// A validated operation with the client's request id.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<ReqId>,
    pub op: ClientOp,
}

/// Why a decoded frame is not a valid request. Carries the request id when
/// the frame had a readable one, so the error can answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Option<ReqId>,
    pub code: ErrorCode,
    pub text: String,
}

impl ClientFrame {
    /// Validates the envelope into a [`Request`].
    pub fn into_request(self) -> Result<Request, Rejected> {
        let id = match self.id {
            Some(ReqId::Str(s)) if s.len() > MAX_REQ_ID_LEN => {
                return Err(Rejected {
                    id: None,
                    code: ErrorCode::BadRequest,
                    text: format!("id longer than {MAX_REQ_ID_LEN} bytes"),
                });
            }
            other => other,
        };
        let reject = |code, text: String| Rejected {
            id: id.clone(),
            code,
            text,
        };
        let Some(op_name) = self.op else {
            return Err(reject(ErrorCode::BadRequest, "missing field `op`".into()));
        };
        let need = |field: Option<String>, name: &str| {
            field.ok_or_else(|| {
                reject(
                    ErrorCode::BadRequest,
                    format!("op `{op_name}` needs field `{name}`"),
                )
            })
        };
        if let Some(since) = &self.since
            && since.epoch.len() > MAX_EPOCH_LEN
        {
            return Err(reject(
                ErrorCode::BadRequest,
                format!("since.epoch longer than {MAX_EPOCH_LEN} bytes"),
            ));
        }
        let op = match op_name.as_str() {
            "join" => ClientOp::Join {
                room: need(self.room, "room")?,
                since: self.since,
            },
            "leave" => ClientOp::Leave {
                room: need(self.room, "room")?,
            },
            "publish" => ClientOp::Publish {
                room: need(self.room, "room")?,
                data: self.data.unwrap_or_else(Data::null),
                key: match self.key {
                    Some(k) if k.is_empty() || k.len() > MAX_KEY_LEN => {
                        return Err(reject(
                            ErrorCode::BadRequest,
                            format!("key must be 1 to {MAX_KEY_LEN} bytes"),
                        ));
                    }
                    k => k,
                },
            },
            "send" => ClientOp::Send {
                to: need(self.to, "to")?,
                data: self.data.unwrap_or_else(Data::null),
            },
            "presence" => ClientOp::Presence {
                room: need(self.room, "room")?,
            },
            "ping" => ClientOp::Ping,
            "admin" => ClientOp::Admin {
                cmd: need(self.cmd, "cmd")?,
                args: self.data.unwrap_or_else(Data::null),
            },
            "history" => {
                let room = need(self.room, "room")?;
                match (&self.since, self.limit) {
                    (Some(_), Some(_)) | (None, None) => {
                        return Err(reject(
                            ErrorCode::BadRequest,
                            "op `history` needs either `since` or `limit`".into(),
                        ));
                    }
                    (None, Some(0)) => {
                        return Err(reject(
                            ErrorCode::BadRequest,
                            "`limit` must be at least 1".into(),
                        ));
                    }
                    _ => {}
                }
                ClientOp::History {
                    room,
                    since: self.since,
                    limit: self.limit,
                }
            }
            _ => {
                // Cut on a character boundary: `String::truncate` panics inside one.
                let shown = &op_name[..op_name.floor_char_boundary(32)];
                return Err(reject(
                    ErrorCode::UnknownOp,
                    format!("unknown op `{shown}`"),
                ));
            }
        };
        Ok(Request { id, op })
    }
}

/// The limits the server applies to a connection, announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame the server accepts, in bytes (larger: close 1009).
    pub max_message_bytes: u64,
    /// Most rooms one connection may be in at once.
    pub max_rooms: u64,
    /// Sustained operations per second before `rate_limited`.
    pub rate_per_s: u64,
    /// Operations allowed in a burst above the sustained rate.
    pub burst: u64,
    /// Server ping interval; a peer silent for two intervals is closed.
    pub ping_interval_ms: u64,
    /// `joined`/`left` are sent only in rooms of at most this many users.
    pub presence_events_max: u64,
}

/// Every event the server sends. Strings are `Cow` so the server encodes
/// from borrowed data while clients decode into owned values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum ServerEvent<'a> {
    Welcome {
        conn: Cow<'a, str>,
        user: Cow<'a, str>,
        instance: Cow<'a, str>,
        limits: Cow<'a, Limits>,
        batch: bool,
    },
    Ack {
        id: Cow<'a, ReqId>,
        /// Join of a room with history: the last offset sent to the client
        /// for the room (replayed messages came before this ack).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<Cow<'a, str>>,
        /// Join with `since`: every missed message was replayed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, ReqId>>,
        code: ErrorCode,
        text: Cow<'a, str>,
    },
    Joined {
        room: Cow<'a, str>,
        user: Cow<'a, str>,
        count: u64,
    },
    Left {
        room: Cow<'a, str>,
        user: Cow<'a, str>,
        count: u64,
    },
    Presence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, ReqId>>,
        room: Cow<'a, str>,
        users: Vec<Cow<'a, str>>,
        count: u64,
    },
    Message {
        room: Cow<'a, str>,
        from: Cow<'a, str>,
        #[serde(deserialize_with = "deserialize_via_value")]
        data: Cow<'a, Data>,
        ts: u64,
        mid: Cow<'a, str>,
        /// The latest-wins key the message was published with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<Cow<'a, str>>,
        /// Rooms with history: the message's place in the room's history.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<Cow<'a, str>>,
    },
    Direct {
        from: Cow<'a, str>,
        #[serde(deserialize_with = "deserialize_via_value")]
        data: Cow<'a, Data>,
        ts: u64,
        mid: Cow<'a, str>,
        queued: bool,
    },
    /// A message to every connection of the cluster, or of one tenant.
    Broadcast {
        from: Cow<'a, str>,
        #[serde(deserialize_with = "deserialize_via_value")]
        data: Cow<'a, Data>,
        ts: u64,
        mid: Cow<'a, str>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, ReqId>>,
    },
    Reconnect {
        after_ms: u64,
        reason: Cow<'a, str>,
    },
    Batch {
        events: Vec<ServerEvent<'a>>,
    },
    /// The cluster's figures, to connections subscribed to the admin
    /// stats channel.
    Stats {
        #[serde(deserialize_with = "deserialize_via_value")]
        data: Cow<'a, Data>,
    },
    /// The answer to an `admin` op.
    Admin {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, ReqId>>,
        cmd: Cow<'a, str>,
        #[serde(deserialize_with = "deserialize_via_value")]
        result: Cow<'a, Data>,
    },
    /// The answer to `history`: `message` events, oldest first.
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, ReqId>>,
        room: Cow<'a, str>,
        messages: Vec<ServerEvent<'a>>,
        offset: u64,
        epoch: Cow<'a, str>,
        complete: bool,
    },
    /// The instance could not deliver some messages of a room with history
    /// (`offset`: the room's last offset); read them with `history`.
    Gap {
        room: Cow<'a, str>,
        epoch: Cow<'a, str>,
        offset: u64,
    },
    /// The joins and leaves of a room over one presence interval (with
    /// `--presence-interval-ms`, instead of `joined` and `left`).
    PresenceDiff {
        room: Cow<'a, str>,
        joins: Vec<Cow<'a, str>>,
        leaves: Vec<Cow<'a, str>>,
        count: u64,
    },
}
