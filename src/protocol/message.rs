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

/// A client-chosen request id: an unsigned integer or a short string,
/// echoed back unchanged in the `ack` or `error` it causes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReqId {
    Num(u64),
    Str(String),
}

/// What a client sends, before validation. Unknown fields are ignored so
/// that newer clients can talk to older servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ReqId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
}

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

    pub fn data(mut self, data: impl Into<Data>) -> Self {
        self.data = Some(data.into());
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
    Join { room: String },
    Leave { room: String },
    Publish { room: String, data: Data },
    Send { to: String, data: Data },
    Presence { room: String },
    Ping,
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
        let op = match op_name.as_str() {
            "join" => ClientOp::Join {
                room: need(self.room, "room")?,
            },
            "leave" => ClientOp::Leave {
                room: need(self.room, "room")?,
            },
            "publish" => ClientOp::Publish {
                room: need(self.room, "room")?,
                data: self.data.unwrap_or_else(Data::null),
            },
            "send" => ClientOp::Send {
                to: need(self.to, "to")?,
                data: self.data.unwrap_or_else(Data::null),
            },
            "presence" => ClientOp::Presence {
                room: need(self.room, "room")?,
            },
            "ping" => ClientOp::Ping,
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
    },
    Direct {
        from: Cow<'a, str>,
        #[serde(deserialize_with = "deserialize_via_value")]
        data: Cow<'a, Data>,
        ts: u64,
        mid: Cow<'a, str>,
        queued: bool,
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
}
