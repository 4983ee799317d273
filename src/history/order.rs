//! The local order of history rooms: on every instance, members receive a
//! history room's messages in offset order, each once, and a joining
//! client gets what it missed before anything newer.
//!
//! Per history room with local members, [`Ordered`] keeps (under one
//! mutex, never held across an await or a registry lock order problem:
//! only registry reads and non-blocking pushes happen under it):
//! - `last`: the last offset delivered to the local members;
//! - `pending`: messages that came early (offset > last + 1), in offset
//!   order, bounded by `fill_max`; they wait for the missing ones, which a
//!   fill reads from the store (the caller runs it and reports back);
//! - `recovering`: connections whose join is reading the store; live
//!   messages skip them and are kept in `held` until the join finishes,
//!   which replays the store's messages, then the held ones, then its ack,
//!   all under the mutex, so nothing newer slips in before.
//!
//! Every message arrives here (the own publish's store answer, the other
//! instances' through pub/sub, fills), so the order cannot depend on which
//! Redis connection answered first. History rooms are delivered inline,
//! never through a lane (a lane's later snapshot could include a joiner
//! that has the message from its replay).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;

use super::{HistoryConfig, HistoryRead, HistoryRule};
use crate::bus::RoomMessage;
use crate::conn::handle::{ConnHandle, ConnId, Outbound};
use crate::fanout::{self, Frames};
use crate::metrics;
use crate::protocol::ServerEvent;
use crate::protocol::message::{ReqId, Since};
use crate::registry::{Registry, unscoped};
use std::borrow::Cow;

struct RoomOrder {
    rule: Arc<HistoryRule>,
    epoch: Option<Arc<str>>,
    /// None until the first join's read settled the position.
    last: Option<u64>,
    pending: BTreeMap<u64, RoomMessage>,
    filling: bool,
    recovering: Vec<ConnId>,
    held: Vec<RoomMessage>,
    /// `held` hit `fill_max`: the joiners then in flight cannot recover.
    held_overflow: bool,
    /// Joined connections that have seen more than this instance delivered
    /// (they came from an instance further ahead): each gets only offsets
    /// above its mark, until `last` passes it.
    ahead: Vec<(ConnId, u64)>,
}

/// A gap to fill: read the room's messages after `after` and hand them to
/// [`Ordered::fill_done`].
#[derive(Debug, Clone)]
pub struct Fill {
    pub room: Arc<str>,
    pub rule: Arc<HistoryRule>,
    pub after: u64,
    /// The position's lifetime (`meta_ttl`), for the read.
    pub keep: Duration,
}

/// Where a join's recovery stands between reads.
#[derive(Debug, Default)]
pub struct JoinProgress {
    /// The last offset replayed to the joiner.
    cursor: Option<u64>,
    /// What the read handed to `finish_join` asked for (`After(read_after)`).
    pub read_after: u64,
    /// No further read: what is still missing is not recovered.
    pub last_round: bool,
}

/// The outcome of [`Ordered::finish_join`].
#[derive(Debug)]
pub enum JoinStep {
    /// Replay and ack were queued.
    Done {
        recovered: Option<bool>,
        fill: Option<Fill>,
    },
    /// The store's answer did not reach the local position: read the
    /// messages after this offset and call again.
    ReadAfter(u64),
}

#[derive(Default)]
pub struct Ordered {
    rooms: DashMap<Arc<str>, Arc<Mutex<RoomOrder>>>,
    fill_max: AtomicUsize,
    keep_ms: AtomicU64,
    config: OnceLock<HistoryConfig>,
}

