//! Admin commands, shared by the WebSocket `admin` op and the HTTP API:
//! parsed from a name and JSON arguments, checked against the issuer's
//! token (role `admin`; a tenant-scoped admin acts on its tenant only),
//! run here or sent through the bus to the instances concerned, and
//! logged with who issued them and what they did (never the token).
//!
//! | cmd | args | result |
//! |---|---|---|
//! | `instances` | | `{"instances":[..]}` |
//! | `rooms` | `cursor?`, `limit?`, `tenant?` | `{"rooms":[{"tenant","room","members"}],"cursor":".."}` (`"0"`: done) |
//! | `room` | `room`, `tenant?` | `{"tenant","room","users":[..],"count"}` |
//! | `kick_user` | `user`, `tenant?`, `reason?` | `{"user","kicked_here","instances_told"}` |
//! | `kick_conn` | `conn`, `reason?` | `{"conn","instance"}` |
//! | `drain` / `undrain` | `instance?` (default: this one) | `{"instance","draining"}` |
//! | `broadcast` | `data`, `tenant?` | `{"mid","tenant","local"}`: a `broadcast` event from `$admin` to every connection (of the tenant) |
//! | `stats` | | the last `stats` aggregate, or this instance's figures |

use serde_json::{Value, json};

use super::Control;
use crate::auth::Identity;
use crate::bus::Audience;
use crate::node::Node;
use crate::protocol::Data;
use crate::protocol::ErrorCode;
use crate::registry::scoped;
use crate::session::{MAX_DATA_DEPTH, MAX_USER_LEN, valid_room_name};

/// Most rooms one `rooms` page lists.
pub const MAX_PAGE: usize = 1000;
/// Rooms per page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// Longest kick reason kept (a close frame's reason holds 123 bytes).
const MAX_REASON: usize = 123;

/// A refused or failed admin command.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminError {
    pub code: ErrorCode,
    pub text: String,
}

impl AdminError {
    fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        AdminError {
            code,
            text: text.into(),
        }
    }

    fn bad(text: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, text)
    }

    fn forbidden(text: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, text)
    }

    fn not_found(text: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, text)
    }
}

impl From<crate::bus::BusError> for AdminError {
    fn from(e: crate::bus::BusError) -> Self {
        AdminError::new(ErrorCode::Unavailable, e.to_string())
    }
}

/// A string argument, if present (and a string).
fn opt_str<'a>(args: &'a Value, name: &str) -> Result<Option<&'a str>, AdminError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(AdminError::bad(format!("`{name}` must be a string"))),
    }
}

fn need_str<'a>(args: &'a Value, name: &str) -> Result<&'a str, AdminError> {
    opt_str(args, name)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AdminError::bad(format!("needs `{name}`")))
}

/// The tenant a command acts on: the issuer's own when scoped (another
/// one is forbidden), else the `tenant` argument (default tenant if absent).
fn tenant_of<'a>(who: &'a Identity, args: &'a Value) -> Result<&'a str, AdminError> {
    let asked = opt_str(args, "tenant")?;
    if who.tenant.is_empty() {
        let t = asked.unwrap_or("");
        if !t.is_empty() && !valid_room_name(t) {
            return Err(AdminError::bad("invalid tenant"));
        }
        return Ok(t);
    }
    match asked {
        Some(t) if t != &*who.tenant => Err(AdminError::forbidden(
            "a tenant's admin acts on its own tenant only",
        )),
        _ => Ok(&who.tenant),
    }
}

/// Commands on instances need an admin of every tenant.
fn need_global(who: &Identity) -> Result<(), AdminError> {
    if who.tenant.is_empty() {
        Ok(())
    } else {
        Err(AdminError::forbidden(
            "instance commands need an admin token without a tenant",
        ))
    }
}

fn reason_of(args: &Value) -> Result<String, AdminError> {
    let reason = opt_str(args, "reason")?.unwrap_or("kicked");
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Ok(reason[..end].to_owned())
}

/// Runs one admin command for `who`; `via` says where it came from
/// (`ws` or `http`) for the log.
pub async fn execute(
    node: &Node,
    who: &Identity,
    cmd: &str,
    args: Value,
    via: &'static str,
) -> Result<Value, AdminError> {
    if !who.is_admin() {
        return Err(AdminError::forbidden("admin commands need role admin"));
    }
    if !(args.is_object() || args.is_null()) {
        return Err(AdminError::bad("arguments (`data`) must be an object"));
    }
    let result = run(node, who, cmd, &args).await;
    match &result {
        Ok(r) => tracing::info!(
            admin = %who.user, tenant = %who.tenant, via, cmd, args = %args, result = %r,
            "admin command"
        ),
        Err(e) => tracing::info!(
            admin = %who.user, tenant = %who.tenant, via, cmd, args = %args,
            code = e.code.as_str(), error = %e.text, "admin command refused"
        ),
    }
    result
}

