//! Offline queues in Redis (`P:offline:{user}`, written by the send script,
//! read by the attach script) and the outbox.
//!
//! A queue entry is removed only when the writer reports it flushed to a
//! socket ([`Shared::offline_written`]); an entry read but never
//! acknowledged (the connection died, Redis was unreachable) is delivered
//! again on the next connect: at-least-once, with message ids.
//!
//! The outbox holds direct messages that could not reach Redis, in order,
//! bounded. It is written to Redis (routed or queued) by the resync after a
//! reconnect. A full outbox refuses messages nobody received, so the sender
//! gets `unavailable` instead of a silent loss.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fred::prelude::Error as RedisError;

use super::routes::unavailable_full;
use super::{Shared, metric};
use crate::bus::{BusError, DirectMessage, SendOutcome};
use crate::metrics;

/// A direct message waiting for Redis.
#[derive(Debug, Clone)]
pub struct Held {
    pub user: Arc<str>,
    pub msg: DirectMessage,
    /// It was already delivered on this instance: route it to the other
    /// instances only, never queue it.
    pub local: bool,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<Held>,
    /// Messages held per user: later messages for these users must queue
    /// behind them to keep their order.
    per_user: HashMap<Arc<str>, usize>,
}

pub struct HeldDirects {
    /// A std mutex: every critical section is a few pushes or pops and
    /// never awaits.
    inner: Mutex<Inner>,
    /// Mirror of `items.len()` for the lock-free fast path.
    len: AtomicUsize,
    cap: usize,
}

impl HeldDirects {
    pub fn new(cap: usize) -> Self {
        HeldDirects {
            inner: Mutex::new(Inner::default()),
            len: AtomicUsize::new(0),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// Holds the message when Redis is down or older messages for the
    /// same user are held; otherwise hands it back for sending.
    pub fn hold_if_needed(
        &self,
        up: &AtomicBool,
        user: &Arc<str>,
        msg: DirectMessage,
        local: bool,
    ) -> Result<Result<SendOutcome, BusError>, DirectMessage> {
        if up.load(Ordering::SeqCst) && self.len() == 0 {
            return Err(msg);
        }
        let mut inner = self.lock();
        if up.load(Ordering::SeqCst) && !inner.per_user.contains_key(user) {
            return Err(msg);
        }
        metric::skipped("send");
        Ok(self.push(&mut inner, user, msg, local))
    }

    /// Holds a message that could not be sent.
    pub fn hold(
        &self,
        user: &Arc<str>,
        msg: DirectMessage,
        local: bool,
    ) -> Result<SendOutcome, BusError> {
        let mut inner = self.lock();
        self.push(&mut inner, user, msg, local)
    }

    fn push(
        &self,
        inner: &mut Inner,
        user: &Arc<str>,
        msg: DirectMessage,
        local: bool,
    ) -> Result<SendOutcome, BusError> {
        if inner.items.len() >= self.cap {
            metric::outbox_rejected();
            // Delivered here already: only the other instances miss it.
            return if local {
                Ok(SendOutcome::Delivered)
            } else {
                Err(unavailable_full())
            };
        }
        inner.items.push_back(Held {
            user: user.clone(),
            msg,
            local,
        });
        *inner.per_user.entry(user.clone()).or_insert(0) += 1;
        self.len.store(inner.items.len(), Ordering::SeqCst);
        metric::outbox(inner.items.len());
        Ok(if local {
            SendOutcome::Delivered
        } else {
            SendOutcome::Queued
        })
    }

    pub fn front(&self) -> Option<Held> {
        self.lock().items.front().cloned()
    }

    pub fn pop_front(&self) {
        let mut inner = self.lock();
        if let Some(h) = inner.items.pop_front()
            && let Some(n) = inner.per_user.get_mut(&h.user)
        {
            *n -= 1;
            if *n == 0 {
                inner.per_user.remove(&h.user);
            }
        }
        self.len.store(inner.items.len(), Ordering::SeqCst);
        metric::outbox(inner.items.len());
    }

    /// Sets `flag` when the outbox is empty, atomically with respect to
    /// holding new messages.
    pub fn set_if_empty(&self, flag: &AtomicBool) -> bool {
        let inner = self.lock();
        if inner.items.is_empty() {
            flag.store(true, Ordering::SeqCst);
            true
        } else {
            false
        }
    }
}

impl Shared {
    /// Writes the outbox to Redis in order; stops at the first failure
    /// (the message stays first in line).
    pub(super) async fn flush_outbox(&self) -> Result<(), RedisError> {
        let mut n = 0;
        while let Some(h) = self.outbox.front() {
            self.send_held(&h.user, &h.msg, h.local).await?;
            self.outbox.pop_front();
            n += 1;
        }
        if n > 0 {
            tracing::info!(messages = n, "outbox written to redis");
        }
        Ok(())
    }

    pub(super) async fn offline_written(&self, user: &Arc<str>, upto: u64) {
        if !self.up() {
            // Not removed: delivered again on the next connect.
            metric::skipped("offline_ack");
            return;
        }
        let r: Result<i64, _> = self
            .scripts
            .offline_ack
            .run(
                &self.client,
                vec![self.keys.offline(user)],
                vec![upto.to_string()],
            )
            .await;
        match r {
            Ok(n) => metrics::offline_delivered(n.max(0) as usize),
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove delivered offline messages; they will be delivered again");
                metric::error("offline_ack");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(n: u64) -> DirectMessage {
        DirectMessage {
            from: "a".into(),
            data: json!(n).into(),
            ts: n,
            mid: n.to_string(),
        }
    }

    #[test]
    fn holds_while_down_and_keeps_user_order() {
        let ob = HeldDirects::new(2);
        let up = AtomicBool::new(false);
        let bob: Arc<str> = "/bob".into();
        let carol: Arc<str> = "/carol".into();
        assert!(matches!(
            ob.hold_if_needed(&up, &bob, msg(1), false),
            Ok(Ok(SendOutcome::Queued))
        ));
        up.store(true, Ordering::SeqCst);
        // Bob has a held message: the next one waits behind it; carol goes direct.
        assert!(matches!(
            ob.hold_if_needed(&up, &bob, msg(2), true),
            Ok(Ok(SendOutcome::Delivered))
        ));
        assert!(ob.hold_if_needed(&up, &carol, msg(3), false).is_err());
        // Full: a message nobody received is refused, never dropped silently.
        assert!(matches!(
            ob.hold(&carol, msg(4), false),
            Err(BusError::Unavailable(_))
        ));
        assert!(matches!(
            ob.hold(&carol, msg(5), true),
            Ok(SendOutcome::Delivered)
        ));
        assert_eq!(ob.front().map(|h| h.msg.ts), Some(1));
        let flag = AtomicBool::new(false);
        assert!(!ob.set_if_empty(&flag));
        ob.pop_front();
        ob.pop_front();
        assert_eq!(ob.len(), 0);
        assert!(ob.hold_if_needed(&up, &bob, msg(6), false).is_err());
        assert!(ob.set_if_empty(&flag) && flag.load(Ordering::SeqCst));
    }
}
