//! The HTTP side, all on one port: the WebSocket upgrade at `/ws` (the
//! [`handshake`] check, then the admission steps: origin, auth and the
//! connection slot, each refusal a plain HTTP answer), `/health`, `/ready`
//! and `/metrics`.

pub mod handshake;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Identity};
use crate::conn::handle::ConnId;
use crate::conn::{self, Accepted};
use crate::metrics;
use crate::node::{ConnSlot, Node, SlotRefusal};
use crate::protocol::Codec;
use handshake::{Handshake, Refusal};

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on `listener` until `stop`. Each connection is served
/// by hyper directly on the TCP stream, so an upgraded connection hands
/// the bare stream to [`conn::serve`].
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors, typically: back off briefly
                // instead of spinning on the error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .merge(crate::admin::http::routes())
        .with_state(node)
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn render_metrics(State(node): State<Arc<Node>>) -> Response {
    match &node.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics disabled").into_response(),
    }
}

fn reject(status: StatusCode, reason: &'static str, text: &'static str) -> Response {
    metrics::upgrade_rejected(reason);
    (status, text).into_response()
}

/// The answer to a request that is not a WebSocket upgrade this server takes.
fn refuse(refusal: Refusal) -> Response {
    let mut res = reject(refusal.status(), refusal.reason(), refusal.text());
    for (name, value) in refusal.headers() {
        res.headers_mut()
            .insert(*name, HeaderValue::from_static(value));
    }
    res
}

/// An upgrade refused by an admission step.
struct Rejected {
    status: StatusCode,
    /// The `reason` label of `roomcast_upgrades_rejected_total`.
    reason: &'static str,
    text: &'static str,
}

impl Rejected {
    fn new(status: StatusCode, reason: &'static str, text: &'static str) -> Self {
        Rejected {
            status,
            reason,
            text,
        }
    }
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        reject(self.status, self.reason, self.text)
    }
}

/// `GET /ws`: the handshake check, then the admission steps, then `101`.
async fn upgrade(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    if !node.is_accepting() {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "server draining",
        );
    }
    let query = req.uri().query().unwrap_or("");
    let hs = match handshake::check(req.version(), req.headers(), query) {
        Ok(hs) => hs,
        Err(refusal) => return refuse(refusal),
    };
    let admitted = match admit(&node, req.headers(), hs.token) {
        Ok(a) => a,
        Err(rejected) => return rejected.into_response(),
    };
    let Handshake {
        accept,
        requested,
        batch,
        ..
    } = hs;
    let accepted = Accepted {
        id: admitted.id,
        identity: admitted.identity,
        codec: requested.unwrap_or(Codec::Json),
        batch,
        slot: admitted.slot,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tracing::debug!(conn = accepted.id, user = %accepted.identity.user, "upgrading");
    node.tracker
        .spawn(upgraded(node.clone(), on_upgrade, Box::new(accepted)));

    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(codec) = requested {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
    }
    res
}

/// What the admission steps settled.
struct Admitted {
    id: ConnId,
    identity: Identity,
    slot: ConnSlot,
}

/// The admission steps of a valid handshake, each a plain HTTP answer when
/// it refuses: origin (403), token (401), then the connection slot, per
/// user (429) and per instance (503), taken here and held until the
/// connection ends.
fn admit(node: &Node, headers: &HeaderMap, token: Option<&str>) -> Result<Admitted, Rejected> {
    let origins = &node.config.auth.allowed_origins;
    if !origins.is_empty()
        && let Some(origin) = headers.get(header::ORIGIN)
        && !origin
            .to_str()
            .is_ok_and(|o| origins.iter().any(|a| a == o))
    {
        return Err(Rejected::new(
            StatusCode::FORBIDDEN,
            "origin",
            "origin not allowed",
        ));
    }
    let id = node.next_conn_id();
    let identity = match node.verifier.verify(token) {
        Ok(Some(identity)) => identity,
        Ok(None) => Identity::anonymous(format!("anon-{}-{id}", node.process_tag())),
        Err(AuthError::Missing) => {
            return Err(Rejected::new(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "missing token",
            ));
        }
        Err(e) => {
            tracing::debug!(error = %e, "token rejected");
            return Err(Rejected::new(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "invalid or expired token",
            ));
        }
    };
    let user = crate::registry::scoped(&identity.tenant, &identity.user);
    let slot = node.try_open(user).map_err(|refusal| match refusal {
        SlotRefusal::User => Rejected::new(
            StatusCode::TOO_MANY_REQUESTS,
            "user_limit",
            "too many connections for this user",
        ),
        SlotRefusal::Instance => Rejected::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "instance_limit",
            "instance at its connection limit",
        ),
    })?;
    Ok(Admitted { id, identity, slot })
}

/// Finishes the upgrade, then hands the connection to a task of its own:
/// the handshake's state is large and would otherwise stay reserved in the
/// future of every connection for its whole life.
async fn upgraded(node: Arc<Node>, on_upgrade: OnUpgrade, accepted: Box<Accepted>) {
    match on_upgrade.await {
        Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // Copied out: `read_buf` shares hyper's whole read buffer
                // (8 KiB), which would otherwise live as long as the
                // connection. Usually it is empty and nothing is allocated.
                let early = parts.read_buf.to_vec();
                drop(parts.read_buf);
                let serve = conn::serve(node.clone(), parts.io.into_inner(), early, *accepted);
                node.tracker.spawn(serve);
            }
            Err(_) => tracing::error!("upgraded connection is not a TCP stream"),
        },
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}

/// Binds the listening socket with a backlog sized for connection storms
/// (the standard library's default of 128 drops SYNs when thousands of
/// clients reconnect at once).
pub async fn listen(addr: &str, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await? {
        let socket = if sa.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(sa).and_then(|()| socket.listen(backlog)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "address resolved to nothing",
        )
    }))
}
