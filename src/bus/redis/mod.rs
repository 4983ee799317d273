//! The Redis bus of cluster mode: every instance sharing a Redis acts as
//! one server. Only this folder names fred.
//!
//! Files by concept:
//! - [`keys`]: the key and channel schema; [`wire`]: the message formats;
//!   [`scripts`]: the Lua scripts (every atomic multi-step change).
//! - [`subscriber`]: interest-based room subscriptions and the receive loop.
//! - [`presence`]: per-instance room membership and cluster-wide counts.
//! - [`routes`]: user -> instance routes, direct messages.
//! - [`offline`]: the offline queue acknowledgement and the outbox that
//!   holds direct messages while Redis is unreachable.
//! - [`heartbeat`]: the instance's TTL key and registry entry.
//! - [`reaper`]: cleaning up after dead instances, and deregistration.
//! - [`history`]: room history streams, offsets and epochs, gap fills.
//! - [`sync`]: the supervisor: readiness, reconnects and the resync that
//!   re-asserts everything this instance holds.
//!
//! Invariants:
//! - The bus carries only what crosses instances: the node delivers to
//!   local members itself, and what arrives from Redis goes to the hub.
//!   Local state (members, users) is read from the hub, never kept here.
//! - Local delivery never waits for Redis; when Redis is unreachable local
//!   traffic keeps flowing and the resync repairs Redis afterwards.
//! - An instance drops its own room messages when they come back from
//!   Redis (an `origin` prefix test): its members had them already.
//! - Every direct message either reaches an instance subscribed to the
//!   user's route, or is queued, or waits in the bounded outbox, or its
//!   sender gets `unavailable`. Never silently nothing.

pub mod api;
mod control;
mod converge;
mod heartbeat;
mod history;
pub mod keys;
mod offline;
mod presence;
mod reaper;
mod routes;
mod scripts;
mod subscriber;
mod sync;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, Client, ClientLike, Config as FredConfig, Error as RedisError, EventInterface,
    PubsubInterface, ReconnectPolicy,
};
use fred::types::config::UnresponsiveConfig;
use thiserror::Error;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Audience, BusError, DirectMessage, PresenceChange, RoomEvent, RoomMessage, SendOutcome,
};
use crate::config::{OfflineConfig, RedisConfig};
use crate::history::order::Fill;
use crate::history::{HistoryRead, HistoryRule, Query};
use crate::hub::Hub;
use crate::offline::Queued;
use converge::Converger;
use keys::Keys;
use offline::HeldDirects;
use routes::{Epochs, RouteCache};
use scripts::Scripts;

/// Timings and sizes of cluster mode. Defaults follow the spec (heartbeat
/// every 5 s, TTL 15 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTuning {
    /// How often the instance refreshes its heartbeat key and registry score.
    pub heartbeat_interval: Duration,
    /// TTL of the heartbeat key; an instance silent this long is dead.
    pub heartbeat_ttl: Duration,
    /// How often each instance looks for dead instances.
    pub reaper_interval: Duration,
    /// How long a reaper holds the lock on one dead instance.
    pub reap_lock_ttl: Duration,
    /// Timeout of every Redis command.
    pub command_timeout: Duration,
    /// Reconnect backoff: first delay and cap (retries forever).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Direct messages held in memory while Redis is unreachable; beyond
    /// it senders get `unavailable`.
    pub outbox_capacity: usize,
    /// Capacity of fred's pub/sub broadcast channel (messages in flight
    /// between the socket reader and the receive loop).
    pub subscriber_buffer: usize,
    /// Users whose routes a sender keeps (0: every direct message runs
    /// the send script).
    pub route_cache: usize,
    /// How long `serve` waits for the first sync before listening anyway
    /// (not ready).
    pub startup_wait: Duration,
}

impl From<&RedisConfig> for RedisTuning {
    fn from(c: &RedisConfig) -> Self {
        RedisTuning {
            heartbeat_interval: c.heartbeat,
            heartbeat_ttl: c.heartbeat_ttl,
            reaper_interval: c.reaper,
            command_timeout: c.command_timeout,
            reconnect_min: c.reconnect_min,
            reconnect_max: c.reconnect_max,
            outbox_capacity: c.outbox_max,
            subscriber_buffer: c.subscriber_buffer,
            route_cache: c.route_cache,
            startup_wait: c.startup_wait,
            ..RedisTuning::default()
        }
    }
}

