//! The handle the rest of the server holds for one connection: its identity,
//! codec, its bounded outbound queue, its kill switch and when the client
//! was last heard from.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::Context;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;

use crate::config::SlowConsumerPolicy;
use crate::metrics;
use crate::protocol::{CloseCode, Codec};

/// Instance-local connection number.
pub type ConnId = u64;

/// One item of a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A complete WebSocket frame (see [`crate::ws::frame`]), shared with
    /// every other recipient of the same event.
    Frame(Bytes),
    /// A room message with a latest-wins key (`key` names the room and the
    /// message's key): while it waits in the queue, a newer message with
    /// the same key replaces it (see [`Outbox::push_room`]).
    Keyed { frame: Bytes, key: Arc<str> },
    /// Offline messages for the connection's user; once written and flushed,
    /// the queue entries up to `upto` are removed from the offline store
    /// (`upto` 0: frames that must stay together, e.g. a history replay).
    Queued { frames: Vec<Bytes>, upto: u64 },
    /// The unwritten rest of a frame a pusher began writing itself; it
    /// goes out first, as is, and never joins a batch.
    Rest(Bytes),
    /// A keepalive ping.
    Ping,
    /// Close after everything queued before it was written.
    Close(CloseCode),
}

/// How a room message may wait in a connection's queue: the room's write
/// delay and the message's latest-wins key.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// How long the message may be held back, in microseconds, so that the
    /// connection writes several in one syscall (0: not held).
    pub delay_us: u64,
    /// Room and key of a latest-wins message.
    pub key: Option<Arc<str>>,
}

/// A write side idle for less than this (in microseconds) does not take a
/// direct write: the frame is queued and the task, woken, writes it with
/// whatever else arrives meanwhile in one vectored write. 0: an idle write
/// side always takes the direct write, and frames coalesce only while the
/// task is writing (the socket is busy). Measured back to back, a 1 ms gap
/// made W1 at 40,000 deliveries/s cost about 7 % more server CPU per
/// delivery and its p99 several times longer (a publisher's ack and the
/// members' next frames went through a task wake-up), while W7 at write
/// delay 0 still averaged 1.03 messages per frame: so the gap is off, and
/// batching is the write delay's job. The mechanism stays for tests
/// ([`Outbox::with_direct_gap`]).
pub const DIRECT_GAP_US: u64 = 0;

/// What [`Outbox::take`] gave the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Items were moved into the task's queue.
    Taken,
    /// Nothing was queued; the write side is idle again.
    Empty,
    /// Only held room messages are queued, until this instant (microseconds
    /// on [`mono_us`]'s clock); nothing was taken.
    HeldUntil(u64),
}

/// Why a frame did not reach a connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full; the slow-consumer policy was applied.
    Full,
    /// The connection is closing.
    Closed,
}

/// Who may write to the socket's write side. Bytes of two frames never
/// interleave because exactly one party writes at a time, and a frame
/// started by one party is finished by it or handed over whole, as the
/// first thing the next owner writes:
///
/// - `Idle`: nobody is writing and the queue is empty. A pusher holding
///   the lock may write one frame directly (see [`Outbox::push`]); if the
///   socket takes all of it the state stays `Idle`, otherwise the
///   unwritten part becomes the queue's first item and the state `Task`.
/// - `Task`: the connection task owns the write side. Pushes are queued;
///   the task takes them only once what it took before is written, and an
///   empty take returns the state to `Idle`.
/// - `Closed`: the connection is ending. Pushes fail; the closing task
///   holds the socket alone, finishes the one frame already started and
///   only then writes the close frame (see [`super::socket::Socket::close`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Idle,
    Task,
    Closed,
}

/// What a pusher may write to directly: the socket, or a simulated one in
/// tests.
pub trait DirectWrite {
    /// Writes what the socket takes now, without waiting.
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize>;
}

impl DirectWrite for TcpStream {
    fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
}

/// The bounded outbound queue. A plain deque under a mutex rather than a
/// channel: an idle connection's empty deque allocates nothing (a channel
/// allocates a block of slots up front), and the connection task takes
/// everything ready in one lock. The lock is held only to push, swap or
/// make one non-blocking write, never across an await.
///
/// Direct writes: while [`Owner::Idle`], a pusher writes the frame to the
/// socket itself, under the lock, and the task is not woken at all.
pub struct Outbox<S = TcpStream> {
    queue: Mutex<Queue<S>>,
    capacity: usize,
    /// See [`DIRECT_GAP_US`]; 0 in the model test, which explores direct
    /// writes at every step.
    direct_gap_us: u64,
}

