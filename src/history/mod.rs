//! Room history and recovery: which rooms keep history (patterns with a
//! size and a TTL), the positions in it (offset and epoch), and the shared
//! types of both stores.
//!
//! - [`memory`]: the standalone store (a ring per room, in memory).
//! - The cluster store is `bus::redis::history` (a stream per room).
//! - [`order`]: the local side of a history room: members receive its
//!   messages in offset order, exactly once, on every instance; joins
//!   recover what a client missed; gaps are filled or announced.
//! - [`ops`]: the node's history operations (publish, join, `history`).
//!
//! Every message of a room with history carries an `offset` (1, 2, 3, ...
//! per room, assigned by the store) and the room's `epoch` (a new one when
//! the store lost the room's history, e.g. Redis restarted empty).

pub mod memory;
pub mod ops;
pub mod order;

use std::sync::Arc;
use std::time::Duration;

use crate::auth::glob_match;
use crate::bus::RoomMessage;
use crate::registry::unscoped;

/// Largest `SIZE` of a history pattern.
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// One `--history PATTERN=SIZE/TTL` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRule {
    /// Room name pattern (`*` matches any run of characters), matched
    /// against the room name without its tenant.
    pub pattern: String,
    /// Messages kept per room.
    pub size: usize,
    /// How long a message is kept.
    pub ttl: Duration,
}

impl HistoryRule {
    /// Parses `game:*=200/10m` (TTL: seconds, or a number with s, m, h, d).
    pub fn parse(text: &str) -> Result<HistoryRule, String> {
        let text = text.trim();
        let bad = |why: &str| {
            format!("history rule {text:?}: {why} (expected PATTERN=SIZE/TTL, e.g. game:*=200/10m)")
        };
        let (pattern, rest) = text.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let (size, ttl) = rest.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let pattern = pattern.trim();
        let literal = pattern.replace('*', "a");
        if !crate::session::valid_room_name(&literal) {
            return Err(bad("the pattern is not a room name with `*`"));
        }
        let size: usize = size
            .trim()
            .parse()
            .map_err(|_| bad("SIZE is not a number"))?;
        if size == 0 || size > MAX_HISTORY_SIZE {
            return Err(bad(&format!("SIZE must be 1 to {MAX_HISTORY_SIZE}")));
        }
        let ttl = crate::config::parse_ttl(ttl).map_err(|e| bad(&e))?;
        Ok(HistoryRule {
            pattern: pattern.to_owned(),
            size,
            ttl,
        })
    }
}

/// The history settings: rules (first match wins; none: no room keeps
/// history) and the limits of recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    pub rules: Vec<Arc<HistoryRule>>,
    /// Most out-of-order messages an instance holds per room while it
    /// fills a gap; beyond it the members are told (`gap`).
    pub fill_max: usize,
    /// How long a room's position (offset, epoch) outlives its last
    /// message, so a client rejoining after a quiet spell still recovers
    /// (with nothing to replay) instead of being told the epoch changed.
    pub meta_ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            rules: Vec::new(),
            fill_max: defaults::FILL_MAX,
            meta_ttl: Duration::from_secs(defaults::META_TTL_S),
        }
    }
}

pub mod defaults {
    pub const FILL_MAX: usize = 10_000;
    pub const META_TTL_S: u64 = 86_400;
}

impl HistoryConfig {
    /// The rule of a (tenant-scoped) room, if it keeps history.
    pub fn rule(&self, room: &str) -> Option<&Arc<HistoryRule>> {
        if self.rules.is_empty() {
            return None;
        }
        let name = unscoped(room);
        self.rules.iter().find(|r| glob_match(&r.pattern, name))
    }
}

/// A message with its place in the room's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub offset: u64,
    pub msg: RoomMessage,
}

/// What a store returns for a read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRead {
    pub epoch: Arc<str>,
    /// The room's last offset (0: nothing published in this epoch).
    pub top: u64,
    /// Contiguous, oldest first; each carries offset and epoch.
    pub messages: Vec<RoomMessage>,
}

/// Which messages a read wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Those after this offset (at most the room's size).
    After(u64),
    /// The latest `n` (at most the room's size).
    Latest(usize),
    /// None: only the position.
    Position,
}

impl HistoryRead {
    /// Whether the read holds every message after `after` up to `top`.
    pub fn complete_after(&self, after: u64) -> bool {
        if after >= self.top {
            return after == self.top;
        }
        self.messages.first().and_then(|m| m.offset) == Some(after + 1)
            && self.messages.last().and_then(|m| m.offset) == Some(self.top)
    }
}

/// A new epoch: random, short, distinct from any earlier one in practice.
pub fn new_epoch() -> Arc<str> {
    Arc::from(&uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_match() {
        let r = HistoryRule::parse("game:*=200/10m").expect("rule");
        assert_eq!(r.size, 200);
        assert_eq!(r.ttl, Duration::from_secs(600));
        for bad in [
            "game:*",
            "game:*=200",
            "game:*=0/1m",
            "game:*=x/1m",
            "game:*=200/0",
            "bad room=1/1m",
            "game:*=100001/1m",
        ] {
            assert!(HistoryRule::parse(bad).is_err(), "{bad}");
        }
        let cfg = HistoryConfig {
            rules: vec![
                Arc::new(r),
                Arc::new(HistoryRule::parse("*=5/1s").expect("rule")),
            ],
            ..HistoryConfig::default()
        };
        assert_eq!(cfg.rule("t1/game:7").map(|r| r.size), Some(200));
        assert_eq!(cfg.rule("/lobby").map(|r| r.size), Some(5));
        assert!(HistoryConfig::default().rule("/game:1").is_none());
    }
}
