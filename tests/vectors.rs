//! The wire protocol's test vectors (`proto/vectors.json`) against the Rust
//! codecs. The vectors are written by `scripts/gen-vectors.py` with Python's
//! json and msgpack packages, so passing here means a client in another
//! language reads and writes the same bytes as the server.

use std::collections::BTreeSet;

use roomcast::protocol::message::ClientFrame;
use roomcast::protocol::{Codec, ErrorCode, ServerEvent};
use serde::Deserialize;
use serde_json::Value;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/vectors.json");
const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/schema.json");

/// Every op the server accepts.
const OPS: [&str; 8] = [
    "join", "leave", "publish", "send", "presence", "ping", "admin", "history",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    direction: Direction,
    /// `None` only for a refused frame that JSON cannot express.
    json: Option<String>,
    msgpack_hex: String,
    /// The error code of a refused frame.
    #[serde(default)]
    code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Direction {
    Client,
    Server,
    /// A client frame the server answers with an error without id.
    Refused,
}

impl Vector {
    fn json(&self) -> &[u8] {
        self.json
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no json", self.name))
            .as_bytes()
    }

    fn msgpack(&self) -> Vec<u8> {
        hex::decode(&self.msgpack_hex)
            .unwrap_or_else(|e| panic!("{}: msgpack_hex is not hex: {e}", self.name))
    }

    /// Both encodings of this vector, codec first.
    fn encodings(&self) -> [(Codec, Vec<u8>); 2] {
        [
            (Codec::Json, self.json().to_vec()),
            (Codec::MsgPack, self.msgpack()),
        ]
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

fn vectors(direction: Direction) -> Vec<Vector> {
    let all: Vec<Vector> =
        serde_json::from_str(&read(VECTORS)).expect("proto/vectors.json is a list of vectors");
    let names: BTreeSet<&str> = all.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names.len(), all.len(), "vector names are not unique");
    let picked: Vec<Vector> = all
        .into_iter()
        .filter(|v| v.direction == direction)
        .collect();
    assert!(!picked.is_empty(), "no {direction:?} vectors");
    for v in &picked {
        let refused = direction == Direction::Refused;
        assert_eq!(v.code.is_some(), refused, "{}: code", v.name);
        assert!(v.json.is_some() || refused, "{}: json", v.name);
    }
    picked
}

fn schema() -> Value {
    serde_json::from_str(&read(SCHEMA)).expect("proto/schema.json is JSON")
}

/// The `ev` of an event. The match has no wildcard so that a new variant
/// fails to compile here until it has vectors and a schema entry.
fn kind(ev: &ServerEvent<'_>) -> &'static str {
    match ev {
        ServerEvent::Welcome { .. } => "welcome",
        ServerEvent::Ack { .. } => "ack",
        ServerEvent::Error { .. } => "error",
        ServerEvent::Joined { .. } => "joined",
        ServerEvent::Left { .. } => "left",
        ServerEvent::Presence { .. } => "presence",
        ServerEvent::Message { .. } => "message",
        ServerEvent::Direct { .. } => "direct",
        ServerEvent::Broadcast { .. } => "broadcast",
        ServerEvent::Pong { .. } => "pong",
        ServerEvent::Reconnect { .. } => "reconnect",
        ServerEvent::Batch { .. } => "batch",
        ServerEvent::Stats { .. } => "stats",
        ServerEvent::Admin { .. } => "admin",
        ServerEvent::History { .. } => "history",
        ServerEvent::Gap { .. } => "gap",
        ServerEvent::PresenceDiff { .. } => "presence_diff",
    }
}

/// The names serde knows for a type, read from the error it gives for an
/// unknown one ("unknown variant `x`, expected one of `a`, `b`"), so that
/// the list comes from the Rust enum itself.
fn serde_names<T: serde::de::DeserializeOwned + std::fmt::Debug>(probe: &str) -> Vec<String> {
    let err = serde_json::from_str::<T>(probe).expect_err("the probe is not a known name");
    let msg = err.to_string();
    let (_, list) = msg
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("unexpected serde error: {msg}"));
    let names: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(names.len() > 1, "no names in: {msg}");
    names
}

fn event_kinds() -> Vec<String> {
    serde_names::<ServerEvent<'static>>(r#"{"ev":"no_such_event"}"#)
}

fn error_codes() -> Vec<String> {
    serde_names::<ErrorCode>(r#""no_such_code""#)
}

fn decode<T: serde::de::DeserializeOwned>(v: &Vector, codec: Codec, bytes: &[u8]) -> T {
    codec
        .decode(bytes)
        .unwrap_or_else(|e| panic!("{}: {codec:?} does not decode: {e}", v.name))
}

/// Both encodings hold the same object, whatever the Rust types make of it.
fn assert_same_object(v: &Vector) {
    let from_json: Value = decode(v, Codec::Json, v.json());
    let from_msgpack: Value = decode(v, Codec::MsgPack, &v.msgpack());
    assert_eq!(from_json, from_msgpack, "{}: the encodings differ", v.name);
}

fn assert_encodes_to<T: serde::Serialize>(v: &Vector, value: &T) {
    for (codec, bytes) in v.encodings() {
        let encoded = codec
            .encode(value)
            .unwrap_or_else(|e| panic!("{}: {codec:?} does not encode: {e}", v.name));
        // Compared as text or hex so that a failure shows the difference.
        let (got, want) = match codec {
            Codec::Json => (
                String::from_utf8_lossy(&encoded).into_owned(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ),
            Codec::MsgPack => (hex::encode(&encoded), hex::encode(&bytes)),
        };
        assert_eq!(got, want, "{}: {codec:?} encoding differs", v.name);
    }
}

#[test]
fn client_vectors_decode_alike_and_reencode_exactly() {
    for v in vectors(Direction::Client) {
        assert_same_object(&v);
        let [(_, json), (_, msgpack)] = v.encodings();
        let from_json: ClientFrame = decode(&v, Codec::Json, &json);
        let from_msgpack: ClientFrame = decode(&v, Codec::MsgPack, &msgpack);
        assert_eq!(from_json, from_msgpack, "{}: the codecs disagree", v.name);
        assert_encodes_to(&v, &from_json);
    }
}

#[test]
fn client_vectors_are_valid_requests_of_every_op() {
    let mut seen = BTreeSet::new();
    for v in vectors(Direction::Client) {
        for (codec, bytes) in v.encodings() {
            let request = codec
                .decode_request(&bytes)
                .unwrap_or_else(|e| panic!("{}: {codec:?} rejects it: {e}", v.name));
            let frame: ClientFrame = decode(&v, codec, &bytes);
            assert_eq!(request.id, frame.id, "{}: id not kept", v.name);
        }
        let frame: ClientFrame = decode(&v, Codec::Json, v.json());
        let op = frame.op.expect("client vectors have an op");
        assert!(OPS.contains(&op.as_str()), "{}: unknown op {op}", v.name);
        seen.insert((op, frame.id.is_some()));
    }
    for op in OPS {
        for with_id in [true, false] {
            assert!(
                seen.contains(&(op.to_owned(), with_id)),
                "no vector of op {op} with id: {with_id}"
            );
        }
    }
}

#[test]
fn server_vectors_decode_alike_and_reencode_exactly() {
    for v in vectors(Direction::Server) {
        assert_same_object(&v);
        let [(_, json), (_, msgpack)] = v.encodings();
        let from_json: ServerEvent<'static> = decode(&v, Codec::Json, &json);
        let from_msgpack: ServerEvent<'static> = decode(&v, Codec::MsgPack, &msgpack);
        assert_eq!(from_json, from_msgpack, "{}: the codecs disagree", v.name);
        assert_encodes_to(&v, &from_json);
    }
}

#[test]
fn batch_vectors_equal_codec_batch_of_their_events() {
    let mut batches = 0;
    for v in vectors(Direction::Server) {
        for (codec, bytes) in v.encodings() {
            let ServerEvent::Batch { events } = decode::<ServerEvent<'static>>(&v, codec, &bytes)
            else {
                continue;
            };
            batches += 1;
            assert!(events.len() >= 2, "{}: a batch of fewer than 2", v.name);
            let inner: Vec<_> = events
                .iter()
                .map(|ev| codec.encode(ev).expect("inner events encode"))
                .collect();
            let joined = codec.batch(inner.iter().map(|b| b.as_ref()));
            assert_eq!(
                hex::encode(&joined),
                hex::encode(&bytes),
                "{}: {codec:?} batch differs",
                v.name
            );
        }
    }
    assert!(batches >= 2, "no batch vector");
}

#[test]
fn server_vectors_cover_every_event_kind_and_error_code() {
    let mut kinds = BTreeSet::new();
    let mut codes = BTreeSet::new();
    // (kind, has an id) of the events whose id is optional.
    let mut ids = BTreeSet::new();
    let mut queued = BTreeSet::new();
    for v in vectors(Direction::Server) {
        let ev: ServerEvent<'static> = decode(&v, Codec::Json, v.json());
        let tag: Value = decode(&v, Codec::Json, v.json());
        assert_eq!(tag["ev"], kind(&ev), "{}: ev field", v.name);
        let mut all = vec![ev.clone()];
        if let ServerEvent::Batch { events } = ev {
            all.extend(events);
        }
        for ev in all {
            kinds.insert(kind(&ev).to_owned());
            let k = kind(&ev);
            match ev {
                ServerEvent::Error { id, code, .. } => {
                    codes.insert(code.as_str().to_owned());
                    ids.insert((k, id.is_some()));
                }
                ServerEvent::Pong { id } | ServerEvent::Presence { id, .. } => {
                    ids.insert((k, id.is_some()));
                }
                ServerEvent::Direct { queued: q, .. } => {
                    queued.insert(q);
                }
                _ => {}
            }
        }
    }
    assert_eq!(kinds, event_kinds().into_iter().collect(), "event kinds");
    assert_eq!(codes, error_codes().into_iter().collect(), "error codes");
    for k in ["error", "pong", "presence"] {
        for with_id in [true, false] {
            assert!(ids.contains(&(k, with_id)), "no {k} with id: {with_id}");
        }
    }
    assert_eq!(queued.len(), 2, "direct with queued true and false");
}

#[test]
fn error_code_names_match_as_str() {
    for name in error_codes() {
        let code: ErrorCode =
            serde_json::from_value(Value::String(name.clone())).expect("a known code");
        assert_eq!(code.as_str(), name);
    }
}

/// The schema's definition whose `ev` is `kind`.
fn event_def<'s>(schema: &'s Value, kind: &str) -> &'s Value {
    let defs = schema["$defs"].as_object().expect("schema has $defs");
    let found: Vec<&Value> = defs
        .values()
        .filter(|def| def["properties"]["ev"]["const"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "schema defines event {kind} once");
    found[0]
}

#[test]
fn schema_names_every_event_kind_and_error_code() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let kinds = event_kinds();
    let one_of = schema["$defs"]["ServerEvent"]["oneOf"]
        .as_array()
        .expect("ServerEvent is a oneOf");
    assert_eq!(one_of.len(), kinds.len(), "ServerEvent alternatives");
    for kind in &kinds {
        let def = event_def(&schema, kind);
        let name = one_of
            .iter()
            .filter_map(|r| r["$ref"].as_str())
            .filter_map(|r| r.strip_prefix("#/$defs/"))
            .find(|name| schema["$defs"][*name] == *def);
        assert!(name.is_some(), "ServerEvent does not list {kind}");
    }
    let codes: Vec<&str> = schema["$defs"]["ErrorCode"]["enum"]
        .as_array()
        .expect("ErrorCode is an enum")
        .iter()
        .map(|c| c.as_str().expect("codes are strings"))
        .collect();
    assert_eq!(codes, error_codes(), "schema error codes");
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn required(def: &Value) -> BTreeSet<&str> {
    def["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A light check of the vectors against the schema (no validator crate):
/// every field is defined there and every required field is present.
#[test]
fn vectors_have_the_fields_the_schema_names() {
    let schema = schema();
    let frame_def = &schema["$defs"]["ClientFrame"];
    for v in vectors(Direction::Client) {
        let obj: Value = decode(&v, Codec::Json, v.json());
        let extra: Vec<_> = keys(&obj)
            .difference(&keys(&frame_def["properties"]))
            .copied()
            .collect();
        assert!(
            extra.is_empty(),
            "{}: fields not in schema: {extra:?}",
            v.name
        );
    }
    let mut events = Vec::new();
    for v in vectors(Direction::Server) {
        let obj: Value = decode(&v, Codec::Json, v.json());
        if let Some(inner) = obj["events"].as_array() {
            events.extend(inner.iter().map(|e| (v.name.clone(), e.clone())));
        }
        events.push((v.name, obj));
    }
    for (name, obj) in events {
        let kind = obj["ev"].as_str().expect("events have ev");
        let def = event_def(&schema, kind);
        let fields = keys(&obj);
        let defined = keys(&def["properties"]);
        let extra: Vec<_> = fields.difference(&defined).collect();
        assert!(extra.is_empty(), "{name}: fields not in schema: {extra:?}");
        let missing: Vec<_> = required(def).difference(&fields).copied().collect();
        assert!(
            missing.is_empty(),
            "{name}: required fields missing: {missing:?}"
        );
        if kind == "welcome" {
            let limits = &schema["$defs"]["Limits"];
            assert_eq!(
                keys(&obj["limits"]),
                keys(&limits["properties"]),
                "{name}: limits"
            );
            assert_eq!(keys(&obj["limits"]), required(limits), "{name}: limits");
        }
    }
}

/// Refused frames get their error, never with an id, in every encoding
/// they have; among them null and nil ids and a MessagePack bin id.
#[test]
fn refused_vectors_get_their_error_without_id() {
    let mut names = BTreeSet::new();
    for v in vectors(Direction::Refused) {
        let code = v.code.as_deref().expect("refused vectors have a code");
        let mut encodings = vec![(Codec::MsgPack, v.msgpack())];
        if v.json.is_some() {
            encodings.push((Codec::Json, v.json().to_vec()));
            assert_same_object(&v);
        }
        for (codec, bytes) in encodings {
            let rejected = match codec.decode_request(&bytes) {
                Ok(request) => panic!("{}: {codec:?} accepts it as {request:?}", v.name),
                Err(e) => e.into_rejected(),
            };
            assert_eq!(rejected.code.as_str(), code, "{}: {codec:?}", v.name);
            assert_eq!(rejected.id, None, "{}: {codec:?}", v.name);
        }
        names.insert(v.name);
    }
    for name in ["ping_null_id", "join_null_id", "ping_bin_id"] {
        assert!(names.contains(name), "no refused vector {name}");
    }
}

/// Anonymous users in the vectors have the form the schema gives them,
/// which is the form the server writes (tests/auth.rs).
#[test]
fn anonymous_users_in_vectors_match_the_schema() {
    let schema = schema();
    let pattern = schema["$defs"]["AnonymousUserId"]["pattern"]
        .as_str()
        .expect("schema defines AnonymousUserId");
    let pattern = regex_lite::Regex::new(pattern).expect("a valid pattern");
    let mut seen = 0;
    for v in vectors(Direction::Server) {
        let obj: Value = decode(&v, Codec::Json, v.json());
        if let Some(user) = obj["user"].as_str().filter(|u| u.starts_with("anon-")) {
            assert!(
                pattern.is_match(user),
                "{}: {user} is not {pattern}",
                v.name
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "no anonymous welcome vector");
}