async fn run(node: &Node, who: &Identity, cmd: &str, args: &Value) -> Result<Value, AdminError> {
    match cmd {
        "instances" => {
            need_global(who)?;
            instances(node).await
        }
        "rooms" => rooms(node, who, args).await,
        "room" => room(node, who, args).await,
        "kick_user" => kick_user(node, who, args).await,
        "kick_conn" => kick_conn(node, who, args).await,
        "drain" => {
            need_global(who)?;
            drain(node, opt_str(args, "instance")?, true).await
        }
        "undrain" => {
            need_global(who)?;
            drain(node, opt_str(args, "instance")?, false).await
        }
        "broadcast" => broadcast(node, who, args).await,
        "stats" => {
            need_global(who)?;
            Ok(node.admin.latest().unwrap_or_else(|| {
                let mut sampler = super::stats::Sampler::default();
                let mine = super::stats::gather(node, &mut sampler, node.config.admin.top_rooms);
                super::stats::aggregate(
                    vec![mine],
                    node.config.admin.top_rooms,
                    node.config.admin.stats_interval,
                )
            }))
        }
        other => {
            let shown = &other[..other.floor_char_boundary(32)];
            Err(AdminError::bad(format!("unknown admin command `{shown}`")))
        }
    }
}

/// This instance's own record, in the shape of a heartbeat's.
fn own_record(node: &Node) -> Value {
    json!({
        "id": node.instance_id(),
        "address": node.admin.address.get().cloned().unwrap_or_default(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": node.started.elapsed().as_secs(),
        "connections": node.registry.conn_count(),
        "rooms": node.registry.room_count(),
        "draining": !node.is_accepting(),
    })
}

async fn instances(node: &Node) -> Result<Value, AdminError> {
    let mut list = vec![own_record(node)];
    if let Some(beats) = node.bus.heartbeats().await {
        for text in beats? {
            let Ok(mut v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let id = v["instance"].as_str().unwrap_or_default().to_owned();
            if id == node.instance_id() {
                continue;
            }
            if let Some(o) = v.as_object_mut() {
                o.remove("instance");
                o.insert("id".into(), id.into());
            }
            list.push(v);
        }
    }
    // Richer figures (address, draining) where an admin watches.
    if let Some(latest) = node.admin.latest() {
        for rec in &mut list {
            if let Some(live) = latest["instances"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["id"] == rec["id"]))
            {
                for field in ["address", "draining", "connections", "rooms"] {
                    if !live[field].is_null() {
                        rec[field] = live[field].clone();
                    }
                }
            }
        }
    }
    list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Ok(json!({ "instances": list }))
}

async fn rooms(node: &Node, who: &Identity, args: &Value) -> Result<Value, AdminError> {
    let limit = match args.get("limit") {
        None | Some(Value::Null) => DEFAULT_PAGE,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_PAGE as u64).contains(&n) => n as usize,
            _ => {
                return Err(AdminError::bad(format!("`limit` must be 1 to {MAX_PAGE}")));
            }
        },
    };
    let cursor = opt_str(args, "cursor")?.unwrap_or("0");
    // A tenant-scoped admin lists its own tenant; a global one every
    // tenant, or one when asked.
    let prefix = match (who.tenant.is_empty(), opt_str(args, "tenant")?) {
        (true, None) => String::new(),
        _ => format!("{}/", tenant_of(who, args)?),
    };
    if matches!(node.bus, crate::bus::Bus::Redis(_)) && cursor.parse::<u64>().is_err() {
        return Err(AdminError::bad(
            "`cursor` must be one a `rooms` answer gave",
        ));
    }
    let (rooms, next) = match node.bus.room_page(&prefix, cursor, limit).await {
        Some(page) => page?,
        None => local_page(node, &prefix, cursor, limit),
    };
    let rooms: Vec<Value> = rooms
        .into_iter()
        .map(|(key, n)| {
            let (tenant, room) = key.split_once('/').unwrap_or(("", &key));
            json!({"tenant": tenant, "room": room, "members": n})
        })
        .collect();
    Ok(json!({ "rooms": rooms, "cursor": next }))
}

/// One page of this instance's rooms in name order after `cursor` (the
/// last scoped name of the previous page; `"0"` to start, and as the
/// answer when done).
fn local_page(
    node: &Node,
    prefix: &str,
    cursor: &str,
    limit: usize,
) -> (Vec<(String, u64)>, String) {
    let mut all: Vec<(String, u64)> = node
        .registry
        .room_user_counts()
        .into_iter()
        .filter(|(k, _)| k.starts_with(prefix) && (cursor == "0" || &**k > cursor))
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    all.sort();
    let more = all.len() > limit;
    all.truncate(limit);
    let next = match (more, all.last()) {
        (true, Some((k, _))) => k.clone(),
        _ => "0".to_owned(),
    };
    (all, next)
}

async fn room(node: &Node, who: &Identity, args: &Value) -> Result<Value, AdminError> {
    let name = need_str(args, "room")?;
    if !valid_room_name(name) {
        return Err(AdminError::new(ErrorCode::InvalidRoom, "invalid room name"));
    }
    let tenant = tenant_of(who, args)?;
    let users = node.bus.presence(&scoped(tenant, name)).await?;
    if users.is_empty() {
        return Err(AdminError::not_found("nobody is in this room"));
    }
    Ok(json!({"tenant": tenant, "room": name, "count": users.len(), "users": users}))
}