impl Default for RedisTuning {
    /// The defaults of the cluster settings (`config::redis_defaults`).
    fn default() -> Self {
        use crate::config::redis_defaults as d;
        RedisTuning {
            heartbeat_interval: Duration::from_millis(d::HEARTBEAT_MS),
            heartbeat_ttl: Duration::from_millis(d::HEARTBEAT_TTL_MS),
            reaper_interval: Duration::from_millis(d::REAPER_MS),
            reap_lock_ttl: Duration::from_secs(30),
            command_timeout: Duration::from_millis(d::COMMAND_TIMEOUT_MS),
            reconnect_min: Duration::from_millis(d::RECONNECT_MIN_MS),
            reconnect_max: Duration::from_millis(d::RECONNECT_MAX_MS),
            outbox_capacity: d::OUTBOX_MAX,
            subscriber_buffer: d::SUBSCRIBER_BUFFER,
            route_cache: d::ROUTE_CACHE,
            startup_wait: Duration::from_millis(d::STARTUP_WAIT_MS),
        }
    }
}

/// Capacity of the command client's event channels (errors, reconnects):
/// a handful of events at a time, and a lagged receiver still counts as
/// having seen one.
const EVENT_CHANNEL_CAPACITY: usize = 64;

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("invalid redis url: {0}")]
    Url(String),
    #[error("instance id {0:?} cannot be used in cluster mode: use only A-Z a-z 0-9 . _ -")]
    InstanceId(String),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

