//! The retry policy: why a gateway session ended ([`DisconnectCause`]) and
//! what to do about it ([`RetryClass`]): park for the operator with the action
//! that fixes it, wait as the gateway asked, poll through a restart, or back
//! off (see `backoff` for the delays). Pure functions and values: no actors,
//! no I/O; the supervisor applies the answer.

use std::time::Duration;

use crate::protocol::GatewayError;

/// Why a gateway session ended (or never began).
#[derive(Debug, Clone, PartialEq)]
pub enum DisconnectCause {
    /// TCP connect or the HTTP upgrade failed.
    ConnectFailed { error: String },
    /// A handshake step did not arrive in time (`challenge` or `hello`).
    HandshakeTimeout { stage: &'static str },
    /// The gateway answered `connect` with an error.
    Rejected { error: GatewayError },
    /// hello-ok could not be used (bad shape, wrong protocol).
    BadHello { error: String },
    /// hello-ok granted fewer scopes than configured.
    ScopesMissing {
        missing: Vec<String>,
        granted: Vec<String>,
    },
    /// A WebSocket close frame.
    Closed { code: u16, reason: String },
    /// The socket ended without a close frame (1006).
    Lost,
    /// No traffic for 2 × tick interval.
    WatchdogExpired { silent_ms: u64 },
    /// The WebSocket stream broke (codec error, oversized frame).
    ProtocolError { error: String },
    /// We closed it (shutdown or replaced).
    ClosedByUs,
}

/// What to do after a cause, before jitter and limits are applied.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryClass {
    /// Retrying cannot help: wait for the operator (slow retries); the text
    /// says what the operator must do. `at_least` honours `retryAfterMs`.
    Park {
        action: String,
        at_least: Option<Duration>,
    },
    /// The gateway told us when: wait that long (clamped).
    After(Duration),
    /// A restart is under way: poll quickly.
    Restarting,
    /// Anything else: exponential backoff with full jitter.
    Backoff,
}

/// `details.code`s a retry cannot fix (PROTOCOL.md §3.2 stop list).
const STOP_LIST: &[&str] = &[
    "AUTH_TOKEN_MISSING",
    "AUTH_TOKEN_MISMATCH",
    "AUTH_PASSWORD_MISSING",
    "AUTH_PASSWORD_MISMATCH",
    "AUTH_BOOTSTRAP_TOKEN_INVALID",
    "AUTH_RATE_LIMITED",
    "AUTH_DEVICE_TOKEN_MISMATCH",
    "AUTH_SCOPE_MISMATCH",
    "AUTH_VERIFIED_USER_REQUIRED",
    "AUTH_TOKEN_NOT_CONFIGURED",
    "AUTH_REQUIRED",
    "AUTH_UNAUTHORIZED",
    "DEVICE_IDENTITY_REQUIRED",
    "PAIRING_REQUIRED",
    "PROTOCOL_MISMATCH",
    "CLIENT_VERSION_MISMATCH",
];

impl DisconnectCause {
    /// Classify for the retry policy (pure; unit-tested).
    pub fn retry_class(&self) -> RetryClass {
        match self {
            DisconnectCause::Rejected { error } => classify_rejection(error),
            DisconnectCause::ScopesMissing { missing, .. } => RetryClass::Park {
                action: format!(
                    "the gateway did not grant {}; a remote gateway needs a paired device identity (gateway.device_identity), or adjust gateway.scopes",
                    missing.join(", ")
                ),
                at_least: None,
            },
            DisconnectCause::BadHello { error } => RetryClass::Park {
                action: format!("the gateway's hello-ok is not usable ({error}); check the gateway version (protocol 4 needed)"),
                at_least: None,
            },
            DisconnectCause::Closed { code: 1002, .. } => RetryClass::Park {
                action: "protocol mismatch: this bridge speaks protocol 4; upgrade the gateway or the bridge".into(),
                at_least: None,
            },
            DisconnectCause::Closed { code: 1012, .. } => RetryClass::Restarting,
            DisconnectCause::Closed { code: 1013, .. } => RetryClass::After(Duration::from_millis(500)),
            _ => RetryClass::Backoff,
        }
    }