fn lock(m: &Mutex<RoomOrder>) -> std::sync::MutexGuard<'_, RoomOrder> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ordered {
    /// Applies the history settings (the node does, at start).
    pub fn configure(&self, cfg: &HistoryConfig) {
        self.fill_max.store(cfg.fill_max.max(1), Ordering::Relaxed);
        self.keep_ms
            .store(cfg.meta_ttl.as_millis() as u64, Ordering::Relaxed);
        let _ = self.config.set(cfg.clone());
    }

    fn keep(&self) -> Duration {
        match self.keep_ms.load(Ordering::Relaxed) {
            0 => Duration::from_secs(super::defaults::META_TTL_S),
            ms => Duration::from_millis(ms),
        }
    }

    fn fill_max(&self) -> usize {
        match self.fill_max.load(Ordering::Relaxed) {
            0 => super::defaults::FILL_MAX,
            n => n,
        }
    }

    fn room(&self, room: &str) -> Option<Arc<Mutex<RoomOrder>>> {
        self.rooms.get(room).map(|e| e.clone())
    }

    /// The history rooms with local state (for the check after a resync).
    pub fn rooms(&self) -> Vec<Arc<str>> {
        self.rooms.iter().map(|e| e.key().clone()).collect()
    }

    /// A message of a history room for the local members: delivered now
    /// when it is the next one, kept when it came early (the returned
    /// fill reads what is missing), dropped when it was delivered already.
    pub fn offer(&self, registry: &Registry, room: &str, msg: RoomMessage) -> Option<Fill> {
        let state = match self.room(room) {
            Some(state) => state,
            None => self.adopt(registry, room, &msg)?,
        };
        let mut st = lock(&state);
        let (Some(off), Some(epoch)) = (msg.offset, msg.epoch.clone()) else {
            return None;
        };
        let Some(last) = st.last else {
            // A join is settling the position.
            if st.pending.len() < self.fill_max() {
                st.pending.insert(off, msg);
            }
            return None;
        };
        if st.epoch.as_ref() != Some(&epoch) {
            // The store lost the history these members followed.
            metrics::history_gap();
            st.epoch = Some(epoch.clone());
            st.pending.clear();
            st.ahead.clear();
            st.last = Some(off.saturating_sub(1));
            send_gap(registry, room, &st, &epoch, off.saturating_sub(1));
        } else if off <= last {
            return None;
        }
        let last = st.last.unwrap_or(0);
        if off == last.saturating_add(1) {
            deliver(registry, room, &mut st, msg, self.fill_max());
            drain(registry, room, &mut st, self.fill_max());
            return None;
        }
        st.pending.insert(off, msg);
        if st.pending.len() > self.fill_max() {
            give_up(registry, room, &mut st, 0);
            return None;
        }
        self.start_fill(room, &mut st, last)
    }

    /// A fill of everything after `after`, unless one is already running
    /// for the room (it reads again when it ends, if still needed).
    fn start_fill(&self, room: &str, st: &mut RoomOrder, after: u64) -> Option<Fill> {
        if st.filling {
            return None;
        }
        st.filling = true;
        Some(Fill {
            room: Arc::from(room),
            rule: st.rule.clone(),
            after,
            keep: self.keep(),
        })
    }

    /// A history room whose local members joined without
    /// [`Ordered::begin_join`] (another path into the registry): its
    /// position starts at this message.
    fn adopt(
        &self,
        registry: &Registry,
        room: &str,
        msg: &RoomMessage,
    ) -> Option<Arc<Mutex<RoomOrder>>> {
        if !registry.has_room(room) {
            return None;
        }
        let rule = self.config.get()?.rule(room)?.clone();
        let state = self
            .rooms
            .entry(Arc::from(room))
            .or_insert_with(|| {
                Arc::new(Mutex::new(RoomOrder {
                    rule,
                    epoch: msg.epoch.clone(),
                    last: msg.offset.map(|o| o.saturating_sub(1)),
                    pending: BTreeMap::new(),
                    filling: false,
                    recovering: Vec::new(),
                    held: Vec::new(),
                    held_overflow: false,
                    ahead: Vec::new(),
                }))
            })
            .clone();
        Some(state)
    }

    /// Asks for a fill of everything after the local position (after the
    /// subscriber reconnected: messages may have been missed).
    pub fn check(&self, room: &str) -> Option<Fill> {
        let state = self.room(room)?;
        let mut st = lock(&state);
        let last = st.last?;
        self.start_fill(room, &mut st, last)
    }

    /// The result of a fill: delivers the missing messages in order, then
    /// what waited for them. When the store cannot supply them (trimmed,
    /// expired, another epoch, unreachable), the members are told with a
    /// `gap` event and delivery goes on after the newest known offset.
    pub fn fill_done(
        &self,
        registry: &Registry,
        room: &str,
        read: Option<HistoryRead>,
    ) -> Option<Fill> {
        let state = self.room(room)?;
        let mut st = lock(&state);
        st.filling = false;
        let last = st.last?;
        let fill_max = self.fill_max();
        match read {
            Some(read) if st.epoch.as_ref() == Some(&read.epoch) => {
                let mut delivered = 0;
                for m in read.messages {
                    if m.offset == Some(st.last.unwrap_or(0).saturating_add(1)) {
                        deliver(registry, room, &mut st, m, fill_max);
                        delivered += 1;
                    }
                }
                if delivered > 0 {
                    metrics::history_filled(delivered);
                }
                drain(registry, room, &mut st, fill_max);
                let now = st.last.unwrap_or(0);
                if now < read.top {
                    // The store no longer holds what is missing.
                    give_up(registry, room, &mut st, read.top);
                } else if !st.pending.is_empty() {
                    // Newer than the read: published after it; read again.
                    return self.start_fill(room, &mut st, now);
                }
            }
            Some(read) => {
                metrics::history_gap();
                st.epoch = Some(read.epoch.clone());
                st.last = Some(read.top);
                st.ahead.clear();
                let epoch = read.epoch.clone();
                st.pending.retain(|_, m| m.epoch.as_ref() == Some(&epoch));
                send_gap(registry, room, &st, &epoch, read.top);
                drain(registry, room, &mut st, fill_max);
            }
            None => give_up(registry, room, &mut st, last),
        }
        None
    }

    /// A connection starts joining a history room: live messages skip it
    /// until [`Ordered::finish_join`] (or [`Ordered::abort_join`]).
    pub fn begin_join(&self, room: &Arc<str>, conn: ConnId, rule: &Arc<HistoryRule>) {
        let state = self
            .rooms
            .entry(room.clone())
            .or_insert_with(|| {
                Arc::new(Mutex::new(RoomOrder {
                    rule: rule.clone(),
                    epoch: None,
                    last: None,
                    pending: BTreeMap::new(),
                    filling: false,
                    recovering: Vec::new(),
                    held: Vec::new(),
                    held_overflow: false,
                    ahead: Vec::new(),
                }))
            })
            .clone();
        let mut st = lock(&state);
        if st.recovering.is_empty() {
            st.held.clear();
            st.held_overflow = false;
        }
        st.recovering.push(conn);
    }

    /// The join failed: the connection is no longer recovering.
    pub fn abort_join(&self, registry: &Registry, room: &str, conn: ConnId) {
        if let Some(state) = self.room(room) {
            let mut st = lock(&state);
            st.recovering.retain(|c| *c != conn);
        }
        self.forget(registry, room);
    }

    /// Drops the room's state once it has neither local members nor joins
    /// in flight (after the last local leave).
    pub fn forget(&self, registry: &Registry, room: &str) {
        self.rooms.remove_if(room, |_, state| {
            lock(state).recovering.is_empty() && !registry.has_room(room)
        });
    }

    /// The room's local position, when settled.
    pub fn position(&self, room: &str) -> Option<(Arc<str>, u64)> {
        let state = self.room(room)?;
        let st = lock(&state);
        Some((st.epoch.clone()?, st.last?))
    }

    /// Finishes a join with the store's answer (`read`, which asked for
    /// the messages after `progress.read_after`): settles the room's
    /// position if this is its first join, replays what the client missed
    /// since `since` (store messages, then those held meanwhile), queues
    /// the ack (when `id`), and lets live messages reach the connection.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_join(
        &self,
        registry: &Registry,
        room: &str,
        conn: &Arc<ConnHandle>,
        since: Option<&Since>,
        read: HistoryRead,
        progress: &mut JoinProgress,
        id: Option<&ReqId>,
    ) -> JoinStep {
        let Some(state) = self.room(room) else {
            return JoinStep::Done {
                recovered: since.map(|_| false),
                fill: None,
            };
        };
        let mut st = lock(&state);
        let fill_max = self.fill_max();
        if st.last.is_none() {
            st.epoch = Some(read.epoch.clone());
            st.last = Some(read.top);
            let epoch = read.epoch.clone();
            st.pending.retain(|_, m| m.epoch.as_ref() == Some(&epoch));
        }
        let epoch = st.epoch.clone().unwrap_or_else(|| read.epoch.clone());
        let last = st.last.unwrap_or(read.top);
        let name = unscoped(room);
        let mut position = last;
        let recovered = match since {
            None => None,
            Some(s) if *s.epoch != *epoch || read.epoch != epoch || s.offset > read.top => {
                Some(false)
            }
            Some(s) if s.offset > last => {
                // The client saw more than this instance delivered yet (it
                // comes from an instance further ahead): nothing to replay,
                // and live messages up to its offset are not sent to it.
                st.ahead.push((conn.id, s.offset));
                position = s.offset;
                Some(true)
            }
            Some(s) => {
                let mut cursor = progress.cursor.unwrap_or(s.offset);
                let mut frames = Vec::new();
                for m in read.messages.iter().chain(st.held.iter()) {
                    if m.offset == Some(cursor.saturating_add(1)) && cursor < last {
                        if let Some(f) = fanout::encode(conn.codec, &m.to_server_event(name)) {
                            frames.push(f);
                        }
                        cursor += 1;
                    }
                }
                if !frames.is_empty() {
                    // One item: a replay longer than the queue is not cut.
                    let _ = conn.push(Outbound::Queued { frames, upto: 0 });
                }
                progress.cursor = Some(cursor);
                if cursor == last {
                    Some(true)
                } else if st.held_overflow
                    || progress.last_round
                    || !read.complete_after(progress.read_after)
                {
                    Some(false)
                } else {
                    return JoinStep::ReadAfter(cursor);
                }
            }
        };
        metrics::history_recovery(recovered);
        if let Some(id) = id {
            let ack = ServerEvent::Ack {
                id: Cow::Borrowed(id),
                offset: Some(position),
                epoch: Some(Cow::Borrowed(&epoch)),
                recovered,
            };
            if let Some(frame) = fanout::encode(conn.codec, &ack) {
                let _ = conn.push(Outbound::Frame(frame));
            }
        }
        st.recovering.retain(|c| *c != conn.id);
        if st.recovering.is_empty() {
            st.held = Vec::new();
            st.held_overflow = false;
        }
        drain(registry, room, &mut st, fill_max);
        let behind = st.last.unwrap_or(0) < position;
        let fill = if behind || !st.pending.is_empty() {
            let after = st.last.unwrap_or(0);
            self.start_fill(room, &mut st, after)
        } else {
            None
        };
        JoinStep::Done { recovered, fill }
    }
}

