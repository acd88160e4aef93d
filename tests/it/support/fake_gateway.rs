//! In-repo fake OpenClaw gateway (protocol 4, see `/work/shared/PROTOCOL.md`) for integration
//! tests, able to inject the faults the real gateway cannot be made to produce on demand.
//!
//! The WebSocket server is written by hand on a `tokio::net::TcpListener` (HTTP upgrade parsed
//! here, frames through `actix_http::ws::Codec`), so a test controls every byte: garbage text,
//! fragmented messages, oversized frames, half-open sockets (`go_silent`), abrupt TCP drops
//! (`drop_tcp`, FIN) and resets (`reset_tcp`, RST).
//!
//! The server runs on its own OS thread with its own current-thread tokio runtime, so it does not
//! depend on the test's runtime. [`FakeGateway`] is the `Send + Sync` handle; dropping it shuts
//! the server down (every live socket is dropped without a close frame).
//!
//! Per-connection actions (`send_event`, `close`, `drop_tcp`, …) go to the **latest live
//! connection** (the most recently accepted TCP connection that is still open), through one
//! command channel per connection, so they keep their order on the wire.
//!
//! Default behaviour per connection, like the real gateway:
//! 1. `connect.challenge` event (no `seq`), unless `send_challenge` is false;
//! 2. the first frame must be a `connect` request (else `INVALID_REQUEST` + close 1008, or close
//!    1000 for non-JSON; no connect within `handshake_timeout` closes 1000);
//! 3. the answer depends on [`ConnectMode`]; with `Hello`: protocol range check (1002), token check
//!    (1008, exact token-mismatch error), then hello-ok;
//! 4. after hello-ok, requests go to the responder ([`Reply`]), events carry an outer `seq`
//!    starting at 1, pings are answered, optional `tick` events.
//!
//! Frame limits as on the real gateway: 64 KiB before hello-ok, 25 MiB after; a bigger frame
//! closes 1009 with an empty reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_codec::{Framed, FramedParts};
use actix_http::ws::{self, CloseCode, CloseReason, Frame, Item, Message, ProtocolError};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Inbound frame limit before hello-ok (real gateway: 64 KiB, bigger closes 1009 "").
pub const PRE_AUTH_MAX_FRAME: usize = 64 * 1024;
/// `policy.maxPayload`: inbound frame limit after hello-ok.
pub const MAX_PAYLOAD: usize = 26_214_400;
/// `policy.maxBufferedBytes`.
pub const MAX_BUFFERED_BYTES: usize = 52_428_800;
/// Cap on the HTTP upgrade request head.
const MAX_HTTP_HEAD: usize = 16 * 1024;
/// How long a server-initiated close waits for the client's close frame before shutting down.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The real gateway's token-mismatch message (PROTOCOL.md §3.2).
pub const TOKEN_MISMATCH_MESSAGE: &str =
    "unauthorized: gateway token mismatch (provide gateway auth token)";

type Ws = Framed<TcpStream, ws::Codec>;
type Responder = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

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

/// The HTTP upgrade request of a connection.
#[derive(Clone, Debug)]
pub struct UpgradeRequest {
    pub method: String,
    pub path: String,
    /// Header names lower-cased, in order received.
    pub headers: Vec<(String, String)>,
}

impl UpgradeRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

struct State {
    connections_total: usize,
    /// When each TCP connection was accepted (for backoff assertions).
    connect_times: Vec<std::time::Instant>,
    handshakes_total: usize,
    connects_total: usize,
    requests_total: usize,
    pongs_received: usize,
    last_connect_params: Option<Value>,
    last_challenge: Option<Value>,
    last_upgrade: Option<UpgradeRequest>,
    client_closes: Vec<Option<(u16, String)>>,
    responder: Responder,
    connect_mode: ConnectMode,
    upgrade_mode: UpgradeMode,
    boot_id: String,
    token: Option<String>,
    tick_interval_ms: u64,
    send_ticks: bool,
    send_challenge: bool,
    granted_scopes: Option<Vec<String>>,
    /// Issued in hello-ok to connections that send a `device`.
    device_token: Option<String>,
    handshake_timeout: Option<Duration>,
    agents: Vec<Value>,
    /// Live connections (accepted, not yet ended).
    conns: BTreeMap<usize, mpsc::UnboundedSender<ConnCmd>>,
    /// Request id -> connection that received it (for `respond`).
    request_conn: HashMap<String, usize>,
    /// Frozen: connections stop reading their sockets (ticks still go out).
    frozen: bool,
}

