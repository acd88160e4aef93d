//! openclaw-bridge keeps a Control Center dashboard connected to an OpenClaw
//! gateway (WebSocket, protocol 4): one dependable session, correlated
//! requests, typed events, an HTTP API with live events.
//!
//! # Layout
//! - [`protocol`]: the wire format — frames, the error object, handshake, typed
//!   events; serde and pure functions only.
//! - [`backoff`]: the full-jitter exponential backoff value type.
//! - [`config`]: layered, validated settings; secrets redacted.
//! - [`identity`]: Ed25519 device key, v3 signatures, stored device tokens (0600 files).
//! - [`store`]: embedded SQLite (agents, runs, last session); batched writer thread.
//! - [`telemetry`]: logging setup and the stable operator event names.
//! - [`tls`]: rustls client configuration for `wss://` (system roots + private CA).
//! - [`metrics`]: Prometheus metric names and recording helpers.
//! - [`actors`]: `Supervisor` (link lifecycle), `GatewayConnection` (one
//!   socket), `AgentRegistry` (agents and runs), `EventBroker` (fan-out).
//! - [`http`]: the HTTP API — health, readiness, metrics, agents, SSE, RPC.
//! - [`cli`]: the command line (`run`, `check-config`, `call`, `healthcheck`).
//! - [`nats`]: optional NATS JetStream fan-out (`[nats]`): events, a registry
//!   KV mirror and RPC over request–reply, for many Control Center replicas.
//! - [`notify`]: systemd `sd_notify` (READY, STATUS, WATCHDOG, STOPPING); no-ops elsewhere.
//!
//! Data flows one way: socket → `protocol` decode → `GatewayConnection` →
//! typed messages → `AgentRegistry` / `EventBroker` → HTTP / SSE; requests go
//! back through `Supervisor` → `GatewayConnection` as [`actors::Send`].
#![forbid(unsafe_code)]

pub mod actors;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod nats;
pub mod notify;
pub mod protocol;
pub mod store;
pub mod telemetry;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::{Actor, Addr};
use actix_web::dev::ServerHandle;

use actors::broker::{AddSink, CloseAll};
use actors::gateway::ConnectionConfig;
use actors::registry::{FlushStore, SetResyncTarget};
use actors::supervisor::{Mode, Outputs, Shutdown, SupervisorConfig};
use actors::{AgentRegistry, EventBroker, Supervisor};
use config::Settings;
use telemetry::events as ev;

/// How long shutdown may take before the process exits anyway; below
/// systemd's and Docker's default stop timeouts (90 s / 10 s).
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(8);

/// A setting that passed validation but cannot be put to use (trust roots,
/// the device key). Reported like a configuration error (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
    #[error("no gateway is configured; set [gateway] url or add [[gateways]] entries")]
    NoGateway,
}

impl SetupError {
    /// The configuration key to fix.
    pub fn key(&self) -> &'static str {
        match self {
            SetupError::Tls(_) => "gateway.tls_ca_file",
            SetupError::Identity(_) => "state.dir",
            SetupError::NoGateway => "gateway.url",
        }
    }
}

/// Wall-clock epoch milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The role the bridge connects as; device tokens are kept per gateway and role.
pub const ROLE: &str = "operator";

/// The connection settings a supervisor uses for gateway `g`: TLS roots for
/// `wss://`, the bridge's device identity and a stored device token when
/// `device_identity` applies (one device for the bridge; tokens are kept per
/// gateway URL).
pub fn connection_config(
    settings: &Settings,
    g: &config::GatewaySettings,
) -> Result<(ConnectionConfig, Option<Arc<identity::DeviceTokenStore>>), SetupError> {
    let tls = if g.url.to_ascii_lowercase().starts_with("wss://") {
        Some(tls::client_config(g.tls_ca_file.as_deref())?)
    } else {
        None
    };
    let mut device: Option<Arc<dyn actors::gateway::DeviceSigner>> = None;
    let mut device_token = None;
    let mut tokens = None;
    if g.uses_device_identity() {
        let id = identity::DeviceIdentity::load_or_create(&settings.state.dir)?;
        if id.was_created() {
            tracing::info!(gateway = %g.id, device_id = id.device_id(), key = %id.key_path().display(), "created a device identity; the gateway will ask for it to be approved (pairing)");
        }
        let store = identity::DeviceTokenStore::new(&settings.state.dir, id.device_id());
        // A stored token is used only if it was granted every configured
        // scope; otherwise the shared token asks for a scope upgrade.
        if let Some(t) = store.load(&g.url, ROLE)? {
            if protocol::missing_scopes(&t.scopes, &g.scopes).is_empty() {
                device_token = Some(t.token);
            } else {
                tracing::info!(gateway = %g.id, "the stored device token lacks some of the gateway's scopes; asking for a scope upgrade");
            }
        }
        device = Some(Arc::new(id));
        tokens = Some(Arc::new(store));
    }
    let config = ConnectionConfig {
        gateway: Arc::from(g.id.as_str()),
        url: g.url.clone(),
        token: g.token.as_ref().map(|t| t.expose().to_owned()),
        device_token,
        client_id: g.client_id.clone(),
        client_mode: g.client_mode.clone(),
        display_name: g.display_name.clone(),
        scopes: g.scopes.clone(),
        request_timeout: g.request_timeout,
        handshake_timeout: g.handshake_timeout,
        device,
        tls,
        max_frame_bytes: g.max_frame_bytes,
        max_pending: g.max_pending,
        max_pending_bytes: g.max_pending_bytes,
    };
    Ok((config, tokens))
}

