//! The per-connection state machine: rate limiting, validation and
//! permission checks that turn a client request into a command. Pure: no
//! I/O, no awaiting, tested without sockets.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::Identity;
use crate::config::LimitsConfig;
use crate::protocol::message::{ClientOp, Since};
use crate::protocol::{CloseCode, Data, ErrorCode};
use crate::registry::scoped;

/// Longest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 128;
/// Longest user id in a `send`, in bytes (same as a token's `sub`).
pub const MAX_USER_LEN: usize = 256;

/// The admin stats channel: a reserved name (`$` is never part of a room
/// name) that only role-`admin` tokens without a tenant may join, and that
/// nobody may publish to.
pub const ADMIN_STATS_ROOM: &str = "$admin:stats";

fn forbidden(text: &str) -> Refusal {
    Refusal::Error(ErrorCode::Forbidden, text.into())
}

/// Room names: 1 to 128 bytes of `A-Z a-z 0-9 : _ - .`.
pub fn valid_room_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ROOM_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-' | b'.'))
}

/// Deepest nesting of arrays and objects allowed in `data`, so that every
/// event carrying it (even inside a `batch`) stays far below the decoders'
/// nesting limits.
pub const MAX_DATA_DEPTH: usize = 32;

fn check_data(data: &Data) -> Result<(), Refusal> {
    if data.depth() <= MAX_DATA_DEPTH {
        Ok(())
    } else {
        Err(Refusal::Error(
            ErrorCode::BadRequest,
            format!("data nested deeper than {MAX_DATA_DEPTH} levels"),
        ))
    }
}

/// A validated, permitted command with tenant-scoped keys.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Join {
        room: Arc<str>,
        since: Option<Since>,
    },
    Leave {
        room: Arc<str>,
    },
    Publish {
        room: Arc<str>,
        data: Data,
        key: Option<String>,
    },
    Send {
        to: Arc<str>,
        data: Data,
    },
    Presence {
        room: Arc<str>,
    },
    Ping,
    /// Join the admin stats channel.
    StatsSubscribe,
    /// Leave the admin stats channel.
    StatsUnsubscribe,
    /// An admin command, still to be parsed (`admin::commands`).
    Admin {
        cmd: String,
        args: Data,
    },
    History {
        room: Arc<str>,
        since: Option<Since>,
        limit: Option<u64>,
    },
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Answer with an error event; the connection stays.
    Error(ErrorCode, String),
    /// Close the connection.
    Close(CloseCode),
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Session {
    pub identity: Identity,
    bucket: TokenBucket,
    /// Rate-limited operations since the last admitted one.
    strikes: u32,
    max_strikes: u32,
}

impl Session {
    pub fn new(identity: Identity, limits: &LimitsConfig, now: Instant) -> Self {
        Session {
            identity,
            bucket: TokenBucket::new(limits.rate_per_s, limits.burst, now),
            strikes: 0,
            max_strikes: limits.rate_abuse_strikes,
        }
    }

    /// Admits a frame before it is even decoded: every frame costs a token,
    /// so malformed floods are limited too.
    pub fn admit_frame(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.bucket.take(now) {
            self.strikes = 0;
            return Ok(());
        }
        self.strikes += 1;
        if self.strikes > self.max_strikes {
            Err(Refusal::Close(CloseCode::PolicyViolation))
        } else {
            Err(Refusal::Error(
                ErrorCode::RateLimited,
                "rate limit exceeded; slow down".into(),
            ))
        }
    }

