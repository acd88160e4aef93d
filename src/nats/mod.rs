//! NATS JetStream: fan-out to many Control Center replicas (`[nats]`).
//!
//! **Owns:** one NATS client (the official `async-nats`, on the actix system's
//! tokio runtime), a bounded publish queue fed by [`NatsSink`] (an
//! [`EventSink`] on the `EventBroker`), and three tasks: the publisher, the
//! registry → KV mirror, and the RPC responder.
//!
//! **Subjects** (`P` = `nats.subject_prefix`, `G` = `nats.gateway_id`):
//! - `P.G.<event>[.<agentId>]`: every gateway event and bridge lifecycle item
//!   (`bridge.connected`, `bridge.disconnected`, `bridge.resync`). Dots in an
//!   event name stay subject levels (`gateway.suspension` →
//!   `P.G.gateway.suspension`); `*`, `>`, whitespace and empty levels become
//!   `_`. The agent id is one level: `.`, `*`, `>` and whitespace become `_`
//!   (the envelope carries the exact id). `P.G.agent.>` gets every agent
//!   event that names an agent; `P.G.>` gets everything.
//! - `P.rpc.G`: RPC request–reply. Not under `P.G.>` on purpose: the stream
//!   captures `P.G.>`, and JetStream acknowledges every captured message that
//!   has a reply subject, which would answer the request before the bridge.
//!
//! **Envelope** (JSON): `{"gateway","epoch","seq","bridge_id","event",
//! "agent_id"?,"run_id"?,"payload"}`: `epoch` counts gateway sessions
//! (hello-ok) since the bridge started, `seq` is the gateway's outer seq (or
//! null), `bridge_id` the bridge's event id (SSE `id:`).
//!
//! **Resync markers** on `P.G.bridge.resync` (same envelope, `bridge_id`
//! null), `payload.reason`: `reconnect` (a new gateway session: state may have
//! changed unseen; re-read the KV bucket), `seq_gap` (`expected`, `got`), and
//! `events_lost` (`missed`: inclusive bridge id ranges, `count`): events that
//! did not reach JetStream (queue full while NATS was down or slow, or no
//! acknowledgement). Loss is never silent.
//!
//! **Never blocks the broker:** [`NatsSink::offer`] is a `try_send` into a
//! queue of `nats.buffer` items. While NATS is down the publisher holds
//! back and the queue absorbs the outage; when it is full further events are
//! counted (`openclaw_bridge_nats_dropped_total`), logged (`nats.dropped`,
//! at most every 5 s) and announced once NATS is back.

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use async_nats::connection::State;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::actors::broker::{BrokerItem, EventSink};
use crate::actors::registry::ListAgents;
use crate::actors::{AgentRegistry, Supervisor};
use crate::config::NatsSettings;
use crate::http::ApiError;
use crate::telemetry::events as ev;

/// Acks awaited at once by the publisher (pipelined publishing).
const WINDOW: usize = 256;
/// How long a JetStream acknowledgement may take before the event counts as lost.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the registry is compared with the KV bucket.
pub const KV_EVERY: Duration = Duration::from_millis(500);
/// Requests over NATS handled at once.
const RPC_CONCURRENCY: usize = 256;
/// Loss ranges kept before neighbouring ranges are merged.
const MAX_RANGES: usize = 64;
/// Minimum interval between two `nats.dropped` / `nats.unavailable` lines.
const LOG_EVERY: Duration = Duration::from_secs(5);

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

