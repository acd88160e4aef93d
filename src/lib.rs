//! openclaw-bridge keeps a Control Center dashboard connected to an OpenClaw
//! gateway (WebSocket, protocol 4): one dependable session, correlated
//! requests, typed events, an HTTP API with live events.
//!
//! # Layout (edges point down; `.ci/check-layers` enforces it)
//! - binary (`main.rs`) → [`cli`]: the command line (`run`, `check-config`,
//!   `call`, `healthcheck`, identity commands, signals).
//! - [`app`]: assembly: one gateway stack per gateway, the HTTP server, NATS,
//!   ordered shutdown.
//! - [`http`]: the HTTP API (health, readiness, metrics, agents, runs, SSE,
//!   RPC, OpenAPI); [`nats`]: optional NATS JetStream fan-out, KV mirror and
//!   RPC; [`notify`]: systemd `sd_notify`.
//! - [`api`]: what both APIs share: the error type and the RPC body.
//! - [`actors`]: `Supervisor` (link lifecycle), `GatewayConnection` (one
//!   socket), `AgentRegistry` (agents and runs), `EventBroker` (fan-out).
//! - [`store`] (SQLite, batched writer thread), [`identity`] (Ed25519 device
//!   key, device tokens), [`telemetry`] (logging, event names), [`config`]
//!   (layered, validated settings; secrets redacted).
//! - leaves: [`protocol`] (the wire format: serde and pure functions),
//!   [`retry`] (a disconnect's cause → what to do), [`backoff`] (full-jitter
//!   delays), [`clock`], [`tls`] (rustls roots), [`metrics`] (Prometheus names).
//!
//! Data flows one way: socket → `protocol` decode → `GatewayConnection` →
//! typed messages → `AgentRegistry` / `EventBroker` → HTTP / SSE / NATS;
//! requests go back through `Supervisor` → `GatewayConnection` as
//! [`actors::Send`].
#![forbid(unsafe_code)]

/// mimalloc for every binary that links the library (the daemon, its tests,
/// the bench): requests and events are allocated on one thread and freed on
/// another, which glibc's malloc does slowly (Cargo.toml, README
/// "Performance").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod actors;
pub mod api;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod nats;
pub mod notify;
pub mod protocol;
pub mod retry;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use app::{
    connection_config, store_dir, supervisor_config, AppError, Application, GatewayStack,
    SetupError, Stopper, SHUTDOWN_BOUND,
};
