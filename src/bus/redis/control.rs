//! Admin traffic across instances: commands routed to one instance or to
//! all, and the stats figures shared while an administrator watches.
//!
//! - Commands: `{"origin":..,"type":"admin","action":"kick_user",..}` on
//!   the global channel (a user may be on any instance), and `kick_conn`,
//!   `drain`, `undrain` on the target's instance channel. The receive loop
//!   hands them to the admin task through a bounded queue (full: dropped
//!   and logged; the issuer sees the effect missing and can retry).
//! - Watching: an instance with a local stats subscriber refreshes
//!   `P:admin:watch` (PX a few intervals) every interval; every instance
//!   checks that key once per interval and gathers figures only while it
//!   exists, writing them to `P:admin:stats:<id>` (PX the same). An idle
//!   admin side costs one `EXISTS` per interval per instance.
//! - Collecting: the watching instance reads the registry of instances and
//!   `MGET`s their stats keys; a dead instance's key expires, so it drops
//!   out of the figures within the key's TTL.
//! - Rooms: `SCAN` over `P:presence:<tenant>/*` with the caller's cursor,
//!   each room's cluster-wide count by `HLEN`; never `KEYS`.

use std::time::Duration;

use fred::prelude::{ClientLike, Expiration, HashesInterface, KeysInterface, PubsubInterface};
use fred::types::{CustomCommand, Value};
use futures_util::future::join_all;

use super::{Shared, metric, unavailable};
use crate::admin::Control;
use crate::bus::BusError;

/// How many SCAN rounds one page may take before it returns what it has.
const SCAN_ROUNDS: usize = 64;

impl Shared {
    /// Refreshes the watch key when this instance has a local subscriber;
    /// whether any instance has one.
    pub(super) async fn admin_watch(&self, local: bool, ttl: Duration) -> bool {
        if !self.up() {
            return local;
        }
        let key = self.keys.admin_watch();
        if local {
            let set: Result<Value, _> = self
                .client
                .set(
                    key,
                    self.id(),
                    Some(Expiration::PX(ttl.as_millis() as i64)),
                    None,
                    false,
                )
                .await;
            if set.is_err() {
                metric::error("admin");
            }
            return true;
        }
        match self.client.exists::<i64, _>(key).await {
            Ok(n) => n > 0,
            Err(_) => {
                metric::error("admin");
                false
            }
        }
    }

    /// Writes this instance's figures for the watching instances.
    pub(super) async fn admin_share(&self, stats: String, ttl: Duration) {
        if !self.up() {
            return;
        }
        let r: Result<Value, _> = self
            .client
            .set(
                self.keys.admin_stats(self.id()),
                stats,
                Some(Expiration::PX(ttl.as_millis() as i64)),
                None,
                false,
            )
            .await;
        if r.is_err() {
            metric::error("admin");
        }
    }

    /// The ids of the registered instances.
    async fn instance_ids(&self) -> Result<Vec<String>, BusError> {
        self.client
            .custom(
                CustomCommand::new_static("ZRANGE", None, false),
                vec![self.keys.instances(), "0".into(), "-1".into()],
            )
            .await
            .map_err(unavailable)
    }

