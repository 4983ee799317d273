//! The Redis key and channel schema of cluster mode, in one place.
//!
//! Every name starts with the configured prefix `P` (default `roomcast`), so
//! several clusters can share one Redis. Rooms and users appear in their
//! tenant-scoped form (`tenant/name`). Instance ids are restricted to
//! `A-Z a-z 0-9 . _ -` (checked at start) so that no two names can collide.
//!
//! | name | type | holds |
//! |---|---|---|
//! | `P:instances` | sorted set | instance id, scored by its last heartbeat (ms, Redis clock) |
//! | `P:heartbeat:<id>` | string, PX ttl | the instance's stats as JSON |
//! | `P:instance-users:<id>` | set | users with a connection on the instance |
//! | `P:instance-rooms:<id>` | set | rooms in which the instance has members |
//! | `P:instance-room:<id>:<room>` | set | users of `room` on the instance |
//! | `P:presence:<room>` | hash | user -> number of instances holding the user in `room` |
//! | `P:routes:{<user>}` | hash | instance id -> route epoch (the user has a connection there) |
//! | `P:offline:{<user>}` | list | queued direct messages, `seq|ts_ms|json`, capped, with a TTL |
//! | `P:offline-seq:{<user>}` | string | last sequence number of the user's queue |
//! | `P:reap-lock:<id>` | string, PX | which survivor is reaping the dead instance `<id>` |
//! | `P:reaped:<id>` | string, PX 1 day | the instance was reaped (its users announced as gone) |
//! | `P:admin:watch` | string, PX | some instance has a local admin stats subscriber |
//! | `P:admin:stats:<id>` | string, PX | the instance's admin figures as JSON, while watched |
//!
//! Channels: `P:room:<room>` (room events), `P:instance:<id>` (direct
//! messages for users on that instance) and `P:global`.
//!
//! The user keys share a hash tag so that the send and attach scripts touch
//! one slot; the presence scripts still span an instance key and a room key
//! (see ARCHITECTURE.md on Redis Cluster).

/// Name builder for one instance under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    instance: String,
}

/// Whether an instance id is safe to embed in key and channel names.
pub fn valid_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Keys {
    pub fn new(prefix: &str, instance: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            instance: instance.to_owned(),
        }
    }

    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    pub fn heartbeat(&self, id: &str) -> String {
        format!("{}:heartbeat:{id}", self.prefix)
    }

    pub fn instance_users(&self, id: &str) -> String {
        format!("{}:instance-users:{id}", self.prefix)
    }

    pub fn instance_rooms(&self, id: &str) -> String {
        format!("{}:instance-rooms:{id}", self.prefix)
    }

    pub fn instance_room(&self, id: &str, room: &str) -> String {
        format!("{}:instance-room:{id}:{room}", self.prefix)
    }

    pub fn presence(&self, room: &str) -> String {
        format!("{}:presence:{room}", self.prefix)
    }

    pub fn routes(&self, user: &str) -> String {
        format!("{}:routes:{{{user}}}", self.prefix)
    }

    pub fn offline(&self, user: &str) -> String {
        format!("{}:offline:{{{user}}}", self.prefix)
    }

    pub fn offline_seq(&self, user: &str) -> String {
        format!("{}:offline-seq:{{{user}}}", self.prefix)
    }

    pub fn reap_lock(&self, id: &str) -> String {
        format!("{}:reap-lock:{id}", self.prefix)
    }

    pub fn reaped(&self, id: &str) -> String {
        format!("{}:reaped:{id}", self.prefix)
    }

    pub fn admin_watch(&self) -> String {
        format!("{}:admin:watch", self.prefix)
    }

    pub fn admin_stats(&self, id: &str) -> String {
        format!("{}:admin:stats:{id}", self.prefix)
    }

    /// The prefix of every presence key; the rest is the scoped room.
    pub fn presence_prefix(&self) -> String {
        format!("{}:presence:", self.prefix)
    }

    pub fn room_channel(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    /// The prefix of every room channel; the rest is the scoped room.
    pub fn room_channel_prefix(&self) -> String {
        format!("{}:room:", self.prefix)
    }

    /// The prefix of every instance channel; the rest is the instance id.
    pub fn instance_channel_prefix(&self) -> String {
        format!("{}:instance:", self.prefix)
    }

    pub fn instance_channel(&self, id: &str) -> String {
        format!("{}:instance:{id}", self.prefix)
    }

    pub fn global_channel(&self) -> String {
        format!("{}:global", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_schema() {
        let k = Keys::new("rc", "i-1");
        assert_eq!(k.instances(), "rc:instances");
        assert_eq!(k.heartbeat("i-1"), "rc:heartbeat:i-1");
        assert_eq!(k.routes("t/bob"), "rc:routes:{t/bob}");
        assert_eq!(k.offline("t/bob"), "rc:offline:{t/bob}");
        assert_eq!(
            k.instance_room("i-1", "/lobby"),
            "rc:instance-room:i-1:/lobby"
        );
        assert_eq!(k.room_channel("/lobby"), "rc:room:/lobby");
        assert_eq!(k.instance_channel("i-1"), "rc:instance:i-1");
        assert_eq!(k.global_channel(), "rc:global");
    }

    #[test]
    fn instance_ids_are_restricted() {
        assert!(valid_instance_id("6f1c2a7e-1b2c-4d5e-8f90-1234567890ab"));
        assert!(valid_instance_id("node_1.eu"));
        assert!(!valid_instance_id(""));
        assert!(!valid_instance_id("a:b"));
        assert!(!valid_instance_id("a b"));
    }
}
