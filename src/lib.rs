//! roomcast: a realtime WebSocket room server that scales over Redis.
//!
//! Modules in reading order:
//! - [`protocol`]: wire messages, codecs, error and close codes (pure).
//! - [`config`]: flags, environment and file, validated per subsystem.
//! - [`auth`]: JWT verification before the upgrade.
//! - [`session`]: per-connection rate limit, validation, permissions (pure).
//! - [`registry`]: room/user/connection maps kept consistent; member lists
//!   as snapshots for fan-out.
//! - [`delivery`]: write delays per room and latest-wins keys (pure policy).
//! - [`fanout`]: encode once per codec, push to every recipient outside any
//!   lock; lanes for big rooms.
//! - [`ws`]: WebSocket framing, both directions (pure).
//! - [`conn`]: one task per connection: the request loop, the socket (reads,
//!   writes, close) and the handle others push to.
//! - [`history`]: room history, offsets and epochs, recovery, gap filling.
//! - [`hub`]: the local side: registry, local delivery, the attach gate.
//! - [`bus`]: only what crosses instances; [`offline`] queues of standalone mode.
//! - [`presence_diff`]: joins and leaves gathered per room per interval.
//! - [`node`]: one instance's shared state and command execution.
//! - [`slots`]: per-instance and per-user connection slots.
//! - [`server`]: HTTP routes and the WebSocket upgrade; [`shutdown`].
//! - [`api`]: the server API under `/api/` (the game's backend publishes,
//!   sends and broadcasts over HTTP).
//! - [`metrics`]: Prometheus names.
//! - [`admin`]: the stats channel, admin commands, `/admin/api` and the dashboard.

pub mod admin;
pub mod api;
pub mod auth;
pub mod bus;
pub mod config;
pub mod conn;
pub mod delivery;
pub mod fanout;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod offline;
pub mod presence_diff;
pub mod protocol;
pub mod registry;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod slots;
pub mod ws;
