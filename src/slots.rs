//! Connection slots: the per-instance and per-user connection limits,
//! taken at the upgrade and given back when the connection ends.
//!
//! A slot is reserved before the `101` goes out, not counted from the
//! registry afterwards: a connection registers only once its task runs
//! (in cluster mode after a Redis round trip), so counting registered
//! connections would let a burst of upgrades all see room for one more.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefusal {
    /// The user holds `max_per_user` slots on this instance already.
    User,
    /// The instance holds `max_total` slots already.
    Instance,
}

/// The counters behind the slots of one instance.
pub struct Slots {
    max_total: usize,
    max_per_user: usize,
    /// Slots held on the instance. An atomic: one number, updated with a
    /// compare-and-swap so it never passes the limit.
    open: AtomicUsize,
    /// Slots held per scoped user. A DashMap so that users on different
    /// shards never contend; a user's count is read and changed under its
    /// entry's lock, which makes check-and-take one step. Users holding no
    /// slot have no entry.
    per_user: DashMap<Arc<str>, usize>,
}

impl Slots {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        Slots {
            max_total,
            max_per_user,
            open: AtomicUsize::new(0),
            per_user: DashMap::new(),
        }
    }

    /// Takes a slot for `user` (a scoped user key): the user's first, so a
    /// user at its limit is told so even when the instance is full too.
    /// Dropping the returned slot gives both back.
    pub fn try_take(self: &Arc<Self>, user: Arc<str>) -> Result<ConnSlot, SlotRefusal> {
        // The slot keeps the map's own key, so a user's connections share
        // one copy of the name.
        let user = match self.per_user.entry(user) {
            Entry::Occupied(mut e) => {
                if *e.get() >= self.max_per_user {
                    return Err(SlotRefusal::User);
                }
                *e.get_mut() += 1;
                e.key().clone()
            }
            Entry::Vacant(e) => {
                if self.max_per_user == 0 {
                    return Err(SlotRefusal::User);
                }
                let user = e.key().clone();
                e.insert(1);
                user
            }
        };
        // From here on, dropping `slot` gives the user's slot back.
        let mut slot = ConnSlot {
            slots: self.clone(),
            user,
            instance: false,
        };
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            })
            .map_err(|_| SlotRefusal::Instance)?;
        slot.instance = true;
        Ok(slot)
    }

    /// Slots held on the instance.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Slots held by `user` (a scoped user key).
    pub fn held_by(&self, user: &str) -> usize {
        self.per_user.get(user).map_or(0, |n| *n)
    }

    fn give_back(&self, user: &Arc<str>) {
        if let Entry::Occupied(mut e) = self.per_user.entry(user.clone()) {
            if *e.get() <= 1 {
                e.remove();
            } else {
                *e.get_mut() -= 1;
            }
        }
    }
}

/// A held connection slot, per user and per instance; dropping it gives
/// both back.
pub struct ConnSlot {
    slots: Arc<Slots>,
    user: Arc<str>,
    /// Whether the instance-wide slot was taken as well.
    instance: bool,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.slots.give_back(&self.user);
        if self.instance {
            self.slots.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_user_gets_at_most_its_share_and_gets_it_back() {
        let slots = Arc::new(Slots::new(10, 2));
        let a1 = slots.try_take(user("/a")).expect("first");
        let _a2 = slots.try_take(user("/a")).expect("second");
        assert_eq!(slots.try_take(user("/a")).err(), Some(SlotRefusal::User));
        let _b = slots.try_take(user("/b")).expect("another user");
        assert_eq!(slots.open(), 3);
        drop(a1);
        assert_eq!(slots.held_by("/a"), 1);
        assert!(slots.try_take(user("/a")).is_ok());
    }

    #[test]
    fn a_full_instance_refuses_and_keeps_no_user_slot() {
        let slots = Arc::new(Slots::new(1, 5));
        let _a = slots.try_take(user("/a")).expect("first");
        assert_eq!(
            slots.try_take(user("/b")).err(),
            Some(SlotRefusal::Instance)
        );
        assert_eq!(slots.held_by("/b"), 0);
        assert_eq!(slots.open(), 1);
    }

    #[test]
    fn the_last_slot_of_a_user_removes_its_entry() {
        let slots = Arc::new(Slots::new(10, 3));
        let held: Vec<_> = (0..3).map(|_| slots.try_take(user("/a"))).collect();
        drop(held);
        assert!(slots.per_user.is_empty());
        assert_eq!(slots.open(), 0);
    }

    #[test]
    fn concurrent_takers_never_pass_the_limit() {
        let slots = Arc::new(Slots::new(1000, 3));
        let taken: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let slots = slots.clone();
                    s.spawn(move || {
                        (0..50)
                            .filter_map(|_| slots.try_take(user("/crowd")).ok())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        assert_eq!(taken.len(), 3);
        assert_eq!(slots.open(), 3);
        drop(taken);
        assert_eq!(slots.open(), 0);
        assert_eq!(slots.held_by("/crowd"), 0);
    }
}