/// The supervisor settings for gateway `g`.
pub fn supervisor_config(
    settings: &Settings,
    g: &config::GatewaySettings,
    mode: Mode,
) -> Result<SupervisorConfig, SetupError> {
    let (connection, device_tokens) = connection_config(settings, g)?;
    Ok(SupervisorConfig {
        connection: Arc::new(connection),
        backoff: settings.reconnect.backoff,
        stable_after: settings.reconnect.stable_after,
        park_retry: settings.reconnect.park_retry,
        mode,
        device_tokens,
        max_reattach: g.max_reattach,
    })
}

/// A token sent over `ws://` to another host travels in clear text: say so
/// once, at start (a reload does not repeat it).
fn warn_insecure_transport(g: &config::GatewaySettings) {
    let plain = g.url.to_ascii_lowercase().starts_with("ws://");
    if plain && g.token.is_some() && !config::url_is_loopback(&g.url) {
        tracing::warn!(
            gateway = %g.id,
            event = ev::CONFIG_INSECURE_TRANSPORT,
            url = %config::redact_url(&g.url),
            "the gateway token is sent unencrypted over ws:// to a host that is not this machine; use wss:// (or a loopback address through an encrypted tunnel)"
        );
    }
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Server(std::io::Error),
    #[error("{0}")]
    Setup(#[from] SetupError),
    #[error("cannot open the store in {dir}: {source}")]
    Store {
        dir: String,
        source: store::StoreError,
    },
}

impl AppError {
    /// The configuration key to fix, for the `config.invalid` log line.
    pub fn key(&self) -> &'static str {
        match self {
            AppError::Bind { .. } => "http.listen",
            AppError::Server(_) => "http.listen",
            AppError::Setup(e) => e.key(),
            AppError::Store { .. } => "state.dir",
        }
    }
}

/// Where gateway `id` keeps its store: `state.dir` itself for `default`
/// (as before several gateways existed), else `state.dir/gateways/<id>`.
pub fn store_dir(settings: &Settings, id: &str) -> std::path::PathBuf {
    if id == config::DEFAULT_GATEWAY {
        settings.state.dir.clone()
    } else {
        settings.state.dir.join("gateways").join(id)
    }
}

/// Gateway `id`'s registry, with its store when the store can be used. The
/// store is a cache: a damaged file is moved aside and a fresh one started;
/// a store that cannot be opened at all (unwritable directory, a newer
/// schema) is logged as `store.unavailable` with the fix, and the bridge
/// serves without it rather than not at all.
fn registry_for(settings: &Settings, id: &str) -> AgentRegistry {
    let dir = store_dir(settings, id);
    let unavailable = |e: &store::StoreError, what: &str| {
        tracing::error!(gateway = %id, event = ev::STORE_UNAVAILABLE, dir = %dir.display(), error = %e, "{what}");
    };
    let opened = match open_store(&dir, id) {
        Err(e) if e.is_corrupt() => match store::move_aside(&dir) {
            Ok(to) => {
                unavailable(&e, &format!("the store was damaged; moved it aside to {} and started an empty one (it refills from the gateway)", to.display()));
                open_store(&dir, id)
            }
            Err(io) => {
                tracing::error!(gateway = %id, event = ev::STORE_UNAVAILABLE, dir = %dir.display(), error = %io, "could not move the damaged store aside");
                Err(e)
            }
        },
        other => other,
    };
    match opened {
        Ok(persisted) => {
            tracing::info!(gateway = %id, agents = persisted.agents.len(), runs = persisted.runs.len(), dir = %dir.display(), "loaded the store");
            AgentRegistry::with_store(persisted, id)
        }
        Err(e) => {
            unavailable(&e, "running without the store: agents and runs are not kept across restarts until it is fixed (the error says how), then restart");
            AgentRegistry::without_store(id)
        }
    }
}

