//! Prometheus metrics (`GET /metrics`), via the `metrics` facade and its
//! Prometheus exporter. Names are defined once here; every name starts with
//! `openclaw_bridge_`.
//!
//! Every series of a gateway carries a `gateway` label (its configured id).
//! Label values are bounded: gateway methods outside [`KNOWN_METHODS`] count
//! as `other` (callers choose method names; a label per arbitrary string would
//! grow without limit).

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
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
pub const NATS_PUBLISHED: &str = "openclaw_bridge_nats_published_total";
pub const NATS_DROPPED: &str = "openclaw_bridge_nats_dropped_total";
pub const NATS_CONNECTION_STATE: &str = "openclaw_bridge_nats_connection_state";
pub const NATS_QUEUE: &str = "openclaw_bridge_nats_queue";
/// Requests refused by a per-gateway bound (`BRIDGE_OVERLOADED`), by bound.
pub const OVERLOADED: &str = "openclaw_bridge_overloaded_total";
/// Requests dropped before being written: deadline passed or caller gone.
pub const UNWRITTEN: &str = "openclaw_bridge_requests_unwritten_total";
/// Store writes that failed (the store is a cache; the bridge keeps serving).
pub const STORE_WRITE_FAILURES: &str = "openclaw_bridge_store_write_failures_total";

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
            let handle = builder.install_recorder().ok()?;
            describe_all();
            Some(handle)
        })
        .clone()
}

/// `# HELP` text per metric: scrapers and `promtool check metrics` want it.
/// A new metric gets its line here.
const HELP: &[(&str, &str)] = &[
    (
        CONNECTION_STATE,
        "Gateway link state, one-hot by state label.",
    ),
    (
        CONNECTS,
        "Gateway sessions established (hello-ok received).",
    ),
    (DISCONNECTS, "Gateway sessions lost, by reason."),
    (EVENTS, "Gateway events received, by event name."),
    (
        BAD_FRAMES,
        "Frames from the gateway that could not be decoded, by kind.",
    ),
    (
        SEQ_GAPS,
        "Gaps in the gateway's event sequence (events missed).",
    ),
    (
        REQUESTS,
        "Gateway requests finished, by method and outcome.",
    ),
    (
        REQUEST_DURATION,
        "Gateway request duration in seconds, by method.",
    ),
    (PENDING_REQUESTS, "Gateway requests awaiting an answer."),
    (SSE_SUBSCRIBERS, "Connected Server-Sent Events subscribers."),
    (SSE_DROPPED, "Events dropped for lagging SSE subscribers."),
    (
        EVENTS_UNDELIVERED,
        "Events that could not be handed on, by destination.",
    ),
    (NATS_PUBLISHED, "Events published to NATS."),
    (NATS_DROPPED, "Events not published to NATS, by reason."),
    (
        NATS_CONNECTION_STATE,
        "NATS connection state, one-hot by state label.",
    ),
    (NATS_QUEUE, "Events queued for NATS publishing."),
];

