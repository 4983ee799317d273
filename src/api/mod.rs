//! The server API: HTTP endpoints under `/api/` for the game's own backend
//! (publish to a room, send to a user, broadcast to a tenant or to all,
//! read a room's members, and a batch of the first three), described in
//! proto/openapi.json and proto/SERVER-API.md.
//!
//! A POST goes: credential ([`auth`]), body read under the size limit,
//! idempotency claim when the request carries `Idempotency-Key`, JSON
//! decoded with unknown fields refused, every item validated
//! ([`items`]), then run on the node in order (`Node::publish_as`,
//! `Node::send_as`, `Node::broadcast`), exactly the paths a client's
//! publish and send take, with `from` = `$server`. The answer is recorded
//! under the idempotency key, so a retry gets it again and delivers
//! nothing twice.

pub mod auth;
pub mod error;
pub mod items;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::bus::IdemClaim;
use crate::node::Node;
use auth::Caller;
use error::{ApiError, json_response};
use items::{Action, Done, Rules};

/// The endpoints, as the router serves them and proto/openapi.json
/// documents them (a test holds the two together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Publish,
    Send,
    Broadcast,
    Batch,
    Members,
}

/// Method, path (axum syntax, which is also OpenAPI's) and endpoint.
pub const ROUTES: [(&str, &str, Endpoint); 5] = [
    ("post", "/api/publish", Endpoint::Publish),
    ("post", "/api/send", Endpoint::Send),
    ("post", "/api/broadcast", Endpoint::Broadcast),
    ("post", "/api/batch", Endpoint::Batch),
    ("get", "/api/rooms/{room}/members", Endpoint::Members),
];

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Publish => "publish",
            Endpoint::Send => "send",
            Endpoint::Broadcast => "broadcast",
            Endpoint::Batch => "batch",
            Endpoint::Members => "members",
        }
    }
}

/// The header that makes a POST idempotent.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on an answer replayed from an idempotency record.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long an idempotency key stays claimed by a request that has not
/// answered: an instance that dies mid-request blocks retries (409) only
/// this long, not for the whole window.
pub const PENDING_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The `/api/` routes, built from [`ROUTES`].
pub fn routes() -> Router<Arc<Node>> {
    let mut router = Router::new();
    for (_, path, endpoint) in ROUTES {
        let route = match endpoint {
            Endpoint::Publish => post(|s, r| handle_post(Endpoint::Publish, s, r)),
            Endpoint::Send => post(|s, r| handle_post(Endpoint::Send, s, r)),
            Endpoint::Broadcast => post(|s, r| handle_post(Endpoint::Broadcast, s, r)),
            Endpoint::Batch => post(|s, r| handle_post(Endpoint::Batch, s, r)),
            Endpoint::Members => get(members),
        };
        router = router.route(path, route.fallback(method_not_allowed));
    }
    router.route("/api/{*rest}", axum::routing::any(not_found))
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such server API endpoint",
    )
    .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
    .into_response()
}