/// Open the store in `dir` and load what it holds for a registry.
fn open_store(
    dir: &std::path::Path,
    id: &str,
) -> Result<actors::registry::Persisted, store::StoreError> {
    let store = store::Store::open(dir)?;
    let agents = store.load_agents()?;
    let mut runs = Vec::new();
    for a in &agents {
        runs.extend(store.load_runs(&a.id, actors::registry::RUNS_KEPT)?);
    }
    let writer = store::StoreWriter::spawn_for(store, id)?;
    Ok(actors::registry::Persisted {
        agents,
        runs,
        writer,
    })
}

/// One gateway's actors: its link (`Supervisor` + `GatewayConnection`), its
/// registry and its event broker.
#[derive(Clone)]
pub struct GatewayStack {
    pub id: Arc<str>,
    pub required: bool,
    pub supervisor: Addr<Supervisor>,
    pub registry: Addr<AgentRegistry>,
    pub broker: Addr<EventBroker>,
    /// The thread the stack's actors run on (stopped last by [`Stopper`]).
    pub arbiter: actix::dev::ArbiterHandle,
}

impl GatewayStack {
    /// Start gateway `g`'s actors (and its NATS side when `[nats]` is set).
    /// The stack's thread holds its actors back until `gate` opens (or its
    /// sender is dropped): `bridge.started` comes first in the log.
    fn start(
        settings: &Settings,
        g: &config::GatewaySettings,
        gate: std::sync::mpsc::Receiver<()>,
    ) -> Result<(GatewayStack, Option<nats::NatsHandle>), AppError> {
        // The whole stack on its own thread: one gateway's flood keeps that
        // thread busy and fills that stack's mailboxes, never another's.
        let arbiter = actix::Arbiter::new().handle();
        // Log through the starting thread's subscriber: the global one in
        // the daemon (so this changes nothing), a thread-scoped one where a
        // test captures the logs. The guard lives as long as the thread.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        arbiter.spawn_fn(move || {
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
            let _ = gate.recv();
        });
        let registry = registry_for(settings, &g.id);
        let registry = AgentRegistry::start_in_arbiter(&arbiter, move |_| registry);
        let events = settings.events.clone();
        let max_subscribers = settings.http.max_sse_subscribers;
        let id = g.id.clone();
        let broker = EventBroker::start_in_arbiter(&arbiter, move |_| {
            EventBroker::new(events.buffer)
                .buffer_bytes(events.buffer_bytes)
                .max_subscribers(max_subscribers)
                .for_gateway(&id)
                .starting_at(actors::broker::boot_first_id())
        });
        let out = Outputs {
            link: vec![registry.clone().recipient(), broker.clone().recipient()],
            events: Some(broker.clone().recipient()),
            agent_events: Some(registry.clone().recipient()),
            snapshots: Some(registry.clone().recipient()),
            sessions: Some(registry.clone().recipient()),
            runs: Some(registry.clone().recipient()),
        };
        let cfg = supervisor_config(settings, g, Mode::Daemon)?;
        // Its connections start from its context: on this thread too.
        let supervisor = Supervisor::start_in_arbiter(&arbiter, move |_| Supervisor::new(cfg, out));
        registry.do_send(SetResyncTarget(supervisor.clone().recipient()));
        let nats = settings.nats.as_ref().map(|n| {
            let (sink, handle) = nats::start(n, &g.id, supervisor.clone(), registry.clone());
            broker.do_send(AddSink(Box::new(sink)));
            tracing::info!(gateway = %g.id, url = %n.url, stream = %n.stream, "publishing events to NATS JetStream");
            handle
        });
        let stack = GatewayStack {
            id: Arc::from(g.id.as_str()),
            required: g.required,
            supervisor,
            registry,
            broker,
            arbiter,
        };
        Ok((stack, nats))
    }
}

/// The running daemon: one [`GatewayStack`] per configured gateway plus the
/// HTTP server. Built inside an actix `System`; tests use the same path as
/// the binary.
pub struct Application {
    /// In configuration order.
    pub gateways: Vec<GatewayStack>,
    /// The primary gateway's actors (see [`Settings::primary`]; the first
    /// gateway when there is no primary).
    pub supervisor: Addr<Supervisor>,
    pub registry: Addr<AgentRegistry>,
    pub broker: Addr<EventBroker>,
    /// `http.token`, replaced by a SIGHUP reload.
    pub api_token: http::ApiToken,
    http_addr: SocketAddr,
    server: actix_web::dev::Server,
    server_handle: ServerHandle,
    nats: Vec<nats::NatsHandle>,
}

