//! The API's error type: one enum, mapped to HTTP status in one place.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
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
    fn object(&self) -> Value {
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

    /// The reply to an RPC that failed, for transports without HTTP (NATS
    /// request–reply): the body `POST /v1/rpc` would give plus the HTTP
    /// status it would have, `{"ok":false,"error":{…},"status":N}`.
    pub fn rpc_reply(&self) -> Value {
        json!({"ok": false, "error": self.object(), "status": self.status_code().as_u16()})
    }

    /// Seconds for `Retry-After`, when the error says when to retry.
    fn retry_after_secs(&self) -> Option<u64> {
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

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Request(e) => match e.as_ref() {
                RequestError::Rejected(g) => match g.code.as_str() {
                    "INVALID_REQUEST" => StatusCode::BAD_REQUEST,
                    "FORBIDDEN" => StatusCode::FORBIDDEN,
                    "NOT_PAIRED" | "UNAVAILABLE" => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                },
                RequestError::NotConnected { .. }
                | RequestError::Disconnected { .. }
                | RequestError::ShuttingDown
                | RequestError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
                RequestError::FrameTooLarge { .. } => StatusCode::BAD_GATEWAY,
                RequestError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                RequestError::BadRequest(_) => StatusCode::BAD_REQUEST,
                RequestError::Run { failure, .. } => match failure {
                    RunFailure::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
                    RunFailure::Disconnected { .. } | RunFailure::ShuttingDown => {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                    RunFailure::OutcomeUnknown { .. } => StatusCode::BAD_GATEWAY,
                },
            },
            ApiError::GatewayRefused(_) => StatusCode::BAD_GATEWAY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status_code());
        if let Some(s) = self.retry_after_secs() {
            b.insert_header((header::RETRY_AFTER, s.to_string()));
        }
        if matches!(self, ApiError::Unauthorized) {
            b.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let ApiError::MethodNotAllowed { allow } = self {
            b.insert_header((header::ALLOW, *allow));
        }
        b.json(json!({"ok": false, "error": self.object()}))
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::Request(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::GatewayError;

    fn status(e: ApiError) -> u16 {
        e.status_code().as_u16()
    }

    fn rejected(code: &str) -> ApiError {
        ApiError::from(RequestError::Rejected(Box::new(GatewayError::local(
            code, "x",
        ))))
    }

    #[test]
    fn mapping_follows_the_contract() {
        assert_eq!(status(rejected("INVALID_REQUEST")), 400);
        assert_eq!(status(rejected("FORBIDDEN")), 403);
        assert_eq!(status(rejected("NOT_PAIRED")), 503);
        assert_eq!(status(rejected("UNAVAILABLE")), 503);
        assert_eq!(status(rejected("APPROVAL_NOT_FOUND")), 502);
        // The gateway refusing the bridge's own lookup keeps its code, as a 502.
        let refused = ApiError::GatewayRefused(Box::new(RequestError::Rejected(Box::new(
            GatewayError::local("INVALID_REQUEST", "unknown method: agent.wait"),
        ))));
        assert_eq!(refused.object()["code"], "INVALID_REQUEST");
        assert_eq!(status(refused), 502);
        assert_eq!(
            status(ApiError::from(RequestError::NotConnected {
                state: "backoff".into(),
                next_attempt_in_ms: None
            })),
            503
        );
        assert_eq!(
            status(ApiError::from(RequestError::Timeout { after_ms: 1 })),
            504
        );
        assert_eq!(
            status(ApiError::from(RequestError::BadRequest("x".into()))),
            400
        );
        assert_eq!(status(ApiError::from(RequestError::ShuttingDown)), 503);
        let overloaded = ApiError::from(RequestError::Overloaded {
            bound: "gateway.max_pending",
            limit: 1,
            retry_after_ms: 1500,
        });
        assert_eq!(status(overloaded), 503);
        let r = ApiError::from(RequestError::Overloaded {
            bound: "gateway.max_pending",
            limit: 1,
            retry_after_ms: 1500,
        })
        .error_response();
        assert_eq!(r.headers().get("retry-after").unwrap(), "2");
        assert_eq!(
            status(ApiError::from(RequestError::FrameTooLarge {
                size: 9,
                limit: 1
            })),
            502
        );
        assert_eq!(status(ApiError::Unauthorized), 401);
        assert_eq!(status(ApiError::TooLarge { limit: 1 }), 413);
    }

    #[test]
    fn retry_after_is_rounded_up_seconds() {
        let mut g = GatewayError::local("UNAVAILABLE", "starting");
        g.retry_after_ms = Some(500);
        let e = ApiError::from(RequestError::Rejected(Box::new(g)));
        assert_eq!(e.retry_after_secs(), Some(1));
        let r = e.error_response();
        assert_eq!(r.headers().get("retry-after").unwrap(), "1");
        let not_connected = |ms| {
            ApiError::from(RequestError::NotConnected {
                state: "connecting".into(),
                next_attempt_in_ms: ms,
            })
        };
        assert_eq!(not_connected(None).retry_after_secs(), Some(1));
        assert_eq!(not_connected(Some(0)).retry_after_secs(), Some(1));
        assert_eq!(not_connected(Some(60_000)).retry_after_secs(), Some(60));
        let mut g = GatewayError::local("UNAVAILABLE", "busy");
        g.retry_after_ms = None;
        let e = ApiError::from(RequestError::Rejected(Box::new(g)));
        assert_eq!(e.retry_after_secs(), None);
    }

    #[test]
    fn rpc_reply_carries_the_http_status() {
        let v = rejected("FORBIDDEN").rpc_reply();
        assert_eq!(v["ok"], false);
        assert_eq!(v["status"], 403);
        assert_eq!(v["error"]["code"], "FORBIDDEN");
        let v = ApiError::from(RequestError::Timeout { after_ms: 5 }).rpc_reply();
        assert_eq!(v["status"], 504);
        assert_eq!(v["error"]["code"], "BRIDGE_TIMEOUT");
    }

    #[test]
    fn accepted_runs_keep_their_run_id_in_every_failure() {
        let run = |failure| {
            ApiError::from(RequestError::Run {
                run_id: "r-1".into(),
                failure,
            })
            .rpc_reply()
        };
        let v = run(RunFailure::OutcomeUnknown { boot_changed: true });
        assert_eq!(v["status"], 502);
        assert_eq!(v["error"]["code"], "BRIDGE_RUN_OUTCOME_UNKNOWN");
        assert_eq!(v["error"]["details"]["runId"], "r-1");
        assert_eq!(v["error"]["details"]["boot_changed"], true);
        let v = run(RunFailure::Timeout { after_ms: 9 });
        assert_eq!(
            (v["status"].as_u64(), v["error"]["code"].as_str()),
            (Some(504), Some("BRIDGE_TIMEOUT"))
        );
        assert_eq!(v["error"]["details"]["runId"], "r-1");
        let v = run(RunFailure::ShuttingDown);
        assert_eq!(
            (v["status"].as_u64(), v["error"]["code"].as_str()),
            (Some(503), Some("BRIDGE_SHUTTING_DOWN"))
        );
        assert_eq!(v["error"]["details"]["runId"], "r-1");
        let v = run(RunFailure::Disconnected { reason: "x".into() });
        assert_eq!(
            (v["status"].as_u64(), v["error"]["code"].as_str()),
            (Some(503), Some("BRIDGE_DISCONNECTED"))
        );
        assert_eq!(v["error"]["details"]["runId"], "r-1");
    }

    #[test]
    fn method_not_allowed_names_the_method() {
        let r = ApiError::MethodNotAllowed { allow: "POST" }.error_response();
        assert_eq!(r.status().as_u16(), 405);
        assert_eq!(r.headers().get("allow").unwrap(), "POST");
    }
}
