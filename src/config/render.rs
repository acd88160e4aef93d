//! The effective configuration as TOML for `check-config`, secrets redacted.

use std::path::PathBuf;
use std::time::Duration;

use super::{LogFormat, Secret, Settings};

pub(super) fn secret(t: &mut toml::Table, key: &str, s: &Option<Secret>) {
    if s.is_some() {
        t.insert(key.into(), toml::Value::String("<redacted>".into()));
    }
}

pub(super) fn path(t: &mut toml::Table, key: &str, p: &Option<PathBuf>) {
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
        http.insert(
            "max_sse_subscribers".into(),
            Value::Integer(self.http.max_sse_subscribers as i64),
        );
        http.insert(
            "cors_origins".into(),
            Value::Array(
                self.http
                    .cors_origins
                    .iter()
                    .map(|o| Value::String(o.clone()))
                    .collect(),
            ),
        );
        let mut state = Table::new();
        state.insert(
            "dir".into(),
            Value::String(self.state.dir.display().to_string()),
        );
        let mut events = Table::new();
        events.insert("buffer".into(), Value::Integer(self.events.buffer as i64));
        events.insert(
            "buffer_bytes".into(),
            Value::Integer(self.events.buffer_bytes as i64),
        );
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
            t.insert(
                "url".into(),
                Value::String(super::redact_url(&n.url).into_owned()),
            );
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
            if let Some((u, p)) = &n.user {
                t.insert("user".into(), Value::String(u.clone()));
                secret(&mut t, "password", &Some(p.clone()));
            }
            t.insert(
                "duplicate_window_s".into(),
                Value::Integer(n.duplicate_window.as_secs() as i64),
            );
            t.insert("rpc".into(), Value::Boolean(n.rpc));
            t.insert(
                "rpc_methods".into(),
                Value::Array(
                    n.rpc_methods
                        .iter()
                        .map(|m| Value::String(m.clone()))
                        .collect(),
                ),
            );
            root.insert("nats".into(), Value::Table(t));
        }
        toml::to_string(&root).unwrap_or_else(|e| format!("# could not render: {e}\n"))
    }
}
