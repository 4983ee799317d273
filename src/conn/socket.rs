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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::handle::{ConnHandle, DirectWrite, Outbound, Outbox, Take, mono_instant};
use crate::fanout;
use crate::protocol::{CloseCode, Codec};
use crate::ws::{self, Incoming, Parser};

#[cfg(test)]
#[path = "write_model.rs"]
mod write_model;

/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 4096;

/// Frames handed to the kernel per vectored write.
const WRITE_SLICES: usize = 64;

/// How long the close frame may take to reach the peer, and how long the
/// peer then has to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the rest of a frame already partly written may take to reach
/// a closing peer. A close frame only follows whole frames; a peer that
/// does not read that long gets a TCP reset instead of a close frame.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The client's bytes were not valid frames; the error's close code.
    BadFrames(CloseCode),
    /// The socket closed or failed.
    Gone,
}

pub struct Socket {
    /// Shared with the handle's outbox for direct writes (see
    /// [`super::handle::Outbox`]).
    stream: Arc<TcpStream>,
    parser: Parser,
    incoming: VecDeque<Incoming>,
    write: WriteSide,
    /// Bad frames seen; nothing is read after them.
    bad: Option<Bad>,
    /// The timer of held room messages, only while some are held (idle
    /// connections carry no timer): their deadline and its sleep.
    hold: Option<(u64, Pin<Box<Sleep>>)>,
}

/// What follows bad frames. The complete messages that arrived before them
/// are served first; then the connection closes with the error's code,
/// behind their answers. Holds the close code rather than the error,
/// which would make every connection's state larger.
#[derive(Clone, Copy)]
enum Bad {
    /// No request was served since: close now.
    Seen(CloseCode),
    /// Requests were served since: their answers go first.
    Answering(CloseCode),
    /// The close was queued behind the answers.
    CloseQueued,
}

