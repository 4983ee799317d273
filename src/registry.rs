//! The local registries: room -> connections, user -> connections and
//! connection -> rooms, all in `DashMap`s so that connection tasks on every
//! worker update them without a global lock.
//!
//! Invariant: a connection is in a room's member list exactly when the room
//! is in that connection's room set, and a user's connection list holds
//! exactly the user's registered live connections. Every method keeps all
//! maps true before it returns, never holds two guards at once, and never
//! awaits.
//!
//! Fan-out never runs under a guard: readers take a snapshot (an `Arc` of
//! the member list, one reference count) and push outside the map. Joins
//! and leaves change the list in place with `Arc::make_mut`, which copies
//! it only while a fan-out still holds the previous snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::conn::handle::{ConnHandle, ConnId};

/// Builds the tenant-scoped key of a room or user: `tenant/name`. Tenants
/// cannot contain `/`, so the first `/` always splits the two.
pub fn scoped(tenant: &str, name: &str) -> Arc<str> {
    let mut s = String::with_capacity(tenant.len() + 1 + name.len());
    s.push_str(tenant);
    s.push('/');
    s.push_str(name);
    s.into()
}

/// The name part of a scoped key, as clients see it.
pub fn unscoped(key: &str) -> &str {
    key.split_once('/').map_or(key, |(_, name)| name)
}

/// A room's member list as fan-out sees it: a snapshot that stays valid
/// (and unchanged) after the registry's guard is released.
pub type Members = Arc<Vec<Arc<ConnHandle>>>;

/// The members of one room on this instance.
#[derive(Default)]
pub struct RoomMembers {
    /// Every local connection in the room, shared with fan-outs in flight
    /// (see [`Members`]); joins push and leaves swap-remove.
    pub conns: Members,
    /// Local connection count per user, for presence (joined and left are
    /// per user, not per connection).
    pub users: HashMap<Arc<str>, u32>,
}

/// What a local join changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinChange {
    /// The room had no local member before: the bus must start routing it here.
    pub first_local: bool,
    /// The user had no local connection in the room before.
    pub first_of_user: bool,
}

/// What a local leave changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaveChange {
    /// The room has no local member left: the bus may stop routing it here.
    pub last_local: bool,
    /// The user has no local connection left in the room.
    pub last_of_user: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    AlreadyJoined,
    TooManyRooms,
    UnknownConnection,
}

struct ConnEntry {
    handle: Arc<ConnHandle>,
    rooms: HashSet<Arc<str>>,
}

/// One user's registered connections and connection slots (see
/// [`crate::slots`]): connections being upgraded or open. The entry exists
/// while either is non-zero.
#[derive(Default)]
struct UserEntry {
    conns: Vec<Arc<ConnHandle>>,
    slots: u32,
}

#[derive(Default)]
pub struct Registry {
    rooms: DashMap<Arc<str>, RoomMembers>,
    users: DashMap<Arc<str>, UserEntry>,
    conns: DashMap<ConnId, ConnEntry>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a new connection and its user route.
    pub fn add_conn(&self, handle: &Arc<ConnHandle>) {
        self.conns.insert(
            handle.id,
            ConnEntry {
                handle: handle.clone(),
                rooms: HashSet::new(),
            },
        );
        self.users
            .entry(handle.user.clone())
            .or_default()
            .conns
            .push(handle.clone());
    }

    /// Takes one of the user's at most `max` connection slots; returns the
    /// map's key for the user (one shared copy of the name), or `None` at
    /// the limit.
    pub fn reserve_user(&self, user: Arc<str>, max: usize) -> Option<Arc<str>> {
        let mut e = self.users.entry(user).or_default();
        if e.slots as usize >= max {
            let unused = e.slots == 0 && e.conns.is_empty();
            let key = e.key().clone();
            drop(e);
            if unused {
                self.users
                    .remove_if(&key, |_, u| u.slots == 0 && u.conns.is_empty());
            }
            return None;
        }
        e.slots += 1;
        Some(e.key().clone())
    }

    /// Gives back one of the user's connection slots.
    pub fn release_user(&self, user: &Arc<str>) {
        if let Entry::Occupied(mut e) = self.users.entry(user.clone()) {
            let u = e.get_mut();
            u.slots = u.slots.saturating_sub(1);
            if u.slots == 0 && u.conns.is_empty() {
                e.remove();
            }
        }
    }

