//! `Supervisor`: the gateway link's lifecycle, and the stable address the rest
//! of the program talks to.
//!
//! **Owns:** the current `GatewayConnection` (if any) and its generation
//! number, the link state machine (connecting → connected → backoff / parked),
//! the retry schedule (full-jitter [`Backoff`](crate::backoff::Backoff), reset
//! only after a stable session), the last error, the last `bootId`.
//!
//! **Handles:** [`Send`] from the HTTP API / CLI (forwarded to the live
//! connection, or refused at once with `NotConnected` carrying the state and
//! next attempt time: nothing is queued or replayed), [`GetStatus`] (for
//! `/readyz`), [`WaitReady`] (CLI), [`RetryNow`] (SIGHUP), [`Shutdown`];
//! and from its connection [`ConnectionUp`], [`ConnectionDown`], [`SeqGap`].
//!
//! **Sends:** [`LinkChanged`] to the registry and broker; after each hello-ok
//! and each seq gap it fetches `agents.list` and hands it to the registry.
//!
//! **Restarts:** it never reuses a connection: every attempt is a fresh
//! `GatewayConnection` (fresh socket, handshake, empty pending map). This is
//! why it is our own actor and not `actix::Supervisor`, which restarts the same
//! value.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::{
    Actor, Addr, AsyncContext, Context, Handler, Message, MessageResult, Recipient, ResponseFuture,
    SpawnHandle,
};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::gateway::{Close, ConnectionConfig, GatewayConnection, Wiring};
use super::messages::{
    ConnectionDown, ConnectionUp, DisconnectCause, EventMsg, LinkChanged, LinkState, RequestError,
    RetryClass, Send, SeqGap,
};
use super::registry::{AgentsSnapshot, SessionsSnapshot};
use crate::backoff::Backoff;
use crate::telemetry::events as ev;

/// After an *announced* restart (a `shutdown` event with `restartExpectedMs`,
/// then close 1012) the supervisor polls quickly instead of backing off, until
/// `restartExpectedMs` plus this grace: restarts were seen to take 2.5–13 s.
/// A plain stop (no `restartExpectedMs`) backs off as usual.
const RESTART_GRACE: Duration = Duration::from_secs(15);
/// Poll interval inside the restart window (plus up to the same in jitter).
/// Polls are logged at debug level: one restart must not flood the log.
const RESTART_POLL: Duration = Duration::from_millis(100);
/// Registry resyncs (`agents.list` + `sessions.list`) are at most this frequent.
const RESYNC_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// A `retryAfterMs` beyond this is not believed: a parked link retries
/// at least this often (SIGHUP retries at once anyway).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// `info`, or `debug` when `quiet` (fast restart polls after the first).
macro_rules! info_or_debug {
    ($quiet:expr, $($arg:tt)+) => {
        if $quiet { tracing::debug!($($arg)+) } else { tracing::info!($($arg)+) }
    };
}

/// `warn`, or `debug` when `quiet` (the same refusal again while parked).
macro_rules! warn_or_debug {
    ($quiet:expr, $($arg:tt)+) => {
        if $quiet { tracing::debug!($($arg)+) } else { tracing::warn!($($arg)+) }
    };
}

/// Daemon: retry forever. FailFast (`call`): only retry what the gateway said
/// is transient (startup window, restart); report anything else at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Daemon,
    FailFast,
}

/// Fixed settings of a supervisor.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    pub connection: Arc<ConnectionConfig>,
    pub backoff: Backoff,
    pub stable_after: Duration,
    pub park_retry: Duration,
    pub mode: Mode,
    /// Where device tokens issued at hello-ok are kept (device identity on).
    pub device_tokens: Option<Arc<crate::identity::DeviceTokenStore>>,
}

/// The last thing that went wrong, for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// What the operator must do, when a retry cannot fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The gateway's error object, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway_error: Option<serde_json::Value>,
    pub at_ms: u64,
}

/// The live session, for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayInfo {
    pub url: String,
    pub server_version: Option<String>,
    pub protocol: Option<u32>,
    pub conn_id: Option<String>,
    pub boot_id: Option<String>,
    /// Epoch ms of hello-ok.
    pub connected_since: Option<u64>,
    pub scopes: Vec<String>,
}

/// The link as `/readyz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: LinkState,
    pub gateway: GatewayInfo,
    pub last_error: Option<LastError>,
    pub next_attempt_in_ms: Option<u64>,
    /// Consecutive failed attempts since the last stable session.
    pub attempt: u32,
}

