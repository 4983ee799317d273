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
    /// the queue entries up to `upto` are removed from the offline store.
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

/// The bounded outbound queue. A plain deque under a mutex rather than a
/// channel: an idle connection's empty deque allocates nothing (a channel
/// allocates a block of slots up front), and the connection task takes
/// everything ready in one lock. The lock is held only to push, swap or
/// make one non-blocking write, never across an await.
///
/// Direct writes: when the queue is empty and the connection task has
/// nothing left to write, a pusher writes the frame to the socket itself,
/// under the lock, and the task is not woken at all. Whoever writes holds
/// the lock or has set `writing` under it, so bytes never interleave.
pub struct Outbox {
    queue: Mutex<Queue>,
    capacity: usize,
}

struct Queue {
    items: VecDeque<Outbound>,
    /// The connection task owns the socket's write side: it took items it
    /// has not finished writing, or has not started yet.
    writing: bool,
    /// Set when the connection task has stopped: pushes fail at once.
    closed: bool,
    /// The socket, for direct writes; `None` until the task starts and
    /// after it stops.
    stream: Option<Arc<TcpStream>>,
}

impl Outbox {
    /// Moves every queued item into `into` (which must be empty), in order.
    /// The task calls this only once everything it took before is written,
    /// so an empty take hands the write side back to pushers.
    pub fn take_all(&self, into: &mut VecDeque<Outbound>) {
        if let Ok(mut q) = self.queue.lock() {
            std::mem::swap(&mut q.items, into);
            q.writing = !into.is_empty();
        }
    }

    /// Takes the write side for the task (to write a frame of its own).
    pub fn claim(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.writing = true;
        }
    }

    /// Lets pushers write to `stream` directly once the task has written
    /// what it took.
    pub fn set_stream(&self, stream: Arc<TcpStream>) {
        if let Ok(mut q) = self.queue.lock() {
            q.stream = Some(stream);
        }
    }

    /// Refuses further pushes, frees what is queued and gives up the socket.
    pub fn shut(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.closed = true;
            q.items = VecDeque::new();
            q.stream = None;
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

/// Writes `frame` to the socket without waiting; what could not be written
/// comes back as the item to queue (`None`: all of it went out).
fn write_now(stream: Option<&TcpStream>, frame: Bytes) -> Option<Outbound> {
    let Some(stream) = stream else {
        return Some(Outbound::Frame(frame));
    };
    match stream.try_write(&frame) {
        Ok(n) if n == frame.len() => None,
        Ok(0) => Some(Outbound::Frame(frame)),
        Ok(n) => Some(Outbound::Rest(frame.slice(n..))),
        // Full socket or an error: the task writes it (and meets the error).
        Err(_) => Some(Outbound::Frame(frame)),
    }
}

/// The origin of [`ConnHandle`]'s clock.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
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
            outbox: Outbox {
                queue: Mutex::new(Queue {
                    items: VecDeque::new(),
                    writing: true,
                    closed: false,
                    stream: None,
                }),
                capacity: queue,
            },
            waker: AtomicWaker::new(),
            killed: AtomicBool::new(false),
            close_code: AtomicU16::new(0),
            last_seen: AtomicU64::new(now_ms()),
            policy,
        })
    }

    fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        {
            let Ok(mut q) = self.outbox.queue.lock() else {
                return Err(PushError::Closed);
            };
            if q.closed {
                return Err(PushError::Closed);
            }
            let item = match item {
                Outbound::Frame(frame) if !q.writing && q.items.is_empty() => {
                    match write_now(q.stream.as_deref(), frame) {
                        None => return Ok(()),
                        Some(rest) => rest,
                    }
                }
                other => other,
            };
            if q.items.len() >= self.outbox.capacity {
                return Err(PushError::Full);
            }
            q.items.push_back(item);
        }
        self.waker.wake();
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
        self.last_seen.store(now_ms(), Ordering::Relaxed);
    }

    /// How long ago the client was last heard from.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_seen.load(Ordering::Relaxed)))
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
