//! openclaw-bridge keeps a Control Center dashboard connected to an OpenClaw
//! gateway (WebSocket, protocol 4): one dependable session, correlated
//! requests, typed events, an HTTP API with live events.
//!
//! # Layout
//! - [`protocol`]: the wire format — frames, the error object, handshake, typed
//!   events; serde and pure functions only.
//! - [`backoff`]: the full-jitter exponential backoff value type.
//! - [`config`]: layered, validated settings; secrets redacted.
//! - [`telemetry`]: logging setup and the stable operator event names.
//! - [`metrics`]: Prometheus metric names and recording helpers.
//! - [`actors`]: `Supervisor` (link lifecycle), `GatewayConnection` (one
//!   socket), `AgentRegistry` (agents and runs), `EventBroker` (fan-out).
//! - [`http`]: the HTTP API — health, readiness, metrics, agents, SSE, RPC.
//! - [`cli`]: the command line (`run`, `check-config`, `call`, `healthcheck`).
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
pub mod metrics;
pub mod protocol;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::{Actor, Addr};
use actix_web::dev::ServerHandle;

use actors::broker::CloseAll;
use actors::gateway::ConnectionConfig;
use actors::registry::SetResyncTarget;
use actors::supervisor::{Mode, Outputs, Shutdown, SupervisorConfig};
use actors::{AgentRegistry, EventBroker, Supervisor};
use config::Settings;
use telemetry::events as ev;

/// How long shutdown may take before the process exits anyway; below
/// systemd's and Docker's default stop timeouts (90 s / 10 s).
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(8);

/// The connection settings a supervisor uses, from the configuration.
pub fn connection_config(settings: &Settings) -> ConnectionConfig {
    let g = &settings.gateway;
    ConnectionConfig {
        url: g.url.clone(),
        token: g.token.as_ref().map(|t| t.expose().to_owned()),
        device_token: None,
        client_id: g.client_id.clone(),
        client_mode: g.client_mode.clone(),
        display_name: g.display_name.clone(),
        scopes: g.scopes.clone(),
        request_timeout: g.request_timeout,
        handshake_timeout: g.handshake_timeout,
        device: None,
    }
}

/// The supervisor settings from the configuration.
pub fn supervisor_config(settings: &Settings, mode: Mode) -> SupervisorConfig {
    SupervisorConfig {
        connection: Arc::new(connection_config(settings)),
        backoff: settings.reconnect.backoff,
        stable_after: settings.reconnect.stable_after,
        park_retry: settings.reconnect.park_retry,
        mode,
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
}

/// The running daemon: actors plus the HTTP server. Built inside an actix
/// `System`; tests use the same path as the binary.
pub struct Application {
    pub supervisor: Addr<Supervisor>,
    pub registry: Addr<AgentRegistry>,
    pub broker: Addr<EventBroker>,
    http_addr: SocketAddr,
    server: actix_web::dev::Server,
    server_handle: ServerHandle,
}

impl Application {
    /// Start the actors and bind the HTTP server (port 0 picks a free one).
    pub async fn build(settings: Settings) -> Result<Application, AppError> {
        let registry = AgentRegistry::new().start();
        let broker =
            EventBroker::new(settings.events.buffer, settings.events.subscriber_queue).start();
        let out = Outputs {
            link: vec![registry.clone().recipient(), broker.clone().recipient()],
            events: Some(broker.clone().recipient()),
            agent_events: Some(registry.clone().recipient()),
            snapshots: Some(registry.clone().recipient()),
        };
        let supervisor = Supervisor::new(supervisor_config(&settings, Mode::Daemon), out).start();
        registry.do_send(SetResyncTarget(supervisor.clone().recipient()));
        let state = http::ApiState {
            supervisor: supervisor.clone(),
            registry: registry.clone(),
            broker: broker.clone(),
            token: settings.http.token.clone(),
            metrics: metrics::install(),
        };
        let (server, http_addr) =
            http::server(state, settings.http.listen).map_err(|source| AppError::Bind {
                addr: settings.http.listen,
                source,
            })?;
        let server_handle = server.handle();
        tracing::info!(event = ev::BRIDGE_STARTED, version = env!("CARGO_PKG_VERSION"), listen = %http_addr, gateway_url = %settings.gateway.url, "openclaw-bridge started");
        Ok(Application {
            supervisor,
            registry,
            broker,
            http_addr,
            server,
            server_handle,
        })
    }

    /// The address the HTTP API listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// A handle that stops the application gracefully (for tests and signals).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            supervisor: self.supervisor.clone(),
            broker: self.broker.clone(),
            server: self.server_handle.clone(),
        }
    }

    /// Serve until the HTTP server stops (see [`Stopper::stop`]).
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        self.server.await.map_err(AppError::Server)
    }
}

/// Stops an [`Application`] in order: the gateway link (pending requests fail
/// with `BRIDGE_SHUTTING_DOWN`, the socket closes with 1000), SSE streams,
/// then the HTTP server (in-flight requests are answered first).
#[derive(Clone)]
pub struct Stopper {
    supervisor: Addr<Supervisor>,
    broker: Addr<EventBroker>,
    server: ServerHandle,
}

impl Stopper {
    pub async fn stop(&self) {
        let _ = tokio::time::timeout(SHUTDOWN_BOUND / 2, self.supervisor.send(Shutdown)).await;
        let _ = self.broker.send(CloseAll).await;
        let _ = tokio::time::timeout(SHUTDOWN_BOUND / 2, self.server.stop(true)).await;
    }
}
