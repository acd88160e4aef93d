//! `[gateway]` and `[[gateways]]`: one [`GatewaySettings`] per gateway.

use std::path::PathBuf;
use std::time::Duration;

use config::{Config, File, FileFormat};

use super::nats::nats_name_ok;
use super::render::{path, secret};
use super::{Reader, Secret, CLIENT_IDS, CLIENT_MODES, DEFAULT_TOML, SCOPES};

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

fn check_gateway_url(r: &mut Reader, key: &str, url: &str) {
    // Error messages are logged (`config.invalid`): never with a password.
    let shown = super::redact_url(url);
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        r.err(
            key,
            format!("{shown:?} is an HTTP URL; use ws://HOST:PORT/ or wss://HOST:PORT/"),
        );
        return;
    }
    if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
        r.err(
            key,
            format!("{shown:?} is not allowed; use ws://HOST:PORT/ or wss://HOST:PORT/"),
        );
        return;
    }
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = split_host_port(authority);
    if host.is_empty() {
        r.err(key, format!("{shown:?} has no host; use ws://HOST:PORT/"));
        return;
    }
    if let Some(p) = port {
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => {}
            _ => r.err(
                key,
                format!("{shown:?} has port {p:?}; use a port from 1 to 65535"),
            ),
        }
    }
    if url.parse::<awc::http::Uri>().is_err() {
        r.err(key, format!("{shown:?} is not a valid URL"));
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
pub(super) fn read_gateways(
    r: &mut Reader,
    env_token: Option<&str>,
    env_url: bool,
) -> Vec<GatewaySettings> {
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
    let max_reattach = r.number(&key(r, "max_reattach"), 0, 100_000) as usize;
    let max_frame_bytes = match r.number(&key(r, "max_frame_bytes"), 0, 1 << 32) {
        0 => None,
        n if n < 65_536 => {
            r.err(
                &key(r, "max_frame_bytes"),
                "must be 0 (from the gateway's maxPayload) or at least 65536",
            );
            None
        }
        n => Some(n as usize),
    };
    let max_pending = r.number(&key(r, "max_pending"), 1, 1_000_000) as usize;
    let max_pending_bytes = r.number(&key(r, "max_pending_bytes"), 65_536, 1 << 32) as usize;
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
        max_reattach,
        max_frame_bytes,
        max_pending,
        max_pending_bytes,
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

impl GatewaySettings {
    /// Whether a device identity is used for this gateway.
    pub fn uses_device_identity(&self) -> bool {
        match self.device_identity {
            DeviceIdentityMode::Always => true,
            DeviceIdentityMode::Never => false,
            DeviceIdentityMode::Auto => !url_is_loopback(&self.url),
        }
    }

    pub(super) fn to_toml(&self) -> toml::Table {
        use toml::Value;
        let ms = |d: Duration| Value::Integer(d.as_millis() as i64);
        let g = self;
        let mut gw = toml::Table::new();
        gw.insert("id".into(), Value::String(g.id.clone()));
        gw.insert("required".into(), Value::Boolean(g.required));
        gw.insert(
            "url".into(),
            Value::String(super::redact_url(&g.url).into_owned()),
        );
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
        gw.insert("max_reattach".into(), Value::Integer(g.max_reattach as i64));
        gw.insert(
            "max_frame_bytes".into(),
            Value::Integer(g.max_frame_bytes.unwrap_or(0) as i64),
        );
        gw.insert("max_pending".into(), Value::Integer(g.max_pending as i64));
        gw.insert(
            "max_pending_bytes".into(),
            Value::Integer(g.max_pending_bytes as i64),
        );
        gw
    }
}