#[derive(Debug, Message)]
#[rtype(result = "Status")]
pub struct GetStatus;

/// Resolve when connected; in FailFast mode fail with the first final cause.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ReadyError>")]
pub struct WaitReady {
    pub timeout: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadyError {
    #[error("{}", .0.message())]
    Failed(DisconnectCause),
    #[error("not connected after {0:?}")]
    Timeout(Duration),
    #[error("the bridge is shutting down")]
    ShuttingDown,
}

/// Retry now (SIGHUP, config reload): skips a parked or backoff wait.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RetryNow;

/// New settings (SIGHUP reload). Used from the next connection attempt on; a
/// live session is kept.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Reconfigure(pub SupervisorConfig);

/// Close the link with 1000, fail pending requests with `ShuttingDown`, stop.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Where link changes and snapshots go.
#[derive(Clone, Default)]
pub struct Outputs {
    pub link: Vec<Recipient<LinkChanged>>,
    pub events: Option<Recipient<EventMsg>>,
    pub agent_events: Option<Recipient<EventMsg>>,
    pub snapshots: Option<Recipient<AgentsSnapshot>>,
    pub sessions: Option<Recipient<SessionsSnapshot>>,
}

pub struct Supervisor {
    cfg: SupervisorConfig,
    out: Outputs,
    conn: Option<Addr<GatewayConnection>>,
    /// Incremented per attempt; reports from older connections are ignored.
    generation: u64,
    state: LinkState,
    /// Consecutive failures since the last stable session (backoff exponent).
    attempt: u32,
    retry_timer: Option<SpawnHandle>,
    next_attempt_at: Option<Instant>,
    stable_timer: Option<SpawnHandle>,
    last_error: Option<LastError>,
    /// The park reason last logged, so a parked link does not spam the log.
    parked_code: Option<String>,
    info: GatewayInfo,
    last_boot_id: Option<String>,
    restart_window_until: Option<Instant>,
    /// Polls scheduled in the current restart window (only the first is
    /// logged at info).
    restart_polls: u32,
    last_resync: Option<Instant>,
    resync_scheduled: bool,
    waiters: Vec<oneshot::Sender<Result<(), ReadyError>>>,
    stop_waiters: Vec<oneshot::Sender<()>>,
}

impl Supervisor {
    pub fn new(cfg: SupervisorConfig, out: Outputs) -> Self {
        let url = cfg.connection.url.clone();
        Supervisor {
            cfg,
            out,
            conn: None,
            generation: 0,
            state: LinkState::Connecting,
            attempt: 0,
            retry_timer: None,
            next_attempt_at: None,
            stable_timer: None,
            last_error: None,
            parked_code: None,
            info: GatewayInfo {
                url,
                server_version: None,
                protocol: None,
                conn_id: None,
                boot_id: None,
                connected_since: None,
                scopes: Vec::new(),
            },
            last_boot_id: None,
            restart_window_until: None,
            restart_polls: 0,
            last_resync: None,
            resync_scheduled: false,
            waiters: Vec::new(),
            stop_waiters: Vec::new(),
        }
    }

    fn connect_now(&mut self, ctx: &mut Context<Self>) {
        if self.state == LinkState::Stopping {
            return;
        }
        if let Some(h) = self.retry_timer.take() {
            ctx.cancel_future(h);
        }
        self.next_attempt_at = None;
        self.generation += 1;
        self.set_state(LinkState::Connecting);
        info_or_debug!(self.in_restart_window() && self.restart_polls > 1, gateway = %self.cfg.connection.gateway, event = ev::GATEWAY_CONNECTING, attempt = self.attempt + 1, url = %self.cfg.connection.url, "connecting to the gateway");
        let me = ctx.address();
        let wiring = Wiring {
            up: me.clone().recipient(),
            down: me.clone().recipient(),
            gap: me.recipient(),
            events: self.out.events.clone(),
            agent_events: self.out.agent_events.clone(),
        };
        let conn = GatewayConnection::new(self.generation, self.cfg.connection.clone(), wiring);
        self.conn = Some(conn.start());
    }

    fn in_restart_window(&self) -> bool {
        self.restart_window_until
            .is_some_and(|t| Instant::now() < t)
    }

    fn set_state(&mut self, state: LinkState) {
        self.state = state;
        crate::metrics::set_state(&self.cfg.connection.gateway, state.as_str());
    }