/// The task's half of the write side: what it took from the outbox and
/// has not finished writing.
pub(super) struct WriteSide {
    /// Scratch for taking the outbound queue in one lock.
    items: VecDeque<Outbound>,
    /// Frames being written, and how much of the first one already was.
    out: VecDeque<Bytes>,
    written: usize,
    /// The first frame of `out` is partly on the wire: the task wrote some
    /// of it, or it is the rest of a frame a pusher began.
    first_started: bool,
    /// Offline entries to acknowledge once `out` is written.
    acks: Vec<u64>,
    /// A queued close, sent once `out` is written.
    close_after: Option<u16>,
    codec: Codec,
    batch: bool,
    /// Whether `welcome`, the first frame, went out; it never joins a batch.
    welcomed: bool,
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
            write: WriteSide::new(codec, batch),
            bad: None,
            hold: None,
        };
        if !early.is_empty() {
            socket.bad = socket
                .parser
                .feed(early, &mut socket.incoming)
                .err()
                .map(|e| Bad::Seen(e.close_code()));
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
                    let w = &mut self.write;
                    if !w.acks.is_empty() {
                        return Poll::Ready(Event::Written(std::mem::take(&mut w.acks)));
                    }
                    if let Some(code) = w.close_after {
                        return Poll::Ready(Event::End(Ending::Queued(code)));
                    }
                    let due = self
                        .hold
                        .as_mut()
                        .is_some_and(|(_, sleep)| sleep.as_mut().poll(cx).is_ready());
                    match conn.outbox.take(&mut w.items, due) {
                        Take::Taken => {
                            self.hold = None;
                            w.enqueue();
                            continue;
                        }
                        Take::Empty => self.hold = None,
                        Take::HeldUntil(at) => {
                            if self.hold.as_ref().is_none_or(|(t, _)| *t != at) {
                                let deadline = tokio::time::Instant::from_std(mono_instant(at));
                                self.hold =
                                    Some((at, Box::pin(tokio::time::sleep_until(deadline))));
                                // Polled once so that it wakes the task.
                                continue;
                            }
                        }
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
                    if let Some(Bad::Seen(e)) = self.bad {
                        self.bad = Some(Bad::Answering(e));
                    }
                    return Poll::Ready(Event::Request(b));
                }
                Some(Incoming::Ping(p)) => {
                    self.write.answer_ping(&p, &conn.outbox);
                    continue;
                }
                Some(Incoming::Pong) => continue,
                Some(Incoming::Close(code)) => {
                    return Poll::Ready(Event::End(Ending::PeerClosed(code)));
                }
                // The messages that came before bad frames were served.
                None => match self.bad {
                    Some(Bad::Seen(e)) => return Poll::Ready(Event::End(Ending::BadFrames(e))),
                    Some(Bad::Answering(e)) => {
                        // Their answers are queued or written: the close
                        // goes behind them (at once if the queue is full).
                        conn.close_after_queue(e);
                        self.bad = Some(Bad::CloseQueued);
                        continue;
                    }
                    Some(Bad::CloseQueued) => return Poll::Pending,
                    None => {}
                },
            }
            match self.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Poll::Ready(Event::End(Ending::Gone)),
                Poll::Pending => return Poll::Pending,
            }
            let mut chunk = [0u8; READ_CHUNK];
            match read_draining(&self.stream, &mut chunk) {
                Ok(0) => return Poll::Ready(Event::End(Ending::Gone)),
                Ok(n) => {
                    conn.seen();
                    // Complete messages before an error are kept: they are
                    // served first. Nothing more is read after it.
                    if let Err(e) = self.parser.feed(&chunk[..n], &mut self.incoming) {
                        self.bad = Some(Bad::Seen(e.close_code()));
                    }
                }
                // Readiness was stale; the next turn waits for it again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(Event::End(Ending::Gone)),
            }
        }
    }

    /// Writes `out` until it is empty or the socket is full.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let count = self.write.slices(&mut slices);
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(&slices[..count]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.write.advance(n),
                // Readiness was stale; the next turn waits for it again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.write.release();
        Poll::Ready(Ok(()))
    }

    /// Ends the connection. `rest` is what [`Outbox::shut`] returned: the
    /// unwritten rest of a frame a pusher began.
    ///
    /// A close frame goes out only after whole frames: the one frame
    /// already started (by the task or by a pusher) is finished first,
    /// within [`FINISH_TIMEOUT`]; what was not started is dropped (a kill
    /// discards it, and a queued close only ends the connection once it
    /// was written). If that frame or the close frame cannot be written in
    /// time, the connection is reset instead. Then the socket half-closes
    /// and, with `linger`, waits briefly for the peer to close its side, so
    /// the close frame is not lost to a reset.
    ///
    /// Called after the outbox was shut, so the socket is the task's alone.
    /// `reason` replaces the code's own reason text (a kick's).
    pub async fn close(
        mut self,
        code: Option<u16>,
        reason: Option<&str>,
        linger: bool,
        rest: Option<Bytes>,
    ) {
        let started = self.write.started(rest);
        let Ok(mut stream) = Arc::try_unwrap(self.stream) else {
            // Still shared (it should not be): dropping the last reference
            // closes it.
            return;
        };
        if let Some(started) = started
            && !write_within(&mut stream, &started, FINISH_TIMEOUT).await
        {
            return reset(stream);
        }
        if let Some(code) = code {
            let frame = ws::close_frame(code, reason.unwrap_or(CloseCode::reason_of(code)));
            if !write_within(&mut stream, &frame, CLOSE_TIMEOUT).await {
                return reset(stream);
            }
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

/// Reads what the socket holds into `chunk`. A short read took everything
/// the kernel had, so the socket's read readiness is cleared with it: the
/// next turn waits for new bytes instead of asking the kernel once more
/// only to hear `WouldBlock` (one `recv` per arriving message instead of
/// two). Clearing is safe against bytes that arrive meanwhile: tokio keeps
/// the readiness when an event came after the one this read used.
fn read_draining(stream: &TcpStream, chunk: &mut [u8]) -> io::Result<usize> {
    let mut got = None;
    let drained = stream.try_io(Interest::READABLE, || {
        let n = io::Read::read(&mut &*SockRef::from(stream), chunk)?;
        got = Some(n);
        if n > 0 && n < chunk.len() {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (got, drained) {
        (Some(n), _) => Ok(n),
        (None, Err(e)) => Err(e),
        (None, Ok(())) => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// Writes all of `bytes` within `limit`.
async fn write_within(stream: &mut TcpStream, bytes: &[u8], limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, stream.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Drops the connection with a TCP reset: the peer sees an abrupt end
/// rather than a frame cut off by an orderly close.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

impl WriteSide {
    pub(super) fn new(codec: Codec, batch: bool) -> WriteSide {
        WriteSide {
            items: VecDeque::new(),
            out: VecDeque::new(),
            written: 0,
            first_started: false,
            acks: Vec::new(),
            close_after: None,
            codec,
            batch,
            welcomed: false,
        }
    }

    /// Answers a client's ping. The pong goes after what the task is
    /// writing; with nothing left to write, the task first claims the
    /// write side from pushers, together with what they queued (the rest
    /// of a frame one began goes before the pong).
    ///
    /// A client that pings without reading gets no more pongs than a full
    /// write holds (RFC 6455 lets a pong answer only the latest ping).
    pub(super) fn answer_ping<S: DirectWrite>(&mut self, payload: &[u8], outbox: &Outbox<S>) {
        if self.out.len() >= WRITE_SLICES {
            return;
        }
        if self.out.is_empty() {
            outbox.claim(&mut self.items);
            self.enqueue();
        }
        self.out.push_back(ws::frame(ws::OP_PONG, payload));
    }

    /// Fills `slices` with the frames to write next; returns how many.
    pub(super) fn slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        for (i, f) in self.out.iter().take(slices.len()).enumerate() {
            let skip = if i == 0 { self.written } else { 0 };
            slices[i] = IoSlice::new(&f[skip..]);
            count += 1;
        }
        count
    }

    /// Whether everything taken was written.
    #[cfg(test)]
    pub(super) fn is_flushed(&self) -> bool {
        self.out.is_empty()
    }

    /// Frees `out` once written: idle connections keep no buffers.
    fn release(&mut self) {
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = VecDeque::new();
        }
    }

    /// The unwritten rest of the one frame already started, if any: the
    /// task's own first frame, or else `rest`, begun by a pusher (never
    /// both: a pusher begins a frame only while the task has nothing to
    /// write). Everything else taken is dropped.
    pub(super) fn started(&mut self, rest: Option<Bytes>) -> Option<Bytes> {
        let mine = match self.first_started {
            false => None,
            true => self.out.pop_front().map(|f| f.slice(self.written..)),
        };
        self.out = VecDeque::new();
        self.written = 0;
        self.first_started = false;
        mine.or(rest)
    }

    /// Moves the taken queue items into `out`; with `batch`, the data
    /// frames ready together become one `batch` frame.
    pub(super) fn enqueue(&mut self) {
        let mut data = Vec::new();
        for item in self.items.drain(..) {
            match item {
                Outbound::Rest(rest) => {
                    // Taken only into an empty `out`: a pusher begins a
                    // frame only while the task has nothing to write.
                    self.first_started = self.out.is_empty();
                    self.out.push_back(rest);
                }
                Outbound::Frame(f) | Outbound::Keyed { frame: f, .. } if !self.batch => {
                    self.out.push_back(f)
                }
                Outbound::Frame(f) | Outbound::Keyed { frame: f, .. } => data.push(f),
                Outbound::Queued { frames, upto } => {
                    if self.batch {
                        data.extend(frames);
                    } else {
                        self.out.extend(frames);
                    }
                    // 0: a history replay, nothing to acknowledge.
                    if upto > 0 {
                        self.acks.push(upto);
                    }
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
                let frames = data.as_slice();
                let payloads = || frames.iter().map(|f| ws::payload(f));
                let parts = self.codec.batch_parts(frames.len());
                let len = parts.len(payloads());
                let op = fanout::opcode(self.codec);
                let frame = ws::frame_with(op, len, |out| parts.write(payloads(), out));
                self.out.push_back(frame);
            }
        }
    }

    pub(super) fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.out.front() {
            let left = front.len() - self.written;
            if n < left {
                self.written += n;
                self.first_started |= n > 0;
                return;
            }
            n -= left;
            self.written = 0;
            self.first_started = false;
            self.out.pop_front();
        }
    }
}