struct Shared {
    st: Mutex<State>,
    req_tx: mpsc::UnboundedSender<Request>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum SeqMode {
    Auto,
    Explicit(u64),
    None,
}

enum ConnCmd {
    Event {
        event: String,
        payload: Value,
        seq: SeqMode,
    },
    Messages(Vec<Message>),
    Raw(Vec<u8>),
    Respond {
        id: String,
        ok: bool,
        body: Value,
    },
    Execute {
        req: Request,
        reply: Reply,
    },
    Hello {
        id: String,
        params: Value,
    },
    Close(u16, String),
    DropTcp,
    Reset,
    Silent,
    /// Re-evaluate the loop's conditions (after `freeze`/`thaw`).
    Nudge,
    /// Raw `head` bytes, then `zeros` zero bytes in 64 KiB writes.
    Giant {
        head: Vec<u8>,
        zeros: u64,
    },
}

enum ServerCmd {
    Listen(Option<std::net::TcpListener>, std::sync::mpsc::Sender<()>),
    Shutdown,
}

// ---------------------------------------------------------------------------------------------
// Handle
// ---------------------------------------------------------------------------------------------

/// Handle to a running fake gateway. `Send + Sync`; dropping it stops the server.
pub struct FakeGateway {
    shared: Arc<Shared>,
    port: u16,
    server_tx: mpsc::UnboundedSender<ServerCmd>,
    thread: Option<JoinHandle<()>>,
    requests: tokio::sync::Mutex<mpsc::UnboundedReceiver<Request>>,
}

impl FakeGateway {
    /// Bind `127.0.0.1:0` and start serving on a dedicated thread.
    pub fn start(opts: FakeOptions) -> FakeGateway {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("fake gateway: bind");
        listener.set_nonblocking(true).expect("set_nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        let (req_tx, req_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            st: Mutex::new(State {
                connections_total: 0,
                connect_times: Vec::new(),
                handshakes_total: 0,
                connects_total: 0,
                requests_total: 0,
                pongs_received: 0,
                last_connect_params: None,
                last_challenge: None,
                last_upgrade: None,
                client_closes: Vec::new(),
                responder: Arc::new(|_| Reply::Default),
                connect_mode: opts.answer_connect,
                upgrade_mode: opts.upgrade,
                boot_id: uuid::Uuid::new_v4().to_string(),
                token: opts.token,
                tick_interval_ms: opts.tick_interval_ms,
                send_ticks: opts.send_ticks,
                send_challenge: opts.send_challenge,
                granted_scopes: opts.granted_scopes,
                device_token: None,
                handshake_timeout: opts.handshake_timeout,
                agents: opts.agents,
                conns: BTreeMap::new(),
                request_conn: HashMap::new(),
                frozen: false,
            }),
            req_tx,
        });
        let (server_tx, server_rx) = mpsc::unbounded_channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fake-gateway-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake gateway runtime");
                rt.block_on(serve(listener, sh, server_rx));
                // Dropping the runtime drops every connection task and its socket.
            })
            .expect("spawn fake gateway thread");
        FakeGateway {
            shared,
            port,
            server_tx,
            thread: Some(thread),
            requests: tokio::sync::Mutex::new(req_rx),
        }
    }

    /// `ws://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    // ---- counters and records -----------------------------------------------------------

    /// Accepted TCP connections so far.
    /// When each TCP connection was accepted, in order.
    pub fn connect_times(&self) -> Vec<std::time::Instant> {
        self.shared.lock().connect_times.clone()
    }

    pub fn connections_total(&self) -> usize {
        self.shared.lock().connections_total
    }

    /// Connections currently open (accepted and not ended).
    pub fn live_connections(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// hello-ok responses sent so far.
    pub fn handshakes_total(&self) -> usize {
        self.shared.lock().handshakes_total
    }

    /// `connect` requests received so far (whatever the answer).
    pub fn connects_total(&self) -> usize {
        self.shared.lock().connects_total
    }

    /// Requests received after hello-ok so far.
    pub fn requests_total(&self) -> usize {
        self.shared.lock().requests_total
    }

    pub fn pongs_received(&self) -> usize {
        self.shared.lock().pongs_received
    }

    /// Params of the latest `connect` request (`Value::Null` if it had none).
    pub fn last_connect_params(&self) -> Option<Value> {
        self.shared.lock().last_connect_params.clone()
    }

    /// Payload (`{nonce, ts}`) of the latest `connect.challenge` sent.
    pub fn last_challenge(&self) -> Option<Value> {
        self.shared.lock().last_challenge.clone()
    }

    /// The latest HTTP upgrade request (path, headers).
    pub fn last_upgrade_request(&self) -> Option<UpgradeRequest> {
        self.shared.lock().last_upgrade.clone()
    }

    /// Close frames received from clients, in order (`None` = close frame without a code).
    pub fn client_closes(&self) -> Vec<Option<(u16, String)>> {
        self.shared.lock().client_closes.clone()
    }

    /// The bootId put in hello-ok now.
    pub fn boot_id(&self) -> String {
        self.shared.lock().boot_id.clone()
    }

    // ---- waiting --------------------------------------------------------------------------

    /// Poll `cond` every 5 ms until it holds (true) or `timeout` passes (false).
    pub async fn wait_for(&self, timeout: Duration, cond: impl Fn(&FakeGateway) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn wait_handshakes(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |g| g.handshakes_total() >= n).await
    }

    pub async fn wait_connections(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |g| g.connections_total() >= n).await
    }

    /// The next request received (after hello-ok) on any connection, after the responder
    /// decided its reply (so the reply may already be on the wire).
    pub async fn next_request(&self, timeout: Duration) -> Option<Request> {
        let mut rx = self.requests.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next request with this method (others are skipped and lost).
    pub async fn next_request_for(&self, method: &str, timeout: Duration) -> Option<Request> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.requests.lock().await;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) if r.method == method => return Some(r),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// Requests received and not yet taken, without waiting.
    pub fn drain_requests(&self) -> Vec<Request> {
        let mut out = Vec::new();
        if let Ok(mut rx) = self.requests.try_lock() {
            while let Ok(r) = rx.try_recv() {
                out.push(r);
            }
        }
        out
    }

    // ---- configuration (affects what happens next) --------------------------------------

    /// Replace the responder. Return [`Reply::Default`] to fall back to the default answers.
    pub fn set_responder(&self, f: impl Fn(&Request) -> Reply + Send + Sync + 'static) {
        self.shared.lock().responder = Arc::new(f);
    }

    pub fn reset_responder(&self) {
        self.shared.lock().responder = Arc::new(|_| Reply::Default);
    }

    /// Affects connects received from now on.
    pub fn set_connect_mode(&self, m: ConnectMode) {
        self.shared.lock().connect_mode = m;
    }

    /// Affects upgrade requests received from now on.
    pub fn set_upgrade_mode(&self, m: UpgradeMode) {
        self.shared.lock().upgrade_mode = m;
    }

    pub fn set_token(&self, token: Option<&str>) {
        self.shared.lock().token = token.map(str::to_owned);
    }

    pub fn set_agents(&self, agents: Vec<Value>) {
        self.shared.lock().agents = agents;
    }

    /// Issue this device token in hello-ok to connections with a `device`
    /// (and accept it in place of the shared token).
    pub fn set_device_token(&self, token: Option<&str>) {
        self.shared.lock().device_token = token.map(str::to_owned);
    }

    pub fn set_granted_scopes(&self, scopes: Option<Vec<String>>) {
        self.shared.lock().granted_scopes = scopes;
    }

    /// Switch `tick` events on or off (all connections, immediately).
    pub fn set_ticks(&self, on: bool) {
        self.shared.lock().send_ticks = on;
    }

    /// `policy.tickIntervalMs` and tick period for later hello-oks.
    pub fn set_tick_interval_ms(&self, ms: u64) {
        self.shared.lock().tick_interval_ms = ms;
    }

    pub fn set_send_challenge(&self, on: bool) {
        self.shared.lock().send_challenge = on;
    }

    /// New bootId for later hello-oks.
    pub fn restart_boot(&self) {
        self.shared.lock().boot_id = uuid::Uuid::new_v4().to_string();
    }

    /// Like a gateway restart: new bootId, then every live connection is closed 1012
    /// "service restart".
    pub fn restart(&self) {
        self.restart_boot();
        self.close_all(1012, "service restart");
    }

    /// Close the listening socket: new TCP connects are refused (ECONNREFUSED) until
    /// [`resume_listening`](Self::resume_listening). Live connections are untouched.
    /// Returns once the listener is closed.
    pub fn stop_listening(&self) {
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if self.server_tx.send(ServerCmd::Listen(None, ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Listen again on the same port. Returns once accepting.
    pub fn resume_listening(&self) -> std::io::Result<()> {
        let l = std::net::TcpListener::bind(("127.0.0.1", self.port))?;
        l.set_nonblocking(true)?;
        let (ack_tx, ack_rx) = std::sync::mpsc::channel();
        if self
            .server_tx
            .send(ServerCmd::Listen(Some(l), ack_tx))
            .is_ok()
        {
            let _ = ack_rx.recv_timeout(Duration::from_secs(5));
        }
        Ok(())
    }

    // ---- actions on the latest live connection ------------------------------------------

    fn cmd(&self, c: ConnCmd) {
        let st = self.shared.lock();
        match st.conns.last_key_value() {
            Some((_, tx)) => {
                let _ = tx.send(c);
            }
            None => eprintln!("fake gateway: no live connection for command"),
        }
    }

    fn cmd_all(&self, mk: impl Fn() -> ConnCmd) {
        let st = self.shared.lock();
        for tx in st.conns.values() {
            let _ = tx.send(mk());
        }
    }

    /// Event with the next outer `seq` (none before hello-ok).
    pub fn send_event(&self, event: &str, payload: Value) {
        self.cmd(ConnCmd::Event {
            event: event.into(),
            payload,
            seq: SeqMode::Auto,
        });
    }

    /// Event to every live connection, each with its own next outer `seq`
    /// (the real gateway broadcasts; the outer seq is per socket).
    pub fn broadcast_event(&self, event: &str, payload: Value) {
        self.cmd_all(|| ConnCmd::Event {
            event: event.into(),
            payload: payload.clone(),
            seq: SeqMode::Auto,
        });
    }

    /// Event with an explicit `seq` (`Some(n)`: later auto seqs continue at n+1, so
    /// `Some(expected + 2)` makes a gap) or none (`None`: the counter is untouched).
    pub fn send_event_with_seq(&self, event: &str, payload: Value, seq: Option<u64>) {
        self.cmd(ConnCmd::Event {
            event: event.into(),
            payload,
            seq: match seq {
                Some(n) => SeqMode::Explicit(n),
                None => SeqMode::None,
            },
        });
    }

    /// One raw text frame (garbage, truncated JSON, anything).
    pub fn send_text(&self, text: impl Into<String>) {
        let t: String = text.into();
        self.cmd(ConnCmd::Messages(vec![Message::Text(t.into())]));
    }

    /// One text message as `pieces` frames (FirstText, Continue…, Last), split at byte
    /// boundaries (so possibly inside a UTF-8 sequence). `pieces <= 1` sends one text frame.
    pub fn send_fragmented(&self, text: String, pieces: usize) {
        self.cmd(ConnCmd::Messages(fragment(text.as_bytes(), pieces, false)));
    }

    /// Like `send_fragmented`, with a Ping frame between every two fragments (legal).
    pub fn send_fragmented_with_pings(&self, text: String, pieces: usize) {
        self.cmd(ConnCmd::Messages(fragment(text.as_bytes(), pieces, true)));
    }

    pub fn send_binary(&self, bytes: Vec<u8>) {
        self.cmd(ConnCmd::Messages(vec![Message::Binary(bytes.into())]));
    }

    pub fn send_ping(&self) {
        self.cmd(ConnCmd::Messages(vec![Message::Ping(Bytes::from_static(
            b"fake-ping",
        ))]));
    }

    /// Any sequence of ws messages, encoded by the server codec (no validation).
    pub fn send_messages(&self, msgs: Vec<Message>) {
        self.cmd(ConnCmd::Messages(msgs));
    }

    /// Raw bytes on the TCP stream, below the WebSocket layer (bad frames, masked frames…).
    pub fn send_raw(&self, bytes: Vec<u8>) {
        self.cmd(ConnCmd::Raw(bytes));
    }

    /// Answer a request (for `Reply::Manual`, or an extra/duplicate answer). Goes to the
    /// connection that received that id if still open, else to the latest.
    pub fn respond(&self, id: &str, ok: bool, body: Value) {
        let c = ConnCmd::Respond {
            id: id.into(),
            ok,
            body,
        };
        let st = self.shared.lock();
        let target = st
            .request_conn
            .get(id)
            .and_then(|n| st.conns.get(n))
            .or_else(|| st.conns.last_key_value().map(|(_, tx)| tx));
        match target {
            Some(tx) => {
                let _ = tx.send(c);
            }
            None => eprintln!("fake gateway: no live connection to respond to {id}"),
        }
    }

    /// Close frame with this code and reason (cut to 123 bytes), wait up to 2 s for the
    /// client's close frame, then TCP close. Codes 1005/1006/1015 etc. are sent as given
    /// (awc's decoder rejects them).
    pub fn close(&self, code: u16, reason: &str) {
        self.cmd(ConnCmd::Close(code, reason.into()));
    }

    /// Abrupt TCP close (FIN, or RST if unread data is pending), no close frame.
    pub fn drop_tcp(&self) {
        self.cmd(ConnCmd::DropTcp);
    }

    /// TCP reset (SO_LINGER 0), no close frame: the client sees ECONNRESET.
    pub fn reset_tcp(&self) {
        self.cmd(ConnCmd::Reset);
    }

    /// Half-open: keep the TCP socket but stop reading and writing (no pongs, no events, no
    /// answers). `close`, `drop_tcp` and `reset_tcp` still work.
    pub fn go_silent(&self) {
        self.cmd(ConnCmd::Silent);
    }

    pub fn close_all(&self, code: u16, reason: &str) {
        self.cmd_all(|| ConnCmd::Close(code, reason.into()));
    }

    pub fn drop_all(&self) {
        self.cmd_all(|| ConnCmd::DropTcp);
    }

    /// Stop reading every connection's socket (a frozen gateway: what the
    /// bridge writes piles up in the kernel, then in the bridge); events,
    /// ticks and answers already decided still go out.
    pub fn freeze(&self) {
        self.shared.lock().frozen = true;
        self.cmd_all(|| ConnCmd::Nudge);
    }

    /// Read again after `freeze`.
    pub fn thaw(&self) {
        self.shared.lock().frozen = false;
        self.cmd_all(|| ConnCmd::Nudge);
    }

    /// A text frame whose header declares `declared` bytes, starting with
    /// `prefix`, followed by `zeros` zero bytes (streamed, never held).
    pub fn send_giant_frame(&self, prefix: &str, declared: u64, zeros: u64) {
        let mut head = vec![0x81, 127];
        head.extend_from_slice(&declared.to_be_bytes());
        head.extend_from_slice(prefix.as_bytes());
        self.cmd(ConnCmd::Giant { head, zeros });
    }
}

// The handle must be shareable with async tests and spawned tasks.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FakeGateway>();
};

impl Drop for FakeGateway {
    fn drop(&mut self) {
        let _ = self.server_tx.send(ServerCmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn fragment(data: &[u8], pieces: usize, pings: bool) -> Vec<Message> {
    if pieces <= 1 || data.len() < 2 {
        // Not valid UTF-8 only if the caller made it so; ByteString needs valid UTF-8 here.
        return vec![Message::Text(
            String::from_utf8_lossy(data).into_owned().into(),
        )];
    }
    let pieces = pieces.min(data.len());
    let chunk = data.len().div_ceil(pieces);
    let chunks: Vec<&[u8]> = data.chunks(chunk).collect();
    let last = chunks.len() - 1;
    let mut out = Vec::new();
    for (i, c) in chunks.into_iter().enumerate() {
        if i > 0 && pings {
            out.push(Message::Ping(Bytes::from_static(b"mid-fragment")));
        }
        let b = Bytes::copy_from_slice(c);
        out.push(Message::Continuation(match i {
            0 => Item::FirstText(b),
            i if i == last => Item::Last(b),
            _ => Item::Continue(b),
        }));
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

async fn accept_opt(l: &Option<TcpListener>) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<ServerCmd>,
) {
    let mut listener = Some(TcpListener::from_std(listener).expect("from_std"));
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None | Some(ServerCmd::Shutdown) => break,
                Some(ServerCmd::Listen(l, ack)) => {
                    listener = l.map(|l| TcpListener::from_std(l).expect("from_std"));
                    let _ = ack.send(());
                }
            },
            res = accept_opt(&listener) => match res {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let (tx, rx) = mpsc::unbounded_channel();
                    let n = {
                        let mut st = shared.lock();
                        st.connections_total += 1;
                        st.connect_times.push(std::time::Instant::now());
                        let n = st.connections_total;
                        st.conns.insert(n, tx.clone());
                        n
                    };
                    tokio::spawn(run_conn(stream, n, shared.clone(), tx, rx));
                }
                Err(e) => {
                    eprintln!("fake gateway: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Unregisters the connection however its task ends (also on panic in a responder).
struct ConnGuard {
    shared: Arc<Shared>,
    n: usize,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.lock().conns.remove(&self.n);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Read and parse the HTTP upgrade request. Returns the request and any bytes read past it.
async fn read_upgrade(stream: &mut TcpStream) -> Result<(UpgradeRequest, BytesMut), &'static str> {
    let mut buf = BytesMut::with_capacity(2048);
    let end = loop {
        if let Some(p) = find_head_end(&buf) {
            break p;
        }
        if buf.len() > MAX_HTTP_HEAD {
            return Err("431 Request Header Fields Too Large");
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err(""),
            Ok(_) => {}
        }
    };
    let head = buf.split_to(end + 4);
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((
        UpgradeRequest {
            method,
            path,
            headers,
        },
        buf,
    ))
}

async fn http_status(stream: &mut TcpStream, status: &str) {
    let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Wait for a command that ends a not-upgraded connection.
async fn hang(rx: &mut mpsc::UnboundedReceiver<ConnCmd>, stream: TcpStream) {
    loop {
        match rx.recv().await {
            None | Some(ConnCmd::DropTcp) | Some(ConnCmd::Close(..)) => return,
            Some(ConnCmd::Reset) => {
                let _ = stream.set_zero_linger();
                return;
            }
            Some(_) => {}
        }
    }
}

async fn run_conn(
    mut stream: TcpStream,
    n: usize,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<ConnCmd>,
    mut rx: mpsc::UnboundedReceiver<ConnCmd>,
) {
    let _guard = ConnGuard {
        shared: shared.clone(),
        n,
    };

    // ---- HTTP upgrade ----
    let (req, leftover) = match read_upgrade(&mut stream).await {
        Ok(r) => r,
        Err("") => return,
        Err(status) => return http_status(&mut stream, status).await,
    };
    let key = req.header("sec-websocket-key").map(str::to_owned);
    let is_ws = req
        .header("upgrade")
        .is_some_and(|u| u.to_ascii_lowercase().contains("websocket"));
    let (mode, send_challenge, hs_timeout) = {
        let mut st = shared.lock();
        st.last_upgrade = Some(req.clone());
        (
            st.upgrade_mode.clone(),
            st.send_challenge,
            st.handshake_timeout,
        )
    };
    let key = match key {
        Some(k) if is_ws && req.method == "GET" => k,
        _ => return http_status(&mut stream, "400 Bad Request").await,
    };
    match mode {
        UpgradeMode::Accept => {}
        UpgradeMode::Status(code) => {
            return http_status(&mut stream, &format!("{code} Fake")).await;
        }
        UpgradeMode::Hang => return hang(&mut rx, stream).await,
        UpgradeMode::DropTcp => return,
    }
    let accept = ws::hash_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        String::from_utf8_lossy(&accept)
    );
    if stream.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let codec = ws::Codec::new().max_size(PRE_AUTH_MAX_FRAME);
    let mut ws: Ws = Framed::from_parts(FramedParts::with_read_buf(stream, codec, leftover));

    let mut conn = Conn {
        n,
        shared,
        tx,
        phase: Phase::AwaitConnect,
        next_seq: 1,
        frag: None,
    };

    if send_challenge {
        let payload = json!({"nonce": uuid::Uuid::new_v4().to_string(), "ts": now_ms()});
        conn.shared.lock().last_challenge = Some(payload.clone());
        let ev = json!({"type":"event","event":"connect.challenge","payload":payload});
        if !send_json(&mut ws, &ev).await {
            return;
        }
    }

    let hs_timer = tokio::time::sleep(hs_timeout.unwrap_or(Duration::from_secs(86_400)));
    tokio::pin!(hs_timer);
    let mut tick: Option<tokio::time::Interval> = None;

    loop {
        let silent = conn.phase == Phase::Silent;
        let frozen = conn.shared.lock().frozen;
        let awaiting = conn.phase == Phase::AwaitConnect && hs_timeout.is_some();
        let flow = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(c) => conn.on_cmd(&mut ws, &mut tick, c).await,
                None => Flow::End,
            },
            item = ws.next(), if !silent && !frozen => conn.on_frame(&mut ws, &mut tick, item).await,
            _ = next_tick(&mut tick), if !silent => conn.on_tick(&mut ws).await,
            _ = &mut hs_timer, if awaiting => {
                close_graceful(&mut ws, 1000, "").await;
                Flow::End
            }
        };
        if let Flow::End = flow {
            break;
        }
    }
    // `ws` (and the TCP stream) is dropped here: FIN, or RST if unread input is pending.
}

async fn next_tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn send_msg(ws: &mut Ws, m: Message) -> bool {
    ws.send(m).await.is_ok()
}

async fn send_json(ws: &mut Ws, v: &Value) -> bool {
    send_msg(ws, Message::Text(v.to_string().into())).await
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// Close frame, then read (discarding) until the client's close frame, EOF or 2 s, then shut
/// the write side down. Reading first avoids an RST that could destroy the close frame.
async fn close_graceful(ws: &mut Ws, code: u16, reason: &str) {
    let reason = truncate(reason, 123);
    let msg = Message::Close(Some(CloseReason {
        code: CloseCode::from(code),
        description: (!reason.is_empty()).then(|| reason.to_owned()),
    }));
    if !send_msg(ws, msg).await {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(item) = ws.next().await {
            if matches!(item, Ok(Frame::Close(_)) | Err(_)) {
                break;
            }
        }
    })
    .await;
    let _ = ws.io_mut().shutdown().await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Waiting for the `connect` request.
    AwaitConnect,
    /// `connect` received, answer pending (or never).
    Connecting,
    /// hello-ok sent.
    Ready,
    /// Half-open: neither reading nor writing.
    Silent,
}

enum Flow {
    Continue,
    End,
}

struct Conn {
    n: usize,
    shared: Arc<Shared>,
    /// Sender to this connection's own command channel (delayed replies).
    tx: mpsc::UnboundedSender<ConnCmd>,
    phase: Phase,
    next_seq: u64,
    /// Client continuation frames being reassembled.
    frag: Option<BytesMut>,
}

impl Conn {
    fn later(&self, delay: Duration, cmd: ConnCmd) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(cmd);
        });
    }

    async fn send_res(&self, ws: &mut Ws, id: &str, ok: bool, body: Value) -> Flow {
        let frame = if ok {
            json!({"type":"res","id":id,"ok":true,"payload":body})
        } else {
            json!({"type":"res","id":id,"ok":false,"error":body})
        };
        if send_json(ws, &frame).await {
            Flow::Continue
        } else {
            Flow::End
        }
    }

    async fn on_cmd(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        cmd: ConnCmd,
    ) -> Flow {
        let silent = self.phase == Phase::Silent;
        match cmd {
            ConnCmd::DropTcp => Flow::End,
            ConnCmd::Reset => {
                let _ = ws.io_ref().set_zero_linger();
                Flow::End
            }
            ConnCmd::Close(code, reason) => {
                close_graceful(ws, code, &reason).await;
                Flow::End
            }
            _ if silent => Flow::Continue,
            ConnCmd::Silent => {
                self.phase = Phase::Silent;
                Flow::Continue
            }
            ConnCmd::Event {
                event,
                payload,
                seq,
            } => {
                let seq = match seq {
                    SeqMode::Auto if self.phase == Phase::Ready => {
                        self.next_seq += 1;
                        Some(self.next_seq - 1)
                    }
                    SeqMode::Auto | SeqMode::None => None,
                    SeqMode::Explicit(n) => {
                        self.next_seq = n + 1;
                        Some(n)
                    }
                };
                let mut frame = json!({"type":"event","event":event,"payload":payload});
                if let Some(s) = seq {
                    frame["seq"] = json!(s);
                }
                if send_json(ws, &frame).await {
                    Flow::Continue
                } else {
                    Flow::End
                }
            }
            ConnCmd::Messages(msgs) => {
                for m in msgs {
                    if ws.feed(m).await.is_err() {
                        return Flow::End;
                    }
                }
                match SinkExt::<Message>::flush(ws).await {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::End,
                }
            }
            ConnCmd::Nudge => Flow::Continue,
            ConnCmd::Giant { head, zeros } => {
                if SinkExt::<Message>::flush(ws).await.is_err() {
                    return Flow::End;
                }
                let io = ws.io_mut();
                if io.write_all(&head).await.is_err() {
                    return Flow::End;
                }
                let chunk = vec![0u8; 64 * 1024];
                let mut left = zeros;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if io.write_all(&chunk[..n]).await.is_err() {
                        return Flow::End;
                    }
                    left -= n as u64;
                }
                Flow::Continue
            }
            ConnCmd::Raw(bytes) => {
                if SinkExt::<Message>::flush(ws).await.is_err() {
                    return Flow::End;
                }
                let io = ws.io_mut();
                match io.write_all(&bytes).await {
                    Ok(()) => {
                        let _ = io.flush().await;
                        Flow::Continue
                    }
                    Err(_) => Flow::End,
                }
            }
            ConnCmd::Respond { id, ok, body } => self.send_res(ws, &id, ok, body).await,
            ConnCmd::Execute { req, reply } => self.execute(ws, req, reply).await,
            ConnCmd::Hello { id, params } => {
                if self.phase == Phase::Connecting {
                    self.send_hello(ws, tick, &id, &params).await
                } else {
                    Flow::Continue
                }
            }
        }
    }

    async fn on_tick(&mut self, ws: &mut Ws) -> Flow {
        let on = self.shared.lock().send_ticks;
        if !on || self.phase != Phase::Ready {
            return Flow::Continue;
        }
        self.on_cmd(
            ws,
            &mut None,
            ConnCmd::Event {
                event: "tick".into(),
                payload: json!({"ts": now_ms()}),
                seq: SeqMode::Auto,
            },
        )
        .await
    }

    async fn on_frame(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        item: Option<Result<Frame, ProtocolError>>,
    ) -> Flow {
        let frame = match item {
            None => return Flow::End,
            Some(Err(ProtocolError::Overflow)) => {
                // The real gateway closes 1009 with an empty reason.
                close_graceful(ws, 1009, "").await;
                return Flow::End;
            }
            Some(Err(ProtocolError::Io(_))) => return Flow::End,
            Some(Err(_)) => {
                close_graceful(ws, 1002, "").await;
                return Flow::End;
            }
            Some(Ok(f)) => f,
        };
        match frame {
            Frame::Ping(b) => {
                if send_msg(ws, Message::Pong(b)).await {
                    Flow::Continue
                } else {
                    Flow::End
                }
            }
            Frame::Pong(_) => {
                self.shared.lock().pongs_received += 1;
                Flow::Continue
            }
            Frame::Close(reason) => {
                let rec = reason
                    .as_ref()
                    .map(|r| (u16::from(r.code), r.description.clone().unwrap_or_default()));
                self.shared.lock().client_closes.push(rec);
                let echo = reason.map(|r| CloseReason {
                    code: r.code,
                    description: None,
                });
                let _ = send_msg(ws, Message::Close(echo)).await;
                let _ = ws.io_mut().shutdown().await;
                Flow::End
            }
            Frame::Binary(_) => Flow::Continue,
            Frame::Text(b) => self.on_text(ws, tick, &b).await,
            Frame::Continuation(item) => {
                let (first, data, last) = match item {
                    Item::FirstText(d) | Item::FirstBinary(d) => (true, d, false),
                    Item::Continue(d) => (false, d, false),
                    Item::Last(d) => (false, d, true),
                };
                if first {
                    self.frag = Some(BytesMut::new());
                }
                let Some(buf) = self.frag.as_mut() else {
                    return Flow::Continue;
                };
                buf.extend_from_slice(&data);
                if buf.len() > MAX_PAYLOAD {
                    self.frag = None;
                    close_graceful(ws, 1009, "").await;
                    return Flow::End;
                }
                if last {
                    let whole = self.frag.take().unwrap_or_default().freeze();
                    return self.on_text(ws, tick, &whole).await;
                }
                Flow::Continue
            }
        }
    }

    async fn on_text(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        text: &[u8],
    ) -> Flow {
        let v: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(_) => {
                return if self.phase == Phase::AwaitConnect {
                    // Invalid JSON before connect: close 1000.
                    close_graceful(ws, 1000, "").await;
                    Flow::End
                } else {
                    // Non-JSON after auth is silently ignored.
                    Flow::Continue
                };
            }
        };
        let is_req = v.get("type").and_then(Value::as_str) == Some("req");
        let id = v.get("id").and_then(Value::as_str).map(str::to_owned);
        let method = v.get("method").and_then(Value::as_str).map(str::to_owned);
        let params = v.get("params").cloned().unwrap_or(Value::Null);
        match self.phase {
            Phase::AwaitConnect => match (is_req, id, method.as_deref()) {
                (true, Some(id), Some("connect")) => self.on_connect(ws, tick, &id, params).await,
                (_, id, _) => {
                    let msg = "invalid handshake: first request must be connect";
                    let id = id.unwrap_or_else(|| "invalid".into());
                    let _ = self
                        .send_res(ws, &id, false, gateway_error("INVALID_REQUEST", msg))
                        .await;
                    close_graceful(ws, 1008, msg).await;
                    Flow::End
                }
            },
            Phase::Connecting | Phase::Silent => Flow::Continue,
            Phase::Ready => match (is_req, id, method) {
                (true, Some(id), Some(method)) => {
                    let req = Request {
                        id,
                        method,
                        params,
                        conn: self.n,
                        frame: v,
                    };
                    let responder = {
                        let mut st = self.shared.lock();
                        st.requests_total += 1;
                        st.request_conn.insert(req.id.clone(), self.n);
                        st.responder.clone()
                    };
                    let reply = responder(&req);
                    let _ = self.shared.req_tx.send(req.clone());
                    self.execute(ws, req, reply).await
                }
                (_, id, _) => {
                    let id = id.unwrap_or_else(|| "invalid".into());
                    let err = gateway_error(
                        "INVALID_REQUEST",
                        "invalid request frame: must have required property 'id'",
                    );
                    self.send_res(ws, &id, false, err).await
                }
            },
        }
    }

    async fn execute(&mut self, ws: &mut Ws, req: Request, reply: Reply) -> Flow {
        let reply = match reply {
            Reply::Default => {
                let agents = self.shared.lock().agents.clone();
                default_reply(&req, &agents)
            }
            r => r,
        };
        match reply {
            Reply::Default => unreachable!("default_reply never returns Default"),
            Reply::Ok(v) => self.send_res(ws, &req.id, true, v).await,
            Reply::Err(e) => self.send_res(ws, &req.id, false, e).await,
            Reply::Never | Reply::Manual => Flow::Continue,
            Reply::Twice(first, second, delay) => {
                let id = req.id.clone();
                self.later(
                    delay,
                    ConnCmd::Respond {
                        id: id.clone(),
                        ok: true,
                        body: second,
                    },
                );
                self.send_res(ws, &id, true, first).await
            }
            Reply::Delayed(delay, inner) => {
                self.later(delay, ConnCmd::Execute { req, reply: *inner });
                Flow::Continue
            }
            Reply::CloseConnection(code, reason) => {
                close_graceful(ws, code, &reason).await;
                Flow::End
            }
            Reply::DropTcp => Flow::End,
            Reply::Silent => {
                self.phase = Phase::Silent;
                Flow::Continue
            }
        }
    }

    async fn on_connect(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        id: &str,
        params: Value,
    ) -> Flow {
        let (mode, token) = {
            let mut st = self.shared.lock();
            st.connects_total += 1;
            st.last_connect_params = Some(params.clone());
            (st.connect_mode.clone(), st.token.clone())
        };
        let issued_device_token = self.shared.lock().device_token.clone();
        self.phase = Phase::Connecting;
        match mode {
            ConnectMode::Never => Flow::Continue,
            ConnectMode::DropTcp => Flow::End,
            ConnectMode::Reject {
                error,
                close_code,
                reason,
            } => {
                let _ = self.send_res(ws, id, false, error).await;
                close_graceful(ws, close_code, &reason).await;
                Flow::End
            }
            ConnectMode::Hello | ConnectMode::HelloAfter(_) => {
                // Protocol range must contain 4 (PROTOCOL.md §2.3).
                let minp = params.get("minProtocol").and_then(Value::as_u64);
                let maxp = params.get("maxProtocol").and_then(Value::as_u64);
                if let (Some(a), Some(b)) = (minp, maxp) {
                    if a > 4 || b < 4 {
                        let err = json!({"code":"INVALID_REQUEST","message":"protocol mismatch",
                            "details":{"code":"PROTOCOL_MISMATCH","clientMinProtocol":a,
                            "clientMaxProtocol":b,"expectedProtocol":4,"minimumProbeProtocol":3}});
                        let _ = self.send_res(ws, id, false, err).await;
                        close_graceful(ws, 1002, "protocol mismatch").await;
                        return Flow::End;
                    }
                }
                if let Some(tok) = token {
                    let auth = params.get("auth");
                    let given = auth.and_then(|a| a.get("token")).and_then(Value::as_str);
                    let given_device = auth
                        .and_then(|a| a.get("deviceToken"))
                        .and_then(Value::as_str);
                    // A device token this fake issued stands in for the shared token.
                    let device_ok = given.is_none()
                        && given_device.is_some()
                        && given_device == issued_device_token.as_deref();
                    if given.is_none() && given_device.is_some() && !device_ok {
                        let msg =
                            "unauthorized: device token mismatch (rotate/reissue device token)";
                        let err = json!({"code":"INVALID_REQUEST","message":msg,
                            "details":{"code":"AUTH_DEVICE_TOKEN_MISMATCH","recommendedNextStep":"update_auth_credentials"}});
                        let _ = self.send_res(ws, id, false, err).await;
                        close_graceful(ws, 1008, msg).await;
                        return Flow::End;
                    }
                    if given != Some(tok.as_str()) && !device_ok {
                        // Exact token-mismatch error of PROTOCOL.md §3.2 (also used for a
                        // missing token, which the real gateway reports differently).
                        let with_device = params.get("device").is_some();
                        let err = json!({"code":"INVALID_REQUEST","message":TOKEN_MISMATCH_MESSAGE,
                            "details":{"code":"AUTH_TOKEN_MISMATCH","authReason":"token_mismatch",
                            "canRetryWithDeviceToken":with_device,
                            "recommendedNextStep": if with_device {"retry_with_device_token"} else {"update_auth_credentials"}}});
                        let _ = self.send_res(ws, id, false, err).await;
                        close_graceful(ws, 1008, TOKEN_MISMATCH_MESSAGE).await;
                        return Flow::End;
                    }
                }
                match mode {
                    ConnectMode::HelloAfter(d) => {
                        self.later(
                            d,
                            ConnCmd::Hello {
                                id: id.into(),
                                params,
                            },
                        );
                        Flow::Continue
                    }
                    _ => self.send_hello(ws, tick, id, &params).await,
                }
            }
        }
    }

    async fn send_hello(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        id: &str,
        params: &Value,
    ) -> Flow {
        let (boot_id, tick_ms, scopes) = {
            let st = self.shared.lock();
            let scopes = match &st.granted_scopes {
                Some(s) => json!(s),
                None => params.get("scopes").cloned().unwrap_or_else(|| json!([])),
            };
            (st.boot_id.clone(), st.tick_interval_ms, scopes)
        };
        let auth = {
            let device_token = self.shared.lock().device_token.clone();
            let mut a = json!({"method":"token","role":"operator","scopes":scopes});
            if let Some(t) = device_token {
                if params.get("device").is_some() {
                    a["deviceToken"] = json!(t);
                    a["issuedAtMs"] = json!(1);
                    let by_device = params.get("auth").and_then(|x| x.get("token")).is_none();
                    if by_device {
                        a["method"] = json!("device-token");
                    }
                }
            }
            a
        };
        let hello = json!({
            "type":"hello-ok","protocol":4,
            "server":{"version":"fake-1.0","connId":uuid::Uuid::new_v4().to_string(),"bootId":boot_id},
            "features":{"methods":[],"events":[]},
            "snapshot":{},
            "auth":auth,
            "policy":{"maxPayload":MAX_PAYLOAD,"maxBufferedBytes":MAX_BUFFERED_BYTES,"tickIntervalMs":tick_ms}
        });
        if let Flow::End = self.send_res(ws, id, true, hello).await {
            return Flow::End;
        }
        self.shared.lock().handshakes_total += 1;
        self.phase = Phase::Ready;
        let codec = ws.codec_ref().clone().max_size(MAX_PAYLOAD);
        *ws.codec_mut() = codec;
        let period = Duration::from_millis(tick_ms.max(1));
        let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        *tick = Some(iv);
        Flow::Continue
    }
}

