//! The node's history operations: publishing to a history room, joining
//! one (with recovery), and the `history` op.

use std::borrow::Cow;
use std::sync::Arc;

use super::order::{JoinProgress, JoinStep};
use super::{HistoryRead, HistoryRule, Query};
use crate::bus::RoomMessage;
use crate::conn::handle::{ConnHandle, Outbound};
use crate::fanout;
use crate::node::{Node, OpError};
use crate::protocol::message::{ReqId, Since};
use crate::protocol::{ErrorCode, ServerEvent};
use crate::registry::unscoped;

/// Store reads a join makes at most before it gives up recovering (each
/// after the first catches up with messages delivered during the last).
const JOIN_READS: usize = 4;

/// The answer to a `history` op.
pub struct HistoryAnswer {
    id: Option<ReqId>,
    room: Arc<str>,
    read: HistoryRead,
    complete: bool,
}

impl HistoryAnswer {
    pub fn as_event(&self) -> ServerEvent<'_> {
        let name = unscoped(&self.room);
        ServerEvent::History {
            id: self.id.as_ref().map(Cow::Borrowed),
            room: Cow::Borrowed(name),
            messages: self
                .read
                .messages
                .iter()
                .map(|m| m.to_server_event(name))
                .collect(),
            offset: self.read.top,
            epoch: Cow::Borrowed(&self.read.epoch),
            complete: self.complete,
        }
    }
}

impl Node {
    /// The history rule of a (scoped) room, if it keeps history.
    pub fn history_rule(&self, room: &str) -> Option<Arc<HistoryRule>> {
        self.config.history.rule(room).cloned()
    }

    pub(crate) async fn publish_history(
        &self,
        room: &Arc<str>,
        rule: &Arc<HistoryRule>,
        msg: RoomMessage,
    ) -> Result<(), OpError> {
        let keep = self.config.history.meta_ttl;
        Ok(self.bus.history_publish(room, rule, keep, msg).await?)
    }

    /// Joins a room with history. Live messages skip the connection while
    /// the store is read (subscribe first, then read); then, under the
    /// room's order lock, the missed messages since `since` are queued,
    /// then the ack (offset, epoch, recovered), and only then live ones.
    pub async fn join_history(
        &self,
        conn: &Arc<ConnHandle>,
        room: &Arc<str>,
        rule: &Arc<HistoryRule>,
        since: Option<Since>,
        id: Option<&ReqId>,
    ) -> Result<(), OpError> {
        let keep = self.config.history.meta_ttl;
        if self.registry.is_member(conn.id, room) {
            // Already in: nothing to replay; answer the position.
            let (epoch, last) = match self.hub.ordered.position(room) {
                Some(p) => p,
                None => {
                    let read = self
                        .bus
                        .history_read(room, rule, keep, Query::Position)
                        .await?;
                    (read.epoch, read.top)
                }
            };
            if let Some(id) = id {
                let recovered = since.map(|s| *s.epoch == *epoch && s.offset == last);
                ack(conn, id, last, &epoch, recovered);
            }
            return Ok(());
        }
        self.hub.ordered.begin_join(room, conn.id, rule);
        // Ends the recovery however this future ends (an error, or the
        // connection closing while it waits on the store).
        let mut recovering = Recovering {
            node: self,
            room,
            conn: conn.id,
            done: false,
        };
        self.join(conn, room).await?;
        let mut progress = JoinProgress::default();
        let mut query = match &since {
            Some(s) => {
                progress.read_after = s.offset;
                Query::After(s.offset)
            }
            None => Query::Position,
        };
        for round in 1..=JOIN_READS {
            progress.last_round = round == JOIN_READS;
            let read = match self.bus.history_read(room, rule, keep, query).await {
                Ok(read) => read,
                Err(e) => {
                    recovering.end();
                    if let Err(left) = self.leave(conn, room).await {
                        tracing::debug!(code = left.code.as_str(), "undoing a join: {}", left.text);
                    }
                    return Err(e.into());
                }
            };
            let step = self.hub.ordered.finish_join(
                &self.registry,
                room,
                conn,
                since.as_ref(),
                read,
                &mut progress,
                id,
            );
            match step {
                JoinStep::Done { fill, .. } => {
                    recovering.done = true;
                    if let Some(fill) = fill {
                        self.bus.history_fill(fill);
                    }
                    return Ok(());
                }
                JoinStep::ReadAfter(after) => {
                    progress.read_after = after;
                    query = Query::After(after);
                }
            }
        }
        recovering.end();
        Ok(())
    }

    /// The `history` op: the messages after `since`, or the latest `limit`.
    pub async fn history(
        &self,
        room: &Arc<str>,
        since: Option<Since>,
        limit: Option<u64>,
        id: Option<&ReqId>,
    ) -> Result<HistoryAnswer, OpError> {
        let Some(rule) = self.history_rule(room) else {
            return Err(OpError {
                code: ErrorCode::BadRequest,
                text: "this room keeps no history".into(),
            });
        };
        let keep = self.config.history.meta_ttl;
        let query = match (&since, limit) {
            (Some(s), _) => Query::After(s.offset),
            (None, Some(n)) => Query::Latest(n.min(rule.size as u64) as usize),
            (None, None) => Query::Position,
        };
        let mut read = self.bus.history_read(room, &rule, keep, query).await?;
        let complete = match (&since, limit) {
            (Some(s), _) => {
                let same = *s.epoch == *read.epoch;
                if !same {
                    // Offsets of another epoch mean nothing to the client.
                    read.messages.clear();
                }
                same && read.complete_after(s.offset)
            }
            (None, Some(n)) => read.messages.len() as u64 == n.min(read.top),
            (None, None) => true,
        };
        Ok(HistoryAnswer {
            id: id.cloned(),
            room: room.clone(),
            read,
            complete,
        })
    }
}

/// A join's recovery in flight: aborted when dropped before it finished.
struct Recovering<'a> {
    node: &'a Node,
    room: &'a Arc<str>,
    conn: crate::conn::handle::ConnId,
    done: bool,
}

impl Recovering<'_> {
    fn end(&mut self) {
        if !self.done {
            self.done = true;
            self.node
                .hub
                .ordered
                .abort_join(&self.node.registry, self.room, self.conn);
        }
    }
}

impl Drop for Recovering<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

fn ack(conn: &ConnHandle, id: &ReqId, offset: u64, epoch: &str, recovered: Option<bool>) {
    let event = ServerEvent::Ack {
        id: Cow::Borrowed(id),
        offset: Some(offset),
        epoch: Some(Cow::Borrowed(epoch)),
        recovered,
    };
    if let Some(frame) = fanout::encode(conn.codec, &event) {
        let _ = conn.push(Outbound::Frame(frame));
    }
}