    fn schedule(&mut self, delay: Duration, cause: &str, reason: &str, ctx: &mut Context<Self>) {
        if self.state != LinkState::Parked {
            self.set_state(LinkState::Backoff);
        }
        self.next_attempt_at = Some(Instant::now() + delay);
        let quiet = self.in_restart_window() && self.restart_polls > 0;
        if self.in_restart_window() {
            self.restart_polls += 1;
        }
        info_or_debug!(
            quiet,
            gateway = %self.cfg.connection.gateway,
            event = ev::GATEWAY_BACKOFF,
            delay_ms = delay.as_millis() as u64,
            attempt = self.attempt + 1,
            cause,
            reason,
            state = self.state.as_str(),
            "next attempt scheduled"
        );
        self.retry_timer = Some(ctx.run_later(delay, |act, ctx| {
            act.retry_timer = None;
            act.connect_now(ctx);
        }));
    }

    /// Refetch `agents.list` (which agents exist) and `sessions.list` (which
    /// runs are active) for the registry.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        // At most one resync per RESYNC_MIN_INTERVAL: gaps and health changes
        // in a burst (a struggling link) coalesce into one trailing resync.
        if let Some(last) = self.last_resync {
            let since = last.elapsed();
            if since < RESYNC_MIN_INTERVAL {
                if !self.resync_scheduled {
                    self.resync_scheduled = true;
                    ctx.run_later(RESYNC_MIN_INTERVAL - since, |act, ctx| {
                        act.resync_scheduled = false;
                        act.resync(ctx);
                    });
                }
                return;
            }
        }
        let Some(conn) = self.conn.clone() else {
            return;
        };
        self.last_resync = Some(Instant::now());
        let requested_at = Instant::now();
        let generation = self.generation;
        if let Some(snap) = self.out.snapshots.clone() {
            fetch(
                ctx,
                &conn,
                self.cfg.connection.gateway.clone(),
                "agents.list",
                move |payload| {
                    let _ = snap.try_send(AgentsSnapshot {
                        generation,
                        payload,
                    });
                },
            );
        }
        if let Some(sessions) = self.out.sessions.clone() {
            fetch(
                ctx,
                &conn,
                self.cfg.connection.gateway.clone(),
                "sessions.list",
                move |payload| {
                    let _ = sessions.try_send(SessionsSnapshot {
                        payload,
                        requested_at,
                    });
                },
            );
        }
    }

    /// Persist a device token from hello-ok and use it from now on.
    fn keep_device_token(&mut self, token: String, scopes: &[String]) {
        if self.cfg.connection.device_token.as_deref() == Some(token.as_str()) {
            return;
        }
        if let Some(store) = &self.cfg.device_tokens {
            match store.save(
                &self.cfg.connection.url,
                crate::ROLE,
                &token,
                scopes,
                now_ms(),
            ) {
                Ok(()) => {
                    tracing::info!(gateway = %self.cfg.connection.gateway, event = ev::DEVICE_TOKEN_STORED, path = %store.path().display(), scopes = %scopes.join(","), "device token issued by the gateway stored; later connections use it")
                }
                Err(e) => tracing::warn!(gateway = %self.cfg.connection.gateway,
                    event = ev::STORE_WRITE_FAILED,
                    "could not store the device token ({e}); it is used until the bridge restarts"
                ),
            }
        }
        let mut conn = (*self.cfg.connection).clone();
        conn.device_token = Some(token);
        self.cfg.connection = Arc::new(conn);
    }

    /// The gateway no longer takes our device token: forget it, so the next
    /// attempt uses the shared token (and, if needed, asks for pairing again).
    fn drop_device_token(&mut self, why: &str) -> bool {
        if self.cfg.connection.device_token.is_none() {
            return false;
        }
        if let Some(store) = &self.cfg.device_tokens {
            if let Err(e) = store.clear(&self.cfg.connection.url, crate::ROLE) {
                tracing::warn!(gateway = %self.cfg.connection.gateway, "could not remove the stored device token: {e}");
            }
        }
        let mut conn = (*self.cfg.connection).clone();
        conn.device_token = None;
        self.cfg.connection = Arc::new(conn);
        tracing::warn!(gateway = %self.cfg.connection.gateway,
            event = ev::DEVICE_TOKEN_DROPPED,
            reason = why,
            "the gateway refused the device token; dropped it, retrying with the shared token"
        );
        true
    }

    fn notify_link(&self, connected: bool, detail: serde_json::Value) {
        for r in &self.out.link {
            let _ = r.try_send(LinkChanged {
                connected,
                detail: detail.clone(),
            });
        }
    }

