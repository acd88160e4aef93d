//! The JetStream limit row: what `nats-server -js` itself stores per second
//! on this machine when a publisher speaks to it exactly as the bridge does
//! (`nats::start`'s publisher: one `Nats-Msg-Id` per event, one
//! acknowledgement per message, [`PUBLISH_WINDOW`] of them in flight, the
//! stream configured as `nats::stream` configures it), with no gateway and
//! no bridge in front. `ratio nats_vs_jetstream_limit` divides the bridge's
//! JetStream row by it, round by round: how much of what JetStream can take
//! here the bridge delivers.
//!
//! The envelopes (subject, id, body) are those the bridge writes for the
//! synthetic gateway's flood, built before the clock starts.
//!
//! `nats_limit_fast` publishes the same envelopes with JetStream's
//! fast-ingest batches instead (ADR-50, nats-server 2.14+, a stream with
//! `allow_batched`): acknowledgements come for every `flow` messages, not
//! for each. The bridge does not publish this way; the row measures what
//! that protocol would leave to gain on this machine.

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use openclaw_bridge::nats::{self, Subjects, PUBLISH_WINDOW};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::clients::{emit_ingest, run_system};
use super::frames;
use super::procfs;

/// The gateway id in the subjects, as the JetStream row's.
const GATEWAY: &str = "default";

#[derive(Deserialize)]
struct Frame<'a> {
    seq: u64,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ids<'a> {
    run_id: &'a str,
    agent_id: &'a str,
}

/// Agent id, `Nats-Msg-Id` and the bridge's envelope
/// (`nats::envelope::event_body`) of flood event `i`.
fn envelope(i: usize) -> Result<(String, Option<String>, Bytes), String> {
    let text = frames::agent_event(i);
    let f: Frame = serde_json::from_str(&text).map_err(|e| format!("flood frame {i}: {e}"))?;
    let ids: Ids =
        serde_json::from_str(f.payload.get()).map_err(|e| format!("flood payload {i}: {e}"))?;
    let mut out = BytesMut::with_capacity(f.payload.get().len() + 160);
    // The fields and order of `nats::envelope::event_body`.
    let head = format!(
        r#"{{"gateway":"{GATEWAY}","epoch":1,"seq":{},"bridge_id":{},"event":"agent","agent_id":{},"run_id":{}"#,
        f.seq,
        f.seq,
        serde_json::Value::from(ids.agent_id),
        serde_json::Value::from(ids.run_id),
    );
    out.put_slice(head.as_bytes());
    out.put_slice(b",\"payload\":");
    out.put_slice(f.payload.get().as_bytes());
    out.put_slice(b"}");
    let id = nats::msg_id(GATEWAY, "agent", f.payload.get());
    Ok((ids.agent_id.to_owned(), id, out.freeze()))
}

async fn settle(inflight: &mut VecDeque<PublishAckFuture>, stored: &mut u64, failed: &mut u64) {
    if let Some(ack) = inflight.pop_front() {
        match tokio::time::timeout(Duration::from_secs(4), ack.into_future()).await {
            Ok(Ok(a)) if !a.duplicate => *stored += 1,
            _ => *failed += 1,
        }
    }
}

/// Every wait for the server in the fast-ingest row is bounded by this.
const WAIT: Duration = Duration::from_secs(5);

async fn connect(nats_url: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats_url)
        .await
        .map_err(|e| format!("connect to NATS: {e}"))
}

/// The flood's N envelopes as (subject, `Nats-Msg-Id`, body).
fn envelopes(
    subjects: &Subjects,
    n: u64,
) -> Result<Vec<(async_nats::Subject, Option<String>, Bytes)>, String> {
    let mut msgs = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for i in 0..n {
        let (agent, id, body) = envelope(usize::try_from(i).unwrap_or(usize::MAX))?;
        let subject = async_nats::Subject::from(subjects.event("agent", Some(&agent)));
        msgs.push((subject, id, body));
    }
    Ok(msgs)
}

async fn publish_all(nats_url: &str, n: u64) -> Result<(), String> {
    let js = jetstream::new(connect(nats_url).await?);
    let pid = std::process::id();
    let subjects = Subjects::new(&format!("limit{pid}"), GATEWAY);
    let stream = format!("LIMIT_{pid}");
    // As `nats::stream::ensure_stream` creates it (with the bench's limits).
    js.get_or_create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subjects.stream_filter()],
        max_age: Duration::from_secs(3600),
        max_bytes: 1 << 30,
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("create the stream: {e}"))?;
    let msgs = envelopes(&subjects, n)?;
    let (mut stored, mut failed) = (0u64, 0u64);
    let mut inflight = VecDeque::with_capacity(PUBLISH_WINDOW);
    let cpu0 = procfs::process_cpu();
    let t0 = Instant::now();
    for (subject, id, body) in msgs {
        let mut m = PublishMessage::build().payload(body);
        if let Some(id) = id {
            m = m.message_id(id);
        }
        match js.send_publish(subject, m).await {
            Ok(ack) => inflight.push_back(ack),
            Err(_) => failed += 1,
        }
        if inflight.len() >= PUBLISH_WINDOW {
            settle(&mut inflight, &mut stored, &mut failed).await;
        }
    }
    while !inflight.is_empty() {
        settle(&mut inflight, &mut stored, &mut failed).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = procfs::process_cpu() - cpu0;
    let _ = tokio::time::timeout(Duration::from_secs(5), js.delete_stream(&stream)).await;
    emit_ingest(stored, failed, secs, cpu, None);
    Ok(())
}

