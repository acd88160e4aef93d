//! The HTTP side of [`ApiError`] (defined in `api`): status, `Retry-After`,
//! `WWW-Authenticate` and `Allow` headers, and the `{"ok":false,"error":…}` body.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

pub use crate::api::ApiError;

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::messages::RunFailure;
    use crate::actors::RequestError;
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
