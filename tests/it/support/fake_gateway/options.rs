//! What a test configures: connect and upgrade behaviour, the responder's [`Reply`], and the
//! frame limits the fake shares with the real gateway.

use std::time::Duration;

use serde_json::{json, Value};

/// Inbound frame limit before hello-ok (real gateway: 64 KiB, bigger closes 1009 "").
pub const PRE_AUTH_MAX_FRAME: usize = 64 * 1024;
/// `policy.maxPayload`: inbound frame limit after hello-ok.
pub const MAX_PAYLOAD: usize = 26_214_400;
/// `policy.maxBufferedBytes`.
pub const MAX_BUFFERED_BYTES: usize = 52_428_800;

/// The real gateway's token-mismatch message (PROTOCOL.md §3.2).
pub const TOKEN_MISMATCH_MESSAGE: &str =
    "unauthorized: gateway token mismatch (provide gateway auth token)";

/// What the fake does when a `connect` request arrives (affects connections whose connect
/// arrives after it is set).
#[derive(Clone, Debug)]
pub enum ConnectMode {
    /// Protocol and token checks, then hello-ok (default).
    Hello,
    /// Like `Hello`, but the hello-ok is sent after this delay (checks happen at once).
    HelloAfter(Duration),
    /// Record the params and never answer (the socket stays open and keeps answering pings).
    Never,
    /// Answer `{"ok":false,"error":error}`, then close with `close_code`/`reason`.
    Reject {
        error: Value,
        close_code: u16,
        reason: String,
    },
    /// Drop the TCP connection (no close frame) as soon as the connect arrives.
    DropTcp,
}

impl ConnectMode {
    /// The startup-window refusal of PROTOCOL.md §2.5 (`UNAVAILABLE`, close 1013).
    pub fn starting() -> ConnectMode {
        ConnectMode::Reject {
            error: json!({"code":"UNAVAILABLE","message":"gateway starting; retry shortly",
                "retryable":true,"retryAfterMs":500,"details":{"reason":"startup-sidecars"}}),
            close_code: 1013,
            reason: "gateway starting".into(),
        }
    }

    /// A refusal with `{"code":code,"message":message}` closed 1008 with the message as reason.
    pub fn reject(code: &str, message: &str, details: Option<Value>) -> ConnectMode {
        let mut error = gateway_error(code, message);
        if let Some(d) = details {
            error["details"] = d;
        }
        ConnectMode::Reject {
            error,
            close_code: 1008,
            reason: message.into(),
        }
    }
}

/// What the fake does with the HTTP upgrade request.
#[derive(Clone, Debug)]
pub enum UpgradeMode {
    /// Answer 101 (default).
    Accept,
    /// Answer this HTTP status (e.g. 503) with an empty body and close.
    Status(u16),
    /// Read the request and never answer (until `drop_tcp`/`reset_tcp`/shutdown).
    Hang,
    /// Drop the TCP connection after reading the request.
    DropTcp,
}

#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// Shared token; `None` accepts any (or no) token.
    pub token: Option<String>,
    /// `policy.tickIntervalMs` in hello-ok and period of the optional `tick` events.
    pub tick_interval_ms: u64,
    /// Send `tick` events every `tick_interval_ms` after hello-ok (switchable: `set_ticks`).
    pub send_ticks: bool,
    /// `false` = never send `connect.challenge`.
    pub send_challenge: bool,
    pub answer_connect: ConnectMode,
    /// `agents` of the default `agents.list` answer.
    pub agents: Vec<Value>,
    /// `auth.scopes` in hello-ok; `None` = the requested scopes (`Some(vec![])` = empty-scopes trap).
    pub granted_scopes: Option<Vec<String>>,
    /// No connect within this time closes 1000 "" (real gateway: 15 s). `None` = wait forever.
    pub handshake_timeout: Option<Duration>,
    pub upgrade: UpgradeMode,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            token: None,
            tick_interval_ms: 30_000,
            send_ticks: false,
            send_challenge: true,
            answer_connect: ConnectMode::Hello,
            agents: vec![json!({"id":"main","name":"Main"})],
            granted_scopes: None,
            handshake_timeout: Some(Duration::from_secs(15)),
            upgrade: UpgradeMode::Accept,
        }
    }
}

impl FakeOptions {
    pub fn with_token(token: &str) -> Self {
        FakeOptions {
            token: Some(token.into()),
            ..Default::default()
        }
    }
}

/// A request received after hello-ok.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: String,
    pub method: String,
    /// `params`, or `Value::Null` when omitted.
    pub params: Value,
    /// Connection number (1-based, in accept order; see `connections_total`).
    pub conn: usize,
    /// The whole request frame as received.
    pub frame: Value,
}

/// What the responder answers to a request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// The default responder's answer (health, agents.list, echo, unknown method).
    Default,
    /// `{"ok":true,"payload":..}`
    Ok(Value),
    /// `{"ok":false,"error":..}` (see [`gateway_error`]).
    Err(Value),
    /// No answer, ever.
    Never,
    /// No answer now; the test answers with [`FakeGateway::respond`].
    Manual,
    /// Two `ok:true` responses with the same id, the second after the delay (`agent`).
    Twice(Value, Value, Duration),
    /// The inner reply after a delay.
    Delayed(Duration, Box<Reply>),
    /// Close the connection with this code and reason instead of answering.
    CloseConnection(u16, String),
    /// Drop the TCP connection instead of answering (no close frame).
    DropTcp,
    /// Go half-open instead of answering (like [`FakeGateway::go_silent`]).
    Silent,
}

impl Reply {
    pub fn error(code: &str, message: &str) -> Reply {
        Reply::Err(gateway_error(code, message))
    }
}

/// `{"code":code,"message":message}`
pub fn gateway_error(code: &str, message: &str) -> Value {
    json!({"code": code, "message": message})
}

/// The default responder: `health`, `agents.list` (with `agents`), `echo`, else unknown method.
pub fn default_reply(req: &Request, agents: &[Value]) -> Reply {
    match req.method.as_str() {
        "health" => Reply::Ok(json!({"ok":true})),
        "agents.list" => Reply::Ok(json!({
            "defaultId":"main","mainKey":"main","scope":"per-sender","agents": agents
        })),
        "echo" => Reply::Ok(req.params.clone()),
        m => Reply::error("INVALID_REQUEST", &format!("unknown method: {m}")),
    }
}