/// The gateway seq at the start of a `data` line (`{"seq":N,…`).
fn data_seq(data: &str) -> Option<u64> {
    let rest = data.strip_prefix("{\"seq\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// Bridge ids that did not reach JetStream, as inclusive ranges.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Lost {
    pub ranges: Vec<(u64, u64)>,
    pub count: u64,
}

impl Lost {
    pub fn add(&mut self, id: u64) {
        self.count += 1;
        self.add_range(id, id);
    }

    /// Add an inclusive range (ids only; `count` is not changed).
    fn add_range(&mut self, from: u64, to: u64) {
        self.ranges.push((from, to));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for (a, b) in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        while merged.len() > MAX_RANGES {
            // Merge the two closest neighbours: the marker then names a
            // superset (conservative), never fewer ids than were lost.
            let mut best = 0;
            let mut best_gap = u64::MAX;
            for i in 0..merged.len() - 1 {
                let gap = merged[i + 1].0.saturating_sub(merged[i].1);
                if gap < best_gap {
                    best_gap = gap;
                    best = i;
                }
            }
            let next = merged.remove(best + 1);
            merged[best].1 = merged[best].1.max(next.1);
        }
        self.ranges = merged;
    }

    pub fn merge(&mut self, other: Lost) {
        for (a, b) in other.ranges {
            self.add_range(a, b);
        }
        self.count += other.count;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// What the sink hands the publisher.
#[derive(Debug)]
enum Outgoing {
    Event { item: Arc<BrokerItem>, epoch: u64 },
    Marker { epoch: u64, payload: Value },
}

struct Shared {
    lost: Mutex<Lost>,
}

impl Shared {
    fn lose(&self, id: u64) {
        if let Ok(mut l) = self.lost.lock() {
            l.add(id);
        }
    }

    fn take(&self) -> Lost {
        self.lost
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    fn put_back(&self, lost: Lost) {
        if let Ok(mut l) = self.lost.lock() {
            let newer = std::mem::take(&mut *l);
            *l = lost;
            l.merge(newer);
        }
    }
}

/// The broker side: numbers epochs, notices seq gaps, queues with `try_send`.
pub struct NatsSink {
    gateway: Arc<str>,
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    epoch: u64,
    last_seq: Option<u64>,
    /// A marker that could not be queued: sent with the next item that fits.
    pending_marker: Option<Value>,
    dropped_unlogged: u64,
    dropped_total: u64,
    last_log: Option<Instant>,
}

impl NatsSink {
    fn queue(&mut self, out: Outgoing) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o)) => {
                match o {
                    Outgoing::Event { item, .. } => {
                        self.shared.lose(item.id);
                        crate::metrics::nats_dropped(&self.gateway, "queue_full", 1);
                        self.dropped_unlogged += 1;
                        self.dropped_total += 1;
                        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                            tracing::warn!(gateway = %self.gateway, event = ev::NATS_DROPPED, dropped = self.dropped_unlogged, dropped_total = self.dropped_total, reason = "queue_full", "NATS is down or slow and its publish queue is full; events are dropped for NATS (announced in the stream once it is back; SSE is not affected)");
                            self.dropped_unlogged = 0;
                            self.last_log = Some(Instant::now());
                        }
                    }
                    Outgoing::Marker { payload, .. } => {
                        // Keep the latest reason; the loss marker covers the rest.
                        self.pending_marker = Some(payload);
                    }
                }
                false
            }
        }
    }
}

impl EventSink for NatsSink {
    fn offer(&mut self, item: &Arc<BrokerItem>) {
        let mut after = None;
        if item.name == "bridge.connected" {
            self.epoch += 1;
            self.last_seq = None;
            after = Some(json!({"reason": "reconnect", "bridge_id": item.id}));
        } else if !item.name.starts_with("bridge.") {
            if let Some(seq) = data_seq(&item.data) {
                if let Some(last) = self.last_seq {
                    if seq != last.wrapping_add(1) {
                        let m = json!({"reason": "seq_gap", "expected": last.wrapping_add(1), "got": seq, "bridge_id": item.id});
                        let epoch = self.epoch;
                        self.queue(Outgoing::Marker { epoch, payload: m });
                    }
                }
                self.last_seq = Some(seq);
            }
        }
        if let Some(m) = self.pending_marker.take() {
            let epoch = self.epoch;
            if !self.queue(Outgoing::Marker { epoch, payload: m }) {
                // Still full: the item below is dropped too.
            }
        }
        let epoch = self.epoch;
        self.queue(Outgoing::Event {
            item: item.clone(),
            epoch,
        });
        if let Some(m) = after {
            self.queue(Outgoing::Marker { epoch, payload: m });
        }
    }
}

/// Stops the NATS tasks (flushing what is queued, bounded).
#[derive(Clone)]
pub struct NatsHandle {
    stop: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
}