    fn wake_waiters(&mut self, result: Result<(), ReadyError>) {
        for w in self.waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }

    pub fn status(&self) -> Status {
        Status {
            state: self.state,
            gateway: self.info.clone(),
            last_error: self.last_error.clone(),
            next_attempt_in_ms: self
                .next_attempt_at
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            attempt: self.attempt,
        }
    }
}

/// Send `method` with `{}` and hand a successful answer to `done`; a failure
/// is logged (the registry keeps its current view).
fn fetch(
    ctx: &mut Context<Supervisor>,
    conn: &Addr<GatewayConnection>,
    gateway: Arc<str>,
    method: &'static str,
    done: impl FnOnce(Box<RawValue>) + 'static,
) {
    let req = conn.send(Send::new(method, Some(json!({}))));
    ctx.spawn(actix::fut::wrap_future(async move {
        match req.await {
            Ok(Ok(payload)) => done(payload),
            Ok(Err(e)) => resync_failed(&gateway, method, &e),
            Err(_) => {}
        }
    }));
}

fn resync_failed(gateway: &str, method: &str, e: &RequestError) {
    tracing::warn!(
        gateway,
        event = ev::RPC_FAILED,
        method,
        code = e.code(),
        "could not refresh the registry: {e}"
    );
}

use crate::now_ms;

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        self.connect_now(ctx);
    }
}

impl Handler<ConnectionUp> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionUp, ctx: &mut Context<Self>) {
        if msg.generation != self.generation {
            return;
        }
        let h = msg.hello;
        self.set_state(LinkState::Connected);
        crate::metrics::connected(&self.cfg.connection.gateway);
        // A new session always refetches at once.
        self.last_resync = None;
        self.restart_window_until = None;
        self.parked_code = None;
        self.info = GatewayInfo {
            url: self.cfg.connection.url.clone(),
            server_version: Some(h.server.version.clone()),
            protocol: Some(h.protocol),
            conn_id: h.server.conn_id.clone(),
            boot_id: h.server.boot_id.clone(),
            connected_since: Some(now_ms()),
            scopes: h.scopes.clone(),
        };
        tracing::info!(gateway = %self.cfg.connection.gateway,
            event = ev::GATEWAY_CONNECTED,
            server_version = %h.server.version,
            protocol = h.protocol,
            conn_id = h.server.conn_id.as_deref().unwrap_or(""),
            scopes = %h.scopes.join(","),
            tick_interval_ms = h.policy.tick_interval_ms,
            auth_method = h.auth_method.as_deref().unwrap_or(""),
            "gateway session up"
        );
        let restarted = matches!(
            (&self.last_boot_id, &h.server.boot_id),
            (Some(old), Some(new)) if old != new
        );
        if restarted {
            tracing::info!(gateway = %self.cfg.connection.gateway,
                event = ev::GATEWAY_RESTARTED,
                boot_id = h.server.boot_id.as_deref().unwrap_or(""),
                "the gateway restarted since the last session (new bootId)"
            );
        }
        if h.server.boot_id.is_some() {
            self.last_boot_id = h.server.boot_id.clone();
        }
        if let Some(token) = h.device_token.clone() {
            self.keep_device_token(token, &h.scopes);
        }
        let stable_after = self.cfg.stable_after;
        self.stable_timer = Some(ctx.run_later(stable_after, |act, _| {
            act.attempt = 0;
            act.stable_timer = None;
        }));
        self.notify_link(
            true,
            json!({"url": self.cfg.connection.url, "server_version": h.server.version, "conn_id": h.server.conn_id, "boot_id": h.server.boot_id, "gateway_restarted": restarted}),
        );
        self.wake_waiters(Ok(()));
        self.resync(ctx);
    }
}