    /// A short code for logs, metrics and `/readyz`.
    pub fn code(&self) -> String {
        match self {
            DisconnectCause::ConnectFailed { .. } => "connect_failed".into(),
            DisconnectCause::HandshakeTimeout { stage } => format!("{stage}_timeout"),
            DisconnectCause::Rejected { error } => error
                .details_code()
                .unwrap_or(error.code.as_str())
                .to_owned(),
            DisconnectCause::BadHello { .. } => "bad_hello".into(),
            DisconnectCause::ScopesMissing { .. } => "scopes_missing".into(),
            DisconnectCause::Closed { code, .. } => format!("close_{code}"),
            DisconnectCause::Lost => "connection_lost".into(),
            DisconnectCause::WatchdogExpired { .. } => "watchdog_expired".into(),
            DisconnectCause::ProtocolError { .. } => "protocol_error".into(),
            DisconnectCause::ClosedByUs => "closed_by_bridge".into(),
        }
    }

    /// A human sentence for logs and `/readyz`.
    pub fn message(&self) -> String {
        match self {
            DisconnectCause::ConnectFailed { error } => format!("could not connect: {error}"),
            DisconnectCause::HandshakeTimeout { stage } => {
                format!("the gateway did not send {stage} in time")
            }
            DisconnectCause::Rejected { error } => error.to_string(),
            DisconnectCause::BadHello { error } => error.clone(),
            DisconnectCause::ScopesMissing { missing, granted } => format!(
                "granted scopes [{}] lack [{}]",
                granted.join(", "),
                missing.join(", ")
            ),
            DisconnectCause::Closed { code, reason } => {
                format!("closed by the gateway with {code} {reason:?}")
            }
            DisconnectCause::Lost => "connection lost without a close frame".into(),
            DisconnectCause::WatchdogExpired { silent_ms } => {
                format!("no traffic for {silent_ms} ms")
            }
            DisconnectCause::ProtocolError { error } => format!("WebSocket error: {error}"),
            DisconnectCause::ClosedByUs => "closed by the bridge".into(),
        }
    }

    /// The close code to report, when there is one.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            DisconnectCause::Closed { code, .. } => Some(*code),
            DisconnectCause::Lost => Some(1006),
            _ => None,
        }
    }
}

