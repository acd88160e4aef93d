//! The measured clients. Each runs in its own child process
//! (`bridge --child <role> …`) and prints one `RESULT {json}` line, so its
//! CPU time and peak RSS are its own.
//!
//! - `raw`: the limit — one awc WebSocket, a one-pass typed serde decode of
//!   every frame, ids in a plain `HashMap`; no actors.
//! - `actor`: the bridge in-process (`Application::build`), events read from
//!   an `EventBroker` subscription, requests through `Send` to the Supervisor.
//! - `sse` / `http`: the same bridge, read through `GET /v1/events` and
//!   `POST /v1/rpc` by an awc client on its own thread (its CPU is subtracted).
//! - `nats` (in `jetstream.rs`): the same bridge with a `NatsSink`, counted
//!   as stored by JetStream.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{FutureExt, SinkExt, StreamExt};
use openclaw_bridge::actors::broker::{Filter, Subscribe};
use openclaw_bridge::actors::messages::LinkState;
use openclaw_bridge::actors::supervisor::GetStatus;
use openclaw_bridge::actors::{Send, Supervisor};
use openclaw_bridge::config::{Settings, Sources};
use openclaw_bridge::Application;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::gateway::FLOOD_METHOD;
use super::procfs;

/// Every wait in a child is bounded by this.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);
pub const TOKEN: &str = "bench-token";
pub const ECHO_METHOD: &str = "bench.echo";

pub fn emit(v: Value) {
    println!("RESULT {v}");
}

/// The `RESULT` of an ingest child, with the peak RSS of its process.
/// `client_cpu`: the CPU of the bench's own consumer thread, where there is
/// one, already taken out of `cpu`.
pub fn emit_ingest(events: u64, dropped: u64, secs: f64, cpu: f64, client_cpu: Option<f64>) {
    let mut v = json!({"events": events, "dropped": dropped, "secs": secs, "cpu": cpu,
        "peak_kib": procfs::peak_rss_kib()});
    if let Some(c) = client_cpu {
        v["client_cpu"] = json!(c);
    }
    emit(v);
}

// ------------------------------------------------------------ the raw limit

type Ws = Framed<BoxedSocket, Codec>;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AgentData<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    item_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    phase: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct AgentPayload<'a> {
    #[serde(borrow, default)]
    run_id: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(borrow, default)]
    data: Option<AgentData<'a>>,
    #[serde(borrow, default)]
    session_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    agent_id: Option<Cow<'a, str>>,
}

/// Every frame of a flood, decoded in one pass.
#[derive(Deserialize)]
struct WireFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    payload: Option<AgentPayload<'a>>,
}

/// A response, decoded in one pass; the payload is kept raw (as the bridge
/// hands it over) and copied out.
#[derive(Deserialize)]
struct WireRes<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

async fn next_text(ws: &mut Ws) -> bytes::Bytes {
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(b))) => return b,
            Some(Ok(_)) => {}
            other => panic!("raw client: socket ended: {other:?}"),
        }
    }
}

/// Connect and complete the handshake.
async fn raw_connect(url: &str) -> Ws {
    let client = awc::Client::builder()
        .max_http_version(awc::http::Version::HTTP_11)
        .timeout(Duration::from_secs(10))
        .finish();
    let (_, mut ws) = client
        .ws(url)
        .max_frame_size(64 << 20)
        .connect()
        .await
        .expect("raw client connects");
    let challenge: Value = serde_json::from_slice(&next_text(&mut ws).await).expect("challenge");
    assert_eq!(challenge["event"], "connect.challenge");
    let connect = json!({"type":"req","id":"connect-1","method":"connect","params":{
        "minProtocol":4,"maxProtocol":4,
        "client":{"id":"gateway-client","version":"0.1.0","platform":"linux","mode":"backend"},
        "role":"operator","scopes":["operator.read","operator.write"],"auth":{"token":TOKEN}}});
    ws.send(Message::Text(connect.to_string().into()))
        .await
        .expect("send connect");
    let hello: Value = serde_json::from_slice(&next_text(&mut ws).await).expect("hello");
    assert_eq!(hello["ok"], true, "hello-ok: {hello}");
    assert!(hello["payload"]["policy"]["tickIntervalMs"].is_u64());
    ws
}

pub fn run_system<F: std::future::Future<Output = ()>>(f: F) {
    actix_rt::System::new().block_on(async move {
        if actix_rt::time::timeout(CHILD_DEADLINE, f).await.is_err() {
            eprintln!("bench child: deadline of {CHILD_DEADLINE:?} passed");
            std::process::exit(2);
        }
    });
}

