//! A message's `data`, carried as compact JSON text from the request that
//! brought it to every frame and Redis payload that carries it on.
//!
//! JSON is the form the cluster speaks (Redis channels and offline queues)
//! and the form most clients speak, so `data` is kept as the JSON text it
//! arrived in (whitespace outside strings removed) and spliced into JSON
//! output as it is: no value tree is built on the JSON path. MessagePack
//! input is read into a value once and written out as JSON; MessagePack
//! output parses the text once per encoded event (the fan-out encodes each
//! event at most once per codec).

use std::fmt;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::codec::MAX_DEPTH;

/// Deepest `data` any decoder accepts: the frame's own object is one of
/// the [`MAX_DEPTH`] - 1 levels a frame may nest.
pub const MAX_DECODED_DEPTH: usize = MAX_DEPTH - 2;

/// The `data` of a `publish` or `send`, as compact JSON text. Equality is
/// equality of that text.
#[derive(Clone)]
pub struct Data {
    json: Box<RawValue>,
    /// Nesting of arrays and objects, at most [`MAX_DECODED_DEPTH`] for data
    /// that was decoded (saturated for data built from a deeper value).
    depth: u8,
}

/// Why JSON text is not acceptable as `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataError {
    TooDeep,
    NumberOutOfRange,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::TooDeep => write!(f, "recursion limit exceeded"),
            DataError::NumberOutOfRange => write!(f, "number out of range"),
        }
    }
}

/// What one pass over valid JSON text found.
struct Scan {
    depth: usize,
    whitespace: bool,
}

/// Measures valid JSON text without recursion: the nesting depth (brackets
/// inside strings do not count), whether it has whitespace outside
/// strings, and whether every number is a finite binary64 (as a parse into
/// a value requires).
fn scan(text: &str) -> Result<Scan, DataError> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut whitespace = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string; an escaped quote does not end it.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b' ' | b'\t' | b'\n' | b'\r' => whitespace = true,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                check_number(&text[start..=i])?;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(Scan {
        depth: max,
        whitespace,
    })
}

/// Integers of 64 bits are exact; anything else must be a finite binary64.
fn check_number(n: &str) -> Result<(), DataError> {
    let integer = !n.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'));
    if integer && (n.parse::<u64>().is_ok() || n.parse::<i64>().is_ok()) {
        return Ok(());
    }
    match n.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(()),
        _ => Err(DataError::NumberOutOfRange),
    }
}

/// The text without whitespace outside strings.
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

impl Data {
    /// `null`, what a `publish` or `send` without `data` carries.
    pub fn null() -> Data {
        Data::from(&Value::Null)
    }

    /// Takes valid JSON text (as serde_json captured it) as `data`: checks
    /// its depth and numbers and removes whitespace outside strings.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Data, DataError> {
        let found = scan(raw.get())?;
        if found.depth > MAX_DECODED_DEPTH {
            return Err(DataError::TooDeep);
        }
        let json = if found.whitespace {
            // Minified valid JSON is valid JSON; the check cannot fail.
            RawValue::from_string(minify(raw.get())).unwrap_or(raw)
        } else {
            raw
        };
        Ok(Data {
            json,
            depth: found.depth as u8,
        })
    }

    /// Parses JSON text as `data`.
    pub fn from_json(text: &str) -> Result<Data, String> {
        let raw: Box<RawValue> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Data::from_raw(raw).map_err(|e| e.to_string())
    }

    /// The compact JSON text.
    pub fn json(&self) -> &str {
        self.json.get()
    }

    /// Nesting of arrays and objects (a top-level array or object is 1).
    pub fn depth(&self) -> usize {
        usize::from(self.depth)
    }

    pub fn is_null(&self) -> bool {
        self.json.get() == "null"
    }

    /// The data as a value tree (for MessagePack output and for clients).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.json.get())
    }
}