impl Handler<ConnectionDown> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionDown, ctx: &mut Context<Self>) {
        if msg.generation != self.generation {
            return;
        }
        self.conn = None;
        if let Some(h) = self.stable_timer.take() {
            ctx.cancel_future(h);
        }
        let cause = msg.cause;
        crate::metrics::pending(&self.cfg.connection.gateway, 0);
        crate::metrics::disconnected(&self.cfg.connection.gateway, &cause.code());
        let was_connected = msg.connected_for.is_some();
        if was_connected {
            tracing::warn!(gateway = %self.cfg.connection.gateway,
                event = ev::GATEWAY_DISCONNECTED,
                close_code = cause.close_code(),
                reason = %cause.message(),
                cause = %cause.code(),
                connected_for_ms = msg.connected_for.map(|d| d.as_millis() as u64),
                pending_failed = msg.pending_failed,
                "gateway session lost"
            );
            self.info.connected_since = None;
            self.notify_link(
                false,
                json!({"reason": cause.message(), "close_code": cause.close_code()}),
            );
        }
        if self.state == LinkState::Stopping {
            for w in self.stop_waiters.drain(..) {
                let _ = w.send(());
            }
            // Stays alive while stopping: late callers get `ShuttingDown`
            // (503 BRIDGE_SHUTTING_DOWN), not a dead mailbox.
            return;
        }
        if msg
            .connected_for
            .is_some_and(|d| d >= self.cfg.stable_after)
        {
            self.attempt = 0;
        }
        let token_refused = match &cause {
            DisconnectCause::Rejected { error } => matches!(
                error.details_code(),
                Some("AUTH_DEVICE_TOKEN_MISMATCH" | "AUTH_SCOPE_MISMATCH")
            ),
            DisconnectCause::Closed { code: 4001, .. } => true,
            _ => false,
        };
        if token_refused && self.drop_device_token(&cause.code()) {
            self.last_error = Some(LastError {
                code: cause.code(),
                message: cause.message(),
                close_code: cause.close_code(),
                action: None,
                gateway_error: None,
                at_ms: now_ms(),
            });
            let delay = self.cfg.backoff.initial();
            self.schedule(delay, &cause.code(), &cause.message(), ctx);
            return;
        }
        let class = cause.retry_class();
        // What "the same parked situation" means: the code, plus the pairing
        // request id (a new request must be announced again).
        let park_key = match &cause {
            DisconnectCause::Rejected { error } => format!(
                "{}/{}",
                cause.code(),
                error.detail_str("requestId").unwrap_or("")
            ),
            _ => cause.code(),
        };
        let repeat = self.parked_code.as_deref() == Some(park_key.as_str());
        let gateway_error = match &cause {
            DisconnectCause::Rejected { error } => {
                // Logged once per parked situation; repeats go to debug.
                warn_or_debug!(
                    repeat,
                    gateway = %self.cfg.connection.gateway,
                    event = ev::GATEWAY_REJECTED,
                    code = %error.code,
                    details_code = error.details_code().unwrap_or(""),
                    message = %error.message,
                    next_step = error.next_step().unwrap_or(""),
                    "the gateway refused the handshake"
                );
                Some(error.to_value())
            }
            _ => None,
        };
        let action = match &class {
            RetryClass::Park { action, .. } => Some(action.clone()),
            _ => None,
        };
        self.last_error = Some(LastError {
            code: cause.code(),
            message: cause.message(),
            close_code: cause.close_code(),
            action: action.clone(),
            gateway_error,
            at_ms: now_ms(),
        });

        if self.cfg.mode == Mode::FailFast
            && !matches!(class, RetryClass::After(_) | RetryClass::Restarting)
        {
            self.set_state(LinkState::Parked);
            self.wake_waiters(Err(ReadyError::Failed(cause)));
            return;
        }

        let code = cause.code();
        let delay = match class {
            RetryClass::Park { action, at_least } => {
                self.set_state(LinkState::Parked);
                let delay = at_least
                    .map_or(self.cfg.park_retry, |d| d.max(self.cfg.park_retry))
                    .min(MAX_RETRY_AFTER.max(self.cfg.park_retry));
                if !repeat {
                    if let DisconnectCause::Rejected { error } = &cause {
                        if error.details_code() == Some("PAIRING_REQUIRED") {
                            let id = error.detail_str("requestId").unwrap_or("");
                            tracing::warn!(gateway = %self.cfg.connection.gateway, event = ev::GATEWAY_PAIRING_REQUIRED, request_id = id, approve_command = %format!("openclaw devices approve {id}"), "this device must be approved on the gateway");
                        }
                    }
                    tracing::error!(gateway = %self.cfg.connection.gateway, event = ev::GATEWAY_PARKED, code = %code, action = %action, retry_in_ms = delay.as_millis() as u64, "a retry cannot fix this; retrying slowly until the operator acts (SIGHUP retries at once)");
                    self.parked_code = Some(park_key.clone());
                }
                delay
            }
            RetryClass::After(d) => d,
            RetryClass::Restarting if msg.restart_expected_ms.is_some() => {
                // First try around when the gateway said it would be back.
                let expected = Duration::from_millis(msg.restart_expected_ms.unwrap_or_default())
                    .min(RESTART_GRACE);
                self.restart_window_until = Some(Instant::now() + expected + RESTART_GRACE);
                self.restart_polls = 0;
                expected
            }
            RetryClass::Restarting | RetryClass::Backoff => {
                if self.in_restart_window() {
                    RESTART_POLL + RESTART_POLL.mul_f64(fastrand::f64())
                } else {
                    let d = self.cfg.backoff.delay(self.attempt);
                    self.attempt = self.attempt.saturating_add(1);
                    d
                }
            }
        };
        self.schedule(delay, &code, &cause.message(), ctx);
    }
}

