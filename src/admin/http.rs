//! The admin HTTP API under `/admin/api/`: JSON in and out, authenticated
//! by `Authorization: Bearer <token>` with role `admin` (never a query
//! token: URLs end up in logs). Errors are
//! `{"error":{"code":"<machine code>","text":".."}}` with 400 (`bad_request`,
//! `invalid_room`), 401 (`unauthorized`), 403 (`forbidden`), 404
//! (`not_found`) or 503 (`unavailable`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value, json};

use super::commands::{AdminError, execute};
use super::dashboard;
use crate::auth::Identity;
use crate::node::Node;
use crate::protocol::ErrorCode;

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/admin", get(dashboard::page))
        .route("/admin/", get(dashboard::page))
        .route("/admin/assets/{file}", get(dashboard::asset))
        .route("/admin/api/instances", get(instances))
        .route("/admin/api/stats", get(stats))
        .route("/admin/api/rooms", get(rooms))
        .route("/admin/api/rooms/{room}", get(room))
        .route("/admin/api/users/{user}/kick", post(kick_user))
        .route("/admin/api/connections/{conn}/kick", post(kick_conn))
        .route("/admin/api/instances/{id}/drain", post(drain))
        .route("/admin/api/instances/{id}/undrain", post(undrain))
        .route("/admin/api/broadcast", post(broadcast))
        .route("/admin/api/{*rest}", any(unknown))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: &str, text: &str) -> Response {
    json_response(status, &json!({"error": {"code": code, "text": text}}))
}

/// A request refused before any command ran.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    text: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, text: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            text: text.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.code, &self.text)
    }
}

fn refused(e: AdminError) -> Response {
    let status = match e.code {
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, e.code.as_str(), &e.text)
}

/// The caller's identity from its bearer token: 401 without a valid one,
/// 403 without role admin.
fn authenticate(node: &Node, headers: &HeaderMap) -> Result<Identity, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <admin token>",
        ));
    };
    match node.verifier.verify(Some(token)) {
        Ok(Some(identity)) if identity.is_admin() => Ok(identity),
        Ok(Some(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token does not have role admin",
        )),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid or expired token",
        )),
    }
}

async fn call(node: &Node, headers: &HeaderMap, cmd: &str, args: Value) -> Response {
    let who = match authenticate(node, headers) {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    match execute(node, &who, cmd, args, "http").await {
        Ok(result) => json_response(StatusCode::OK, &result),
        Err(e) => refused(e),
    }
}

/// Decodes `%XX` escapes and `+` of a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query's parameters as string arguments (`limit` as a number when
/// it is one).
fn query_args(req: &Request) -> Value {
    let mut args = Map::new();
    for pair in req.uri().query().unwrap_or("").split('&') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = percent_decode(v);
        let value = match (k, v.parse::<u64>()) {
            ("limit", Ok(n)) => json!(n),
            _ => json!(v),
        };
        args.insert(percent_decode(k), value);
    }
    Value::Object(args)
}

/// A JSON object body (empty: no arguments).
fn body_args(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    if body.len() > MAX_BODY {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            "body too large",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not JSON: {e}"),
        )),
    }
}

async fn instances(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    call(&node, &headers, "instances", Value::Null).await
}

async fn stats(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    call(&node, &headers, "stats", Value::Null).await
}

async fn rooms(State(node): State<Arc<Node>>, req: Request) -> Response {
    let args = query_args(&req);
    call(&node, req.headers(), "rooms", args).await
}

async fn room(State(node): State<Arc<Node>>, Path(name): Path<String>, req: Request) -> Response {
    let mut args = query_args(&req);
    args["room"] = json!(name);
    call(&node, req.headers(), "room", args).await
}

async fn kick_user(
    State(node): State<Arc<Node>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    call_with_body(&node, &headers, "kick_user", &body, "user", user).await
}

async fn kick_conn(
    State(node): State<Arc<Node>>,
    Path(conn): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    call_with_body(&node, &headers, "kick_conn", &body, "conn", conn).await
}

/// Runs `command` with the JSON body's fields as arguments and `key` set
/// to the value from the path.
async fn call_with_body(
    node: &Node,
    headers: &HeaderMap,
    command: &str,
    body: &Bytes,
    key: &str,
    value: String,
) -> Response {
    let mut args = match body_args(body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    args.insert(key.into(), json!(value));
    call(node, headers, command, Value::Object(args)).await
}

async fn drain(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    call(&node, &headers, "drain", json!({ "instance": id })).await
}

async fn undrain(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    call(&node, &headers, "undrain", json!({ "instance": id })).await
}

async fn broadcast(State(node): State<Arc<Node>>, headers: HeaderMap, body: Bytes) -> Response {
    let args = match body_args(&body) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    call(&node, &headers, "broadcast", Value::Object(args)).await
}

async fn unknown(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    // Unknown paths answer 401 before 404, so they reveal nothing.
    if let Err(e) = authenticate(&node, &headers) {
        return e.into_response();
    }
    error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("t%2Flobby"), "t/lobby");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%e2%82%ac"), "€");
    }
}
