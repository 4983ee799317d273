//! The server API's Redis side: idempotency records (`SET NX PX`, so a
//! retry that reaches another instance finds the first answer) and the
//! `roomcast_v1` function library, the contract for services that emit by
//! talking to Redis instead of HTTP (proto/SERVER-API.md).
//!
//! Every instance loads the library with `FUNCTION LOAD REPLACE` on each
//! (re)sync, so a restarted Redis gets it back, and writes the settings the
//! functions need (`P:api-settings`). The functions stamp one `ts` (Redis
//! `TIME`) and one `mid` and publish in the cluster wire format
//! ([`super::wire`]) with origin `$fn`, which is no instance's id, so every
//! instance delivers them. `roomcast_v1_send` routes and queues exactly as
//! the `SEND` script does.

use std::time::Duration;

use fred::interfaces::FunctionInterface;
use fred::prelude::{Error as RedisError, Expiration, HashesInterface, KeysInterface};
use fred::types::SetOptions;

use super::{Shared, metric, unavailable};
use crate::bus::BusError;
use crate::bus::idempotency::{IdemClaim, done_record, judge, pending_record};

/// Largest `data` the functions accept, in bytes (the default
/// `--max-message-bytes`).
pub const FUNCTION_MAX_DATA_BYTES: usize = 65_536;

/// The `roomcast_v1` library (its name is also its contract version). ARGV of every function starts with the key
/// prefix and the tenant ("" for the default tenant).
pub const LIBRARY_CODE: &str = r#"#!lua name=roomcast_v1

local MAX_DATA_BYTES = 65536
local MAX_DEPTH = 32

local function clock()
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  return ms, t
end

local function name_ok(s, max)
  return #s >= 1 and #s <= max and string.find(s, '^[A-Za-z0-9:_.%-]+$') ~= nil
end

local function depth(v, d)
  if type(v) ~= 'table' then return d end
  if d > MAX_DEPTH then return d end
  local deepest = d + 1
  for _, x in pairs(v) do
    local e = depth(x, d + 1)
    if e > deepest then deepest = e end
  end
  return deepest
end

-- Checks prefix, tenant and data; returns the settings hash's values.
local function common(args, want)
  if #args ~= want then
    return redis.error_reply('ERR roomcast: expected ' .. want .. ' arguments')
  end
  local prefix, tenant, data = args[1], args[2], args[want]
  if #prefix == 0 then return redis.error_reply('ERR roomcast: empty prefix') end
  if tenant ~= '' and tenant ~= '*' and not name_ok(tenant, 128) then
    return redis.error_reply('ERR roomcast: invalid tenant')
  end
  if #data > MAX_DATA_BYTES then
    return redis.error_reply('ERR roomcast: data larger than ' .. MAX_DATA_BYTES .. ' bytes')
  end
  local ok, decoded = pcall(cjson.decode, data)
  if not ok then return redis.error_reply('ERR roomcast: data is not JSON') end
  if depth(decoded, 0) > MAX_DEPTH then
    return redis.error_reply('ERR roomcast: data nested deeper than ' .. MAX_DEPTH .. ' levels')
  end
  local s = redis.call('HMGET', prefix .. ':api-settings', 'offline_max', 'offline_ttl_ms')
  if not s[1] then
    return redis.error_reply('ERR roomcast: no instance runs under prefix ' .. prefix)
  end
  return nil, tonumber(s[1]), tonumber(s[2])
end

local function stamp(prefix)
  local now, t = clock()
  local seq = redis.call('INCR', prefix .. ':fn-mid-seq')
  return now, string.format('fn%s%06d-%x', t[1], tonumber(t[2]), seq)
end

-- FCALL roomcast_v1_publish 0 <prefix> <tenant> <room> <data>
-- Returns {mid, ts}.
local function publish(keys, args)
  local err = common(args, 4)
  if err then return err end
  local prefix, tenant, room, data = args[1], args[2], args[3], args[4]
  if tenant == '*' then return redis.error_reply('ERR roomcast: invalid tenant') end
  if not name_ok(room, 128) then return redis.error_reply('ERR roomcast: invalid room') end
  local now, mid = stamp(prefix)
  redis.call('PUBLISH', prefix .. ':room:' .. tenant .. '/' .. room,
    '{"origin":"$fn","type":"message","from":"$server","data":' .. data ..
    ',"ts":' .. string.format('%d', now) .. ',"mid":"' .. mid .. '"}')
  return {mid, now}
end

