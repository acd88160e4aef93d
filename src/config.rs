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
        ],
    ),
    (
        "reconnect",
        &["initial_ms", "max_ms", "stable_after_ms", "park_retry_ms"],
    ),
    ("http", &["listen", "token", "token_file"]),
    ("state", &["dir"]),
    ("events", &["buffer", "subscriber_queue"]),
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
}

#[derive(Debug, Clone)]
pub struct StateSettings {
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct EventsSettings {
    pub buffer: usize,
    pub subscriber_queue: usize,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: Option<LogFormat>,
    pub level: String,
}

/// `[nats]`: publish events to NATS JetStream, mirror the registry to a KV
/// bucket, serve RPC over request–reply. Absent: off.
#[derive(Debug, Clone)]
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

struct Reader {
    cfg: Config,
    errors: Vec<ConfigError>,
}

impl Reader {
    fn err(&mut self, key: &str, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.to_owned(),
            problem: problem.into(),
        });
    }

    fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.cfg.get_string(key) {
            Ok(s) => Some(s),
            Err(config::ConfigError::NotFound(_)) => None,
            Err(e) => {
                self.err(key, format!("must be a string ({e})"));
                None
            }
        }
    }

    fn string(&mut self, key: &str) -> String {
        self.opt_string(key).unwrap_or_default()
    }

    fn one_of(&mut self, key: &str, allowed: &[&str]) -> String {
        let v = self.string(key);
        if !allowed.contains(&v.as_str()) {
            self.err(
                key,
                format!("{v:?} is not allowed; use one of: {}", allowed.join(", ")),
            );
        }
        v
    }

    fn number(&mut self, key: &str, min: u64, max: u64) -> u64 {
        let raw = self.string(key);
        match raw.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.err(
                    key,
                    format!("{raw:?} is not allowed; use a whole number from {min} to {max}"),
                );
                min
            }
        }
    }

    fn list(&mut self, key: &str) -> Vec<String> {
        match self.cfg.get_array(key) {
            Ok(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item.into_string() {
                        Ok(s) => out.push(s.trim().to_owned()),
                        Err(e) => self.err(key, format!("every entry must be a string ({e})")),
                    }
                }
                out
            }
            Err(config::ConfigError::NotFound(_)) => Vec::new(),
            Err(_) => {
                // A single string from the environment: comma-separated.
                let s = self.string(key);
                s.split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect()
            }
        }
    }

    /// `token` or `token_file` (first line), never both; empty is an error.
    fn secret(
        &mut self,
        section: &str,
        env_override: Option<&str>,
    ) -> (Option<Secret>, Option<PathBuf>) {
        let tkey = format!("{section}.token");
        let fkey = format!("{section}.token_file");
        let file = self.opt_string(&fkey).map(PathBuf::from);
        if let Some(t) = env_override {
            if t.trim().is_empty() {
                self.err(
                    "OPENCLAW_GATEWAY_TOKEN",
                    "is set but empty; unset it or give the token",
                );
                return (None, file);
            }
            return (Some(Secret::new(t.trim())), file);
        }
        let inline = self.opt_string(&tkey);
        match (inline, &file) {
            (Some(_), Some(_)) => {
                self.err(&tkey, format!("set {tkey} or {fkey}, not both"));
                (None, file)
            }
            (Some(t), None) => {
                if t.trim().is_empty() {
                    self.err(&tkey, "is empty; remove the key or give the token");
                    (None, None)
                } else {
                    (Some(Secret::new(t.trim())), None)
                }
            }
            (None, Some(path)) => match read_token_file(path) {
                Ok(t) => (Some(t), file),
                Err(problem) => {
                    self.err(&fkey, problem);
                    (None, file)
                }
            },
            (None, None) => (None, None),
        }
    }
}

/// Read a token file: its first line, trimmed.
pub fn read_token_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(format!(
            "{} is empty; its first line must be the token",
            path.display()
        ));
    }
    Ok(Secret::new(first))
}

fn check_gateway_url(r: &mut Reader, key: &str, url: &str) {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        r.err(
            key,
            format!("{url:?} is an HTTP URL; use ws://HOST:PORT/ or wss://HOST:PORT/"),
        );
        return;
    }
    if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
        r.err(
            key,
            format!("{url:?} is not allowed; use ws://HOST:PORT/ or wss://HOST:PORT/"),
        );
        return;
    }
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = split_host_port(authority);
    if host.is_empty() {
        r.err(key, format!("{url:?} has no host; use ws://HOST:PORT/"));
        return;
    }
    if let Some(p) = port {
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => {}
            _ => r.err(
                key,
                format!("{url:?} has port {p:?}; use a port from 1 to 65535"),
            ),
        }
    }
    if url.parse::<awc::http::Uri>().is_err() {
        r.err(key, format!("{url:?} is not a valid URL"));
    }
}

