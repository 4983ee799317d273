//! One WebSocket connection, served by one task: the socket side
//! ([`socket`]), the handle everyone else holds ([`handle`]), and the
//! request loop (this file).
//!
//! Requests run one at a time, in order, so a client's messages keep their
//! order through the server; queued frames keep being written while a
//! request waits on the bus.

pub mod handle;
pub mod socket;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

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
use socket::{Ending, Event, Socket};

/// What the HTTP side settled before the upgrade.
pub struct Accepted {
    pub id: ConnId,
    pub identity: Identity,
    pub codec: Codec,
    pub batch: bool,
    pub slot: ConnSlot,
}

/// A request being run; it hands the session back when done.
type Running<'a> = Pin<Box<dyn Future<Output = Session> + Send + 'a>>;

/// Serves one upgraded connection until it closes. `early` holds bytes the
/// client sent right behind its upgrade request.
///
/// The setup runs here, before the returned future is spawned, so that
/// future holds only what the connection needs for its whole life (an
/// async fn would also keep its arguments and setup locals in the state
/// every idle connection carries).
pub fn serve(
    node: Arc<Node>,
    stream: TcpStream,
    early: Vec<u8>,
    accepted: Accepted,
) -> impl Future<Output = ()> + Send {
    let Accepted {
        id,
        identity,
        codec,
        batch,
        slot,
    } = accepted;
    let limits = &node.config.limits;
    // The slot's key is the registry's copy of the user's name.
    let user_key = slot
        .user()
        .cloned()
        .unwrap_or_else(|| scoped(&identity.tenant, &identity.user));
    let slot = slot.hold();
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
    let stream = Arc::new(stream);
    handle.outbox.set_stream(stream.clone());
    let mut socket = Socket::new(stream, &early, limits.max_message_bytes, codec, batch);
    let mut session = Some(Session::new(identity, limits, Instant::now()));
    async move {
        // Boxed, like every await here whose state is large.
        Box::pin(node.attach(&handle)).await;
        // Nothing is written before this point: a client that has read
        // `welcome` is registered, so a direct message sent to it from
        // then on reaches it.
        let ending = run_socket(&node, &handle, &mut socket, &mut session).await;

        Box::pin(node.disconnect(&handle)).await;
        handle.close(CloseCode::GoingAway);
        // From here the socket is the task's alone; a frame a pusher
        // began comes back to be finished before the close frame.
        let rest = handle.outbox.shut();
        // The client's own close is echoed; the server's closes are
        // counted and wait for the client to close its side.
        let (code, ours) = match ending {
            Ending::Killed => (handle.close_code(), true),
            Ending::Queued(code) => (Some(code), true),
            Ending::PeerClosed(code) => (Some(code.unwrap_or(1000)), false),
            Ending::BadFrames(code) => (Some(code.code()), true),
            Ending::Gone => (None, false),
        };
        if let (Some(code), true) = (code, ours) {
            metrics::closed_with(code);
        }
        let reason = match code {
            Some(4002) => node.admin.take_kick_reason(handle.id),
            _ => None,
        };
        Box::pin(socket.close(code, reason.as_deref(), ours, rest)).await;
        metrics::connection_closed();
        slot.release(&handle.user);
    }
}