    /// Connection slots the user holds.
    pub fn user_slots(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |u| u.slots as usize)
    }

    /// Removes a connection from every map. Returns each room it was in,
    /// with what its departure changed there.
    pub fn remove_conn(&self, handle: &ConnHandle) -> Vec<(Arc<str>, LeaveChange)> {
        let rooms = self
            .conns
            .remove(&handle.id)
            .map(|(_, e)| e.rooms)
            .unwrap_or_default();
        if let Entry::Occupied(mut e) = self.users.entry(handle.user.clone()) {
            let u = e.get_mut();
            u.conns.retain(|c| c.id != handle.id);
            if u.conns.is_empty() && u.slots == 0 {
                e.remove();
            }
        }
        rooms
            .into_iter()
            .filter_map(|room| {
                let change = self.remove_member(&room, handle)?;
                Some((room, change))
            })
            .collect()
    }

    pub fn join(
        &self,
        handle: &Arc<ConnHandle>,
        room: &Arc<str>,
        max_rooms: usize,
    ) -> Result<JoinChange, JoinError> {
        {
            let mut entry = self
                .conns
                .get_mut(&handle.id)
                .ok_or(JoinError::UnknownConnection)?;
            if entry.rooms.contains(room) {
                return Err(JoinError::AlreadyJoined);
            }
            if entry.rooms.len() >= max_rooms {
                return Err(JoinError::TooManyRooms);
            }
            entry.rooms.insert(room.clone());
        }
        let mut members = self.rooms.entry(room.clone()).or_default();
        let first_local = members.conns.is_empty();
        Arc::make_mut(&mut members.conns).push(handle.clone());
        let n = members.users.entry(handle.user.clone()).or_insert(0);
        *n += 1;
        Ok(JoinChange {
            first_local,
            first_of_user: *n == 1,
        })
    }

    /// Leaves a room; `None` when the connection was not in it.
    pub fn leave(&self, handle: &ConnHandle, room: &Arc<str>) -> Option<LeaveChange> {
        let was_in = self
            .conns
            .get_mut(&handle.id)
            .is_some_and(|mut e| e.rooms.remove(room));
        if !was_in {
            return None;
        }
        self.remove_member(room, handle)
    }

    fn remove_member(&self, room: &Arc<str>, handle: &ConnHandle) -> Option<LeaveChange> {
        let Entry::Occupied(mut e) = self.rooms.entry(room.clone()) else {
            return None;
        };
        let members = e.get_mut();
        let pos = members.conns.iter().position(|c| c.id == handle.id)?;
        Arc::make_mut(&mut members.conns).swap_remove(pos);
        let last_of_user = match members.users.get_mut(&handle.user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                members.users.remove(&handle.user);
                true
            }
        };
        let last_local = members.conns.is_empty();
        if last_local {
            e.remove();
        }
        Some(LeaveChange {
            last_local,
            last_of_user,
        })
    }

    pub fn is_member(&self, conn: ConnId, room: &str) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|e| e.rooms.contains(room))
    }

    /// The room's local members, as a snapshot to deliver to outside the
    /// map's lock; `None` when the room has no local member.
    pub fn room_members(&self, room: &str) -> Option<Members> {
        self.rooms.get(room).map(|m| m.conns.clone())
    }

    /// The user's local connections, copied out of the map.
    pub fn user_conns(&self, user: &str) -> Vec<Arc<ConnHandle>> {
        self.users
            .get(user)
            .map(|u| u.conns.clone())
            .unwrap_or_default()
    }

    /// Whether the room has local members.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Whether the user has a local connection in the room.
    pub fn has_member(&self, room: &str, user: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|m| m.users.contains_key(user))
    }

    /// Distinct local users of a room.
    pub fn room_user_count(&self, room: &str) -> u64 {
        self.rooms.get(room).map_or(0, |m| m.users.len() as u64)
    }

    /// Every local room with its number of distinct local users (admin
    /// figures; never on a message's path).
    pub fn room_user_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.rooms
            .iter()
            .map(|e| (e.key().clone(), e.users.len() as u64))
            .collect()
    }

    /// Users with a connection or a connection slot on this instance.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Every local room with its distinct local users.
    pub fn memberships(&self) -> HashMap<Arc<str>, HashSet<Arc<str>>> {
        self.rooms
            .iter()
            .map(|e| (e.key().clone(), e.users.keys().cloned().collect()))
            .collect()
    }

    /// Every local user with a registered connection, with its connections.
    pub fn users(&self) -> Vec<(Arc<str>, Vec<Arc<ConnHandle>>)> {
        self.users
            .iter()
            .filter(|e| !e.conns.is_empty())
            .map(|e| (e.key().clone(), e.conns.clone()))
            .collect()
    }

    /// Distinct local users of a room, unscoped.
    pub fn room_users(&self, room: &str) -> Vec<String> {
        self.rooms
            .get(room)
            .map(|m| m.users.keys().map(|u| unscoped(u).to_owned()).collect())
            .unwrap_or_default()
    }

    pub fn user_conn_count(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |u| u.conns.len())
    }

    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The rooms a connection is in.
    pub fn rooms_of(&self, conn: ConnId) -> Vec<Arc<str>> {
        self.conns
            .get(&conn)
            .map(|e| e.rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// One local connection by id.
    pub fn conn(&self, id: ConnId) -> Option<Arc<ConnHandle>> {
        self.conns.get(&id).map(|e| e.handle.clone())
    }

    /// A snapshot of every local connection (for drain and admin).
    pub fn all_conns(&self) -> Vec<Arc<ConnHandle>> {
        self.conns.iter().map(|e| e.handle.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlowConsumerPolicy;
    use crate::protocol::Codec;

    fn conn(id: ConnId, user: &str) -> Arc<ConnHandle> {
        ConnHandle::new(id, user.into(), Codec::Json, 8, SlowConsumerPolicy::Drop)
    }

    #[test]
    fn join_leave_disconnect_keep_maps_consistent() {
        let reg = Registry::new();
        let room: Arc<str> = scoped("", "r");
        let (a1, a2, b) = (conn(1, "/a"), conn(2, "/a"), conn(3, "/b"));
        for c in [&a1, &a2, &b] {
            reg.add_conn(c);
        }
        let j = reg.join(&a1, &room, 10).expect("join");
        assert_eq!(
            j,
            JoinChange {
                first_local: true,
                first_of_user: true
            }
        );
        let j = reg.join(&a2, &room, 10).expect("join");
        assert_eq!(
            j,
            JoinChange {
                first_local: false,
                first_of_user: false
            }
        );
        reg.join(&b, &room, 10).expect("join");
        assert_eq!(reg.join(&b, &room, 10), Err(JoinError::AlreadyJoined));
        assert_eq!(reg.room_users(&room).len(), 2);

        let l = reg.leave(&a1, &room).expect("leave");
        assert_eq!(
            l,
            LeaveChange {
                last_local: false,
                last_of_user: false
            }
        );
        assert!(reg.leave(&a1, &room).is_none());
        let gone = reg.remove_conn(&a2);
        assert_eq!(gone.len(), 1);
        assert!(gone[0].1.last_of_user && !gone[0].1.last_local);
        let gone = reg.remove_conn(&b);
        assert!(gone[0].1.last_local);
        assert_eq!(reg.room_count(), 0);
        assert_eq!(reg.user_conn_count("/a"), 1);
        reg.remove_conn(&a1);
        assert_eq!(reg.user_conn_count("/a"), 0);
        assert_eq!(reg.conn_count(), 0);
    }

    #[test]
    fn a_snapshot_outlives_joins_and_leaves_unchanged() {
        let reg = Registry::new();
        let room: Arc<str> = scoped("", "r");
        let (a, b, c) = (conn(1, "/a"), conn(2, "/b"), conn(3, "/c"));
        for x in [&a, &b, &c] {
            reg.add_conn(x);
        }
        reg.join(&a, &room, 10).expect("join");
        reg.join(&b, &room, 10).expect("join");
        let snapshot = reg.room_members(&room).expect("members");
        reg.leave(&a, &room).expect("leave");
        reg.join(&c, &room, 10).expect("join");
        let ids = |m: &Members| m.iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(ids(&snapshot), vec![1, 2]);
        let mut now = ids(&reg.room_members(&room).expect("members"));
        now.sort_unstable();
        assert_eq!(now, vec![2, 3]);
        // Without a snapshot held, the list is changed in place.
        drop(snapshot);
        let before = Arc::as_ptr(&reg.room_members(&room).expect("members"));
        reg.leave(&c, &room).expect("leave");
        let after = Arc::as_ptr(&reg.room_members(&room).expect("members"));
        assert_eq!(before, after);
    }

    #[test]
    fn max_rooms_is_enforced() {
        let reg = Registry::new();
        let c = conn(1, "/a");
        reg.add_conn(&c);
        reg.join(&c, &scoped("", "r1"), 1).expect("first");
        assert_eq!(
            reg.join(&c, &scoped("", "r2"), 1),
            Err(JoinError::TooManyRooms)
        );
    }
}
