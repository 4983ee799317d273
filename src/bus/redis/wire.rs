//! The cluster message formats: what travels on Redis channels and what an
//! offline queue entry looks like. All JSON, so other services can publish
//! into rooms with a plain `PUBLISH` (see ARCHITECTURE.md).
//!
//! - Room channel `P:room:<room>`:
//!   `{"origin":"<instance>","type":"message","from":"bob","data":..,"ts":..,"mid":".."}`
//!   (plus `"key":".."` for a latest-wins message),
//!   `{"origin":..,"type":"joined","user":"bob","count":3}`, and `left` alike.
//!   `origin` comes first so an instance skips its own messages with a
//!   prefix test instead of a parse.
//! - History rooms: the publish script inserts `"offset":N,"epoch":"E",`
//!   right after the origin, so every copy (channel and stream) has them.
//! - Instance channel `P:instance:<id>`:
//!   `{"origin":..,"type":"direct","user":"<tenant>/<user>","local":true,"msg":{"from":..,"data":..,"ts":..,"mid":..}}`
//!   (`local`: the origin delivered it to its own connections of the user; absent when false),
//!   `{"origin":..,"type":"route_stale","user":"..","seq":n}` (`seq`: the last cached send it routed again; a cached `direct` carries its own).
//! - Global channel `P:global`: `{"origin":..,"type":"instance_gone","instance":".."}`,
//!   `{"origin":..,"type":"broadcast","tenant":"t","msg":{"from":..,"data":..,"ts":..,"mid":..}}`
//!   (`tenant` absent: every connection of every tenant),
//!   `{"origin":..,"type":"route_added","user":".."}` (from the `ATTACH` script).
//! - Offline queue entry: `<seq>|<ts_ms>|<msg json>`; Lua reads the two
//!   numbers without decoding the JSON.
//!
//! `data` is written as the compact JSON text it arrived in and read back
//! as text ([`Data`]), never as a value tree.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::bus::{Audience, DirectMessage, RoomEvent, RoomMessage};
use crate::node::now_ms;
use crate::offline::Queued;
use crate::protocol::Data;

#[derive(Serialize)]
struct RoomOut<'a> {
    origin: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Data>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

#[derive(Deserialize)]
struct RoomIn {
    #[serde(rename = "type")]
    kind: String,
    from: Option<String>,
    /// Absent and `null` are the same.
    data: Option<Data>,
    ts: Option<u64>,
    mid: Option<String>,
    key: Option<String>,
    user: Option<String>,
    count: Option<u64>,
    /// History rooms: set by the publish script.
    offset: Option<u64>,
    epoch: Option<String>,
}

/// The prefix every room message published by `origin` starts with.
pub fn origin_prefix(origin: &str) -> String {
    format!("{{\"origin\":\"{origin}\",")
}

pub fn encode_room(origin: &str, event: &RoomEvent) -> Result<String, serde_json::Error> {
    let out = match event {
        RoomEvent::Message(m) => RoomOut {
            origin,
            kind: "message",
            from: Some(&m.from),
            data: Some(&m.data),
            ts: Some(m.ts),
            mid: Some(&m.mid),
            key: m.key.as_deref(),
            user: None,
            count: None,
        },
        RoomEvent::Joined { user, count } | RoomEvent::Left { user, count } => RoomOut {
            origin,
            kind: if matches!(event, RoomEvent::Joined { .. }) {
                "joined"
            } else {
                "left"
            },
            from: None,
            data: None,
            ts: None,
            mid: None,
            key: None,
            user: Some(user),
            count: Some(*count),
        },
    };
    serde_json::to_string(&out)
}

/// Decodes a room channel payload. Fields other services may leave out
/// (`ts`, `mid`) are filled in.
pub fn decode_room(payload: &[u8]) -> Result<RoomEvent, String> {
    let r: RoomIn = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    match r.kind.as_str() {
        "message" => Ok(RoomEvent::Message(RoomMessage {
            from: r.from.ok_or("message without from")?,
            data: r.data.unwrap_or_else(Data::null),
            ts: r.ts.unwrap_or_else(now_ms),
            mid: r
                .mid
                .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
            offset: r.offset,
            epoch: r.epoch.map(Into::into),
            key: r.key,
        })),
        "joined" => Ok(RoomEvent::Joined {
            user: r.user.ok_or("joined without user")?,
            count: r.count.unwrap_or(0),
        }),
        "left" => Ok(RoomEvent::Left {
            user: r.user.ok_or("left without user")?,
            count: r.count.unwrap_or(0),
        }),
        other => Err(format!("unknown room event type {other:?}")),
    }
}

#[derive(Serialize)]
struct DirectOut<'a> {
    origin: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    user: &'a str,
    /// The origin delivered it to the user's connections there itself.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    local: bool,
    /// Sent through the origin's route cache: its number among the
    /// origin's cached sends to this user (echoed by `route_stale`).
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    msg: &'a DirectMessage,
}

/// A message on an instance channel.
#[derive(Debug, Deserialize)]
pub struct InstanceIn {
    /// The sending instance (absent from other services' messages).
    pub origin: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub user: Option<String>,
    #[serde(default)]
    pub local: bool,
    /// A cached send's number (`direct`), or the last one routed again
    /// (`route_stale`).
    #[serde(default)]
    pub seq: Option<u64>,
    pub msg: Option<DirectMessage>,
}