/// A gateway id: names routes, metric labels, NATS subject tokens and KV
/// keys, so letters, digits, `_` and `-` only.
pub fn gateway_id_ok(id: &str) -> bool {
    (1..=64).contains(&id.len()) && nats_name_ok(id, false) && id != "rpc"
}

const GATEWAY_ID_RULE: &str =
    "use 1 to 64 letters, digits, _ and - (not \"rpc\"), e.g. \"default\" or \"eu-1\"";

/// `[gateway]` alone, or every `[[gateways]]` entry (`[gateway]` then only
/// gives defaults for the entries' other keys).
fn read_gateways(r: &mut Reader, env_token: Option<&str>, env_url: bool) -> Vec<GatewaySettings> {
    let entries = match r.cfg.get_array("gateways") {
        Ok(items) => items.len(),
        Err(config::ConfigError::NotFound(_)) => 0,
        Err(_) => {
            r.err(
                "gateways",
                "must be an array of tables: one [[gateways]] block a gateway",
            );
            return Vec::new();
        }
    };
    if entries == 0 {
        let id = r.string("gateway.id");
        if !gateway_id_ok(&id) {
            r.err(
                "gateway.id",
                format!("{id:?} is not allowed; {GATEWAY_ID_RULE}"),
            );
        }
        return vec![read_gateway(r, "gateway", id, env_token)];
    }
    if env_url {
        r.err(
            "OPENCLAW_GATEWAY_URL",
            "applies to a single [gateway] only; with [[gateways]] give each entry its url",
        );
    }
    if env_token.is_some() {
        // One gateway's secret must not be sent to every other gateway.
        r.err(
            "OPENCLAW_GATEWAY_TOKEN",
            "applies to a single [gateway] only; with [[gateways]] give each entry its token_file (or token), or a shared one in [gateway]",
        );
    }
    // [gateway].url would silently not be used: say so.
    let default_url = Config::builder()
        .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
        .build()
        .ok()
        .and_then(|c| c.get_string("gateway.url").ok());
    if r.cfg.get_string("gateway.url").ok() != default_url {
        r.err(
            "gateway.url",
            "is not used when [[gateways]] entries are present; move it into a [[gateways]] entry (with an id)",
        );
    }
    let mut out: Vec<GatewaySettings> = Vec::new();
    for i in 0..entries {
        let key = format!("gateways[{i}]");
        let id = match r.cfg.get_string(&format!("{key}.id")) {
            Ok(id) => id,
            Err(_) => {
                r.err(
                    &format!("{key}.id"),
                    format!("is required: each [[gateways]] entry needs an id; {GATEWAY_ID_RULE}"),
                );
                continue;
            }
        };
        if !gateway_id_ok(&id) {
            r.err(
                &format!("{key}.id"),
                format!("{id:?} is not allowed; {GATEWAY_ID_RULE}"),
            );
            continue;
        }
        if out.iter().any(|g| g.id == id) {
            r.err(
                &format!("{key}.id"),
                format!("{id:?} is used by another [[gateways]] entry; ids must be unique"),
            );
            continue;
        }
        if r.cfg.get_string(&format!("{key}.url")).is_err() {
            r.err(
                &format!("{key}.url"),
                "is required: the gateway's ws:// or wss:// address",
            );
            continue;
        }
        out.push(read_gateway(r, &key, id, env_token));
    }
    out
}

