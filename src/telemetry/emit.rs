//! One emitter per operator event: each function below writes the log line
//! (with its stable `event` name from [`events`](super::events)) and moves
//! the metric that counts it, together, so neither can be forgotten or
//! drift from the other. Call sites pass what happened; they never pair a
//! `tracing` call and a `metrics` call by hand.
//!
//! | event (log)                     | metric                                            |
//! |---------------------------------|---------------------------------------------------|
//! | `gateway.connected`             | `openclaw_bridge_connects_total`                  |
//! | `gateway.disconnected`          | `openclaw_bridge_disconnects_total{reason}`       |
//! | `gateway.seq_gap`               | `openclaw_bridge_seq_gaps_total`                  |
//! | `gateway.bad_frame`             | `openclaw_bridge_bad_frames_total{kind}`          |
//! | `gateway.event_undelivered`     | `openclaw_bridge_events_undelivered_total{to}`    |
//! | `http.overloaded`               | `openclaw_bridge_overloaded_total{bound}`         |
//! | `rpc.failed`                    | `openclaw_bridge_requests_total{outcome}` (+ latency) |
//! | `sse.subscriber_lagged`         | `openclaw_bridge_sse_events_dropped_total`        |
//! | `store.write_failed`            | `openclaw_bridge_store_write_failures_total`      |
//! | `nats.connected` / `nats.unavailable` | `openclaw_bridge_nats_connection_state{state}` |
//! | `nats.dropped`                  | `openclaw_bridge_nats_dropped_total{reason}`      |
//!
//! Some lines are rate-limited where a flood would drown the log (the caller
//! says whether this occurrence is logged); the metric counts every one.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use super::events as ev;
use crate::metrics;
use crate::protocol::HelloOk;

/// hello-ok: the session is up.
pub fn gateway_connected(gateway: &str, h: &HelloOk) {
    metrics::connected(gateway);
    tracing::info!(
        gateway,
        event = ev::GATEWAY_CONNECTED,
        server_version = %h.server.version,
        protocol = h.protocol,
        conn_id = h.server.conn_id.as_deref().unwrap_or(""),
        scopes = %h.scopes.join(","),
        tick_interval_ms = h.policy.tick_interval_ms,
        auth_method = h.auth_method.as_deref().unwrap_or(""),
        "gateway session up"
    );
}

/// A session ended (or an attempt failed). Counted every time; logged as
/// `gateway.disconnected` only when a session was up (a failed attempt is
/// logged by the retry decision that follows).
pub fn gateway_disconnected(
    gateway: &str,
    cause_code: &str,
    reason: &str,
    close_code: Option<u16>,
    connected_for: Option<Duration>,
    pending_failed: usize,
) {
    metrics::disconnected(gateway, cause_code);
    metrics::pending(gateway, 0);
    if let Some(d) = connected_for {
        tracing::warn!(
            gateway,
            event = ev::GATEWAY_DISCONNECTED,
            close_code,
            reason,
            cause = cause_code,
            connected_for_ms = d.as_millis() as u64,
            pending_failed,
            "gateway session lost"
        );
    }
}

/// The outer `seq` jumped: events were missed (a resync follows).
pub fn seq_gap(gateway: &str, expected: u64, got: u64) {
    metrics::seq_gap(gateway);
    tracing::warn!(
        gateway,
        event = ev::GATEWAY_SEQ_GAP,
        expected,
        got,
        "events were missed; resyncing the registry"
    );
}

/// A frame that could not be decoded was dropped (the session goes on).
pub fn bad_frame_undecodable(gateway: &str, problem: &str, size: usize) {
    metrics::bad_frame(gateway, "undecodable");
    tracing::warn!(
        gateway,
        event = ev::GATEWAY_BAD_FRAME,
        size,
        problem,
        "frame from the gateway dropped"
    );
}

/// A frame over `gateway.max_frame_bytes` was skipped unread; the request
/// it answered (when its id came first) was failed.
pub fn bad_frame_oversized(
    gateway: &str,
    size: u64,
    limit: usize,
    request_id: Option<&str>,
    request_failed: bool,
    oversized_frames: u64,
) {
    metrics::bad_frame(gateway, "oversized");
    tracing::error!(
        gateway,
        event = ev::GATEWAY_BAD_FRAME,
        problem = "frame over the size limit",
        size,
        limit,
        request_id = request_id.unwrap_or(""),
        request_failed,
        oversized_frames,
        "a message from the gateway was over gateway.max_frame_bytes and was skipped unread"
    );
}

/// An event could not be handed to `to` (`registry` or `broker`): its
/// mailbox was full.
pub fn event_undelivered(gateway: &str, to: &'static str, count: usize) {
    metrics::undelivered(gateway, to, count as u64);
    let what = if to == "registry" {
        "registry mailbox full: events not applied"
    } else {
        "broker mailbox full: events dropped"
    };
    tracing::warn!(gateway, event = ev::EVENT_UNDELIVERED, to, count, "{what}");
}

