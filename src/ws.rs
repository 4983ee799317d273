//! WebSocket framing (RFC 6455), server side, with no buffers of its own
//! while a connection is idle.
//!
//! Outbound frames are built once per event and codec: server frames are
//! unmasked, so the same bytes (header included) go to every recipient.
//! Inbound frames are parsed incrementally; only an incomplete frame or an
//! unfinished fragmented message is kept between reads.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::CloseCode;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest payload a control frame may carry.
const CONTROL_MAX: usize = 125;

/// A partial-frame buffer larger than this is freed once it is empty, so
/// a connection that once received a big frame does not keep its buffer.
const KEEP_BUFFER: usize = 1024;

/// An empty ping, the keepalive probe.
pub const PING: Bytes = Bytes::from_static(&[0x80 | OP_PING, 0]);

/// Builds a complete, unmasked, final frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    frame_with(opcode, payload.len(), |out| out.put_slice(payload))
}

/// A complete unmasked frame whose `len` payload bytes `fill` appends: the
/// buffer is sized once and the payload copied once.
pub fn frame_with(opcode: u8, len: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(len) + len);
    out.put_u8(0x80 | opcode);
    match len {
        n if n < 126 => out.put_u8(n as u8),
        n if n <= u16::MAX as usize => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    fill(&mut out);
    debug_assert_eq!(
        out.len(),
        header_len(len) + len,
        "frame length as announced"
    );
    out.freeze()
}

/// A close frame with a status code and a reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // Control frames carry at most 125 bytes.
    let room = CONTROL_MAX - 2;
    let mut end = reason.len().min(room);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &payload)
}

fn header_len(payload: usize) -> usize {
    match payload {
        n if n < 126 => 2,
        n if n <= u16::MAX as usize => 4,
        _ => 10,
    }
}

/// The opcode of a frame built by [`frame`].
pub fn opcode(frame: &[u8]) -> u8 {
    frame.first().map_or(0, |b| b & 0x0F)
}

/// The payload of a frame built by [`frame`].
pub fn payload(frame: &[u8]) -> &[u8] {
    let start = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(start..).unwrap_or(&[])
}

/// One complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A text message, already checked to be UTF-8.
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The client's close code, if it sent one.
    Close(Option<u16>),
}

/// Why the client's bytes cannot be read as WebSocket frames; each maps to
/// the close code the connection ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// 1002: not a valid frame sequence (unmasked, reserved bits or
    /// opcodes, a fragmented or oversized control frame, a stray
    /// continuation).
    Protocol(&'static str),
    /// 1007: a text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// 1009: a message larger than the limit.
    TooBig,
}

impl FrameError {
    pub fn close_code(self) -> CloseCode {
        match self {
            FrameError::Protocol(_) => CloseCode::ProtocolError,
            FrameError::InvalidUtf8 => CloseCode::InvalidPayload,
            FrameError::TooBig => CloseCode::MessageTooBig,
        }
    }
}

/// A fragmented message so far: its opcode, its payload, and for text how
/// much of the payload is known to be UTF-8, so that invalid text fails at
/// the fragment that holds it rather than at the end of the message.
#[derive(Debug)]
struct Fragments {
    op: u8,
    body: Vec<u8>,
    checked: usize,
}

impl Fragments {
    /// Checks the text received since the last call; a code point cut at
    /// the end is left for the next fragment.
    fn check_utf8(&mut self) -> Result<(), FrameError> {
        if self.op != OP_TEXT {
            return Ok(());
        }
        match std::str::from_utf8(&self.body[self.checked..]) {
            Ok(_) => self.checked = self.body.len(),
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(FrameError::InvalidUtf8),
        }
        Ok(())
    }
}

/// The incremental frame parser of one connection.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of a frame not yet complete; empty between frames.
    partial: Vec<u8>,
    /// A fragmented message so far.
    message: Option<Fragments>,
    /// The largest message accepted, in bytes.
    max: usize,
}

impl Parser {
    pub fn new(max_message: usize) -> Parser {
        Parser {
            partial: Vec::new(),
            message: None,
            max: max_message,
        }
    }