/// State shared by the bus facade and its background tasks.
pub(crate) struct Shared {
    keys: Keys,
    /// The Redis URL with its password hidden, for logs.
    url: String,
    tuning: RedisTuning,
    offline_cfg: OfflineConfig,
    /// The local side: where remote events are delivered, and the local
    /// state this instance mirrors in Redis.
    hub: Arc<Hub>,
    client: Client,
    sub: SubscriberClient,
    scripts: Scripts,
    /// The connections are believed usable: false from a connection error
    /// until the next resync starts. Operations skip Redis meanwhile.
    up: AtomicBool,
    /// The last resync finished and nothing since required another.
    synced: AtomicBool,
    /// Something Redis should hold may be missing: resync soon.
    dirty: AtomicBool,
    /// Wakes the supervisor (dirty, shutdown).
    wake: Notify,
    /// Subscribed rooms, converging on "has local members".
    interest: Converger<Arc<str>>,
    /// This instance's presence records, converging on the registry.
    presence: Converger<(Arc<str>, Arc<str>)>,
    epochs: Epochs,
    route_cache: RouteCache,
    /// Direct messages to route again, in arrival order (see
    /// `Shared::deliver_remote_direct`).
    reroutes: routes::Reroutes,
    outbox: HeldDirects,
    /// Prefix of room payloads this instance published.
    own_prefix: String,
    /// Where admin commands from other instances go (the admin task's
    /// queue), set once when that task starts.
    control: std::sync::OnceLock<tokio::sync::mpsc::Sender<crate::admin::Control>>,
    started: Instant,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// The Redis bus: a cheap handle on the shared state.
pub struct RedisBus {
    shared: Arc<Shared>,
    /// fred's connection tasks, awaited at shutdown (std mutex: taken
    /// once, never across an await).
    connections: Mutex<Vec<JoinHandle<Result<(), RedisError>>>>,
}

impl RedisBus {
    /// Builds the clients, starts the connection, receive, heartbeat and
    /// reaper tasks, and returns at once; [`RedisBus::wait_ready`] waits
    /// for the first sync.
    pub fn start(
        cfg: &RedisConfig,
        instance_id: &str,
        offline_cfg: OfflineConfig,
        tuning: RedisTuning,
        hub: Arc<Hub>,
    ) -> Result<RedisBus, ClusterError> {
        if !keys::valid_instance_id(instance_id) {
            return Err(ClusterError::InstanceId(instance_id.to_owned()));
        }
        let mut config =
            FredConfig::from_url(&cfg.url).map_err(|e| ClusterError::Url(e.to_string()))?;
        // Keep retrying the first connection too: the instance serves local
        // traffic (not ready) until Redis answers.
        config.fail_fast = false;
        let mut builder = Builder::from_config(config);
        let min = tuning.reconnect_min.as_millis() as u32;
        let max = tuning.reconnect_max.as_millis() as u32;
        builder
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                min.max(1),
                max.max(1),
                2,
            ))
            .with_performance_config(|p| {
                p.default_command_timeout = tuning.command_timeout;
            })
            .with_connection_config(|c| {
                c.connection_timeout = tuning.command_timeout;
                c.internal_command_timeout = tuning.command_timeout;
                // A command in flight when the connection drops fails
                // instead of being replayed later, out of order with the
                // resync; callers fall back (outbox, dirty flag).
                c.max_command_attempts = 1;
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(tuning.command_timeout * 2),
                    interval: Duration::from_secs(1),
                };
            });
        // fred sizes all eight event channels of a client (messages, errors,
        // reconnects, ...) from one capacity, and tokio allocates every slot
        // up front: only the subscriber's message channel needs room for a
        // burst, so the command client keeps a small capacity.
        builder.with_performance_config(|p| p.broadcast_channel_capacity = EVENT_CHANNEL_CAPACITY);
        let client = builder.build()?;
        builder
            .with_performance_config(|p| p.broadcast_channel_capacity = tuning.subscriber_buffer);
        let sub = builder.build_subscriber_client()?;

        let keys = Keys::new(&cfg.prefix, instance_id);
        metric::register();
        let url = masked_url(&cfg.url);
        tracing::info!(%url, "cluster mode: connecting to redis");
        let shared = Arc::new(Shared {
            url,
            own_prefix: wire::origin_prefix(instance_id),
            keys,
            outbox: HeldDirects::new(tuning.outbox_capacity),
            route_cache: RouteCache::new(tuning.route_cache),
            reroutes: routes::Reroutes::default(),
            tuning,
            offline_cfg,
            hub,
            client,
            sub,
            scripts: Scripts::new(),
            up: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            wake: Notify::new(),
            interest: Converger::new(),
            presence: Converger::new(),
            epochs: Epochs::new(),
            control: std::sync::OnceLock::new(),
            started: Instant::now(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });

        // Event receivers exist before the first connect so none is missed.
        let messages = shared.sub.message_rx();
        let events = sync::Events {
            client_reconnect: shared.client.reconnect_rx(),
            sub_reconnect: shared.sub.reconnect_rx(),
            client_error: shared.client.error_rx(),
            sub_error: shared.sub.error_rx(),
        };
        let connections = vec![shared.client.connect(), shared.sub.connect()];
        shared
            .tasks
            .spawn(subscriber::receive_loop(shared.clone(), messages));
        shared.tasks.spawn(sync::supervise(shared.clone(), events));
        shared.tasks.spawn(heartbeat::run(shared.clone()));
        shared.tasks.spawn(reaper::run(shared.clone()));
        Ok(RedisBus {
            shared,
            connections: Mutex::new(connections),
        })
    }

    /// Waits until the first sync finished or `startup_wait` passed.
    pub async fn wait_ready(&self) -> bool {
        let deadline = tokio::time::Instant::now() + self.shared.tuning.startup_wait;
        while !self.shared.is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub async fn room_interest(&self, room: &Arc<str>, on: bool) -> Result<(), BusError> {
        let _ = on;
        self.shared.room_interest(room).await
    }

    pub async fn publish(&self, room: &Arc<str>, event: &RoomEvent) -> Result<(), BusError> {
        self.shared.publish(room, event).await;
        Ok(())
    }

    pub async fn presence_update(
        &self,
        room: &Arc<str>,
        user: &Arc<str>,
    ) -> Result<PresenceChange, BusError> {
        Ok(self.shared.presence_sync(room, user).await.into())
    }

    pub async fn history_publish(
        &self,
        room: &Arc<str>,
        rule: &HistoryRule,
        keep: Duration,
        msg: RoomMessage,
    ) -> Result<(), BusError> {
        self.shared.history_publish(room, rule, keep, msg).await
    }

    pub async fn history_read(
        &self,
        room: &Arc<str>,
        rule: &HistoryRule,
        keep: Duration,
        query: Query,
    ) -> Result<HistoryRead, BusError> {
        self.shared.history_read(room, rule, keep, query).await
    }

    pub fn history_fill(&self, fill: Fill) {
        self.shared.spawn_fill(fill);
    }

    pub async fn presence(&self, room: &Arc<str>) -> Result<Vec<String>, BusError> {
        Ok(self.shared.presence_list(room).await)
    }

    pub async fn send(
        &self,
        user: &Arc<str>,
        msg: DirectMessage,
        local: bool,
    ) -> Result<SendOutcome, BusError> {
        self.shared.send(user, msg, local).await
    }

    pub async fn attach(&self, user: &Arc<str>) -> Vec<Queued> {
        self.shared.attach(user).await
    }

    pub async fn broadcast(
        &self,
        audience: &Audience,
        msg: &DirectMessage,
    ) -> Result<(), BusError> {
        self.shared.broadcast(audience, msg).await
    }

    pub async fn detach(&self, user: &Arc<str>) {
        self.shared.drop_route_if_last(user).await;
    }

    pub async fn offline_written(&self, user: &Arc<str>, upto: u64) {
        self.shared.offline_written(user, upto).await;
    }

    pub fn is_ready(&self) -> bool {
        self.shared.is_ready()
    }

    /// Admin traffic across instances (see `control.rs`).
    pub fn admin_sink(&self, tx: tokio::sync::mpsc::Sender<crate::admin::Control>) {
        let _ = self.shared.control.set(tx);
    }

    pub async fn admin_watch(&self, local: bool, ttl: Duration) -> bool {
        self.shared.admin_watch(local, ttl).await
    }

    pub async fn admin_share(&self, stats: String, ttl: Duration) {
        self.shared.admin_share(stats, ttl).await
    }

    pub async fn admin_collect(&self) -> Vec<String> {
        self.shared.admin_collect().await
    }

    pub async fn heartbeats(&self) -> Result<Vec<String>, BusError> {
        self.shared.heartbeats().await
    }

    pub async fn instance_live(&self, id: &str) -> Result<bool, BusError> {
        self.shared.instance_live(id).await
    }

    pub async fn admin_publish(
        &self,
        target: Option<&str>,
        control: &crate::admin::Control,
    ) -> Result<u64, BusError> {
        self.shared.admin_publish(target, control).await
    }

    pub async fn room_page(
        &self,
        prefix: &str,
        cursor: &str,
        limit: usize,
    ) -> Result<(Vec<(String, u64)>, String), BusError> {
        self.shared.room_page(prefix, cursor, limit).await
    }

    pub async fn room_user_count(&self, room: &str) -> Result<u64, BusError> {
        self.shared.room_user_count(room).await
    }

    /// Whether the bus is connected, and how many resyncs it ran.
    pub fn connected(&self) -> bool {
        self.shared.up()
    }

    pub fn outbox_len(&self) -> usize {
        self.shared.outbox.len()
    }

    pub async fn idem_claim(
        &self,
        key: &str,
        fingerprint: &str,
        window: Duration,
    ) -> Result<super::IdemClaim, BusError> {
        self.shared.idem_claim(key, fingerprint, window).await
    }

    pub async fn idem_finish(
        &self,
        key: &str,
        fingerprint: &str,
        answer: &str,
        window: Duration,
    ) -> Result<(), BusError> {
        self.shared
            .idem_finish(key, fingerprint, answer, window)
            .await
    }

    pub async fn idem_release(&self, key: &str) {
        self.shared.idem_release(key).await;
    }

    /// Stops the background tasks, writes what the outbox holds, removes
    /// this instance's registry entry, routes and presence (publishing
    /// `left` where users vanish), and closes the connections.
    pub async fn shutdown(&self) {
        let s = &self.shared;
        s.cancel.cancel();
        s.wake.notify_waiters();
        s.tasks.close();
        s.tasks.wait().await;
        if !s.up() && s.outbox.len() > 0 {
            tracing::error!(
                held = s.outbox.len(),
                "redis unreachable at exit: held direct messages are lost"
            );
        }
        if s.up() {
            if let Err(e) = s.flush_outbox().await {
                tracing::warn!(error = %e, held = s.outbox.len(), "outbox not written before exit");
            }
            match s.deregister().await {
                Ok(()) => tracing::info!("left the cluster"),
                Err(e) => tracing::warn!(error = %e, "cannot deregister; the reaper will clean up"),
            }
        }
        let _ = s.sub.quit().await;
        let _ = s.client.quit().await;
        let tasks =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
}

impl Shared {
    fn up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    fn is_ready(&self) -> bool {
        self.up()
            && self.synced.load(Ordering::SeqCst)
            && self.client.is_connected()
            && self.sub.is_connected()
    }

    /// Asks the supervisor for a resync: something Redis should hold may
    /// be missing.
    fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn id(&self) -> &str {
        self.keys.instance_id()
    }

    /// Publishes a room event to the other instances. Redis being
    /// unreachable costs only the remote delivery: pub/sub is at-most-once.
    async fn publish(&self, room: &Arc<str>, event: &RoomEvent) {
        if !self.up() {
            metric::skipped("publish");
            return;
        }
        let payload = match wire::encode_room(self.id(), event) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode room event");
                return;
            }
        };
        if let Err(e) = self
            .client
            .publish::<i64, _, _>(self.keys.room_channel(room), payload)
            .await
        {
            tracing::debug!(error = %e, "room event not published");
            metric::error("publish");
        }
    }
}