/// The `nats_limit` child: publish the flood's N envelopes, count the
/// acknowledged ones.
pub fn nats_limit(n: u64, nats_url: &str) {
    run_child("nats_limit", publish_all(nats_url, n));
}

/// Run a child's work; exit 2 with its error, else 0.
fn run_child(name: &str, work: impl std::future::Future<Output = Result<(), String>>) {
    run_system(async {
        if let Err(e) = work.await {
            eprintln!("{name}: {e}");
            std::process::exit(2);
        }
        std::process::exit(0);
    });
}

/// The next message on the batch inbox as JSON, within [`WAIT`].
async fn next_reply(sub: &mut async_nats::Subscriber) -> Result<serde_json::Value, String> {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(m)) => serde_json::from_slice(&m.payload)
            .map_err(|e| format!("fast-ingest reply is not JSON: {e}")),
        Ok(None) => Err("the batch inbox subscription ended".into()),
        Err(_) => Err(format!("no fast-ingest reply within {WAIT:?}")),
    }
}

/// A flow ack's `(seq, msgs)`; any other reply but the final ack is an error.
fn flow_ack(v: &serde_json::Value) -> Result<Option<(u64, u64)>, String> {
    match v.get("type").and_then(|t| t.as_str()) {
        Some("ack") => Ok(Some((
            v["seq"].as_u64().unwrap_or(0),
            v["msgs"].as_u64().unwrap_or(1).max(1),
        ))),
        Some(_) => Err(format!("fast-ingest batch failed: {v}")),
        None if v.get("error").is_some() => Err(format!("fast-ingest batch refused: {v}")),
        None => Ok(None),
    }
}

async fn publish_fast(nats_url: &str, n: u64) -> Result<(), String> {
    /// Acks asked for every FLOW messages; at most OUTSTANDING flows unacked
    /// (ADR-50's defaults are 100 and 2; 500 measured faster here).
    const FLOW: u64 = 500;
    const OUTSTANDING: u64 = 2;
    let client = connect(nats_url).await?;
    let pid = std::process::id();
    let subjects = Subjects::new(&format!("limitfast{pid}"), GATEWAY);
    let stream = format!("LIMIT_FAST_{pid}");
    // async-nats has no `allow_batched` field yet: the stream is created
    // through the JetStream API with the bridge's settings plus that one.
    let config = serde_json::json!({"name": stream, "subjects": [subjects.stream_filter()],
        "storage": "file", "retention": "limits", "discard": "old", "num_replicas": 1,
        "max_age": 3_600_000_000_000u64, "max_bytes": 1u64 << 30,
        "duplicate_window": 120_000_000_000u64, "allow_batched": true});
    let created = tokio::time::timeout(
        WAIT,
        client.request(
            format!("$JS.API.STREAM.CREATE.{stream}"),
            config.to_string().into(),
        ),
    )
    .await
    .map_err(|_| "no answer to STREAM.CREATE".to_owned())?
    .map_err(|e| format!("STREAM.CREATE: {e}"))?;
    let created: serde_json::Value = serde_json::from_slice(&created.payload)
        .map_err(|e| format!("STREAM.CREATE answer: {e}"))?;
    if created["config"]["allow_batched"] != serde_json::Value::Bool(true) {
        return Err(format!(
            "this nats-server has no fast-ingest batches (2.14+): {}",
            created.get("error").unwrap_or(&created)
        ));
    }
    let msgs = envelopes(&subjects, n)?;
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(format!("{inbox}.>"))
        .await
        .map_err(|e| format!("subscribe to the batch inbox: {e}"))?;
    let (mut last_ack, mut flow) = (0u64, FLOW);
    let cpu0 = procfs::process_cpu();
    let t0 = Instant::now();
    for (k, (subject, id, body)) in (1u64..).zip(msgs) {
        while k > 1 && last_ack + flow * OUTSTANDING <= k {
            if let Some((seq, msgs)) = flow_ack(&next_reply(&mut sub).await?)? {
                (last_ack, flow) = (last_ack.max(seq), msgs);
            }
        }
        // Start, append, or commit (the last message, stored).
        let op = if k == 1 {
            0
        } else if k == n {
            2
        } else {
            1
        };
        let reply = format!("{inbox}.{FLOW}.fail.{k}.{op}.$FI");
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = id {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        client
            .publish_with_reply_and_headers(subject, reply, headers, body)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        if k == 1 && n > 1 {
            // The batch is open once the server's first (seq 0) ack is in.
            if let Some((_, msgs)) = flow_ack(&next_reply(&mut sub).await?)? {
                flow = msgs;
            }
        }
    }
    // The commit's answer: the batch's final publish ack.
    loop {
        if flow_ack(&next_reply(&mut sub).await?)?.is_none() {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = procfs::process_cpu() - cpu0;
    let js = jetstream::new(client);
    let stored = match tokio::time::timeout(WAIT, js.get_stream(&stream)).await {
        Ok(Ok(mut s)) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        _ => 0,
    };
    let _ = tokio::time::timeout(WAIT, js.delete_stream(&stream)).await;
    emit_ingest(stored, n.saturating_sub(stored), secs, cpu, None);
    Ok(())
}

/// The `nats_limit_fast` child: the flood's envelopes in one fast-ingest
/// batch; the events JetStream then holds are counted.
pub fn nats_limit_fast(n: u64, nats_url: &str) {
    run_child("nats_limit_fast", publish_fast(nats_url, n));
}
