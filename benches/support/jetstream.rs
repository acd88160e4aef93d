//! The JetStream row: the bridge of `ingest_actor` with a `NatsSink` on its
//! broker, publishing to a `nats-server -js` that the parent runs on
//! loopback. An event counts once JetStream has stored (acknowledged) it: a
//! counter thread on its own NATS connection polls a never-pulled consumer
//! filtered on `P.G.agent.>` (its `num_pending` is the number stored) until
//! all N are there; its CPU is subtracted, as the SSE client's is.
//!
//! Every child run uses its own stream, subject prefix and KV bucket (named
//! after its pid) and deletes the stream and bucket when done, so rounds
//! neither see nor keep each other's messages.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use openclaw_bridge::actors::broker::AddSink;
use openclaw_bridge::config::NatsSettings;
use openclaw_bridge::nats::{self, NatsHandle};

use super::clients::{emit_ingest, run_system, start_bridge, start_flood, Bridge};
use super::nats_server::NatsServer;
use super::procfs;

/// How often the counter asks JetStream how many events it holds.
const POLL: Duration = Duration::from_millis(2);
/// No new stored event for this long: the rest counts as dropped.
const STALL: Duration = Duration::from_secs(10);
/// Bound of every single NATS request of the counter.
const REQUEST: Duration = Duration::from_secs(5);
/// How long the bridge may take to connect to NATS and create its stream.
const SETUP: Duration = Duration::from_secs(20);

/// A `nats-server -js` on a free loopback port with its store in a temp dir
/// (tests/it/support/nats_server.rs: installed into `.cache/venv-nats` on
/// first use; killed and its store removed on drop) that answers JetStream
/// requests, or why there is none.
pub fn start_server() -> Result<NatsServer, String> {
    // The helper panics when it cannot install or start the server; catch
    // that quietly (the reason is returned) so the rest of the bench runs.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::panic::catch_unwind(NatsServer::start);
    std::panic::set_hook(hook);
    let server = started.map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        format!("no nats-server ({why}); set NATS_SERVER_BIN or install it as tests/it/support/nats_server.rs says")
    })?;
    let url = server.url();
    actix_rt::System::new()
        .block_on(async {
            let js = jetstream::new(connect(&url).await?);
            bounded("account info", js.query_account()).await
        })
        .map_err(|e| format!("nats-server at {url} does not serve JetStream: {e}"))?;
    Ok(server)
}

/// The gateway id in the subjects (`P.G.…`).
const GATEWAY: &str = "default";

/// This child's own stream, subject prefix and KV bucket.
struct Names {
    stream: String,
    prefix: String,
    bucket: String,
}

impl Names {
    fn for_this_process() -> Names {
        let pid = std::process::id();
        Names {
            stream: format!("BENCH_{pid}"),
            prefix: format!("bench{pid}"),
            bucket: format!("BENCH_KV_{pid}"),
        }
    }
}

/// The one place that calls `nats::start` and builds `NatsSettings` (both
/// may change with multi-gateway support): a `NatsSink` on the bridge's
/// broker, its publish queue large enough for the whole flood so that the
/// row measures JetStream's pace, not the queue's overflow.
async fn attach_nats(b: &Bridge, nats_url: &str, names: &Names, queue: usize) -> NatsHandle {
    let settings = NatsSettings {
        url: nats_url.to_owned(),
        stream: names.stream.clone(),
        subject_prefix: names.prefix.clone(),
        max_age: Duration::from_secs(3600),
        max_bytes: 1 << 30,
        kv_bucket: names.bucket.clone(),
        buffer: queue,
        credentials_file: None,
        token: None,
        user: None,
        duplicate_window: Duration::from_secs(120),
        rpc: false,
        rpc_methods: Vec::new(),
    };
    let (sink, handle) = nats::start(&settings, GATEWAY, b.supervisor.clone(), b.registry.clone());
    b.broker
        .send(AddSink(Box::new(sink)))
        .await
        .expect("the broker takes the NATS sink");
    handle
}

struct Stored {
    events: u64,
    /// When the counter first saw `events` stored.
    end: Instant,
    client_cpu: f64,
}

/// The counter thread: its own runtime and NATS connection.
fn counter(
    nats_url: String,
    names: Names,
    n: u64,
    ready: std_mpsc::Sender<Result<(), String>>,
) -> Result<Stored, String> {
    actix_rt::System::new().block_on(async {
        let out = count_stored(&nats_url, &names, n, &ready).await;
        if let Err(e) = &out {
            let _ = ready.send(Err(e.clone()));
        }
        out
    })
}

/// A NATS connection of the bench's own (not the bridge's).
async fn connect(url: &str) -> Result<async_nats::Client, String> {
    bounded(
        "connect to NATS",
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(url),
    )
    .await
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match actix_rt::time::timeout(REQUEST, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {REQUEST:?}")),
    }
}