-- FCALL roomcast_v1_send 0 <prefix> <tenant> <user> <data>
-- Returns {"delivered"|"queued", mid, ts}.
local function send(keys, args)
  local err, max, ttl = common(args, 4)
  if err then return err end
  local prefix, tenant, user, data = args[1], args[2], args[3], args[4]
  if tenant == '*' then return redis.error_reply('ERR roomcast: invalid tenant') end
  if #user < 1 or #user > 256 or string.sub(user, 1, 1) == '$' then
    return redis.error_reply('ERR roomcast: invalid user')
  end
  local scoped = tenant .. '/' .. user
  local now, mid = stamp(prefix)
  local msg = '{"from":"$server","data":' .. data .. ',"ts":' ..
    string.format('%d', now) .. ',"mid":"' .. mid .. '"}'
  local payload = '{"origin":"$fn","type":"direct","user":' .. cjson.encode(scoped) ..
    ',"msg":' .. msg .. '}'
  local got = 0
  for _, inst in ipairs(redis.call('HKEYS', prefix .. ':routes:{' .. scoped .. '}')) do
    got = got + redis.call('PUBLISH', prefix .. ':instance:' .. inst, payload)
  end
  if got > 0 then return {'delivered', mid, now} end
  if max <= 0 then return {'dropped', mid, now} end
  local qkey = prefix .. ':offline:{' .. scoped .. '}'
  local skey = prefix .. ':offline-seq:{' .. scoped .. '}'
  local seq = redis.call('INCR', skey)
  redis.call('PEXPIRE', skey, ttl * 2 + 3600000)
  redis.call('RPUSH', qkey, seq .. '|' .. string.format('%d', now) .. '|' .. msg)
  local len = redis.call('LLEN', qkey)
  if len > max then redis.call('LTRIM', qkey, len - max, -1) end
  redis.call('PEXPIRE', qkey, ttl)
  return {'queued', mid, now}
end

-- FCALL roomcast_v1_broadcast 0 <prefix> <tenant|*> <data>
-- Returns {mid, ts}.
local function broadcast(keys, args)
  local err = common(args, 3)
  if err then return err end
  local prefix, tenant, data = args[1], args[2], args[3]
  local now, mid = stamp(prefix)
  local audience = ''
  if tenant ~= '*' then audience = ',"tenant":' .. cjson.encode(tenant) end
  redis.call('PUBLISH', prefix .. ':global',
    '{"origin":"$fn","type":"broadcast"' .. audience .. ',"msg":{"from":"$server","data":' ..
    data .. ',"ts":' .. string.format('%d', now) .. ',"mid":"' .. mid .. '"}}')
  return {mid, now}
end

redis.register_function('roomcast_v1_publish', publish)
redis.register_function('roomcast_v1_send', send)
redis.register_function('roomcast_v1_broadcast', broadcast)
"#;

impl Shared {
    /// Loads the function library and writes the settings its functions
    /// read (each resync: Redis may have restarted empty).
    pub(super) async fn load_api_library(&self) -> Result<(), RedisError> {
        let _: String = self.client.function_load(true, LIBRARY_CODE).await?;
        let ttl = self.offline_cfg.ttl.as_millis() as u64;
        let _: i64 = self
            .client
            .hset(
                self.keys.api_settings(),
                [
                    ("offline_max", self.offline_cfg.max_per_user.to_string()),
                    ("offline_ttl_ms", ttl.max(1).to_string()),
                ],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn idem_claim(
        &self,
        key: &str,
        fingerprint: &str,
        window: Duration,
    ) -> Result<IdemClaim, BusError> {
        if !self.up() {
            metric::skipped("idempotency");
            return Err(BusError::Unavailable("redis unreachable".into()));
        }
        let name = self.keys.idempotency(key);
        let px = Expiration::PX(window.as_millis().max(1) as i64);
        // Twice: the record may expire between the SET and the GET.
        for _ in 0..2 {
            let set: Option<String> = self
                .client
                .set(
                    &name,
                    pending_record(fingerprint),
                    Some(px.clone()),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(unavailable)?;
            if set.is_some() {
                return Ok(IdemClaim::Fresh);
            }
            let found: Option<String> = self.client.get(&name).await.map_err(unavailable)?;
            if let Some(record) = found {
                return Ok(judge(&record, fingerprint));
            }
        }
        Err(BusError::Unavailable("idempotency record flapping".into()))
    }

    pub(super) async fn idem_finish(
        &self,
        key: &str,
        fingerprint: &str,
        answer: &str,
        window: Duration,
    ) -> Result<(), BusError> {
        let px = Expiration::PX(window.as_millis().max(1) as i64);
        let _: Option<String> = self
            .client
            .set(
                self.keys.idempotency(key),
                done_record(fingerprint, answer),
                Some(px),
                None,
                false,
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub(super) async fn idem_release(&self, key: &str) {
        let removed: Result<i64, _> = self.client.del(self.keys.idempotency(key)).await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "cannot release an idempotency key; it expires with its window");
        }
    }
}
