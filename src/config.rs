//! Settings: layered with the `config` crate into one typed [`Settings`], one
//! struct per section, every bad key reported at once.
//!
//! Layers, later wins: `config/default.toml` (compiled in, so the documented
//! defaults are the real ones) → `/etc/openclaw-bridge/config.toml` if present →
//! `--config FILE` → `OPENCLAW_BRIDGE__SECTION__KEY` → `OPENCLAW_GATEWAY_URL` /
//! `OPENCLAW_GATEWAY_TOKEN`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};

use crate::backoff::Backoff;

mod cors;
mod gateways;
mod nats;
mod reader;
mod render;
#[cfg(test)]
mod tests;

use cors::read_cors_origins;
use gateways::read_gateways;
pub use gateways::{gateway_id_ok, url_is_loopback};
use nats::read_nats;
pub use nats::READ_METHODS as NATS_READ_METHODS;
pub use reader::read_token_file;
use reader::Reader;
use render::{path, secret};

/// The built-in defaults: the documented file itself.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
/// The system-wide file, read when present.
pub const SYSTEM_CONFIG: &str = "/etc/openclaw-bridge/config.toml";

/// Client ids the gateway accepts (PROTOCOL.md §2.2).
pub const CLIENT_IDS: &[&str] = &[
    "webchat-ui",
    "openclaw-control-ui",
    "openclaw-browser-copilot",
    "openclaw-tui",
    "webchat",
    "cli",
    "gateway-client",
    "openclaw-macos",
    "openclaw-linux",
    "openclaw-ios",
    "openclaw-watchos",
    "openclaw-android",
    "node-host",
    "openclaw-worker",
    "test",
    "fingerprint",
    "openclaw-probe",
];
/// Client modes the gateway accepts.
pub const CLIENT_MODES: &[&str] = &[
    "webchat", "cli", "ui", "backend", "node", "worker", "probe", "test",
];
/// Operator scopes (PROTOCOL.md §3.1).
pub const SCOPES: &[&str] = &[
    "operator.read",
    "operator.write",
    "operator.admin",
    "operator.approvals",
    "operator.questions",
    "operator.pairing",
    "operator.talk",
    "operator.talk.secrets",
];

const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "gateway",
        &[
            "id",
            "required",
            "url",
            "token",
            "token_file",
            "client_id",
            "client_mode",
            "display_name",
            "scopes",
            "device_identity",
            "request_timeout_ms",
            "handshake_timeout_ms",
            "tls_ca_file",
            "max_reattach",
            "max_frame_bytes",
            "max_pending",
            "max_pending_bytes",
        ],
    ),
    (
        "reconnect",
        &["initial_ms", "max_ms", "stable_after_ms", "park_retry_ms"],
    ),
    (
        "http",
        &[
            "listen",
            "token",
            "token_file",
            "max_sse_subscribers",
            "cors_origins",
        ],
    ),
    ("state", &["dir"]),
    ("events", &["buffer", "buffer_bytes", "subscriber_queue"]),
    ("log", &["format", "level"]),
    (
        "nats",
        &[
            "url",
            "stream",
            "subject_prefix",
            "gateway_id",
            "max_age_s",
            "max_bytes",
            "kv_bucket",
            "buffer",
            "credentials_file",
            "token",
            "duplicate_window_s",
            "rpc",
            "rpc_methods",
            "user",
            "password",
        ],
    ),
];

/// A secret string: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `url` with any userinfo (`user:password@`) replaced by `<redacted>@`,
/// for logs, `check-config` and `/readyz`: a password in a URL is a secret
/// like any other.
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]).into(),
        None => url.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceIdentityMode {
    Auto,
    Always,
    Never,
}

