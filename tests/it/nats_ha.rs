//! Two bridges on one gateway, one JetStream stream (real `nats-server -js`):
//! each event stored once while both run (the real gateway and one agent
//! run), a 50k flood with one bridge SIGKILLed midway (nothing lost or
//! doubled), and the KV mirror of two bridges not undoing each other.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use openclaw_bridge::actors::broker::{Filter, Subscribe};
use serde_json::{json, Value};

use crate::nats::{read, Got};
use crate::support::app::{spawn_app, TestApp};
use crate::support::child_bridge::ChildBridge;
use crate::support::fake_gateway::{FakeGateway, FakeOptions};
use crate::support::nats_server::NatsServer;
use crate::support::real_gateway::{shared, RealGateway};

const T: Duration = Duration::from_secs(30);

pub fn nats_toml(server: &NatsServer, extra: &str) -> String {
    format!("[nats]\nurl = {:?}\n{extra}", server.url())
}

pub async fn js(server: &NatsServer) -> jetstream::Context {
    jetstream::new(
        async_nats::connect(server.url())
            .await
            .expect("test client connects"),
    )
}

/// Wait until `n` bridges have announced `bridge.connected` in the stream:
/// their NATS publishers are live.
pub async fn wait_publishers(js: &jetstream::Context, gw: &str, n: usize) {
    let subject = format!("openclaw.{gw}.bridge.connected");
    let got = read(js, &subject, 1, T, |g| g.len() >= n).await;
    assert!(got.len() >= n, "{} of {n} bridges publish", got.len());
}

/// The dedupe identity of an `agent`/`chat` envelope: event, run, stream
/// (agent) or state (chat), payload seq.
fn run_key(event: &str, payload: &Value) -> (String, String, String, u64) {
    let part = if event == "chat" { "state" } else { "stream" };
    (
        event.to_owned(),
        payload["runId"].as_str().unwrap_or_default().to_owned(),
        payload[part].as_str().unwrap_or_default().to_owned(),
        payload["seq"].as_u64().unwrap_or(u64::MAX),
    )
}

