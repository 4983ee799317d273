//! The cluster history store: per history room a hash `P:history:<room>`
//! (`o`: last offset, `e`: epoch) and a stream `P:history-stream:<room>`
//! whose entry ids are the offsets (`<offset>-1`), trimmed to about `size`
//! entries (`MAXLEN ~`; reads return only the last `size` offsets) and
//! expired as a whole after `ttl` without a publish (reads skip entries
//! older than `ttl`). The hash lives `meta_ttl` after the last publish or
//! read, so a quiet room keeps its epoch.
//!
//! Publishing is one script (`HISTORY_PUBLISH`): next offset, stream
//! append, `PUBLISH` of the payload carrying offset and epoch. Every
//! instance therefore sees a room's messages on its channel in offset
//! order, and a lost one is noticed at the next (or by the check after a
//! resubscribe) and read back from the stream (`HISTORY_READ`).
//!
//! What arrives goes through the hub's [`crate::history::order::Ordered`]:
//! own publishes with the script's answer (their channel echo is still
//! dropped by the origin prefix), other instances' from the channel.

use std::sync::Arc;
use std::time::Duration;

use fred::types::Value;

use super::{Shared, metric, unavailable, wire};
use crate::bus::{BusError, RoomEvent, RoomMessage};
use crate::history::order::Fill;
use crate::history::{HistoryRead, HistoryRule, Query};

/// How long a fill waits before reading: a message that only overtook its
/// predecessor (the script's answer and the channel are two connections)
/// lets the predecessor arrive first, and no read is made.
const FILL_GRACE: Duration = Duration::from_millis(30);

/// Fills after one another for one gap before it is announced instead.
const FILL_ROUNDS: usize = 20;

impl Shared {
    /// Assigns the message its offset, keeps it and publishes it (one
    /// script), then delivers it to the local members in offset order.
    pub(super) async fn history_publish(
        self: &Arc<Self>,
        room: &Arc<str>,
        rule: &HistoryRule,
        keep: Duration,
        mut msg: RoomMessage,
    ) -> Result<(), BusError> {
        if !self.up() {
            metric::skipped("publish");
            return Err(BusError::Unavailable(
                "redis unreachable: history rooms cannot take messages".into(),
            ));
        }
        let event = RoomEvent::Message(msg);
        let payload = wire::encode_room(self.id(), &event).map_err(unavailable)?;
        let RoomEvent::Message(m) = event else {
            return Ok(());
        };
        msg = m;
        let tail = payload
            .strip_prefix(self.own_prefix.as_str())
            .unwrap_or(&payload)
            .to_owned();
        let r: Result<Vec<Value>, _> = self
            .scripts
            .history_publish
            .run(
                &self.client,
                vec![self.keys.history_meta(room), self.keys.history_stream(room)],
                vec![
                    self.own_prefix.clone(),
                    tail,
                    rule.size.to_string(),
                    millis(rule.ttl),
                    millis(keep),
                    self.keys.room_channel(room),
                ],
            )
            .await;
        let r = r.map_err(|e| {
            metric::error("publish");
            unavailable(e)
        })?;
        let (Some(offset), Some(epoch)) = (
            r.first().and_then(Value::as_u64),
            r.get(1).and_then(Value::as_string),
        ) else {
            return Err(BusError::Unavailable("unexpected history answer".into()));
        };
        msg.offset = Some(offset);
        msg.epoch = Some(epoch.into());
        if let Some(fill) = self.hub.ordered.offer(&self.hub.registry, room, msg) {
            self.spawn_fill(fill);
        }
        Ok(())
    }

    /// Reads a room's position and the messages the query asks for.
    pub(super) async fn history_read(
        &self,
        room: &str,
        rule: &HistoryRule,
        keep: Duration,
        query: Query,
    ) -> Result<HistoryRead, BusError> {
        if !self.up() {
            metric::skipped("history");
            return Err(BusError::Unavailable("redis unreachable".into()));
        }
        let (mode, n) = match query {
            Query::After(after) => ("after", after),
            Query::Latest(n) => ("latest", n as u64),
            Query::Position => ("pos", 0),
        };
        let r: Vec<Value> = self
            .scripts
            .history_read
            .run(
                &self.client,
                vec![self.keys.history_meta(room), self.keys.history_stream(room)],
                vec![
                    mode.to_owned(),
                    n.to_string(),
                    rule.size.to_string(),
                    millis(rule.ttl),
                    millis(keep),
                ],
            )
            .await
            .map_err(|e| {
                metric::error("history");
                unavailable(e)
            })?;
        let mut it = r.into_iter();
        let (Some(epoch), Some(top)) = (
            it.next().and_then(|v| v.as_string()),
            it.next().and_then(|v| v.as_u64()),
        ) else {
            return Err(BusError::Unavailable("unexpected history answer".into()));
        };
        let mut messages = Vec::new();
        while let (Some(_offset), Some(payload)) = (it.next(), it.next()) {
            let Some(bytes) = payload.as_bytes() else {
                continue;
            };
            match wire::decode_room(bytes) {
                Ok(RoomEvent::Message(m)) if m.offset.is_some() => messages.push(m),
                _ => metric::bad_message(),
            }
        }
        Ok(HistoryRead {
            epoch: epoch.into(),
            top,
            messages,
        })
    }

    /// A history message from another instance.
    pub(super) fn on_history_message(self: &Arc<Self>, room: &str, msg: RoomMessage) {
        if let Some(fill) = self.hub.ordered.offer(&self.hub.registry, room, msg) {
            self.spawn_fill(fill);
        }
    }

    /// Reads what is missing after the local position and hands it to the
    /// hub's order (which delivers it, or announces the gap), again while
    /// it asks for more.
    pub(super) fn spawn_fill(self: &Arc<Self>, fill: Fill) {
        let shared = self.clone();
        self.tasks.spawn(async move {
            let mut next = Some(fill);
            let mut rounds = 0;
            while let Some(fill) = next.take() {
                tokio::select! {
                    _ = shared.cancel.cancelled() => return,
                    _ = tokio::time::sleep(FILL_GRACE) => {}
                }
                rounds += 1;
                let read = if rounds > FILL_ROUNDS {
                    None
                } else {
                    shared
                        .history_read(&fill.room, &fill.rule, fill.keep, Query::After(fill.after))
                        .await
                        .map_err(|e| tracing::debug!(error = %e, "history fill failed"))
                        .ok()
                };
                next = shared
                    .hub
                    .ordered
                    .fill_done(&shared.hub.registry, &fill.room, read);
            }
        });
    }

    /// After a resubscribe (messages may have been lost meanwhile) or a
    /// lagging receiver: compares each local history room's position with
    /// the store's and fills what is missing.
    pub(super) fn check_history(self: &Arc<Self>) {
        for room in self.hub.ordered.rooms() {
            if let Some(fill) = self.hub.ordered.check(&room) {
                self.spawn_fill(fill);
            }
        }
    }
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}