impl Shared {
    /// Publishes a broadcast on the global channel, which every instance
    /// subscribes. Like room messages it is at-most-once; unlike them the
    /// caller (an operator or the game's backend) is told when Redis could
    /// not take it.
    async fn broadcast(&self, audience: &Audience, msg: &DirectMessage) -> Result<(), BusError> {
        if !self.up() {
            metric::skipped("broadcast");
            return Err(BusError::Unavailable(
                "redis unreachable: delivered on this instance only".into(),
            ));
        }
        let payload = wire::encode_broadcast(self.id(), audience, msg).map_err(unavailable)?;
        self.client
            .publish::<i64, _, _>(self.keys.global_channel(), payload)
            .await
            .map_err(|e| {
                metric::error("broadcast");
                unavailable(e)
            })?;
        Ok(())
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

pub mod metric {
    //! Cluster-mode metric names (no room or user labels), registered at 0
    //! by [`register`] when the bus starts.
    use metrics::{counter, gauge};

    use crate::metrics::{Kind, Metric};

    /// Every `op` of `roomcast_redis_errors_total`.
    pub const ERROR_OPS: [&str; 14] = [
        "publish",
        "broadcast",
        "subscribe",
        "presence",
        "presence_list",
        "attach",
        "route_drop",
        "send",
        "offline_ack",
        "heartbeat",
        "reaper",
        "resync",
        "admin",
        "history",
    ];

    /// Every `op` of `roomcast_redis_skipped_total`.
    pub const SKIPPED_OPS: [&str; 10] = [
        "publish",
        "broadcast",
        "subscribe",
        "presence",
        "attach",
        "route_drop",
        "send",
        "offline_ack",
        "idempotency",
        "history",
    ];

    /// Every metric of cluster mode.
    pub const METRICS: [Metric; 10] = [
        Metric {
            name: "roomcast_redis_ready",
            kind: Kind::Gauge,
            help: "1 while the Redis bus is connected and synced, else 0.",
            label: None,
        },
        Metric {
            name: "roomcast_redis_errors_total",
            kind: Kind::Counter,
            help: "Redis commands that failed, by operation.",
            label: Some(("op", &ERROR_OPS)),
        },
        Metric {
            name: "roomcast_redis_skipped_total",
            kind: Kind::Counter,
            help: "Redis operations skipped while Redis was unreachable, by operation (the resync repairs them).",
            label: Some(("op", &SKIPPED_OPS)),
        },
        Metric {
            name: "roomcast_redis_lagged_total",
            kind: Kind::Counter,
            help: "Pub/sub messages dropped because the subscriber buffer was full.",
            label: None,
        },
        Metric {
            name: "roomcast_redis_bad_messages_total",
            kind: Kind::Counter,
            help: "Messages from Redis that could not be decoded.",
            label: None,
        },
        Metric {
            name: "roomcast_redis_resyncs_total",
            kind: Kind::Counter,
            help: "Resyncs started (at start and after every reconnect).",
            label: None,
        },
        Metric {
            name: "roomcast_redis_outbox",
            kind: Kind::Gauge,
            help: "Direct messages held in memory while Redis is unreachable.",
            label: None,
        },
        Metric {
            name: "roomcast_redis_outbox_rejected_total",
            kind: Kind::Counter,
            help: "Direct messages refused (unavailable) because the outbox was full.",
            label: None,
        },
        Metric {
            name: "roomcast_redis_route_cache_total",
            kind: Kind::Counter,
            help: "Direct messages to users elsewhere by route cache result: hit (published to the cached instances), stale (one no longer listened; forgotten), miss (the send script routed it).",
            label: Some(("result", &["hit", "stale", "miss"])),
        },
        Metric {
            name: "roomcast_redis_reaped_instances_total",
            kind: Kind::Counter,
            help: "Dead instances this instance cleaned up after.",
            label: None,
        },
    ];

    /// Describes every cluster metric and registers each series at 0.
    pub fn register() {
        for m in &METRICS {
            m.register();
        }
    }

    pub fn lagged(n: u64) {
        counter!("roomcast_redis_lagged_total").increment(n);
    }
    pub fn error(op: &'static str) {
        counter!("roomcast_redis_errors_total", "op" => op).increment(1);
    }
    pub fn skipped(op: &'static str) {
        counter!("roomcast_redis_skipped_total", "op" => op).increment(1);
    }
    pub fn route_cache(result: &'static str) {
        counter!("roomcast_redis_route_cache_total", "result" => result).increment(1);
    }
    pub fn bad_message() {
        counter!("roomcast_redis_bad_messages_total").increment(1);
    }
    pub fn ready(ready: bool) {
        gauge!("roomcast_redis_ready").set(if ready { 1.0 } else { 0.0 });
    }
    pub fn resync() {
        counter!("roomcast_redis_resyncs_total").increment(1);
    }
    pub fn outbox(len: usize) {
        gauge!("roomcast_redis_outbox").set(len as f64);
    }
    pub fn outbox_rejected() {
        counter!("roomcast_redis_outbox_rejected_total").increment(1);
    }
    pub fn reaped() {
        counter!("roomcast_redis_reaped_instances_total").increment(1);
    }
}

/// Cluster counters the admin figures read back from the Prometheus text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterSeries {
    Resyncs,
    Lagged,
}

/// Which admin-read cluster counter a Prometheus series is.
pub fn cluster_series(series: &str) -> Option<ClusterSeries> {
    match series {
        "roomcast_redis_resyncs_total" => Some(ClusterSeries::Resyncs),
        "roomcast_redis_lagged_total" => Some(ClusterSeries::Lagged),
        _ => None,
    }
}

/// `url` with its password hidden, for logs: `redis://user:***@host:port/db`.
/// Query parameters whose name mentions a password are hidden too. When in
/// doubt it hides more, never less.
pub fn masked_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "***".to_owned()
        } else {
            url.to_owned()
        };
    };
    // The last `@` ends the credentials even when a password holds `/`,
    // `?` or `@` unescaped.
    let (user, after) = match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at].split_once(':').map_or("", |(u, _)| u);
            (Some(user), &rest[at + 1..])
        }
        None => (None, rest),
    };
    let after = match after.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                        format!("{k}=***")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => after.to_owned(),
    };
    match user {
        Some(user) => format!("{scheme}://{user}:***@{after}"),
        None => format!("{scheme}://{after}"),
    }
}