impl Handler<SeqGap> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SeqGap, ctx: &mut Context<Self>) {
        if msg.generation == self.generation {
            self.resync(ctx);
        }
    }
}

impl Handler<Send> for Supervisor {
    type Result = ResponseFuture<Result<Box<RawValue>, RequestError>>;

    fn handle(&mut self, msg: Send, _ctx: &mut Context<Self>) -> Self::Result {
        let method = msg.method.clone();
        let gateway = self.cfg.connection.gateway.clone();
        let started = Instant::now();
        let fut: Result<_, RequestError> = match (&self.conn, self.state) {
            (_, LinkState::Stopping) => Err(RequestError::ShuttingDown),
            (Some(conn), LinkState::Connected) => Ok(conn.send(msg)),
            _ => Err(RequestError::NotConnected {
                state: self.state.as_str().into(),
                next_attempt_in_ms: self
                    .next_attempt_at
                    .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            }),
        };
        Box::pin(async move {
            let result = match fut {
                Ok(f) => f.await.unwrap_or_else(|_| {
                    Err(RequestError::Disconnected {
                        reason: "the connection stopped".into(),
                    })
                }),
                Err(e) => Err(e),
            };
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.code(),
            };
            crate::metrics::request_done(
                &gateway,
                &method,
                outcome,
                started.elapsed().as_secs_f64(),
            );
            if let Err(e) = &result {
                tracing::info!(gateway = %gateway, event = ev::RPC_FAILED, method = %method, code = e.code(), elapsed_ms = started.elapsed().as_millis() as u64, "request failed: {e}");
            }
            result
        })
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<WaitReady> for Supervisor {
    type Result = ResponseFuture<Result<(), ReadyError>>;

    fn handle(&mut self, msg: WaitReady, _: &mut Context<Self>) -> Self::Result {
        if self.state == LinkState::Connected {
            return Box::pin(async { Ok(()) });
        }
        if self.state == LinkState::Stopping {
            return Box::pin(async { Err(ReadyError::ShuttingDown) });
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        let timeout = msg.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(ReadyError::ShuttingDown),
                Err(_) => Err(ReadyError::Timeout(timeout)),
            }
        })
    }
}

impl Handler<RetryNow> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: RetryNow, ctx: &mut Context<Self>) {
        if self.conn.is_none() && self.state != LinkState::Stopping {
            tracing::info!(gateway = %self.cfg.connection.gateway, "retrying the gateway now (SIGHUP)");
            self.parked_code = None;
            self.connect_now(ctx);
        }
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.set_state(LinkState::Stopping);
        if let Some(h) = self.retry_timer.take() {
            ctx.cancel_future(h);
        }
        self.next_attempt_at = None;
        self.wake_waiters(Err(ReadyError::ShuttingDown));
        match self.conn.clone() {
            Some(conn) => {
                let (tx, rx) = oneshot::channel();
                self.stop_waiters.push(tx);
                conn.do_send(Close {
                    shutting_down: true,
                });
                Box::pin(async move {
                    // The connection answers within its close grace (500 ms).
                    let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
                })
            }
            None => Box::pin(async {}),
        }
    }
}

impl Handler<super::registry::RequestResync> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: super::registry::RequestResync, ctx: &mut Context<Self>) {
        if self.state == LinkState::Connected {
            self.resync(ctx);
        }
    }
}

impl Handler<Reconfigure> for Supervisor {
    type Result = ();

    fn handle(&mut self, Reconfigure(cfg): Reconfigure, _: &mut Context<Self>) {
        self.info.url = cfg.connection.url.clone();
        self.cfg = SupervisorConfig {
            // The mode is how this supervisor was started; it does not change.
            mode: self.cfg.mode,
            ..cfg
        };
    }
}
