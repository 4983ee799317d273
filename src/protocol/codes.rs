//! Stable machine-readable error codes and WebSocket close codes.
//! Both are part of the protocol (proto/PROTOCOL.md) and never change meaning.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` event. The connection stays open after every one
/// of them; closes are signalled with a [`CloseCode`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON / MessagePack, or not an object.
    BadFrame,
    /// The `op` is not one the server knows.
    UnknownOp,
    /// A field is missing or has the wrong type.
    BadRequest,
    /// The room name breaks the naming rules.
    InvalidRoom,
    /// The token does not allow this room or operation.
    Forbidden,
    /// The connection sends faster than its rate limit.
    RateLimited,
    /// The connection is already in the maximum number of rooms.
    TooManyRooms,
    /// Publish or leave of a room the connection has not joined.
    NotJoined,
    /// The server cannot take the message now (e.g. the bus is down); retry.
    Unavailable,
    /// An admin command named an instance, room, user or connection that
    /// does not exist.
    NotFound,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotFound => "not_found",
        }
    }
}

/// WebSocket close codes the server uses, with their reconnect semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1001: the server is draining; reconnect (to another instance) now.
    GoingAway,
    /// 1002: the client's bytes were not valid WebSocket frames.
    ProtocolError,
    /// 1007: a text message or close reason was not UTF-8.
    InvalidPayload,
    /// 1008: sustained rate-limit abuse; reconnect only after backing off.
    PolicyViolation,
    /// 1009: a frame exceeded the maximum message size; do not resend it.
    MessageTooBig,
    /// 1011: an unexpected server error; reconnect with backoff.
    InternalError,
    /// 4000: the outbound queue overflowed (slow consumer); reconnect and resync.
    SlowConsumer,
    /// 4001: no frame or pong from the client for two keepalive intervals.
    KeepaliveTimeout,
    /// 4002: an administrator kicked the connection; do not reconnect at once.
    Kicked,
}

impl CloseCode {
    pub const ALL: [CloseCode; 9] = [
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::InvalidPayload,
        CloseCode::PolicyViolation,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::SlowConsumer,
        CloseCode::KeepaliveTimeout,
        CloseCode::Kicked,
    ];

    /// The reason text sent with `code` (empty for codes the server does
    /// not use itself).
    pub fn reason_of(code: u16) -> &'static str {
        Self::ALL
            .into_iter()
            .find(|c| c.code() == code)
            .map_or("", CloseCode::reason)
    }

    pub fn code(self) -> u16 {
        match self {
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::SlowConsumer => 4000,
            CloseCode::KeepaliveTimeout => 4001,
            CloseCode::Kicked => 4002,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "server draining",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::InvalidPayload => "invalid UTF-8",
            CloseCode::PolicyViolation => "rate limit abuse",
            CloseCode::MessageTooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::KeepaliveTimeout => "keepalive timeout",
            CloseCode::Kicked => "kicked",
        }
    }
}
