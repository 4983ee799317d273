//! One WebSocket connection: the reader loop (this file), the writer task
//! ([`writer`]) and the handle everyone else holds ([`handle`]).
//!
//! The reader runs the connection's requests one at a time, in order, so a
//! client's messages keep their order through the server.

pub mod handle;
pub mod writer;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::Identity;
use crate::bus::SendOutcome;
use crate::fanout;
use crate::metrics;
use crate::node::{ConnSlot, Node, OpError};
use crate::protocol::message::{ClientOp, ReqId, Request};
use crate::protocol::{CloseCode, Codec, ServerEvent};
use crate::registry::scoped;
use crate::session::{Command, Refusal, Session};
use handle::{ConnHandle, ConnId, Outbound};

/// What the HTTP side settled before the upgrade.
pub struct Accepted {
    pub id: ConnId,
    pub identity: Identity,
    pub codec: Codec,
    pub batch: bool,
    pub slot: ConnSlot,
}

/// Serves one upgraded connection until it closes.
pub async fn serve<S>(
    node: Arc<Node>,
    (sink, mut stream): (
        SplitSink<WebSocketStream<S>, Message>,
        SplitStream<WebSocketStream<S>>,
    ),
    accepted: Box<Accepted>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        id,
        identity,
        codec,
        batch,
        slot,
    } = *accepted;
    let limits = &node.config.limits;
    let user_key = scoped(&identity.tenant, &identity.user);
    let handle = ConnHandle::new(
        id,
        user_key,
        codec,
        limits.outbound_queue,
        limits.slow_consumer,
    );
    metrics::connection_opened();

    reply(
        &handle,
        &ServerEvent::Welcome {
            conn: Cow::Owned(format!("{}:{id}", node.instance_id())),
            user: Cow::Borrowed(&identity.user),
            instance: Cow::Borrowed(node.instance_id()),
            limits: Cow::Owned(limits.announced()),
            batch,
        },
    );
    if let Err(e) = node.bus.attach(&handle).await {
        tracing::warn!(error = %e, "cannot register connection");
        handle.close(CloseCode::InternalError);
    }
    // The writer starts only now: a client that has read `welcome` is
    // registered, so a direct message sent to it from then on reaches it.
    let writer = tokio::spawn(writer::run(sink, handle.clone(), node.clone(), batch));

    let mut session = Session::new(identity, limits, Instant::now());
    let ping_every = limits.ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_seen = Instant::now();
    loop {
        // Checked on every turn: a client that floods frames keeps
        // `stream.next()` ready, and the select below prefers it.
        if handle.is_killed() {
            break;
        }
        let frame = tokio::select! {
            biased;
            frame = stream.next() => frame,
            _ = handle.killed() => break,
            _ = ping.tick() => {
                if last_seen.elapsed() > ping_every * 2 {
                    handle.close(CloseCode::KeepaliveTimeout);
                    break;
                }
                let _ = handle.push(Outbound::Ping);
                continue;
            }
        };
        let msg = match frame {
            None => break,
            Some(Ok(msg)) => msg,
            Some(Err(WsError::Capacity(_))) => {
                handle.close(CloseCode::MessageTooBig);
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "read ended");
                break;
            }
        };
        last_seen = Instant::now();
        let bytes = match &msg {
            Message::Text(t) => t.as_bytes(),
            Message::Binary(b) => &b[..],
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        // Boxed: the request's future is large and only lives while one
        // runs; inline, every idle connection would carry its size.
        Box::pin(handle_frame(&node, &handle, &mut session, bytes)).await;
    }

    node.disconnect(&handle).await;
    handle.close(CloseCode::GoingAway);
    let _ = writer.await;
    metrics::connection_closed();
    drop(slot);
}

async fn handle_frame(node: &Node, conn: &Arc<ConnHandle>, session: &mut Session, bytes: &[u8]) {
    if let Err(refusal) = session.admit_frame(Instant::now()) {
        return refuse(conn, None, refusal);
    }
    let Request { id, op } = match conn.codec.decode_request(bytes) {
        Ok(req) => req,
        Err(e) => {
            let r = e.into_rejected();
            return refuse(conn, r.id.as_ref(), Refusal::Error(r.code, r.text));
        }
    };
    metrics::op_received(op_index(&op));
    let command = match session.command(op) {
        Ok(c) => c,
        Err(refusal) => return refuse(conn, id.as_ref(), refusal),
    };
    let result = run(node, conn, command, id.as_ref()).await;
    match (result, id) {
        (Ok(Done::Ack), Some(id)) => reply(conn, &ServerEvent::Ack { id: Cow::Owned(id) }),
        (Ok(_), _) => {}
        (Err(e), id) => refuse(conn, id.as_ref(), Refusal::Error(e.code, e.text)),
    }
}

/// How a successful command was answered.
enum Done {
    /// The client gets an `ack` when it gave an id.
    Ack,
    /// The command sent its own answer (`pong`, `presence`).
    Replied,
}

/// Runs a command.
async fn run(
    node: &Node,
    conn: &Arc<ConnHandle>,
    command: Command,
    id: Option<&ReqId>,
) -> Result<Done, OpError> {
    match command {
        Command::Join { room } => node.join(conn, &room).await.map(|()| Done::Ack),
        Command::Leave { room } => node.leave(conn, &room).await.map(|()| Done::Ack),
        Command::Publish { room, data } => {
            node.publish(conn, &room, data).await.map(|()| Done::Ack)
        }
        Command::Send { to, data } => node
            .send(conn, &to, data)
            .await
            .map(|_: SendOutcome| Done::Ack),
        Command::Presence { room } => {
            let info = node.presence(&room).await?;
            reply(
                conn,
                &ServerEvent::Presence {
                    id: id.map(|i| Cow::Owned(i.clone())),
                    room: Cow::Borrowed(crate::registry::unscoped(&room)),
                    count: info.users.len() as u64,
                    users: info.users.into_iter().map(Cow::Owned).collect(),
                },
            );
            Ok(Done::Replied)
        }
        Command::Ping => {
            reply(
                conn,
                &ServerEvent::Pong {
                    id: id.map(|i| Cow::Owned(i.clone())),
                },
            );
            Ok(Done::Replied)
        }
    }
}

fn refuse(conn: &ConnHandle, id: Option<&ReqId>, refusal: Refusal) {
    match refusal {
        Refusal::Error(code, text) => {
            metrics::error_sent(code);
            reply(
                conn,
                &ServerEvent::Error {
                    id: id.map(Cow::Borrowed),
                    code,
                    text: Cow::Owned(text),
                },
            );
        }
        Refusal::Close(code) => conn.close(code),
    }
}

/// Queues one event to this connection only.
fn reply(conn: &ConnHandle, event: &ServerEvent<'_>) {
    if let Some(frame) = fanout::encode(conn.codec, event) {
        let _ = conn.push(Outbound::Frame(frame));
    }
}

/// The index of an op in [`metrics::OPS`].
fn op_index(op: &ClientOp) -> usize {
    match op {
        ClientOp::Join { .. } => 0,
        ClientOp::Leave { .. } => 1,
        ClientOp::Publish { .. } => 2,
        ClientOp::Send { .. } => 3,
        ClientOp::Presence { .. } => 4,
        ClientOp::Ping => 5,
    }
}