impl NatsHandle {
    /// Ask the tasks to stop and wait (at most `bound`) for the publisher to
    /// flush what is queued.
    pub async fn stop(&self, bound: Duration) {
        let _ = self.stop.send(true);
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(bound, done.wait_for(|d| *d)).await;
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    gateway: &'a str,
    epoch: u64,
    seq: Option<u64>,
    bridge_id: Option<u64>,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<&'a str>,
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Subject and envelope of an outgoing item.
fn render(subjects: &Subjects, out: &Outgoing) -> (String, Option<u64>, Bytes) {
    match out {
        Outgoing::Event { item, epoch } => {
            let subject = subjects.event(&item.name, item.agent_id.as_deref());
            let null = RawValue::NULL;
            let (seq, payload) = match serde_json::from_str::<Data>(&item.data) {
                Ok(d) => (d.seq, d.payload),
                Err(_) => (None, null),
            };
            let env = Envelope {
                gateway: &subjects.gateway,
                epoch: *epoch,
                seq,
                bridge_id: Some(item.id),
                event: &item.name,
                agent_id: item.agent_id.as_deref(),
                run_id: item.run_id.as_deref(),
                payload,
            };
            let body = serde_json::to_vec(&env).unwrap_or_default();
            (subject, Some(item.id), Bytes::from(body))
        }
        Outgoing::Marker { epoch, payload } => (
            subjects.resync(),
            None,
            marker_body(subjects, *epoch, payload),
        ),
    }
}

fn marker_body(subjects: &Subjects, epoch: u64, payload: &Value) -> Bytes {
    let v = json!({"gateway": subjects.gateway, "epoch": epoch, "seq": null, "bridge_id": null, "event": "bridge.resync", "payload": payload});
    Bytes::from(v.to_string())
}

/// Start the NATS side: returns the sink to add to the broker and a handle
/// for shutdown. The client connects (and reconnects) in the background; the
/// bridge never waits for NATS.
pub fn start(
    settings: &NatsSettings,
    gateway: &str,
    supervisor: Addr<Supervisor>,
    registry: Addr<AgentRegistry>,
) -> (NatsSink, NatsHandle) {
    let (tx, rx) = mpsc::channel(settings.buffer.max(1));
    let shared = Arc::new(Shared {
        lost: Mutex::new(Lost::default()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let gw: Arc<str> = Arc::from(gateway);
    crate::metrics::nats_state(&gw, false);
    let cfg = settings.clone();
    let task_gw = gw.clone();
    let task_shared = shared.clone();
    actix_rt::spawn(async move {
        run(cfg, task_gw, rx, task_shared, supervisor, registry, stop_rx).await;
        let _ = done_tx.send(true);
    });
    (
        NatsSink {
            gateway: gw,
            tx,
            shared,
            epoch: 0,
            last_seq: None,
            pending_marker: None,
            dropped_unlogged: 0,
            dropped_total: 0,
            last_log: None,
        },
        NatsHandle {
            stop: Arc::new(stop_tx),
            done: done_rx,
        },
    )
}

async fn connect(cfg: &NatsSettings, gw: &Arc<str>) -> Result<async_nats::Client, String> {
    let cb_gw = gw.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("openclaw-bridge/{gw}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|n| {
            Duration::from_millis(100u64.saturating_mul(1 << n.min(5)).min(2000))
        })
        .event_callback(move |e| {
            let gw = cb_gw.clone();
            async move {
            match e {
                async_nats::Event::Connected => {
                    crate::metrics::nats_state(&gw, true);
                    tracing::info!(gateway = %gw, event = ev::NATS_CONNECTED, "connected to NATS");
                }
                async_nats::Event::Disconnected => {
                    crate::metrics::nats_state(&gw, false);
                    tracing::warn!(gateway = %gw, event = ev::NATS_UNAVAILABLE, "lost the NATS connection; events queue up (bounded) and SSE keeps working; reconnecting");
                }
                other => tracing::debug!(gateway = %gw, event = "nats.event", "NATS: {other}"),
            }
            }
        });
    if let Some(t) = &cfg.token {
        opts = opts.token(t.expose().to_owned());
    }
    if let Some(f) = &cfg.credentials_file {
        opts = opts
            .credentials_file(f)
            .await
            .map_err(|e| format!("cannot use nats.credentials_file {}: {e}", f.display()))?;
    }
    opts.connect(cfg.url.as_str())
        .await
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", cfg.url))
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

/// Serializes stream checks and updates of the gateways of this process, so
/// two of them never read the subject list at once and each drop the other's
/// addition.
static STREAM_UPDATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Create the stream if missing; an existing one is used with its limits,
/// and our subjects are added to it when it does not capture them yet (one
/// stream shared by the bridges of several gateways). `Err` says why the
/// stream cannot be used yet (the caller logs it, rate-limited, and retries).
async fn ensure_stream(
    js: &jetstream::Context,
    gw: &str,
    cfg: &NatsSettings,
    subjects: &Subjects,
) -> Result<(), String> {
    let _one_at_a_time = STREAM_UPDATE.lock().await;
    let ours = subjects.stream_filter();
    let tokens: Vec<&str> = subjects
        .prefix
        .split('.')
        .chain(std::iter::once(subjects.gateway.as_str()))
        .collect();
    let sc = jetstream::stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![ours.clone()],
        max_age: cfg.max_age,
        max_bytes: i64::try_from(cfg.max_bytes).unwrap_or(i64::MAX),
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::Old,
        description: Some("openclaw-bridge: gateway events".into()),
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(sc).await.map_err(|e| {
        format!(
            "cannot create or find the JetStream stream {} (is JetStream enabled, -js?): {e}",
            cfg.stream
        )
    })?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read the JetStream stream {}: {e}", cfg.stream))?
        .clone();
    let covered = |subjects: &[String]| subjects.iter().any(|f| filter_covers_tree(f, &tokens));
    if covered(&info.config.subjects) {
        return Ok(());
    }
    let mut config = info.config;
    config.subjects.push(ours.clone());
    let updated = js.update_stream(&config).await.map_err(|e| {
        format!(
            "the JetStream stream {} does not capture {ours} and could not be updated: {e}",
            cfg.stream
        )
    })?;
    if !covered(&updated.config.subjects) {
        return Err(format!(
            "the JetStream stream {} still does not capture {ours} after an update",
            cfg.stream
        ));
    }
    tracing::info!(gateway = gw, stream = %cfg.stream, subject = %ours, "added this gateway's subjects to the existing JetStream stream");
    Ok(())
}

/// [`ensure_stream`], its failures logged at most every [`LOG_EVERY`].
async fn stream_ready(
    js: &jetstream::Context,
    gw: &str,
    cfg: &NatsSettings,
    subjects: &Subjects,
    last_log: &mut Option<Instant>,
) -> bool {
    match ensure_stream(js, gw, cfg, subjects).await {
        Ok(()) => true,
        Err(e) => {
            if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                tracing::warn!(
                    gateway = gw,
                    event = ev::NATS_UNAVAILABLE,
                    "{e}; events wait in the bounded queue"
                );
                *last_log = Some(Instant::now());
            }
            false
        }
    }
}

/// The KV bucket, created if missing.
async fn ensure_bucket(
    js: &jetstream::Context,
    gw: &str,
    cfg: &NatsSettings,
) -> Option<jetstream::kv::Store> {
    if let Ok(s) = js.get_key_value(cfg.kv_bucket.as_str()).await {
        return Some(s);
    }
    let kc = jetstream::kv::Config {
        bucket: cfg.kv_bucket.clone(),
        description: "openclaw-bridge: current state of every agent".into(),
        history: 1,
        // No max_age: an idle agent's state must not expire.
        max_bytes: i64::try_from(cfg.max_bytes).unwrap_or(i64::MAX),
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    match js.create_key_value(kc).await {
        Ok(s) => Some(s),
        Err(e) => {
            // A concurrent creator may have won.
            match js.get_key_value(cfg.kv_bucket.as_str()).await {
                Ok(s) => Some(s),
                Err(_) => {
                    tracing::warn!(gateway = gw, event = ev::NATS_UNAVAILABLE, bucket = %cfg.kv_bucket, "cannot create the KV bucket: {e}");
                    None
                }
            }
        }
    }
}

async fn run(
    cfg: NatsSettings,
    gw: Arc<str>,
    mut rx: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
    supervisor: Addr<Supervisor>,
    registry: Addr<AgentRegistry>,
    mut stop: watch::Receiver<bool>,
) {
    let subjects = Subjects::new(&cfg.subject_prefix, &gw);
    let client = match connect(&cfg, &gw).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                gateway = %gw,
                event = ev::NATS_UNAVAILABLE,
                "{e}; NATS publishing is off (SSE keeps working)"
            );
            return;
        }
    };
    let mut js = jetstream::new(client.clone());
    js.set_timeout(ACK_TIMEOUT);
    actix_rt::spawn(rpc_task(
        client.clone(),
        subjects.rpc(),
        gw.to_string(),
        supervisor,
        stop.clone(),
    ));
    actix_rt::spawn(kv_task(
        client.clone(),
        js.clone(),
        cfg.clone(),
        gw.clone(),
        registry,
        stop.clone(),
    ));

    let mut inflight: VecDeque<(Option<u64>, jetstream::context::PublishAckFuture)> =
        VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false; // stream ensured on the current connection
    let mut epoch = 0u64;
    let mut last_unavailable_log: Option<Instant> = None;
    let mut last_stream_log: Option<Instant> = None;
    let mut stopping = false;
    loop {
        let connected = client.connection_state() == State::Connected;
        if !connected {
            ready = false;
        } else if !ready {
            ready = stream_ready(&js, &gw, &cfg, &subjects, &mut last_stream_log).await;
        }
        if connected && ready {
            announce_loss(&js, &gw, &subjects, &shared, epoch).await;
        }
        crate::metrics::nats_queue(&gw, rx.len());
        if stopping && rx.is_empty() {
            break;
        }
        let next = if inflight.is_empty() {
            tokio::select! {
                o = rx.recv() => match o {
                    Some(o) => Some(o),
                    None => break,
                },
                _ = tick.tick() => None,
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    None
                }
            }
        } else {
            match rx.try_recv() {
                Ok(o) => Some(o),
                Err(mpsc::error::TryRecvError::Empty) => {
                    if !settle_front(&gw, &mut inflight, &shared).await {
                        ready = false;
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        };
        let Some(out) = next else { continue };
        let (Outgoing::Event { epoch: e, .. } | Outgoing::Marker { epoch: e, .. }) = &out;
        epoch = *e;
        // Hold the item until NATS is back; the queue absorbs the outage.
        let mut waited = false;
        while client.connection_state() != State::Connected || !ready {
            if stopping || *stop.borrow() {
                stopping = true;
                break;
            }
            if last_unavailable_log.is_none_or(|t| t.elapsed() >= LOG_EVERY * 2) {
                tracing::warn!(
                    gateway = %gw,
                    event = ev::NATS_UNAVAILABLE,
                    queued = rx.len() + 1,
                    "NATS is unavailable; holding events in the bounded queue (SSE keeps working)"
                );
                last_unavailable_log = Some(Instant::now());
            }
            waited = true;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => {}
            }
            if client.connection_state() == State::Connected && !ready {
                ready = stream_ready(&js, &gw, &cfg, &subjects, &mut last_stream_log).await;
            }
        }
        if stopping && client.connection_state() != State::Connected {
            // Shutting down without NATS: what is left is lost (and logged).
            if let Outgoing::Event { item, .. } = &out {
                shared.lose(item.id);
            }
            while let Ok(o) = rx.try_recv() {
                if let Outgoing::Event { item, .. } = o {
                    shared.lose(item.id);
                }
            }
            break;
        }
        if waited {
            announce_loss(&js, &gw, &subjects, &shared, epoch).await;
        }
        let (subject, id, body) = render(&subjects, &out);
        match js.publish(subject, body).await {
            Ok(ack) => inflight.push_back((id, ack)),
            Err(e) => {
                tracing::debug!(gateway = %gw, event = ev::NATS_DROPPED, "publish failed: {e}");
                lose(&gw, &shared, id, "publish_failed");
                ready = false;
            }
        }
        if inflight.len() >= WINDOW && !settle_front(&gw, &mut inflight, &shared).await {
            ready = false;
        }
    }
    while !inflight.is_empty() {
        settle_front(&gw, &mut inflight, &shared).await;
    }
    if client.connection_state() == State::Connected {
        announce_loss(&js, &gw, &subjects, &shared, epoch).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    }
    let left = shared.take();
    if !left.is_empty() {
        tracing::warn!(gateway = %gw, event = ev::NATS_DROPPED, dropped = left.count, missed = ?left.ranges, "stopping with events that did not reach NATS");
    }
}

fn lose(gw: &str, shared: &Shared, id: Option<u64>, reason: &'static str) {
    if let Some(id) = id {
        shared.lose(id);
        crate::metrics::nats_dropped(gw, reason, 1);
    }
}

/// Await the oldest acknowledgement; false when JetStream refused or never
/// answered (the stream may be gone or no longer capture our subjects).
async fn settle_front(
    gw: &str,
    inflight: &mut VecDeque<(Option<u64>, jetstream::context::PublishAckFuture)>,
    shared: &Shared,
) -> bool {
    let Some((id, ack)) = inflight.pop_front() else {
        return true;
    };
    match tokio::time::timeout(ACK_TIMEOUT + Duration::from_secs(1), ack.into_future()).await {
        Ok(Ok(_)) => {
            crate::metrics::nats_published(gw, 1);
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(
                gateway = gw,
                event = ev::NATS_DROPPED,
                bridge_id = id,
                "no JetStream ack: {e}"
            );
            lose(gw, shared, id, "publish_failed");
            false
        }
        Err(_) => {
            lose(gw, shared, id, "publish_failed");
            false
        }
    }
}

/// Publish an `events_lost` marker for what was lost, if anything; on failure
/// the loss is kept for the next attempt.
async fn announce_loss(
    js: &jetstream::Context,
    gw: &str,
    subjects: &Subjects,
    shared: &Shared,
    epoch: u64,
) {
    let lost = shared.take();
    if lost.is_empty() {
        return;
    }
    let payload = json!({"reason": "events_lost", "missed": lost.ranges, "count": lost.count});
    let body = marker_body(subjects, epoch, &payload);
    let ok = match js.publish(subjects.resync(), body).await {
        Ok(ack) => matches!(
            tokio::time::timeout(ACK_TIMEOUT + Duration::from_secs(1), ack.into_future()).await,
            Ok(Ok(_))
        ),
        Err(_) => false,
    };
    if ok {
        crate::metrics::nats_published(gw, 1);
        tracing::warn!(gateway = gw, event = ev::NATS_RESYNC, reason = "events_lost", dropped = lost.count, missed = ?lost.ranges, "announced events that did not reach NATS (bridge.resync marker)");
    } else {
        shared.put_back(lost);
    }
}

/// Mirror the registry to the KV bucket: every [`KV_EVERY`], put the agents
/// whose JSON changed and delete the ones that are gone. Off the event path.
async fn kv_task(
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: NatsSettings,
    gw: Arc<str>,
    registry: Addr<AgentRegistry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut store: Option<jetstream::kv::Store> = None;
    let mut last: HashMap<String, Bytes> = HashMap::new();
    let mut tick = tokio::time::interval(KV_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if client.connection_state() != State::Connected {
            continue;
        }
        let Some(kv) = (match &store {
            Some(s) => Some(s.clone()),
            None => {
                let s = ensure_bucket(&js, &gw, &cfg).await;
                // A (re)created bucket: put everything again, and treat this
                // gateway's keys already there (an earlier run's) as ours,
                // so agents that vanished meanwhile are deleted.
                last.clear();
                if let Some(kv) = &s {
                    for k in gateway_keys(kv, &gw).await {
                        last.insert(k, Bytes::new());
                    }
                }
                store = s.clone();
                s
            }
        }) else {
            continue;
        };
        let Ok(list) = registry.send(ListAgents).await else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
        let mut failed = false;
        for a in &list.agents {
            let key = agent_key(&gw, &a.id);
            seen.insert(key.clone());
            let Ok(v) = serde_json::to_vec(a) else {
                continue;
            };
            let v = Bytes::from(v);
            if last.get(&key) == Some(&v) {
                continue;
            }
            match kv.put(&key, v.clone()).await {
                Ok(_) => {
                    last.insert(key, v);
                }
                Err(e) => {
                    tracing::debug!(gateway = %gw, event = ev::NATS_UNAVAILABLE, key, "KV put failed: {e}");
                    failed = true;
                    break;
                }
            }
        }
        // Deletions only from the gateway's own list: right after a start
        // the registry holds what the store had, which may lack agents
        // that still exist.
        if !failed && list.synced {
            let gone: Vec<String> = last
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for k in gone {
                if kv.delete(&k).await.is_ok() {
                    last.remove(&k);
                }
            }
        } else {
            store = None;
        }
    }
}

/// The keys of gateway `gw` in the bucket (`<gw>.…`), bounded in time.
async fn gateway_keys(kv: &jetstream::kv::Store, gw: &str) -> Vec<String> {
    let prefix = format!("{gw}.");
    let list = async {
        let mut out = Vec::new();
        if let Ok(mut keys) = kv.keys().await {
            while let Some(Ok(k)) = keys.next().await {
                if k.starts_with(&prefix) {
                    out.push(k);
                }
            }
        }
        out
    };
    match tokio::time::timeout(Duration::from_secs(5), list).await {
        Ok(keys) => keys,
        Err(_) => {
            tracing::warn!(
                gateway = gw,
                event = ev::NATS_UNAVAILABLE,
                "listing the KV bucket took over 5 s; keys of agents that vanished while the bridge was down stay until they change"
            );
            Vec::new()
        }
    }
}

/// RPC over NATS request–reply on `P.rpc.G`: the body and answers of
/// `POST /v1/rpc`, failures with the HTTP status they would have.
async fn rpc_task(
    client: async_nats::Client,
    subject: String,
    gateway: String,
    supervisor: Addr<Supervisor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sub = match client
        .queue_subscribe(subject.clone(), format!("openclaw-bridge.{gateway}"))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                gateway = %gateway,
                event = ev::NATS_UNAVAILABLE,
                subject,
                "cannot subscribe for RPC over NATS: {e}"
            );
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(RPC_CONCURRENCY));
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m {
                Some(m) => m,
                None => return,
            },
            _ = stop.changed() => {
                let _ = sub.unsubscribe().await;
                return;
            }
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let supervisor = supervisor.clone();
        actix_rt::spawn(async move {
            let body = rpc_answer(&supervisor, &msg.payload).await;
            if let Err(e) = client.publish(reply.clone(), body).await {
                let v = ApiError::Internal(format!("the answer could not be sent over NATS: {e}"))
                    .rpc_reply();
                let _ = client.publish(reply, Bytes::from(v.to_string())).await;
            }
            drop(permit);
        });
    }
}

