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
}

struct Queue<S> {
    items: VecDeque<Outbound>,
    owner: Owner,
    /// The socket, for direct writes; `None` until the task starts and
    /// after it stops.
    stream: Option<Arc<S>>,
}

/// How a push reached the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written to the socket whole; the task need not wake.
    Written,
    /// Queued (possibly the rest of a frame begun directly): wake the task.
    Queued,
}

impl<S: DirectWrite> Outbox<S> {
    pub fn new(capacity: usize) -> Outbox<S> {
        Outbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                // The task owns the write side until it has written what
                // was queued before it started (`welcome`).
                owner: Owner::Task,
                stream: None,
            }),
            capacity,
        }
    }

    /// Writes a frame directly when the write side is idle, queues it
    /// otherwise. A full queue refuses everything but the unwritten rest
    /// of a frame begun here, which must reach the socket.
    pub fn push(&self, item: Outbound) -> Result<Pushed, PushError> {
        let Ok(mut q) = self.queue.lock() else {
            return Err(PushError::Closed);
        };
        let item = match (q.owner, item) {
            (Owner::Closed, _) => return Err(PushError::Closed),
            (Owner::Idle, Outbound::Frame(frame)) => {
                // Idle means the queue is empty: nothing goes before it.
                let Some(stream) = q.stream.as_deref() else {
                    q.owner = Owner::Task;
                    q.items.push_back(Outbound::Frame(frame));
                    return Ok(Pushed::Queued);
                };
                match stream.try_write(&frame) {
                    Ok(n) if n == frame.len() => return Ok(Pushed::Written),
                    Ok(n) if n > 0 => {
                        // The frame is started: the task finishes it
                        // before anything else.
                        q.owner = Owner::Task;
                        q.items.push_back(Outbound::Rest(frame.slice(n..)));
                        return Ok(Pushed::Queued);
                    }
                    // Full socket or an error: the task writes it (and
                    // meets the error).
                    _ => Outbound::Frame(frame),
                }
            }
            (_, other) => other,
        };
        if q.items.len() >= self.capacity {
            return Err(PushError::Full);
        }
        q.owner = Owner::Task;
        q.items.push_back(item);
        Ok(Pushed::Queued)
    }

    /// Moves every queued item into `into` (which must be empty), in order.
    /// The task calls this only once everything it took before is written,
    /// so an empty take hands the write side back to pushers.
    pub fn take_all(&self, into: &mut VecDeque<Outbound>) {
        if let Ok(mut q) = self.queue.lock() {
            if q.owner == Owner::Closed {
                return;
            }
            std::mem::swap(&mut q.items, into);
            q.owner = if into.is_empty() {
                Owner::Idle
            } else {
                Owner::Task
            };
        }
    }

    /// Takes the write side for the task, to write a control frame of its
    /// own once everything it took before is written: what is queued (the
    /// rest of a frame a pusher began first) moves into `into`, to go out
    /// before that frame.
    pub fn claim(&self, into: &mut VecDeque<Outbound>) {
        if let Ok(mut q) = self.queue.lock() {
            if q.owner == Owner::Closed {
                return;
            }
            std::mem::swap(&mut q.items, into);
            q.owner = Owner::Task;
        }
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
        if self.outbox.push(item)? == Pushed::Queued {
            self.waker.wake();
        }
        Ok(())
    }

    /// Queues an item without waiting. A full queue applies the
    /// slow-consumer policy: the item is dropped and counted, and with the
    /// `close` policy the connection is also closed with 4000.
    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        match self.try_push(item) {
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