/// One gateway's keys under `prefix` (`gateway` or `gateways[N]`); a key an
/// entry leaves out comes from `[gateway]` (and so from the defaults).
fn read_gateway(
    r: &mut Reader,
    prefix: &str,
    id: String,
    env_token: Option<&str>,
) -> GatewaySettings {
    let has = |r: &Reader, name: &str| {
        r.cfg
            .get::<config::Value>(&format!("{prefix}.{name}"))
            .is_ok()
    };
    let key = |r: &Reader, name: &str| {
        if has(r, name) {
            format!("{prefix}.{name}")
        } else {
            format!("gateway.{name}")
        }
    };
    let k = key(r, "url");
    let url = r.string(&k);
    check_gateway_url(r, &k, &url);
    let (token, token_file) = if prefix != "gateway" && (has(r, "token") || has(r, "token_file")) {
        r.secret(prefix, None)
    } else if prefix != "gateway" {
        r.secret("gateway", None)
    } else {
        r.secret("gateway", env_token)
    };
    let k = key(r, "required");
    let required = match r.cfg.get_bool(&k) {
        Ok(b) => b,
        Err(_) => {
            r.err(&k, "is not allowed; use true or false");
            true
        }
    };
    let client_id = r.one_of(&key(r, "client_id"), CLIENT_IDS);
    let client_mode = r.one_of(&key(r, "client_mode"), CLIENT_MODES);
    let display_name = r.string(&key(r, "display_name"));
    if display_name.trim().is_empty() {
        r.err(&key(r, "display_name"), "must not be empty");
    }
    let scopes = r.list(&key(r, "scopes"));
    if scopes.is_empty() {
        r.err(
            &key(r, "scopes"),
            format!("must name at least one of: {}", SCOPES.join(", ")),
        );
    }
    for s in &scopes {
        if !SCOPES.contains(&s.as_str()) {
            r.err(
                &key(r, "scopes"),
                format!("{s:?} is not a scope; use: {}", SCOPES.join(", ")),
            );
        }
    }
    let device_identity = match r
        .one_of(&key(r, "device_identity"), &["auto", "always", "never"])
        .as_str()
    {
        "always" => DeviceIdentityMode::Always,
        "never" => DeviceIdentityMode::Never,
        _ => DeviceIdentityMode::Auto,
    };
    let request_timeout =
        Duration::from_millis(r.number(&key(r, "request_timeout_ms"), 1, 3_600_000));
    let handshake_timeout =
        Duration::from_millis(r.number(&key(r, "handshake_timeout_ms"), 1, 600_000));
    let tls_ca_file = r
        .opt_string(&key(r, "tls_ca_file"))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(path) = &tls_ca_file {
        if let Err(e) = crate::tls::load_ca_file(path) {
            r.err(
                &key(r, "tls_ca_file").clone(),
                format!("{e}; give a PEM file with the CA certificate(s)"),
            );
        }
    }

    GatewaySettings {
        id,
        required,
        url,
        token,
        token_file,
        client_id,
        client_mode,
        display_name,
        scopes,
        device_identity,
        request_timeout,
        handshake_timeout,
        tls_ca_file,
    }
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, after.strip_prefix(':'));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    }
}