#[actix_rt::test]
async fn two_bridges_on_the_real_gateway_store_each_event_of_a_run_once() {
    if !RealGateway::available() {
        return;
    }
    let server = NatsServer::start();
    let gw = shared();
    let a = spawn_app(&gw.url(), Some(gw.token()), &nats_toml(&server, "")).await;
    let b = spawn_app(&gw.url(), Some(gw.token()), &nats_toml(&server, "")).await;
    assert!(a.wait_connected(T).await, "{:?}", a.status().await);
    assert!(b.wait_connected(T).await, "{:?}", b.status().await);
    let js = js(&server).await;
    wait_publishers(&js, "default", 2).await;
    let sub = |app: &TestApp| {
        app.broker.send(Subscribe {
            filter: Filter {
                events: vec!["agent".into(), "chat".into()],
                ..Default::default()
            },
            since: None,
            label: "ha".into(),
        })
    };
    let mut sa = sub(&a).await.unwrap().expect("subscribed");
    let mut sb = sub(&b).await.unwrap().expect("subscribed");

    let key = uuid::Uuid::new_v4().to_string();
    let (status, body) = a
        .rpc(
            json!({"method": "agent", "expectFinal": true, "timeoutMs": 60000,
            "params": {"message": "hello two bridges", "agentId": "main",
                       "sessionKey": "agent:main:main", "idempotencyKey": key}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = body["payload"]["runId"].as_str().expect("runId").to_owned();

    // What each bridge received of the run (both sockets get every event).
    let mut seen: [BTreeSet<(String, String, String, u64)>; 2] = Default::default();
    for (i, s) in [&mut sa, &mut sb].into_iter().enumerate() {
        let deadline = Instant::now() + T;
        let mut quiet = 0;
        while Instant::now() < deadline && quiet < 3 {
            match tokio::time::timeout(Duration::from_secs(1), s.recv()).await {
                Ok(Some(item)) if item.run_id() == Some(run.as_str()) => {
                    let payload: Value = serde_json::from_str(item.payload()).unwrap();
                    seen[i].insert(run_key(item.name(), &payload));
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => quiet += 1,
            }
        }
    }
    assert!(
        seen[0].iter().any(|k| k.0 == "agent" && k.2 == "lifecycle"),
        "{:?}",
        seen[0]
    );
    assert_eq!(seen[0], seen[1], "both sockets get the run's events");

    let of_run = |g: &[Got]| -> Vec<(String, String, String, u64)> {
        g.iter()
            .filter(|m| m.env["run_id"] == run.as_str() && m.env["bridge_id"].is_u64())
            .map(|m| run_key(m.env["event"].as_str().unwrap_or(""), &m.env["payload"]))
            .collect()
    };
    let got = read(&js, "openclaw.default.>", 1, T, |g| {
        of_run(g).len() >= seen[0].len()
    })
    .await;
    assert!(of_run(&got).len() >= seen[0].len());
    // Give a second copy time to land, then count again.
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let got = read(&js, "openclaw.default.>", 1, Duration::from_secs(5), |g| {
        of_run(g).len() > seen[0].len()
    })
    .await;
    let mut counts: BTreeMap<(String, String, String, u64), usize> = BTreeMap::new();
    for k in of_run(&got) {
        *counts.entry(k).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "stored more than once: {doubled:?}");
    let stored: BTreeSet<_> = counts.keys().cloned().collect();
    assert_eq!(stored, seen[0], "every event of the run is stored");
    a.stop().await;
    b.stop().await;
}

fn flood_event(i: u64) -> Value {
    json!({"runId": "flood", "seq": i, "stream": "assistant", "agentId": "main",
           "ts": 1_790_000_000_000u64 + i, "data": {"i": i}})
}

/// Messages stored per subject under `filter`.
async fn subject_counts(js: &jetstream::Context, filter: &str) -> BTreeMap<String, u64> {
    let stream = js.get_stream("OPENCLAW").await.expect("stream");
    let mut info = stream.info_with_subjects(filter).await.expect("info");
    let mut out = BTreeMap::new();
    while let Some(Ok((s, n))) = info.next().await {
        out.insert(s, n as u64);
    }
    out
}

#[actix_rt::test]
async fn two_bridges_under_a_flood_one_killed_midway_store_every_event_once() {
    const FLOOD: u64 = 50_000;
    let server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions::default());
    // Queues that hold the whole flood: the test is about the handover,
    // not about overflow (which is announced, tests/it/nats.rs).
    let cfg = "buffer = 100000\n";
    let mut a = ChildBridge::start(&gw.url(), &nats_toml(&server, cfg));
    let b = spawn_app(&gw.url(), None, &nats_toml(&server, cfg)).await;
    assert!(b.wait_connected(T).await);
    assert!(gw.wait_handshakes(2, T).await, "both bridges connect");
    let js = js(&server).await;
    wait_publishers(&js, "default", 2).await;

    // A kill point between 25% and 75% of the flood, as stored in the
    // stream (so both bridges are publishing when A dies), different every run.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let kill_at = FLOOD / 4 + nanos % (FLOOD / 2);
    eprintln!("killing bridge A once {kill_at} of {FLOOD} events are stored");
    let subject = "openclaw.default.agent.main";
    let stored_now = || async {
        subject_counts(&js, subject)
            .await
            .get(subject)
            .copied()
            .unwrap_or(0)
    };
    let mut stored_at_kill = None;
    for i in 1..=FLOOD {
        gw.broadcast_event("agent", flood_event(i));
        if i % 1000 == 0 {
            actix_rt::time::sleep(Duration::from_millis(20)).await;
            if stored_at_kill.is_none() {
                let n = stored_now().await;
                if n >= kill_at {
                    a.kill();
                    stored_at_kill = Some(n);
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    while stored_at_kill.is_none() {
        let n = stored_now().await;
        if n >= kill_at {
            a.kill();
            stored_at_kill = Some(n);
        }
        assert!(
            Instant::now() < deadline,
            "the flood never got to {kill_at}: {n}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let stored_at_kill = stored_at_kill.unwrap_or(0);
    assert!(stored_at_kill < FLOOD, "A died before the flood was stored");
    eprintln!("stored when A died: {stored_at_kill}");
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut stored = 0;
    while Instant::now() < deadline {
        stored = stored_now().await;
        if stored >= FLOOD {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(stored, FLOOD, "stored after the flood");
    // Late copies would show up now: the count must stay.
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let counts = subject_counts(&js, "openclaw.default.agent.>").await;
    assert_eq!(counts.get(subject), Some(&FLOOD), "{counts:?}");
    // And they are the 50k distinct events, none missing.
    let got = read(&js, subject, 1, Duration::from_secs(120), |g| {
        g.len() as u64 >= FLOOD
    })
    .await;
    let seqs: BTreeSet<u64> = got
        .iter()
        .filter_map(|m| m.env["payload"]["seq"].as_u64())
        .collect();
    assert_eq!(seqs.len() as u64, FLOOD);
    assert_eq!(seqs.first(), Some(&1));
    assert_eq!(seqs.last(), Some(&FLOOD));
    let lost = read(
        &js,
        "openclaw.default.bridge.resync",
        1,
        Duration::from_secs(1),
        |_| false,
    )
    .await
    .into_iter()
    .filter(|m| m.env["payload"]["reason"] == "events_lost")
    .count();
    assert_eq!(lost, 0, "the surviving bridge lost nothing");
    b.stop().await;
}

/// The KV value of `default.main`, with its revision.
async fn kv_main(kv: &jetstream::kv::Store) -> Option<(Value, u64)> {
    let e = kv.entry("default.main").await.ok().flatten()?;
    Some((serde_json::from_slice(&e.value).ok()?, e.revision))
}

#[actix_rt::test]
async fn a_bridge_that_lost_its_gateway_does_not_undo_the_other_bridges_kv_view() {
    let server = NatsServer::start();
    // Two sockets of "one gateway" (id default): when one of them goes
    // away, only that bridge's view turns stale.
    let gw_a = FakeGateway::start(FakeOptions::default());
    let gw_b = FakeGateway::start(FakeOptions::default());
    let a = spawn_app(&gw_a.url(), None, &nats_toml(&server, "")).await;
    let b = spawn_app(&gw_b.url(), None, &nats_toml(&server, "")).await;
    assert!(a.wait_connected(T).await && b.wait_connected(T).await);
    let js = js(&server).await;
    let deadline = Instant::now() + T;
    let kv = loop {
        if let Ok(kv) = js.get_key_value("openclaw_agents").await {
            if matches!(kv_main(&kv).await, Some((v, _)) if v["stale"] == false) {
                break kv;
            }
        }
        assert!(Instant::now() < deadline, "the KV bucket never got main");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    // A run on both sockets: both views move to the same gateway event.
    let ev = json!({"runId": "r1", "seq": 1, "stream": "lifecycle", "agentId": "main",
                    "ts": 1_790_000_000_000u64, "data": {"phase": "start"}});
    gw_a.send_event("agent", ev.clone());
    gw_b.send_event("agent", ev);
    let deadline = Instant::now() + T;
    while !matches!(kv_main(&kv).await, Some((v, _)) if v["status"] == "running") {
        assert!(Instant::now() < deadline, "the run never reached KV");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let (before, rev) = kv_main(&kv).await.expect("main");
    assert_eq!(before["stale"], false);

    // Bridge A loses its gateway: its view of main turns stale.
    gw_a.stop_listening();
    gw_a.drop_all();
    let deadline = Instant::now() + T;
    let mut view = a.get("/v1/agents/main").await.1;
    while view["stale"] != true {
        assert!(
            Instant::now() < deadline,
            "A's view never turned stale: {view}"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        view = a.get("/v1/agents/main").await.1;
    }
    // Several mirror passes later, B's live view still stands.
    actix_rt::time::sleep(openclaw_bridge::nats::KV_EVERY * 6).await;
    let (after, rev_after) = kv_main(&kv).await.expect("main");
    assert_eq!(after["stale"], false, "{after}");
    assert_eq!(rev_after, rev, "nobody rewrote the key: {after}");
    a.stop().await;
    b.stop().await;
}