// ---------------------------------------------------------------------------------------------
// Self-tests (awc as the client)
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod self_tests {
    use super::*;
    use awc::BoxedSocket;

    type Client = Framed<BoxedSocket, ws::Codec>;

    const T: Duration = Duration::from_secs(5);

    async fn client(url: &str) -> Client {
        let (_resp, framed) = awc::Client::new()
            .ws(url)
            .max_frame_size(32 << 20)
            .connect()
            .await
            .expect("ws connect");
        framed
    }

    /// Next frame, with a timeout. `None` = timeout.
    async fn next_frame(
        c: &mut Client,
        t: Duration,
    ) -> Option<Option<Result<Frame, ProtocolError>>> {
        tokio::time::timeout(t, c.next()).await.ok()
    }

    /// Next whole JSON message; answers pings, reassembles continuations.
    async fn next_json(c: &mut Client) -> Value {
        let mut frag: Option<Vec<u8>> = None;
        loop {
            let f = next_frame(c, T)
                .await
                .expect("timeout waiting for a frame")
                .expect("stream ended")
                .expect("protocol error");
            match f {
                Frame::Text(b) => return serde_json::from_slice(&b).expect("json"),
                Frame::Ping(b) => c.send(Message::Pong(b)).await.unwrap(),
                Frame::Continuation(Item::FirstText(b)) => frag = Some(b.to_vec()),
                Frame::Continuation(Item::Continue(b)) => frag.as_mut().unwrap().extend(&b),
                Frame::Continuation(Item::Last(b)) => {
                    let mut all = frag.take().unwrap();
                    all.extend(&b);
                    return serde_json::from_slice(&all).expect("json");
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    async fn send_req(c: &mut Client, id: &str, method: &str, params: Value) {
        let f = json!({"type":"req","id":id,"method":method,"params":params});
        c.send(Message::Text(f.to_string().into())).await.unwrap();
    }

    fn connect_params(token: Option<&str>) -> Value {
        let mut p = json!({"minProtocol":4,"maxProtocol":4,
            "client":{"id":"gateway-client","version":"0.1.0","platform":"linux","mode":"backend"},
            "role":"operator","scopes":["operator.read","operator.write"]});
        if let Some(t) = token {
            p["auth"] = json!({"token": t});
        }
        p
    }

    /// Connect, read the challenge, send connect; returns (client, challenge, connect answer).
    async fn handshake(g: &FakeGateway, token: Option<&str>) -> (Client, Value, Value) {
        let mut c = client(&g.url()).await;
        let ch = next_json(&mut c).await;
        send_req(&mut c, "connect-1", "connect", connect_params(token)).await;
        let res = next_json(&mut c).await;
        (c, ch, res)
    }

    /// Reads until the stream ends; returns the close frame seen, if any.
    async fn read_to_end(c: &mut Client) -> (Option<Option<CloseReason>>, Option<String>) {
        let mut close = None;
        loop {
            match next_frame(c, T).await.expect("timeout waiting for end") {
                None => return (close, None),
                Some(Err(e)) => return (close, Some(format!("{e:?}"))),
                Some(Ok(Frame::Close(r))) => {
                    close = Some(r.clone());
                    let _ = c.send(Message::Close(r)).await;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    #[actix_rt::test]
    async fn fake_gateway_handshake_seq_and_responder() {
        let g = FakeGateway::start(FakeOptions::with_token("tok"));
        let (mut c, ch, res) = handshake(&g, Some("tok")).await;
        assert_eq!(ch["type"], "event");
        assert_eq!(ch["event"], "connect.challenge");
        assert!(ch.get("seq").is_none());
        assert!(uuid::Uuid::parse_str(ch["payload"]["nonce"].as_str().unwrap()).is_ok());
        assert!(ch["payload"]["ts"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(g.last_challenge().unwrap(), ch["payload"]);

        assert_eq!(res["type"], "res");
        assert_eq!(res["id"], "connect-1");
        assert_eq!(res["ok"], true);
        let h = &res["payload"];
        assert_eq!(h["type"], "hello-ok");
        assert_eq!(h["protocol"], 4);
        assert_eq!(h["server"]["bootId"], g.boot_id());
        assert_eq!(
            h["auth"]["scopes"],
            json!(["operator.read", "operator.write"])
        );
        assert_eq!(h["policy"]["tickIntervalMs"], 30000);
        assert_eq!(h["policy"]["maxPayload"], 26214400);
        assert!(g.wait_handshakes(1, T).await);
        assert_eq!(g.last_connect_params().unwrap()["auth"]["token"], "tok");
        assert!(g.last_upgrade_request().unwrap().header("origin").is_none());
        assert_eq!(g.last_upgrade_request().unwrap().path, "/");

        // seq: auto 1,2; explicit 10; auto 11; none.
        g.send_event("presence", json!({"a":1}));
        g.send_event("health", json!({}));
        g.send_event_with_seq("x", json!({}), Some(10));
        g.send_event("y", json!({}));
        g.send_event_with_seq("z", json!({}), None);
        let seqs: Vec<Value> = {
            let mut v = Vec::new();
            for _ in 0..5 {
                v.push(next_json(&mut c).await["seq"].clone());
            }
            v
        };
        assert_eq!(
            seqs,
            vec![json!(1), json!(2), json!(10), json!(11), Value::Null]
        );

        // Default responder.
        send_req(&mut c, "r1", "health", json!({})).await;
        let r = next_json(&mut c).await;
        assert_eq!(
            r,
            json!({"type":"res","id":"r1","ok":true,"payload":{"ok":true}})
        );
        send_req(&mut c, "r2", "echo", json!({"x":[1,2]})).await;
        assert_eq!(next_json(&mut c).await["payload"], json!({"x":[1,2]}));
        send_req(&mut c, "r3", "nope", json!({})).await;
        let r = next_json(&mut c).await;
        assert_eq!(r["ok"], false);
        assert_eq!(
            r["error"],
            json!({"code":"INVALID_REQUEST","message":"unknown method: nope"})
        );
        send_req(&mut c, "r4", "agents.list", json!({})).await;
        let r = next_json(&mut c).await;
        assert_eq!(r["payload"]["agents"][0]["id"], "main");
        assert_eq!(r["payload"]["defaultId"], "main");
        let q = g.next_request(T).await.unwrap();
        assert_eq!(
            (q.id.as_str(), q.method.as_str(), q.conn),
            ("r1", "health", 1)
        );
        assert_eq!(g.drain_requests().len(), 3);

        // Garbage after auth is ignored; invalid frame gets "invalid".
        c.send(Message::Text("not json".into())).await.unwrap();
        c.send(Message::Text("{\"type\":\"req\"}".into()))
            .await
            .unwrap();
        let r = next_json(&mut c).await;
        assert_eq!(r["id"], "invalid");
        assert_eq!(r["error"]["code"], "INVALID_REQUEST");

        // Custom responder: Twice, Manual, Delayed, Default fallback.
        g.set_responder(|r| match r.method.as_str() {
            "agent" => Reply::Twice(
                json!({"status":"accepted"}),
                json!({"status":"ok"}),
                Duration::from_millis(50),
            ),
            "manual" => Reply::Manual,
            "slow" => Reply::Delayed(
                Duration::from_millis(50),
                Box::new(Reply::Ok(json!("late"))),
            ),
            _ => Reply::Default,
        });
        send_req(&mut c, "a1", "agent", json!({})).await;
        let r1 = next_json(&mut c).await;
        let r2 = next_json(&mut c).await;
        assert_eq!(
            (r1["id"].clone(), r2["id"].clone()),
            (json!("a1"), json!("a1"))
        );
        assert_eq!(r1["payload"]["status"], "accepted");
        assert_eq!(r2["payload"]["status"], "ok");
        send_req(&mut c, "m1", "manual", json!({})).await;
        send_req(&mut c, "s1", "slow", json!({})).await;
        send_req(&mut c, "h1", "health", json!({})).await;
        assert_eq!(next_json(&mut c).await["id"], "h1");
        assert_eq!(next_json(&mut c).await["payload"], "late");
        g.respond("m1", false, gateway_error("UNAVAILABLE", "busy"));
        let r = next_json(&mut c).await;
        assert_eq!(
            (r["id"].clone(), r["ok"].clone()),
            (json!("m1"), json!(false))
        );

        // Pings both ways.
        g.send_ping();
        let f = next_frame(&mut c, T).await.unwrap().unwrap().unwrap();
        assert!(matches!(f, Frame::Ping(_)));
        if let Frame::Ping(b) = f {
            c.send(Message::Pong(b)).await.unwrap();
        }
        assert!(g.wait_for(T, |g| g.pongs_received() == 1).await);
        c.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        let f = next_frame(&mut c, T).await.unwrap().unwrap().unwrap();
        assert_eq!(f, Frame::Pong(Bytes::from_static(b"p")));

        // Ticks switchable.
        g.set_tick_interval_ms(50);
        g.set_ticks(true);
        let (mut c2, _, res) = handshake(&g, Some("tok")).await;
        assert_eq!(res["payload"]["policy"]["tickIntervalMs"], 50);
        let t1 = next_json(&mut c2).await;
        assert_eq!(
            (t1["event"].clone(), t1["seq"].clone()),
            (json!("tick"), json!(1))
        );
        assert_eq!(next_json(&mut c2).await["seq"], 2);
        g.set_ticks(false);

        // Client close is recorded and echoed.
        c.send(Message::Close(Some(CloseReason {
            code: CloseCode::Normal,
            description: Some("bye".into()),
        })))
        .await
        .unwrap();
        let (close, _) = read_to_end(&mut c).await;
        assert_eq!(u16::from(close.unwrap().unwrap().code), 1000);
        assert_eq!(g.client_closes(), vec![Some((1000, "bye".to_string()))]);
        drop(c2);
        assert!(g.wait_for(T, |g| g.live_connections() == 0).await);
    }

    #[actix_rt::test]
    async fn fake_gateway_token_mismatch() {
        let g = FakeGateway::start(FakeOptions::with_token("right"));
        let (mut c, _, res) = handshake(&g, Some("wrong")).await;
        assert_eq!(res["ok"], false);
        assert_eq!(
            res["error"],
            json!({"code":"INVALID_REQUEST",
                "message":"unauthorized: gateway token mismatch (provide gateway auth token)",
                "details":{"code":"AUTH_TOKEN_MISMATCH","authReason":"token_mismatch",
                    "canRetryWithDeviceToken":false,"recommendedNextStep":"update_auth_credentials"}})
        );
        let (close, err) = read_to_end(&mut c).await;
        let close = close.expect("close frame").expect("close reason");
        assert_eq!(u16::from(close.code), 1008);
        assert_eq!(close.description.as_deref(), Some(TOKEN_MISMATCH_MESSAGE));
        assert!(err.is_none(), "{err:?}");
        assert_eq!(g.handshakes_total(), 0);
        assert_eq!(g.connects_total(), 1);
    }

    #[actix_rt::test]
    async fn fake_gateway_connect_modes() {
        let g = FakeGateway::start(FakeOptions {
            send_challenge: false,
            answer_connect: ConnectMode::starting(),
            ..Default::default()
        });
        // No challenge: the first thing we read is the answer to connect.
        let mut c = client(&g.url()).await;
        send_req(&mut c, "c", "connect", connect_params(None)).await;
        let r = next_json(&mut c).await;
        assert_eq!(r["error"]["code"], "UNAVAILABLE");
        let (close, _) = read_to_end(&mut c).await;
        assert_eq!(u16::from(close.unwrap().unwrap().code), 1013);

        // Protocol mismatch.
        g.set_connect_mode(ConnectMode::Hello);
        let mut c = client(&g.url()).await;
        let mut p = connect_params(None);
        p["minProtocol"] = json!(3);
        p["maxProtocol"] = json!(3);
        send_req(&mut c, "c", "connect", p).await;
        let r = next_json(&mut c).await;
        assert_eq!(r["error"]["details"]["code"], "PROTOCOL_MISMATCH");
        let (close, _) = read_to_end(&mut c).await;
        let close = close.unwrap().unwrap();
        assert_eq!(u16::from(close.code), 1002);

        // First request not connect.
        let mut c = client(&g.url()).await;
        send_req(&mut c, "x", "health", json!({})).await;
        let r = next_json(&mut c).await;
        assert_eq!(
            r["error"]["message"],
            "invalid handshake: first request must be connect"
        );
        let (close, _) = read_to_end(&mut c).await;
        assert_eq!(u16::from(close.unwrap().unwrap().code), 1008);

        // Pre-auth oversize frame: 1009, empty reason.
        let mut c = client(&g.url()).await;
        c.send(Message::Text("x".repeat(70 * 1024).into()))
            .await
            .unwrap();
        let (close, _) = read_to_end(&mut c).await;
        let close = close.unwrap().unwrap();
        assert_eq!(u16::from(close.code), 1009);
        assert_eq!(close.description, None);

        // HelloAfter + empty granted scopes + restart_boot.
        let boot1 = g.boot_id();
        g.restart_boot();
        assert_ne!(boot1, g.boot_id());
        g.set_granted_scopes(Some(vec![]));
        g.set_send_challenge(true);
        g.set_connect_mode(ConnectMode::HelloAfter(Duration::from_millis(200)));
        let start = Instant::now();
        let (_c, _, res) = handshake(&g, None).await;
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(res["payload"]["auth"]["scopes"], json!([]));
        assert_eq!(res["payload"]["server"]["bootId"], g.boot_id());

        // Handshake timeout closes 1000.
        let g2 = FakeGateway::start(FakeOptions {
            handshake_timeout: Some(Duration::from_millis(100)),
            ..Default::default()
        });
        let mut c = client(&g2.url()).await;
        let (close, _) = read_to_end(&mut c).await;
        assert_eq!(u16::from(close.unwrap().unwrap().code), 1000);
    }

    #[actix_rt::test]
    async fn fake_gateway_fragmented_arrives_as_continuations() {
        let g = FakeGateway::start(FakeOptions::default());
        let (mut c, _, _) = handshake(&g, None).await;
        // "é" is two bytes: splitting into 1-byte-ish pieces cuts inside it.
        let text = json!({"type":"event","event":"big","payload":{"s":"héllo wörld"}}).to_string();
        g.send_fragmented(text.clone(), 3);
        let mut kinds = Vec::new();
        let mut all: Vec<u8> = Vec::new();
        loop {
            match next_frame(&mut c, T).await.unwrap().unwrap().unwrap() {
                Frame::Continuation(Item::FirstText(b)) => {
                    kinds.push("first");
                    all.extend(&b);
                }
                Frame::Continuation(Item::Continue(b)) => {
                    kinds.push("continue");
                    all.extend(&b);
                }
                Frame::Continuation(Item::Last(b)) => {
                    kinds.push("last");
                    all.extend(&b);
                    break;
                }
                f => panic!("unexpected {f:?}"),
            }
        }
        assert_eq!(kinds, vec!["first", "continue", "last"]);
        assert_eq!(all, text.as_bytes());

        // Every byte its own fragment (cuts inside UTF-8) with pings in between.
        g.send_fragmented_with_pings(text.clone(), text.len());
        let v = next_json(&mut c).await;
        assert_eq!(v.to_string(), text);

        // Oversize for the client: max_frame_size 1 KiB client gets Overflow, then continues.
        let (_resp, mut small) = awc::Client::new()
            .ws(g.url())
            .max_frame_size(1024)
            .connect()
            .await
            .unwrap();
        let _challenge = next_frame(&mut small, T).await.unwrap().unwrap().unwrap();
        send_req(&mut small, "c", "connect", connect_params(None)).await;
        // hello-ok is < 1 KiB here.
        let _hello = next_frame(&mut small, T).await.unwrap().unwrap().unwrap();
        g.send_text("y".repeat(4096));
        g.send_text("\"after\"");
        let e = next_frame(&mut small, T).await.unwrap().unwrap();
        assert!(matches!(e, Err(ProtocolError::Overflow)), "{e:?}");
        let f = next_frame(&mut small, T).await.unwrap().unwrap().unwrap();
        assert_eq!(f, Frame::Text(Bytes::from_static(b"\"after\"")));
    }

    #[actix_rt::test]
    async fn fake_gateway_close_code_arrives() {
        let g = FakeGateway::start(FakeOptions::default());
        let (mut c, _, _) = handshake(&g, None).await;
        g.close(4000, "connect timeout");
        let (close, err) = read_to_end(&mut c).await;
        let close = close.expect("close frame").expect("reason");
        assert_eq!(u16::from(close.code), 4000);
        assert_eq!(close.description.as_deref(), Some("connect timeout"));
        assert!(err.is_none());

        // restart(): 1012 + new bootId.
        let boot = g.boot_id();
        let (mut c, _, _) = handshake(&g, None).await;
        g.restart();
        let (close, _) = read_to_end(&mut c).await;
        assert_eq!(u16::from(close.unwrap().unwrap().code), 1012);
        let (_c, _, res) = handshake(&g, None).await;
        assert_ne!(res["payload"]["server"]["bootId"], json!(boot));

        // A responder can close instead of answering.
        g.set_responder(|_| Reply::CloseConnection(1011, "boom".into()));
        let (mut c, _, _) = handshake(&g, None).await;
        send_req(&mut c, "x", "health", json!({})).await;
        let (close, _) = read_to_end(&mut c).await;
        assert_eq!(u16::from(close.unwrap().unwrap().code), 1011);
    }

    #[actix_rt::test]
    async fn fake_gateway_drop_reset_silent() {
        let g = FakeGateway::start(FakeOptions::default());
        let (mut c, _, _) = handshake(&g, None).await;
        g.send_event("before", json!({}));
        g.drop_tcp();
        assert_eq!(next_json(&mut c).await["event"], "before");
        let (close, err) = read_to_end(&mut c).await;
        assert!(close.is_none(), "drop_tcp must not send a close frame");
        eprintln!("drop_tcp -> client saw end with error {err:?}");

        let (mut c, _, _) = handshake(&g, None).await;
        g.reset_tcp();
        let (close, err) = read_to_end(&mut c).await;
        assert!(close.is_none());
        eprintln!("reset_tcp -> client saw end with error {err:?}");

        // Half-open: nothing comes back, but the socket stays open.
        let (mut c, _, _) = handshake(&g, None).await;
        g.go_silent();
        // go_silent travels over the command channel while our ping travels
        // over TCP: let the command land first so the ping is not answered.
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        g.send_event("lost", json!({}));
        c.send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        send_req(&mut c, "h", "health", json!({})).await;
        assert!(
            next_frame(&mut c, Duration::from_millis(300))
                .await
                .is_none(),
            "silent connection must send nothing and stay open"
        );
        assert_eq!(g.live_connections(), 1);
        g.drop_tcp();
        let (close, _) = read_to_end(&mut c).await;
        assert!(close.is_none());
        assert!(g.wait_for(T, |g| g.live_connections() == 0).await);
    }

    #[actix_rt::test]
    async fn fake_gateway_listening_and_upgrade_modes() {
        let g = FakeGateway::start(FakeOptions::default());
        g.stop_listening();
        let e = awc::Client::new().ws(g.url()).connect().await;
        assert!(e.is_err());
        g.resume_listening().unwrap();
        let (_c, _, res) = handshake(&g, None).await;
        assert_eq!(res["ok"], true);

        g.set_upgrade_mode(UpgradeMode::Status(503));
        match awc::Client::new().ws(g.url()).connect().await {
            Err(awc::error::WsClientError::InvalidResponseStatus(s)) => {
                assert_eq!(s.as_u16(), 503)
            }
            other => panic!("expected 503, got {:?}", other.map(|_| ())),
        }
        g.set_upgrade_mode(UpgradeMode::Accept);
        // The refused attempt never reached the fake: 1 handshake + 1 rejected upgrade.
        assert_eq!(g.connections_total(), 2);
        drop(g);
    }

    #[actix_rt::test]
    async fn fake_gateway_big_frames_and_raw_bytes() {
        let g = FakeGateway::start(FakeOptions::default());
        let (mut c, _, _) = handshake(&g, None).await;
        // 26 MiB in one frame reaches a client with max_frame_size 32 MiB.
        let big = format!("\"{}\"", "z".repeat(26 << 20));
        g.send_text(big.clone());
        let f = next_frame(&mut c, T).await.unwrap().unwrap().unwrap();
        assert!(matches!(&f, Frame::Text(b) if b.len() == big.len()));
        // After hello-ok the fake accepts frames up to maxPayload (here 1 MiB echo).
        let p = json!({"s": "q".repeat(1 << 20)});
        send_req(&mut c, "e", "echo", p.clone()).await;
        assert_eq!(next_json(&mut c).await["payload"], p);
        // Raw bytes below the ws layer: a masked server frame is a client protocol error.
        g.send_raw(vec![0x81, 0x81, 1, 2, 3, 4, b'x' ^ 1]);
        let e = next_frame(&mut c, T).await.unwrap().unwrap();
        assert!(matches!(e, Err(ProtocolError::MaskedFrame)), "{e:?}");
        // The bad header is not consumed: the same error comes back on every poll (sticky),
        // so a client must treat it as fatal. Overflow, by contrast, skips the frame.
        let e = next_frame(&mut c, T).await.unwrap().unwrap();
        assert!(matches!(e, Err(ProtocolError::MaskedFrame)), "{e:?}");

        // Binary frames pass through.
        let (mut c, _, _) = handshake(&g, None).await;
        g.send_binary(vec![1, 2, 3]);
        let f = next_frame(&mut c, T).await.unwrap().unwrap().unwrap();
        assert_eq!(f, Frame::Binary(Bytes::from_static(&[1, 2, 3])));
    }
}

// ---- accepted runs as the real gateway keeps them (PROTOCOL.md §5.1) ---------------------

/// A responder for `agent`, `agent.wait` and `sessions.list` that keeps runs the way the
/// real gateway does: an accepted run goes on whatever happens to the socket, `agent.wait`
/// answers its outcome (blocking up to `timeoutMs` while it runs), an unknown run answers
/// `timeout`, and `sessions.list` pages its rows (`hasMore`/`nextOffset`). A run's length
/// comes from its message: `"sleep:MS"` (default 200 ms); `"fail:MS"` ends in `error`.
#[derive(Clone, Default)]
pub struct FakeRuns {
    inner: Arc<std::sync::Mutex<RunBook>>,
}

#[derive(Default)]
struct RunBook {
    /// run id → (accepted at, length, fails)
    runs: HashMap<String, (std::time::Instant, Duration, bool)>,
    /// `agent` requests seen per idempotencyKey.
    agent_requests: HashMap<String, usize>,
    /// Sessions per `sessions.list` page (0: all on one page).
    page_size: usize,
    /// Rows of idle sessions listed besides the runs' (paging tests).
    idle_sessions: usize,
}

impl FakeRuns {
    pub fn new(page_size: usize, idle_sessions: usize) -> FakeRuns {
        let runs = FakeRuns::default();
        {
            let mut b = runs.book();
            b.page_size = page_size;
            b.idle_sessions = idle_sessions;
        }
        runs
    }

    fn book(&self) -> std::sync::MutexGuard<'_, RunBook> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Install as the gateway's responder (other methods: the default replies).
    pub fn install(&self, gw: &FakeGateway) {
        let runs = self.clone();
        gw.set_responder(move |r| runs.reply(r).unwrap_or(Reply::Default));
    }

    /// A run the gateway knows (as if accepted from another client): `len` from now.
    pub fn add(&self, run_id: &str, len: Duration, fails: bool) {
        self.book()
            .runs
            .insert(run_id.into(), (std::time::Instant::now(), len, fails));
    }

    /// A gateway restart: every run is forgotten.
    pub fn lose_all(&self) {
        self.book().runs.clear();
    }

    /// `agent` requests seen per idempotencyKey.
    pub fn agent_requests(&self) -> HashMap<String, usize> {
        self.book().agent_requests.clone()
    }

    fn outcome(run_id: &str, at: std::time::Instant, len: Duration, fails: bool) -> Value {
        let started = epoch_ms_of(at);
        json!({"runId": run_id, "status": if fails { "error" } else { "ok" },
            "startedAt": started, "endedAt": started + len.as_millis() as u64,
            "stopReason": if fails { "error" } else { "stop" },
            "terminalReply": {"disposition": "visible", "text": format!("done {run_id}")}})
    }

    /// The reply to `agent`, `agent.wait` or `sessions.list`; `None` for other methods.
    pub fn reply(&self, req: &Request) -> Option<Reply> {
        let now = std::time::Instant::now();
        match req.method.as_str() {
            "agent" => {
                let key = req.params["idempotencyKey"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let msg = req.params["message"].as_str().unwrap_or("");
                let (fails, ms) = match msg.split_once(':') {
                    Some(("fail", ms)) => (true, ms.parse().unwrap_or(200)),
                    Some((_, ms)) => (false, ms.parse().unwrap_or(200)),
                    None => (false, 200),
                };
                let len = Duration::from_millis(ms);
                let mut b = self.book();
                *b.agent_requests.entry(key.clone()).or_default() += 1;
                b.runs.insert(key.clone(), (now, len, fails));
                let accepted =
                    json!({"runId": key, "status": "accepted", "acceptedAt": epoch_ms_of(now)});
                Some(Reply::Twice(
                    accepted,
                    Self::outcome(&key, now, len, fails),
                    len,
                ))
            }
            "agent.wait" => {
                let run_id = req.params["runId"].as_str().unwrap_or("").to_owned();
                let wait = Duration::from_millis(req.params["timeoutMs"].as_u64().unwrap_or(0));
                let timeout = Reply::Ok(json!({"runId": run_id, "status": "timeout"}));
                let b = self.book();
                let Some(&(at, len, fails)) = b.runs.get(&run_id) else {
                    return Some(timeout);
                };
                let left = (at + len).saturating_duration_since(now);
                let done = Reply::Ok(Self::outcome(&run_id, at, len, fails));
                Some(if left.is_zero() {
                    done
                } else if left <= wait {
                    Reply::Delayed(left, Box::new(done))
                } else {
                    Reply::Delayed(wait, Box::new(timeout))
                })
            }
            "sessions.list" => {
                let b = self.book();
                let mut rows: Vec<Value> = (0..b.idle_sessions)
                    .map(|i| json!({"key": format!("agent:idle{i}:main"), "agentId": format!("idle{i}"), "status": "done", "activeRunIds": []}))
                    .collect();
                let mut active: Vec<&String> = b
                    .runs
                    .iter()
                    .filter(|(_, (at, len, _))| *at + *len > now)
                    .map(|(id, _)| id)
                    .collect();
                active.sort();
                rows.push(json!({"key": "agent:main:main", "agentId": "main",
                    "status": if active.is_empty() { "done" } else { "running" },
                    "hasActiveRun": !active.is_empty(), "activeRunIds": active}));
                let total = rows.len();
                let offset = req.params["offset"].as_u64().unwrap_or(0) as usize;
                let size = if b.page_size == 0 { total } else { b.page_size };
                let page: Vec<Value> = rows.into_iter().skip(offset).take(size).collect();
                let next = offset + page.len();
                Some(Reply::Ok(json!({"count": page.len(), "totalCount": total,
                    "hasMore": next < total, "nextOffset": if next < total { json!(next) } else { Value::Null },
                    "sessions": page})))
            }
            _ => None,
        }
    }
}

fn epoch_ms_of(at: std::time::Instant) -> u64 {
    let ago = at.elapsed();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.saturating_sub(ago.as_millis() as u64)
}