fn classify_rejection(error: &GatewayError) -> RetryClass {
    let dc = error.details_code().unwrap_or("");
    let retry_after = error.retry_after_ms.map(Duration::from_millis);
    if dc == "PAIRING_REQUIRED" || error.code == "NOT_PAIRED" && dc != "DEVICE_IDENTITY_REQUIRED" {
        let id = error.detail_str("requestId").unwrap_or("<requestId>");
        return RetryClass::Park {
            action: format!(
                "approve the device on the gateway host: openclaw devices approve {id}"
            ),
            at_least: None,
        };
    }
    if STOP_LIST.contains(&dc) || dc.starts_with("CONTROL_UI_") {
        let action = match (dc, error.next_step()) {
            ("AUTH_TOKEN_MISMATCH" | "AUTH_TOKEN_MISSING" | "AUTH_REQUIRED" | "AUTH_UNAUTHORIZED", _) => {
                "set the gateway's shared token in gateway.token, gateway.token_file or OPENCLAW_GATEWAY_TOKEN, then send SIGHUP".to_owned()
            }
            ("AUTH_RATE_LIMITED", _) => {
                "too many failed logins from this address: fix the token, the gateway unlocks after retryAfterMs".to_owned()
            }
            ("PROTOCOL_MISMATCH", _) => {
                "protocol mismatch: this bridge speaks protocol 4; upgrade the gateway or the bridge".to_owned()
            }
            ("DEVICE_IDENTITY_REQUIRED", _) => {
                "the gateway requires a device identity: set gateway.device_identity = \"always\" and approve the pairing".to_owned()
            }
            (_, Some(step)) => format!("gateway recommends: {step}"),
            _ => format!("fix the configuration ({dc}), then send SIGHUP"),
        };
        return RetryClass::Park {
            action,
            at_least: retry_after,
        };
    }
    if error.code == "INVALID_REQUEST" && error.message.starts_with("invalid connect params") {
        return RetryClass::Park {
            action: "the gateway refused the connect parameters: check gateway.client_id, client_mode and scopes".into(),
            at_least: None,
        };
    }
    if error.code == "UNAVAILABLE" {
        let ms = error.retry_after_ms.unwrap_or(500).clamp(100, 2000);
        return RetryClass::After(Duration::from_millis(ms));
    }
    RetryClass::Backoff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(json: &str) -> DisconnectCause {
        DisconnectCause::Rejected {
            error: serde_json::from_str(json).unwrap(),
        }
    }

    #[test]
    fn token_mismatch_parks_with_an_action() {
        let c = rejected(
            r#"{"code":"INVALID_REQUEST","message":"unauthorized: gateway token mismatch (provide gateway auth token)","details":{"code":"AUTH_TOKEN_MISMATCH","recommendedNextStep":"update_auth_credentials"}}"#,
        );
        assert_eq!(c.code(), "AUTH_TOKEN_MISMATCH");
        match c.retry_class() {
            RetryClass::Park { action, at_least } => {
                assert!(action.contains("gateway.token"));
                assert_eq!(at_least, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_limit_parks_at_least_retry_after() {
        let c = rejected(
            r#"{"code":"INVALID_REQUEST","message":"unauthorized: too many failed authentication attempts (retry later)","details":{"code":"AUTH_RATE_LIMITED"},"retryable":true,"retryAfterMs":299870}"#,
        );
        assert!(
            matches!(c.retry_class(), RetryClass::Park { at_least: Some(d), .. } if d == Duration::from_millis(299_870))
        );
    }

    #[test]
    fn pairing_parks_with_the_approve_command() {
        let c = rejected(
            r#"{"code":"NOT_PAIRED","message":"pairing required","details":{"code":"PAIRING_REQUIRED","requestId":"0d52"}}"#,
        );
        assert!(
            matches!(c.retry_class(), RetryClass::Park { ref action, .. } if action.contains("openclaw devices approve 0d52"))
        );
    }

    #[test]
    fn startup_window_waits_retry_after_clamped() {
        let c = rejected(
            r#"{"code":"UNAVAILABLE","message":"gateway starting; retry shortly","retryable":true,"retryAfterMs":500,"details":{"reason":"startup-sidecars"}}"#,
        );
        assert_eq!(
            c.retry_class(),
            RetryClass::After(Duration::from_millis(500))
        );
        let c = rejected(r#"{"code":"UNAVAILABLE","message":"busy","retryAfterMs":60000}"#);
        assert_eq!(
            c.retry_class(),
            RetryClass::After(Duration::from_millis(2000))
        );
    }

    #[test]
    fn invalid_connect_params_and_protocol_mismatch_park() {
        let c = rejected(
            r#"{"code":"INVALID_REQUEST","message":"invalid connect params: at /client/id: must be equal to one of the allowed values"}"#,
        );
        assert!(matches!(c.retry_class(), RetryClass::Park { .. }));
        let c = rejected(
            r#"{"code":"INVALID_REQUEST","message":"protocol mismatch","details":{"code":"PROTOCOL_MISMATCH"}}"#,
        );
        assert!(matches!(c.retry_class(), RetryClass::Park { .. }));
        let c = DisconnectCause::Closed {
            code: 1002,
            reason: "protocol mismatch".into(),
        };
        assert!(matches!(c.retry_class(), RetryClass::Park { .. }));
    }

    #[test]
    fn transient_causes_back_off_and_restarts_poll() {
        for c in [
            DisconnectCause::Lost,
            DisconnectCause::ConnectFailed {
                error: "refused".into(),
            },
            DisconnectCause::Closed {
                code: 1008,
                reason: "slow consumer".into(),
            },
            DisconnectCause::WatchdogExpired { silent_ms: 60_001 },
            DisconnectCause::HandshakeTimeout { stage: "challenge" },
        ] {
            assert_eq!(c.retry_class(), RetryClass::Backoff, "{c:?}");
        }
        let c = DisconnectCause::Closed {
            code: 1012,
            reason: "service restart".into(),
        };
        assert_eq!(c.retry_class(), RetryClass::Restarting);
        assert_eq!(c.close_code(), Some(1012));
    }
}
