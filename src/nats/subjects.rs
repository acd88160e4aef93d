//! Subject names, subject levels and KV keys: pure functions of the
//! configured prefix, the gateway id and what an event names.

/// Subjects for one gateway.
#[derive(Debug, Clone)]
pub struct Subjects {
    pub prefix: String,
    pub gateway: String,
}

impl Subjects {
    pub fn new(prefix: &str, gateway: &str) -> Self {
        Subjects {
            prefix: prefix.to_owned(),
            gateway: gateway.to_owned(),
        }
    }

    /// `P.G.<event>[.<agentId>]`.
    pub fn event(&self, event: &str, agent_id: Option<&str>) -> String {
        let mut s = format!("{}.{}.{}", self.prefix, self.gateway, event_levels(event));
        if let Some(a) = agent_id {
            s.push('.');
            s.push_str(&token(a));
        }
        s
    }

    /// What the stream captures: `P.G.>`.
    pub fn stream_filter(&self) -> String {
        format!("{}.{}.>", self.prefix, self.gateway)
    }

    /// `P.G.bridge.resync`.
    pub fn resync(&self) -> String {
        format!("{}.{}.bridge.resync", self.prefix, self.gateway)
    }

    /// `P.rpc.G`.
    pub fn rpc(&self) -> String {
        format!("{}.rpc.{}", self.prefix, self.gateway)
    }
}

fn bad_char(c: char) -> bool {
    c == '*' || c == '>' || c.is_whitespace() || c.is_control()
}

/// One subject level: `.`, `*`, `>`, whitespace → `_`; empty → `_`.
pub fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".into();
    }
    s.chars()
        .map(|c| if c == '.' || bad_char(c) { '_' } else { c })
        .collect()
}

/// An event name as subject levels: dots kept, each level sanitized.
pub fn event_levels(name: &str) -> String {
    name.split('.')
        .map(|t| {
            if t.is_empty() {
                "_".to_owned()
            } else {
                t.chars()
                    .map(|c| if bad_char(c) { '_' } else { c })
                    .collect()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The KV key of an agent: `<gateway>.<agent>` (watch `<gateway>.>` for
/// one gateway's agents, `>` for all).
pub fn agent_key(gateway: &str, agent_id: &str) -> String {
    format!("{gateway}.{}", kv_key(agent_id))
}

/// A KV key for an agent id: `[-/_=.a-zA-Z0-9]`, no leading or trailing `.`.
pub fn kv_key(agent_id: &str) -> String {
    let mut k: String = agent_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-/_=.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if k.is_empty() {
        k.push('_');
    }
    if k.starts_with('.') {
        k.replace_range(0..1, "_");
    }
    if k.ends_with('.') {
        let n = k.len();
        k.replace_range(n - 1..n, "_");
    }
    k
}

/// Whether stream subject filter `filter` (with `*` and `>`) captures every
/// subject under `tokens.>` (e.g. `openclaw.*.>` captures `openclaw.eu-1.>`;
/// `openclaw.eu-1.*` does not: events have several levels).
pub fn filter_covers_tree(filter: &str, tokens: &[&str]) -> bool {
    let mut f = filter.split('.');
    for t in tokens {
        match f.next() {
            Some(">") => return true,
            Some("*") => {}
            Some(x) if x == *t => {}
            _ => return false,
        }
    }
    f.next() == Some(">") && f.next().is_none()
}