/// Delivers the next message to the local members (those still joining
/// get it from `held` later) and advances the position.
fn deliver(registry: &Registry, room: &str, st: &mut RoomOrder, msg: RoomMessage, fill_max: usize) {
    st.last = msg.offset;
    let offset = msg.offset.unwrap_or(0);
    if let Some(members) = registry.room_members(room) {
        let event = msg.to_server_event(unscoped(room));
        let mut frames = Frames::new(&event);
        let sent = if st.recovering.is_empty() && st.ahead.is_empty() {
            frames.send_to(members.iter())
        } else {
            let (recovering, ahead) = (&st.recovering, &st.ahead);
            frames.send_to(members.iter().filter(|c| {
                !recovering.contains(&c.id)
                    && !ahead
                        .iter()
                        .any(|(id, mark)| *id == c.id && offset <= *mark)
            }))
        };
        metrics::room_fanout(frames.encodes());
        metrics::delivered(sent);
    }
    if !st.ahead.is_empty() {
        st.ahead.retain(|(_, mark)| *mark > offset);
    }
    if !st.recovering.is_empty() {
        if st.held.len() < fill_max {
            st.held.push(msg);
        } else {
            st.held_overflow = true;
        }
    }
}

/// Delivers the pending messages that are next in order.
fn drain(registry: &Registry, room: &str, st: &mut RoomOrder, fill_max: usize) {
    while let Some(entry) = st.pending.first_entry() {
        let last = st.last.unwrap_or(0);
        if *entry.key() <= last {
            entry.remove();
        } else if *entry.key() == last.saturating_add(1) {
            let msg = entry.remove();
            deliver(registry, room, st, msg, fill_max);
        } else {
            return;
        }
    }
}

