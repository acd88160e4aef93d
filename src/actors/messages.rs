//! Messages shared by several actors, and the request error type.
//!
//! Data flows one way: the socket → `GatewayConnection` → typed messages to
//! `AgentRegistry` / `EventBroker`; requests come back through [`Send`] and are
//! answered exactly once with a payload or a [`RequestError`].

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::Message;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::protocol::{GatewayError, GatewayEvent, HelloOk};

/// A request to the gateway. Handled by `Supervisor` (forwards or refuses at
/// once) and `GatewayConnection` (correlates by id).
#[derive(Debug, Message)]
#[rtype(result = "Result<Box<RawValue>, RequestError>")]
pub struct Send {
    pub method: String,
    /// Must be a JSON object when present.
    pub params: Option<Box<RawValue>>,
    /// `None`: `gateway.request_timeout_ms`.
    pub timeout: Option<Duration>,
    /// Wait past an `accepted` answer for the final one (method `agent`).
    pub expect_final: bool,
    /// Alive while the caller waits (an HTTP request holds the `Arc`): once
    /// it is gone the request is not written, or its pending entry is
    /// released. `None`: the caller always waits.
    pub caller: Option<std::sync::Weak<()>>,
}

impl Send {
    pub fn new(method: impl Into<String>, params: Option<Value>) -> Self {
        Send {
            method: method.into(),
            params: params.and_then(|p| serde_json::value::to_raw_value(&p).ok()),
            timeout: None,
            expect_final: false,
            caller: None,
        }
    }

    /// Tie the request to a caller that holds `alive` while it waits.
    pub fn caller(mut self, alive: &std::sync::Arc<()>) -> Self {
        self.caller = Some(std::sync::Arc::downgrade(alive));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    pub fn expect_final(mut self, yes: bool) -> Self {
        self.expect_final = yes;
        self
    }
}

/// A request from an API caller (`POST /v1/rpc`, RPC over NATS, `call`),
/// handled by `Supervisor`. Unlike [`Send`], an accepted `agent` run awaited
/// with `expect_final` survives a dropped link: the caller is held and the
/// outcome fetched with `agent.wait` after the next hello-ok.
#[derive(Debug, Message)]
#[rtype(result = "Result<Answer, RequestError>")]
pub struct Rpc(pub Send);

/// A successful answer to an [`Rpc`].
#[derive(Debug)]
pub struct Answer {
    /// The gateway's payload (for a reattached run: the `agent.wait` payload).
    pub payload: Box<RawValue>,
    /// The final answer was recovered with `agent.wait` after the link dropped.
    pub reattached: bool,
}

impl Answer {
    /// The API body: `{"ok":true,"payload":…}`, plus `"reattached":true`.
    pub fn to_body(&self) -> String {
        // The raw payload is spliced in without re-parsing it.
        if self.reattached {
            format!(
                "{{\"ok\":true,\"payload\":{},\"reattached\":true}}",
                self.payload.get()
            )
        } else {
            format!("{{\"ok\":true,\"payload\":{}}}", self.payload.get())
        }
    }
}

/// How a request failed. Every request resolves exactly once: a payload or
/// one of these.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("not connected to the gateway (state {state})")]
    NotConnected {
        state: String,
        next_attempt_in_ms: Option<u64>,
    },
    #[error("no answer from the gateway within {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("the gateway connection was lost before the answer came ({reason}); the request may or may not have run")]
    Disconnected { reason: String },
    #[error("the gateway refused the request: {0}")]
    Rejected(Box<GatewayError>),
    #[error("the bridge is shutting down")]
    ShuttingDown,
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A per-gateway bound (`bound` names its key) was hit; nothing was sent.
    #[error(
        "the bridge has too much in flight to this gateway ({bound} = {limit}); retry shortly"
    )]
    Overloaded {
        bound: &'static str,
        limit: u64,
        retry_after_ms: u64,
    },
    /// The answer was over the inbound frame cap; it was skipped unread.
    #[error("the gateway's answer ({size} bytes) was over gateway.max_frame_bytes ({limit} bytes) and was dropped")]
    FrameTooLarge { size: u64, limit: u64 },
    /// An accepted `agent` run whose final answer could not be delivered.
    /// The run itself goes on (or ended) in the gateway: `run_id` is how to
    /// follow it; sending the request again would start a second run.
    #[error("{}", failure.describe(run_id))]
    Run { run_id: String, failure: RunFailure },
}

/// Why an accepted run's final answer could not be delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum RunFailure {
    /// The caller's own deadline passed first (`BRIDGE_TIMEOUT`).
    Timeout { after_ms: u64 },
    /// The link dropped and the caller was not held for a reattach
    /// (`BRIDGE_DISCONNECTED`, the behaviour before reattaching).
    Disconnected { reason: String },
    /// The bridge is stopping (`BRIDGE_SHUTTING_DOWN`).
    ShuttingDown,
    /// The gateway no longer knows the run (`BRIDGE_RUN_OUTCOME_UNKNOWN`).
    OutcomeUnknown { boot_changed: bool },
}

impl RunFailure {
    fn describe(&self, run_id: &str) -> String {
        match self {
            RunFailure::Timeout { after_ms } => format!(
                "run {run_id} was accepted, but its outcome was not known within {after_ms} ms; it may still be running: follow it with GET /v1/runs/{run_id} (do not send the request again)"
            ),
            RunFailure::Disconnected { reason } => format!(
                "the gateway connection was lost after run {run_id} was accepted ({reason}); the run goes on in the gateway: follow it with GET /v1/runs/{run_id} (do not send the request again)"
            ),
            RunFailure::ShuttingDown => format!(
                "the bridge is shutting down; run {run_id} goes on in the gateway: follow it with GET /v1/runs/{run_id} once the bridge is back"
            ),
            RunFailure::OutcomeUnknown { boot_changed: true } => format!(
                "the gateway restarted and lost run {run_id}: how it ended is unknown; check the session's history (chat.history) before sending the turn again"
            ),
            RunFailure::OutcomeUnknown { boot_changed: false } => format!(
                "the gateway no longer knows run {run_id}: how it ended is unknown; check the session's history (chat.history) before sending the turn again"
            ),
        }
    }
}