struct Queue<S> {
    items: VecDeque<Outbound>,
    owner: Owner,
    /// The socket, for direct writes; `None` until the task starts and
    /// after it stops.
    stream: Option<Arc<S>>,
    /// While only held room messages are queued: when the first of them
    /// is due. The task takes nothing before then (see [`Outbox::take`]).
    held_until: Option<u64>,
    /// Something queued must not wait (a direct message, an ack, a close,
    /// a room message without delay, the rest of a started frame): the
    /// next take takes everything, held messages included.
    urgent: bool,
    /// How many `Keyed` items are queued (no scan for a key while 0).
    keyed: usize,
    /// When the write side last became idle or a direct write last went
    /// out, on [`mono_us`]'s clock.
    idle_since: u64,
}

/// How a push reached the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written to the socket whole; the task need not wake.
    Written,
    /// Queued (possibly the rest of a frame begun directly): wake the task.
    Queued,
    /// Queued behind held room messages whose deadline is already set:
    /// the task need not wake.
    Held,
}

impl<S: DirectWrite> Outbox<S> {
    pub fn new(capacity: usize) -> Outbox<S> {
        Outbox::with_direct_gap(capacity, DIRECT_GAP_US)
    }

    /// An outbox whose direct writes need the write side idle for
    /// `direct_gap_us` first.
    pub fn with_direct_gap(capacity: usize, direct_gap_us: u64) -> Outbox<S> {
        Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                // The task owns the write side until it has written what
                // was queued before it started (`welcome`).
                owner: Owner::Task,
                stream: None,
                held_until: None,
                urgent: false,
                keyed: 0,
                idle_since: 0,
            }),
            capacity,
            direct_gap_us,
        }
    }

    /// Writes a frame directly when the write side is idle (and has been
    /// for [`DIRECT_GAP_US`]), queues it otherwise. Nothing pushed here
    /// waits: held room messages queued before it go out with it. A full
    /// queue refuses everything but the unwritten rest of a frame begun
    /// here, which must reach the socket.
    pub fn push(&self, item: Outbound) -> Result<Pushed, PushError> {
        self.push_item(item, 0)
    }

    /// Pushes a room message: held back up to `delivery.delay_us` (never
    /// written directly then), and, when it has a key, replacing a queued
    /// message with the same key. The replaced message leaves its place
    /// and the new one goes to the end, so what the client receives is
    /// always in publish order, only with superseded messages left out.
    pub fn push_room(&self, frame: Bytes, delivery: &Delivery) -> Result<Pushed, PushError> {
        let item = match &delivery.key {
            Some(key) => Outbound::Keyed {
                frame,
                key: key.clone(),
            },
            None => Outbound::Frame(frame),
        };
        self.push_item(item, delivery.delay_us)
    }

    fn push_item(&self, item: Outbound, delay_us: u64) -> Result<Pushed, PushError> {
        let Ok(mut q) = self.queue.lock() else {
            return Err(PushError::Closed);
        };
        let q = &mut *q;
        let direct = delay_us == 0 && matches!(item, Outbound::Frame(_) | Outbound::Keyed { .. });
        let item = match (q.owner, item) {
            (Owner::Closed, _) => return Err(PushError::Closed),
            (Owner::Idle, item) if direct => {
                // Idle means the queue is empty: nothing goes before it.
                let now = if self.direct_gap_us > 0 { mono_us() } else { 0 };
                let stream = q
                    .stream
                    .as_deref()
                    .filter(|_| now.saturating_sub(q.idle_since) >= self.direct_gap_us);
                let (Some(stream), Outbound::Frame(frame) | Outbound::Keyed { frame, .. }) =
                    (stream, &item)
                else {
                    // No socket yet, or frames are coming fast: the task
                    // writes this one with whatever follows it.
                    q.urgent = true;
                    return self.enqueue(q, item);
                };
                match stream.try_write(frame) {
                    Ok(n) if n == frame.len() => {
                        q.idle_since = now;
                        return Ok(Pushed::Written);
                    }
                    Ok(n) if n > 0 => {
                        // The frame is started: the task finishes it
                        // before anything else.
                        let rest = frame.slice(n..);
                        q.owner = Owner::Task;
                        q.urgent = true;
                        q.items.push_back(Outbound::Rest(rest));
                        return Ok(Pushed::Queued);
                    }
                    // Full socket or an error: the task writes it (and
                    // meets the error).
                    _ => item,
                }
            }
            (_, other) => other,
        };
        if delay_us == 0 {
            q.urgent = true;
            return self.enqueue(q, item);
        }
        let due = mono_us().saturating_add(delay_us);
        self.enqueue(q, item)?;
        match q.held_until {
            // The task is woken anyway, or knows an earlier deadline.
            _ if q.urgent => Ok(Pushed::Held),
            Some(at) if at <= due => Ok(Pushed::Held),
            // A new or earlier deadline: the task must learn it.
            _ => {
                q.held_until = Some(due);
                Ok(Pushed::Queued)
            }
        }
    }

    /// Appends an item; a keyed one first takes its predecessor's place
    /// out of the queue.
    fn enqueue(&self, q: &mut Queue<S>, item: Outbound) -> Result<Pushed, PushError> {
        if let Outbound::Keyed { key, .. } = &item
            && q.keyed > 0
            && let Some(at) = q
                .items
                .iter()
                .rposition(|i| matches!(i, Outbound::Keyed { key: k, .. } if k == key))
        {
            q.items.remove(at);
            q.keyed -= 1;
            metrics::keyed_replaced();
        }
        if q.items.len() >= self.capacity {
            return Err(PushError::Full);
        }
        if matches!(item, Outbound::Keyed { .. }) {
            q.keyed += 1;
        }
        q.owner = Owner::Task;
        q.items.push_back(item);
        Ok(Pushed::Queued)
    }

    /// Moves every queued item into `into` (which must be empty), in order,
    /// unless only held room messages are queued and their deadline has
    /// not come (`due`: the task's timer for it fired). The task calls
    /// this only once everything it took before is written, so an empty
    /// take hands the write side back to pushers.
    pub fn take(&self, into: &mut VecDeque<Outbound>, due: bool) -> Take {
        let Ok(mut q) = self.queue.lock() else {
            return Take::Empty;
        };
        if q.owner == Owner::Closed {
            return Take::Empty;
        }
        if let Some(at) = q.held_until
            && !q.urgent
            && !due
            && mono_us() < at
        {
            return Take::HeldUntil(at);
        }
        std::mem::swap(&mut q.items, into);
        Self::taken(&mut q);
        if into.is_empty() {
            q.owner = Owner::Idle;
            q.idle_since = if self.direct_gap_us > 0 { mono_us() } else { 0 };
            Take::Empty
        } else {
            q.owner = Owner::Task;
            Take::Taken
        }
    }

    /// Takes everything, held messages included (see [`Outbox::take`]).
    pub fn take_all(&self, into: &mut VecDeque<Outbound>) {
        self.take(into, true);
    }

    /// The queue was emptied: nothing is held or keyed any more.
    fn taken(q: &mut Queue<S>) {
        q.held_until = None;
        q.urgent = false;
        q.keyed = 0;
    }

    /// Takes the write side for the task, to write a control frame of its
    /// own once everything it took before is written: what is queued (the
    /// rest of a frame a pusher began first, and held messages, which go
    /// along) moves into `into`, to go out before that frame.
    pub fn claim(&self, into: &mut VecDeque<Outbound>) {
        if let Ok(mut q) = self.queue.lock() {
            if q.owner == Owner::Closed {
                return;
            }
            std::mem::swap(&mut q.items, into);
            Self::taken(&mut q);
            q.owner = Owner::Task;
        }
    }

    /// The keyed frames waiting in the queue (for the model test).
    #[cfg(test)]
    pub fn queued_keyed(&self) -> Vec<Bytes> {
        self.queue.lock().map_or_else(
            |_| Vec::new(),
            |q| {
                q.items
                    .iter()
                    .filter_map(|i| match i {
                        Outbound::Keyed { frame, .. } => Some(frame.clone()),
                        _ => None,
                    })
                    .collect()
            },
        )
    }

    /// Lets pushers write to `stream` directly once the task has written
    /// what it took.
    pub fn set_stream(&self, stream: Arc<S>) {
        if let Ok(mut q) = self.queue.lock() {
            q.stream = Some(stream);
        }
    }

    /// Refuses further pushes, frees what is queued and gives up the
    /// socket. Returns the unwritten rest of a frame a pusher began, which
    /// the closing task must finish before its close frame.
    pub fn shut(&self) -> Option<Bytes> {
        let Ok(mut q) = self.queue.lock() else {
            return None;
        };
        q.owner = Owner::Closed;
        q.stream = None;
        Self::taken(&mut q);
        let items = std::mem::take(&mut q.items);
        match items.into_iter().next() {
            Some(Outbound::Rest(rest)) => Some(rest),
            _ => None,
        }
    }
}