/// A request was refused past a bound (`BRIDGE_OVERLOADED`). Counted every
/// time; logged when the bound starts being hit (`log`).
pub fn overloaded(
    gateway: &str,
    bound: &'static str,
    limit: u64,
    pending: usize,
    queued_bytes: usize,
    log: bool,
) {
    metrics::overloaded(gateway, bound);
    if log {
        tracing::warn!(
            gateway,
            event = ev::HTTP_OVERLOADED,
            bound,
            limit,
            pending,
            queued_bytes,
            "too many requests in flight to this gateway; refusing with BRIDGE_OVERLOADED until some finish"
        );
    }
}

/// A request ended: counted and timed by method and outcome (`ok` or its
/// error code, through the cached handles of `request_metrics`); a failure
/// is also logged as `rpc.failed`.
pub fn request_done(
    request_metrics: &mut metrics::RequestMetrics,
    gateway: &str,
    method: &str,
    failure: Option<(&str, &dyn Display)>,
    elapsed: Duration,
) {
    let outcome = failure.map_or("ok", |(code, _)| code);
    request_metrics.done(method, outcome, elapsed.as_secs_f64());
    if let Some((code, error)) = failure {
        tracing::info!(
            gateway,
            event = ev::RPC_FAILED,
            method,
            code,
            elapsed_ms = elapsed.as_millis() as u64,
            "request failed: {error}"
        );
    }
}

/// An SSE subscriber fell behind the event ring and lost ids `from..=to`
/// (it gets a `bridge.gap` message for them).
pub fn sse_lagged(gateway: &str, subscriber: &str, subscriber_id: u64, from: u64, to: u64) {
    let dropped = to - from + 1;
    metrics::sse_dropped(gateway, dropped);
    tracing::warn!(
        gateway,
        event = ev::SSE_SUBSCRIBER_LAGGED,
        subscriber,
        subscriber_id,
        from,
        to,
        dropped,
        "subscriber fell behind the event ring; it gets a bridge.gap message for the ids it missed"
    );
}

/// How a failed store write is logged: once when writes start failing.
pub enum StoreFailureLog<'a> {
    /// The first failure after writes worked: log it with the fix.
    Started {
        error: &'a dyn Display,
        changes: usize,
        path: &'a Path,
    },
    /// Still failing: counted, not logged again.
    Again,
}

/// A batch of registry changes did not reach the store (the bridge serves
/// on; the store is a cache).
pub fn store_write_failed(gateway: &str, log: StoreFailureLog<'_>) {
    metrics::store_write_failed(gateway);
    if let StoreFailureLog::Started {
        error,
        changes,
        path,
    } = log
    {
        tracing::warn!(gateway, event = ev::STORE_WRITE_FAILED, error = %error, changes, path = %path.display(), "store writes are failing; changes are not stored until they work again (logged once; openclaw_bridge_store_write_failures_total counts them). The store is a cache: the bridge keeps serving");
    }
}

/// Store writes work again after `failed` failures.
pub fn store_recovered(gateway: &str, failed: u64, path: &Path) {
    tracing::info!(
        gateway,
        event = ev::STORE_WRITE_FAILED,
        recovered = true,
        failed,
        path = %path.display(),
        "store writes work again"
    );
}

/// The NATS connection came up (first time and after every reconnect).
pub fn nats_connected(gateway: &str) {
    metrics::nats_state(gateway, true);
    tracing::info!(gateway, event = ev::NATS_CONNECTED, "connected to NATS");
}

/// The NATS connection was lost (events queue up, bounded).
pub fn nats_disconnected(gateway: &str) {
    metrics::nats_state(gateway, false);
    tracing::warn!(
        gateway,
        event = ev::NATS_UNAVAILABLE,
        "lost the NATS connection; events queue up (bounded) and SSE keeps working; reconnecting"
    );
}

/// An event was dropped for NATS because its publish queue was full (NATS
/// down or slow). Counted on the sink's cached `counter` every time; logged
/// when `log` says how many since the last line (at most every few seconds).
pub fn nats_queue_full(gateway: &str, counter: &::metrics::Counter, log: Option<(u64, u64)>) {
    counter.increment(1);
    if let Some((dropped, dropped_total)) = log {
        tracing::warn!(gateway, event = ev::NATS_DROPPED, dropped, dropped_total, reason = "queue_full", "NATS is down or slow and its publish queue is full; events are dropped for NATS (announced in the stream once it is back; SSE is not affected)");
    }
}