fn describe_all() {
    for (name, help) in HELP {
        // The Prometheus exporter keeps one help text per name, whatever
        // the kind named here.
        metrics::describe_counter!(*name, *help);
    }
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
pub fn set_state(gw: &str, state: &str) {
    for s in STATES {
        gauge!(CONNECTION_STATE, "gateway" => gw.to_owned(), "state" => *s).set(if *s == state {
            1.0
        } else {
            0.0
        });
    }
}

pub fn connected(gw: &str) {
    counter!(CONNECTS, "gateway" => gw.to_owned()).increment(1);
}

pub fn disconnected(gw: &str, reason: &str) {
    // Reasons include gateway-supplied codes: bounded like outcomes.
    counter!(DISCONNECTS, "gateway" => gw.to_owned(), "reason" => outcome_label(reason))
        .increment(1);
}

pub fn bad_frame(gw: &str, kind: &'static str) {
    counter!(BAD_FRAMES, "gateway" => gw.to_owned(), "kind" => kind).increment(1);
}

pub fn seq_gap(gw: &str) {
    counter!(SEQ_GAPS, "gateway" => gw.to_owned()).increment(1);
}

/// Gateway error codes and `details.code`s that get their own label value.
const GATEWAY_CODES: &[&str] = &[
    "INVALID_REQUEST",
    "FORBIDDEN",
    "NOT_PAIRED",
    "UNAVAILABLE",
    "APPROVAL_NOT_FOUND",
    "AUTH_TOKEN_MISSING",
    "AUTH_TOKEN_MISMATCH",
    "AUTH_RATE_LIMITED",
    "AUTH_DEVICE_TOKEN_MISMATCH",
    "AUTH_SCOPE_MISMATCH",
    "AUTH_REQUIRED",
    "AUTH_UNAUTHORIZED",
    "DEVICE_IDENTITY_REQUIRED",
    "PAIRING_REQUIRED",
    "PROTOCOL_MISMATCH",
    "MISSING_SCOPE",
];
/// The bridge's own disconnect causes (see `DisconnectCause::code`).
const BRIDGE_CAUSES: &[&str] = &[
    "connect_failed",
    "upgrade_timeout",
    "challenge_timeout",
    "hello_timeout",
    "bad_hello",
    "scopes_missing",
    "connection_lost",
    "watchdog_expired",
    "protocol_error",
    "closed_by_bridge",
];
/// Close codes the gateway is known to use (PROTOCOL.md §4).
const CLOSE_CODES: &[&str] = &[
    "close_1000",
    "close_1001",
    "close_1002",
    "close_1005",
    "close_1006",
    "close_1008",
    "close_1009",
    "close_1011",
    "close_1012",
    "close_1013",
    "close_4000",
    "close_4001",
];

/// A label from a fixed vocabulary: anything a peer could vary freely (error
/// codes, close codes) outside the known set counts as `other`, so the
/// number of series stays bounded.
fn bounded_label(value: &str) -> &'static str {
    if value == "ok" {
        return "ok";
    }
    for set in [GATEWAY_CODES, BRIDGE_CAUSES, CLOSE_CODES] {
        if let Some(v) = set.iter().find(|v| **v == value) {
            return v;
        }
    }
    match value {
        "BRIDGE_NOT_CONNECTED" => "BRIDGE_NOT_CONNECTED",
        "BRIDGE_TIMEOUT" => "BRIDGE_TIMEOUT",
        "BRIDGE_DISCONNECTED" => "BRIDGE_DISCONNECTED",
        "BRIDGE_SHUTTING_DOWN" => "BRIDGE_SHUTTING_DOWN",
        "BRIDGE_BAD_REQUEST" => "BRIDGE_BAD_REQUEST",
        _ => "other",
    }
}

/// An outcome label: `ok`, a bridge code, or a known gateway error code.
fn outcome_label(outcome: &str) -> &'static str {
    bounded_label(outcome)
}

/// Request counters and latency histograms of one gateway, cached by label
/// set: the request path then does no label building or registry lookup
/// (labels are bounded, so the cache is too: at most every known method ×
/// every bounded outcome).
pub struct RequestMetrics {
    gateway: String,
    counters: HashMap<(&'static str, &'static str), Counter>,
    histograms: HashMap<&'static str, Histogram>,
    /// The handles of the last label set (a stream of one method's requests
    /// then hashes nothing).
    last: Option<(&'static str, &'static str, Counter, Histogram)>,
}

impl RequestMetrics {
    pub fn new(gateway: &str) -> Self {
        RequestMetrics {
            gateway: gateway.to_owned(),
            counters: HashMap::new(),
            histograms: HashMap::new(),
            last: None,
        }
    }

    /// One request ended: `outcome` is `ok` or its error code.
    pub fn done(&mut self, method: &str, outcome: &str, seconds: f64) {
        let m = method_label(method);
        let o = outcome_label(outcome);
        if let Some((lm, lo, c, h)) = &self.last {
            if *lm == m && *lo == o {
                c.increment(1);
                h.record(seconds);
                return;
            }
        }
        let gw = &self.gateway;
        let c = self
            .counters
            .entry((m, o))
            .or_insert_with(
                || counter!(REQUESTS, "gateway" => gw.clone(), "method" => m, "outcome" => o),
            )
            .clone();
        let h = self
            .histograms
            .entry(m)
            .or_insert_with(|| histogram!(REQUEST_DURATION, "gateway" => gw.clone(), "method" => m))
            .clone();
        c.increment(1);
        h.record(seconds);
        self.last = Some((m, o, c, h));
    }
}

pub fn pending(gw: &str, n: usize) {
    gauge!(PENDING_REQUESTS, "gateway" => gw.to_owned()).set(n as f64);
}

pub fn sse_subscribers(gw: &str, n: usize) {
    gauge!(SSE_SUBSCRIBERS, "gateway" => gw.to_owned()).set(n as f64);
}

pub fn sse_dropped(gw: &str, n: u64) {
    counter!(SSE_DROPPED, "gateway" => gw.to_owned()).increment(n);
}

pub fn overloaded(gw: &str, bound: &'static str) {
    counter!(OVERLOADED, "gateway" => gw.to_owned(), "bound" => bound).increment(1);
}