impl Application {
    /// Start the actors and bind the HTTP server (port 0 picks a free one).
    pub async fn build(settings: Settings) -> Result<Application, AppError> {
        let mut gateways = Vec::new();
        let mut nats = Vec::new();
        let mut gates = Vec::new();
        for g in &settings.gateways {
            warn_insecure_transport(g);
            let (open, gate) = std::sync::mpsc::channel();
            gates.push(open);
            let (stack, handle) = GatewayStack::start(&settings, g, gate)?;
            gateways.push(stack);
            nats.extend(handle);
        }
        let primary_id = settings.primary().map(|g| g.id.clone());
        let first = primary_id
            .as_deref()
            .and_then(|id| gateways.iter().find(|s| &*s.id == id))
            .or(gateways.first())
            .cloned()
            .ok_or(AppError::Setup(SetupError::NoGateway))?;
        let api_token = http::ApiToken::new(settings.http.token.clone());
        let state = http::ApiState {
            gateways: Arc::new(http::Gateways::new(gateways.clone(), primary_id)),
            token: api_token.clone(),
            metrics: metrics::install(),
            cors_origins: settings.http.cors_origins.clone().into(),
        };
        let (server, http_addr) =
            http::server(state, settings.http.listen).map_err(|source| AppError::Bind {
                addr: settings.http.listen,
                source,
            })?;
        let server_handle = server.handle();
        // `gateway_url` as before (the primary gateway's, else the first's);
        // `gateway_urls` names every gateway's.
        let primary_url = settings
            .primary()
            .or(settings.gateways.first())
            .map_or(std::borrow::Cow::Borrowed(""), |g| {
                config::redact_url(&g.url)
            });
        let urls: Vec<String> = settings
            .gateways
            .iter()
            .map(|g| format!("{}={}", g.id, config::redact_url(&g.url)))
            .collect();
        tracing::info!(event = ev::BRIDGE_STARTED, version = env!("CARGO_PKG_VERSION"), listen = %http_addr, gateway_url = %primary_url, gateway_urls = %urls.join(" "), gateways = settings.gateways.len(), "openclaw-bridge started");
        for open in gates {
            let _ = open.send(());
        }
        Ok(Application {
            api_token,
            gateways,
            supervisor: first.supervisor,
            registry: first.registry,
            broker: first.broker,
            http_addr,
            server,
            server_handle,
            nats,
        })
    }

    /// The address the HTTP API listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// A handle that stops the application gracefully (for tests and signals).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            gateways: self.gateways.clone(),
            server: self.server_handle.clone(),
            nats: self.nats.clone(),
        }
    }

    /// Serve until the HTTP server stops (see [`Stopper::stop`]).
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        self.server.await.map_err(AppError::Server)
    }
}

/// Stops an [`Application`] in order: every gateway link (pending requests
/// fail with `BRIDGE_SHUTTING_DOWN`, sockets close with 1000), SSE streams,
/// the stores, NATS (what is queued is flushed, bounded), then the HTTP
/// server (in-flight requests are answered first). Gateways stop side by
/// side, so the bound holds for any number of them.
#[derive(Clone)]
pub struct Stopper {
    gateways: Vec<GatewayStack>,
    server: ServerHandle,
    nats: Vec<nats::NatsHandle>,
}

impl Stopper {
    pub async fn stop(&self) {
        use futures_util::future::join_all;
        // Bounded step by step; the sum (7.75 s) stays within SHUTDOWN_BOUND,
        // however many gateways: each step runs for all of them side by side.
        let step = Duration::from_millis;
        join_all(self.gateways.iter().map(|g| {
            let s = g.supervisor.clone();
            async move {
                let _ = tokio::time::timeout(step(2500), s.send(Shutdown)).await;
            }
        }))
        .await;
        join_all(self.gateways.iter().map(|g| {
            let b = g.broker.clone();
            async move {
                let _ = tokio::time::timeout(step(250), b.send(CloseAll)).await;
            }
        }))
        .await;
        // No more events can arrive: write what the registries hold.
        join_all(self.gateways.iter().map(|g| {
            let r = g.registry.clone();
            async move {
                let _ = tokio::time::timeout(step(2000), r.send(FlushStore)).await;
            }
        }))
        .await;
        futures_util::future::join_all(self.nats.iter().map(|n| n.stop(step(1000)))).await;
        let _ = tokio::time::timeout(step(2000), self.server.stop(true)).await;
        for g in &self.gateways {
            g.arbiter.stop();
        }
    }
}