/// Whether the gateway URL's host is loopback (decides `device_identity = auto`).
pub fn url_is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, _) = split_host_port(authority);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
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

        // [state]
        let dir = r
            .opt_string("state.dir")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| default_state_dir(&src.env));

        // [events]
        let buffer = r.number("events.buffer", 1, 10_000_000) as usize;
        let subscriber_queue = r.number("events.subscriber_queue", 1, 1_000_000) as usize;

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
                    },
                    state: StateSettings { dir },
                    events: EventsSettings {
                        buffer,
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

impl GatewaySettings {
    /// Whether a device identity is used for this gateway.
    pub fn uses_device_identity(&self) -> bool {
        match self.device_identity {
            DeviceIdentityMode::Always => true,
            DeviceIdentityMode::Never => false,
            DeviceIdentityMode::Auto => !url_is_loopback(&self.url),
        }
    }

    fn to_toml(&self) -> toml::Table {
        use toml::Value;
        let ms = |d: Duration| Value::Integer(d.as_millis() as i64);
        let g = self;
        let mut gw = toml::Table::new();
        gw.insert("id".into(), Value::String(g.id.clone()));
        gw.insert("required".into(), Value::Boolean(g.required));
        gw.insert("url".into(), Value::String(g.url.clone()));
        secret(&mut gw, "token", &g.token);
        path(&mut gw, "token_file", &g.token_file);
        gw.insert("client_id".into(), Value::String(g.client_id.clone()));
        gw.insert("client_mode".into(), Value::String(g.client_mode.clone()));
        gw.insert("display_name".into(), Value::String(g.display_name.clone()));
        gw.insert(
            "scopes".into(),
            Value::Array(g.scopes.iter().cloned().map(Value::String).collect()),
        );
        gw.insert(
            "device_identity".into(),
            Value::String(g.device_identity.as_str().into()),
        );
        gw.insert("request_timeout_ms".into(), ms(g.request_timeout));
        gw.insert("handshake_timeout_ms".into(), ms(g.handshake_timeout));
        path(&mut gw, "tls_ca_file", &g.tls_ca_file);
        gw
    }
}

fn secret(t: &mut toml::Table, key: &str, s: &Option<Secret>) {
    if s.is_some() {
        t.insert(key.into(), toml::Value::String("<redacted>".into()));
    }
}

fn path(t: &mut toml::Table, key: &str, p: &Option<PathBuf>) {
    if let Some(p) = p {
        t.insert(key.into(), toml::Value::String(p.display().to_string()));
    }
}

impl Settings {
    /// The effective configuration as TOML, every secret as `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        use toml::{Table, Value};
        let ms = |d: Duration| Value::Integer(d.as_millis() as i64);
        let rc = &self.reconnect;
        let mut re = Table::new();
        re.insert("initial_ms".into(), ms(rc.backoff.initial()));
        re.insert("max_ms".into(), ms(rc.backoff.max()));
        re.insert("stable_after_ms".into(), ms(rc.stable_after));
        re.insert("park_retry_ms".into(), ms(rc.park_retry));
        let mut http = Table::new();
        http.insert("listen".into(), Value::String(self.http.listen.to_string()));
        secret(&mut http, "token", &self.http.token);
        path(&mut http, "token_file", &self.http.token_file);
        let mut state = Table::new();
        state.insert(
            "dir".into(),
            Value::String(self.state.dir.display().to_string()),
        );
        let mut events = Table::new();
        events.insert("buffer".into(), Value::Integer(self.events.buffer as i64));
        events.insert(
            "subscriber_queue".into(),
            Value::Integer(self.events.subscriber_queue as i64),
        );
        let mut log = Table::new();
        if let Some(f) = self.log.format {
            let f = if f == LogFormat::Json {
                "json"
            } else {
                "pretty"
            };
            log.insert("format".into(), Value::String(f.into()));
        }
        log.insert("level".into(), Value::String(self.log.level.clone()));
        let mut root = Table::new();
        if self.multi_gateway() {
            let list = self
                .gateways
                .iter()
                .map(|g| Value::Table(g.to_toml()))
                .collect();
            root.insert("gateways".into(), Value::Array(list));
        } else if let Some(g) = self.gateways.first() {
            root.insert("gateway".into(), Value::Table(g.to_toml()));
        }
        root.insert("reconnect".into(), Value::Table(re));
        root.insert("http".into(), Value::Table(http));
        root.insert("state".into(), Value::Table(state));
        root.insert("events".into(), Value::Table(events));
        root.insert("log".into(), Value::Table(log));
        if let Some(n) = &self.nats {
            let mut t = Table::new();
            t.insert("url".into(), Value::String(n.url.clone()));
            t.insert("stream".into(), Value::String(n.stream.clone()));
            t.insert(
                "subject_prefix".into(),
                Value::String(n.subject_prefix.clone()),
            );
            t.insert(
                "max_age_s".into(),
                Value::Integer(n.max_age.as_secs() as i64),
            );
            t.insert("max_bytes".into(), Value::Integer(n.max_bytes as i64));
            t.insert("kv_bucket".into(), Value::String(n.kv_bucket.clone()));
            t.insert("buffer".into(), Value::Integer(n.buffer as i64));
            path(&mut t, "credentials_file", &n.credentials_file);
            secret(&mut t, "token", &n.token);
            root.insert("nats".into(), Value::Table(t));
        }
        toml::to_string(&root).unwrap_or_else(|e| format!("# could not render: {e}\n"))
    }
}

/// A NATS subject token (or a dotted run of tokens when `dots`): ASCII
/// letters, digits, `_` and `-` only, no empty token.
fn nats_name_ok(s: &str, dots: bool) -> bool {
    let ok_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if dots {
        s.split('.').all(ok_token)
    } else {
        ok_token(s)
    }
}

