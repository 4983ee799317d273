//! The socket side of one connection: reading and parsing frames, and
//! writing what the outbound queue holds. One task drives both through
//! [`Socket::poll_event`], so a connection costs one task and no buffer
//! while it is idle.
//!
//! Reads go into a chunk on the stack and only an incomplete frame is kept.
//! Writes hand the queued frames (shared with every other recipient) to
//! the kernel in one vectored write, without copying them.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::handle::{ConnHandle, Outbound};
use crate::fanout;
use crate::protocol::{CloseCode, Codec};
use crate::ws::{self, FrameError, Incoming, Parser};

/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 4096;

/// Frames handed to the kernel per vectored write.
const WRITE_SLICES: usize = 64;

/// How long the close frame may take to reach the peer, and how long the
/// peer then has to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the connection task must act on next.
pub enum Event {
    /// A text or binary message from the client: a request.
    Request(Vec<u8>),
    /// Offline messages up to these sequence numbers were written.
    Written(Vec<u64>),
    /// The connection ends.
    End(Ending),
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    /// Killed by the server (slow consumer, rate abuse, keepalive, drain).
    Killed,
    /// A queued close, after everything queued before it was written.
    Queued(u16),
    /// The client sent a close frame, with this code.
    PeerClosed(Option<u16>),
    /// The client's bytes were not valid frames.
    BadFrames(FrameError),
    /// The socket closed or failed.
    Gone,
}

pub struct Socket {
    /// Shared with the handle's outbox for direct writes (see
    /// [`super::handle::Outbox`]).
    stream: Arc<TcpStream>,
    parser: Parser,
    incoming: VecDeque<Incoming>,
    /// Scratch for taking the outbound queue in one lock.
    items: VecDeque<Outbound>,
    /// Frames being written, and how much of the first one already was.
    out: VecDeque<Bytes>,
    written: usize,
    /// Offline entries to acknowledge once `out` is written.
    acks: Vec<u64>,
    /// A queued close, sent once `out` is written.
    close_after: Option<u16>,
    codec: Codec,
    batch: bool,
    /// Whether `welcome`, the first frame, went out; it never joins a batch.
    welcomed: bool,
    /// Bad frames seen before the task started polling.
    bad_early: Option<FrameError>,
}

impl Socket {
    /// `early` holds bytes the client sent right behind its upgrade request.
    pub fn new(
        stream: Arc<TcpStream>,
        early: &[u8],
        max_message: usize,
        codec: Codec,
        batch: bool,
    ) -> Socket {
        let mut socket = Socket {
            stream,
            parser: Parser::new(max_message),
            incoming: VecDeque::new(),
            items: VecDeque::new(),
            out: VecDeque::new(),
            written: 0,
            acks: Vec::new(),
            close_after: None,
            codec,
            batch,
            welcomed: false,
            bad_early: None,
        };
        if !early.is_empty() {
            socket.bad_early = socket.parser.feed(early, &mut socket.incoming).err();
        }
        socket
    }

