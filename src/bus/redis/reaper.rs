//! The reaper. Every instance periodically looks for instances whose
//! registry score is older than the heartbeat TTL and whose heartbeat key
//! is gone. For each, one survivor wins `SET P:reap-lock:<id> NX PX` and
//! removes the dead instance's routes and presence records, publishing
//! `left` (with the corrected count) for every user who vanished from a
//! room. Each step re-checks in Redis that the instance is still dead, so
//! an instance that comes back is never cleaned up under its feet; its
//! next heartbeat notices the lost registration and re-asserts everything.
//!
//! Graceful shutdown runs the same cleanup on this instance's own records.

use std::sync::Arc;

use fred::prelude::{
    Error as RedisError, Expiration, KeysInterface, SetOptions, SetsInterface, Value,
};

use super::{Shared, Ticker, metric, wire};
use crate::bus::RoomEvent;
use crate::registry::unscoped;

/// Users and rooms handled per step (bounds each script's run time).
const USERS_PER_STEP: usize = 256;
const ROOMS_PER_STEP: usize = 64;
/// How long a reaped instance can come back and learn that it was reaped.
const REAPED_MARKER_TTL_MS: u64 = 86_400_000;

pub async fn run(shared: Arc<Shared>) {
    let mut tick = Ticker::new(shared.tuning.reaper_interval);
    while tick.next_ready(&shared).await {
        if let Err(e) = shared.reap_dead().await {
            tracing::warn!(error = %e, "reaper pass failed");
            metric::error("reaper");
        }
    }
}

impl Shared {
    async fn reap_dead(&self) -> Result<(), RedisError> {
        let k = &self.keys;
        let dead: Vec<String> = self
            .scripts
            .find_dead
            .run(
                &self.client,
                vec![k.instances()],
                vec![
                    self.tuning.heartbeat_ttl.as_millis().to_string(),
                    k.heartbeat(""),
                    self.id().to_owned(),
                ],
            )
            .await?;
        for id in dead {
            let won: Value = self
                .client
                .set(
                    k.reap_lock(&id),
                    self.id(),
                    Some(Expiration::PX(self.tuning.reap_lock_ttl.as_millis() as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await?;
            if won.is_null() {
                continue;
            }
            tracing::warn!(instance = %id, "reaping a dead instance");
            if self.reap(&id).await? {
                metric::reaped();
                tracing::info!(instance = %id, "dead instance removed");
            } else {
                tracing::info!(instance = %id, "instance came back; reaping stopped");
            }
        }
        Ok(())
    }

    /// Removes every record of instance `id`; false when it turned out alive.
    async fn reap(&self, id: &str) -> Result<bool, RedisError> {
        // A record written while a step ran (an operation of the instance
        // in flight when it died) needs another round.
        for _ in 0..3 {
            match self.reap_round(id).await? {
                Some(alive_again) => return Ok(!alive_again),
                None => continue,
            }
        }
        Ok(true)
    }

    /// One cleanup round: `Some(false)` done, `Some(true)` alive again,
    /// `None` records left.
    async fn reap_round(&self, id: &str) -> Result<Option<bool>, RedisError> {
        let k = &self.keys;
        loop {
            let users: Vec<String> = self
                .client
                .srandmember(k.instance_users(id), Some(USERS_PER_STEP))
                .await?;
            if users.is_empty() {
                break;
            }
            let mut keys = vec![k.heartbeat(id), k.instance_users(id)];
            keys.extend(users.iter().map(|u| k.routes(u)));
            let mut args = vec![id.to_owned()];
            args.extend(users);
            let n: i64 = self
                .scripts
                .reap_routes
                .run(&self.client, keys, args)
                .await?;
            if n < 0 {
                return Ok(Some(true));
            }
        }
        loop {
            let rooms: Vec<String> = self
                .client
                .srandmember(k.instance_rooms(id), Some(ROOMS_PER_STEP))
                .await?;
            if rooms.is_empty() {
                break;
            }
            for room in rooms {
                let out: Vec<Value> = self
                    .scripts
                    .reap_room
                    .run(
                        &self.client,
                        vec![
                            k.presence(&room),
                            k.instance_room(id, &room),
                            k.instance_rooms(id),
                            k.heartbeat(id),
                        ],
                        vec![room.clone()],
                    )
                    .await?;
                let mut it = out.into_iter();
                let count = it.next().and_then(|v| v.as_i64()).unwrap_or(-1);
                if count < 0 {
                    return Ok(Some(true));
                }
                let room: Arc<str> = room.into();
                for user in it.filter_map(|v| v.into_string()) {
                    let event = RoomEvent::Left {
                        user: unscoped(&user).to_owned(),
                        count: count as u64,
                    };
                    // The dead instance's users left every room: local
                    // members hear it here, the others through Redis.
                    self.hub.deliver_room(&room, &event);
                    self.publish(&room, &event).await;
                }
            }
        }
        let done: i64 = self
            .scripts
            .reap_finish
            .run(
                &self.client,
                vec![
                    k.heartbeat(id),
                    k.instances(),
                    k.instance_users(id),
                    k.instance_rooms(id),
                    k.reap_lock(id),
                    k.reaped(id),
                ],
                vec![
                    id.to_owned(),
                    self.id().to_owned(),
                    REAPED_MARKER_TTL_MS.to_string(),
                ],
            )
            .await?;
        match done {
            d if d < 0 => Ok(Some(true)),
            0 => Ok(None),
            _ => {
                let _: Result<i64, _> = fred::prelude::PubsubInterface::publish(
                    &self.client,
                    k.global_channel(),
                    wire::encode_gone(self.id(), id),
                )
                .await;
                Ok(Some(false))
            }
        }
    }

    /// Removes this instance from the cluster (graceful shutdown): the
    /// heartbeat first, so other instances stop routing here, then every
    /// remaining record, as the reaper would.
    pub(super) async fn deregister(&self) -> Result<(), RedisError> {
        let _: i64 = self.client.del(self.keys.heartbeat(self.id())).await?;
        self.reap(self.id()).await?;
        Ok(())
    }
}
