//! The HTTP side, all on one port: the WebSocket upgrade at `/ws` (auth,
//! origin and capacity checks happen before it, as plain HTTP answers),
//! `/health`, `/ready` and `/metrics`.

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
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Identity};
use crate::conn::{self, Accepted};
use crate::metrics;
use crate::node::Node;
use crate::protocol::Codec;

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

/// Query parameters of the upgrade request. Parsed by hand because they are
/// few and a token must never be echoed in an error.
struct UpgradeQuery<'a> {
    token: Option<&'a str>,
    batch: bool,
}

fn parse_query(query: &str) -> UpgradeQuery<'_> {
    let mut q = UpgradeQuery {
        token: None,
        batch: false,
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "token" => q.token = Some(v),
            "batch" => q.batch = matches!(v, "1" | "true" | ""),
            _ => {}
        }
    }
    q
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    })
}

async fn upgrade(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    if !node.is_accepting() {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "server draining",
        );
    }
    let headers = req.headers();
    let key = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(k)
            if header_has(headers, header::UPGRADE, "websocket")
                && header_has(headers, header::CONNECTION, "upgrade")
                && headers
                    .get(header::SEC_WEBSOCKET_VERSION)
                    .is_some_and(|v| v == "13") =>
        {
            k.clone()
        }
        _ => {
            return reject(
                StatusCode::BAD_REQUEST,
                "not_websocket",
                "expected a WebSocket upgrade",
            );
        }
    };
    let origins = &node.config.auth.allowed_origins;
    if !origins.is_empty()
        && let Some(origin) = headers.get(header::ORIGIN)
        && !origin
            .to_str()
            .is_ok_and(|o| origins.iter().any(|a| a == o))
    {
        return reject(StatusCode::FORBIDDEN, "origin", "origin not allowed");
    }
    let query = parse_query(req.uri().query().unwrap_or(""));
    let token = bearer(headers).or(query.token);
    let batch = query.batch;
    let conn_id = node.next_conn_id();
    let identity = match node.verifier.verify(token) {
        Ok(Some(identity)) => identity,
        Ok(None) => Identity::anonymous(format!("anon-{}-{conn_id}", node.process_tag())),
        Err(AuthError::Missing) => {
            return reject(StatusCode::UNAUTHORIZED, "no_token", "missing token");
        }
        Err(e) => {
            tracing::debug!(error = %e, "token rejected");
            return reject(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "invalid or expired token",
            );
        }
    };
    let user_key = crate::registry::scoped(&identity.tenant, &identity.user);
    if node.registry.user_conn_count(&user_key) >= node.config.limits.max_conns_per_user {
        return reject(
            StatusCode::TOO_MANY_REQUESTS,
            "user_limit",
            "too many connections for this user",
        );
    }
    let Some(slot) = node.try_open() else {
        return reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "instance_limit",
            "instance at its connection limit",
        );
    };
    let requested = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(Codec::from_subprotocols);
    let codec = requested.unwrap_or(Codec::Json);

    let on_upgrade = hyper::upgrade::on(&mut req);
    let accepted = Accepted {
        id: conn_id,
        identity,
        codec,
        batch,
        slot,
    };
    tracing::debug!(conn = conn_id, user = %accepted.identity.user, "upgrading");
    node.tracker
        .spawn(upgraded(node.clone(), on_upgrade, Box::new(accepted)));

    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(codec) = requested {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(codec.subprotocol()),
        );
    }
    res
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
