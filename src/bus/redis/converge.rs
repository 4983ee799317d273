//! Convergent state sync for keys whose Redis state follows the local
//! registry (room subscriptions, per-instance presence).
//!
//! Two tasks can decide opposite changes for one key (the last member
//! leaves while a new one joins) and their commands could reach Redis in
//! the wrong order. Instead of queuing commands, each key has at most one
//! change in flight; whoever finishes one re-reads the wanted state from
//! the registry and applies it again if it moved. The last local state
//! therefore always wins, and no lock is held across the await.

use std::hash::Hash;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// What the caller should do after [`Converger::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Redis already holds the wanted state.
    Settled,
    /// Another task is changing this key and will re-check when done.
    Busy,
    /// Apply the wanted state, then call [`Converger::release`].
    Apply,
}

#[derive(Debug, Default)]
struct Slot {
    /// The state Redis holds as far as we know; `None` after a failure.
    applied: Option<bool>,
    busy: bool,
}

/// One slot per key whose state is not "absent and settled". A missing
/// slot means absent in Redis.
pub struct Converger<K: Eq + Hash> {
    slots: DashMap<K, Slot>,
}

impl<K: Eq + Hash + Clone> Converger<K> {
    pub fn new() -> Self {
        Converger {
            slots: DashMap::new(),
        }
    }

    pub fn claim(&self, key: &K, want: bool) -> Claim {
        match self.slots.entry(key.clone()) {
            Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                if slot.busy {
                    Claim::Busy
                } else if slot.applied == Some(want) {
                    if !want {
                        e.remove();
                    }
                    Claim::Settled
                } else {
                    slot.busy = true;
                    Claim::Apply
                }
            }
            Entry::Vacant(v) => {
                if !want {
                    Claim::Settled
                } else {
                    v.insert(Slot {
                        applied: Some(false),
                        busy: true,
                    });
                    Claim::Apply
                }
            }
        }
    }

    /// Ends a change; `applied` is the state now in Redis (`None` if unknown).
    pub fn release(&self, key: &K, applied: Option<bool>) {
        if let Entry::Occupied(mut e) = self.slots.entry(key.clone()) {
            let slot = e.get_mut();
            slot.busy = false;
            slot.applied = applied;
            if applied == Some(false) {
                e.remove();
            }
        }
    }

    /// Records a state written outside a claim (by a resync), unless a
    /// change is in flight (it re-checks when done).
    pub fn set_applied(&self, key: &K, applied: bool) {
        match self.slots.entry(key.clone()) {
            Entry::Occupied(mut e) => {
                if !e.get().busy {
                    if applied {
                        e.get_mut().applied = Some(true);
                    } else {
                        e.remove();
                    }
                }
            }
            Entry::Vacant(v) => {
                if applied {
                    v.insert(Slot {
                        applied: Some(true),
                        busy: false,
                    });
                }
            }
        }
    }

    /// Forgets what Redis holds for one key, so the next sync applies its
    /// state whatever it is (a resync of a key Redis may hold stale).
    pub fn unknown(&self, key: &K) {
        let mut slot = self.slots.entry(key.clone()).or_default();
        if !slot.busy {
            slot.applied = None;
        }
    }

    /// Forgets every non-busy slot's state (after Redis was lost).
    pub fn mark_unknown(&self) {
        for mut slot in self.slots.iter_mut() {
            if !slot.busy {
                slot.applied = None;
            }
        }
    }

    /// Keys currently recorded as present.
    pub fn present(&self) -> Vec<K> {
        self.slots
            .iter()
            .filter(|s| s.applied == Some(true))
            .map(|s| s.key().clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_change_in_flight_per_key() {
        let c: Converger<&str> = Converger::new();
        assert_eq!(c.claim(&"r", false), Claim::Settled);
        assert_eq!(c.claim(&"r", true), Claim::Apply);
        assert_eq!(c.claim(&"r", false), Claim::Busy);
        c.release(&"r", Some(true));
        assert_eq!(c.claim(&"r", true), Claim::Settled);
        assert_eq!(c.claim(&"r", false), Claim::Apply);
        c.release(&"r", None);
        // Unknown after a failure: applying again is allowed.
        assert_eq!(c.claim(&"r", false), Claim::Apply);
        c.release(&"r", Some(false));
        assert_eq!(c.claim(&"r", false), Claim::Settled);
        assert!(c.present().is_empty());
    }
}
