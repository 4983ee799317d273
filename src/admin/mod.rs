//! The admin side: the stats channel, admin commands (over WebSocket and
//! HTTP) and the `/admin` dashboard.
//!
//! - [`stats`]: this instance's figures, gathered only while an admin
//!   watches somewhere, and the cluster aggregate sent on the stats channel.
//! - [`commands`]: parsing and running admin commands, locally or through
//!   the bus on other instances; every one is logged with its issuer.
//! - [`http`]: `/admin/api/...`; [`dashboard`]: `/admin` and its assets.
//!
//! Invariant: an idle admin side costs nothing on a message's path. The
//! only hot-path hook is [`Admin::count_message`], one relaxed atomic load
//! while nobody watches; the figures reuse the Prometheus counters.

pub mod commands;
pub mod dashboard;
pub mod http;
pub mod stats;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::conn::handle::{ConnHandle, ConnId};
use crate::fanout;
use crate::node::Node;
use crate::protocol::{Data, ServerEvent};

/// Admin commands waiting for the admin task (from other instances).
const CONTROL_QUEUE: usize = 256;

/// An admin command one instance asks another (or all) to run locally.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Control {
    /// Close every connection of the scoped user with 4002.
    KickUser { user: String, reason: String },
    /// Close one connection with 4002, if its user is in `tenant` (when given).
    KickConn {
        conn: ConnId,
        tenant: Option<String>,
        reason: String,
    },
    /// Drain this instance: reconnect hints, closes, not ready.
    Drain,
    /// Accept connections again.
    Undrain,
}

/// The admin state of one instance.
pub struct Admin {
    /// Local connections subscribed to the stats channel. A mutex: changed
    /// only when an admin subscribes or leaves, read once per interval.
    subscribers: Mutex<Vec<Arc<ConnHandle>>>,
    /// Someone watches (here or on another instance): count per-room
    /// messages. Relaxed: a message counted one interval late is harmless.
    watching: AtomicBool,
    /// Messages published per room (scoped) since the last gathering,
    /// counted only while watched.
    room_msgs: DashMap<Arc<str>, u64>,
    /// Reason texts of kicked connections, taken when their close frame
    /// is written; `kicks` counts them so closes skip the map when empty.
    kick_reasons: DashMap<ConnId, Box<str>>,
    kicks: AtomicUsize,
    /// The admin drain in progress, cancelled by an undrain.
    drain: Mutex<Option<CancellationToken>>,
    /// The listening address, for the figures.
    pub address: OnceLock<String>,
    /// The last aggregate sent on the stats channel.
    latest: Mutex<Option<serde_json::Value>>,
    /// The node itself, for the drain task; set when the admin task starts.
    node: OnceLock<Weak<Node>>,
}

impl Default for Admin {
    fn default() -> Self {
        Self::new()
    }
}

impl Admin {
    pub fn new() -> Admin {
        Admin {
            subscribers: Mutex::new(Vec::new()),
            watching: AtomicBool::new(false),
            room_msgs: DashMap::new(),
            kick_reasons: DashMap::new(),
            kicks: AtomicUsize::new(0),
            drain: Mutex::new(None),
            address: OnceLock::new(),
            latest: Mutex::new(None),
            node: OnceLock::new(),
        }
    }

    /// Counts a published message for the busiest-rooms figures, only
    /// while an admin watches.
    pub fn count_message(&self, room: &Arc<str>) {
        if self.watching.load(Ordering::Relaxed) {
            *self.room_msgs.entry(room.clone()).or_insert(0) += 1;
        }
    }

