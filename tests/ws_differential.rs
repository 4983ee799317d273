//! Differential test of the server's frame parser (`roomcast::ws::Parser`)
//! against tungstenite's server side, which it replaced: the same byte
//! streams, fed in the same chunks, must give the same messages and end
//! in the same error class (protocol error, invalid UTF-8, too big).
//!
//! Streams are valid frame sequences (fragments, interleaved control
//! frames, close frames with edge-case codes, text split inside code
//! points), then mutated: flipped bits, truncation, splices, noise.
//!
//! Where the two legitimately differ, the difference is named in
//! [`Difference`]; everything else must agree exactly:
//! - `FailFast`: our parser fails on a frame's header (reserved bits,
//!   unmasked, bad control frame, bad fragment sequence, too big) while
//!   tungstenite waits for the payload first (it fails only reserved
//!   opcodes and its frame size limit on the header). Checked by completing
//!   the stream with padding: tungstenite must then fail the same way.
//! - `FrameCapFirst`: tungstenite checks its frame size limit on the
//!   header, before the header's other faults; we report the protocol
//!   fault (1002) where it reports the size (1009). Both fail the frame.
//! - `Code1014`: close code 1014 (Bad Gateway) is registered with IANA
//!   and may be sent; tungstenite refuses it as a protocol error. We
//!   follow the registry (RFC 6455 7.4.2).

use std::collections::VecDeque;
use std::io::{self, Read, Write};

use proptest::prelude::*;
use roomcast::ws::{FrameError, Incoming, Parser};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error, Message};

/// tungstenite's frame size limit here: it reserves a frame's whole
/// declared length, so it needs one. Above every message limit tested.
const FRAME_CAP: usize = 1 << 17;

/// What a parser made of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// No error; possibly waiting for more bytes.
    Open,
    /// A close frame arrived; nothing after it is read.
    Closed,
    Protocol,
    Utf8,
    TooBig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    msgs: Vec<Msg>,
    end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Difference {
    FailFast,
    FrameCapFirst,
    Code1014,
}

fn ours(stream: &[u8], max: usize, chunk: usize) -> Outcome {
    let mut p = Parser::new(max);
    let mut out = VecDeque::new();
    let mut end = End::Open;
    for c in stream.chunks(chunk.max(1)) {
        if let Err(e) = p.feed(c, &mut out) {
            end = match e {
                FrameError::Protocol(_) => End::Protocol,
                FrameError::InvalidUtf8 => End::Utf8,
                FrameError::TooBig => End::TooBig,
            };
            break;
        }
        if out.iter().any(|m| matches!(m, Incoming::Close(_))) {
            break;
        }
    }
    let mut msgs = Vec::new();
    for m in out {
        let closing = matches!(m, Incoming::Close(_));
        msgs.push(match m {
            Incoming::Text(b) => Msg::Text(b),
            Incoming::Binary(b) => Msg::Binary(b),
            Incoming::Ping(b) => Msg::Ping(b),
            Incoming::Pong => Msg::Pong,
            Incoming::Close(c) => Msg::Close(c),
        });
        // Frames after a close are not read (the connection ends there).
        if closing {
            return Outcome {
                msgs,
                end: End::Closed,
            };
        }
    }
    Outcome { msgs, end }
}