    /// Validates an operation and checks the token's permissions.
    pub fn command(&self, op: ClientOp) -> Result<Command, Refusal> {
        let tenant = &self.identity.tenant;
        let room_key = |room: &str| -> Result<Arc<str>, Refusal> {
            if !valid_room_name(room) {
                return Err(Refusal::Error(
                    ErrorCode::InvalidRoom,
                    format!("room names are 1 to {MAX_ROOM_LEN} bytes of A-Z a-z 0-9 : _ - ."),
                ));
            }
            Ok(scoped(tenant, room))
        };
        let is_admin = self.identity.is_admin();
        let global_admin = is_admin && tenant.is_empty();
        match &op {
            ClientOp::Join { room, .. } if room == ADMIN_STATS_ROOM => {
                return if global_admin {
                    Ok(Command::StatsSubscribe)
                } else {
                    Err(forbidden(
                        "the stats channel needs an admin token without a tenant",
                    ))
                };
            }
            ClientOp::Leave { room } if room == ADMIN_STATS_ROOM => {
                return if global_admin {
                    Ok(Command::StatsUnsubscribe)
                } else {
                    Err(forbidden("not an admin"))
                };
            }
            ClientOp::Publish { room, .. } | ClientOp::Presence { room }
                if room == ADMIN_STATS_ROOM =>
            {
                return Err(forbidden("nobody publishes to the stats channel"));
            }
            _ => {}
        }
        Ok(match op {
            ClientOp::Admin { cmd, args } => {
                if !is_admin {
                    return Err(forbidden("admin operations need role admin"));
                }
                Command::Admin { cmd, args }
            }
            ClientOp::Join { room, since } => {
                let key = room_key(&room)?;
                if !self.identity.may_join(&room) {
                    return Err(Refusal::Error(
                        ErrorCode::Forbidden,
                        "token does not allow this room".into(),
                    ));
                }
                Command::Join { room: key, since }
            }
            ClientOp::History { room, since, limit } => {
                let key = room_key(&room)?;
                if !self.identity.may_join(&room) {
                    return Err(Refusal::Error(
                        ErrorCode::Forbidden,
                        "token does not allow this room".into(),
                    ));
                }
                Command::History {
                    room: key,
                    since,
                    limit,
                }
            }
            ClientOp::Leave { room } => Command::Leave {
                room: room_key(&room)?,
            },
            ClientOp::Publish { room, data, key } => {
                check_data(&data)?;
                Command::Publish {
                    room: room_key(&room)?,
                    data,
                    key,
                }
            }
            ClientOp::Presence { room } => {
                let key = room_key(&room)?;
                if !self.identity.may_join(&room) {
                    return Err(Refusal::Error(
                        ErrorCode::Forbidden,
                        "token does not allow this room".into(),
                    ));
                }
                Command::Presence { room: key }
            }
            ClientOp::Send { to, data } => {
                if to.is_empty() || to.len() > MAX_USER_LEN {
                    return Err(Refusal::Error(
                        ErrorCode::BadRequest,
                        format!("`to` must be 1 to {MAX_USER_LEN} bytes"),
                    ));
                }
                check_data(&data)?;
                Command::Send {
                    to: scoped(tenant, &to),
                    data,
                }
            }
            ClientOp::Ping => Command::Ping,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            max_message_bytes: 1024,
            max_rooms_per_conn: 4,
            rate_per_s: 10,
            burst: 2,
            rate_abuse_strikes: 3,
            max_connections: 10,
            max_conns_per_user: 2,
            outbound_queue: 8,
            slow_consumer: crate::config::SlowConsumerPolicy::Drop,
            ping_interval: Duration::from_secs(1),
            presence_events_max: 1000,
        }
    }

    fn identity(rooms: Option<Vec<&str>>, tenant: &str) -> Identity {
        Identity {
            user: "u".into(),
            tenant: tenant.into(),
            roles: vec![],
            rooms: rooms.map(|r| r.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn data_depth() {
        let nested = |depth: usize| {
            let text = format!(r#"{}"[[[{{"{}"#, "[".repeat(depth), "]".repeat(depth));
            Data::from_json(&text).expect("valid JSON")
        };
        let s = Session::new(identity(None, ""), &limits(), Instant::now());
        let publish = |data| {
            s.command(ClientOp::Publish {
                room: "r".into(),
                data,
                key: None,
            })
        };
        assert!(publish(nested(MAX_DATA_DEPTH)).is_ok());
        assert!(matches!(
            publish(nested(MAX_DATA_DEPTH + 1)),
            Err(Refusal::Error(ErrorCode::BadRequest, _))
        ));
        let send = s.command(ClientOp::Send {
            to: "bob".into(),
            data: nested(MAX_DATA_DEPTH + 1),
        });
        assert!(matches!(
            send,
            Err(Refusal::Error(ErrorCode::BadRequest, _))
        ));
    }

    #[test]
    fn the_stats_channel_is_for_admins_without_a_tenant() {
        let with = |roles: Vec<String>, tenant: &str| {
            let mut id = identity(None, tenant);
            id.roles = roles;
            Session::new(id, &limits(), Instant::now())
        };
        let admin = with(vec!["admin".into()], "");
        let tenant_admin = with(vec!["admin".into()], "t1");
        let user = with(vec![], "");
        let join = || ClientOp::Join {
            room: ADMIN_STATS_ROOM.into(),
            since: None,
        };
        assert_eq!(admin.command(join()), Ok(Command::StatsSubscribe));
        for s in [&tenant_admin, &user] {
            assert!(matches!(
                s.command(join()),
                Err(Refusal::Error(ErrorCode::Forbidden, _))
            ));
        }
        for s in [&admin, &tenant_admin, &user] {
            let publish = s.command(ClientOp::Publish {
                room: ADMIN_STATS_ROOM.into(),
                data: Data::null(),
                key: None,
            });
            assert!(matches!(
                publish,
                Err(Refusal::Error(ErrorCode::Forbidden, _))
            ));
        }
        let op = || ClientOp::Admin {
            cmd: "instances".into(),
            args: Data::null(),
        };
        assert!(matches!(admin.command(op()), Ok(Command::Admin { .. })));
        assert!(matches!(
            tenant_admin.command(op()),
            Ok(Command::Admin { .. })
        ));
        assert!(matches!(
            user.command(op()),
            Err(Refusal::Error(ErrorCode::Forbidden, _))
        ));
        // Any other `$` name is still an invalid room.
        assert!(matches!(
            admin.command(ClientOp::Join {
                room: "$admin:other".into(),
                since: None,
            }),
            Err(Refusal::Error(ErrorCode::InvalidRoom, _))
        ));
    }

    #[test]
    fn room_names() {
        assert!(valid_room_name("encounter:42"));
        assert!(valid_room_name("a.b-c_d"));
        assert!(!valid_room_name(""));
        assert!(!valid_room_name("has space"));
        assert!(!valid_room_name("slash/room"));
        assert!(!valid_room_name("star*"));
        assert!(!valid_room_name(&"x".repeat(MAX_ROOM_LEN + 1)));
    }

    #[test]
    fn rate_limit_errors_then_closes_on_abuse() {
        let t0 = Instant::now();
        let mut s = Session::new(identity(None, ""), &limits(), t0);
        assert!(s.admit_frame(t0).is_ok());
        assert!(s.admit_frame(t0).is_ok());
        for _ in 0..3 {
            assert!(matches!(
                s.admit_frame(t0),
                Err(Refusal::Error(ErrorCode::RateLimited, _))
            ));
        }
        assert_eq!(
            s.admit_frame(t0),
            Err(Refusal::Close(CloseCode::PolicyViolation))
        );
        // After a pause the bucket refills and strikes reset.
        let later = t0 + Duration::from_millis(500);
        assert!(s.admit_frame(later).is_ok());
        assert!(matches!(s.admit_frame(later), Ok(())));
    }

    #[test]
    fn permissions_and_tenants() {
        let s = Session::new(
            identity(Some(vec!["campaign:7:*"]), "t1"),
            &limits(),
            Instant::now(),
        );
        assert_eq!(
            s.command(ClientOp::Join {
                room: "campaign:7:map".into(),
                since: None,
            }),
            Ok(Command::Join {
                room: "t1/campaign:7:map".into(),
                since: None,
            })
        );
        assert!(matches!(
            s.command(ClientOp::Join {
                room: "campaign:8:map".into(),
                since: None,
            }),
            Err(Refusal::Error(ErrorCode::Forbidden, _))
        ));
        assert!(matches!(
            s.command(ClientOp::Join {
                room: "bad room".into(),
                since: None,
            }),
            Err(Refusal::Error(ErrorCode::InvalidRoom, _))
        ));
        assert_eq!(
            s.command(ClientOp::Send {
                to: "bob".into(),
                data: Data::null()
            }),
            Ok(Command::Send {
                to: "t1/bob".into(),
                data: Data::null()
            })
        );
    }
}