/// The clock of a periodic task (heartbeat, reaper): ticks that were
/// missed are delayed, not bunched.
pub(super) struct Ticker(tokio::time::Interval);

impl Ticker {
    fn new(period: Duration) -> Self {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker(tick)
    }

    /// Waits for the next tick at which the bus is ready (ticks while it
    /// is not are skipped); `false` once the bus shuts down.
    async fn next_ready(&mut self, shared: &Shared) -> bool {
        loop {
            tokio::select! {
                _ = shared.cancel.cancelled() => return false,
                _ = self.0.tick() => {}
            }
            if shared.is_ready() {
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::masked_url;

    #[test]
    fn masked_url_hides_passwords_only() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://host:6379/2", "redis://host:6379/2"),
            (
                "redis://user:secret@host:6379/0",
                "redis://user:***@host:6379/0",
            ),
            ("rediss://:secret@host", "rediss://:***@host"),
            ("redis://secret@host", "redis://:***@host"),
            ("redis://u:p/a?s@s@host:1/0", "redis://u:***@host:1/0"),
            (
                "redis-sentinel://h1:26379/0?sentinelServiceName=m&sentinelPassword=secret",
                "redis-sentinel://h1:26379/0?sentinelServiceName=m&sentinelPassword=***",
            ),
            ("user:secret@host", "***"),
        ] {
            assert_eq!(masked_url(url), shown, "{url}");
            assert!(!masked_url(url).contains("secret"), "{url}");
        }
    }
}
