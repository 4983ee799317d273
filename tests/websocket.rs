//! The server's WebSocket framing, driven byte by byte over a raw TCP
//! socket: frames sent with the upgrade request, fragments, pings, bad
//! frames and the closing handshake.

mod common;

use std::time::Duration;

use common::{Server, token};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// A masked client frame.
fn frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x1f, 0x22, 0x83, 0x04];
    let mut f = vec![if fin { 0x80 } else { 0 } | op];
    assert!(payload.len() < 126, "test frames are short");
    f.push(0x80 | payload.len() as u8);
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// A server frame as read back: opcode and payload.
type Frame = (u8, Vec<u8>);

struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Sends the upgrade request followed by `extra` in one write, and
    /// reads up to the end of the 101 response.
    async fn open(server: &Server, extra: &[u8]) -> Raw {
        let mut tcp = TcpStream::connect(&server.addr).await.expect("connect");
        let request = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            token("raw"),
            server.addr
        );
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(extra);
        tcp.write_all(&bytes).await.expect("write");
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("server answered in time")
            .expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next server frame; `None` when the server closed the TCP connection.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[0] & 0x70, 0, "no reserved bits");
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are unmasked");
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if at > 0 && self.buf.len() >= at + len {
                    let op = self.buf[0] & 0x0f;
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((op, payload));
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// The next text frame's JSON, skipping pings.
    async fn next_event(&mut self) -> Value {
        loop {
            let (op, payload) = self.next().await.expect("an event");
            if op == 0x1 {
                return serde_json::from_slice(&payload).expect("json");
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// Reads until the close frame; returns its code.
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                None => return None,
                Some((0x8, p)) if p.len() >= 2 => return Some(u16::from_be_bytes([p[0], p[1]])),
                Some((0x8, _)) => return None,
                Some(_) => {}
            }
        }
    }
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_served() {
    let server = Server::start(&[]).await;
    let early = frame(true, 0x1, br#"{"op":"ping","id":7}"#);
    let mut raw = Raw::open(&server, &early).await;
    assert_eq!(raw.next_event().await["ev"], "welcome");
    let pong = raw.next_event().await;
    assert_eq!(pong["ev"], "pong");
    assert_eq!(pong["id"], 7);
}

#[tokio::test]
async fn a_fragmented_message_with_a_ping_inside_is_one_request() {
    let server = Server::start(&[]).await;
    let mut raw = Raw::open(&server, &[]).await;
    assert_eq!(raw.next_event().await["ev"], "welcome");
    let bytes = [
        frame(false, 0x1, br#"{"op":"pi"#),
        frame(true, 0x9, b"hey"),
        frame(false, 0x0, br#"ng","id""#),
        frame(true, 0x0, b":8}"),
    ]
    .concat();
    raw.send(&bytes).await;
    // The ping is answered with its payload, before the message completes.
    let (op, payload) = raw.next().await.expect("pong frame");
    assert_eq!((op, payload.as_slice()), (0xA, &b"hey"[..]));
    let pong = raw.next_event().await;
    assert_eq!(
        (pong["ev"].as_str(), pong["id"].as_u64()),
        (Some("pong"), Some(8))
    );
}

#[tokio::test]
async fn the_clients_close_is_echoed() {
    let server = Server::start(&[]).await;
    let mut raw = Raw::open(&server, &[]).await;
    assert_eq!(raw.next_event().await["ev"], "welcome");
    raw.send(&frame(true, 0x8, &[0x0f, 0xa0, b'b', b'y', b'e']))
        .await;
    assert_eq!(raw.close_code().await, Some(4000));
    assert_eq!(raw.next().await, None, "TCP closed after the close frame");
}

#[tokio::test]
async fn bad_frames_close_with_1002_and_1007() {
    let server = Server::start(&[]).await;
    let cases: [(Vec<u8>, u16); 4] = [
        // Unmasked.
        (vec![0x81, 0x02, b'h', b'i'], 1002),
        // A reserved opcode.
        (frame(true, 0x3, b""), 1002),
        // A continuation with no message to continue.
        (frame(true, 0x0, b"x"), 1002),
        // Text that is not UTF-8.
        (frame(true, 0x1, &[0xc3, 0x28]), 1007),
    ];
    for (bytes, code) in cases {
        let mut raw = Raw::open(&server, &[]).await;
        assert_eq!(raw.next_event().await["ev"], "welcome");
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, Some(code), "{bytes:02x?}");
    }
    // The server lives on.
    let mut raw = Raw::open(&server, &[]).await;
    assert_eq!(raw.next_event().await["ev"], "welcome");
}