impl DeviceIdentityMode {
    fn as_str(self) -> &'static str {
        match self {
            DeviceIdentityMode::Auto => "auto",
            DeviceIdentityMode::Always => "always",
            DeviceIdentityMode::Never => "never",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// One gateway: `[gateway]` (id `default` unless `gateway.id` says
/// otherwise) or one `[[gateways]]` entry.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Names the gateway in routes, logs, metrics, NATS subjects and KV keys.
    pub id: String,
    /// `/readyz` is ready only when every required gateway is connected.
    pub required: bool,
    pub url: String,
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    pub client_id: String,
    pub client_mode: String,
    pub display_name: String,
    pub scopes: Vec<String>,
    pub device_identity: DeviceIdentityMode,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    /// Extra trusted CA (PEM) for `wss://`, besides the system roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Callers of accepted runs held across a dropped link (each costs one
    /// `agent.wait` in flight after the reconnect); past it, the old
    /// `BRIDGE_DISCONNECTED`. 0 turns reattaching off.
    pub max_reattach: usize,
    /// Inbound frame cap; `None` (key 0): hello-ok `maxPayload` + headroom.
    pub max_frame_bytes: Option<usize>,
    /// Requests in flight (queued or awaiting an answer) before
    /// `BRIDGE_OVERLOADED`.
    pub max_pending: usize,
    /// Request bytes queued toward the socket before `BRIDGE_OVERLOADED`.
    pub max_pending_bytes: usize,
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

/// `[nats]`: publish events to NATS JetStream, mirror the registry to a KV
/// bucket, serve RPC over request–reply. Absent: off.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsSettings {
    pub url: String,
    pub stream: String,
    pub subject_prefix: String,
    pub max_age: Duration,
    pub max_bytes: u64,
    pub kv_bucket: String,
    /// Bounded publish queue (events waiting for NATS).
    pub buffer: usize,
    pub credentials_file: Option<PathBuf>,
    pub token: Option<Secret>,
    /// NATS user and password (`nats.user`, `nats.password`): one NATS user
    /// per client, so subject permissions can tell the bridge apart.
    pub user: Option<(String, Secret)>,
    /// The stream's duplicate window: two bridges' copies of one event
    /// (same `Nats-Msg-Id`) within it are stored once.
    pub duplicate_window: Duration,
    /// Serve RPC over NATS (`nats.rpc`, off by default).
    pub rpc: bool,
    /// Methods RPC over NATS may call (`nats.rpc_methods`); `*` allows all.
    pub rpc_methods: Vec<String>,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// At least one; ids are unique. `[gateway]` alone gives one entry.
    pub gateways: Vec<GatewaySettings>,
    pub reconnect: ReconnectSettings,
    pub http: HttpSettings,
    pub state: StateSettings,
    pub events: EventsSettings,
    pub log: LogSettings,
    /// `None`: NATS publishing is off.
    pub nats: Option<NatsSettings>,
}

/// One bad key: which, and what is wrong or allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Every problem found, not only the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where the layers come from; tests build one by hand.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `/etc/openclaw-bridge/config.toml` (used only if it exists).
    pub system_file: Option<PathBuf>,
    /// `--config FILE` (must exist).
    pub file: Option<PathBuf>,
    /// The process environment.
    pub env: HashMap<String, String>,
}

impl Sources {
    /// The real process: system file, the given file, the real environment.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        Sources {
            system_file: Some(PathBuf::from(SYSTEM_CONFIG)),
            file,
            env: std::env::vars().collect(),
        }
    }
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

/// Report every key of table `t` (at `path`) that is not in `keys`.
fn unknown_in(
    t: &HashMap<String, config::Value>,
    path: &str,
    label: &str,
    keys: &[&str],
    errors: &mut Vec<ConfigError>,
) {
    let mut names: Vec<_> = t.keys().cloned().collect();
    names.sort();
    for k in names.into_iter().filter(|k| !keys.contains(&k.as_str())) {
        errors.push(ConfigError {
            key: format!("{path}.{k}"),
            problem: format!("unknown key; keys of {label}: {}", keys.join(", ")),
        });
    }
}

