//! The [`FakeGateway`] handle: start, inspect, reconfigure, and act on the latest connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_http::ws::{Item, Message};
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use super::options::{ConnectMode, FakeOptions, Reply, Request, UpgradeMode};
use super::server::serve;
use super::state::{ConnCmd, SeqMode, ServerCmd, Shared, State};
use super::upgrade::UpgradeRequest;

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