fn read_nats(r: &mut Reader) -> Option<NatsSettings> {
    // The section is off unless it names a URL (or any key at all: then the
    // missing URL is reported).
    let present = matches!(r.cfg.get_table("nats"), Ok(t) if !t.is_empty());
    if !present {
        return None;
    }
    let url = r.string("nats.url");
    let lower = url.to_ascii_lowercase();
    if url.trim().is_empty() {
        r.err(
            "nats.url",
            "is required when [nats] is present; e.g. nats://127.0.0.1:4222",
        );
    } else if !["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .any(|p| lower.starts_with(p))
        || url.parse::<async_nats::ServerAddr>().is_err()
    {
        r.err(
            "nats.url",
            format!("{url:?} is not allowed; use nats://HOST:PORT (or tls://HOST:PORT)"),
        );
    }
    let or = |r: &mut Reader, key: &str, default: &str| {
        r.opt_string(key)
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    let stream = or(r, "nats.stream", "OPENCLAW");
    if !nats_name_ok(&stream, false) {
        r.err(
            "nats.stream",
            format!("{stream:?} is not allowed; use letters, digits, _ and - only"),
        );
    }
    let subject_prefix = or(r, "nats.subject_prefix", "openclaw");
    if !nats_name_ok(&subject_prefix, true) {
        r.err(
            "nats.subject_prefix",
            format!("{subject_prefix:?} is not allowed; use dot-separated tokens of letters, digits, _ and - (no *, >, spaces or empty tokens)"),
        );
    }
    if r.opt_string("nats.gateway_id").is_some() {
        r.err(
            "nats.gateway_id",
            "was replaced by the gateway's own id: set gateway.id (or the id of each [[gateways]] entry); it names the gateway in subjects and KV keys",
        );
    }
    let kv_bucket = or(r, "nats.kv_bucket", "openclaw_agents");
    if !nats_name_ok(&kv_bucket, false) {
        r.err(
            "nats.kv_bucket",
            format!("{kv_bucket:?} is not allowed; use letters, digits, _ and - only"),
        );
    }
    let num = |r: &mut Reader, key: &str, default: u64, min: u64, max: u64| {
        if r.opt_string(key).is_none() {
            default
        } else {
            r.number(key, min, max)
        }
    };
    let max_age = Duration::from_secs(num(r, "nats.max_age_s", 86_400, 1, 315_360_000));
    let max_bytes = num(r, "nats.max_bytes", 1 << 30, 1 << 20, 1 << 50);
    let buffer = num(r, "nats.buffer", 10_000, 1, 10_000_000) as usize;
    let credentials_file = r
        .opt_string("nats.credentials_file")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(p) = &credentials_file {
        if let Err(e) = std::fs::metadata(p) {
            r.err(
                "nats.credentials_file",
                format!("cannot read {}: {e}; give a NATS .creds file", p.display()),
            );
        }
    }
    let token = match r.opt_string("nats.token") {
        Some(t) if t.trim().is_empty() => {
            r.err("nats.token", "is empty; remove the key or give the token");
            None
        }
        Some(t) => Some(Secret::new(t.trim())),
        None => None,
    };
    if token.is_some() && credentials_file.is_some() {
        r.err(
            "nats.token",
            "set nats.token or nats.credentials_file, not both",
        );
    }
    Some(NatsSettings {
        url,
        stream,
        subject_prefix,
        max_age,
        max_bytes,
        kv_bucket,
        buffer,
        credentials_file,
        token,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, toml).unwrap();
        Settings::load_from(&Sources {
            system_file: None,
            file: Some(file),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    fn problems(toml: &str, env: &[(&str, &str)]) -> String {
        load(toml, env).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.gateways[0].url, "ws://127.0.0.1:18789/");
        assert_eq!(s.gateways[0].client_id, "gateway-client");
        assert_eq!(s.gateways[0].client_mode, "backend");
        assert_eq!(
            s.gateways[0].scopes,
            vec!["operator.read", "operator.write"]
        );
        assert_eq!(s.gateways[0].request_timeout, Duration::from_millis(30_000));
        assert_eq!(s.reconnect.backoff.initial(), Duration::from_millis(250));
        assert_eq!(s.reconnect.backoff.max(), Duration::from_millis(30_000));
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:18800");
        assert_eq!(s.events.buffer, 10_000);
        assert_eq!(s.events.subscriber_queue, 1024);
        assert_eq!(s.state.dir, PathBuf::from("./state"));
        assert!(!s.gateways[0].uses_device_identity());
    }

    #[test]
    fn layering_file_then_env_then_well_known_env() {
        let toml = "[gateway]\nurl = \"ws://127.0.0.1:1000/\"\nrequest_timeout_ms = 5\n[http]\nlisten = \"127.0.0.1:1\"\n";
        let s = load(toml, &[]).unwrap();
        assert_eq!(s.gateways[0].url, "ws://127.0.0.1:1000/");
        let s = load(
            toml,
            &[
                ("OPENCLAW_BRIDGE__GATEWAY__URL", "ws://127.0.0.1:2000/"),
                ("OPENCLAW_BRIDGE__HTTP__LISTEN", "127.0.0.1:2"),
            ],
        )
        .unwrap();
        assert_eq!(s.gateways[0].url, "ws://127.0.0.1:2000/");
        assert_eq!(s.http.listen.port(), 2);
        assert_eq!(s.gateways[0].request_timeout, Duration::from_millis(5));
        let s = load(
            toml,
            &[
                ("OPENCLAW_BRIDGE__GATEWAY__URL", "ws://127.0.0.1:2000/"),
                ("OPENCLAW_GATEWAY_URL", "ws://127.0.0.1:3000/"),
                ("OPENCLAW_GATEWAY_TOKEN", "from-env"),
                ("OPENCLAW_BRIDGE__GATEWAY__SCOPES", "operator.read"),
            ],
        )
        .unwrap();
        assert_eq!(s.gateways[0].url, "ws://127.0.0.1:3000/");
        assert_eq!(s.gateways[0].token.as_ref().unwrap().expose(), "from-env");
        assert_eq!(s.gateways[0].scopes, vec!["operator.read"]);
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let p = problems(
            "[gateway]\nurl = \"http://x:1/\"\nclient_id = \"nope\"\n[http]\nlisten = \"nowhere\"\n[events]\nbuffer = 0\n",
            &[],
        );
        assert!(
            p.contains("gateway.url: \"http://x:1/\" is an HTTP URL; use ws://"),
            "{p}"
        );
        assert!(
            p.contains("gateway.client_id: \"nope\" is not allowed; use one of: webchat-ui"),
            "{p}"
        );
        assert!(p.contains("http.listen: \"nowhere\" is not allowed"), "{p}");
        assert!(
            p.contains("events.buffer: \"0\" is not allowed; use a whole number from 1"),
            "{p}"
        );
    }

    #[test]
    fn url_rules() {
        assert!(
            problems("[gateway]\nurl = \"ws://127.0.0.1:70000/\"\n", &[])
                .contains("use a port from 1 to 65535")
        );
        assert!(problems("[gateway]\nurl = \"tcp://h/\"\n", &[])
            .contains("use ws://HOST:PORT/ or wss://"));
        assert!(problems("[gateway]\nurl = \"ws:///x\"\n", &[]).contains("has no host"));
        assert!(load("[gateway]\nurl = \"wss://gw.example.com/\"\n", &[])
            .unwrap()
            .gateways[0]
            .uses_device_identity());
        assert!(!load("[gateway]\nurl = \"ws://[::1]:18789/\"\n", &[])
            .unwrap()
            .gateways[0]
            .uses_device_identity());
        assert!(url_is_loopback("ws://localhost:1/"));
    }

    #[test]
    fn unknown_keys_and_sections_are_named() {
        let p = problems("[gateway]\nurll = \"x\"\n[gatway]\nx = 1\n", &[]);
        assert!(
            p.contains("gateway.urll: unknown key; keys of [gateway]: id, required, url, token"),
            "{p}"
        );
        assert!(p.contains("gatway: unknown section"), "{p}");
    }

    #[test]
    fn token_files_and_empty_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let tf = dir.path().join("tok");
        std::fs::write(&tf, "s3cret-token\nsecond line\n").unwrap();
        let s = load(
            &format!("[gateway]\ntoken_file = {:?}\n", tf.display().to_string()),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.gateways[0].token.as_ref().unwrap().expose(),
            "s3cret-token"
        );
        let p = problems("[gateway]\ntoken_file = \"/nonexistent/tok\"\n", &[]);
        assert!(
            p.contains("gateway.token_file: cannot read /nonexistent/tok"),
            "{p}"
        );
        std::fs::write(&tf, "\n").unwrap();
        let p = problems(
            &format!("[gateway]\ntoken_file = {:?}\n", tf.display().to_string()),
            &[],
        );
        assert!(p.contains("is empty"), "{p}");
        let p = problems("[gateway]\ntoken = \"  \"\n", &[]);
        assert!(p.contains("gateway.token: is empty"), "{p}");
        let p = problems("[gateway]\ntoken = \"abc\"\ntoken_file = \"/x\"\n", &[]);
        assert!(p.contains("not both"), "{p}");
        assert!(!p.contains("abc"));
    }

    #[test]
    fn non_loopback_listen_needs_a_token() {
        let p = problems("[http]\nlisten = \"0.0.0.0:18800\"\n", &[]);
        assert!(
            p.contains(
                "http.token: required when http.listen (0.0.0.0:18800) is not a loopback address"
            ),
            "{p}"
        );
        assert!(load("[http]\nlisten = \"0.0.0.0:18800\"\ntoken = \"t\"\n", &[]).is_ok());
    }

    #[test]
    fn backoff_bounds_and_log_values() {
        let p = problems("[reconnect]\ninitial_ms = 500\nmax_ms = 100\n", &[]);
        assert!(
            p.contains("reconnect.max_ms: maximum delay (100 ms) must not be below"),
            "{p}"
        );
        let p = problems("[log]\nformat = \"xml\"\n", &[]);
        assert!(
            p.contains("log.format: \"xml\" is not allowed; use json or pretty"),
            "{p}"
        );
        let p = problems("[gateway]\nscopes = [\"operator.read\", \"root\"]\n", &[]);
        assert!(p.contains("\"root\" is not a scope"), "{p}");
    }

    #[test]
    fn a_syntax_error_names_the_place_not_the_secret() {
        let p = problems("[gateway]\ntoken = \"s3cr3t-TOKEN-value\n[http]\n", &[]);
        assert!(p.contains("TOML syntax error at line 2"), "{p}");
        assert!(!p.contains("s3cr3t"), "{p}");
    }

    #[test]
    fn state_dir_fallbacks() {
        let s = load(
            "",
            &[("STATE_DIRECTORY", "/var/lib/openclaw-bridge:/other")],
        )
        .unwrap();
        assert_eq!(s.state.dir, PathBuf::from("/var/lib/openclaw-bridge"));
        let s = load("", &[("XDG_STATE_HOME", "/home/u/.local/state")]).unwrap();
        assert_eq!(
            s.state.dir,
            PathBuf::from("/home/u/.local/state/openclaw-bridge")
        );
    }

    #[test]
    fn redacted_toml_hides_every_secret() {
        let s = load(
            "[gateway]\ntoken = \"gw-secret-1\"\n[http]\ntoken = \"http-secret-2\"\n",
            &[],
        )
        .unwrap();
        let out = s.to_redacted_toml();
        assert!(
            !out.contains("gw-secret-1") && !out.contains("http-secret-2"),
            "{out}"
        );
        assert_eq!(out.matches("\"<redacted>\"").count(), 2, "{out}");
        assert!(out.contains("url = \"ws://127.0.0.1:18789/\""), "{out}");
        // The output is itself a valid config.
        assert!(toml::from_str::<toml::Table>(&out).is_ok());
        assert!(!format!("{s:?}").contains("gw-secret-1"));
    }

    #[test]
    fn nats_is_off_by_default_and_validated() {
        assert!(load("", &[]).unwrap().nats.is_none());
        let s = load("[nats]\nurl = \"nats://127.0.0.1:4222\"\n", &[]).unwrap();
        let n = s.nats.as_ref().unwrap();
        assert_eq!(n.stream, "OPENCLAW");
        assert_eq!(n.subject_prefix, "openclaw");
        assert_eq!(n.max_age, Duration::from_secs(86_400));
        assert_eq!(n.max_bytes, 1 << 30);
        assert_eq!(n.kv_bucket, "openclaw_agents");
        assert_eq!(n.buffer, 10_000);
        let s = load(
            "[nats]\nurl = \"nats://127.0.0.1:4222\"\ntoken = \"nats-secret-3\"\n",
            &[],
        )
        .unwrap();
        let out = s.to_redacted_toml();
        assert!(!out.contains("nats-secret-3"), "{out}");
        assert!(out.contains("[nats]"), "{out}");
        let p = problems(
            "[nats]\nurl = \"http://x\"\nsubject_prefix = \"a.*\"\ngateway_id = \"a.b\"\nstream = \"A B\"\nbuffer = 0\nbogus = 1\n",
            &[],
        );
        for want in [
            "nats.url: \"http://x\" is not allowed",
            "nats.subject_prefix: \"a.*\" is not allowed",
            // The gateway's id names it in subjects now (gateway.id / [[gateways]] id).
            "nats.gateway_id: was replaced by the gateway's own id: set gateway.id",
            "nats.stream: \"A B\" is not allowed",
            "nats.buffer: \"0\" is not allowed",
            "nats.bogus: unknown key",
        ] {
            assert!(p.contains(want), "{want} in {p}");
        }
        let p = problems("[nats]\nstream = \"X\"\n", &[]);
        assert!(p.contains("nats.url: is required"), "{p}");
    }

    #[test]
    fn a_single_gateway_is_default_and_can_be_named() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.gateways.len(), 1);
        assert_eq!(s.gateways[0].id, "default");
        assert!(s.gateways[0].required);
        assert_eq!(s.primary().map(|g| g.id.as_str()), Some("default"));
        assert!(!s.multi_gateway());
        let s = load("[gateway]\nid = \"eu-1\"\n", &[]).unwrap();
        assert_eq!(s.gateways[0].id, "eu-1");
        // The only gateway is the primary one whatever its id.
        assert_eq!(s.primary().map(|g| g.id.as_str()), Some("eu-1"));
        let p = problems("[gateway]\nid = \"a.b\"\n", &[]);
        assert!(
            p.contains("gateway.id: \"a.b\" is not allowed; use 1 to 64 letters"),
            "{p}"
        );
        assert!(problems("[gateway]\nid = \"rpc\"\n", &[]).contains("gateway.id"));
    }

    #[test]
    fn gateways_entries_take_defaults_from_gateway() {
        let toml = "[gateway]\nscopes = [\"operator.read\"]\ntoken = \"shared-1\"\n\
            [[gateways]]\nid = \"default\"\nurl = \"ws://127.0.0.1:1001/\"\n\
            [[gateways]]\nid = \"eu-1\"\nurl = \"ws://127.0.0.1:1002/\"\ntoken = \"own-2\"\nrequired = false\nrequest_timeout_ms = 7\n";
        let s = load(toml, &[]).unwrap();
        assert_eq!(s.gateways.len(), 2);
        let (a, b) = (&s.gateways[0], &s.gateways[1]);
        assert_eq!(
            (a.id.as_str(), a.url.as_str()),
            ("default", "ws://127.0.0.1:1001/")
        );
        assert_eq!(
            (b.id.as_str(), b.url.as_str()),
            ("eu-1", "ws://127.0.0.1:1002/")
        );
        assert_eq!(a.scopes, vec!["operator.read"]);
        assert_eq!(b.scopes, vec!["operator.read"]);
        assert_eq!(a.token.as_ref().unwrap().expose(), "shared-1");
        assert_eq!(b.token.as_ref().unwrap().expose(), "own-2");
        assert!(a.required && !b.required);
        assert_eq!(a.request_timeout, Duration::from_millis(30_000));
        assert_eq!(b.request_timeout, Duration::from_millis(7));
        assert!(s.multi_gateway());
        assert_eq!(s.primary().map(|g| g.id.as_str()), Some("default"));
        // check-config shows every entry, secrets redacted, and reads back the same.
        let out = s.to_redacted_toml();
        assert!(out.contains("[[gateways]]"), "{out}");
        assert!(!out.contains("own-2") && !out.contains("shared-1"), "{out}");
        let back: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(back["gateways"].as_array().unwrap().len(), 2);
        // Without an entry called default there is no primary.
        let s = load(&toml.replace("id = \"default\"", "id = \"us-1\""), &[]).unwrap();
        assert!(s.primary().is_none());
    }

    #[test]
    fn bad_gateways_entries_are_each_named() {
        let p = problems(
            "[gateway]\nurl = \"ws://127.0.0.1:9/\"\n\
             [[gateways]]\nurl = \"ws://127.0.0.1:1/\"\n\
             [[gateways]]\nid = \"a\"\n\
             [[gateways]]\nid = \"b\"\nurl = \"http://x/\"\nurll = 1\n\
             [[gateways]]\nid = \"b\"\nurl = \"ws://127.0.0.1:2/\"\n\
             [[gateways]]\nid = \"c d\"\nurl = \"ws://127.0.0.1:3/\"\nrequired = \"maybe\"\n",
            &[
                ("OPENCLAW_GATEWAY_URL", "ws://127.0.0.1:5/"),
                ("OPENCLAW_GATEWAY_TOKEN", "one-gateways-secret"),
            ],
        );
        assert!(!p.contains("one-gateways-secret"), "{p}");
        for want in [
            "gateways[0].id: is required",
            "gateways[1].url: is required",
            "gateways[2].url: \"http://x/\" is an HTTP URL",
            "gateways[2].urll: unknown key; keys of [[gateways]]",
            "gateways[3].id: \"b\" is used by another [[gateways]] entry",
            "gateways[4].id: \"c d\" is not allowed",
            "gateway.url: is not used when [[gateways]] entries are present",
            "OPENCLAW_GATEWAY_URL: applies to a single [gateway] only",
            "OPENCLAW_GATEWAY_TOKEN: applies to a single [gateway] only",
        ] {
            assert!(p.contains(want), "{want} in {p}");
        }
        let p = problems(
            "[[gateways]]\nid = \"x\"\nurl = \"ws://127.0.0.1:3/\"\nrequired = \"maybe\"\n",
            &[],
        );
        assert!(
            p.contains("gateways[0].required: is not allowed; use true or false"),
            "{p}"
        );
    }
}