/// The missing messages cannot be had: tell the members the room's last
/// known offset (they read the rest with `history`) and go on after it.
fn give_up(registry: &Registry, room: &str, st: &mut RoomOrder, top: u64) {
    let newest = st
        .pending
        .last_key_value()
        .map_or(0, |(k, _)| *k)
        .max(top)
        .max(st.last.unwrap_or(0));
    st.pending.clear();
    st.last = Some(newest);
    st.ahead.retain(|(_, mark)| *mark > newest);
    metrics::history_gap();
    if let Some(epoch) = st.epoch.clone() {
        send_gap(registry, room, st, &epoch, newest);
    }
}

fn send_gap(registry: &Registry, room: &str, st: &RoomOrder, epoch: &str, offset: u64) {
    tracing::debug!(room, offset, "history gap announced");
    let Some(members) = registry.room_members(room) else {
        return;
    };
    let event = ServerEvent::Gap {
        room: Cow::Borrowed(unscoped(room)),
        epoch: Cow::Borrowed(epoch),
        offset,
    };
    let mut frames = Frames::new(&event);
    let recovering = &st.recovering;
    let sent = frames.send_to(members.iter().filter(|c| !recovering.contains(&c.id)));
    metrics::delivered(sent);
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::config::SlowConsumerPolicy;
    use crate::protocol::{Codec, Data};
    use crate::registry::scoped;
    use serde_json::Value;

    fn conn(id: ConnId, user: &str) -> Arc<ConnHandle> {
        ConnHandle::new(id, user.into(), Codec::Json, 64, SlowConsumerPolicy::Drop)
    }

    fn msg(offset: u64, epoch: &str) -> RoomMessage {
        RoomMessage {
            from: "p".into(),
            data: Data::null(),
            ts: 1,
            mid: format!("m{offset}"),
            offset: Some(offset),
            epoch: Some(epoch.into()),
            key: None,
        }
    }

    /// The events queued to a connection, as JSON values.
    fn events(c: &ConnHandle) -> Vec<Value> {
        let mut items = VecDeque::new();
        c.outbox.take_all(&mut items);
        let mut frames = Vec::new();
        for item in items {
            match item {
                Outbound::Frame(f) => frames.push(f),
                Outbound::Queued { frames: fs, .. } => frames.extend(fs),
                _ => {}
            }
        }
        frames
            .iter()
            .map(|f| {
                let skip = if f[1] & 0x7f == 126 { 4 } else { 2 };
                serde_json::from_slice(&f[skip..]).expect("json frame")
            })
            .collect()
    }

    fn offsets(evs: &[Value]) -> Vec<u64> {
        evs.iter().filter_map(|e| e["offset"].as_u64()).collect()
    }

    struct Room {
        reg: Registry,
        ord: Ordered,
        name: Arc<str>,
        rule: Arc<HistoryRule>,
    }

    fn room() -> Room {
        Room {
            reg: Registry::new(),
            ord: Ordered::default(),
            name: scoped("", "game:1"),
            rule: Arc::new(HistoryRule::parse("game:*=100/1h").expect("rule")),
        }
    }

    impl Room {
        fn read(&self, top: u64, from: u64) -> HistoryRead {
            HistoryRead {
                epoch: "e1".into(),
                top,
                messages: (from..=top).map(|o| msg(o, "e1")).collect(),
            }
        }

        /// Joins `c` with the store at `top` holding `from..=top`.
        fn join(&self, c: &Arc<ConnHandle>, since: Option<Since>, top: u64, from: u64) -> JoinStep {
            self.reg.add_conn(c);
            self.ord.begin_join(&self.name, c.id, &self.rule);
            self.reg.join(c, &self.name, 10).expect("join");
            let mut progress = JoinProgress {
                read_after: since.as_ref().map_or(0, |s| s.offset),
                ..JoinProgress::default()
            };
            let id = ReqId::Num(1);
            self.ord.finish_join(
                &self.reg,
                &self.name,
                c,
                since.as_ref(),
                self.read(top, from),
                &mut progress,
                Some(&id),
            )
        }
    }

    #[test]
    fn early_messages_wait_for_the_missing_one() {
        let r = room();
        let a = conn(1, "/a");
        r.join(&a, None, 5, 6);
        assert_eq!(events(&a)[0]["offset"], 5, "ack at the position");
        let fill = r.ord.offer(&r.reg, &r.name, msg(7, "e1")).expect("a fill");
        assert_eq!(fill.after, 5);
        assert!(
            r.ord.offer(&r.reg, &r.name, msg(8, "e1")).is_none(),
            "one fill at a time"
        );
        assert!(events(&a).is_empty(), "7 and 8 wait for 6");
        assert!(r.ord.offer(&r.reg, &r.name, msg(6, "e1")).is_none());
        assert_eq!(offsets(&events(&a)), vec![6, 7, 8]);
        // The fill finds nothing newer: nothing more, no gap.
        assert!(
            r.ord
                .fill_done(&r.reg, &r.name, Some(r.read(8, 6)))
                .is_none()
        );
        assert!(r.ord.offer(&r.reg, &r.name, msg(8, "e1")).is_none());
        assert!(events(&a).is_empty(), "duplicates are dropped");
    }

    #[test]
    fn fills_deliver_in_order_or_announce_the_gap() {
        let r = room();
        let a = conn(1, "/a");
        r.join(&a, None, 5, 6);
        events(&a);
        r.ord.offer(&r.reg, &r.name, msg(8, "e1")).expect("fill");
        r.ord.fill_done(&r.reg, &r.name, Some(r.read(8, 6)));
        assert_eq!(offsets(&events(&a)), vec![6, 7, 8]);
        // The store lost 9 (trimmed): a gap, then delivery goes on.
        r.ord.offer(&r.reg, &r.name, msg(11, "e1")).expect("fill");
        r.ord.fill_done(&r.reg, &r.name, Some(r.read(11, 10)));
        let evs = events(&a);
        assert_eq!(evs[0]["ev"], "gap");
        assert_eq!(evs[0]["offset"], 11);
        assert_eq!(evs.len(), 1, "11 is covered by the gap: {evs:?}");
        assert!(r.ord.offer(&r.reg, &r.name, msg(12, "e1")).is_none());
        assert_eq!(offsets(&events(&a)), vec![12]);
        // An unreadable store: a gap too.
        r.ord.offer(&r.reg, &r.name, msg(14, "e1")).expect("fill");
        r.ord.fill_done(&r.reg, &r.name, None);
        assert_eq!(events(&a)[0]["ev"], "gap");
        // A new epoch: a gap with it, then its messages.
        r.ord.offer(&r.reg, &r.name, msg(1, "e2"));
        let evs = events(&a);
        assert_eq!(
            (evs[0]["ev"].as_str(), evs[0]["epoch"].as_str()),
            (Some("gap"), Some("e2"))
        );
        assert_eq!(offsets(&evs[1..]), vec![1]);
    }

    #[test]
    fn a_joiner_gets_the_store_then_what_arrived_meanwhile_then_the_ack() {
        let r = room();
        let a = conn(1, "/a");
        r.join(&a, None, 5, 6);
        events(&a);
        let b = conn(2, "/b");
        r.reg.add_conn(&b);
        r.ord.begin_join(&r.name, b.id, &r.rule);
        r.reg.join(&b, &r.name, 10).expect("join");
        // 6 arrives while b reads the store (which answered up to 5).
        r.ord.offer(&r.reg, &r.name, msg(6, "e1"));
        assert_eq!(offsets(&events(&a)), vec![6]);
        assert!(events(&b).is_empty(), "b is recovering");
        let since = Since {
            offset: 2,
            epoch: "e1".into(),
        };
        let mut progress = JoinProgress {
            read_after: 2,
            ..JoinProgress::default()
        };
        let id = ReqId::Num(9);
        let step = r.ord.finish_join(
            &r.reg,
            &r.name,
            &b,
            Some(&since),
            r.read(5, 3),
            &mut progress,
            Some(&id),
        );
        assert!(
            matches!(
                step,
                JoinStep::Done {
                    recovered: Some(true),
                    ..
                }
            ),
            "{step:?}"
        );
        let evs = events(&b);
        assert_eq!(offsets(&evs[..4]), vec![3, 4, 5, 6]);
        assert_eq!(evs[4]["ev"], "ack");
        assert_eq!(
            (evs[4]["offset"].as_u64(), evs[4]["recovered"].as_bool()),
            (Some(6), Some(true))
        );
        r.ord.offer(&r.reg, &r.name, msg(7, "e1"));
        assert_eq!(offsets(&events(&b)), vec![7]);
        // Beyond what the store holds: not recovered, nothing replayed.
        let c = conn(3, "/c");
        let step = r.join(
            &c,
            Some(Since {
                offset: 1,
                epoch: "e1".into(),
            }),
            7,
            4,
        );
        assert!(
            matches!(
                step,
                JoinStep::Done {
                    recovered: Some(false),
                    ..
                }
            ),
            "{step:?}"
        );
        let evs = events(&c);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0]["ev"].as_str(), evs[0]["offset"].as_u64()),
            (Some("ack"), Some(7))
        );
    }
    #[test]
    fn a_joiner_ahead_of_this_instance_gets_only_newer_messages() {
        let r = room();
        let a = conn(1, "/a");
        r.join(&a, None, 5, 6);
        events(&a);
        // b saw up to 8 on another instance; this one delivered up to 5.
        let b = conn(2, "/b");
        let step = r.join(
            &b,
            Some(Since {
                offset: 8,
                epoch: "e1".into(),
            }),
            8,
            6,
        );
        let JoinStep::Done {
            recovered: Some(true),
            fill: Some(fill),
        } = step
        else {
            panic!("{step:?}");
        };
        assert_eq!(fill.after, 5, "this instance catches up");
        let evs = events(&b);
        assert_eq!(
            (evs.len(), evs[0]["offset"].as_u64()),
            (1, Some(8)),
            "{evs:?}"
        );
        r.ord.fill_done(&r.reg, &r.name, Some(r.read(9, 6)));
        assert_eq!(offsets(&events(&a)), vec![6, 7, 8, 9]);
        assert_eq!(offsets(&events(&b)), vec![9]);
    }
}
