//! How room messages wait for a connection's socket: the write delay (per
//! room-name pattern) and latest-wins keys. Pure policy; the outbox
//! ([`crate::conn::handle::Outbox`]) applies it.
//!
//! A write delay lets each member's connection hold a room's messages up
//! to N ms and write what gathered in one `batch` frame (clients without
//! batch: several frames in one write), one syscall for many deliveries.
//! Anything else pushed to the connection (a direct message, an ack, an
//! error, a close, a room message without delay) takes the held messages
//! with it at once, so nothing but room messages ever waits.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::glob_match;
use crate::bus::RoomEvent;
use crate::conn::handle::Delivery;
use crate::registry::unscoped;

/// Longest write delay accepted by the settings.
pub const MAX_WRITE_DELAY: Duration = Duration::from_secs(1);

/// The write delay of each room: the first matching pattern's, else the
/// global one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteDelays {
    pub global: Duration,
    /// `(pattern, delay)`; `*` in a pattern matches any run of characters
    /// of the room's name (without tenant).
    pub rooms: Vec<(String, Duration)>,
}

impl WriteDelays {
    /// Reads one `pattern=ms` setting.
    pub fn parse_rule(text: &str) -> Result<(String, Duration), String> {
        let (pattern, ms) = text
            .rsplit_once('=')
            .ok_or_else(|| format!("{text:?}: expected ROOM_PATTERN=MS, e.g. game:*=16"))?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(format!("{text:?}: empty room pattern"));
        }
        let ms: u64 = ms
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: the delay must be whole milliseconds"))?;
        let delay = Duration::from_millis(ms);
        if delay > MAX_WRITE_DELAY {
            return Err(format!(
                "{text:?}: at most {} ms",
                MAX_WRITE_DELAY.as_millis()
            ));
        }
        Ok((pattern.to_owned(), delay))
    }

    /// The delay of a room, by its scoped name.
    pub fn of(&self, room: &str) -> Duration {
        let name = unscoped(room);
        self.rooms
            .iter()
            .find(|(p, _)| glob_match(p, name))
            .map_or(self.global, |(_, d)| *d)
    }

    /// How one room event waits in its members' queues.
    pub fn delivery(&self, room: &str, event: &RoomEvent) -> Delivery {
        let delay_us = if self.global.is_zero() && self.rooms.is_empty() {
            0
        } else {
            self.of(room).as_micros() as u64
        };
        let key = match event {
            RoomEvent::Message(m) => m.key.as_deref().map(|k| latest_wins_key(room, k)),
            _ => None,
        };
        Delivery { delay_us, key }
    }
}

/// The identity of a latest-wins message: its room and key. A NUL cannot
/// occur in a room name, so two rooms' keys never collide.
pub fn latest_wins_key(room: &str, key: &str) -> Arc<str> {
    let mut s = String::with_capacity(room.len() + 1 + key.len());
    s.push_str(room);
    s.push('\0');
    s.push_str(key);
    Arc::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_the_first_match_wins() {
        let delays = WriteDelays {
            global: Duration::from_millis(5),
            rooms: vec![
                WriteDelays::parse_rule("game:*=16").expect("rule"),
                WriteDelays::parse_rule("*=50").expect("rule"),
            ],
        };
        assert_eq!(delays.of("game:7"), Duration::from_millis(16));
        assert_eq!(delays.of("chat"), Duration::from_millis(50));
        let only_game = WriteDelays {
            global: Duration::ZERO,
            rooms: vec![WriteDelays::parse_rule("game:*=16").expect("rule")],
        };
        assert_eq!(only_game.of("chat"), Duration::ZERO);
        for bad in ["game", "=5", "game:*=x", "game:*=1001", "game:*=-1"] {
            assert!(WriteDelays::parse_rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_of_different_rooms_differ() {
        assert_ne!(latest_wins_key("a", "b:c"), latest_wins_key("a:b", "c"));
    }
}
