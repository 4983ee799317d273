//! The Lua scripts: every multi-step change that must be atomic in Redis.
//! They run with EVALSHA and are reloaded after a `NOSCRIPT` (a restarted
//! Redis has an empty script cache). Times come from Redis `TIME`, so
//! instance clocks never need to agree.
//!
//! Scripts that read a name built at run time (`heartbeat:<id>` in
//! `FIND_DEAD`, instance channels in `SEND`) assume one Redis, not Redis
//! Cluster; the key list documents which keys each one touches.

use fred::prelude::{Client, Error as RedisError};
use fred::types::scripts::Script;
use fred::types::{FromValue, MultipleKeys};

/// `now` in milliseconds from the Redis clock.
const NOW: &str = "local t = redis.call('TIME')\n\
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// KEYS: heartbeat, instances. ARGV: id, stats, ttl_ms.
/// Returns 1 when the heartbeat key existed before (the registration held).
const HEARTBEAT: &str = "
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
return existed
";

/// KEYS: instances. ARGV: ttl_ms, heartbeat key prefix, own id.
/// Instances whose score is older than the TTL and whose heartbeat key is gone.
const FIND_DEAD: &str = "
local cands = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])), 'LIMIT', 0, 32)
local dead = {}
for _, id in ipairs(cands) do
  if id ~= ARGV[3] and redis.call('EXISTS', ARGV[2] .. id) == 0 then
    table.insert(dead, id)
  end
end
return dead
";

/// KEYS: routes, offline, offline_seq. ARGV: own id, local ('1' when the
/// message was delivered on the skipped instances already), instance
/// channel prefix, instance payload, message json, max queue length, queue
/// ttl_ms, sequence ttl_ms, a second instance to skip ('' for none: the
/// sender, when another instance routes a message again).
/// Publishes to every other instance holding the user; queues when none
/// received it and it was not delivered locally. Returns {receivers,
/// queued, dropped, instance...}: the instances that received it (what
/// the sender's route cache keeps).
const SEND: &str = "
local got = 0
local out = {0, 0, 0}
for _, inst in ipairs(redis.call('HKEYS', KEYS[1])) do
  if inst ~= ARGV[1] and inst ~= ARGV[9] then
    local n = redis.call('PUBLISH', ARGV[3] .. inst, ARGV[4])
    if n > 0 then
      got = got + n
      table.insert(out, inst)
    end
  end
end
out[1] = got
if got > 0 or ARGV[2] == '1' then return out end
local max = tonumber(ARGV[6])
if max <= 0 then return {0, 0, 1} end
local seq = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[8])
redis.call('RPUSH', KEYS[2], seq .. '|' .. now .. '|' .. ARGV[5])
local len = redis.call('LLEN', KEYS[2])
local dropped = 0
if len > max then
  dropped = len - max
  redis.call('LTRIM', KEYS[2], dropped, -1)
end
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return {0, 1, dropped}
";

/// KEYS: routes, instance_users, offline. ARGV: own id, epoch, user,
/// ttl_ms, global channel, route-added payload.
/// Registers the route (keeping the newest epoch) and returns the backlog
/// after dropping expired entries: {expired, entry...}. A route added
/// beside routes of other instances is announced on the global channel:
/// senders' route caches that know only the others must forget the user.
const ATTACH: &str = "
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if not cur or cur < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
if not cur and redis.call('HLEN', KEYS[1]) > 1 then
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
redis.call('SADD', KEYS[2], ARGV[3])
local ttl = tonumber(ARGV[4])
local expired = 0
while true do
  local head = redis.call('LINDEX', KEYS[3], 0)
  if not head then break end
  local ts = tonumber(string.match(head, '^%d+|(%d+)|'))
  if ts and now - ts <= ttl then break end
  redis.call('LPOP', KEYS[3])
  expired = expired + 1
end
local out = redis.call('LRANGE', KEYS[3], 0, -1)
table.insert(out, 1, expired)
return out
";

/// KEYS: routes, instance_users. ARGV: own id, epoch, user.
/// Removes the route unless a newer attach (higher epoch) replaced it.
const ROUTE_DROP: &str = "
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if cur and cur > tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[3])
return 1
";

/// KEYS: offline. ARGV: upto. Removes entries up to sequence `upto` from
/// the head; returns how many.
const OFFLINE_ACK: &str = "
local upto = tonumber(ARGV[1])
local n = 0
while true do
  local head = redis.call('LINDEX', KEYS[1], 0)
  if not head then break end
  local seq = tonumber(string.match(head, '^(%d+)|'))
  if seq and seq > upto then break end
  redis.call('LPOP', KEYS[1])
  n = n + 1
end
return n
";

