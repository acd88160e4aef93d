//! `[reconnect]`, `[http]`, `[state]`, `[events]` and `[log]`: one struct
//! each, and the reading of its keys.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backoff::Backoff;

use super::cors::read_cors_origins;
use super::{Reader, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct ReconnectSettings {
    pub backoff: Backoff,
    pub stable_after: Duration,
    pub park_retry: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// Live `GET /v1/events` streams per gateway; past it 503 `BRIDGE_OVERLOADED`.
    pub max_sse_subscribers: usize,
    /// Exact origins whose pages may read `/v1/*` (CORS); empty: none.
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct StateSettings {
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct EventsSettings {
    /// Events in the ring every subscriber reads from (and resumes from).
    pub buffer: usize,
    /// The ring's bound in bytes (payloads plus a fixed overhead per event).
    pub buffer_bytes: usize,
    /// Accepted for old configs; no longer used (subscribers read the ring).
    pub subscriber_queue: usize,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: Option<LogFormat>,
    pub level: String,
}

/// `[reconnect]`; `None` (with the problem recorded) when the backoff bounds
/// do not fit together.
pub(super) fn read_reconnect(r: &mut Reader) -> Option<ReconnectSettings> {
    let initial = r.number("reconnect.initial_ms", 1, 3_600_000);
    let max = r.number("reconnect.max_ms", 1, 86_400_000);
    let backoff = match Backoff::new(Duration::from_millis(initial), Duration::from_millis(max)) {
        Ok(b) => Some(b),
        Err(e) => {
            r.err("reconnect.max_ms", e.to_string());
            None
        }
    };
    let stable_after = Duration::from_millis(r.number("reconnect.stable_after_ms", 0, 86_400_000));
    let park_retry = Duration::from_millis(r.number("reconnect.park_retry_ms", 1, 86_400_000));
    Some(ReconnectSettings {
        backoff: backoff?,
        stable_after,
        park_retry,
    })
}

/// `[http]`. `None` (with the problem recorded) when `http.listen` is no
/// address.
pub(super) fn read_http(r: &mut Reader) -> Option<HttpSettings> {
    let listen_raw = r.string("http.listen");
    let listen = match listen_raw.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            r.err(
                "http.listen",
                format!("{listen_raw:?} is not allowed; use IP:PORT, e.g. 127.0.0.1:18800 (port 0 picks a free one)"),
            );
            None
        }
    };
    let (http_token, http_token_file) = r.secret("http", None);
    if let Some(addr) = listen {
        if !addr.ip().is_loopback()
            && http_token.is_none()
            && !r.errors.iter().any(|e| e.key.starts_with("http.token"))
        {
            r.err(
                "http.token",
                format!("required when http.listen ({addr}) is not a loopback address; set http.token_file or OPENCLAW_BRIDGE__HTTP__TOKEN"),
            );
        }
    }
    let cors_origins = read_cors_origins(r);
    let max_sse_subscribers = r.number("http.max_sse_subscribers", 1, 1_000_000) as usize;
    Some(HttpSettings {
        listen: listen?,
        token: http_token,
        token_file: http_token_file,
        max_sse_subscribers,
        cors_origins,
    })
}

fn default_state_dir(env: &HashMap<String, String>) -> PathBuf {
    if let Some(d) = env.get("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may pass several, colon-separated: the first is ours.
        return PathBuf::from(d.split(':').next().unwrap_or(d));
    }
    if let Some(x) = env.get("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(x).join("openclaw-bridge");
    }
    PathBuf::from("./state")
}

/// `[state]`: an empty or absent `state.dir` falls back to systemd's
/// `STATE_DIRECTORY`, then `$XDG_STATE_HOME/openclaw-bridge`, then `./state`.
pub(super) fn read_state(r: &mut Reader, env: &HashMap<String, String>) -> StateSettings {
    let dir = r
        .opt_string("state.dir")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| default_state_dir(env));
    StateSettings { dir }
}

/// `[events]`.
pub(super) fn read_events(r: &mut Reader) -> EventsSettings {
    let buffer = r.number("events.buffer", 1, 10_000_000) as usize;
    let buffer_bytes = r.number("events.buffer_bytes", 65_536, 1 << 36) as usize;
    let subscriber_queue = r.number("events.subscriber_queue", 1, 1_000_000) as usize;
    EventsSettings {
        buffer,
        buffer_bytes,
        subscriber_queue,
    }
}

/// `[log]`.
pub(super) fn read_log(r: &mut Reader) -> LogSettings {
    let format = match r.opt_string("log.format").as_deref() {
        None | Some("") => None,
        Some("json") => Some(LogFormat::Json),
        Some("pretty") => Some(LogFormat::Pretty),
        Some(other) => {
            r.err(
                "log.format",
                format!("{other:?} is not allowed; use json or pretty"),
            );
            None
        }
    };
    let level = r.string("log.level");
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        r.err(
            "log.level",
            format!(
                "{level:?} is not allowed; use trace, debug, info, warn, error or a tracing filter"
            ),
        );
    }
    LogSettings { format, level }
}
