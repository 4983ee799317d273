//! What the server API does: request bodies (unknown fields refused),
//! their validation into [`Action`]s, and running an action on the node.
//! Validation never touches the node, so a batch is checked whole before
//! anything of it is delivered.

use std::sync::Arc;

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::auth::{Caller, Scope};
use super::error::ApiError;
use crate::bus::{Audience, SendOutcome};
use crate::node::{Node, OpError};
use crate::protocol::Data;
use crate::registry::scoped;
use crate::session::{MAX_DATA_DEPTH, MAX_ROOM_LEN, MAX_USER_LEN, valid_room_name};

/// The sender every server API message carries.
pub const FROM: &str = "$server";

/// `POST /api/publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishIn {
    pub room: String,
    pub data: Data,
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `POST /api/send`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendIn {
    pub user: String,
    pub data: Data,
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `POST /api/broadcast`: exactly one of `tenant` and `"all": true`
/// (a tenant-scoped token may leave both out: its own tenant).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastIn {
    pub data: Data,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub all: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Publish,
    Send,
    Broadcast,
}

/// One item of `POST /api/batch`: `op` says which fields apply. (A flat
/// struct, not a tagged enum: serde buffers tagged enums, which would hide
/// `data`'s JSON text.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemIn {
    pub op: Op,
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub all: Option<bool>,
    pub data: Data,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    pub items: Vec<ItemIn>,
}

/// A validated request, with tenant-scoped keys.
#[derive(Debug, Clone)]
pub enum Action {
    Publish { room: Arc<str>, data: Data },
    Send { user: Arc<str>, data: Data },
    Broadcast { audience: Audience, data: Data },
}

/// What an action addresses: actions on one lane keep their order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    Room(Arc<str>),
    User(Arc<str>),
    Broadcast,
}

impl Action {
    pub fn lane(&self) -> Lane {
        match self {
            Action::Publish { room, .. } => Lane::Room(room.clone()),
            Action::Send { user, .. } => Lane::User(user.clone()),
            Action::Broadcast { .. } => Lane::Broadcast,
        }
    }
}

/// What an action did, as answered (alone, or as one batch result).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Done {
    /// `published`, `delivered`, `queued` or `broadcast`.
    pub status: &'static str,
    pub mid: String,
    pub ts: u64,
}

/// Limits the validation applies.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub max_data_bytes: usize,
}

fn check_data(data: &Data, rules: Rules) -> Result<(), ApiError> {
    if data.json().len() > rules.max_data_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "data_too_large",
            format!("data is larger than {} bytes", rules.max_data_bytes),
        ));
    }
    if data.depth() > MAX_DATA_DEPTH {
        return Err(ApiError::bad(
            "invalid_body",
            format!("data nested deeper than {MAX_DATA_DEPTH} levels"),
        ));
    }
    Ok(())
}

pub fn room_key(caller: &Caller, tenant: Option<&str>, room: &str) -> Result<Arc<str>, ApiError> {
    if !valid_room_name(room) {
        return Err(ApiError::bad(
            "invalid_room",
            format!("room names are 1 to {MAX_ROOM_LEN} bytes of A-Z a-z 0-9 : _ - ."),
        ));
    }
    Ok(scoped(&caller.tenant(tenant)?, room))
}

fn user_key(caller: &Caller, tenant: Option<&str>, user: &str) -> Result<Arc<str>, ApiError> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.starts_with('$') {
        return Err(ApiError::bad(
            "invalid_user",
            format!("user ids are 1 to {MAX_USER_LEN} bytes and do not start with $"),
        ));
    }
    Ok(scoped(&caller.tenant(tenant)?, user))
}

fn audience(
    caller: &Caller,
    tenant: Option<&str>,
    all: Option<bool>,
) -> Result<Audience, ApiError> {
    match (tenant, all.unwrap_or(false)) {
        (Some(_), true) => Err(ApiError::bad(
            "invalid_audience",
            "give either tenant or \"all\": true, not both",
        )),
        (None, true) => match caller.scope {
            Scope::Any => Ok(Audience::All),
            Scope::Tenant(_) => Err(ApiError::forbidden(
                "tenant_forbidden",
                "a tenant-scoped token cannot broadcast to every tenant",
            )),
        },
        (None, false) if caller.scope == Scope::Any => Err(ApiError::bad(
            "invalid_audience",
            "name the tenant (\"\" for the default one) or say \"all\": true",
        )),
        (tenant, false) => Ok(Audience::Tenant(caller.tenant(tenant)?)),
    }
}

