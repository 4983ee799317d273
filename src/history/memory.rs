//! The standalone history store: per room, a ring of the last `size`
//! messages (each dropped after `ttl`), the last offset and the epoch. A
//! room's position outlives its messages by `meta_ttl`; a restarted
//! process has new epochs (its history is gone).
//!
//! Appending assigns the offset and hands the message to the caller's
//! delivery under the room's lock, so offsets reach the local order in
//! the order they were assigned.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{HistoryRead, HistoryRule, Query, new_epoch};
use crate::bus::RoomMessage;

struct RoomLog {
    epoch: Arc<str>,
    top: u64,
    /// Oldest first, contiguous offsets ending at `top`.
    entries: VecDeque<(Instant, RoomMessage)>,
    touched: Instant,
    /// How long the position outlives the last write.
    keep: Duration,
}

impl RoomLog {
    fn new(now: Instant, keep: Duration) -> Self {
        RoomLog {
            epoch: new_epoch(),
            top: 0,
            entries: VecDeque::new(),
            touched: now,
            keep,
        }
    }

    fn trim(&mut self, rule: &HistoryRule, now: Instant) {
        while self.entries.len() > rule.size {
            self.entries.pop_front();
        }
        while let Some((at, _)) = self.entries.front() {
            if now.duration_since(*at) > rule.ttl {
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }
}

#[derive(Default)]
pub struct MemoryHistory {
    rooms: DashMap<Arc<str>, Arc<Mutex<RoomLog>>>,
}

impl MemoryHistory {
    fn log(&self, room: &Arc<str>, keep: Duration) -> Arc<Mutex<RoomLog>> {
        self.rooms
            .entry(room.clone())
            .or_insert_with(|| Arc::new(Mutex::new(RoomLog::new(Instant::now(), keep))))
            .clone()
    }

    /// Stamps the next offset and the epoch on `msg`, keeps it, and calls
    /// `deliver` with it, all under the room's lock.
    pub fn append(
        &self,
        room: &Arc<str>,
        rule: &HistoryRule,
        keep: Duration,
        mut msg: RoomMessage,
        deliver: impl FnOnce(RoomMessage),
    ) {
        let log = self.log(room, keep);
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(log.touched) > log.keep {
            // Swept concurrently in spirit: the position expired.
            *log = RoomLog::new(now, keep);
        }
        log.top += 1;
        log.touched = now;
        log.keep = keep;
        msg.offset = Some(log.top);
        msg.epoch = Some(log.epoch.clone());
        log.entries.push_back((now, msg.clone()));
        log.trim(rule, now);
        deliver(msg);
    }

    /// Reads the room's position and the messages the query asks for.
    pub fn read(
        &self,
        room: &Arc<str>,
        rule: &HistoryRule,
        keep: Duration,
        query: Query,
    ) -> HistoryRead {
        let log = self.log(room, keep);
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(log.touched) > log.keep {
            *log = RoomLog::new(now, keep);
        }
        log.trim(rule, now);
        let messages = match query {
            Query::Position => Vec::new(),
            Query::After(after) => log
                .entries
                .iter()
                .filter(|(_, m)| m.offset.is_some_and(|o| o > after))
                .map(|(_, m)| m.clone())
                .collect(),
            Query::Latest(n) => {
                let skip = log.entries.len().saturating_sub(n);
                log.entries
                    .iter()
                    .skip(skip)
                    .map(|(_, m)| m.clone())
                    .collect()
            }
        };
        HistoryRead {
            epoch: log.epoch.clone(),
            top: log.top,
            messages,
        }
    }

    /// Drops the rooms whose position expired.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.rooms.retain(|_, log| {
            let log = log.lock().unwrap_or_else(|e| e.into_inner());
            now.duration_since(log.touched) <= log.keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Data;

    fn msg(n: u64) -> RoomMessage {
        RoomMessage {
            from: "a".into(),
            data: Data::from_json(&n.to_string()).expect("json"),
            ts: n,
            mid: format!("m{n}"),
            offset: None,
            epoch: None,
            key: None,
        }
    }

    #[test]
    fn offsets_size_and_reads() {
        let h = MemoryHistory::default();
        let room: Arc<str> = "/r".into();
        let rule = HistoryRule::parse("r=3/1h").expect("rule");
        let keep = Duration::from_secs(60);
        let mut seen = Vec::new();
        for n in 0..5 {
            h.append(&room, &rule, keep, msg(n), |m| seen.push(m.offset));
        }
        assert_eq!(seen, (1..=5).map(Some).collect::<Vec<_>>());
        let r = h.read(&room, &rule, keep, Query::After(2));
        assert_eq!(r.top, 5);
        let offs: Vec<_> = r.messages.iter().filter_map(|m| m.offset).collect();
        assert_eq!(offs, vec![3, 4, 5]);
        assert!(r.complete_after(2));
        let r = h.read(&room, &rule, keep, Query::After(1));
        assert!(!r.complete_after(1), "offset 2 fell out of the ring");
        let r = h.read(&room, &rule, keep, Query::Latest(2));
        let offs: Vec<_> = r.messages.iter().filter_map(|m| m.offset).collect();
        assert_eq!(offs, vec![4, 5]);
        assert!(
            h.read(&room, &rule, keep, Query::After(5))
                .complete_after(5)
        );
    }
}