pub struct ConnHandle {
    pub id: ConnId,
    /// Tenant-scoped user key (see [`crate::registry::scoped`]).
    pub user: Arc<str>,
    pub codec: Codec,
    pub outbox: Outbox,
    /// Wakes the connection task: a push, a kill.
    waker: AtomicWaker,
    /// Set when the connection must stop at once. An atomic flag rather
    /// than a cancellation token: the task checks it on every wake-up, and
    /// a token's check takes a lock.
    killed: AtomicBool,
    /// The close code to send when killed; 0 until set, first setter wins.
    close_code: AtomicU16,
    /// When a frame last arrived from the client, in ms since [`EPOCH`].
    last_seen: AtomicU64,
    policy: SlowConsumerPolicy,
}

/// The origin of [`ConnHandle`]'s clock.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since [`EPOCH`], on the monotonic clock (message
/// timestamps use wall time: `node::now_ms`).
fn mono_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Microseconds since [`EPOCH`]: the clock of write delays.
pub fn mono_us() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// The instant `us` microseconds after [`EPOCH`].
pub fn mono_instant(us: u64) -> Instant {
    *EPOCH + Duration::from_micros(us)
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("codec", &self.codec)
            .finish()
    }
}

impl ConnHandle {
    pub fn new(
        id: ConnId,
        user: Arc<str>,
        codec: Codec,
        queue: usize,
        policy: SlowConsumerPolicy,
    ) -> Arc<ConnHandle> {
        Arc::new(ConnHandle {
            id,
            user,
            codec,
            outbox: Outbox::new(queue),
            waker: AtomicWaker::new(),
            killed: AtomicBool::new(false),
            close_code: AtomicU16::new(0),
            last_seen: AtomicU64::new(mono_ms()),
            policy,
        })
    }

    fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        self.woken(self.outbox.push(item))
    }

    fn woken(&self, pushed: Result<Pushed, PushError>) -> Result<(), PushError> {
        if pushed? == Pushed::Queued {
            self.waker.wake();
        }
        Ok(())
    }

    /// Queues an item without waiting. A full queue applies the
    /// slow-consumer policy: the item is dropped and counted, and with the
    /// `close` policy the connection is also closed with 4000.
    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        self.with_policy(self.try_push(item))
    }

    /// Queues a room message as `delivery` says (write delay, latest-wins
    /// key); a full queue applies the slow-consumer policy.
    pub fn push_room(&self, frame: Bytes, delivery: &Delivery) -> Result<(), PushError> {
        self.with_policy(self.woken(self.outbox.push_room(frame, delivery)))
    }

    fn with_policy(&self, pushed: Result<(), PushError>) -> Result<(), PushError> {
        match pushed {
            Err(PushError::Full) => {
                metrics::slow_consumer_drop();
                if self.policy == SlowConsumerPolicy::Close {
                    self.close(CloseCode::SlowConsumer);
                }
                Err(PushError::Full)
            }
            other => other,
        }
    }

    /// Queues a close that takes effect after everything already queued.
    /// Falls back to an immediate close when the queue is full.
    pub fn close_after_queue(&self, code: CloseCode) {
        if self.try_push(Outbound::Close(code)).is_err() {
            self.close(code);
        }
    }

    /// Closes the connection now with `code` (the first code set wins).
    pub fn close(&self, code: CloseCode) {
        let _ =
            self.close_code
                .compare_exchange(0, code.code(), Ordering::Relaxed, Ordering::Relaxed);
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Makes the next push or kill wake the task polling with `cx`. Call
    /// before looking at the queue and the kill flag, so nothing is missed.
    pub fn register(&self, cx: &Context<'_>) {
        self.waker.register(cx.waker());
    }

    /// Notes that the client was just heard from.
    pub fn seen(&self) {
        self.last_seen.store(mono_ms(), Ordering::Relaxed);
    }

    /// How long ago the client was last heard from.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(mono_ms().saturating_sub(self.last_seen.load(Ordering::Relaxed)))
    }

    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// The close code set by [`ConnHandle::close`], if any.
    pub fn close_code(&self) -> Option<u16> {
        match self.close_code.load(Ordering::Relaxed) {
            0 => None,
            c => Some(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes everything and counts the writes.
    #[derive(Default)]
    struct Counting(std::sync::atomic::AtomicUsize);

    impl DirectWrite for Counting {
        fn try_write(&self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(buf.len())
        }
    }

    fn idle_outbox(gap_us: u64) -> (Outbox<Counting>, Arc<Counting>) {
        let outbox = Outbox::with_direct_gap(64, gap_us);
        let socket = Arc::new(Counting::default());
        outbox.set_stream(socket.clone());
        let mut taken = VecDeque::new();
        assert_eq!(outbox.take(&mut taken, false), Take::Empty);
        (outbox, socket)
    }

    #[test]
    fn frames_arriving_fast_are_queued_for_one_write_not_written_one_by_one() {
        let (outbox, socket) = idle_outbox(60_000_000);
        // Just idle: even the first frame waits for the task.
        for _ in 0..10 {
            let pushed = outbox.push(Outbound::Frame(Bytes::from_static(b"\x81\x01a")));
            assert_eq!(pushed, Ok(Pushed::Queued));
        }
        assert_eq!(socket.0.load(Ordering::Relaxed), 0);
        let mut taken = VecDeque::new();
        assert_eq!(outbox.take(&mut taken, false), Take::Taken);
        assert_eq!(taken.len(), 10, "the task takes all ten for one write");
    }

    #[test]
    fn a_write_side_idle_long_enough_takes_a_direct_write() {
        let (outbox, socket) = idle_outbox(0);
        let pushed = outbox.push(Outbound::Frame(Bytes::from_static(b"\x81\x01a")));
        assert_eq!(pushed, Ok(Pushed::Written));
        assert_eq!(socket.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn held_messages_wait_for_their_deadline_unless_something_urgent_comes() {
        let (outbox, socket) = idle_outbox(0);
        let held = Delivery {
            delay_us: 60_000_000,
            key: None,
        };
        let frame = || Bytes::from_static(b"\x81\x01a");
        assert_eq!(outbox.push_room(frame(), &held), Ok(Pushed::Queued));
        assert_eq!(outbox.push_room(frame(), &held), Ok(Pushed::Held));
        let mut taken = VecDeque::new();
        assert!(matches!(outbox.take(&mut taken, false), Take::HeldUntil(_)));
        assert!(taken.is_empty());
        // A direct message (any push without delay) takes them along.
        assert_eq!(outbox.push(Outbound::Frame(frame())), Ok(Pushed::Queued));
        assert_eq!(outbox.take(&mut taken, false), Take::Taken);
        assert_eq!(taken.len(), 3);
        assert_eq!(
            socket.0.load(Ordering::Relaxed),
            0,
            "nothing written directly"
        );
    }

    #[test]
    fn a_keyed_push_replaces_only_its_own_key_and_goes_to_the_end() {
        let (outbox, _) = idle_outbox(0);
        let held = |key: Option<&str>| Delivery {
            delay_us: 60_000_000,
            key: key.map(Arc::from),
        };
        let push = |payload: &'static [u8], key| {
            outbox
                .push_room(Bytes::from_static(payload), &held(key))
                .expect("pushed");
        };
        push(b"a1", Some("r\0a"));
        push(b"u1", None);
        push(b"b1", Some("r\0b"));
        push(b"a2", Some("r\0a"));
        push(b"u1", None);
        let mut taken = VecDeque::new();
        outbox.take_all(&mut taken);
        let got: Vec<&[u8]> = taken
            .iter()
            .map(|i| match i {
                Outbound::Frame(f) | Outbound::Keyed { frame: f, .. } => f.as_ref(),
                _ => panic!("{i:?}"),
            })
            .collect();
        assert_eq!(got, [&b"u1"[..], b"b1", b"a2", b"u1"]);
    }
}