impl From<&Value> for Data {
    fn from(v: &Value) -> Data {
        // A value always serialises (its keys are strings, its numbers finite).
        let json = serde_json::value::to_raw_value(v).unwrap_or_default();
        let depth = scan(json.get()).map_or(0, |s| s.depth);
        Data {
            json,
            depth: depth.min(usize::from(u8::MAX)) as u8,
        }
    }
}

impl From<Value> for Data {
    fn from(v: Value) -> Data {
        Data::from(&v)
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        self.json.get() == other.json.get()
    }
}

impl Eq for Data {}

impl PartialEq<Value> for Data {
    fn eq(&self, other: &Value) -> bool {
        self.to_value().is_ok_and(|v| v == *other)
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Data({})", self.json.get())
    }
}

impl Serialize for Data {
    /// JSON output splices the text; MessagePack output (not human
    /// readable) writes the parsed value, in the same form as before.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.json.serialize(s)
        } else {
            self.to_value().map_err(S::Error::custom)?.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Data {
    /// From JSON: the raw text, without building a value. From MessagePack:
    /// a value (which rejects `bin`, `ext` and non-string keys, and turns
    /// NaN and infinities into null), written as JSON once.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let raw = Box::<RawValue>::deserialize(d)?;
            Data::from_raw(raw).map_err(D::Error::custom)
        } else {
            Value::deserialize(d).map(Data::from)
        }
    }
}

