//! `[nats]`: optional; absent means off.

use std::path::PathBuf;
use std::time::Duration;

use super::{Reader, Secret};

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

/// A NATS subject token (or a dotted run of tokens when `dots`): ASCII
/// letters, digits, `_` and `-` only, no empty token.
pub(super) fn nats_name_ok(s: &str, dots: bool) -> bool {
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

/// The default `nats.rpc_methods`: gateway methods that only read
/// (PROTOCOL §5, scope `read` or none). Not `sessions.subscribe` or
/// `sessions.messages.*`: they change what the bridge's socket receives for
/// every consumer.
pub const READ_METHODS: &[&str] = &[
    "health",
    "status",
    "agents.list",
    "agent.identity.get",
    "system-presence",
    "last-heartbeat",
    "sessions.list",
    "sessions.describe",
    "chat.history",
];

pub(super) fn read_nats(r: &mut Reader) -> Option<NatsSettings> {
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
            format!(
                "{:?} is not allowed; use nats://HOST:PORT (or tls://HOST:PORT)",
                super::redact_url(&url)
            ),
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
    let user = r.opt_string("nats.user").filter(|u| !u.trim().is_empty());
    let password = match r.opt_string("nats.password") {
        Some(p) if p.is_empty() => {
            r.err(
                "nats.password",
                "is empty; remove the key or give the password",
            );
            None
        }
        Some(p) => Some(Secret::new(p)),
        None => None,
    };
    let user = match (user, password) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        (Some(_), None) => {
            r.err(
                "nats.password",
                "is required with nats.user (prefer OPENCLAW_BRIDGE__NATS__PASSWORD)",
            );
            None
        }
        (None, Some(_)) => {
            r.err("nats.user", "is required with nats.password");
            None
        }
    };
    if user.is_some() && (token.is_some() || credentials_file.is_some()) {
        r.err(
            "nats.user",
            "set one of nats.user + nats.password, nats.token or nats.credentials_file",
        );
    }
    let duplicate_window = Duration::from_secs(num(r, "nats.duplicate_window_s", 120, 1, 86_400));
    if duplicate_window > max_age {
        r.err(
            "nats.duplicate_window_s",
            "must not be longer than nats.max_age_s (JetStream refuses such a stream)",
        );
    }
    let rpc = match r.cfg.get_bool("nats.rpc") {
        Ok(b) => b,
        Err(config::ConfigError::NotFound(_)) => false,
        Err(_) => {
            r.err("nats.rpc", "is not allowed; use true or false");
            false
        }
    };
    let rpc_methods = if matches!(
        r.cfg.get_array("nats.rpc_methods"),
        Err(config::ConfigError::NotFound(_))
    ) && r.opt_string("nats.rpc_methods").is_none()
    {
        READ_METHODS.iter().map(|m| (*m).to_owned()).collect()
    } else {
        r.list("nats.rpc_methods")
    };
    if rpc_methods.iter().any(|m| m.is_empty()) {
        r.err("nats.rpc_methods", "has an empty method name");
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
        user,
        duplicate_window,
        rpc,
        rpc_methods,
    })
}
