//! Connection slots: the per-instance and per-user connection limits,
//! taken at the upgrade and given back when the connection ends.
//!
//! A slot is reserved before the `101` goes out, not counted from the
//! registry afterwards: a connection registers only once its task runs
//! (in cluster mode after a Redis round trip), so counting registered
//! connections would let a burst of upgrades all see room for one more.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::registry::Registry;

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
    /// Slots held per user are counted in the registry's user entry (read
    /// and changed under the entry's lock, so check-and-take is one step):
    /// an entry the user has anyway, rather than a second map that every
    /// connection would pay for.
    registry: Arc<Registry>,
}

impl Slots {
    pub fn new(max_total: usize, max_per_user: usize, registry: Arc<Registry>) -> Self {
        Slots {
            max_total,
            max_per_user,
            open: AtomicUsize::new(0),
            registry,
        }
    }

    /// Takes a slot for `user` (a scoped user key): the instance's first,
    /// then the user's, so a refusal of either leaves nothing taken.
    /// Dropping the returned slot gives both back.
    pub fn try_take(self: &Arc<Self>, user: Arc<str>) -> Result<ConnSlot, SlotRefusal> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            })
            .map_err(|_| SlotRefusal::Instance)?;
        // The slot keeps the registry's own key, so a user's connections
        // share one copy of the name.
        match self.registry.reserve_user(user, self.max_per_user) {
            Some(user) => Ok(ConnSlot {
                slots: self.clone(),
                user: Some(user),
            }),
            None => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                Err(SlotRefusal::User)
            }
        }
    }

    /// Slots held on the instance.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Slots held by one user.
    pub fn held_by(&self, user: &str) -> usize {
        self.registry.user_slots(user)
    }

    fn give_back(&self, user: Option<&Arc<str>>) {
        if let Some(user) = user {
            self.registry.release_user(user);
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot taken at the upgrade; given back when dropped.
pub struct ConnSlot {
    slots: Arc<Slots>,
    user: Option<Arc<str>>,
}

impl ConnSlot {
    /// The user's scoped key, shared with the registry.
    pub fn user(&self) -> Option<&Arc<str>> {
        self.user.as_ref()
    }

    /// Keeps the slot for a connection that holds its user's key itself,
    /// so what every connection carries is one pointer; give it back with
    /// [`HeldSlot::release`] and the same key.
    pub fn hold(mut self) -> HeldSlot {
        self.user = None;
        HeldSlot {
            slots: self.slots.clone(),
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        // After `hold` the slot lives on in the `HeldSlot`.
        if self.user.is_some() {
            self.slots.give_back(self.user.as_ref());
        }
    }
}

/// A slot held by a live connection (see [`ConnSlot::hold`]).
#[must_use = "a held slot is given back only by release"]
pub struct HeldSlot {
    slots: Arc<Slots>,
}

impl HeldSlot {
    pub fn release(self, user: &Arc<str>) {
        self.slots.give_back(Some(user));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn slots(max_total: usize, max_per_user: usize) -> Arc<Slots> {
        Arc::new(Slots::new(
            max_total,
            max_per_user,
            Arc::new(Registry::new()),
        ))
    }

    #[test]
    fn a_user_gets_at_most_its_share_and_gets_it_back() {
        let slots = slots(10, 2);
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
        let slots = slots(1, 5);
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
        let slots = slots(10, 3);
        let held: Vec<_> = (0..3).map(|_| slots.try_take(user("/a"))).collect();
        drop(held);
        assert_eq!(slots.held_by("/a"), 0);
        assert_eq!(slots.open(), 0);
        // A held slot is given back by its release.
        let held = slots.try_take(user("/a")).expect("slot").hold();
        assert_eq!((slots.open(), slots.held_by("/a")), (1, 1));
        held.release(&user("/a"));
        assert_eq!((slots.open(), slots.held_by("/a")), (0, 0));
    }

    #[test]
    fn concurrent_takers_never_pass_the_limit() {
        let slots = slots(1000, 3);
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
