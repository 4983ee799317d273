//! The server API's refusals: an HTTP status and a machine-readable code,
//! answered as `{"error":{"code":"..","text":".."}}` (with `"index"` when
//! one item of a batch was refused).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// Every `code` the server API answers with (also the label values of
/// `roomcast_api_errors_total`).
pub const CODES: [&str; 20] = [
    "unauthorized",
    "forbidden",
    "tenant_forbidden",
    "malformed_json",
    "invalid_body",
    "invalid_query",
    "invalid_room",
    "invalid_user",
    "invalid_tenant",
    "invalid_audience",
    "data_too_large",
    "body_too_large",
    "batch_too_large",
    "empty_batch",
    "invalid_idempotency_key",
    "idempotency_in_progress",
    "idempotency_key_reused",
    "not_found",
    "method_not_allowed",
    "unavailable",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// One of [`CODES`].
    pub code: &'static str,
    pub text: String,
    /// The refused item of a batch.
    pub index: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, text: impl Into<String>) -> Self {
        debug_assert!(CODES.contains(&code), "unlisted code {code}");
        ApiError {
            status,
            code,
            text: text.into(),
            index: None,
        }
    }

    pub fn bad(code: &'static str, text: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, text)
    }

    pub fn unauthorized(text: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", text)
    }

    pub fn forbidden(code: &'static str, text: &str) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, code, text)
    }

    pub fn unavailable(text: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", text)
    }

    pub fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    /// The `{"code","text"}` object (inside `error`, or a batch result).
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            code: self.code,
            text: &self.text,
            index: self.index,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({ "error": self.body() }).to_string()
    }
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'static str,
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::api::metric::error(self.code);
        let mut res = json_response(self.status, self.to_json());
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// A JSON answer with its status.
pub fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
