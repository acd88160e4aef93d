//! Assembly: from validated [`Settings`] to a running daemon. One
//! [`GatewayStack`] per configured gateway (each on its own thread), the HTTP
//! server over them, NATS when configured, and the ordered shutdown
//! ([`Stopper`]). The binary and the tests start the bridge the same way,
//! through [`Application::build`].

mod setup;
mod stack;

pub use crate::actors::GatewayStack;
pub use setup::{connection_config, store_dir, supervisor_config, SetupError};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::Addr;
use actix_web::dev::ServerHandle;

use crate::actors::broker::CloseAll;
use crate::actors::registry::FlushStore;
use crate::actors::supervisor::Shutdown;
use crate::actors::{AgentRegistry, EventBroker, Supervisor};
use crate::config::{self, Settings};
use crate::telemetry::events as ev;
use crate::{http, metrics, nats, store};

/// How long shutdown may take before the process exits anyway; below
/// systemd's and Docker's default stop timeouts (90 s / 10 s).
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(8);

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
        // Before any actor or NATS task starts: a metric handle looked up
        // before the recorder is installed stays a no-op for good, and the
        // hot paths look theirs up once.
        let metrics = metrics::install();
        let mut gateways = Vec::new();
        let mut nats = Vec::new();
        let mut gates = Vec::new();
        for g in &settings.gateways {
            setup::warn_insecure_transport(g);
            let (open, gate) = std::sync::mpsc::channel();
            gates.push(open);
            let (stack, handle) = stack::start(&settings, g, gate)?;
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
            metrics,
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