pub fn encode_direct(
    origin: &str,
    user: &str,
    msg: &DirectMessage,
    local: bool,
    seq: Option<u64>,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&DirectOut {
        origin,
        kind: "direct",
        user,
        local,
        seq,
        msg,
    })
}

#[derive(Serialize)]
struct RouteOut<'a> {
    origin: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// `route_added` (global channel: the user has a new route beside others)
/// or `route_stale` (a sender's instance channel: its cached route sent a
/// message to an instance that no longer holds the user).
/// `seq`: for `route_stale`, the last cached send routed again.
pub fn encode_route(origin: &str, kind: &'static str, user: &str, seq: Option<u64>) -> String {
    serde_json::to_string(&RouteOut {
        origin,
        kind,
        user,
        seq,
    })
    .unwrap_or_default()
}

#[derive(Serialize)]
struct BroadcastOut<'a> {
    origin: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    msg: &'a DirectMessage,
}

/// A message on the global channel.
#[derive(Debug, Deserialize)]
pub struct GlobalIn {
    #[serde(rename = "type")]
    pub kind: String,
    /// A broadcast's tenant; absent for every tenant.
    pub tenant: Option<String>,
    pub msg: Option<DirectMessage>,
    /// The user of a `route_added`.
    pub user: Option<String>,
}

impl GlobalIn {
    /// A broadcast's audience and message, if this is one.
    pub fn into_broadcast(self) -> Option<(Audience, DirectMessage)> {
        if self.kind != "broadcast" {
            return None;
        }
        let audience = match self.tenant {
            None => Audience::All,
            Some(t) => Audience::Tenant(t.into()),
        };
        Some((audience, self.msg?))
    }
}

pub fn encode_broadcast(
    origin: &str,
    audience: &Audience,
    msg: &DirectMessage,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&BroadcastOut {
        origin,
        kind: "broadcast",
        tenant: match audience {
            Audience::All => None,
            Audience::Tenant(t) => Some(t),
        },
        msg,
    })
}

pub fn encode_gone(origin: &str, instance: &str) -> String {
    serde_json::json!({"origin": origin, "type": "instance_gone", "instance": instance}).to_string()
}

/// Parses one offline queue entry (`seq|ts|json`).
pub fn decode_offline(entry: &[u8]) -> Option<Queued> {
    let text = std::str::from_utf8(entry).ok()?;
    let mut parts = text.splitn(3, '|');
    let seq = parts.next()?.parse().ok()?;
    let _ts: u64 = parts.next()?.parse().ok()?;
    let msg = serde_json::from_str(parts.next()?).ok()?;
    Some(Queued {
        seq,
        at: Instant::now(),
        msg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn room_messages_round_trip_and_start_with_the_origin() {
        let ev = RoomEvent::Message(RoomMessage {
            from: "bob".into(),
            data: json!({"hp": 3}).into(),
            ts: 5,
            mid: "m-1".into(),
            offset: None,
            epoch: None,
            key: Some("pos:1".into()),
        });
        let s = encode_room("i-1", &ev).expect("encode");
        assert!(s.starts_with(&origin_prefix("i-1")));
        assert_eq!(decode_room(s.as_bytes()).expect("decode"), ev);
        let left = RoomEvent::Left {
            user: "bob".into(),
            count: 2,
        };
        let s = encode_room("i-1", &left).expect("encode");
        assert_eq!(decode_room(s.as_bytes()).expect("decode"), left);
    }

    #[test]
    fn broadcasts_round_trip_with_their_audience() {
        let msg = DirectMessage {
            from: "$admin".into(),
            data: json!({"text": "restart"}).into(),
            ts: 7,
            mid: "m-2".into(),
        };
        for audience in [Audience::All, Audience::Tenant("acme".into())] {
            let s = encode_broadcast("i-1", &audience, &msg).expect("encode");
            assert!(s.starts_with(&origin_prefix("i-1")));
            let back: GlobalIn = serde_json::from_str(&s).expect("decode");
            assert_eq!(back.into_broadcast(), Some((audience, msg.clone())));
        }
        let gone: GlobalIn = serde_json::from_str(&encode_gone("i-1", "i-2")).expect("decode");
        assert_eq!(gone.into_broadcast(), None);
    }

    #[test]
    fn external_publishers_may_omit_ids() {
        let ev = decode_room(br#"{"type":"message","from":"backend","data":1}"#).expect("decode");
        match ev {
            RoomEvent::Message(m) => {
                assert_eq!(m.from, "backend");
                assert!(!m.mid.is_empty() && m.ts > 0);
            }
            other => panic!("{other:?}"),
        }
        assert!(decode_room(br#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn offline_entries_parse() {
        let msg = DirectMessage {
            from: "a".into(),
            data: json!("x|y").into(),
            ts: 1,
            mid: "m".into(),
        };
        let entry = format!("17|99|{}", serde_json::to_string(&msg).expect("json"));
        let q = decode_offline(entry.as_bytes()).expect("parse");
        assert_eq!(q.seq, 17);
        assert_eq!(q.msg, msg);
        assert!(decode_offline(b"x|1|{}").is_none());
    }
}