/// Reads `data` through a value, for places where serde buffers the input
/// (internally tagged enums such as `ServerEvent`), which hides the JSON
/// text from [`RawValue`].
pub fn deserialize_via_value<'de, 'a, D: Deserializer<'de>>(
    d: D,
) -> Result<std::borrow::Cow<'a, Data>, D::Error> {
    Value::deserialize(d).map(|v| std::borrow::Cow::Owned(Data::from(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Codec;
    use crate::protocol::message::{ClientFrame, ClientOp};
    use serde_json::json;

    fn data(text: &str) -> Data {
        Data::from_json(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert_eq!(data("1").depth(), 0);
        assert_eq!(data("[]").depth(), 1);
        assert_eq!(data(r#"{"a":[1,{"b":[]}]}"#).depth(), 4);
        assert_eq!(data(r#""[[[{{{""#).depth(), 0);
        assert_eq!(data(r#"["[[[",{"]]]":"{{"}]"#).depth(), 2);
        // An escaped quote does not end a string; an escaped backslash does
        // not escape the quote after it.
        assert_eq!(data(r#"["\"[[[", "x\\", ["\\\"]]"]]"#).depth(), 2);
        assert_eq!(data(r#"{"k\"{":"\\"}"#).depth(), 1);
        assert_eq!(data(r#""\u005b\u005b""#).depth(), 0);
        assert_eq!(data(&nested(MAX_DECODED_DEPTH)).depth(), MAX_DECODED_DEPTH);
        assert_eq!(
            Data::from_json(&nested(MAX_DECODED_DEPTH + 1)),
            Err("recursion limit exceeded".into())
        );
    }

    #[test]
    fn whitespace_outside_strings_is_removed() {
        let d = data("{ \"a b\" : [1, 2,\n\t\"  x \\\" y \"] ,\r\n \"c\":null }");
        assert_eq!(d.json(), r#"{"a b":[1,2,"  x \" y "],"c":null}"#);
        // Key order and spelling are the publisher's.
        assert_eq!(
            data(r#"{"b":1,"a":"\u00e9"}"#).json(),
            r#"{"b":1,"a":"\u00e9"}"#
        );
    }

    #[test]
    fn numbers_keep_their_text_and_out_of_range_ones_are_refused() {
        for n in [
            "18446744073709551615",
            "-9223372036854775808",
            "123456789012345678901234567890",
            "-0.25",
            "1e308",
            "1E-400",
            "4.5",
        ] {
            assert_eq!(data(n).json(), n);
        }
        for n in ["1e400", "-1e400", &"9".repeat(400)] {
            assert_eq!(Data::from_json(n), Err("number out of range".into()), "{n}");
            assert!(serde_json::from_str::<Value>(n).is_err(), "{n}");
        }
        let big = data("18446744073709551615").to_value().expect("value");
        assert_eq!(big.as_u64(), Some(u64::MAX));
        let small = data("-9223372036854775808").to_value().expect("value");
        assert_eq!(small.as_i64(), Some(i64::MIN));
    }

    fn publish(codec: Codec, data: &Data) -> Data {
        let frame = ClientFrame::new("publish").room("r").data(data.clone());
        let bytes = codec.encode(&frame).expect("encode");
        match codec.decode_request(&bytes).expect("decode").op {
            ClientOp::Publish { data, .. } => data,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_round_trips_through_both_codecs() {
        let cases = [
            r#"{"hp":-12,"name":"Goblin ⚔️","notes":{"big":18446744073709551615,"ratio":-0.25,"small":-9223372036854775808,"text":"line 1\nline 2\t\"quoted\" \\ /\u0001"},"pos":[3,4.5],"status":null,"visible":true}"#,
            r#""hello""#,
            "[1,\"two\",3.25,false,null,[],{}]",
            "1.7976931348623157e+308",
            "5e-324",
            "0.1",
        ];
        for text in cases {
            let d = data(text);
            let json = publish(Codec::Json, &d);
            assert_eq!(json.json(), text, "JSON keeps the text");
            let msgpack = publish(Codec::MsgPack, &d);
            assert_eq!(msgpack.to_value().ok(), d.to_value().ok(), "{text}");
            // Canonical text (sorted keys, serde_json's numbers) is kept
            // byte for byte through MessagePack too.
            assert_eq!(msgpack.json(), text);
        }
    }

    #[test]
    fn msgpack_floats_and_nan() {
        // A float 32 is read as the same number; NaN and infinity are null.
        let prefix = b"\x83\xa2op\xa7publish\xa4room\xa1r\xa4data";
        for (value, want) in [
            (&b"\xca\x3f\xc0\x00\x00"[..], "1.5"),
            (b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", "null"),
            (b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00", "null"),
            (
                b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
                "18446744073709551615",
            ),
        ] {
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(value);
            match Codec::MsgPack.decode_request(&bytes).expect("decode").op {
                ClientOp::Publish { data, .. } => assert_eq!(data.json(), want),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn null_and_absent_data_are_the_same() {
        for text in [
            r#"{"op":"publish","room":"r"}"#,
            r#"{"op":"publish","room":"r","data":null}"#,
            r#"{"op":"publish","room":"r","data": null }"#,
        ] {
            match Codec::Json
                .decode_request(text.as_bytes())
                .expect("decode")
                .op
            {
                ClientOp::Publish { data, .. } => {
                    assert!(data.is_null());
                    assert_eq!(data, Data::null());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn json_and_msgpack_output() {
        let d = data(r#"{"b":[1,2.5],"a":"x"}"#);
        let json = serde_json::to_string(&json!({"data": &d.to_value().expect("value")}));
        assert_eq!(json.expect("json"), r#"{"data":{"a":"x","b":[1,2.5]}}"#);
        // JSON splices the text as it is; MessagePack writes the value.
        let ev = crate::protocol::ServerEvent::Direct {
            from: "a".into(),
            data: std::borrow::Cow::Borrowed(&d),
            ts: 1,
            mid: "m".into(),
            queued: false,
        };
        let out = Codec::Json.encode(&ev).expect("json");
        assert_eq!(
            std::str::from_utf8(&out).expect("utf-8"),
            r#"{"ev":"direct","from":"a","data":{"b":[1,2.5],"a":"x"},"ts":1,"mid":"m","queued":false}"#
        );
        let out = Codec::MsgPack.encode(&ev).expect("msgpack");
        let back: crate::protocol::ServerEvent<'static> =
            Codec::MsgPack.decode(&out).expect("decode");
        match back {
            crate::protocol::ServerEvent::Direct { data, .. } => {
                assert_eq!(data.json(), r#"{"a":"x","b":[1,2.5]}"#)
            }
            other => panic!("{other:?}"),
        }
    }
}
