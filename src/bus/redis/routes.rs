//! User routes and direct messages.
//!
//! `P:routes:{user}` maps each instance holding a connection of the user to
//! a route epoch. The send script publishes to exactly those instances'
//! channels and queues when nobody received it; the attach script adds the
//! route and reads the backlog. Both run atomically in Redis, so a message
//! is either in the backlog a new connection reads or published after its
//! route exists, whichever instance the user comes back on.
//!
//! Epochs make route removal safe against reordering: a removal only
//! deletes a route whose epoch is not newer than its own, so a stale
//! "last connection left" never deletes the route of a connection that
//! attached after it.
//!
//! The hub's attach gate orders delivery on this instance: while a backlog
//! read for a user is in flight, live direct messages for the connections
//! waiting on it are buffered and queued after the backlog, never before.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use fred::prelude::{Error as RedisError, PubsubInterface, SetsInterface, Value};

use super::{Shared, metric, unavailable, wire};
use crate::bus::{BusError, DirectMessage, SendOutcome};
use crate::hub::Hub;
use crate::metrics;
use crate::offline::Queued;

/// Route epochs: increasing across restarts of an instance with a fixed id
/// (they start at the start time in µs), below 2^53 so Lua compares them
/// exactly.
pub struct Epochs {
    next: AtomicU64,
    /// The epoch of this instance's route for each local user; the entry's
    /// shard lock orders "claim a route" against "release the last one".
    current: DashMap<Arc<str>, u64>,
}

impl Epochs {
    pub fn new() -> Self {
        Epochs {
            next: AtomicU64::new(crate::node::now_ms().saturating_mul(1000)),
            current: DashMap::new(),
        }
    }

    /// The newest epoch handed out so far.
    pub fn high_water(&self) -> u64 {
        self.next.load(Ordering::SeqCst)
    }

    fn claim(&self, user: &Arc<str>) -> u64 {
        let epoch = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.current.insert(user.clone(), epoch);
        epoch
    }

    /// The user's route epoch when this instance no longer holds the user
    /// (no registered connection and no attach in flight).
    fn release_if_last(&self, user: &Arc<str>, hub: &Hub) -> Option<u64> {
        match self.current.entry(user.clone()) {
            Entry::Occupied(e) => {
                if !hub.holds_user(user) {
                    Some(e.remove())
                } else {
                    None
                }
            }
            Entry::Vacant(_) => None,
        }
    }

    fn holds(&self, user: &str) -> bool {
        self.current.contains_key(user)
    }
}

/// What the send script did.
struct Sent {
    receivers: i64,
    queued: bool,
    dropped: i64,
    /// The instances that received it.
    reached: Vec<Arc<str>>,
}

/// The instances that hold a user.
type Route = Arc<[Arc<str>]>;

/// The sending side's route cache: user -> the other instances that hold
/// the user, learnt from the `SEND` script's answer, so that the next
/// direct message to the user is one `PUBLISH` per instance instead of a
/// script run. An entry is forgotten when a `PUBLISH` reaches no one (the
/// instance died), when the receiver no longer holds the user (it routes
/// the message again and answers `route_stale`), when the `ATTACH` script
/// announces a new route beside the known ones (`route_added`), and
/// entirely whenever the connection to Redis is lost (announcements may
/// have been missed). Users unknown here (offline, or never sent to) always
/// take the script, so offline queueing stays atomic with attaching.
pub struct RouteCache {
    /// DashMap: read by every sending connection, written on misses. Each
    /// entry counts the messages sent through it.
    map: DashMap<Arc<str>, (Route, u64)>,
    /// Entries kept at most; 0 turns the cache off.
    max: usize,
}

impl RouteCache {
    pub fn new(max: usize) -> Self {
        RouteCache {
            map: DashMap::new(),
            max,
        }
    }

    /// The cached route and this send's number through it.
    fn get(&self, user: &str) -> Option<(Route, u64)> {
        self.map.get_mut(user).map(|mut e| {
            e.1 += 1;
            (e.0.clone(), e.1)
        })
    }