pub fn unwritten(gw: &str) {
    counter!(UNWRITTEN, "gateway" => gw.to_owned()).increment(1);
}

pub fn store_write_failed(gw: &str) {
    counter!(STORE_WRITE_FAILURES, "gateway" => gw.to_owned()).increment(1);
}

pub fn undelivered(gw: &str, to: &'static str, n: u64) {
    counter!(EVENTS_UNDELIVERED, "gateway" => gw.to_owned(), "to" => to).increment(n);
}

/// Messages JetStream acknowledged (events and markers): the counter, for
/// the publisher to look up once and keep.
pub fn nats_published_counter(gw: &str) -> Counter {
    counter!(NATS_PUBLISHED, "gateway" => gw.to_owned())
}

/// Events that did not reach JetStream: `reason` is `queue_full` (NATS down
/// or slow, the bounded queue was full) or `publish_failed` (no ack).
pub fn nats_dropped(gw: &str, reason: &'static str, n: u64) {
    nats_dropped_counter(gw, reason).increment(n);
}

/// The counter behind [`nats_dropped`], for a caller on a hot path to keep.
pub fn nats_dropped_counter(gw: &str, reason: &'static str) -> Counter {
    counter!(NATS_DROPPED, "gateway" => gw.to_owned(), "reason" => reason)
}

/// One-hot NATS connection state: `connected`, `disconnected`.
pub fn nats_state(gw: &str, connected: bool) {
    gauge!(NATS_CONNECTION_STATE, "gateway" => gw.to_owned(), "state" => "connected")
        .set(if connected { 1.0 } else { 0.0 });
    gauge!(NATS_CONNECTION_STATE, "gateway" => gw.to_owned(), "state" => "disconnected")
        .set(if connected { 0.0 } else { 1.0 });
}

/// Events waiting in the NATS publish queue: the gauge, for the publisher
/// to look up once and keep.
pub fn nats_queue_gauge(gw: &str) -> Gauge {
    gauge!(NATS_QUEUE, "gateway" => gw.to_owned())
}

/// Per-event-name counters, cached so the event path does not build and hash
/// a label set for every event. Names are bounded by the gateway's event
/// vocabulary; past `EventCounters::MAX` distinct names the rest count as
/// `other`.
pub struct EventCounters {
    gateway: String,
    by_name: HashMap<String, Counter>,
}

impl EventCounters {
    const MAX: usize = 256;

    /// Counters for one gateway's events.
    pub fn new(gateway: &str) -> Self {
        EventCounters {
            gateway: gateway.to_owned(),
            by_name: HashMap::new(),
        }
    }

    pub fn count(&mut self, name: &str) {
        if let Some(c) = self.by_name.get(name) {
            c.increment(1);
            return;
        }
        if self.by_name.len() >= Self::MAX {
            // Past the cap nothing new is remembered: one shared counter.
            counter!(EVENTS, "gateway" => self.gateway.clone(), "event" => "other").increment(1);
            return;
        }
        let c = counter!(EVENTS, "gateway" => self.gateway.clone(), "event" => name.to_owned());
        c.increment(1);
        self.by_name.insert(name.to_owned(), c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    #[test]
    fn request_metrics_count_every_label_set_whatever_the_order() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        ::metrics::with_local_recorder(&recorder, || {
            let mut m = RequestMetrics::new("gw");
            for (method, outcome) in [
                ("agents.list", "ok"),
                ("agents.list", "ok"),
                ("agents.list", "BRIDGE_TIMEOUT"),
                ("health", "ok"),
                ("agents.list", "ok"),
                ("no.such.method", "ok"),
            ] {
                m.done(method, outcome, 0.001);
            }
        });
        let text = handle.render();
        let count = |labels: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{REQUESTS}{{")) && l.contains(labels))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
        };
        assert_eq!(
            count(r#"method="agents.list",outcome="ok""#),
            Some(3),
            "{text}"
        );
        assert_eq!(
            count(r#"method="agents.list",outcome="BRIDGE_TIMEOUT""#),
            Some(1)
        );
        assert_eq!(count(r#"method="health",outcome="ok""#), Some(1));
        assert_eq!(count(r#"method="other",outcome="ok""#), Some(1));
        let duration_count = text
            .lines()
            .find(|l| {
                l.starts_with(&format!("{REQUEST_DURATION}_count"))
                    && l.contains(r#"method="agents.list""#)
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned);
        assert_eq!(duration_count.as_deref(), Some("4"), "{text}");
    }
}
