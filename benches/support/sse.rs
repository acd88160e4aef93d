//! The SSE rows: one `GET /v1/events` reader (`ingest_sse`) and many
//! (`fanout1`, `fanout64`), each on a client thread of its own.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use openclaw_bridge::actors::Send;
use serde_json::json;

use super::clients::{
    broker_dropped, emit_ingest, gap_dropped, run_system, start_bridge, start_flood, QUIET,
};
use super::gateway::FLOOD_METHOD;
use super::procfs;

struct SseDone {
    events: u64,
    dropped: u64,
    end: Instant,
    client_cpu: f64,
}

/// The `event:` field of one SSE message, when present.
fn sse_event_name(msg: &[u8]) -> Option<&[u8]> {
    msg.split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"event: "))
}

/// Read `GET /v1/events` until `n` agent events (or gaps covering them)
/// arrived: (events, dropped, time of the last chunk). `greeted` runs once
/// the stream is subscribed.
async fn sse_read(
    client: &awc::Client,
    addr: std::net::SocketAddr,
    n: u64,
    greeted: impl FnOnce(),
) -> (u64, u64, Instant) {
    let mut res = client
        .get(format!("http://{addr}/v1/events"))
        .send()
        .await
        .expect("GET /v1/events");
    assert_eq!(res.status().as_u16(), 200);
    let (mut events, mut dropped) = (0u64, 0u64);
    // Bytes of an unfinished message carried over from earlier chunks.
    let mut carry: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut greeted = Some(greeted);
    let mut last = Instant::now();
    'outer: loop {
        let chunk = match actix_rt::time::timeout(QUIET, res.next()).await {
            Ok(Some(chunk)) => chunk.expect("SSE body"),
            Ok(None) => break,
            // Quiet: the rest was dropped (the caller asks the broker).
            Err(_) if greeted.is_none() && events > 0 => break,
            Err(_) => continue,
        };
        last = Instant::now();
        let scan_from = carry.len().saturating_sub(1);
        carry.extend_from_slice(&chunk);
        let (mut start, mut i) = (0usize, scan_from);
        while let Some(p) = carry[i..].windows(2).position(|w| w == b"\n\n") {
            let end = i + p + 2;
            let msg = &carry[start..end];
            start = end;
            i = end;
            if let Some(g) = greeted.take() {
                g();
            }
            match sse_event_name(msg) {
                Some(b"agent") => events += 1,
                Some(b"bridge.gap") => {
                    let text = String::from_utf8_lossy(msg);
                    if let Some(d) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                        dropped += gap_dropped(d);
                    }
                }
                _ => {}
            }
            if events + dropped >= n {
                break 'outer;
            }
        }
        carry.drain(..start);
    }
    (events, dropped, last)
}

/// Count `\n\n`-terminated SSE messages; `event: agent` ones are events.
fn sse_client(addr: std::net::SocketAddr, n: u64, ready: std::sync::mpsc::Sender<()>) -> SseDone {
    let mut result = None;
    actix_rt::System::new().block_on(async {
        let cpu0 = procfs::thread_cpu();
        let client = awc::Client::builder().disable_timeout().finish();
        let (events, dropped, end) = sse_read(&client, addr, n, move || {
            let _ = ready.send(());
        })
        .await;
        result = Some(SseDone {
            events,
            dropped,
            end,
            client_cpu: procfs::thread_cpu() - cpu0,
        });
    });
    result.expect("SSE client finished")
}

/// Subscribers of the fan-out rows.
pub const FANOUT: usize = 64;

/// `k` SSE subscribers, each reading every event of a flood of `m`, on one
/// client thread. Reports deliveries (events × subscribers) per second until
/// the last subscriber has the last event. The ring is sized to hold the
/// whole flood, so the row measures delivery, not the ring overflowing.
pub fn ingest_fanout(url: &str, m: u64, k: usize) {
    run_system(async {
        let buffer = (m + 1024).to_string();
        let b = start_bridge(
            url,
            &[
                ("OPENCLAW_BRIDGE__EVENTS__BUFFER", buffer.as_str()),
                ("OPENCLAW_BRIDGE__EVENTS__BUFFER_BYTES", "4294967296"),
            ],
        )
        .await;
        let addr = b.app_addr;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let cpu0 = procfs::thread_cpu();
                let client = awc::Client::builder()
                    .connector(awc::Connector::new().limit(k + 16))
                    .disable_timeout()
                    .finish();
                let reads = (0..k).map(|_| {
                    let ready = ready_tx.clone();
                    let client = client.clone();
                    async move {
                        sse_read(&client, addr, m, move || {
                            let _ = ready.send(());
                        })
                        .await
                    }
                });
                let all = futures_util::future::join_all(reads).await;
                let events = all.iter().map(|r| r.0).sum::<u64>();
                let dropped = all.iter().map(|r| r.1).sum::<u64>();
                let end = all.iter().map(|r| r.2).max().unwrap_or_else(Instant::now);
                let _ = done_tx.send(SseDone {
                    events,
                    dropped,
                    end,
                    client_cpu: procfs::thread_cpu() - cpu0,
                });
            });
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut greeted = 0;
        while greeted < k {
            match ready_rx.try_recv() {
                Ok(()) => greeted += 1,
                Err(_) => {
                    assert!(Instant::now() < deadline, "no SSE greeting");
                    actix_rt::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        let cpu0 = procfs::process_cpu();
        let t0 = Instant::now();
        let trigger = b
            .supervisor
            .send(Send::new(FLOOD_METHOD, Some(json!({ "frames": m }))));
        actix_rt::spawn(async move {
            let _ = trigger.await;
        });
        let done = done_rx.await.expect("SSE clients result");
        let cpu = procfs::process_cpu() - cpu0 - done.client_cpu;
        let dropped = done.dropped.max(broker_dropped(&b.broker).await);
        let secs = done.end.duration_since(t0).as_secs_f64();
        emit_ingest(done.events, dropped, secs, cpu, Some(done.client_cpu));
        std::process::exit(0);
    });
}

pub fn ingest_sse(url: &str, n: u64) {
    run_system(async {
        let b = start_bridge(url, &[]).await;
        let addr = b.app_addr;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(sse_client(addr, n, ready_tx));
        });
        // The greeting arrives once the stream is subscribed.
        let deadline = Instant::now() + Duration::from_secs(20);
        while ready_rx.try_recv().is_err() {
            assert!(Instant::now() < deadline, "no SSE greeting");
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        let (cpu0, t0) = start_flood(&b.supervisor);
        let done = done_rx.await.expect("SSE client result");
        let cpu = procfs::process_cpu() - cpu0 - done.client_cpu;
        let dropped = done.dropped.max(broker_dropped(&b.broker).await);
        let secs = done.end.duration_since(t0).as_secs_f64();
        emit_ingest(done.events, dropped, secs, cpu, Some(done.client_cpu));
        std::process::exit(0);
    });
}
