//! What the handle and the connection tasks share: counters, the last things seen, the
//! current modes, and one command channel per live connection.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use actix_http::ws::Message;
use serde_json::Value;
use tokio::sync::mpsc;

use super::options::{ConnectMode, Reply, Request, UpgradeMode};
use super::upgrade::UpgradeRequest;

pub(super) type Responder = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

pub(super) struct State {
    pub(super) connections_total: usize,
    /// When each TCP connection was accepted (for backoff assertions).
    pub(super) connect_times: Vec<std::time::Instant>,
    pub(super) handshakes_total: usize,
    pub(super) connects_total: usize,
    pub(super) requests_total: usize,
    pub(super) pongs_received: usize,
    pub(super) last_connect_params: Option<Value>,
    pub(super) last_challenge: Option<Value>,
    pub(super) last_upgrade: Option<UpgradeRequest>,
    pub(super) client_closes: Vec<Option<(u16, String)>>,
    pub(super) responder: Responder,
    pub(super) connect_mode: ConnectMode,
    pub(super) upgrade_mode: UpgradeMode,
    pub(super) boot_id: String,
    pub(super) token: Option<String>,
    pub(super) tick_interval_ms: u64,
    pub(super) send_ticks: bool,
    pub(super) send_challenge: bool,
    pub(super) granted_scopes: Option<Vec<String>>,
    /// Issued in hello-ok to connections that send a `device`.
    pub(super) device_token: Option<String>,
    pub(super) handshake_timeout: Option<Duration>,
    pub(super) agents: Vec<Value>,
    /// Live connections (accepted, not yet ended).
    pub(super) conns: BTreeMap<usize, mpsc::UnboundedSender<ConnCmd>>,
    /// Request id -> connection that received it (for `respond`).
    pub(super) request_conn: HashMap<String, usize>,
    /// Frozen: connections stop reading their sockets (ticks still go out).
    pub(super) frozen: bool,
}

pub(super) struct Shared {
    pub(super) st: Mutex<State>,
    pub(super) req_tx: mpsc::UnboundedSender<Request>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) enum SeqMode {
    Auto,
    Explicit(u64),
    None,
}

pub(super) enum ConnCmd {
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

pub(super) enum ServerCmd {
    Listen(Option<std::net::TcpListener>, std::sync::mpsc::Sender<()>),
    Shutdown,
}
