//! Coalesced presence: with `--presence-interval-ms`, the joins and leaves
//! a room sees (local and from other instances) are gathered per room and
//! sent as one `presence_diff` per member per interval, instead of one
//! `joined` or `left` per change to every member (quadratic in room size
//! while a room fills up). Phoenix's `presence_diff` is the model.
//!
//! A user who joins and leaves within one interval appears in neither
//! list; one who leaves and comes back, in neither either (present before
//! and after). `count` is the room's cluster-wide user count reported with
//! the latest change gathered, as `joined`/`left` carry it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One room's changes since the last flush.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Diff {
    /// Per user, in first-change order: whether the first change was a
    /// join (so the user was absent before) and whether the last one was
    /// (so the user is present now).
    users: Vec<(String, bool, bool)>,
    pub count: u64,
}

impl Diff {
    fn record(&mut self, user: &str, join: bool, count: u64) {
        match self.users.iter_mut().find(|(u, _, _)| u == user) {
            Some((_, _, last)) => *last = join,
            None => self.users.push((user.to_owned(), join, join)),
        }
        self.count = count;
    }

    /// Users absent before and present now.
    pub fn joins(&self) -> Vec<&str> {
        self.users
            .iter()
            .filter(|(_, first, last)| *first && *last)
            .map(|(u, _, _)| u.as_str())
            .collect()
    }

    /// Users present before and absent now.
    pub fn leaves(&self) -> Vec<&str> {
        self.users
            .iter()
            .filter(|(_, first, last)| !*first && !*last)
            .map(|(u, _, _)| u.as_str())
            .collect()
    }
}

/// The rooms' pending diffs. A mutex'd map: a change costs one short lock
/// and the flush swaps the whole map out in one.
#[derive(Default)]
pub struct PresenceDiffs {
    rooms: Mutex<HashMap<Arc<str>, Diff>>,
}

impl PresenceDiffs {
    /// Notes that `user` joined (`join`) or left a room, with the room's
    /// user count after the change.
    pub fn record(&self, room: &str, user: &str, join: bool, count: u64) {
        if let Ok(mut rooms) = self.rooms.lock() {
            match rooms.get_mut(room) {
                Some(d) => d.record(user, join, count),
                None => {
                    let mut d = Diff::default();
                    d.record(user, join, count);
                    rooms.insert(Arc::from(room), d);
                }
            }
        }
    }

    /// Every room's diff since the last call.
    pub fn take(&self) -> Vec<(Arc<str>, Diff)> {
        match self.rooms.lock() {
            Ok(mut rooms) => rooms.drain().collect(),
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_within_an_interval_net_out() {
        let diffs = PresenceDiffs::default();
        diffs.record("r", "a", true, 1);
        diffs.record("r", "b", true, 2);
        diffs.record("r", "a", false, 1);
        diffs.record("r", "c", false, 0);
        diffs.record("r", "c", true, 1);
        diffs.record("r", "d", false, 0);
        let taken = diffs.take();
        assert_eq!(taken.len(), 1);
        let d = &taken[0].1;
        assert_eq!(d.joins(), vec!["b"]);
        assert_eq!(d.leaves(), vec!["d"]);
        assert_eq!(d.count, 0);
        assert!(diffs.take().is_empty());
    }
}