pub fn ingest_raw(url: &str, n: u64) {
    run_system(async {
        let mut ws = raw_connect(url).await;
        let (mut events, mut gaps, mut expected) = (0u64, 0u64, 1u64);
        let req = format!(r#"{{"type":"req","id":"flood-1","method":"{FLOOD_METHOD}"}}"#);
        let cpu0 = procfs::process_cpu();
        let t0 = Instant::now();
        ws.send(Message::Text(req.into())).await.expect("send");
        while events < n {
            let b = next_text(&mut ws).await;
            let f: WireFrame<'_> = serde_json::from_slice(&b).expect("frame decodes");
            if f.kind == "event" && f.event.as_deref() == Some("agent") {
                let p = f.payload.unwrap_or_default();
                std::hint::black_box((&p.run_id, &p.data, &p.stream, p.seq, p.ts));
                std::hint::black_box((&p.session_key, &p.session_id, &p.agent_id));
                if let Some(d) = &p.data {
                    std::hint::black_box((&d.text, &d.delta, &d.item_id, &d.phase));
                }
                if let Some(s) = f.seq {
                    gaps += s.saturating_sub(expected);
                    expected = s + 1;
                }
                events += 1;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = procfs::process_cpu() - cpu0;
        emit_ingest(events, gaps, secs, cpu, None);
    });
}

// ------------------------------------------------------------ RPC

/// A client of the RPC rows.
trait RpcClient {
    /// `total` `bench.echo` requests with `k` in flight; latencies in µs.
    async fn run(&mut self, k: usize, total: usize) -> Vec<u32>;
}

/// The `RESULT` of an RPC child: at 1 and at 256 in flight, a warm-up run
/// and then a timed one.
async fn measure_rpc(client: &mut impl RpcClient, total1: usize, total256: usize) -> Value {
    let mut out = serde_json::Map::new();
    for (k, total) in [(1usize, total1), (256, total256)] {
        client.run(k, warmup(k, total)).await;
        let t0 = Instant::now();
        let lat = client.run(k, total).await;
        out.insert(format!("k{k}"), rpc_stats(lat, t0.elapsed()));
    }
    Value::Object(out)
}

/// The raw limit: requests pipelined over one socket, answers matched by id
/// in a `HashMap`.
struct RawRpc {
    ws: Ws,
    next_id: u64,
}

impl RpcClient for RawRpc {
    async fn run(&mut self, k: usize, total: usize) -> Vec<u32> {
        let Self { ws, next_id } = self;
        let mut pending: HashMap<String, Instant> = HashMap::with_capacity(k * 2);
        let mut lat = Vec::with_capacity(total);
        let mut sent = 0usize;
        while lat.len() < total {
            while pending.len() < k && sent < total {
                *next_id += 1;
                let id = next_id.to_string();
                let req = format!(
                    r#"{{"type":"req","id":"{id}","method":"{ECHO_METHOD}","params":{{"i":{sent}}}}}"#
                );
                ws.feed(Message::Text(req.into())).await.expect("feed");
                pending.insert(id, Instant::now());
                sent += 1;
            }
            ws.flush().await.expect("flush");
            // Take one answer, then whatever else is already here.
            let mut first = true;
            loop {
                let item = if first {
                    first = false;
                    ws.next().await
                } else {
                    match ws.next().now_or_never() {
                        Some(i) => i,
                        None => break,
                    }
                };
                let Some(Ok(Frame::Text(b))) = item else {
                    if matches!(item, Some(Ok(_))) {
                        continue;
                    }
                    panic!("raw rpc: socket ended");
                };
                let r: WireRes<'_> = serde_json::from_slice(&b).expect("res decodes");
                if r.kind != "res" {
                    continue;
                }
                if let Some(t) = r.id.as_deref().and_then(|id| pending.remove(id)) {
                    assert_eq!(r.ok, Some(true));
                    let owned: Option<Box<RawValue>> = r.payload.map(ToOwned::to_owned);
                    std::hint::black_box(owned);
                    lat.push(t.elapsed().as_micros() as u32);
                }
                if lat.len() >= total {
                    break;
                }
            }
        }
        lat
    }
}

pub fn rpc_raw(url: &str, total1: usize, total256: usize) {
    run_system(async {
        let mut raw = RawRpc {
            ws: raw_connect(url).await,
            next_id: 0,
        };
        emit(measure_rpc(&mut raw, total1, total256).await);
    });
}

fn warmup(k: usize, total: usize) -> usize {
    (k * 4).max(200).min(total)
}

pub fn rpc_stats(mut lat: Vec<u32>, elapsed: Duration) -> Value {
    lat.sort_unstable();
    let pct = |p: usize| lat.get((lat.len() * p / 100).min(lat.len().saturating_sub(1)));
    json!({"requests": lat.len(), "secs": elapsed.as_secs_f64(),
        "rps": lat.len() as f64 / elapsed.as_secs_f64(),
        "p50_us": pct(50), "p99_us": pct(99)})
}

// ------------------------------------------------------------ the bridge

/// Settings for a bridge pointed at `url`, HTTP on a free loopback port.
pub fn bridge_settings(url: &str, state_dir: &std::path::Path, extra: &[(&str, &str)]) -> Settings {
    let mut env: HashMap<String, String> = [
        ("OPENCLAW_GATEWAY_URL", url),
        ("OPENCLAW_GATEWAY_TOKEN", TOKEN),
        ("OPENCLAW_BRIDGE__HTTP__LISTEN", "127.0.0.1:0"),
        (
            "OPENCLAW_BRIDGE__STATE__DIR",
            &state_dir.display().to_string(),
        ),
        ("OPENCLAW_BRIDGE__LOG__LEVEL", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    Settings::load_from(&Sources {
        system_file: None,
        file: None,
        env,
    })
    .unwrap_or_else(|e| panic!("bench settings invalid: {e}"))
}

pub struct Bridge {
    pub app_addr: std::net::SocketAddr,
    pub supervisor: Addr<Supervisor>,
    pub registry: Addr<openclaw_bridge::actors::AgentRegistry>,
    pub broker: Addr<openclaw_bridge::actors::EventBroker>,
    _dir: tempfile::TempDir,
}

/// Start the bridge the way the binary does and wait for the session.
pub async fn start_bridge(url: &str, extra: &[(&str, &str)]) -> Bridge {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = Application::build(bridge_settings(url, dir.path(), extra))
        .await
        .expect("bridge starts");
    let bridge = Bridge {
        app_addr: app.http_addr(),
        supervisor: app.supervisor.clone(),
        registry: app.registry.clone(),
        broker: app.broker.clone(),
        _dir: dir,
    };
    actix_rt::spawn(async move {
        let _ = app.run_until_stopped().await;
    });
    wait_connected(&bridge.supervisor).await;
    bridge
}

pub async fn wait_connected(sup: &Addr<Supervisor>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = sup.send(GetStatus).await {
            if s.state == LinkState::Connected {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the bridge did not connect");
        actix_rt::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Note the process CPU and the time, then ask the gateway for its flood
/// (the answer is not awaited): `(cpu0, t0)`.
pub fn start_flood(sup: &Addr<Supervisor>) -> (f64, Instant) {
    let cpu0 = procfs::process_cpu();
    let t0 = Instant::now();
    let trigger = sup.send(Send::new(FLOOD_METHOD, None));
    actix_rt::spawn(async move {
        let _ = trigger.await;
    });
    (cpu0, t0)
}

/// `dropped` of a `bridge.gap` data line.
pub(crate) fn gap_dropped(data: &str) -> u64 {
    serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|v| v["payload"]["dropped"].as_u64())
        .unwrap_or(0)
}

/// How long a consumer waits for the next event before it asks the broker
/// how many it dropped (a lagged subscriber hears of a gap only with the next
/// event, and after the flood's last one there is none).
pub(crate) const QUIET: Duration = Duration::from_millis(300);

pub(crate) async fn broker_dropped(broker: &Addr<openclaw_bridge::actors::EventBroker>) -> u64 {
    broker
        .send(openclaw_bridge::actors::broker::BrokerStats)
        .await
        .map_or(0, |s| s.dropped_total)
}

pub fn ingest_actor(url: &str, n: u64) {
    run_system(async {
        let b = start_bridge(url, &[]).await;
        let mut sub = b
            .broker
            .send(Subscribe {
                filter: Filter::default(),
                since: None,
                label: "bench".into(),
            })
            .await
            .expect("subscribe")
            .expect("under the subscriber cap");
        let (cpu0, t0) = start_flood(&b.supervisor);
        // The subscriber is an ordinary task on the bridge's thread, as an
        // in-process consumer would be.
        let broker = b.broker.clone();
        let (events, dropped, last) = actix_rt::spawn(async move {
            let (mut events, mut dropped, mut last) = (0u64, 0u64, Instant::now());
            while events + dropped < n {
                // Drain without timers; wait (bounded) only when empty.
                let item = match sub.try_recv() {
                    Ok(item) => item,
                    Err(_) => {
                        last = Instant::now();
                        match actix_rt::time::timeout(QUIET, sub.recv()).await {
                            Ok(Some(item)) => item,
                            Ok(None) => panic!("subscription ended"),
                            Err(_) => {
                                dropped = broker_dropped(&broker).await;
                                continue;
                            }
                        }
                    }
                };
                match item.name() {
                    "agent" => {
                        std::hint::black_box(item.payload());
                        events += 1;
                    }
                    "bridge.gap" => {
                        dropped += gap_dropped(&format!(r#"{{"payload":{}}}"#, item.payload()))
                    }
                    _ => {}
                }
                if events + dropped >= n {
                    last = Instant::now();
                }
            }
            (events, dropped, last)
        })
        .await
        .expect("subscriber task");
        let secs = last.duration_since(t0).as_secs_f64();
        let cpu = procfs::process_cpu() - cpu0;
        emit_ingest(events, dropped, secs, cpu, None);
        std::process::exit(0);
    });
}

/// A bridge path that takes many requests at once: every request in flight
/// is a task of its own ([`run_concurrent`]).
trait ConcurrentEcho: Clone + 'static {
    /// Send the `i`th `bench.echo` request and wait for its answer.
    async fn echo(&self, i: usize);
}

impl<C: ConcurrentEcho> RpcClient for C {
    async fn run(&mut self, k: usize, total: usize) -> Vec<u32> {
        run_concurrent(self, k, total).await
    }
}

/// `total` requests from `k` tasks, each sending its next as soon as its last
/// is answered; latencies in µs, from before the request is built to its
/// answer.
async fn run_concurrent(path: &impl ConcurrentEcho, k: usize, total: usize) -> Vec<u32> {
    let next = Rc::new(Cell::new(0usize));
    let lat = Rc::new(RefCell::new(Vec::with_capacity(total)));
    let mut tasks = Vec::new();
    for _ in 0..k {
        let (path, next, lat) = (path.clone(), next.clone(), lat.clone());
        tasks.push(actix_rt::spawn(async move {
            loop {
                let i = next.get();
                if i >= total {
                    return;
                }
                next.set(i + 1);
                let t = Instant::now();
                path.echo(i).await;
                lat.borrow_mut().push(t.elapsed().as_micros() as u32);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Rc::try_unwrap(lat)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

/// `Send` to the Supervisor, in-process.
impl ConcurrentEcho for Addr<Supervisor> {
    async fn echo(&self, i: usize) {
        let r = self
            .send(Send::new(ECHO_METHOD, Some(json!({ "i": i }))))
            .await
            .expect("supervisor alive");
        let payload = r.expect("echo answered");
        std::hint::black_box(payload);
    }
}

pub fn rpc_actor(url: &str, total1: usize, total256: usize) {
    run_system(async {
        let mut b = start_bridge(url, &[]).await;
        emit(measure_rpc(&mut b.supervisor, total1, total256).await);
        std::process::exit(0);
    });
}

/// `POST /v1/rpc` by an awc client.
#[derive(Clone)]
struct HttpRpc {
    client: awc::Client,
    url: String,
}

impl ConcurrentEcho for HttpRpc {
    async fn echo(&self, i: usize) {
        let mut res = self
            .client
            .post(&self.url)
            .insert_header(("content-type", "application/json"))
            .send_body(format!(
                r#"{{"method":"{ECHO_METHOD}","params":{{"i":{i}}}}}"#
            ))
            .await
            .expect("POST /v1/rpc");
        let body = res.body().await.expect("rpc body");
        assert_eq!(res.status().as_u16(), 200, "{body:?}");
        std::hint::black_box(body);
    }
}

pub fn rpc_http(url: &str, total1: usize, total256: usize) {
    run_system(async {
        let b = start_bridge(url, &[]).await;
        let rpc_url = format!("http://{}/v1/rpc", b.app_addr);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let mut http = HttpRpc {
                    client: awc::Client::builder()
                        .connector(awc::Connector::new().limit(1024))
                        .timeout(Duration::from_secs(60))
                        .finish(),
                    url: rpc_url,
                };
                let _ = tx.send(measure_rpc(&mut http, total1, total256).await);
            });
        });
        emit(rx.await.expect("HTTP client result"));
        std::process::exit(0);
    });
}
