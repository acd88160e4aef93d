//! Statistics over the rounds and the report tables of the run.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{NATS_FAST_ROW, NATS_LIMIT_ROW, NATS_ROW};

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

pub(crate) fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        })
}

pub(crate) fn fmt_rate(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// `min–max` of rates, each as [`fmt_rate`] writes it.
pub(crate) fn rate_range(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!("{}–{}", fmt_rate(lo), fmt_rate(hi))
}

pub(crate) fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per-round results: variant → one value per round.
#[derive(Default)]
pub(crate) struct Results(BTreeMap<String, Vec<Value>>);

impl Results {
    pub(crate) fn push(&mut self, k: &str, v: Value) {
        self.0.entry(k.to_owned()).or_default().push(v);
    }
    pub(crate) fn has(&self, k: &str) -> bool {
        self.0.get(k).is_some_and(|v| !v.is_empty())
    }
    /// A number at `path` (e.g. "k256/rps") of every round, in round order.
    pub(crate) fn series(&self, k: &str, path: &str) -> Vec<f64> {
        self.0
            .get(k)
            .map(|rounds| {
                rounds
                    .iter()
                    .filter_map(|r| {
                        path.split('/')
                            .try_fold(r, |v, p| v.get(p))
                            .and_then(Value::as_f64)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    /// A number of an ingest variant's every round: the reference client
    /// reports its ingest under `flood/`.
    pub(crate) fn ingest(&self, k: &str, field: &str) -> Vec<f64> {
        if k == "peer" {
            self.series(k, &format!("flood/{field}"))
        } else {
            self.series(k, field)
        }
    }
    /// Events per second of an ingest variant, per round.
    pub(crate) fn eps(&self, k: &str) -> Vec<f64> {
        let ev = self.ingest(k, "events");
        let secs = self.ingest(k, "secs");
        ev.iter().zip(&secs).map(|(e, s)| e / s).collect()
    }
    /// CPU seconds per million events of an ingest variant (median of the
    /// rounds).
    pub(crate) fn cpu_s_per_1m(&self, k: &str) -> f64 {
        median(&Self::ratios(
            &self.ingest(k, "cpu"),
            &self.ingest(k, "events"),
        )) * 1e6
    }
    /// Per-round ratio a / b of a series (rounds where both ran).
    pub(crate) fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x / y).collect()
    }
}

pub(crate) fn report_ingest(res: &Results, nats_skipped: Option<&str>) {
    println!("\n## Ingest: agent events gateway → consumer");
    println!(
        "{:<34} {:>10} {:>17} {:>12} {:>10} {:>8}",
        "variant", "events/s", "min–max", "CPU s/1M ev", "peak RSS", "dropped"
    );
    let rows = [
        ("ingest_raw", "raw limit (awc + typed serde)"),
        ("ingest_actor", "bridge: actors → subscriber"),
        ("ingest_sse", "bridge: GET /v1/events (SSE)"),
        ("fanout1", "SSE, 1 subscriber (deliveries)"),
        ("fanout64", "SSE, 64 subscribers (deliveries)"),
        (NATS_ROW, "bridge: published to JetStream"),
        (NATS_LIMIT_ROW, "JetStream limit (same publishes)"),
        (NATS_FAST_ROW, "JetStream limit, fast-ingest batch"),
        ("peer", "reference GatewayClient (Node)"),
    ];
    for (k, label) in rows {
        if k == NATS_ROW {
            if let Some(why) = nats_skipped {
                println!("{label:<34} skipped: {why}");
            }
        }
        if !res.has(k) {
            continue;
        }
        let eps = res.eps(k);
        let peak = res
            .series(k, "peak_kib")
            .iter()
            .fold(0.0f64, |a, b| a.max(*b));
        let dropped: f64 = res.ingest(k, "dropped").iter().sum();
        println!(
            "{:<34} {:>10} {:>17} {:>12.2} {:>7.1} MiB {:>8}",
            label,
            fmt_rate(median(&eps)),
            rate_range(&eps),
            res.cpu_s_per_1m(k),
            peak / 1024.0,
            dropped
        );
    }
    println!("(peak RSS: VmHWM of each variant's own process; the SSE client thread's CPU is subtracted)");
    if res.has(NATS_ROW) {
        println!("(JetStream: events stored and acknowledged by nats-server -js, file store, counted by polling a consumer; the bridge process's CPU only, the counter thread's subtracted)");
    }
    let (raw, actor) = (res.eps("ingest_raw"), res.eps("ingest_actor"));
    println!(
        "per-round actor/raw: {}",
        list(&Results::ratios(&actor, &raw))
    );
    println!(
        "per-round sse/raw:   {}",
        list(&Results::ratios(&res.eps("ingest_sse"), &raw))
    );
    println!(
        "per-round fanout64/fanout1 (deliveries/s): {}",
        list(&Results::ratios(&res.eps("fanout64"), &res.eps("fanout1")))
    );
    if res.has(NATS_ROW) {
        println!(
            "per-round nats/actor: {}",
            list(&Results::ratios(&res.eps(NATS_ROW), &actor))
        );
    }
    if res.has(NATS_LIMIT_ROW) {
        println!("(JetStream limit: a plain async-nats publisher with the bridge's envelopes, Nats-Msg-Id and {} acks in flight, no gateway or bridge; counted by its acks)", openclaw_bridge::nats::PUBLISH_WINDOW);
        println!(
            "per-round nats/jetstream limit: {}",
            list(&Results::ratios(
                &res.eps(NATS_ROW),
                &res.eps(NATS_LIMIT_ROW)
            ))
        );
    }
    if res.has("peer") {
        println!(
            "per-round actor/reference: {}",
            list(&Results::ratios(&actor, &res.eps("peer")))
        );
    }
}

pub(crate) fn report_rpc(res: &Results) {
    println!("\n## RPC: bench.echo round trips");
    println!(
        "{:<34} {:>9} {:>10} {:>17} {:>9} {:>9}",
        "variant", "in flight", "req/s", "min–max", "p50 µs", "p99 µs"
    );
    let rows = [
        ("rpc_raw", "raw limit (one socket, HashMap)"),
        ("rpc_actor", "bridge: Send → Supervisor"),
        ("rpc_http", "bridge: POST /v1/rpc"),
        ("peer", "reference GatewayClient (Node)"),
    ];
    for k in ["k1", "k256"] {
        for (v, label) in rows {
            let rps = res.series(v, &format!("{k}/rps"));
            if rps.is_empty() {
                continue;
            }
            println!(
                "{:<34} {:>9} {:>10} {:>17} {:>9.0} {:>9.0}",
                label,
                &k[1..],
                fmt_rate(median(&rps)),
                rate_range(&rps),
                median(&res.series(v, &format!("{k}/p50_us"))),
                median(&res.series(v, &format!("{k}/p99_us")))
            );
        }
    }
    for k in ["k1", "k256"] {
        let raw = res.series("rpc_raw", &format!("{k}/rps"));
        for v in ["rpc_actor", "rpc_http", "peer"] {
            let r = Results::ratios(&res.series(v, &format!("{k}/rps")), &raw);
            if !r.is_empty() {
                println!("per-round {v}/raw at {}: {}", &k[1..], list(&r));
            }
        }
    }
}