fn unexpected(field: &str, op: &str) -> ApiError {
    ApiError::bad("invalid_body", format!("`{field}` does not apply to {op}"))
}

pub fn publish(caller: &Caller, r: PublishIn, rules: Rules) -> Result<Action, ApiError> {
    check_data(&r.data, rules)?;
    Ok(Action::Publish {
        room: room_key(caller, r.tenant.as_deref(), &r.room)?,
        data: r.data,
    })
}

pub fn send(caller: &Caller, r: SendIn, rules: Rules) -> Result<Action, ApiError> {
    check_data(&r.data, rules)?;
    Ok(Action::Send {
        user: user_key(caller, r.tenant.as_deref(), &r.user)?,
        data: r.data,
    })
}

pub fn broadcast(caller: &Caller, r: BroadcastIn, rules: Rules) -> Result<Action, ApiError> {
    check_data(&r.data, rules)?;
    Ok(Action::Broadcast {
        audience: audience(caller, r.tenant.as_deref(), r.all)?,
        data: r.data,
    })
}

pub fn item(caller: &Caller, r: ItemIn, rules: Rules) -> Result<Action, ApiError> {
    match r.op {
        Op::Publish => {
            if r.user.is_some() {
                return Err(unexpected("user", "publish"));
            }
            if r.all.is_some() {
                return Err(unexpected("all", "publish"));
            }
            let room = r
                .room
                .ok_or_else(|| ApiError::bad("invalid_body", "publish needs `room`"))?;
            publish(
                caller,
                PublishIn {
                    room,
                    data: r.data,
                    tenant: r.tenant,
                },
                rules,
            )
        }
        Op::Send => {
            if r.room.is_some() {
                return Err(unexpected("room", "send"));
            }
            if r.all.is_some() {
                return Err(unexpected("all", "send"));
            }
            let user = r
                .user
                .ok_or_else(|| ApiError::bad("invalid_body", "send needs `user`"))?;
            send(
                caller,
                SendIn {
                    user,
                    data: r.data,
                    tenant: r.tenant,
                },
                rules,
            )
        }
        Op::Broadcast => {
            if r.room.is_some() {
                return Err(unexpected("room", "broadcast"));
            }
            if r.user.is_some() {
                return Err(unexpected("user", "broadcast"));
            }
            broadcast(
                caller,
                BroadcastIn {
                    data: r.data,
                    tenant: r.tenant,
                    all: r.all,
                },
                rules,
            )
        }
    }
}

fn unavailable(e: OpError) -> ApiError {
    ApiError::unavailable(e.text)
}

/// Runs one validated action on the node.
pub async fn run(node: &Node, action: Action) -> Result<Done, ApiError> {
    match action {
        Action::Publish { room, data } => {
            super::metric::item("publish");
            let stamp = node
                .publish_as(FROM, &room, data, None)
                .await
                .map_err(unavailable)?;
            Ok(Done {
                status: "published",
                mid: stamp.mid,
                ts: stamp.ts,
            })
        }
        Action::Send { user, data } => {
            super::metric::item("send");
            let (outcome, stamp) = node.send_as(FROM, &user, data).await.map_err(unavailable)?;
            Ok(Done {
                status: match outcome {
                    SendOutcome::Delivered => "delivered",
                    SendOutcome::Queued => "queued",
                },
                mid: stamp.mid,
                ts: stamp.ts,
            })
        }
        Action::Broadcast { audience, data } => {
            super::metric::item("broadcast");
            let b = node
                .broadcast(audience, FROM, data)
                .await
                .map_err(unavailable)?;
            Ok(Done {
                status: "broadcast",
                mid: b.mid,
                ts: b.ts,
            })
        }
    }
}