/// Every POST: credential, body, idempotency, then the endpoint.
async fn handle_post(endpoint: Endpoint, State(node): State<Arc<Node>>, req: Request) -> Response {
    metric::request(endpoint.name());
    let (parts, body) = req.into_parts();
    let caller = match auth::authenticate(&node, &parts.headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let body = match read_body(&node, &parts.headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let key = match idempotency_key(&parts.headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let Some(key) = key else {
        let (status, json) = answer(&node, endpoint, &caller, &body).await;
        return json_response(status, json);
    };
    let record = format!("{}:{key}", caller.key_scope());
    let fingerprint = fingerprint(endpoint, &body);
    let window = node.config.api.idempotency_window;
    let claim_for = window.min(PENDING_TTL);
    match node.bus.idem_claim(&record, &fingerprint, claim_for).await {
        Err(e) => ApiError::unavailable(e.to_string()).into_response(),
        Ok(IdemClaim::Pending) => ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still running; retry later",
        )
        .into_response(),
        Ok(IdemClaim::Mismatch) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        )
        .into_response(),
        Ok(IdemClaim::Done(stored)) => {
            metric::replay();
            replay(&stored)
        }
        Ok(IdemClaim::Fresh) => {
            let (status, json) = answer(&node, endpoint, &caller, &body).await;
            if status.is_server_error() {
                // Nothing was delivered: the key may be used again.
                node.bus.idem_release(&record).await;
            } else {
                let stored = format!("{}|{json}", status.as_u16());
                if let Err(e) = node
                    .bus
                    .idem_finish(&record, &fingerprint, &stored, window)
                    .await
                {
                    // Delivered, but the claim stays "in progress": a
                    // retry is refused until it lapses (PENDING_TTL), and
                    // only a retry after that delivers again.
                    tracing::warn!(error = %e, "idempotency answer not recorded");
                }
            }
            json_response(status, json)
        }
    }
}

/// An answer recorded as `<status>|<json>`.
fn replay(stored: &str) -> Response {
    let (status, json) = stored.split_once('|').unwrap_or(("500", stored));
    let status = status
        .parse()
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = json_response(status, json.to_owned());
    res.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    res
}

async fn read_body(node: &Node, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let max = node.config.api.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are at most {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max)
        .await
        .map_err(|_| too_large())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bytes = v.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_IDEMPOTENCY_KEY
        || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(ApiError::bad(
            "invalid_idempotency_key",
            format!("Idempotency-Key is 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// FNV-1a (64 bits) over the endpoint and the body: the same key with
/// another request is told apart.
fn fingerprint(endpoint: Endpoint, body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in endpoint
        .name()
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(body)
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Decodes the body, refusing unknown fields; syntax errors and shape
/// errors get different codes.
fn decode<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad("malformed_json", format!("malformed JSON: {e}"))
            }
            Category::Data => ApiError::bad("invalid_body", e.to_string()),
        }
    })
}

#[derive(Serialize)]
struct BatchOut {
    results: Vec<ItemOut>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ItemOut {
    Done(Done),
    Failed {
        status: &'static str,
        error: serde_json::Value,
    },
}

/// Runs an endpoint's request: status and JSON answer.
async fn answer(
    node: &Node,
    endpoint: Endpoint,
    caller: &Caller,
    body: &[u8],
) -> (StatusCode, String) {
    let rules = Rules {
        max_data_bytes: node.config.limits.max_message_bytes,
    };
    let result = match endpoint {
        Endpoint::Publish => {
            single(
                node,
                decode(body).and_then(|r| items::publish(caller, r, rules)),
            )
            .await
        }
        Endpoint::Send => {
            single(
                node,
                decode(body).and_then(|r| items::send(caller, r, rules)),
            )
            .await
        }
        Endpoint::Broadcast => {
            single(
                node,
                decode(body).and_then(|r| items::broadcast(caller, r, rules)),
            )
            .await
        }
        Endpoint::Batch => batch(node, caller, body, rules).await,
        Endpoint::Members => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "not a POST endpoint",
        )),
    };
    match result {
        Ok(json) => (StatusCode::OK, json),
        Err(e) => {
            metric::error(e.code);
            (e.status, e.to_json())
        }
    }
}

async fn single(node: &Node, action: Result<Action, ApiError>) -> Result<String, ApiError> {
    let done = items::run(node, action?).await?;
    Ok(serde_json::to_string(&done).unwrap_or_default())
}