async fn count_stored(
    nats_url: &str,
    names: &Names,
    n: u64,
    ready: &std_mpsc::Sender<Result<(), String>>,
) -> Result<Stored, String> {
    let js = jetstream::new(connect(nats_url).await?);
    // The bridge creates its stream once its NATS client is connected.
    let deadline = Instant::now() + SETUP;
    let mut stream = loop {
        match bounded("get_stream", js.get_stream(&names.stream)).await {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => {
                return Err(format!(
                    "the bridge created no stream within {SETUP:?}: {e}"
                ))
            }
            Err(_) => actix_rt::time::sleep(Duration::from_millis(20)).await,
        }
    };
    // The stream captures `P.G.>`; agent events are `P.G.agent.<agentId>`.
    let captured = bounded("stream info", stream.info())
        .await?
        .config
        .subjects
        .first()
        .cloned()
        .unwrap_or_default();
    let Some(base) = captured.strip_suffix('>') else {
        return Err(format!("unexpected stream subjects {captured:?}"));
    };
    let agents = bounded(
        "create the counting consumer",
        stream.create_consumer(consumer::pull::Config {
            durable_name: Some("bench-count".into()),
            filter_subject: format!("{base}agent.>"),
            ..Default::default()
        }),
    )
    .await?;
    let cpu0 = procfs::thread_cpu();
    let _ = ready.send(Ok(()));
    let (mut stored, mut end) = (0u64, Instant::now());
    while stored < n && end.elapsed() < STALL {
        // A failed or slow poll is retried until the stall bound.
        if let Ok(info) = bounded("consumer info", agents.get_info()).await {
            if info.num_pending > stored {
                stored = info.num_pending;
                end = Instant::now();
            }
        }
        if stored < n {
            actix_rt::time::sleep(POLL).await;
        }
    }
    let client_cpu = procfs::thread_cpu() - cpu0;
    // Keep the server's store small across rounds (best effort, bounded).
    let _ = bounded("delete the stream", js.delete_stream(&names.stream)).await;
    let _ = bounded("delete the bucket", js.delete_key_value(&names.bucket)).await;
    Ok(Stored {
        events: stored.min(n),
        end,
        client_cpu,
    })
}

pub fn ingest_nats(url: &str, n: u64, nats_url: &str) {
    ingest_nats_bridges(url, n, nats_url, 1);
}

/// The dedupe row: two bridges on one gateway, in one process, both
/// publishing the same flood to one stream (each event with the same
/// `Nats-Msg-Id`); done when JetStream holds the N events once. The CPU is
/// both bridges' (the price of a second bridge, dedupe included).
pub fn ingest_nats_pair(url: &str, n: u64, nats_url: &str) {
    ingest_nats_bridges(url, n, nats_url, 2);
}

fn ingest_nats_bridges(url: &str, n: u64, nats_url: &str, count: usize) {
    run_system(async {
        let names = Names::for_this_process();
        let queue = usize::try_from(n).unwrap_or(usize::MAX / 2) + 1024;
        let mut bridges = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..count {
            let b = start_bridge(url, &[]).await;
            handles.push(attach_nats(&b, nats_url, &names, queue).await);
            bridges.push(b);
        }
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let nats_url = nats_url.to_owned();
        std::thread::spawn(move || {
            let _ = done_tx.send(counter(nats_url, names, n, ready_tx));
        });
        // Ready once the stream exists and the counting consumer is on it.
        let deadline = Instant::now() + SETUP + REQUEST * 3;
        loop {
            match ready_rx.try_recv() {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    eprintln!("ingest_nats: {e}");
                    std::process::exit(2);
                }
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    eprintln!("ingest_nats: the counter thread ended");
                    std::process::exit(2);
                }
                Err(std_mpsc::TryRecvError::Empty) => {
                    assert!(Instant::now() < deadline, "ingest_nats: counter not ready");
                    actix_rt::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        let (cpu0, t0) = start_flood(&bridges[0].supervisor);
        for b in &bridges[1..] {
            start_flood(&b.supervisor);
        }
        let done = match done_rx.await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                eprintln!("ingest_nats: {e}");
                std::process::exit(2);
            }
            Err(_) => {
                eprintln!("ingest_nats: the counter thread ended without a result");
                std::process::exit(2);
            }
        };
        let cpu = procfs::process_cpu() - cpu0 - done.client_cpu;
        let secs = done.end.duration_since(t0).as_secs_f64();
        emit_ingest(
            done.events,
            n - done.events,
            secs,
            cpu,
            Some(done.client_cpu),
        );
        std::process::exit(0);
    });
}
