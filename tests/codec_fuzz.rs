//! Fuzzing of the two codecs with proptest: whatever a client sends, the
//! decoder returns `Ok` or `Err` and never panics or overflows the stack,
//! and every well-formed frame survives both codecs unchanged.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use roomcast::protocol::codec::MAX_DEPTH;
use roomcast::protocol::message::{ClientFrame, MAX_REQ_ID_LEN};
use roomcast::protocol::{Codec, Data, ErrorCode, ReqId, ServerEvent};
use serde_json::{Map, Number, Value};

/// The stack of a tokio worker thread, where the server decodes frames.
const WORKER_STACK: usize = 2 << 20;

/// Feeds bytes to every decoder a server or client uses. Only a panic or a
/// stack overflow can fail this; both results are fine.
fn decode_everything(bytes: &[u8]) {
    for codec in Codec::ALL {
        match codec.decode_request(bytes) {
            Ok(request) => {
                if let Some(ReqId::Str(s)) = &request.id {
                    assert!(s.len() <= MAX_REQ_ID_LEN);
                }
            }
            // Building the error event must not panic either.
            Err(e) => drop(e.into_rejected()),
        }
        let _ = codec.decode::<ServerEvent<'static>>(bytes);
        let _ = codec.decode::<Value>(bytes);
    }
}

fn arb_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<u64>().prop_map(Number::from),
        any::<i64>().prop_map(Number::from),
        // Finite floats only: JSON has no NaN or infinity.
        any::<f64>().prop_filter_map("finite", Number::from_f64),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number().prop_map(Value::Number),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::Array),
            btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn value_depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn arb_req_id() -> impl Strategy<Value = ReqId> {
    prop_oneof![
        any::<u64>().prop_map(ReqId::Num),
        "\\PC{0,16}".prop_map(ReqId::Str),
    ]
}

fn arb_op() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["join", "leave", "publish", "send", "presence", "ping"])
            .prop_map(str::to_owned),
        any::<String>(),
    ]
}

/// Any frame the types can hold, except `data: null`, which decodes as an
/// absent `data` (the two mean the same on the wire).
fn arb_frame() -> impl Strategy<Value = ClientFrame> {
    (
        proptest::option::of(arb_op()),
        proptest::option::of(arb_req_id()),
        proptest::option::of(any::<String>()),
        proptest::option::of(any::<String>()),
        proptest::option::of(
            arb_value()
                .prop_filter("not null", |v| !v.is_null())
                .prop_map(Data::from),
        ),
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(op, id, room, to, data, key)| ClientFrame {
            op,
            id,
            room,
            to,
            cmd: None,
            data,
            key,
            ..ClientFrame::default()
        })
}

/// A valid frame in one codec, as bytes.
fn arb_encoded() -> impl Strategy<Value = Vec<u8>> {
    (arb_frame(), prop::sample::select(Codec::ALL.to_vec())).prop_map(|(frame, codec)| {
        codec
            .encode(&frame)
            .expect("a frame always encodes")
            .to_vec()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), 1..=u8::MAX).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Remove),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Flip(i, x) => {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        Mutation::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.insert(i, *b);
        }
        Mutation::Remove(i) => {
            let i = i.index(bytes.len());
            bytes.remove(i);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    /// Bytes that start like a frame get further into the decoders.
    #[test]
    fn arbitrary_bytes_after_a_map_header_never_panic(
        header in prop::sample::select(vec![&b"{\"op\":"[..], b"{\"data\":", b"\x85", b"\xde\x00\x05\xa2op"]),
        tail in vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = header.to_vec();
        bytes.extend(tail);
        decode_everything(&bytes);
    }

    #[test]
    fn frames_round_trip_through_both_codecs(frame in arb_frame()) {
        for codec in Codec::ALL {
            let bytes = codec.encode(&frame).expect("a frame always encodes");
            let back: ClientFrame = codec.decode(&bytes).expect("an encoded frame decodes");
            prop_assert_eq!(&back, &frame, "{:?}", codec);
            // And the request the server sees is the same from either codec.
            let request = codec.decode_request(&bytes).map_err(|e| e.into_rejected());
            let expected = frame.clone().into_request();
            prop_assert_eq!(request, expected, "{:?}", codec);
        }
    }

    /// A float reaches every subscriber exactly as its publisher sent it.
    /// Fails while serde_json lacks its `float_roundtrip` feature: its
    /// default parser can be one unit in the last place off (for example it
    /// reads -1.3536287681189533e-68 as -1.353628768118953e-68).
    #[test]
    fn json_floats_round_trip_exactly(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        let text = serde_json::to_string(&x).expect("a finite float encodes");
        let back: Value = Codec::Json.decode(text.as_bytes()).expect("a float decodes");
        prop_assert_eq!(back.as_f64(), Some(x), "{} was parsed inexactly", text);
    }

    /// Raw `data` is checked without a value tree: its depth (brackets in
    /// strings do not count) and its compact text match what a value gives.
    #[test]
    fn raw_data_depth_and_whitespace_match_a_value(value in arb_value()) {
        let pretty = serde_json::to_string_pretty(&value).expect("a value encodes");
        let data = Data::from_json(&pretty).expect("valid JSON is valid data");
        let compact = serde_json::to_string(&value).expect("a value encodes");
        prop_assert_eq!(data.json(), compact.as_str());
        prop_assert_eq!(data.depth(), value_depth(&value));
        prop_assert_eq!(data.to_value().ok(), Some(value));
    }

    #[test]
    fn mutated_frames_never_panic(
        mut bytes in arb_encoded(),
        mutations in vec(arb_mutation(), 1..4),
    ) {
        for m in &mutations {
            mutate(&mut bytes, m);
            decode_everything(&bytes);
        }
    }
}