    /// Writes what is queued and reads what arrived; resolves with the next
    /// thing the task must act on. While `busy` (a request is running) the
    /// client's frames are left unread, so requests run one at a time, in
    /// order, and a flooding client is slowed by its own socket.
    pub fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        conn: &ConnHandle,
        busy: bool,
    ) -> Poll<Event> {
        loop {
            conn.register(cx);
            if conn.is_killed() {
                return Poll::Ready(Event::End(Ending::Killed));
            }
            // The queue is taken only once what was taken before is
            // written: a client that stops reading leaves it to fill up,
            // and the slow-consumer policy applies.
            match self.poll_write(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(Event::End(Ending::Gone)),
                Poll::Ready(Ok(())) => {
                    if !self.acks.is_empty() {
                        return Poll::Ready(Event::Written(std::mem::take(&mut self.acks)));
                    }
                    if let Some(code) = self.close_after {
                        return Poll::Ready(Event::End(Ending::Queued(code)));
                    }
                    conn.outbox.take_all(&mut self.items);
                    if !self.items.is_empty() {
                        self.enqueue();
                        continue;
                    }
                }
                Poll::Pending => {}
            }
            if busy {
                return Poll::Pending;
            }
            let next = self.incoming.pop_front();
            if self.incoming.is_empty() && self.incoming.capacity() > 0 {
                self.incoming = VecDeque::new();
            }
            match next {
                Some(Incoming::Text(b) | Incoming::Binary(b)) => {
                    return Poll::Ready(Event::Request(b));
                }
                Some(Incoming::Ping(p)) => {
                    // A client that pings without reading gets no more
                    // pongs than a full write holds (RFC 6455 lets a pong
                    // answer only the latest ping).
                    if self.out.len() < WRITE_SLICES {
                        // The task writes the pong itself: it takes the
                        // write side from pushers first.
                        conn.outbox.claim();
                        self.out.push_back(ws::frame(ws::OP_PONG, &p));
                    }
                    continue;
                }
                Some(Incoming::Pong) => continue,
                Some(Incoming::Close(code)) => {
                    return Poll::Ready(Event::End(Ending::PeerClosed(code)));
                }
                None => {
                    // Frames that arrived with the upgrade request come
                    // first, then their error, if any.
                    if let Some(e) = self.bad_early.take() {
                        return Poll::Ready(Event::End(Ending::BadFrames(e)));
                    }
                }
            }
            match self.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Event::End(Ending::Gone)),
                Poll::Pending => return Poll::Pending,
            }
            let mut chunk = [0u8; READ_CHUNK];
            match self.stream.try_read(&mut chunk) {
                Ok(0) => return Poll::Ready(Event::End(Ending::Gone)),
                Ok(n) => {
                    conn.seen();
                    if let Err(e) = self.parser.feed(&chunk[..n], &mut self.incoming) {
                        return Poll::Ready(Event::End(Ending::BadFrames(e)));
                    }
                }
                // Readiness was stale; the next turn waits for it again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Event::End(Ending::Gone)),
            }
        }
    }

    /// Moves the taken queue items into `out`; with `batch`, the data
    /// frames ready together become one `batch` frame.
    fn enqueue(&mut self) {
        let mut data = Vec::new();
        for item in self.items.drain(..) {
            match item {
                Outbound::Rest(rest) => self.out.push_back(rest),
                Outbound::Frame(f) if !self.batch => self.out.push_back(f),
                Outbound::Frame(f) => data.push(f),
                Outbound::Queued { frames, upto } => {
                    if self.batch {
                        data.extend(frames);
                    } else {
                        self.out.extend(frames);
                    }
                    self.acks.push(upto);
                }
                Outbound::Ping => self.out.push_back(ws::PING),
                Outbound::Close(code) => {
                    self.close_after = Some(code.code());
                    break;
                }
            }
        }
        // Idle connections keep no buffers: these deques are allocated
        // again on the next message, which costs less than keeping them.
        self.items = VecDeque::new();
        if data.is_empty() {
            self.welcomed = true;
            return;
        }
        let mut data = data.into_iter();
        if !self.welcomed {
            self.out.extend(data.next());
            self.welcomed = true;
        }
        match data.len() {
            0 => {}
            1 => self.out.extend(data),
            _ => {
                let payloads = data.as_slice().iter().map(|f| ws::payload(f));
                let joined = self.codec.batch(payloads);
                self.out.push_back(fanout::to_frame(self.codec, &joined));
            }
        }
    }

    /// Writes `out` until it is empty or the socket is full.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut count = 0;
            for (i, f) in self.out.iter().take(WRITE_SLICES).enumerate() {
                let skip = if i == 0 { self.written } else { 0 };
                slices[i] = IoSlice::new(&f[skip..]);
                count += 1;
            }
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(&slices[..count]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.advance(n),
                // Readiness was stale; the next turn waits for it again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if self.out.capacity() > 0 {
            self.out = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.out.front() {
            let left = front.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.out.pop_front();
        }
    }

    /// Ends the connection: sends the close frame for `code` (if any),
    /// then half-closes and waits briefly for the peer to close its side,
    /// so the close frame is not lost to a reset.
    ///
    /// Called after the outbox was shut, so the socket is the task's alone.
    /// What is still in `out` is dropped: a kill discards it, and a queued
    /// close only ends the connection once it was written.
    pub async fn close(self, code: Option<u16>, linger: bool) {
        let Ok(mut stream) = Arc::try_unwrap(self.stream) else {
            // Still shared (it should not be): dropping the last reference
            // closes it.
            return;
        };
        if let Some(code) = code {
            let frame = ws::close_frame(code, CloseCode::reason_of(code));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.write_all(&frame)).await;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
        if linger {
            let mut sink = [0u8; 256];
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
}