/// An in-memory socket: reads give at most `chunk` bytes, then
/// `WouldBlock` once everything was read (not EOF, which tungstenite
/// reports as a reset); writes are dropped.
struct Mem {
    input: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.input.len() - self.at;
        if left == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = left.min(buf.len()).min(self.chunk);
        buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Mem {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn theirs(stream: &[u8], max: usize, chunk: usize) -> Outcome {
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(FRAME_CAP));
    let mem = Mem {
        input: stream.to_vec(),
        at: 0,
        chunk: chunk.max(1),
    };
    let mut ws = WebSocket::from_raw_socket(mem, Role::Server, Some(config));
    let mut msgs = Vec::new();
    loop {
        let end = match ws.read() {
            Ok(Message::Text(t)) => {
                msgs.push(Msg::Text(t.as_bytes().to_vec()));
                continue;
            }
            Ok(Message::Binary(b)) => {
                msgs.push(Msg::Binary(b.to_vec()));
                continue;
            }
            Ok(Message::Ping(b)) => {
                msgs.push(Msg::Ping(b.to_vec()));
                continue;
            }
            Ok(Message::Pong(_)) => {
                msgs.push(Msg::Pong);
                continue;
            }
            Ok(Message::Close(None)) => {
                msgs.push(Msg::Close(None));
                End::Closed
            }
            // tungstenite answers a close code it does not allow by
            // replacing it with this one; the frame was a protocol error.
            Ok(Message::Close(Some(cf)))
                if cf.code == CloseCode::Protocol && cf.reason.as_str() == "Protocol violation" =>
            {
                End::Protocol
            }
            Ok(Message::Close(Some(cf))) => {
                msgs.push(Msg::Close(Some(u16::from(cf.code))));
                End::Closed
            }
            Ok(Message::Frame(_)) => unreachable!("raw frames are not read"),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => End::Open,
            Err(Error::Protocol(_)) => End::Protocol,
            Err(Error::Utf8(_)) => End::Utf8,
            Err(Error::Capacity(_)) => End::TooBig,
            Err(e) => panic!("unexpected tungstenite error: {e}"),
        };
        return Outcome { msgs, end };
    }
}

/// The first frame header in `stream` that declares more than
/// [`FRAME_CAP`] bytes, walking frame by frame from the start.
fn declares_over_cap(stream: &[u8]) -> bool {
    let mut at = 0;
    while let (Some(&_b0), Some(&b1)) = (stream.get(at), stream.get(at + 1)) {
        let (len, head) = match b1 & 0x7f {
            126 => match stream.get(at + 2..at + 4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return false,
            },
            127 => match stream.get(at + 2..at + 10) {
                Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
                None => return false,
            },
            n => (u64::from(n), 2),
        };
        if len > FRAME_CAP as u64 {
            return true;
        }
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        at += head + mask + len as usize;
    }
    false
}

/// Compares the two parsers on `stream`: `Ok(None)` when they agree
/// exactly, `Ok(Some(d))` for a documented difference, `Err` otherwise.
fn compare(stream: &[u8], max: usize, chunk: usize) -> Result<Option<Difference>, String> {
    let a = ours(stream, max, chunk);
    let b = theirs(stream, max, chunk);
    if a == b {
        return Ok(None);
    }
    let report = || format!("ours {a:?}\ntheirs {b:?}\nstream {stream:02x?}");
    // Close code 1014.
    if b.end == End::Protocol
        && a.end == End::Closed
        && a.msgs.last() == Some(&Msg::Close(Some(1014)))
        && a.msgs[..a.msgs.len() - 1] == b.msgs[..]
    {
        return Ok(Some(Difference::Code1014));
    }
    if a.msgs != b.msgs {
        return Err(format!("messages differ\n{}", report()));
    }
    match (a.end, b.end) {
        (End::Protocol, End::TooBig) if declares_over_cap(stream) => {
            Ok(Some(Difference::FrameCapFirst))
        }
        (End::Protocol | End::Utf8 | End::TooBig, End::Open) => {
            // We failed on a header whose frame is not complete yet: with
            // the frame completed, tungstenite must fail it the same way.
            let padded = [stream, &vec![0u8; FRAME_CAP + 16]].concat();
            let c = theirs(&padded, max, 4096);
            let same = c.end == a.end || (c.end == End::Open && a.end == End::TooBig);
            let cap_first =
                a.end == End::Protocol && c.end == End::TooBig && declares_over_cap(&padded);
            if c.msgs == a.msgs && same {
                Ok(Some(Difference::FailFast))
            } else if c.msgs == a.msgs && cap_first {
                Ok(Some(Difference::FrameCapFirst))
            } else {
                Err(format!(
                    "fail-fast not confirmed: padded {c:?}\n{}",
                    report()
                ))
            }
        }
        _ => Err(format!("ends differ\n{}", report())),
    }
}

// ------------------------------------------------------------ streams

/// One frame to build.
#[derive(Debug, Clone)]
struct Spec {
    fin: bool,
    rsv: u8,
    op: u8,
    masked: bool,
    mask: [u8; 4],
    payload: Vec<u8>,
    /// Length field in the 16- or 64-bit form even when shorter fits.
    long_len: bool,
}

fn build(s: &Spec) -> Vec<u8> {
    let mut f = vec![if s.fin { 0x80 } else { 0 } | (s.rsv & 7) << 4 | (s.op & 0x0f)];
    let m = if s.masked { 0x80 } else { 0 };
    let n = s.payload.len();
    if n < 126 && !s.long_len {
        f.push(m | n as u8);
    } else if n <= 65535 {
        f.push(m | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(m | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    if s.masked {
        f.extend_from_slice(&s.mask);
        f.extend(s.payload.iter().enumerate().map(|(i, b)| b ^ s.mask[i & 3]));
    } else {
        f.extend_from_slice(&s.payload);
    }
    f
}

fn valid_frame(fin: bool, op: u8, payload: Vec<u8>, mask: [u8; 4]) -> Spec {
    Spec {
        fin,
        rsv: 0,
        op,
        masked: true,
        mask,
        payload,
        long_len: false,
    }
}

/// Text with multi-byte characters (2, 3 and 4 bytes), or raw bytes.
fn text_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z{}\":é€𝄞κόσμε]{0,40}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..20),
        1 => prop::sample::select(vec![
            vec![0xed, 0xa0, 0x80],
            vec![0xf4, 0x90, 0x80, 0x80],
            vec![0xc0, 0xaf],
            vec![0xe2, 0x82],
            vec![0xef, 0xbf, 0xbe],
            vec![0xf4, 0x8f, 0xbf, 0xbf],
        ]),
    ]
}

fn close_payload() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![
        prop::sample::select(vec![
            0u16, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1010, 1011, 1012, 1013,
            1014, 1015, 1016, 2999, 3000, 4999, 5000, 65535,
        ]),
        any::<u16>(),
    ];
    prop_oneof![
        1 => Just(Vec::new()),
        1 => any::<u8>().prop_map(|b| vec![b]),
        6 => (code, text_payload()).prop_map(|(c, mut r)| {
            r.truncate(123);
            [&c.to_be_bytes()[..], &r].concat()
        }),
    ]
}

/// One message as frames: a whole frame, or fragments with control
/// frames between them.
fn message() -> impl Strategy<Value = Vec<Spec>> {
    let data = prop_oneof![
        (Just(1u8), text_payload()),
        (
            Just(2u8),
            prop_oneof![
                4 => prop::collection::vec(any::<u8>(), 0..64),
                1 => (100usize..300).prop_map(|n| vec![0x5a; n]),
                1 => prop::sample::select(vec![125usize, 126, 127, 65535, 65536])
                    .prop_map(|n| vec![7; n]),
            ]
        ),
    ];
    let control = prop_oneof![
        (Just(0x9u8), prop::collection::vec(any::<u8>(), 0..8)),
        (Just(0xAu8), prop::collection::vec(any::<u8>(), 0..8)),
    ];
    (
        data,
        prop::collection::vec(0usize..64, 0..4),
        prop::collection::vec(control, 0..3),
        any::<[u8; 4]>(),
        any::<bool>(),
    )
        .prop_map(|((op, payload), mut cuts, controls, mask, long_len)| {
            cuts.iter_mut().for_each(|c| *c = (*c).min(payload.len()));
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut from = 0;
            for c in cuts {
                parts.push(payload[from..c].to_vec());
                from = c;
            }
            parts.push(payload[from..].to_vec());
            let last = parts.len() - 1;
            let mut frames = Vec::new();
            for (i, p) in parts.into_iter().enumerate() {
                let mut f = valid_frame(i == last, if i == 0 { op } else { 0 }, p, mask);
                f.long_len = long_len && i == 0;
                frames.push(f);
                if let Some((cop, cp)) = controls.get(i) {
                    frames.push(valid_frame(true, *cop, cp.clone(), mask));
                }
            }
            frames
        })
}

fn valid_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(message(), 0..6),
        prop::option::weighted(0.3, close_payload()),
    )
        .prop_map(|(msgs, close)| {
            let mut out: Vec<u8> = msgs.iter().flatten().flat_map(build).collect();
            if let Some(p) = close {
                out.extend(build(&valid_frame(true, 0x8, p, [1, 2, 3, 4])));
            }
            out
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Duplicate(usize, usize),
    /// A header byte set to a value of interest (reserved bits, opcodes,
    /// the mask bit, length forms).
    SetByte(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<usize>(), 1usize..10).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        2 => (
            any::<usize>(),
            prop::sample::select(vec![
                0x00u8, 0x01, 0x02, 0x03, 0x08, 0x09, 0x0a, 0x0b, 0x81, 0x82, 0x88, 0x89, 0x8a,
                0xc1, 0xa1, 0x91, 0x7e, 0x7f, 0xfe, 0xff, 0x80, 0x00
            ])
        )
            .prop_map(|(i, b)| Mutation::SetByte(i, b)),
    ]
}

