//! `Supervisor`: the gateway link's lifecycle, and the stable address the rest
//! of the program talks to.
//!
//! **Owns:** the current `GatewayConnection` (if any) and its generation
//! number, the link state machine (connecting → connected → backoff / parked),
//! the retry schedule (full-jitter [`Backoff`], reset
//! only after a stable session), the last error, the last `bootId`.
//!
//! **Handles:** [`Send`] (from the CLI, tests and the benchmark: forwarded
//! to the live connection as a `Forward` carrying the caller's responder, or
//! refused at once with `NotConnected` carrying the state and next attempt
//! time: nothing is queued or replayed), [`Rpc`](super::messages::Rpc) from the HTTP API,
//! NATS and the CLI (a [`Send`] whose accepted `agent` run outlives a dropped
//! link: its caller is held and answered from `agent.wait`, see `reattach`;
//! any other `Rpc` is forwarded with its caller's responder as a `Send` is),
//! [`LookupRun`] (`GET /v1/runs/{runId}` for runs the registry lacks),
//! [`GetStatus`] (for `/readyz`), [`WaitReady`] (CLI), [`RetryNow`]
//! (SIGHUP), [`Shutdown`] (held callers get `BRIDGE_SHUTTING_DOWN`); and from
//! its connection [`ConnectionUp`], [`ConnectionDown`], [`SeqGap`](super::messages::SeqGap),
//! [`HealthSeen`](super::messages::HealthSeen); [`Reconfigure`] (SIGHUP).
//!
//! **Sends:** [`LinkChanged`] to the registry and broker; `Forward`, [`Send`]
//! and [`Close`] to its connection; resyncs (module `resync`, every trigger in
//! one file: hello-ok, a seq gap, `health` naming other agents than
//! `agents.list`): [`AgentsSnapshot`] and [`SessionsSnapshot`] to the
//! registry; [`RunOutcome`] to the registry for runs it lost sight of (from
//! `agent.wait`), each correction to the broker as `bridge.run_reconciled`.
//! Nothing sends back up to it but its own connection.
//!
//! **Lifecycle:** started once per gateway, on that gateway's thread; stops
//! on [`Shutdown`] (held callers answered, the socket closed with 1000).
//!
//! **Restarts:** it never reuses a connection: every attempt is a fresh
//! `GatewayConnection` (fresh socket, handshake, empty pending map). This is
//! why it is our own actor and not `actix::Supervisor`, which restarts the same
//! value.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::{
    Actor, Addr, AsyncContext, Context, Handler, Message, Recipient, ResponseFuture, SpawnHandle,
};
use tokio::sync::oneshot;

use super::gateway::{Close, ConnectionConfig, GatewayConnection, Wiring};
use super::messages::{ConnectionDown, ConnectionUp, EventBatch, LinkChanged, LinkState, Send};
use super::registry::{AgentsSnapshot, RunOutcome, SessionsSnapshot};
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

mod device_token;
mod link;
mod reattach;
mod reconcile;
mod requests;
mod resync;
mod run_queries;
mod status;

pub use reconcile::{LookupRun, RUN_RECONCILED};

pub use status::{GatewayInfo, GetStatus, LastError, ReadyError, Status, WaitReady};

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
    /// `gateway.max_reattach`: callers of accepted runs held across a drop.
    pub max_reattach: usize,
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
    pub events: Option<Recipient<EventBatch>>,
    pub agent_events: Option<Recipient<EventBatch>>,
    pub snapshots: Option<Recipient<AgentsSnapshot>>,
    pub sessions: Option<Recipient<SessionsSnapshot>>,
    /// How runs the bridge lost sight of ended (`agent.wait`), to the registry.
    pub runs: Option<Recipient<RunOutcome>>,
}

pub struct Supervisor {
    cfg: SupervisorConfig,
    out: Outputs,
    /// The live connection. Shared by `Rc`: a request clones this per
    /// call, and cloning an `Addr` allocates.
    conn: Option<Rc<Addr<GatewayConnection>>>,
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
    /// The agent ids of the last `agents.list` answer, sorted (the health
    /// drift check in `resync`).
    listed_agents: Option<Vec<String>>,
    waiters: Vec<oneshot::Sender<Result<(), ReadyError>>>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// Requests refused here (forwarded ones are metered by the connection).
    request_metrics: crate::metrics::RequestMetrics,
    /// Callers of accepted runs held across a dropped link (see `reattach`).
    held: std::collections::HashMap<u64, reattach::Held>,
    next_held_id: u64,
}

impl Supervisor {
    pub fn new(cfg: SupervisorConfig, out: Outputs) -> Self {
        let url = crate::config::redact_url(&cfg.connection.url).into_owned();
        let request_metrics = crate::metrics::RequestMetrics::new(&cfg.connection.gateway);
        Supervisor {
            request_metrics,
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
            listed_agents: None,
            waiters: Vec::new(),
            stop_waiters: Vec::new(),
            held: std::collections::HashMap::new(),
            next_held_id: 0,
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
        info_or_debug!(self.in_restart_window() && self.restart_polls > 1, gateway = %self.cfg.connection.gateway, event = ev::GATEWAY_CONNECTING, attempt = self.attempt + 1, url = %crate::config::redact_url(&self.cfg.connection.url), "connecting to the gateway");
        let me = ctx.address();
        let wiring = Wiring {
            up: me.clone().recipient(),
            down: me.clone().recipient(),
            gap: me.clone().recipient(),
            health: me.recipient(),
            events: self.out.events.clone(),
            agent_events: self.out.agent_events.clone(),
        };
        let conn = GatewayConnection::new(self.generation, self.cfg.connection.clone(), wiring);
        self.conn = Some(Rc::new(conn.start()));
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

    fn notify_link(&self, connected: bool, detail: serde_json::Value) {
        for r in &self.out.link {
            let _ = r.try_send(LinkChanged {
                connected,
                detail: detail.clone(),
            });
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        self.connect_now(ctx);
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
        self.release_held();
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

impl Handler<Reconfigure> for Supervisor {
    type Result = ();

    fn handle(&mut self, Reconfigure(cfg): Reconfigure, _: &mut Context<Self>) {
        // `/readyz` names the session it holds: a live session keeps its
        // URL until the next attempt uses the new one.
        if self.state != LinkState::Connected {
            self.info.url = crate::config::redact_url(&cfg.connection.url).into_owned();
        }
        self.cfg = SupervisorConfig {
            // The mode is how this supervisor was started; it does not change.
            mode: self.cfg.mode,
            ..cfg
        };
    }
}