/// JetStream did not take an event (publish failed, no ack, or the ack
/// timed out).
pub fn nats_publish_failed(gateway: &str, bridge_id: Option<u64>, error: &dyn Display) {
    metrics::nats_dropped(gateway, "publish_failed", 1);
    tracing::debug!(
        gateway,
        event = ev::NATS_DROPPED,
        bridge_id,
        "not stored by JetStream: {error}"
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Run `f`; the JSON log lines it wrote and the metrics it recorded.
    fn capture(f: impl FnOnce()) -> (Vec<serde_json::Value>, String) {
        let buf = Buf::default();
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || w.clone())
            .finish();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        tracing::subscriber::with_default(subscriber, || {
            ::metrics::with_local_recorder(&recorder, f);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, handle.render())
    }

    fn events(lines: &[serde_json::Value]) -> Vec<&str> {
        lines.iter().filter_map(|l| l["event"].as_str()).collect()
    }

    #[test]
    fn each_emitter_writes_its_event_and_its_metric() {
        let (lines, m) = capture(|| {
            seq_gap("gw", 3, 9);
            bad_frame_undecodable("gw", "not JSON", 12);
            bad_frame_oversized("gw", 1 << 30, 1 << 20, Some("r1"), true, 1);
            event_undelivered("gw", "broker", 1);
            overloaded("gw", "gateway.max_pending", 4, 4, 0, true);
            overloaded("gw", "gateway.max_pending", 4, 4, 0, false);
            sse_lagged("gw", "sse", 7, 10, 14);
            store_write_failed(
                "gw",
                StoreFailureLog::Started {
                    error: &"disk full",
                    changes: 3,
                    path: Path::new("/x"),
                },
            );
            store_write_failed("gw", StoreFailureLog::Again);
            let hello = HelloOk::parse(
                r#"{"type":"hello-ok","protocol":4,"server":{"version":"2026.9.6","connId":"c"},"features":{"methods":[],"events":[]},"snapshot":{},"policy":{"maxPayload":26214400,"maxBufferedBytes":52428800,"tickIntervalMs":30000},"auth":{"role":"operator","scopes":["operator.read"]}}"#,
            )
            .unwrap();
            gateway_connected("gw", &hello);
            gateway_disconnected(
                "gw",
                "close_1012",
                "restart",
                Some(1012),
                Some(Duration::from_secs(1)),
                2,
            );
            gateway_disconnected("gw", "connect_failed", "refused", None, None, 0);
            nats_connected("gw");
            nats_disconnected("gw");
            nats_queue_full(
                "gw",
                &metrics::nats_dropped_counter("gw", "queue_full"),
                Some((1, 1)),
            );
            nats_queue_full(
                "gw",
                &metrics::nats_dropped_counter("gw", "queue_full"),
                None,
            );
            nats_publish_failed("gw", Some(7), &"no ack");
            let mut rm = metrics::RequestMetrics::new("gw");
            request_done(&mut rm, "gw", "health", None, Duration::from_millis(3));
            request_done(
                &mut rm,
                "gw",
                "health",
                Some(("BRIDGE_TIMEOUT", &"timed out")),
                Duration::from_millis(3),
            );
        });
        assert_eq!(
            events(&lines),
            vec![
                ev::GATEWAY_SEQ_GAP,
                ev::GATEWAY_BAD_FRAME,
                ev::GATEWAY_BAD_FRAME,
                ev::EVENT_UNDELIVERED,
                ev::HTTP_OVERLOADED,
                ev::SSE_SUBSCRIBER_LAGGED,
                ev::STORE_WRITE_FAILED,
                ev::GATEWAY_CONNECTED,
                ev::GATEWAY_DISCONNECTED,
                ev::NATS_CONNECTED,
                ev::NATS_UNAVAILABLE,
                ev::NATS_DROPPED,
                ev::NATS_DROPPED,
                ev::RPC_FAILED,
            ],
            "{lines:#?}"
        );
        for line in [
            r#"openclaw_bridge_seq_gaps_total{gateway="gw"} 1"#,
            r#"openclaw_bridge_bad_frames_total{gateway="gw",kind="undecodable"} 1"#,
            r#"openclaw_bridge_bad_frames_total{gateway="gw",kind="oversized"} 1"#,
            r#"openclaw_bridge_events_undelivered_total{gateway="gw",to="broker"} 1"#,
            r#"openclaw_bridge_overloaded_total{gateway="gw",bound="gateway.max_pending"} 2"#,
            r#"openclaw_bridge_sse_events_dropped_total{gateway="gw"} 5"#,
            r#"openclaw_bridge_store_write_failures_total{gateway="gw"} 2"#,
            r#"openclaw_bridge_connects_total{gateway="gw"} 1"#,
            r#"openclaw_bridge_disconnects_total{gateway="gw",reason="connect_failed"} 1"#,
            r#"openclaw_bridge_nats_dropped_total{gateway="gw",reason="queue_full"} 2"#,
            r#"openclaw_bridge_nats_dropped_total{gateway="gw",reason="publish_failed"} 1"#,
            r#"openclaw_bridge_nats_connection_state{gateway="gw",state="disconnected"} 1"#,
            r#"openclaw_bridge_requests_total{gateway="gw",method="health",outcome="ok"} 1"#,
            r#"openclaw_bridge_requests_total{gateway="gw",method="health",outcome="BRIDGE_TIMEOUT"} 1"#,
        ] {
            assert!(m.contains(line), "missing {line} in\n{m}");
        }
        // Fields operators alert on.
        assert_eq!(lines[0]["expected"], 3);
        assert_eq!(lines[0]["got"], 9);
        assert_eq!(lines[5]["dropped"], 5);
        assert_eq!(lines[13]["code"], "BRIDGE_TIMEOUT");
    }
}