fn mutate(mut s: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if s.is_empty() {
            break;
        }
        let at = |i: usize, s: &Vec<u8>| i % s.len();
        match m {
            Mutation::FlipBit(i, b) => {
                let i = at(*i, &s);
                s[i] ^= 1 << b;
            }
            Mutation::Truncate(i) => {
                let i = at(*i, &s);
                s.truncate(i);
            }
            Mutation::Insert(i, bytes) => {
                let i = at(*i, &s);
                s.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let i = at(*i, &s);
                let end = (i + n).min(s.len());
                s.drain(i..end);
            }
            Mutation::Duplicate(i, n) => {
                let i = at(*i, &s);
                let end = (i + n).min(s.len());
                let copy = s[i..end].to_vec();
                s.splice(end..end, copy);
            }
            Mutation::SetByte(i, b) => {
                let i = at(*i, &s);
                s[i] = *b;
            }
        }
    }
    s
}

fn check(stream: &[u8], max: usize, chunk: usize) -> Result<(), TestCaseError> {
    match compare(stream, max, chunk) {
        Ok(_) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!(
            "max {max}, chunk {chunk}: {e}"
        ))),
    }
}

fn limits() -> impl Strategy<Value = (usize, usize)> {
    (
        prop::sample::select(vec![125usize, 200, 1024, 70_000]),
        prop_oneof![Just(1usize), 1usize..16, Just(4096)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn valid_streams_agree(stream in valid_stream(), (max, chunk) in limits()) {
        check(&stream, max, chunk)?;
    }

    #[test]
    fn mutated_streams_agree(
        stream in valid_stream(),
        muts in prop::collection::vec(mutation(), 1..4),
        (max, chunk) in limits(),
    ) {
        check(&mutate(stream, &muts), max, chunk)?;
    }

    #[test]
    fn spliced_streams_agree(
        a in valid_stream(),
        b in valid_stream(),
        cut_a in any::<usize>(),
        cut_b in any::<usize>(),
        (max, chunk) in limits(),
    ) {
        let ca = if a.is_empty() { 0 } else { cut_a % a.len() };
        let cb = if b.is_empty() { 0 } else { cut_b % b.len() };
        let stream = [&a[..ca], &b[cb..]].concat();
        check(&stream, max, chunk)?;
    }

    #[test]
    fn noise_agrees(
        stream in prop::collection::vec(any::<u8>(), 0..200),
        (max, chunk) in limits(),
    ) {
        check(&stream, max, chunk)?;
    }
}

/// Every documented difference does occur as described, and nothing else
/// differs, on fixed streams.
#[test]
fn documented_differences() {
    let mask = [9, 8, 7, 6];
    let close = |code: u16| build(&valid_frame(true, 0x8, code.to_be_bytes().to_vec(), mask));
    assert_eq!(
        compare(&close(1014), 1024, 4096),
        Ok(Some(Difference::Code1014))
    );
    for code in [1012, 1013, 1000, 4999] {
        assert_eq!(compare(&close(code), 1024, 4096), Ok(None), "{code}");
    }
    // Reserved bits, header only: we fail at once, tungstenite after the
    // payload.
    let mut rsv = valid_frame(true, 0x1, vec![b'a'; 50], mask);
    rsv.rsv = 2;
    let rsv = build(&rsv);
    assert_eq!(
        compare(&rsv[..6], 1024, 4096),
        Ok(Some(Difference::FailFast))
    );
    assert_eq!(compare(&rsv, 1024, 4096), Ok(None));
    // Reserved bits on a frame declaring more than tungstenite's cap.
    let mut huge = vec![0xc2, 0xff];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&mask);
    assert_eq!(
        compare(&huge, 1024, 4096),
        Ok(Some(Difference::FrameCapFirst))
    );
    // Invalid text in a first fragment: both fail at that fragment.
    let frag = build(&valid_frame(false, 0x1, vec![b'a', 0xc3, 0x28], mask));
    assert_eq!(compare(&frag, 1024, 4096), Ok(None));
}

/// The generated streams reach every outcome and every documented
/// difference, so the properties above are not vacuous.
#[test]
fn generators_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeMap;

    let mut runner = TestRunner::deterministic();
    let strategy = (
        valid_stream(),
        prop::collection::vec(mutation(), 0..4),
        limits(),
    );
    let mut ends: BTreeMap<String, usize> = BTreeMap::new();
    let mut diffs: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..2000 {
        let (stream, muts, (max, chunk)) =
            strategy.new_tree(&mut runner).expect("generate").current();
        let stream = mutate(stream, &muts);
        *ends
            .entry(format!("{:?}", ours(&stream, max, chunk).end))
            .or_default() += 1;
        match compare(&stream, max, chunk) {
            Ok(Some(d)) => *diffs.entry(format!("{d:?}")).or_default() += 1,
            Ok(None) => *diffs.entry("Same".into()).or_default() += 1,
            Err(e) => panic!("{e}"),
        }
    }
    println!("ends {ends:?}\ndifferences {diffs:?}");
    for end in ["Open", "Closed", "Protocol", "Utf8", "TooBig"] {
        assert!(ends.contains_key(end), "no stream ends {end}: {ends:?}");
    }
    for d in ["Same", "FailFast", "Code1014"] {
        assert!(diffs.contains_key(d), "no stream shows {d}: {diffs:?}");
    }
}