/// KEYS: presence, instance_room, instance_rooms. ARGV: user, room, want ('1'/'0').
/// Sets whether this instance holds the user in the room. Returns {count,
/// flip}: the room's distinct users afterwards, and +1/-1 when the user's
/// cluster-wide presence appeared/vanished.
const PRESENCE_SET: &str = "
local flip = 0
if ARGV[3] == '1' then
  if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
    if redis.call('HINCRBY', KEYS[1], ARGV[1], 1) == 1 then flip = 1 end
  end
  redis.call('SADD', KEYS[3], ARGV[2])
else
  if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
    if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
      redis.call('HDEL', KEYS[1], ARGV[1])
      flip = -1
    end
  end
  if redis.call('SCARD', KEYS[2]) == 0 then
    redis.call('SREM', KEYS[3], ARGV[2])
  end
end
return {redis.call('HLEN', KEYS[1]), flip}
";

/// KEYS: presence, instance_room(dead), instance_rooms(dead), heartbeat(dead).
/// ARGV: room. Removes the dead instance's record of the room. Returns
/// {count, user...} with the users whose cluster-wide presence vanished,
/// or {-1} when the instance is alive again.
const REAP_ROOM: &str = "
if redis.call('EXISTS', KEYS[4]) == 1 then return {-1} end
local left = {}
for _, u in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('HINCRBY', KEYS[1], u, -1) <= 0 then
    redis.call('HDEL', KEYS[1], u)
    table.insert(left, u)
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
local out = {redis.call('HLEN', KEYS[1])}
for _, u in ipairs(left) do table.insert(out, u) end
return out
";

/// KEYS: heartbeat(dead), instance_users(dead), routes(user)... ARGV: dead id, users...
/// Removes the dead instance's routes for these users; -1 if it is alive again.
const REAP_ROUTES: &str = "
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
for i = 3, #KEYS do
  redis.call('HDEL', KEYS[i], ARGV[1])
  redis.call('SREM', KEYS[2], ARGV[i - 1])
end
return #KEYS - 2
";

/// KEYS: heartbeat(dead), instances, instance_users(dead), instance_rooms(dead),
/// lock, reaped(dead). ARGV: dead id, lock owner, marker ttl_ms.
/// Deregisters the instance once nothing of it is left, leaving a marker
/// that tells it, should it come back, that its users were announced as
/// gone. Returns 1 done, 0 work left, -1 alive again.
const REAP_FINISH: &str = "
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('SCARD', KEYS[3]) > 0 or redis.call('SCARD', KEYS[4]) > 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[6], '1', 'PX', ARGV[3])
if redis.call('GET', KEYS[5]) == ARGV[2] then redis.call('DEL', KEYS[5]) end
return 1
";

/// One script, run by hash with a reload on `NOSCRIPT`.
pub struct Lua(Script);

impl Lua {
    fn new(body: &str, uses_now: bool) -> Self {
        let text = if uses_now {
            format!("{NOW}{body}")
        } else {
            body.to_owned()
        };
        Lua(Script::from_lua(text))
    }

    pub async fn run<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, RedisError> {
        let keys: MultipleKeys = keys.into();
        self.0.evalsha_with_reload(client, keys, args).await
    }

    pub async fn load(&self, client: &Client) -> Result<(), RedisError> {
        self.0.load(client).await
    }
}

pub struct Scripts {
    pub heartbeat: Lua,
    pub find_dead: Lua,
    pub send: Lua,
    pub attach: Lua,
    pub route_drop: Lua,
    pub offline_ack: Lua,
    pub presence_set: Lua,
    pub reap_room: Lua,
    pub reap_routes: Lua,
    pub reap_finish: Lua,
}

impl Scripts {
    pub fn new() -> Self {
        Scripts {
            heartbeat: Lua::new(HEARTBEAT, true),
            find_dead: Lua::new(FIND_DEAD, true),
            send: Lua::new(SEND, true),
            attach: Lua::new(ATTACH, true),
            route_drop: Lua::new(ROUTE_DROP, false),
            offline_ack: Lua::new(OFFLINE_ACK, false),
            presence_set: Lua::new(PRESENCE_SET, false),
            reap_room: Lua::new(REAP_ROOM, false),
            reap_routes: Lua::new(REAP_ROUTES, false),
            reap_finish: Lua::new(REAP_FINISH, false),
        }
    }

    /// Loads every script (after a connect: Redis may have restarted empty).
    pub async fn load_all(&self, client: &Client) -> Result<(), RedisError> {
        for s in [
            &self.heartbeat,
            &self.find_dead,
            &self.send,
            &self.attach,
            &self.route_drop,
            &self.offline_ack,
            &self.presence_set,
            &self.reap_room,
            &self.reap_routes,
            &self.reap_finish,
        ] {
            s.load(client).await?;
        }
        Ok(())
    }
}