    /// Parses `input` after whatever was left over from the last call,
    /// appending each complete message to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut VecDeque<Incoming>) -> Result<(), FrameError> {
        if self.partial.is_empty() {
            let used = self.parse(input, out)?;
            self.partial.extend_from_slice(&input[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(input);
            let used = self.parse(&buf, out)?;
            buf.drain(..used);
            self.partial = buf;
        }
        if self.partial.is_empty() && self.partial.capacity() > KEEP_BUFFER {
            self.partial = Vec::new();
        }
        Ok(())
    }

    /// Parses every complete frame at the start of `buf`; returns the bytes used.
    fn parse(&mut self, buf: &[u8], out: &mut VecDeque<Incoming>) -> Result<usize, FrameError> {
        let mut used = 0;
        while let Some(n) = self.parse_one(&buf[used..], out)? {
            used += n;
        }
        Ok(used)
    }

    /// Parses one frame; `None` when `buf` does not hold a whole frame yet.
    fn parse_one(
        &mut self,
        buf: &[u8],
        out: &mut VecDeque<Incoming>,
    ) -> Result<Option<usize>, FrameError> {
        let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let op = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let control = op & 0x08 != 0;
        match op {
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(FrameError::Protocol("reserved opcode")),
        }
        let (len, mut at) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(b) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    (u64::from_be_bytes(a), 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > CONTROL_MAX as u64) {
            return Err(FrameError::Protocol("bad control frame"));
        }
        // Sequence faults are known from the header: they fail before the
        // payload arrives, and before the size check (a new message is not
        // part of the unfinished one).
        match (op, self.message.is_some()) {
            (OP_CONTINUATION, false) => {
                return Err(FrameError::Protocol("continuation without a message"));
            }
            (OP_TEXT | OP_BINARY, true) => {
                return Err(FrameError::Protocol("new message inside a fragmented one"));
            }
            _ => {}
        }
        let so_far = self.message.as_ref().map_or(0, |m| m.body.len());
        if !control && len.saturating_add(so_far as u64) > self.max as u64 {
            return Err(FrameError::TooBig);
        }
        let len = len as usize;
        let Some(mask) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        at += 4;
        let Some(masked) = buf.get(at..at + len) else {
            return Ok(None);
        };
        let used = at + len;
        match op {
            OP_PING => out.push_back(Incoming::Ping(unmask(masked, mask, Vec::new()))),
            OP_PONG => out.push_back(Incoming::Pong),
            OP_CLOSE => out.push_back(close(&unmask(masked, mask, Vec::new()))?),
            OP_CONTINUATION => {
                let Some(mut m) = self.message.take() else {
                    return Err(FrameError::Protocol("continuation without a message"));
                };
                m.body = unmask(masked, mask, m.body);
                m.check_utf8()?;
                if fin {
                    // The text was checked fragment by fragment; only a
                    // code point cut off at the end is left.
                    if m.op == OP_TEXT && m.checked != m.body.len() {
                        return Err(FrameError::InvalidUtf8);
                    }
                    out.push_back(if m.op == OP_TEXT {
                        Incoming::Text(m.body)
                    } else {
                        Incoming::Binary(m.body)
                    });
                } else {
                    self.message = Some(m);
                }
            }
            _ => {
                let body = unmask(masked, mask, Vec::new());
                if fin {
                    out.push_back(complete(op, body)?);
                } else {
                    let mut m = Fragments {
                        op,
                        body,
                        checked: 0,
                    };
                    m.check_utf8()?;
                    self.message = Some(m);
                }
            }
        }
        Ok(Some(used))
    }
}

/// Appends the unmasked payload to `into`.
fn unmask(masked: &[u8], mask: [u8; 4], mut into: Vec<u8>) -> Vec<u8> {
    into.reserve_exact(masked.len());
    into.extend(masked.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    into
}

fn complete(op: u8, body: Vec<u8>) -> Result<Incoming, FrameError> {
    if op == OP_TEXT {
        if std::str::from_utf8(&body).is_err() {
            return Err(FrameError::InvalidUtf8);
        }
        Ok(Incoming::Text(body))
    } else {
        Ok(Incoming::Binary(body))
    }
}

fn close(payload: &[u8]) -> Result<Incoming, FrameError> {
    match payload {
        [] => Ok(Incoming::Close(None)),
        [_] => Err(FrameError::Protocol("close payload of one byte")),
        [a, b, reason @ ..] => {
            // The reason is checked before the code, as in the tungstenite
            // framing this replaced: a frame with both faults closes with
            // 1007, as it did then.
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            let code = u16::from_be_bytes([*a, *b]);
            // Registered codes an endpoint may send (1004-1006 and 1015 are
            // reserved or only for reporting), and the ranges for libraries
            // and applications.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            Ok(Incoming::Close(Some(code)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![if fin { 0x80 } else { 0 } | op];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    fn parse_all(p: &mut Parser, bytes: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut out = VecDeque::new();
        p.feed(bytes, &mut out)?;
        Ok(out.into_iter().collect())
    }

    #[test]
    fn frames_of_every_length_class_round_trip() {
        for len in [0, 1, 125, 126, 65535, 65536, 70000] {
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let f = frame(OP_BINARY, &body);
            assert_eq!(payload(&f), &body[..], "len {len}");
            assert_eq!(opcode(&f), OP_BINARY);
            let mut p = Parser::new(1 << 20);
            let got = parse_all(&mut p, &client(true, OP_BINARY, &body));
            assert_eq!(got, Ok(vec![Incoming::Binary(body.clone())]), "len {len}");
        }
    }

    #[test]
    fn a_frame_split_at_every_byte_is_parsed_once() {
        let bytes = [client(true, OP_TEXT, b"hello"), client(true, OP_PING, b"p")].concat();
        for cut in 0..bytes.len() {
            let mut p = Parser::new(1024);
            let mut out = VecDeque::new();
            p.feed(&bytes[..cut], &mut out).expect("valid frames");
            p.feed(&bytes[cut..], &mut out).expect("valid frames");
            let got: Vec<_> = out.into_iter().collect();
            assert_eq!(
                got,
                vec![
                    Incoming::Text(b"hello".to_vec()),
                    Incoming::Ping(b"p".to_vec())
                ],
                "cut at {cut}"
            );
            assert!(p.partial.is_empty());
        }
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_interleave() {
        let bytes = [
            client(false, OP_TEXT, b"he"),
            client(true, OP_PING, b""),
            client(false, OP_CONTINUATION, b"ll"),
            client(true, OP_CONTINUATION, b"o"),
        ]
        .concat();
        let mut p = Parser::new(1024);
        assert_eq!(
            parse_all(&mut p, &bytes),
            Ok(vec![
                Incoming::Ping(vec![]),
                Incoming::Text(b"hello".to_vec())
            ])
        );
    }

    #[test]
    fn bad_frames_are_refused_with_their_close_code() {
        let unmasked = [0x81, 0x01, b'a'];
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked.to_vec(), 1002),
            (client(true, 0x3, b""), 1002),
            (client(true, OP_CONTINUATION, b"x"), 1002),
            (client(false, OP_PING, b""), 1002),
            (client(true, OP_PING, &[0; 126]), 1002),
            (
                [client(false, OP_TEXT, b"a"), client(true, OP_TEXT, b"b")].concat(),
                1002,
            ),
            ([0xC1, 0x80, 0, 0, 0, 0].to_vec(), 1002),
            (client(true, OP_TEXT, &[0xff, 0xfe]), 1007),
            (client(true, OP_CLOSE, &[0x03]), 1002),
            (client(true, OP_CLOSE, &[0x03, 0xe7]), 1002),
            (client(true, OP_TEXT, &[b'x'; 2000]), 1009),
            (
                [
                    client(false, OP_TEXT, &[b'x'; 1000]),
                    client(true, OP_CONTINUATION, &[b'x'; 100]),
                ]
                .concat(),
                1009,
            ),
        ];
        for (bytes, code) in cases {
            let mut p = Parser::new(1024);
            let got = parse_all(&mut p, &bytes).map_err(|e| e.close_code().code());
            assert_eq!(got, Err(code), "{bytes:02x?}");
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header_alone() {
        let mut p = Parser::new(1024);
        let header = &client(true, OP_BINARY, &[0; 4096])[..8];
        assert_eq!(parse_all(&mut p, header), Err(FrameError::TooBig));
    }

    #[test]
    fn close_frames_carry_code_and_a_bounded_reason() {
        let f = close_frame(4000, "slow consumer");
        assert_eq!(opcode(&f), OP_CLOSE);
        assert_eq!(&payload(&f)[..2], &4000u16.to_be_bytes());
        assert_eq!(&payload(&f)[2..], b"slow consumer");
        let long = "é".repeat(100);
        assert!(payload(&close_frame(1000, &long)).len() <= CONTROL_MAX);
        let mut p = Parser::new(16);
        assert_eq!(
            parse_all(&mut p, &client(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k'])),
            Ok(vec![Incoming::Close(Some(1000))])
        );
        assert_eq!(
            parse_all(&mut p, &client(true, OP_CLOSE, b"")),
            Ok(vec![Incoming::Close(None)])
        );
    }

    #[test]
    fn a_big_partial_buffer_is_freed_once_used() {
        let mut p = Parser::new(1 << 20);
        let bytes = client(true, OP_BINARY, &[7; 10_000]);
        let mut out = VecDeque::new();
        p.feed(&bytes[..5000], &mut out).expect("valid frames");
        assert!(p.partial.capacity() >= 5000);
        p.feed(&bytes[5000..], &mut out).expect("valid frames");
        assert_eq!(out.len(), 1);
        assert_eq!(p.partial.capacity(), 0);
    }

    #[test]
    fn registered_close_codes_1012_to_1014_are_accepted() {
        for code in [
            1000u16, 1003, 1007, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            let mut p = Parser::new(16);
            let got = parse_all(&mut p, &client(true, OP_CLOSE, &code.to_be_bytes()));
            assert_eq!(got, Ok(vec![Incoming::Close(Some(code))]), "{code}");
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let mut p = Parser::new(16);
            let got = parse_all(&mut p, &client(true, OP_CLOSE, &code.to_be_bytes()));
            assert_eq!(
                got,
                Err(FrameError::Protocol("invalid close code")),
                "{code}"
            );
        }
    }

    #[test]
    fn invalid_text_fails_at_the_fragment_that_holds_it() {
        // The message is not finished, but no ending can make it UTF-8.
        let mut p = Parser::new(1024);
        let first = client(false, OP_TEXT, &[b'a', 0xc3, 0x28]);
        assert_eq!(parse_all(&mut p, &first), Err(FrameError::InvalidUtf8));
        // A code point cut between fragments is fine...
        let mut p = Parser::new(1024);
        let bytes = [
            client(false, OP_TEXT, &[b'a', 0xe2]),
            client(false, OP_CONTINUATION, &[0x82]),
            client(true, OP_CONTINUATION, &[0xac, b'b']),
        ]
        .concat();
        assert_eq!(
            parse_all(&mut p, &bytes),
            Ok(vec![Incoming::Text("a\u{20ac}b".as_bytes().to_vec())])
        );
        // ...but not one left unfinished at the end of the message.
        let mut p = Parser::new(1024);
        let bytes = [
            client(false, OP_TEXT, &[b'a', 0xe2]),
            client(true, OP_CONTINUATION, &[0x82]),
        ]
        .concat();
        assert_eq!(parse_all(&mut p, &bytes), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn fragment_sequence_faults_fail_on_the_header() {
        // A new message inside a fragmented one is a protocol error even
        // when both together would exceed the limit.
        let mut p = Parser::new(1024);
        let bytes = [
            client(false, OP_TEXT, &[b'x'; 1000]),
            client(true, OP_BINARY, &[b'y'; 100]),
        ]
        .concat();
        assert_eq!(
            parse_all(&mut p, &bytes),
            Err(FrameError::Protocol("new message inside a fragmented one"))
        );
        // A continuation with nothing to continue fails before its payload.
        let mut p = Parser::new(1024);
        let header = &client(true, OP_CONTINUATION, &[0; 100])[..6];
        assert_eq!(
            parse_all(&mut p, header),
            Err(FrameError::Protocol("continuation without a message"))
        );
    }

    #[test]
    fn a_close_with_a_bad_code_and_a_bad_reason_is_invalid_utf8() {
        // As with the tungstenite framing: the reason is checked first.
        let mut p = Parser::new(16);
        let payload = [0x03, 0xe7, 0xff];
        assert_eq!(
            parse_all(&mut p, &client(true, OP_CLOSE, &payload)),
            Err(FrameError::InvalidUtf8)
        );
    }
}
