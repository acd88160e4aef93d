//! Prometheus metrics (`GET /metrics`), via the `metrics` facade and its
//! Prometheus exporter. Names are defined once here; every name starts with
//! `openclaw_bridge_`.
//!
//! Label values are bounded: gateway methods outside [`KNOWN_METHODS`] count
//! as `other` (callers choose method names; a label per arbitrary string would
//! grow without limit).

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const CONNECTION_STATE: &str = "openclaw_bridge_connection_state";
pub const CONNECTS: &str = "openclaw_bridge_connects_total";
pub const DISCONNECTS: &str = "openclaw_bridge_disconnects_total";
pub const EVENTS: &str = "openclaw_bridge_events_total";
pub const BAD_FRAMES: &str = "openclaw_bridge_bad_frames_total";
pub const SEQ_GAPS: &str = "openclaw_bridge_seq_gaps_total";
pub const REQUESTS: &str = "openclaw_bridge_requests_total";
pub const REQUEST_DURATION: &str = "openclaw_bridge_request_duration_seconds";
pub const PENDING_REQUESTS: &str = "openclaw_bridge_pending_requests";
pub const SSE_SUBSCRIBERS: &str = "openclaw_bridge_sse_subscribers";
pub const SSE_DROPPED: &str = "openclaw_bridge_sse_events_dropped_total";
pub const EVENTS_UNDELIVERED: &str = "openclaw_bridge_events_undelivered_total";

/// Methods that get their own label value.
pub const KNOWN_METHODS: &[&str] = &[
    "health",
    "status",
    "agents.list",
    "agent.identity.get",
    "system-presence",
    "last-heartbeat",
    "sessions.list",
    "sessions.describe",
    "sessions.subscribe",
    "sessions.messages.subscribe",
    "sessions.messages.unsubscribe",
    "chat.history",
    "chat.send",
    "chat.abort",
    "agent",
    "agent.wait",
    "wake",
    "device.token.revoke",
];

const STATES: &[&str] = &["connecting", "connected", "backoff", "parked", "stopping"];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the global recorder (once per process) and return the handle that
/// renders the text format. `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(REQUEST_DURATION.into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0,
                    ],
                )
                .ok()?;
            builder.install_recorder().ok()
        })
        .clone()
}

/// Label for a method name.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

/// One-hot connection state gauge.
pub fn set_state(state: &str) {
    for s in STATES {
        gauge!(CONNECTION_STATE, "state" => *s).set(if *s == state { 1.0 } else { 0.0 });
    }
}

pub fn connected() {
    counter!(CONNECTS).increment(1);
}

pub fn disconnected(reason: &str) {
    counter!(DISCONNECTS, "reason" => reason.to_owned()).increment(1);
}

pub fn bad_frame(kind: &'static str) {
    counter!(BAD_FRAMES, "kind" => kind).increment(1);
}

pub fn seq_gap() {
    counter!(SEQ_GAPS).increment(1);
}

/// An outcome label: `ok`, a bridge code, or a gateway error code. Codes are
/// short upper-case identifiers; anything else counts as `other` so a peer
/// cannot grow the label set with arbitrary strings.
fn outcome_label(outcome: &str) -> String {
    let plain = outcome.len() <= 40
        && outcome
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if outcome == "ok" || plain {
        outcome.to_owned()
    } else {
        "other".to_owned()
    }
}

pub fn request_done(method: &str, outcome: &str, seconds: f64) {
    let m = method_label(method);
    let outcome = outcome_label(outcome);
    counter!(REQUESTS, "method" => m, "outcome" => outcome).increment(1);
    histogram!(REQUEST_DURATION, "method" => m).record(seconds);
}

pub fn pending(n: usize) {
    gauge!(PENDING_REQUESTS).set(n as f64);
}

pub fn sse_subscribers(n: usize) {
    gauge!(SSE_SUBSCRIBERS).set(n as f64);
}

pub fn sse_dropped(n: u64) {
    counter!(SSE_DROPPED).increment(n);
}

pub fn undelivered(to: &'static str) {
    counter!(EVENTS_UNDELIVERED, "to" => to).increment(1);
}

/// Per-event-name counters, cached so the event path does not build and hash
/// a label set for every event. Names are bounded by the gateway's event
/// vocabulary; past [`EventCounters::MAX`] distinct names the rest count as
/// `other`.
#[derive(Default)]
pub struct EventCounters {
    by_name: HashMap<String, Counter>,
}

impl EventCounters {
    const MAX: usize = 256;

    pub fn count(&mut self, name: &str) {
        if let Some(c) = self.by_name.get(name) {
            c.increment(1);
            return;
        }
        let label = if self.by_name.len() < Self::MAX {
            name.to_owned()
        } else {
            "other".to_owned()
        };
        let c = counter!(EVENTS, "event" => label);
        c.increment(1);
        self.by_name.insert(name.to_owned(), c);
    }
}
