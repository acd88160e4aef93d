//! Logging setup, the operator-facing event names, and their emitters.
//!
//! Every log line an operator may alert on carries a stable `event` field from
//! [`events`], defined once here. An operator event that also moves a metric
//! is written by one function in [`emit`], which does both (the table there
//! maps each event to its metric), so the two cannot drift apart.

pub mod emit;

use std::io::IsTerminal;

use std::sync::OnceLock;

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter, Registry};

use crate::config::{LogFormat, LogSettings};

/// Stable event names (CONTRACT.md, "Logs").
pub mod events {
    pub const BRIDGE_STARTED: &str = "bridge.started";
    pub const BRIDGE_STOPPING: &str = "bridge.stopping";
    pub const GATEWAY_CONNECTING: &str = "gateway.connecting";
    pub const GATEWAY_CONNECTED: &str = "gateway.connected";
    pub const GATEWAY_DISCONNECTED: &str = "gateway.disconnected";
    pub const GATEWAY_BACKOFF: &str = "gateway.backoff";
    pub const GATEWAY_REJECTED: &str = "gateway.rejected";
    pub const GATEWAY_PARKED: &str = "gateway.parked";
    pub const GATEWAY_PAIRING_REQUIRED: &str = "gateway.pairing_required";
    pub const GATEWAY_WATCHDOG_EXPIRED: &str = "gateway.watchdog_expired";
    pub const GATEWAY_SEQ_GAP: &str = "gateway.seq_gap";
    pub const RPC_FAILED: &str = "rpc.failed";
    pub const SSE_SUBSCRIBER_LAGGED: &str = "sse.subscriber_lagged";
    pub const CONFIG_INVALID: &str = "config.invalid";
    /// A per-gateway bound refused requests (`BRIDGE_OVERLOADED`).
    pub const HTTP_OVERLOADED: &str = "http.overloaded";
    /// The store could not be opened or written; the bridge runs without it.
    pub const STORE_UNAVAILABLE: &str = "store.unavailable";
    /// `ws://` to a non-loopback host while sending a token.
    pub const CONFIG_INSECURE_TRANSPORT: &str = "config.insecure_transport";
    // Additional names (not in the contract table, stable all the same).
    /// A frame that could not be decoded or was over the size limit.
    pub const GATEWAY_BAD_FRAME: &str = "gateway.bad_frame";
    /// A response whose id matches no pending request.
    pub const GATEWAY_UNKNOWN_RESPONSE: &str = "gateway.unknown_response";
    /// The gateway restarted (a new `server.bootId`).
    pub const GATEWAY_RESTARTED: &str = "gateway.restarted";
    /// The registry was refreshed from `agents.list`.
    pub const REGISTRY_RESYNCED: &str = "registry.resynced";
    /// A device token from hello-ok was stored (never its value).
    pub const DEVICE_TOKEN_STORED: &str = "gateway.device_token_stored";
    /// The gateway refused the stored device token; it was dropped.
    pub const DEVICE_TOKEN_DROPPED: &str = "gateway.device_token_dropped";
    /// An event could not be handed to the broker or registry (mailbox full).
    pub const EVENT_UNDELIVERED: &str = "gateway.event_undelivered";
    /// A batch of registry changes did not reach the store.
    pub const STORE_WRITE_FAILED: &str = "store.write_failed";
    /// The HTTP API refused a browser-borne request (foreign Host/Origin).
    pub const HTTP_REFUSED: &str = "http.refused";
    /// Access log line (debug).
    pub const HTTP_REQUEST: &str = "http.request";
    /// SIGHUP applied a new configuration (which parts changed; no values).
    pub const CONFIG_RELOADED: &str = "config.reloaded";
    pub const BRIDGE_STOPPED: &str = "bridge.stopped";
    /// NATS connection up (first time and after every reconnect).
    pub const NATS_CONNECTED: &str = "nats.connected";
    /// NATS is unreachable or refused (events queue, then are dropped and announced).
    pub const NATS_UNAVAILABLE: &str = "nats.unavailable";
    /// Events dropped for NATS (queue full or not acknowledged); rate-limited.
    pub const NATS_DROPPED: &str = "nats.dropped";
    /// A resync marker was published (reconnect, seq gap, or lost events).
    pub const NATS_RESYNC: &str = "nats.resync";
    /// A caller held across a dropped link got its accepted run's outcome
    /// (or learnt it is unknown) from `agent.wait` (CONTRACT "Additions").
    pub const GATEWAY_RUN_REATTACHED: &str = "gateway.run_reattached";
}

/// A plain level (`info`) also keeps the HTTP server library's own start-up
/// chatter at warn: operators read our events, not actix's worker counts.
/// A full filter expression is taken as given.
fn quiet_libraries(level: &str) -> String {
    if level.contains('=') || level.contains(',') {
        level.to_owned()
    } else {
        format!("{level},actix_server=warn,actix_web=warn")
    }
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Change the log level at run time (SIGHUP). `RUST_LOG`, when set, wins.
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        return Err("RUST_LOG is set and overrides log.level".into());
    }
    let filter = EnvFilter::try_new(quiet_libraries(level)).map_err(|e| e.to_string())?;
    match FILTER.get() {
        Some(h) => h.reload(filter).map_err(|e| e.to_string()),
        None => Err("logging is not initialised".into()),
    }
}

/// Install the global subscriber. `RUST_LOG` overrides `log.level`.
/// Logs go to stdout (systemd's journal and Docker read it there); the `call`
/// command logs to stderr so stdout is only its JSON answer.
pub fn init(settings: &LogSettings, to_stderr: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(quiet_libraries(&settings.level)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let format = settings
        .format
        .unwrap_or(if std::io::stdout().is_terminal() {
            LogFormat::Pretty
        } else {
            LogFormat::Json
        });
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match (format, to_stderr) {
        (LogFormat::Json, false) => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
        (LogFormat::Json, true) => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        (LogFormat::Pretty, false) => registry.with(fmt::layer()).try_init(),
        (LogFormat::Pretty, true) => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber: nothing to do.
    let _ = result;
}