    pub fn subscribe(&self, conn: &Arc<ConnHandle>) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        if !subs.iter().any(|c| c.id == conn.id) {
            subs.push(conn.clone());
        }
    }

    /// Removes a stats subscriber; whether it was one.
    pub fn unsubscribe(&self, conn: ConnId) -> bool {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        let before = subs.len();
        subs.retain(|c| c.id != conn);
        subs.len() != before
    }

    /// A connection ended.
    pub fn forget(&self, conn: ConnId) {
        self.unsubscribe(conn);
    }

    /// Live subscribers (closed ones are dropped).
    fn live_subscribers(&self) -> Vec<Arc<ConnHandle>> {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|c| !c.is_killed());
        subs.clone()
    }

    /// Closes a connection with 4002 and `reason`.
    pub fn kick(&self, conn: &ConnHandle, reason: &str) {
        if self.kick_reasons.insert(conn.id, reason.into()).is_none() {
            self.kicks.fetch_add(1, Ordering::Relaxed);
        }
        conn.close(crate::protocol::CloseCode::Kicked);
    }

    /// The reason a kicked connection's close frame carries.
    pub fn take_kick_reason(&self, conn: ConnId) -> Option<Box<str>> {
        if self.kicks.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let (_, reason) = self.kick_reasons.remove(&conn)?;
        self.kicks.fetch_sub(1, Ordering::Relaxed);
        Some(reason)
    }

    /// The last aggregate of the stats channel, if an admin watches here.
    pub fn latest(&self) -> Option<serde_json::Value> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_draining(&self) -> bool {
        self.drain
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

/// Starts an admin drain of this instance: not ready, upgrades refused,
/// every connection told to reconnect and closed with 1001 over the drain
/// period. False when one is already in progress.
pub fn drain(node: &Node) -> bool {
    let Some(node) = node.admin.node.get().and_then(Weak::upgrade) else {
        return false;
    };
    let stop = CancellationToken::new();
    {
        let mut d = node.admin.drain.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_some() {
            return false;
        }
        *d = Some(stop.clone());
    }
    node.stop_accepting();
    tracing::info!("admin drain: not ready, refusing upgrades, telling clients to reconnect");
    tokio::spawn(async move {
        crate::shutdown::tell_all(&node, &stop).await;
    });
    true
}

/// Ends an admin drain: upgrades accepted and `/ready` 200 again. False
/// when none was in progress.
pub fn undrain(node: &Node) -> bool {
    let Some(stop) = node
        .admin
        .drain
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    else {
        return false;
    };
    stop.cancel();
    node.resume_accepting();
    tracing::info!("admin undrain: accepting upgrades again");
    true
}

/// The admin task: gathers and sends the stats every interval while
/// watched, and runs commands other instances send here.
pub async fn run(node: Arc<Node>) {
    let _ = node.admin.node.set(Arc::downgrade(&node));
    let (tx, mut rx) = tokio::sync::mpsc::channel(CONTROL_QUEUE);
    node.bus.admin_sink(tx);
    let every = node.config.admin.stats_interval;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = stats::Sampler::default();
    loop {
        tokio::select! {
            _ = node.shutdown.cancelled() => return,
            _ = tick.tick() => interval(&node, &mut sampler, every).await,
            Some(control) = rx.recv() => commands::apply_local(&node, control),
        }
    }
}

/// How long shared figures and the watch flag live in the bus: three
/// intervals, but no longer than the heartbeat TTL, so that a dead
/// instance leaves the figures within its heartbeat TTL plus one interval;
/// and never shorter than one and a half intervals, so that a live one
/// does not flicker out between two writes.
fn share_ttl(every: Duration, heartbeat_ttl: Option<Duration>) -> Duration {
    let ttl = heartbeat_ttl.map_or(every * 3, |h| (every * 3).min(h));
    ttl.max(every * 3 / 2)
}

async fn interval(node: &Arc<Node>, sampler: &mut stats::Sampler, every: Duration) {
    let admin = &node.admin;
    let subscribers = admin.live_subscribers();
    let local = !subscribers.is_empty();
    let ttl = share_ttl(every, node.config.redis.as_ref().map(|r| r.heartbeat_ttl));
    let watched = node.bus.admin_watch(local, ttl).await;
    let was = admin.watching.swap(watched, Ordering::Relaxed);
    if !watched {
        if was {
            sampler.reset();
            admin.room_msgs.clear();
            *admin.latest.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        return;
    }
    let top = node.config.admin.top_rooms;
    let mine = stats::gather(node, sampler, top);
    node.bus.admin_share(mine.to_string(), ttl).await;
    if !local {
        return;
    }
    let own = node.instance_id();
    let mut all: Vec<serde_json::Value> = node
        .bus
        .admin_collect()
        .await
        .iter()
        .filter_map(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        .filter(|v| v["id"].as_str() != Some(own))
        .collect();
    all.push(mine);
    let aggregate = stats::aggregate(all, top, every);
    let data = Data::from(aggregate.clone());
    *admin.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(aggregate);
    let event = ServerEvent::Stats {
        data: std::borrow::Cow::Borrowed(&data),
    };
    fanout::deliver_conns(&subscribers, &event);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bus's message format: the action tag beside the fields, and
    /// unknown fields (`origin`, `type`) ignored when read back.
    #[test]
    fn controls_cross_the_bus_as_tagged_json() {
        let kick = Control::KickConn {
            conn: 17,
            tenant: Some("t1".into()),
            reason: "spam".into(),
        };
        let text = serde_json::to_string(&kick).expect("json");
        assert_eq!(
            text,
            r#"{"action":"kick_conn","conn":17,"tenant":"t1","reason":"spam"}"#
        );
        let read: Control = serde_json::from_str(
            r#"{"origin":"i-1","type":"admin","action":"kick_conn","conn":17,"tenant":"t1","reason":"spam"}"#,
        )
        .expect("read");
        assert_eq!(read, kick);
        let drain: Control =
            serde_json::from_str(r#"{"type":"admin","action":"drain"}"#).expect("read");
        assert_eq!(drain, Control::Drain);
        assert!(serde_json::from_str::<Control>(r#"{"action":"reboot"}"#).is_err());
    }

    #[test]
    fn shared_figures_expire_within_the_heartbeat_ttl() {
        let s = Duration::from_secs;
        assert_eq!(share_ttl(s(2), Some(s(15))), s(6));
        assert_eq!(share_ttl(s(10), Some(s(15))), s(15));
        assert_eq!(share_ttl(s(2), None), s(6));
        // A heartbeat TTL below the interval: no flicker wins.
        assert_eq!(share_ttl(s(10), Some(s(5))), s(15));
    }

    #[test]
    fn kick_reasons_are_taken_once() {
        let admin = Admin::new();
        let conn = ConnHandle::new(
            5,
            "/bob".into(),
            crate::protocol::Codec::Json,
            4,
            crate::config::SlowConsumerPolicy::Close,
        );
        assert_eq!(admin.take_kick_reason(5), None);
        admin.kick(&conn, "spam");
        assert!(conn.is_killed());
        assert_eq!(conn.close_code(), Some(4002));
        assert_eq!(admin.take_kick_reason(5).as_deref(), Some("spam"));
        assert_eq!(admin.take_kick_reason(5), None);
    }
}
