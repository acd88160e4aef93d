//! Key names: the known sections and their keys (unknown ones are reported
//! with what is allowed), and the allowed `gateway.client_id`,
//! `gateway.client_mode` and `gateway.scopes` values.

use std::collections::HashMap;

use config::Config;

use super::ConfigError;

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

pub(super) fn unknown_keys(cfg: &Config, errors: &mut Vec<ConfigError>) {
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
