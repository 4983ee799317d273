//! Interest-based subscriptions and the receive loop.
//!
//! The subscriber connection carries this instance's channel, the global
//! channel, and `P:room:<room>` for exactly the rooms with local members
//! (subscribed on the first local member, unsubscribed after the last,
//! converging on the registry; never a pattern over every room). After a
//! reconnect the supervisor resubscribes all of them itself.

use std::sync::Arc;

use fred::prelude::{Error as RedisError, PubsubInterface};
use fred::types::Message;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use super::converge::Claim;
use super::{Shared, metric, unavailable, wire};
use crate::bus::{BusError, RoomEvent};

/// Channels per SUBSCRIBE command on resubscription.
const SUBSCRIBE_CHUNK: usize = 500;

/// Dispatches every pub/sub message until shutdown. A lagging receiver
/// (fred's broadcast channel overflowed) loses messages: they are counted,
/// and the loop goes on.
pub async fn receive_loop(shared: Arc<Shared>, mut rx: Receiver<Message>) {
    let room_prefix = shared.keys.room_channel_prefix();
    let own_channel = shared.keys.instance_channel(shared.id());
    let global = shared.keys.global_channel();
    loop {
        let msg = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            msg = rx.recv() => msg,
        };
        match msg {
            Ok(msg) => {
                let Some(payload) = msg.value.as_bytes() else {
                    metric::bad_message();
                    continue;
                };
                let channel: &str = &msg.channel;
                if let Some(room) = channel.strip_prefix(room_prefix.as_str()) {
                    shared.on_room_message(room, payload);
                } else if channel == own_channel {
                    shared.on_instance_message(payload);
                } else if channel == global {
                    if is_admin(payload) {
                        shared.on_control(payload);
                    } else {
                        shared.on_global_message(payload);
                    }
                }
            }
            Err(RecvError::Lagged(n)) => {
                metric::lagged(n);
                shared.check_history();
                tracing::warn!(lost = n, "pub/sub receiver lagged; messages were dropped");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Whether a channel message is an admin command (`"type":"admin"`).
fn is_admin(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a str>,
    }
    serde_json::from_slice::<Kind>(payload).is_ok_and(|k| k.kind == Some("admin"))
}

impl Shared {
    fn on_room_message(self: &Arc<Self>, room: &str, payload: &[u8]) {
        if payload.starts_with(self.own_prefix.as_bytes()) {
            // Delivered locally when it was published.
            return;
        }
        match wire::decode_room(payload) {
            // A history room's message goes through the local order.
            Ok(RoomEvent::Message(m)) if m.offset.is_some() => self.on_history_message(room, m),
            Ok(event) => self.hub.deliver_room(room, &event),
            Err(e) => {
                metric::bad_message();
                tracing::debug!(error = %e, "bad room message");
            }
        }
    }

    fn on_global_message(&self, payload: &[u8]) {
        if payload.starts_with(self.own_prefix.as_bytes()) {
            // Delivered locally when it was sent.
            return;
        }
        match serde_json::from_slice::<wire::GlobalIn>(payload) {
            Ok(wire::GlobalIn {
                kind,
                user: Some(user),
                ..
            }) if kind == "route_added" => self.route_cache.forget(&user),
            Ok(msg) => match msg.into_broadcast() {
                Some((audience, msg)) => {
                    self.hub.deliver_broadcast(&audience, &msg);
                }
                None => {
                    tracing::debug!(message = %String::from_utf8_lossy(payload), "global channel")
                }
            },
            Err(e) => {
                metric::bad_message();
                tracing::debug!(error = %e, "bad global message");
            }
        }
    }

    fn on_instance_message(self: &Arc<Self>, payload: &[u8]) {
        match serde_json::from_slice::<wire::InstanceIn>(payload) {
            Ok(wire::InstanceIn {
                origin,
                kind,
                user: Some(user),
                local,
                seq,
                msg: Some(msg),
            }) if kind == "direct" => {
                self.deliver_remote_direct(user.into(), msg, origin, local, seq)
            }
            Ok(wire::InstanceIn {
                kind,
                user: Some(user),
                seq,
                ..
            }) if kind == "route_stale" => self.route_cache.forget_stale(&user, seq),
            Ok(wire::InstanceIn { kind, .. }) if kind == "admin" => self.on_control(payload),
            Ok(other) => tracing::debug!(kind = %other.kind, "ignored instance message"),
            Err(e) => {
                metric::bad_message();
                tracing::debug!(error = %e, "bad instance message");
            }
        }
    }

    /// Converges the room's subscription on "has local members". Fails
    /// only when a wanted subscription could not be made.
    pub(super) async fn room_interest(&self, room: &Arc<str>) -> Result<(), BusError> {
        if !self.up() {
            // The resync subscribes every room with local members.
            metric::skipped("subscribe");
            self.mark_dirty();
            return Ok(());
        }
        loop {
            let want = self.hub.has_room(room);
            if self.interest.claim(room, want) != Claim::Apply {
                return Ok(());
            }
            let channel = self.keys.room_channel(room);
            let r = if want {
                self.sub.subscribe(channel).await
            } else {
                self.sub.unsubscribe(channel).await
            };
            match r {
                Ok(()) => self.interest.release(room, Some(want)),
                Err(e) => {
                    self.interest.release(room, None);
                    metric::error("subscribe");
                    self.mark_dirty();
                    if want {
                        return Err(unavailable(e));
                    }
                    tracing::warn!(error = %e, "cannot unsubscribe; will retry");
                    return Ok(());
                }
            }
        }
    }

    /// Subscribes this instance's and the global channel, and converges
    /// every room subscription (after a reconnect the server holds none).
    pub(super) async fn resubscribe(&self) -> Result<(), RedisError> {
        self.sub
            .subscribe(vec![
                self.keys.instance_channel(self.id()),
                self.keys.global_channel(),
            ])
            .await?;
        let mut rooms: Vec<Arc<str>> = self.hub.memberships().into_keys().collect();
        rooms.extend(self.interest.present());
        rooms.sort();
        rooms.dedup();
        for room in &rooms {
            self.interest.unknown(room);
        }
        // Local rooms in large SUBSCRIBE commands first, then every room
        // through the converger (which finds most of them settled).
        let wanted: Vec<&Arc<str>> = rooms.iter().filter(|r| self.hub.has_room(r)).collect();
        for chunk in wanted.chunks(SUBSCRIBE_CHUNK) {
            let channels: Vec<String> = chunk.iter().map(|r| self.keys.room_channel(r)).collect();
            self.sub.subscribe(channels).await?;
            for room in chunk {
                self.interest.set_applied(room, true);
            }
        }
        for room in &rooms {
            self.room_interest(room)
                .await
                .map_err(|e| RedisError::new(fred::prelude::ErrorKind::IO, e.to_string()))?;
        }
        Ok(())
    }
}