async fn kick_user(node: &Node, who: &Identity, args: &Value) -> Result<Value, AdminError> {
    let user = need_str(args, "user")?;
    if user.len() > MAX_USER_LEN {
        return Err(AdminError::bad(format!(
            "`user` is 1 to {MAX_USER_LEN} bytes"
        )));
    }
    let tenant = tenant_of(who, args)?;
    let reason = reason_of(args)?;
    let key = scoped(tenant, user);
    let here = kick_local_user(node, &key, &reason);
    let told = node
        .bus
        .admin_publish(
            None,
            &Control::KickUser {
                user: key.to_string(),
                reason,
            },
        )
        .await?;
    // Every instance (this one too) hears the global channel.
    let others = told.saturating_sub(1);
    Ok(json!({"user": user, "tenant": tenant, "kicked_here": here, "instances_told": others}))
}

async fn kick_conn(node: &Node, who: &Identity, args: &Value) -> Result<Value, AdminError> {
    let conn = need_str(args, "conn")?;
    let (instance, n) = conn
        .rsplit_once(':')
        .and_then(|(i, n)| Some((i, n.parse::<u64>().ok()?)))
        .ok_or_else(|| AdminError::bad("`conn` is a connection id as `welcome` gives it"))?;
    let reason = reason_of(args)?;
    let tenant = (!who.tenant.is_empty()).then(|| who.tenant.to_string());
    if instance == node.instance_id() {
        if !kick_local_conn(node, n, tenant.as_deref(), &reason) {
            return Err(AdminError::not_found("no such connection"));
        }
    } else {
        let control = Control::KickConn {
            conn: n,
            tenant,
            reason,
        };
        if !node.bus.instance_live(instance).await?
            || node.bus.admin_publish(Some(instance), &control).await? == 0
        {
            return Err(AdminError::not_found("no such instance"));
        }
    }
    Ok(json!({"conn": conn, "instance": instance}))
}

async fn drain(node: &Node, instance: Option<&str>, on: bool) -> Result<Value, AdminError> {
    let id = instance.unwrap_or(node.instance_id());
    if id == node.instance_id() {
        let changed = if on {
            super::drain(node)
        } else {
            super::undrain(node)
        };
        return Ok(json!({"instance": id, "draining": on, "changed": changed}));
    }
    let control = if on { Control::Drain } else { Control::Undrain };
    if !node.bus.instance_live(id).await? || node.bus.admin_publish(Some(id), &control).await? == 0
    {
        return Err(AdminError::not_found("no such instance"));
    }
    Ok(json!({"instance": id, "draining": on}))
}

async fn broadcast(node: &Node, who: &Identity, args: &Value) -> Result<Value, AdminError> {
    let data = match args.get("data") {
        None => return Err(AdminError::bad("needs `data`")),
        Some(d) => Data::from(d.clone()),
    };
    if data.depth() > MAX_DATA_DEPTH {
        return Err(AdminError::bad(format!(
            "data nested deeper than {MAX_DATA_DEPTH} levels"
        )));
    }
    // A global admin reaches everyone unless it names a tenant.
    let audience = match (who.tenant.is_empty(), opt_str(args, "tenant")?) {
        (true, None) => Audience::All,
        _ => Audience::Tenant(tenant_of(who, args)?.into()),
    };
    let tenant = match &audience {
        Audience::All => Value::Null,
        Audience::Tenant(t) => json!(&**t),
    };
    let sent = node
        .broadcast(audience, "$admin", data)
        .await
        .map_err(|e| AdminError::new(e.code, e.text))?;
    Ok(json!({"mid": sent.mid, "tenant": tenant, "local": sent.local}))
}

/// Kicks every local connection of a scoped user; how many.
fn kick_local_user(node: &Node, user: &str, reason: &str) -> usize {
    let conns = node.registry.user_conns(user);
    for conn in &conns {
        node.admin.kick(conn, reason);
    }
    conns.len()
}

/// Kicks one local connection, if its user is in `tenant` (when given).
fn kick_local_conn(node: &Node, id: u64, tenant: Option<&str>, reason: &str) -> bool {
    let Some(conn) = node.registry.conn(id) else {
        return false;
    };
    if let Some(t) = tenant
        && conn.user.split_once('/').map(|(ct, _)| ct) != Some(t)
    {
        return false;
    }
    node.admin.kick(&conn, reason);
    true
}

/// Runs a command another instance sent here.
pub fn apply_local(node: &Node, control: Control) {
    match control {
        Control::KickUser { user, reason } => {
            let n = kick_local_user(node, &user, &reason);
            if n > 0 {
                tracing::info!(user = %user, kicked = n, "admin kick from another instance");
            }
        }
        Control::KickConn {
            conn,
            tenant,
            reason,
        } => {
            let done = kick_local_conn(node, conn, tenant.as_deref(), &reason);
            tracing::info!(conn, done, "admin connection kick from another instance");
        }
        Control::Drain => {
            super::drain(node);
        }
        Control::Undrain => {
            super::undrain(node);
        }
    }
}