/// Validates every item, then runs them. A batch with an invalid item is
/// refused whole (nothing delivered); a valid item that fails while running
/// (`unavailable`) is answered in its place and the others still run.
///
/// Items are split into lanes by what they address (a room, a user, or
/// broadcasts): a lane runs its items one after the other, in batch
/// order, and up to [`BATCH_LANES`] lanes run at once, so a batch over many
/// rooms shares Redis round trips while each room, user and the broadcasts
/// keep their order whatever the node awaits inside an operation.
async fn batch(
    node: &Node,
    caller: &Caller,
    body: &[u8],
    rules: Rules,
) -> Result<String, ApiError> {
    let b: items::BatchIn = decode(body)?;
    let max = node.config.api.max_batch;
    if b.items.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("a batch holds at most {max} items"),
        ));
    }
    if b.items.is_empty() {
        return Err(ApiError::bad(
            "empty_batch",
            "a batch needs at least one item",
        ));
    }
    let actions = b
        .items
        .into_iter()
        .enumerate()
        .map(|(i, item)| items::item(caller, item, rules).map_err(|e| e.at(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let count = actions.len();
    let mut lanes: Vec<Vec<(usize, Action)>> = Vec::new();
    let mut lane_of: HashMap<items::Lane, usize> = HashMap::new();
    for (i, action) in actions.into_iter().enumerate() {
        let lane = *lane_of.entry(action.lane()).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push((i, action));
    }
    let done: Vec<Vec<(usize, ItemOut)>> = futures_util::stream::iter(lanes)
        .map(|lane| async move {
            let mut out = Vec::with_capacity(lane.len());
            for (i, action) in lane {
                out.push((i, outcome(items::run(node, action).await)));
            }
            out
        })
        .buffer_unordered(BATCH_LANES)
        .collect()
        .await;
    let mut results: Vec<Option<ItemOut>> = (0..count).map(|_| None).collect();
    for (i, out) in done.into_iter().flatten() {
        results[i] = Some(out);
    }
    let results: Vec<ItemOut> = results.into_iter().flatten().collect();
    Ok(serde_json::to_string(&BatchOut { results }).unwrap_or_default())
}

/// Lanes of one batch that run at once.
pub const BATCH_LANES: usize = 64;

fn outcome(result: Result<Done, ApiError>) -> ItemOut {
    match result {
        Ok(done) => ItemOut::Done(done),
        Err(e) => {
            metric::error(e.code);
            ItemOut::Failed {
                status: "failed",
                error: serde_json::json!(e.body()),
            }
        }
    }
}

#[derive(Serialize)]
struct MembersOut<'a> {
    room: &'a str,
    count: usize,
    users: Vec<String>,
}

/// `GET /api/rooms/{room}/members[?tenant=t]`: the room's distinct users,
/// cluster-wide.
async fn members(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    req: Request,
) -> Response {
    metric::request(Endpoint::Members.name());
    let caller = match auth::authenticate(&node, req.headers()) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let tenant = match query_tenant(req.uri().query()) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let key = match items::room_key(&caller, tenant.as_deref(), &room) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    match node.presence(&key).await {
        Ok(p) => {
            let out = MembersOut {
                room: &room,
                count: p.users.len(),
                users: p.users,
            };
            json_response(
                StatusCode::OK,
                serde_json::to_string(&out).unwrap_or_default(),
            )
        }
        Err(e) => ApiError::unavailable(e.text).into_response(),
    }
}

/// The one query parameter the members endpoint takes, `tenant`.
fn query_tenant(query: Option<&str>) -> Result<Option<String>, ApiError> {
    let mut tenant = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "tenant" || tenant.is_some() {
            return Err(ApiError::bad(
                "invalid_query",
                "the only query parameter is `tenant`, at most once",
            ));
        }
        tenant =
            Some(percent_decode(value).ok_or_else(|| {
                ApiError::bad("invalid_query", "bad percent-encoding in `tenant`")
            })?);
    }
    Ok(tenant)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = (bytes.next()? as char).to_digit(16)?;
                let lo = (bytes.next()? as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

pub mod metric {
    //! Server API metrics (no room, user, tenant or key labels).
    use metrics::counter;

    pub fn request(endpoint: &'static str) {
        counter!("roomcast_api_requests_total", "endpoint" => endpoint).increment(1);
    }
    pub fn item(op: &'static str) {
        counter!("roomcast_api_items_total", "op" => op).increment(1);
    }
    pub fn error(code: &'static str) {
        counter!("roomcast_api_errors_total", "code" => code).increment(1);
    }
    pub fn replay() {
        counter!("roomcast_api_idempotent_replays_total").increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_requests_apart() {
        assert_eq!(
            fingerprint(Endpoint::Publish, b"{}"),
            fingerprint(Endpoint::Publish, b"{}")
        );
        assert_ne!(
            fingerprint(Endpoint::Publish, b"{}"),
            fingerprint(Endpoint::Send, b"{}")
        );
        assert_ne!(
            fingerprint(Endpoint::Publish, b"{\"a\":1}"),
            fingerprint(Endpoint::Publish, b"{\"a\":2}")
        );
    }

    #[test]
    fn the_members_query_takes_only_a_tenant() {
        assert_eq!(query_tenant(None).expect("none"), None);
        assert_eq!(
            query_tenant(Some("tenant=acme")).expect("t"),
            Some("acme".into())
        );
        assert_eq!(
            query_tenant(Some("tenant=a%3Ab")).expect("t"),
            Some("a:b".into())
        );
        assert!(query_tenant(Some("room=x")).is_err());
        assert!(query_tenant(Some("tenant=a&tenant=b")).is_err());
        assert!(query_tenant(Some("tenant=%zz")).is_err());
    }

    /// The router's routes are exactly the ones proto/openapi.json
    /// documents, with the same methods.
    #[test]
    fn routes_agree_with_the_openapi_document() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../proto/openapi.json")).expect("openapi.json");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    documented.push((method.clone(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }
}