    fn learn(&self, user: &Arc<str>, reached: Vec<Arc<str>>) {
        if reached.is_empty() || self.max == 0 {
            return;
        }
        if self.map.len() >= self.max && !self.map.contains_key(user) {
            // Full: start over rather than track recency on the hot path.
            self.map.clear();
        }
        self.map.insert(user.clone(), (reached.into(), 0));
    }

    pub fn forget(&self, user: &str) {
        self.map.remove(user);
    }

    /// A receiver routed again the cached sends up to `seq`: the entry is
    /// forgotten only when no later send went through it, since those may
    /// still be on their way there and a send by another path must not
    /// overtake them (that receiver will answer again after them).
    pub fn forget_stale(&self, user: &str, seq: Option<u64>) {
        self.map
            .remove_if(user, |_, e| seq.is_none_or(|s| s >= e.1));
    }

    pub fn clear(&self) {
        self.map.clear();
    }
}

/// A direct message that reached this instance after the user's last
/// connection here left.
pub(super) struct Reroute {
    user: Arc<str>,
    msg: DirectMessage,
    origin: Option<String>,
    local: bool,
    seq: Option<u64>,
}

/// The direct messages waiting to be routed again, in arrival order, and
/// whether a task is draining them. Pushed by the subscriber loop (in the
/// order messages arrive from Redis), popped by one task at a time.
#[derive(Default)]
pub(super) struct Reroutes {
    queue: std::sync::Mutex<(std::collections::VecDeque<Reroute>, bool)>,
}

impl Reroutes {
    /// Queues a message; true when the caller must start the draining task.
    fn push(&self, r: Reroute) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.0.push_back(r);
        !std::mem::replace(&mut q.1, true)
    }

    /// Whether a task is draining: messages arriving meanwhile queue up.
    fn busy(&self) -> bool {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// The next message, or `None` (and the draining task ends) when empty.
    fn pop(&self) -> Option<Reroute> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let next = q.0.pop_front();
        if next.is_none() {
            q.1 = false;
        }
        next
    }
}

