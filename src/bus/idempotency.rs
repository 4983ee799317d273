//! Idempotency records of the server API: a request's `Idempotency-Key`
//! is claimed before it runs and holds its answer afterwards, for a
//! window. Cluster mode keeps them in Redis (`SET NX PX`, so a retry sent
//! to another instance finds them); standalone mode keeps them here, in
//! memory.
//!
//! A record is text: `<fingerprint>|P` while the first request runs, and
//! `<fingerprint>|D|<answer>` once it answered. The fingerprint is a hash of
//! the request, so the same key sent with another request is told apart.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdemClaim {
    /// Nobody had it: run the request, then `finish` (or `release`).
    Fresh,
    /// The first request with this key answered this.
    Done(String),
    /// The first request with this key is still running.
    Pending,
    /// The key was used for a different request.
    Mismatch,
}

/// Most records the standalone store holds; beyond it new keys are refused
/// (the caller answers `unavailable`) rather than forgotten early.
pub const MEMORY_MAX_RECORDS: usize = 1_000_000;

/// Reads a stored record against the fingerprint of the request at hand.
pub fn judge(record: &str, fingerprint: &str) -> IdemClaim {
    let Some((fp, rest)) = record.split_once('|') else {
        return IdemClaim::Mismatch;
    };
    if fp != fingerprint {
        return IdemClaim::Mismatch;
    }
    match rest.strip_prefix("D|") {
        Some(answer) => IdemClaim::Done(answer.to_owned()),
        None => IdemClaim::Pending,
    }
}

pub fn pending_record(fingerprint: &str) -> String {
    format!("{fingerprint}|P")
}

pub fn done_record(fingerprint: &str, answer: &str) -> String {
    format!("{fingerprint}|D|{answer}")
}

/// The standalone store: key -> (expiry, record).
#[derive(Default)]
pub struct MemoryIdempotency {
    records: DashMap<String, (Instant, String)>,
}

impl MemoryIdempotency {
    /// Claims `key` for `window`, unless a live record holds it. `None`
    /// when the store is full.
    pub fn claim(&self, key: &str, fingerprint: &str, window: Duration) -> Option<IdemClaim> {
        let now = Instant::now();
        if self.records.len() >= MEMORY_MAX_RECORDS {
            self.sweep();
            if self.records.len() >= MEMORY_MAX_RECORDS {
                return None;
            }
        }
        match self.records.entry(key.to_owned()) {
            Entry::Occupied(mut e) => {
                if e.get().0 > now {
                    return Some(judge(&e.get().1, fingerprint));
                }
                e.insert((now + window, pending_record(fingerprint)));
            }
            Entry::Vacant(v) => {
                v.insert((now + window, pending_record(fingerprint)));
            }
        }
        Some(IdemClaim::Fresh)
    }

    pub fn finish(&self, key: &str, fingerprint: &str, answer: &str, window: Duration) {
        self.records.insert(
            key.to_owned(),
            (Instant::now() + window, done_record(fingerprint, answer)),
        );
    }

    pub fn release(&self, key: &str) {
        self.records.remove(key);
    }

    /// Drops expired records.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.records.retain(|_, (until, _)| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_answers_as_first_then_expires() {
        let store = MemoryIdempotency::default();
        let w = Duration::from_secs(60);
        assert_eq!(store.claim("k", "f1", w), Some(IdemClaim::Fresh));
        assert_eq!(store.claim("k", "f1", w), Some(IdemClaim::Pending));
        store.finish("k", "f1", "200|{}", w);
        assert_eq!(
            store.claim("k", "f1", w),
            Some(IdemClaim::Done("200|{}".into()))
        );
        assert_eq!(store.claim("k", "f2", w), Some(IdemClaim::Mismatch));
        store.release("k");
        assert_eq!(store.claim("k", "f2", w), Some(IdemClaim::Fresh));
        let short = MemoryIdempotency::default();
        assert_eq!(
            short.claim("k", "f", Duration::ZERO),
            Some(IdemClaim::Fresh)
        );
        assert_eq!(short.claim("k", "f", w), Some(IdemClaim::Fresh));
    }

    #[test]
    fn records_with_bars_in_the_answer_parse() {
        assert_eq!(
            judge(&done_record("f", "200|{\"a\":\"x|y\"}"), "f"),
            IdemClaim::Done("200|{\"a\":\"x|y\"}".into())
        );
        assert_eq!(judge("garbage", "f"), IdemClaim::Mismatch);
    }
}