/// The connection's loop: requests in, queued frames out, until it ends.
async fn run_socket<'a>(
    node: &'a Node,
    handle: &'a Arc<ConnHandle>,
    socket: &mut Socket,
    session: &mut Option<Session>,
) -> Ending {
    let mut running: Option<Running<'a>> = None;
    loop {
        let event = std::future::poll_fn(|cx| {
            if let Some(request) = running.as_mut()
                && let std::task::Poll::Ready(s) = request.as_mut().poll(cx)
            {
                *session = Some(s);
                running = None;
            }
            socket.poll_event(cx, handle, running.is_some())
        })
        .await;
        match event {
            Event::Request(bytes) => {
                // `poll_event` holds requests back while one runs, so the
                // session is always here.
                let Some(mut s) = session.take() else {
                    continue;
                };
                running = Some(Box::pin(async move {
                    handle_frame(node, handle, &mut s, &bytes).await;
                    s
                }));
            }
            Event::Written(acks) => {
                for upto in acks {
                    Box::pin(node.bus.offline_written(&handle.user, upto)).await;
                }
            }
            Event::End(ending) => return ending,
        }
    }
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
    let result = match command {
        Command::Admin { cmd, args } => {
            admin_op(node, conn, &session.identity, &cmd, args, id.as_ref()).await
        }
        command => run(node, conn, command, id.as_ref()).await,
    };
    match (result, id) {
        (Ok(Done::Ack), Some(id)) => reply(
            conn,
            &ServerEvent::Ack {
                id: Cow::Owned(id),
                offset: None,
                epoch: None,
                recovered: None,
            },
        ),
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

/// Runs an `admin` op and answers with an `admin` event.
async fn admin_op(
    node: &Node,
    conn: &ConnHandle,
    who: &Identity,
    cmd: &str,
    args: crate::protocol::Data,
    id: Option<&ReqId>,
) -> Result<Done, OpError> {
    let args = serde_json::from_str(args.json()).unwrap_or(serde_json::Value::Null);
    match crate::admin::commands::execute(node, who, cmd, args, "ws").await {
        Ok(result) => {
            reply(
                conn,
                &ServerEvent::Admin {
                    id: id.map(Cow::Borrowed),
                    cmd: Cow::Borrowed(cmd),
                    result: Cow::Owned(result.into()),
                },
            );
            Ok(Done::Replied)
        }
        Err(e) => Err(OpError {
            code: e.code,
            text: e.text,
        }),
    }
}

/// Runs a command.
async fn run(
    node: &Node,
    conn: &Arc<ConnHandle>,
    command: Command,
    id: Option<&ReqId>,
) -> Result<Done, OpError> {
    match command {
        Command::Join { room, since } => match node.history_rule(&room) {
            // The join queues its own ack, behind the replayed messages.
            Some(rule) => node
                .join_history(conn, &room, &rule, since, id)
                .await
                .map(|()| Done::Replied),
            None => node.join(conn, &room).await.map(|()| Done::Ack),
        },
        Command::History { room, since, limit } => {
            let event = node.history(&room, since, limit, id).await?;
            reply(conn, &event.as_event());
            Ok(Done::Replied)
        }
        Command::Leave { room } => node.leave(conn, &room).await.map(|()| Done::Ack),
        Command::Publish { room, data, key } => node
            .publish_keyed(conn, &room, data, key)
            .await
            .map(|()| Done::Ack),
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
        Command::StatsSubscribe => {
            node.admin.subscribe(conn);
            Ok(Done::Ack)
        }
        Command::StatsUnsubscribe => {
            if node.admin.unsubscribe(conn.id) {
                Ok(Done::Ack)
            } else {
                Err(OpError {
                    code: crate::protocol::ErrorCode::NotJoined,
                    text: "not subscribed to the stats channel".into(),
                })
            }
        }
        // Run by `handle_frame`, which holds the issuer's identity.
        Command::Admin { .. } => Ok(Done::Replied),
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
        ClientOp::Admin { .. } => 6,
        ClientOp::History { .. } => 7,
    }
}

/// Keepalive for every connection of the instance, from one task: each
/// interval, a connection silent for two intervals is closed with 4001 and
/// every other one is pinged. One sweep costs far less than a timer per
/// connection, which idle connections would each carry.
pub async fn keepalive(node: Arc<Node>) {
    let every = node.config.limits.ping_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for conn in node.registry.all_conns() {
            if conn.silent_for() > every * 2 {
                conn.close(CloseCode::KeepaliveTimeout);
            } else {
                let _ = conn.push(Outbound::Ping);
            }
        }
    }
}