impl Shared {
    /// Claims the user's route to this instance and reads the backlog;
    /// empty when Redis cannot be reached (the resync delivers it later).
    pub(super) async fn attach(&self, user: &Arc<str>) -> Vec<Queued> {
        if !self.up() {
            metric::skipped("attach");
            self.mark_dirty();
            return Vec::new();
        }
        let epoch = self.epochs.claim(user);
        match self.run_attach(user, epoch).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot register route; will retry");
                metric::error("attach");
                self.mark_dirty();
                Vec::new()
            }
        }
    }

    pub(super) async fn drop_route_if_last(&self, user: &Arc<str>) {
        let Some(epoch) = self.epochs.release_if_last(user, &self.hub) else {
            return;
        };
        if !self.up() {
            metric::skipped("route_drop");
            self.mark_dirty();
            return;
        }
        if let Err(e) = self.run_route_drop(user, epoch).await {
            tracing::warn!(error = %e, "cannot remove route; will retry");
            metric::error("route_drop");
            self.mark_dirty();
        }
    }

    pub(super) async fn send(
        &self,
        user: &Arc<str>,
        msg: DirectMessage,
        local: bool,
    ) -> Result<SendOutcome, BusError> {
        let msg = match self.outbox.hold_if_needed(&self.up, user, msg, local) {
            Ok(outcome) => return outcome,
            Err(msg) => msg,
        };
        if let Some((route, seq)) = self.route_cache.get(user) {
            match self.publish_cached(user, &msg, local, &route, seq).await {
                Ok(true) => return Ok(SendOutcome::Delivered),
                // Nobody received it: the script routes or queues it.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "direct message not routed; holding it");
                    metric::error("send");
                    self.mark_dirty();
                    return self.outbox.hold(user, msg, local);
                }
            }
        } else {
            metric::route_cache("miss");
        }
        match self.run_send(user, &msg, local, "").await {
            Ok(sent) => {
                let outcome = self.outcome(local, &sent);
                if !sent.queued {
                    self.route_cache.learn(user, sent.reached);
                }
                Ok(outcome)
            }
            Err(e) => {
                tracing::warn!(error = %e, "direct message not routed; holding it");
                metric::error("send");
                self.mark_dirty();
                self.outbox.hold(user, msg, local)
            }
        }
    }

    fn outcome(&self, local: bool, sent: &Sent) -> SendOutcome {
        if sent.queued {
            metrics::offline_queued();
        }
        for _ in 0..sent.dropped {
            metrics::offline_dropped("cap");
        }
        if local || sent.receivers > 0 {
            SendOutcome::Delivered
        } else {
            SendOutcome::Queued
        }
    }

    /// Publishes to the cached route. True when some instance received it;
    /// the entry is forgotten when one did not.
    async fn publish_cached(
        &self,
        user: &Arc<str>,
        msg: &DirectMessage,
        local: bool,
        route: &[Arc<str>],
        seq: u64,
    ) -> Result<bool, RedisError> {
        let payload = wire::encode_direct(self.id(), user, msg, local, Some(seq))
            .map_err(|e| RedisError::new(fred::prelude::ErrorKind::Parse, e.to_string()))?;
        let mut reached = 0;
        for inst in route {
            let n: i64 = self
                .client
                .publish(self.keys.instance_channel(inst), payload.as_str())
                .await?;
            if n > 0 {
                reached += 1;
            }
        }
        if reached == route.len() {
            metric::route_cache("hit");
        } else {
            metric::route_cache("stale");
            self.route_cache.forget(user);
        }
        Ok(reached > 0)
    }

    /// A direct message published to this instance's channel by `origin`
    /// (which delivered it to its own connections of the user when `local`).
    pub(super) fn deliver_remote_direct(
        self: &Arc<Self>,
        user: Arc<str>,
        msg: DirectMessage,
        origin: Option<String>,
        local: bool,
        seq: Option<u64>,
    ) {
        // While messages wait to be routed again, later ones queue behind
        // them, so none overtakes an earlier one of the same sender.
        if !self.reroutes.busy() && self.hub.deliver_direct(&user, &msg) > 0 {
            return;
        }
        // The user's last connection here left after the sender read the
        // route (from Redis or its cache): route it again, without this
        // instance nor, when it delivered it already, the sender, or queue
        // it; and tell the sender its cached route is stale. One task does
        // this for every such message, in arrival order: a sender's next
        // message may be on its way here too, and must not overtake.
        let reroute = Reroute {
            user,
            msg,
            origin,
            local,
            seq,
        };
        if self.reroutes.push(reroute) {
            let shared = self.clone();
            self.tasks.spawn(async move {
                while let Some(r) = shared.reroutes.pop() {
                    shared.reroute(r).await;
                }
            });
        }
    }

    /// Routes again a direct message that found no connection here.
    async fn reroute(self: &Arc<Self>, r: Reroute) {
        let Reroute {
            user,
            msg,
            origin,
            local,
            seq,
        } = r;
        // Queued behind a re-route while the user is here.
        if self.hub.deliver_direct(&user, &msg) > 0 {
            return;
        }
        let skip = origin.as_deref().filter(|_| local).unwrap_or("");
        let sent = self.run_send(&user, &msg, local, skip).await;
        if let Some(origin) = origin.as_deref().filter(|o| *o != self.id()) {
            let notice = wire::encode_route(self.id(), "route_stale", &user, seq);
            let r: Result<i64, _> = self
                .client
                .publish(self.keys.instance_channel(origin), notice)
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "cannot tell the sender its route is stale");
            }
        }
        match sent {
            Ok(sent) => {
                self.outcome(false, &sent);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot requeue a direct message; holding it");
                self.mark_dirty();
                if self.outbox.hold(&user, msg, false).is_err() {
                    tracing::error!("outbox full: a direct message was lost");
                }
            }
        }
    }

    /// Re-asserts the routes of every local user, delivering each one's
    /// backlog, and removes routes Redis holds for users no longer here.
    pub(super) async fn reassert_routes(&self) -> Result<(), RedisError> {
        let high_water = self.epochs.high_water();
        let mut result = Ok(());
        let jobs = self
            .hub
            .users()
            .into_iter()
            .map(|(user, conns)| async move {
                let token = self.hub.begin_redeliver(&user, conns);
                let epoch = self.epochs.claim(&user);
                let r = self.run_attach(&user, epoch).await;
                let backlog = r.as_deref().unwrap_or_default();
                self.hub.finish_attach(token, backlog);
                // The user may have left while the script ran.
                self.drop_route_if_last(&user).await;
                r.map(|_| ())
            });
        for r in super::sync::bounded(jobs, 64).await {
            if r.is_err() {
                result = r;
            }
        }
        result?;
        let remote: Vec<String> = self
            .client
            .smembers(self.keys.instance_users(self.id()))
            .await?;
        for user in remote {
            if self.epochs.holds(&user) || self.hub.holds_user(&user) {
                continue;
            }
            let user: Arc<str> = user.into();
            self.run_route_drop(&user, high_water).await?;
        }
        Ok(())
    }

    async fn run_attach(&self, user: &Arc<str>, epoch: u64) -> Result<Vec<Queued>, RedisError> {
        let k = &self.keys;
        let out: Vec<Value> = self
            .scripts
            .attach
            .run(
                &self.client,
                vec![k.routes(user), k.instance_users(self.id()), k.offline(user)],
                vec![
                    self.id().to_owned(),
                    epoch.to_string(),
                    user.to_string(),
                    self.offline_cfg.ttl.as_millis().to_string(),
                    k.global_channel(),
                    wire::encode_route(self.id(), "route_added", user, None),
                ],
            )
            .await?;
        let mut it = out.into_iter();
        let expired = it.next().and_then(|v| v.as_u64()).unwrap_or(0);
        for _ in 0..expired {
            metrics::offline_dropped("ttl");
        }
        Ok(it
            .filter_map(|v| {
                let parsed = v.as_bytes().and_then(wire::decode_offline);
                if parsed.is_none() {
                    metric::bad_message();
                }
                parsed
            })
            .collect())
    }

    async fn run_route_drop(&self, user: &Arc<str>, epoch: u64) -> Result<(), RedisError> {
        let k = &self.keys;
        let _: i64 = self
            .scripts
            .route_drop
            .run(
                &self.client,
                vec![k.routes(user), k.instance_users(self.id())],
                vec![self.id().to_owned(), epoch.to_string(), user.to_string()],
            )
            .await?;
        Ok(())
    }

    /// Publishes to every other instance holding the user (but `skip`), or
    /// queues.
    async fn run_send(
        &self,
        user: &Arc<str>,
        msg: &DirectMessage,
        local: bool,
        skip: &str,
    ) -> Result<Sent, RedisError> {
        let k = &self.keys;
        let payload = wire::encode_direct(self.id(), user, msg, local, None)
            .map_err(|e| RedisError::new(fred::prelude::ErrorKind::Parse, e.to_string()))?;
        let body = serde_json::to_string(msg)
            .map_err(|e| RedisError::new(fred::prelude::ErrorKind::Parse, e.to_string()))?;
        let ttl = self.offline_cfg.ttl.as_millis() as u64;
        let out: Vec<Value> = self
            .scripts
            .send
            .run(
                &self.client,
                vec![k.routes(user), k.offline(user), k.offline_seq(user)],
                vec![
                    self.id().to_owned(),
                    if local { "1" } else { "0" }.to_owned(),
                    k.instance_channel_prefix(),
                    payload,
                    body,
                    self.offline_cfg.max_per_user.to_string(),
                    ttl.max(1).to_string(),
                    (ttl.saturating_mul(2) + 3_600_000).to_string(),
                    skip.to_owned(),
                ],
            )
            .await?;
        let int = |i: usize| out.get(i).and_then(Value::as_i64).unwrap_or(0);
        Ok(Sent {
            receivers: int(0),
            queued: int(1) == 1,
            dropped: int(2),
            reached: out
                .iter()
                .skip(3)
                .filter_map(|v| v.as_str().map(|s| Arc::from(&*s)))
                .collect(),
        })
    }

    /// Sends one held message (outbox flush).
    pub(super) async fn send_held(
        &self,
        user: &Arc<str>,
        msg: &DirectMessage,
        local: bool,
    ) -> Result<(), RedisError> {
        let sent = self.run_send(user, msg, local, "").await?;
        self.outcome(local, &sent);
        Ok(())
    }
}

pub(super) fn unavailable_full() -> BusError {
    unavailable("cluster bus unreachable and the outbox is full; retry later")
}