fn unknown_keys(cfg: &Config, errors: &mut Vec<ConfigError>) {
    let Ok(table) = cfg
        .clone()
        .try_deserialize::<HashMap<String, config::Value>>()
    else {
        return;
    };
    for (section, value) in table {
        if section == "gateways" {
            // [[gateways]]: each entry takes [gateway]'s keys.
            let keys = KNOWN_KEYS[0].1;
            let Ok(items) = value.into_array() else {
                continue; // reported by read_gateways
            };
            for (i, item) in items.into_iter().enumerate() {
                match item.into_table() {
                    Ok(t) => {
                        unknown_in(&t, &format!("gateways[{i}]"), "[[gateways]]", keys, errors)
                    }
                    Err(_) => errors.push(ConfigError {
                        key: format!("gateways[{i}]"),
                        problem: "must be a table ([[gateways]] block)".into(),
                    }),
                }
            }
            continue;
        }
        let Some((_, keys)) = KNOWN_KEYS.iter().find(|(s, _)| *s == section) else {
            let mut sections: Vec<&str> = KNOWN_KEYS.iter().map(|(s, _)| *s).collect();
            sections.push("gateways");
            errors.push(ConfigError {
                key: section.clone(),
                problem: format!("unknown section; known sections: {}", sections.join(", ")),
            });
            continue;
        };
        match value.into_table() {
            Ok(t) => unknown_in(&t, &section, &format!("[{section}]"), keys, errors),
            Err(_) => errors.push(ConfigError {
                key: section,
                problem: "must be a table".into(),
            }),
        }
    }
}

impl Settings {
    /// Load and validate from the real process environment.
    pub fn load(file: Option<PathBuf>) -> Result<Settings, ConfigErrors> {
        Settings::load_from(&Sources::from_process(file))
    }

    /// Load and validate from explicit sources.
    pub fn load_from(src: &Sources) -> Result<Settings, ConfigErrors> {
        let mut b = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(sys) = &src.system_file {
            if sys.exists() {
                b = b.add_source(
                    File::from(sys.clone())
                        .format(FileFormat::Toml)
                        .required(true),
                );
            }
        }
        if let Some(f) = &src.file {
            if !f.exists() {
                return Err(ConfigErrors(vec![ConfigError {
                    key: "--config".into(),
                    problem: format!("{} does not exist", f.display()),
                }]));
            }
            b = b.add_source(
                File::from(f.clone())
                    .format(FileFormat::Toml)
                    .required(true),
            );
        }
        let bridge_env: HashMap<String, String> = src
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("OPENCLAW_BRIDGE__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        b = b.add_source(
            Environment::with_prefix("OPENCLAW_BRIDGE")
                .prefix_separator("__")
                .separator("__")
                .source(Some(bridge_env)),
        );
        if let Some(url) = src
            .env
            .get("OPENCLAW_GATEWAY_URL")
            .filter(|u| !u.is_empty())
        {
            b = b
                .set_override("gateway.url", url.clone())
                .map_err(|e| one("OPENCLAW_GATEWAY_URL", e.to_string()))?;
        }
        let cfg = b.build().map_err(|e| build_error(src, &e))?;

        let mut r = Reader {
            cfg,
            errors: Vec::new(),
        };
        unknown_keys(&r.cfg, &mut r.errors);

        // [gateway] or [[gateways]]
        let env_token = src.env.get("OPENCLAW_GATEWAY_TOKEN").map(String::as_str);
        let env_url = src
            .env
            .get("OPENCLAW_GATEWAY_URL")
            .is_some_and(|u| !u.is_empty());
        let gateways = read_gateways(&mut r, env_token, env_url);

        // [reconnect]
        let initial = r.number("reconnect.initial_ms", 1, 3_600_000);
        let max = r.number("reconnect.max_ms", 1, 86_400_000);
        let backoff = match Backoff::new(Duration::from_millis(initial), Duration::from_millis(max))
        {
            Ok(b) => Some(b),
            Err(e) => {
                r.err("reconnect.max_ms", e.to_string());
                None
            }
        };
        let stable_after =
            Duration::from_millis(r.number("reconnect.stable_after_ms", 0, 86_400_000));
        let park_retry = Duration::from_millis(r.number("reconnect.park_retry_ms", 1, 86_400_000));

        // [http]
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

        let cors_origins = read_cors_origins(&mut r);

        // [state]
        let dir = r
            .opt_string("state.dir")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| default_state_dir(&src.env));