    /// The JSON texts stored under `key(id)` for every registered instance
    /// that still has one.
    async fn per_instance(&self, key: impl Fn(&str) -> String) -> Result<Vec<String>, BusError> {
        let ids = self.instance_ids().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| key(id)).collect();
        let values: Vec<Option<String>> = self.client.mget(keys).await.map_err(unavailable)?;
        Ok(values.into_iter().flatten().collect())
    }

    /// Every live instance's shared admin figures.
    pub(super) async fn admin_collect(&self) -> Vec<String> {
        if !self.up() {
            return Vec::new();
        }
        let keys = self.keys.clone();
        self.per_instance(|id| keys.admin_stats(id))
            .await
            .unwrap_or_else(|_| {
                metric::error("admin");
                Vec::new()
            })
    }

    /// Every live instance's heartbeat record (always kept, watched or not).
    pub(super) async fn heartbeats(&self) -> Result<Vec<String>, BusError> {
        if !self.up() {
            return Err(BusError::Unavailable("redis unreachable".into()));
        }
        let keys = self.keys.clone();
        self.per_instance(|id| keys.heartbeat(id)).await
    }

    /// Whether `id` is a live instance (its heartbeat key exists).
    pub(super) async fn instance_live(&self, id: &str) -> Result<bool, BusError> {
        let n: i64 = self
            .client
            .exists(self.keys.heartbeat(id))
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    /// Publishes an admin command to one instance, or to all with `None`;
    /// how many instances received it.
    pub(super) async fn admin_publish(
        &self,
        target: Option<&str>,
        control: &Control,
    ) -> Result<u64, BusError> {
        let channel = match target {
            Some(id) => self.keys.instance_channel(id),
            None => self.keys.global_channel(),
        };
        let mut body = serde_json::to_value(control).map_err(unavailable)?;
        if let Some(map) = body.as_object_mut() {
            map.insert("origin".into(), self.id().into());
            map.insert("type".into(), "admin".into());
        }
        self.client
            .publish::<u64, _, _>(channel, body.to_string())
            .await
            .map_err(unavailable)
    }

    /// An admin command from the instance or global channel: handed to the
    /// admin task.
    pub(super) fn on_control(&self, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Origin<'a> {
            #[serde(borrow)]
            origin: Option<&'a str>,
        }
        // The issuer ran the command itself before publishing it.
        if serde_json::from_slice::<Origin>(payload).is_ok_and(|o| o.origin == Some(self.id())) {
            return;
        }
        let control: Control = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => {
                metric::bad_message();
                tracing::debug!(error = %e, "bad admin message");
                return;
            }
        };
        match self.control.get() {
            Some(tx) => {
                if tx.try_send(control).is_err() {
                    tracing::warn!("admin command queue full; command dropped");
                }
            }
            None => tracing::debug!("admin command before the admin task started"),
        }
    }

    /// One page of the cluster's rooms whose scoped name starts with
    /// `prefix`, with their cluster-wide user counts, and the next cursor
    /// (`"0"`: done).
    pub(super) async fn room_page(
        &self,
        prefix: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<(Vec<(String, u64)>, String), BusError> {
        let key_prefix = self.keys.presence_prefix();
        let pattern = format!("{key_prefix}{prefix}*");
        let mut cursor = cursor.to_owned();
        let mut keys: Vec<String> = Vec::new();
        for _ in 0..SCAN_ROUNDS {
            let (next, found): (String, Vec<String>) = self
                .client
                .custom(
                    CustomCommand::new_static("SCAN", None, false),
                    vec![
                        cursor.clone(),
                        "MATCH".into(),
                        pattern.clone(),
                        "COUNT".into(),
                        limit.max(10).to_string(),
                    ],
                )
                .await
                .map_err(unavailable)?;
            keys.extend(found);
            cursor = next;
            if cursor == "0" || keys.len() >= limit {
                break;
            }
        }
        let counts = join_all(keys.iter().map(|k| self.client.hlen::<u64, _>(k.as_str()))).await;
        let mut rooms = Vec::with_capacity(keys.len());
        for (key, count) in keys.iter().zip(counts) {
            let count = count.map_err(unavailable)?;
            if let Some(room) = key.strip_prefix(&key_prefix)
                && count > 0
            {
                rooms.push((room.to_owned(), count));
            }
        }
        Ok((rooms, cursor))
    }

    /// The cluster-wide number of users in a room.
    pub(super) async fn room_user_count(&self, room: &str) -> Result<u64, BusError> {
        self.client
            .hlen(self.keys.presence(room))
            .await
            .map_err(unavailable)
    }
}