/// The reply to one RPC request body.
pub async fn rpc_answer(supervisor: &Addr<Supervisor>, body: &[u8]) -> Bytes {
    let err = |e: ApiError| Bytes::from(e.rpc_reply().to_string());
    let msg = match crate::http::parse_rpc_body(body) {
        Ok(m) => m,
        Err(e) => return err(e),
    };
    match supervisor.send(msg).await {
        Err(_) => err(ApiError::Internal("the supervisor is not running".into())),
        Ok(Err(e)) => err(ApiError::from(e)),
        Ok(Ok(payload)) => Bytes::from(format!("{{\"ok\":true,\"payload\":{}}}", payload.get())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_filters_that_capture_a_gateway() {
        let t = ["openclaw", "eu-1"];
        for f in [
            "openclaw.eu-1.>",
            "openclaw.*.>",
            "openclaw.>",
            ">",
            "*.eu-1.>",
        ] {
            assert!(filter_covers_tree(f, &t), "{f}");
        }
        for f in [
            "openclaw.eu-1.*",
            "openclaw.eu-2.>",
            "openclaw.eu-1",
            "openclaw.eu-1.agent.>",
            "other.>",
            "openclaw.*.*",
        ] {
            assert!(!filter_covers_tree(f, &t), "{f}");
        }
    }

    #[test]
    fn subjects_are_sanitized_and_levelled() {
        let s = Subjects::new("openclaw", "default");
        assert_eq!(
            s.event("agent", Some("main")),
            "openclaw.default.agent.main"
        );
        assert_eq!(
            s.event("agent", Some("a.b *>\tc")),
            "openclaw.default.agent.a_b____c"
        );
        assert_eq!(
            s.event("gateway.suspension", None),
            "openclaw.default.gateway.suspension"
        );
        assert_eq!(s.event("we*rd..x>", None), "openclaw.default.we_rd._.x_");
        assert_eq!(s.event("agent", Some("")), "openclaw.default.agent._");
        assert_eq!(s.resync(), "openclaw.default.bridge.resync");
        assert_eq!(s.rpc(), "openclaw.rpc.default");
        assert_eq!(s.stream_filter(), "openclaw.default.>");
        assert_eq!(agent_key("eu-1", "a.b"), "eu-1.a.b");
        assert_eq!(kv_key("main"), "main");
        assert_eq!(kv_key(".a b*"), "_a_b_");
        assert_eq!(kv_key("x."), "x_");
        assert_eq!(kv_key(""), "_");
    }

    #[test]
    fn seq_is_read_from_the_data_line() {
        assert_eq!(data_seq("{\"seq\":42,\"payload\":{}}"), Some(42));
        assert_eq!(data_seq("{\"seq\":null,\"payload\":{}}"), None);
        assert_eq!(data_seq("{\"payload\":{},\"seq\":1}"), None);
    }

    #[test]
    fn lost_ids_become_ranges_and_never_shrink() {
        let mut l = Lost::default();
        for id in [3, 4, 5, 9, 10, 4] {
            l.add(id);
        }
        assert_eq!(l.ranges, vec![(3, 5), (9, 10)]);
        for id in (100..1000).step_by(2) {
            l.add(id);
        }
        assert!(l.ranges.len() <= MAX_RANGES);
        for id in [3, 5, 9, 10, 100, 998] {
            assert!(l.ranges.iter().any(|r| r.0 <= id && id <= r.1), "{id}");
        }
        let mut a = Lost::default();
        a.add(1);
        let mut b = Lost::default();
        b.add(7);
        b.add(8);
        b.add(9);
        a.merge(b);
        assert_eq!(a.ranges, vec![(1, 1), (7, 9)]);
        assert_eq!(a.count, 4);
    }

    fn item(id: u64, name: &str, seq: Option<u64>) -> Arc<BrokerItem> {
        let seq = seq.map_or("null".to_owned(), |s| s.to_string());
        Arc::new(BrokerItem {
            id,
            name: name.into(),
            agent_id: Some("main".into()),
            run_id: None,
            data: format!("{{\"seq\":{seq},\"payload\":{{\"x\":1}}}}").into(),
        })
    }

    #[test]
    fn sink_numbers_epochs_marks_gaps_and_counts_drops() {
        let (tx, mut rx) = mpsc::channel(5);
        let shared = Arc::new(Shared {
            lost: Mutex::new(Lost::default()),
        });
        let mut sink = NatsSink {
            gateway: Arc::from("default"),
            tx,
            shared: shared.clone(),
            epoch: 0,
            last_seq: None,
            pending_marker: None,
            dropped_unlogged: 0,
            dropped_total: 0,
            last_log: None,
        };
        sink.offer(&item(1, "bridge.connected", None));
        sink.offer(&item(2, "agent", Some(1)));
        sink.offer(&item(3, "agent", Some(3)));
        let subjects = Subjects::new("openclaw", "default");
        let mut got = Vec::new();
        while let Ok(o) = rx.try_recv() {
            let (subject, _, body) = render(&subjects, &o);
            let v: Value = serde_json::from_slice(&body).unwrap();
            got.push((subject, v));
        }
        assert_eq!(got[0].0, "openclaw.default.bridge.connected.main");
        assert_eq!(got[0].1["epoch"], 1);
        assert_eq!(got[1].0, "openclaw.default.bridge.resync");
        assert_eq!(got[1].1["payload"]["reason"], "reconnect");
        assert_eq!(got[2].1["seq"], 1);
        assert_eq!(got[2].1["bridge_id"], 2);
        assert_eq!(got[2].1["payload"], json!({"x": 1}));
        assert_eq!(got[3].1["payload"]["reason"], "seq_gap");
        assert_eq!(got[3].1["payload"]["expected"], 2);
        assert_eq!(got[4].1["bridge_id"], 3);
        // Queue of 5 now empty; fill it and overflow.
        for id in 10..20 {
            sink.offer(&item(id, "agent", Some(id - 6)));
        }
        let lost = shared.take();
        assert_eq!(lost.ranges, vec![(15, 19)]);
        assert_eq!(lost.count, 5);
    }
}
