//! The handle the rest of the server holds for one connection: its identity,
//! codec, its bounded outbound queue, and its kill switch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::config::SlowConsumerPolicy;
use crate::metrics;
use crate::protocol::{CloseCode, Codec};

/// Instance-local connection number.
pub type ConnId = u64;

/// One item of a connection's outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// An encoded frame, shared with every other recipient of the same event.
    Frame(Message),
    /// Offline messages for the connection's user; once written and flushed,
    /// the queue entries up to `upto` are removed from the offline store.
    Queued { frames: Vec<Message>, upto: u64 },
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
/// allocates a block of slots up front), and the writer takes everything
/// ready in one lock. The lock is held only to push or swap, never across
/// an await.
pub struct Outbox {
    queue: Mutex<VecDeque<Outbound>>,
    /// Wakes the writer; a notification sent while it is busy is kept.
    ready: Notify,
    capacity: usize,
    /// Set when the writer has stopped: later pushes fail at once.
    closed: AtomicBool,
}

impl Outbox {
    /// Moves every queued item into `into` (which must be empty), in order.
    pub fn take_all(&self, into: &mut VecDeque<Outbound>) {
        if let Ok(mut q) = self.queue.lock() {
            std::mem::swap(&mut *q, into);
        }
    }

    /// Waits until something was pushed since the last wait.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Refuses further pushes and frees what is queued.
    pub fn shut(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut q) = self.queue.lock() {
            *q = VecDeque::new();
        }
    }
}

pub struct ConnHandle {
    pub id: ConnId,
    /// Tenant-scoped user key (see [`crate::registry::scoped`]).
    pub user: Arc<str>,
    pub codec: Codec,
    pub outbox: Outbox,
    /// Cancelled when the connection must stop at once; both the reader and
    /// the writer select on it.
    /// Set when the connection must stop at once; the reader and a blocked
    /// writer wait on `kill_notify`. An atomic flag rather than a
    /// cancellation token: the writer checks it on every wake-up, and a
    /// token's check takes a lock.
    killed: AtomicBool,
    kill_notify: Notify,
    /// The close code to send when killed; 0 until set, first setter wins.
    close_code: AtomicU16,
    policy: SlowConsumerPolicy,
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
                queue: Mutex::new(VecDeque::new()),
                ready: Notify::new(),
                capacity: queue,
                closed: AtomicBool::new(false),
            },
            killed: AtomicBool::new(false),
            kill_notify: Notify::new(),
            close_code: AtomicU16::new(0),
            policy,
        })
    }

    fn try_push(&self, item: Outbound) -> Result<(), PushError> {
        if self.outbox.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        {
            let Ok(mut q) = self.outbox.queue.lock() else {
                return Err(PushError::Closed);
            };
            if q.len() >= self.outbox.capacity {
                return Err(PushError::Full);
            }
            q.push_back(item);
        }
        self.outbox.ready.notify_one();
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
        self.kill_notify.notify_waiters();
        // Wakes an idle writer, which checks the flag on every wake-up.
        self.outbox.ready.notify_one();
    }

    /// Resolves once the connection was killed.
    pub async fn killed(&self) {
        loop {
            let notified = self.kill_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_killed() {
                return;
            }
            notified.await;
        }
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
