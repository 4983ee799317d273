//! Cluster-wide presence, kept per instance so a dead instance can be
//! undone: `P:instance-room:<id>:<room>` is the set of users this instance
//! holds in a room, and `P:presence:<room>` counts, per user, the
//! instances holding them. A room's count is the number of distinct users.
//!
//! Each (room, user) record converges on the local registry (see
//! [`super::converge`]), so a leave and a re-join racing each other cannot
//! leave Redis in the older state.

use std::collections::HashSet;
use std::sync::Arc;

use fred::prelude::{Error as RedisError, HashesInterface, SetsInterface};

use super::converge::Claim;
use super::{Shared, metric};
use crate::bus::RoomEvent;
use crate::registry::unscoped;

/// What a presence sync changed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Synced {
    /// The room's distinct users, cluster-wide, afterwards.
    pub count: u64,
    /// +1: the user appeared in the room cluster-wide; -1: vanished.
    pub flip: i64,
}

impl From<Synced> for crate::bus::PresenceChange {
    fn from(s: Synced) -> Self {
        crate::bus::PresenceChange {
            count: s.count,
            changed: s.flip != 0,
        }
    }
}

impl Shared {
    /// The local direction of (room, user): +1 when the user has a local
    /// connection in the room, -1 otherwise. Used when Redis cannot say,
    /// so local members still hear local joins and leaves.
    fn local_flip(&self, room: &str, user: &Arc<str>) -> i64 {
        if self.hub.has_member(room, user) {
            1
        } else {
            -1
        }
    }

    fn local_count(&self, room: &str) -> u64 {
        self.hub.room_user_count(room)
    }

    /// Brings this instance's record of (room, user) in line with the
    /// registry; falls back to the local count when Redis is unreachable.
    pub(super) async fn presence_sync(&self, room: &Arc<str>, user: &Arc<str>) -> Synced {
        if !self.up() {
            metric::skipped("presence");
            self.mark_dirty();
            return Synced {
                count: self.local_count(room),
                flip: self.local_flip(room, user),
            };
        }
        match self.presence_apply(room, user).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                let count = match self.client.hlen(self.keys.presence(room)).await {
                    Ok(n) => n,
                    Err(_) => self.local_count(room),
                };
                Synced { count, flip: 0 }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot update presence; will retry");
                metric::error("presence");
                self.mark_dirty();
                Synced {
                    count: self.local_count(room),
                    flip: self.local_flip(room, user),
                }
            }
        }
    }

    /// Applies the wanted state until it stops moving; `None` when nothing
    /// needed applying (or another task is on it).
    async fn presence_apply(
        &self,
        room: &Arc<str>,
        user: &Arc<str>,
    ) -> Result<Option<Synced>, RedisError> {
        let key = (room.clone(), user.clone());
        let mut done: Option<Synced> = None;
        loop {
            let want = self.hub.has_member(room, user);
            if self.presence.claim(&key, want) != Claim::Apply {
                return Ok(done);
            }
            let r = self.run_presence_set(room, user, want).await;
            self.presence.release(&key, r.as_ref().ok().map(|_| want));
            let s = r?;
            done = Some(Synced {
                count: s.count,
                flip: done.map_or(0, |d| d.flip) + s.flip,
            });
        }
    }

    async fn run_presence_set(
        &self,
        room: &Arc<str>,
        user: &Arc<str>,
        want: bool,
    ) -> Result<Synced, RedisError> {
        let k = &self.keys;
        let out: Vec<i64> = self
            .scripts
            .presence_set
            .run(
                &self.client,
                vec![
                    k.presence(room),
                    k.instance_room(self.id(), room),
                    k.instance_rooms(self.id()),
                ],
                vec![
                    user.to_string(),
                    room.to_string(),
                    if want { "1" } else { "0" }.to_owned(),
                ],
            )
            .await?;
        Ok(Synced {
            count: out.first().copied().unwrap_or(0).max(0) as u64,
            flip: out.get(1).copied().unwrap_or(0),
        })
    }

    pub(super) async fn presence_list(&self, room: &Arc<str>) -> Vec<String> {
        if !self.up() {
            return self.hub.room_users(room);
        }
        match self
            .client
            .hkeys::<Vec<String>, _>(self.keys.presence(room))
            .await
        {
            Ok(users) => users.iter().map(|u| unscoped(u).to_owned()).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "presence from redis failed; answering with local members");
                metric::error("presence_list");
                self.hub.room_users(room)
            }
        }
    }

    /// Makes Redis hold exactly this instance's memberships: every local
    /// (room, user) present, every other record of this instance removed.
    /// Users who vanish are announced with `left` to the other instances;
    /// users who appear get `joined` unless Redis lost everything (`fresh`),
    /// when nobody had seen them leave.
    pub(super) async fn reconcile_presence(&self, fresh: bool) -> Result<(), RedisError> {
        let mut keys: HashSet<(Arc<str>, Arc<str>)> = HashSet::new();
        for (room, users) in self.hub.memberships() {
            for user in users {
                keys.insert((room.clone(), user));
            }
        }
        let rooms: Vec<String> = self
            .client
            .smembers(self.keys.instance_rooms(self.id()))
            .await?;
        for room in rooms {
            let users: Vec<String> = self
                .client
                .smembers(self.keys.instance_room(self.id(), &room))
                .await?;
            let room: Arc<str> = room.into();
            for user in users {
                keys.insert((room.clone(), user.into()));
            }
        }
        keys.extend(self.presence.present());
        for key in &keys {
            self.presence.unknown(key);
        }
        let jobs = keys.into_iter().map(|(room, user)| async move {
            let Some(s) = self.presence_apply(&room, &user).await? else {
                return Ok(());
            };
            let name = unscoped(&user).to_owned();
            let event = match s.flip {
                f if f < 0 => RoomEvent::Left {
                    user: name,
                    count: s.count,
                },
                f if f > 0 && !fresh => RoomEvent::Joined {
                    user: name,
                    count: s.count,
                },
                _ => return Ok(()),
            };
            // Local members heard of it when it happened.
            self.publish(&room, &event).await;
            Ok::<(), RedisError>(())
        });
        for r in super::sync::bounded(jobs, 64).await {
            r?;
        }
        Ok(())
    }
}