impl RequestError {
    /// The stable code (API error `code`, metrics label).
    pub fn code(&self) -> &str {
        match self {
            RequestError::NotConnected { .. } => "BRIDGE_NOT_CONNECTED",
            RequestError::Timeout { .. } => "BRIDGE_TIMEOUT",
            RequestError::Disconnected { .. } => "BRIDGE_DISCONNECTED",
            RequestError::Rejected(e) => &e.code,
            RequestError::ShuttingDown => "BRIDGE_SHUTTING_DOWN",
            RequestError::BadRequest(_) => "BRIDGE_BAD_REQUEST",
            RequestError::Run { failure, .. } => match failure {
                RunFailure::Timeout { .. } => "BRIDGE_TIMEOUT",
                RunFailure::Disconnected { .. } => "BRIDGE_DISCONNECTED",
                RunFailure::ShuttingDown => "BRIDGE_SHUTTING_DOWN",
                RunFailure::OutcomeUnknown { .. } => "BRIDGE_RUN_OUTCOME_UNKNOWN",
            },
            RequestError::Overloaded { .. } => "BRIDGE_OVERLOADED",
            RequestError::FrameTooLarge { .. } => "BRIDGE_FRAME_TOO_LARGE",
        }
    }

    /// The error object as the API and CLI show it: the gateway's own object
    /// intact, or a bridge object of the same shape.
    pub fn to_value(&self) -> Value {
        match self {
            RequestError::Rejected(e) => e.to_value(),
            RequestError::NotConnected {
                state,
                next_attempt_in_ms,
            } => serde_json::json!({
                "code": self.code(), "message": self.to_string(),
                "details": {"state": state, "next_attempt_in_ms": next_attempt_in_ms}
            }),
            RequestError::Run { run_id, failure } => {
                let mut details = serde_json::json!({"runId": run_id});
                match failure {
                    RunFailure::OutcomeUnknown { boot_changed } => {
                        details["boot_changed"] = Value::Bool(*boot_changed);
                    }
                    RunFailure::Timeout { after_ms } => details["after_ms"] = (*after_ms).into(),
                    _ => {}
                }
                serde_json::json!({"code": self.code(), "message": self.to_string(), "details": details})
            }
            RequestError::Overloaded {
                bound,
                limit,
                retry_after_ms,
            } => serde_json::json!({
                "code": self.code(), "message": self.to_string(),
                "details": {"bound": bound, "limit": limit},
                "retryAfterMs": retry_after_ms
            }),
            RequestError::FrameTooLarge { size, limit } => serde_json::json!({
                "code": self.code(), "message": self.to_string(),
                "details": {"size": size, "limit": limit}
            }),
            other => serde_json::json!({"code": other.code(), "message": other.to_string()}),
        }
    }
}

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

/// From `GatewayConnection` to its owner: the session is up.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ConnectionUp {
    pub generation: u64,
    pub hello: HelloOk,
    /// The URL this session was opened to (userinfo redacted): after a
    /// reload it may differ from the configured one until the next attempt.
    pub url: String,
}

/// From `GatewayConnection` to its owner, exactly once, as it stops.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ConnectionDown {
    pub generation: u64,
    pub cause: DisconnectCause,
    /// From a `shutdown` event: when the gateway expects to be back.
    pub restart_expected_ms: Option<u64>,
    /// How long the session was up (None: never reached hello-ok).
    pub connected_for: Option<Duration>,
    pub pending_failed: usize,
}

/// From `GatewayConnection`: events were missed (outer seq jumped).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SeqGap {
    pub generation: u64,
    pub expected: u64,
    pub got: u64,
}

/// A gateway event, to `AgentRegistry` and `EventBroker`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct EventMsg(pub Arc<GatewayEvent>);

/// The connection state as `/readyz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Connecting,
    Connected,
    Backoff,
    Parked,
    Stopping,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Backoff => "backoff",
            LinkState::Parked => "parked",
            LinkState::Stopping => "stopping",
        }
    }
}

/// Link up/down, to `AgentRegistry` (marks the view stale) and `EventBroker`
/// (`bridge.connected` / `bridge.disconnected` messages).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct LinkChanged {
    pub connected: bool,
    /// The lifecycle message's payload.
    pub detail: Value,
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

    #[test]
    fn request_errors_keep_the_gateway_object() {
        let ge: GatewayError = serde_json::from_str(
            r#"{"code":"FORBIDDEN","message":"missing scope: operator.write","details":{"code":"MISSING_SCOPE"}}"#,
        )
        .unwrap();
        let e = RequestError::Rejected(Box::new(ge));
        assert_eq!(e.code(), "FORBIDDEN");
        assert_eq!(e.to_value()["details"]["code"], "MISSING_SCOPE");
        let e = RequestError::NotConnected {
            state: "backoff".into(),
            next_attempt_in_ms: Some(1200),
        };
        assert_eq!(e.to_value()["code"], "BRIDGE_NOT_CONNECTED");
        assert_eq!(e.to_value()["details"]["next_attempt_in_ms"], 1200);
    }
}