        // [events]
        let buffer = r.number("events.buffer", 1, 10_000_000) as usize;
        let buffer_bytes = r.number("events.buffer_bytes", 65_536, 1 << 36) as usize;
        let subscriber_queue = r.number("events.subscriber_queue", 1, 1_000_000) as usize;
        let max_sse_subscribers = r.number("http.max_sse_subscribers", 1, 1_000_000) as usize;

        // [log]
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
                format!("{level:?} is not allowed; use trace, debug, info, warn, error or a tracing filter"),
            );
        }

        // [nats] (absent: off)
        let nats = read_nats(&mut r);

        match (backoff, listen) {
            (Some(backoff), Some(listen)) if r.errors.is_empty() && !gateways.is_empty() => {
                Ok(Settings {
                    gateways,
                    reconnect: ReconnectSettings {
                        backoff,
                        stable_after,
                        park_retry,
                    },
                    http: HttpSettings {
                        listen,
                        token: http_token,
                        token_file: http_token_file,
                        max_sse_subscribers,
                        cors_origins,
                    },
                    state: StateSettings { dir },
                    events: EventsSettings {
                        buffer,
                        buffer_bytes,
                        subscriber_queue,
                    },
                    log: LogSettings { format, level },
                    nats,
                })
            }
            _ => Err(ConfigErrors(r.errors)),
        }
    }

    /// The gateway the routes without a gateway id serve (`/v1/agents`, …)
    /// and `call` uses by default: the one with id `default`, else the only
    /// one. `None` with several gateways and none called `default`.
    pub fn primary(&self) -> Option<&GatewaySettings> {
        self.gateways
            .iter()
            .find(|g| g.id == DEFAULT_GATEWAY)
            .or(match self.gateways.as_slice() {
                [only] => Some(only),
                _ => None,
            })
    }

    /// A gateway by id.
    pub fn gateway(&self, id: &str) -> Option<&GatewaySettings> {
        self.gateways.iter().find(|g| g.id == id)
    }

    /// Whether several gateways are configured (`[[gateways]]`).
    pub fn multi_gateway(&self) -> bool {
        self.gateways.len() > 1
            || self
                .gateways
                .first()
                .is_some_and(|g| g.id != DEFAULT_GATEWAY)
    }
}

/// The id of a single `[gateway]` unless `gateway.id` names it otherwise.
pub const DEFAULT_GATEWAY: &str = "default";

/// A layer that did not load. A TOML syntax error is reported by file, line
/// and column only: the parser's own message quotes the offending line, which
/// may hold a token.
fn build_error(src: &Sources, e: &config::ConfigError) -> ConfigErrors {
    let files = src
        .system_file
        .iter()
        .filter(|f| f.exists())
        .chain(src.file.iter());
    for f in files {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        if let Err(te) = toml::from_str::<toml::Table>(&text) {
            let at = te.span().map(|sp| {
                let before = &text[..sp.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {col}")
            });
            return one(
                &f.display().to_string(),
                format!(
                    "TOML syntax error{}: {}",
                    at.unwrap_or_default(),
                    te.message()
                ),
            );
        }
    }
    // Not a syntax error: keep the first line only (quoted source lines,
    // if any, follow it).
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("unreadable configuration");
    one("configuration", first.to_owned())
}

fn one(key: &str, problem: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        key: key.into(),
        problem,
    }])
}
