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

pub use crate::retry::{DisconnectCause, RetryClass};

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

/// From `GatewayConnection`: a `health` event named these agents (sorted,
/// never empty). The supervisor compares them with the last `agents.list` and
/// resyncs when they differ.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct HealthSeen {
    pub generation: u64,
    pub agent_ids: Vec<String>,
}

/// A gateway event, to `AgentRegistry` and `EventBroker`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct EventMsg(pub Arc<GatewayEvent>);

/// Gateway events in the order they came, to `AgentRegistry` and
/// `EventBroker`: what one read pass of the connection decoded (up to
/// [`FRAMES_PER_PASS`] frames), handed over in one message instead of one per
/// event.
///
/// The registry's and the broker's mailboxes hold [`EVENT_MAILBOX`]
/// messages: at most [`EVENTS_WAITING`] events queued toward each.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct EventBatch(pub Vec<Arc<GatewayEvent>>);

/// Frames the connection reads in one pass before the thread's other work
/// runs; a pass's events go over as one [`EventBatch`] and its answers to
/// their callers together, at its end. 64: with passes of 16 (actix's
/// `add_stream`) paired runs gave 8–9 % fewer requests/s and 5 % more CPU
/// per event (README "Performance").
pub const FRAMES_PER_PASS: usize = 64;

/// At most this many events wait toward the registry or the broker.
pub const EVENTS_WAITING: usize = 65_536;

/// Mailbox capacity of `AgentRegistry` and `EventBroker`, in messages. An
/// [`EventBatch`] holds the events of one read pass (at most
/// [`FRAMES_PER_PASS`]), so this bounds the events waiting for either at
/// [`EVENTS_WAITING`]; beyond it the connection drops and counts them
/// (`gateway.event_undelivered`).
pub const EVENT_MAILBOX: usize = EVENTS_WAITING / FRAMES_PER_PASS;

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
