//! The API's error type, shared by every transport (HTTP, NATS request–reply):
//! one enum, its error object and its HTTP status in one place. The HTTP
//! response (headers) is built in `http`.

use serde_json::{json, Value};

use crate::actors::messages::RunFailure;
use crate::actors::RequestError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Request(Box<RequestError>),
    /// The gateway refused a request the bridge made on its own account
    /// (e.g. the `agent.wait` behind `GET /v1/runs/{runId}`): the gateway's
    /// error object, but 502, since the client's request was well formed.
    #[error("{0}")]
    GatewayRefused(Box<RequestError>),
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("request body over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("method not allowed here; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    /// A browser-borne request to a tokenless API (foreign Host or Origin).
    #[error("{0}")]
    Forbidden(String),
    #[error("the body must be sent as Content-Type: application/json")]
    UnsupportedMediaType,
    /// A bound was hit (e.g. `http.max_sse_subscribers`): retry later.
    #[error("{message}")]
    Overloaded { message: String, retry_after_s: u64 },
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The error object (`{"code","message",…}`).
    pub fn object(&self) -> Value {
        match self {
            ApiError::Request(e) | ApiError::GatewayRefused(e) => e.to_value(),
            ApiError::BadRequest(m) => json!({"code": "BRIDGE_BAD_REQUEST", "message": m}),
            ApiError::Unauthorized => {
                json!({"code": "BRIDGE_UNAUTHORIZED", "message": self.to_string()})
            }
            ApiError::Forbidden(m) => json!({"code": "BRIDGE_FORBIDDEN", "message": m}),
            ApiError::UnsupportedMediaType => {
                json!({"code": "BRIDGE_UNSUPPORTED_MEDIA_TYPE", "message": self.to_string()})
            }
            ApiError::NotFound(m) => json!({"code": "BRIDGE_NOT_FOUND", "message": m}),
            ApiError::TooLarge { .. } => {
                json!({"code": "BRIDGE_PAYLOAD_TOO_LARGE", "message": self.to_string()})
            }
            ApiError::MethodNotAllowed { .. } => {
                json!({"code": "BRIDGE_METHOD_NOT_ALLOWED", "message": self.to_string()})
            }
            ApiError::Overloaded { message, .. } => {
                json!({"code": "BRIDGE_OVERLOADED", "message": message})
            }
            ApiError::Internal(m) => json!({"code": "BRIDGE_INTERNAL", "message": m}),
        }
    }

    /// The HTTP status this error is answered with (also in NATS replies).
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Request(e) => match e.as_ref() {
                RequestError::Rejected(g) => match g.code.as_str() {
                    "INVALID_REQUEST" => 400,
                    "FORBIDDEN" => 403,
                    "NOT_PAIRED" | "UNAVAILABLE" => 503,
                    _ => 502,
                },
                RequestError::NotConnected { .. }
                | RequestError::Disconnected { .. }
                | RequestError::ShuttingDown
                | RequestError::Overloaded { .. } => 503,
                RequestError::FrameTooLarge { .. } => 502,
                RequestError::Timeout { .. } => 504,
                RequestError::BadRequest(_) => 400,
                RequestError::Run { failure, .. } => match failure {
                    RunFailure::Timeout { .. } => 504,
                    RunFailure::Disconnected { .. } | RunFailure::ShuttingDown => 503,
                    RunFailure::OutcomeUnknown { .. } => 502,
                },
            },
            ApiError::GatewayRefused(_) => 502,
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::UnsupportedMediaType => 415,
            ApiError::NotFound(_) => 404,
            ApiError::TooLarge { .. } => 413,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Overloaded { .. } => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// The reply to an RPC that failed, for transports without HTTP (NATS
    /// request–reply): the body `POST /v1/rpc` would give plus the HTTP
    /// status it would have, `{"ok":false,"error":{…},"status":N}`.
    pub fn rpc_reply(&self) -> Value {
        json!({"ok": false, "error": self.object(), "status": self.status()})
    }

    /// Seconds for `Retry-After`, when the error says when to retry.
    pub fn retry_after_secs(&self) -> Option<u64> {
        let ms = match self {
            ApiError::Request(r) => match r.as_ref() {
                RequestError::Rejected(e) => e.retry_after_ms,
                // Always a hint while not connected: with no attempt
                // scheduled (a handshake under way) try again in a second.
                RequestError::NotConnected {
                    next_attempt_in_ms, ..
                } => Some(next_attempt_in_ms.unwrap_or(1000)),
                RequestError::Overloaded { retry_after_ms, .. } => Some(*retry_after_ms),
                _ => None,
            },
            ApiError::Overloaded { retry_after_s, .. } => return Some((*retry_after_s).max(1)),
            _ => None,
        }?;
        Some(ms.div_ceil(1000).max(1))
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::Request(Box::new(e))
    }
}