/// The innermost value, wrapped `depth` times in arrays or objects.
fn nest_json(depth: usize, array: bool) -> String {
    let (open, close) = if array { ("[", "]") } else { (r#"{"a":"#, "}") };
    let mut s = open.repeat(depth);
    s.push('1');
    s.push_str(&close.repeat(depth));
    s
}

fn nest_msgpack(depth: usize, array: bool) -> Vec<u8> {
    let open: &[u8] = if array { b"\x91" } else { b"\x81\xa1a" };
    let mut v = open.repeat(depth);
    v.push(0x01);
    v
}

/// A frame with `deep` (already encoded) as the value of `field`.
fn frame_with(codec: Codec, field: &str, deep: &[u8]) -> Vec<u8> {
    match codec {
        Codec::Json => {
            let mut v = format!(r#"{{"op":"publish","room":"a","{field}":"#).into_bytes();
            v.extend_from_slice(deep);
            v.push(b'}');
            v
        }
        Codec::MsgPack => {
            let mut v = b"\x83\xa2op\xa7publish\xa4room\xa1a".to_vec();
            rmp::encode::write_str(&mut v, field).expect("writing to a Vec");
            v.extend_from_slice(deep);
            v
        }
    }
}

fn nest(codec: Codec, depth: usize, array: bool) -> Vec<u8> {
    match codec {
        Codec::Json => nest_json(depth, array).into_bytes(),
        Codec::MsgPack => nest_msgpack(depth, array),
    }
}

/// Runs `f` on a thread with the stack of a tokio worker, so that a stack
/// overflow shows here as it would in the server.
fn on_worker_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(WORKER_STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("the check panicked");
}

/// 10,000 levels of nesting anywhere in a frame give `bad_frame`, in both
/// codecs, without overflowing the stack.
#[test]
fn deep_nesting_is_rejected_without_stack_overflow() {
    on_worker_stack(|| {
        const DEPTH: usize = 10_000;
        for codec in Codec::ALL {
            for array in [true, false] {
                let deep = nest(codec, DEPTH, array);
                let mut inputs = vec![("top level", deep.clone())];
                for field in ["data", "id", "room", "unknown"] {
                    inputs.push((field, frame_with(codec, field, &deep)));
                }
                for (place, bytes) in inputs {
                    let what = format!("{codec:?} array={array} in {place}");
                    // serde_json skips the value of an unknown field with a
                    // loop, not recursion, and so without a depth limit: the
                    // frame is then judged on its known fields.
                    let skipped = codec == Codec::Json
                        && (place == "unknown" || (place == "top level" && !array));
                    match codec.decode_request(&bytes) {
                        Ok(_) | Err(_) if skipped => {}
                        Ok(request) => panic!("{what}: accepted as {request:?}"),
                        Err(e) => {
                            let err = e.into_rejected();
                            assert_eq!(err.code, ErrorCode::BadFrame, "{what}: {}", err.text);
                        }
                    }
                    assert!(codec.decode::<Value>(&bytes).is_err(), "{what}");
                    assert!(
                        codec.decode::<ServerEvent<'static>>(&bytes).is_err(),
                        "{what}"
                    );
                }
            }
        }
    });
}

/// Both codecs draw the line at the same depth: a frame may nest
/// `MAX_DEPTH - 1` arrays and objects, its own object included.
#[test]
fn both_codecs_have_the_same_nesting_limit() {
    on_worker_stack(|| {
        for codec in Codec::ALL {
            for array in [true, false] {
                // The frame's object is one level, `data` the rest.
                let ok = frame_with(codec, "data", &nest(codec, MAX_DEPTH - 2, array));
                let too_deep = frame_with(codec, "data", &nest(codec, MAX_DEPTH - 1, array));
                let request = codec.decode_request(&ok);
                assert!(request.is_ok(), "{codec:?} array={array}: {request:?}");
                let err = codec.decode_request(&too_deep).expect_err("too deep");
                assert_eq!(err.into_rejected().code, ErrorCode::BadFrame);
            }
        }
    });
}

/// Events at the nesting limit decode on a worker's stack (clients use the
/// same decoder).
#[test]
fn deepest_events_decode_on_a_worker_stack() {
    on_worker_stack(|| {
        let data: Value = serde_json::from_str(&nest_json(MAX_DEPTH - 2, true)).expect("JSON");
        let ev = ServerEvent::Message {
            room: "a".into(),
            from: "u".into(),
            data: std::borrow::Cow::Owned(Data::from(data)),
            ts: 1,
            mid: "m".into(),
            offset: None,
            epoch: None,
            key: Some("pos:1".into()),
        };
        for codec in Codec::ALL {
            let bytes = codec.encode(&ev).expect("encodes");
            let back: ServerEvent<'static> = codec.decode(&bytes).expect("decodes");
            assert_eq!(back, ev, "{codec:?}");
        }
    });
}

/// Things the protocol rejects that serde alone would accept.
#[test]
fn frames_must_be_exactly_one_object() {
    let cases: [(Codec, &[u8]); 6] = [
        (Codec::Json, br#"["ping", 1]"#),
        (Codec::MsgPack, b"\x92\xa4ping\x01"),
        (Codec::Json, br#"{"op":"ping"} {"op":"ping"}"#),
        (Codec::MsgPack, b"\x81\xa2op\xa4ping\x81\xa2op\xa4ping"),
        (Codec::Json, b""),
        (Codec::MsgPack, b""),
    ];
    for (codec, bytes) in cases {
        let err = codec.decode_request(bytes).expect_err("rejected");
        assert_eq!(err.into_rejected().code, ErrorCode::BadFrame, "{bytes:?}");
    }
    // Leading whitespace before a JSON object is fine.
    assert!(
        Codec::Json
            .decode_request(b" \r\n\t{\"op\":\"ping\"}")
            .is_ok()
    );
}

/// MessagePack types that JSON lacks are rejected in `data`.
#[test]
fn msgpack_bin_and_ext_in_data_are_bad_frames() {
    let prefix = b"\x83\xa2op\xa7publish\xa4room\xa1a\xa4data";
    for value in [&b"\xc4\x02ab"[..], b"\xd4\x01\x02", b"\x81\x01\x02"] {
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(value);
        let err = Codec::MsgPack.decode_request(&bytes).expect_err("rejected");
        assert_eq!(err.into_rejected().code, ErrorCode::BadFrame, "{value:?}");
    }
}

/// Error texts are cut to a bounded length on a character boundary, even
/// when they quote what the client sent.
#[test]
fn long_non_ascii_input_in_error_texts_does_not_panic() {
    for n in 0..8 {
        let op = format!("{}{}", "a".repeat(28 + n), "é".repeat(40));
        let frame = ClientFrame::new(&op).id(1);
        for codec in Codec::ALL {
            let bytes = codec.encode(&frame).expect("encodes");
            let err = codec.decode_request(&bytes).expect_err("unknown op");
            let rejected = err.into_rejected();
            assert_eq!(rejected.code, ErrorCode::UnknownOp);
            assert_eq!(rejected.id, Some(ReqId::Num(1)));
        }
    }
}

/// An id is an unsigned integer or a str and nothing else: null (JSON),
/// nil and bin (MessagePack) are refused rather than taken as no id or
/// turned into another type, so a client never waits for an answer whose
/// id it cannot match.
#[test]
fn ids_of_other_types_are_bad_frames_without_id() {
    // Each case with a part of the error text the client sees.
    let cases: [(Codec, &[u8], &str); 8] = [
        (Codec::Json, br#"{"op":"ping","id":null}"#, "leave `id` out"),
        (
            Codec::Json,
            br#"{"op":"join","id":null,"room":"lobby"}"#,
            "leave `id` out",
        ),
        (Codec::Json, br#"{"op":"ping","id":-1}"#, "unsigned integer"),
        (
            Codec::Json,
            br#"{"op":"ping","id":1.5}"#,
            "unsigned integer",
        ),
        (
            Codec::MsgPack,
            b"\x82\xa2op\xa4ping\xa2id\xc0",
            "leave `id` out",
        ),
        (
            Codec::MsgPack,
            b"\x83\xa2op\xa4join\xa2id\xc0\xa4room\xa5lobby",
            "leave `id` out",
        ),
        (
            Codec::MsgPack,
            b"\x82\xa2op\xa4ping\xa2id\xc4\x03p-5",
            "send it as str",
        ),
        (
            Codec::MsgPack,
            b"\x82\xa2op\xa4ping\xa2id\xd4\x01\x02",
            "id",
        ),
    ];
    let mut accepted = Vec::new();
    for (codec, bytes, text) in cases {
        let rejected = match codec.decode_request(bytes) {
            Ok(request) => {
                accepted.push(format!("{codec:?} {}: {request:?}", shown(bytes)));
                continue;
            }
            Err(e) => e.into_rejected(),
        };
        assert_eq!(rejected.code, ErrorCode::BadFrame, "{}", shown(bytes));
        assert_eq!(rejected.id, None, "{}", shown(bytes));
        assert!(rejected.text.contains(text), "{}", rejected.text);
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
}

/// Bytes as text when they are UTF-8, else as hex.
fn shown(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap_or_else(|_| hex::encode(bytes))
}

/// An id is echoed in the type it came in, whatever MessagePack width
/// carried it: an int stays an integer, a str stays a string.
#[test]
fn ids_keep_their_type() {
    let cases: [(&[u8], ReqId); 5] = [
        (b"\x82\xa2op\xa4ping\xa2id\x05", ReqId::Num(5)),
        (b"\x82\xa2op\xa4ping\xa2id\xd0\x05", ReqId::Num(5)),
        (b"\x82\xa2op\xa4ping\xa2id\xcd\x01\x00", ReqId::Num(256)),
        (b"\x82\xa2op\xa4ping\xa2id\xa15", ReqId::Str("5".into())),
        (b"\x82\xa2op\xa4ping\xa2id\xd9\x015", ReqId::Str("5".into())),
    ];
    for (bytes, want) in cases {
        let request = Codec::MsgPack.decode_request(bytes).expect("accepted");
        assert_eq!(request.id.as_ref(), Some(&want), "{bytes:?}");
        let pong = ServerEvent::Pong {
            id: request.id.as_ref().map(std::borrow::Cow::Borrowed),
        };
        let encoded = Codec::MsgPack.encode(&pong).expect("encodes");
        let back: serde_json::Value = Codec::MsgPack.decode(&encoded).expect("decodes");
        let want_json = match want {
            ReqId::Num(n) => serde_json::json!(n),
            ReqId::Str(s) => serde_json::json!(s),
        };
        assert_eq!(back["id"], want_json, "{bytes:?}");
    }
    for (bytes, want) in [
        (&br#"{"op":"ping","id":5}"#[..], ReqId::Num(5)),
        (br#"{"op":"ping","id":"5"}"#, ReqId::Str("5".into())),
    ] {
        let request = Codec::Json.decode_request(bytes).expect("accepted");
        assert_eq!(request.id, Some(want));
    }
}
