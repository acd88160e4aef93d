//! NATS JetStream fan-out against a real `nats-server -js` on loopback:
//! subjects and envelope, the KV registry mirror, resuming from a stream
//! sequence, NATS killed under a flood (gaps announced, never silent), and RPC
//! over request–reply with the HTTP error mapping.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use openclaw_bridge::actors::broker::{Filter, Subscribe};
use serde_json::{json, Value};

use crate::http_api::metric;
use crate::support::app::{spawn_app, TestApp};
use crate::support::child_bridge::ChildBridge;
use crate::support::fake_gateway::{FakeGateway, FakeOptions, Reply};
use crate::support::nats_server::NatsServer;

const T: Duration = Duration::from_secs(15);

fn nats_toml(server: &NatsServer, extra: &str) -> String {
    format!("[nats]\nurl = {:?}\n{extra}", server.url())
}

async fn client(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url())
        .await
        .expect("test client connects")
}

/// One message read back from the stream.
#[derive(Debug, Clone)]
pub struct Got {
    pub subject: String,
    pub stream_seq: u64,
    pub env: Value,
}

/// Read messages matching `filter` from stream sequence `from` on, until
/// `until` says enough or `within` passes (bounded).
pub async fn read(
    js: &jetstream::Context,
    filter: &str,
    from: u64,
    within: Duration,
    until: impl Fn(&[Got]) -> bool,
) -> Vec<Got> {
    let deadline = Instant::now() + within;
    // The bridge creates the stream in the background: wait for it.
    let stream = loop {
        if let Ok(s) = js.get_stream("OPENCLAW").await {
            break s;
        }
        assert!(Instant::now() < deadline, "the stream was never created");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    };
    let c = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.into(),
            deliver_policy: if from <= 1 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                }
            },
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut msgs = c.messages().await.expect("messages");
    let mut out = Vec::new();
    while !until(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, msgs.next()).await {
            Ok(Some(Ok(m))) => {
                let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                out.push(Got {
                    subject: m.subject.to_string(),
                    stream_seq,
                    env: serde_json::from_slice(&m.payload).expect("envelope is JSON"),
                });
            }
            _ => break,
        }
    }
    out
}

fn agent_event(i: u64) -> Value {
    json!({"runId": format!("r{i}"), "agentId": "main", "stream": "assistant", "data": {"i": i}})
}

async fn app_with_nats(gw: &FakeGateway, server: &NatsServer, extra: &str) -> TestApp {
    let app = spawn_app(&gw.url(), None, &nats_toml(server, extra)).await;
    assert!(app.wait_connected(T).await);
    app
}

#[actix_rt::test]
async fn events_arrive_on_their_subjects_in_order_with_the_envelope() {
    let server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions::default());
    let app = app_with_nats(&gw, &server, "").await;
    for i in 0..20 {
        gw.send_event("agent", agent_event(i));
    }
    gw.send_event("gateway.suspension", json!({"on": true}));
    gw.send_event(
        "agent",
        json!({"runId": "odd", "agentId": "a.b*c", "stream": "x"}),
    );
    let js = jetstream::new(client(&server).await);

    let got = read(&js, "openclaw.default.agent.>", 1, T, |g| g.len() >= 21).await;
    assert_eq!(got.len(), 21, "{got:?}");
    for (i, g) in got.iter().take(20).enumerate() {
        assert_eq!(g.subject, "openclaw.default.agent.main");
        let e = &g.env;
        assert_eq!(e["gateway"], "default");
        assert_eq!(e["epoch"], 1);
        assert_eq!(e["event"], "agent");
        assert_eq!(e["agent_id"], "main");
        assert_eq!(e["payload"], agent_event(i as u64));
        if i > 0 {
            let prev = &got[i - 1].env;
            assert_eq!(e["seq"].as_u64(), prev["seq"].as_u64().map(|s| s + 1));
            assert!(e["bridge_id"].as_u64() > prev["bridge_id"].as_u64());
        }
    }
    assert_eq!(got[20].subject, "openclaw.default.agent.a_b_c");
    assert_eq!(got[20].env["agent_id"], "a.b*c");

    // Dotted event names stay subject levels; lifecycle and the reconnect
    // marker are in the stream too.
    let all = read(&js, "openclaw.default.>", 1, T, |g| {
        g.iter()
            .any(|m| m.subject == "openclaw.default.gateway.suspension")
    })
    .await;
    let subjects: Vec<&str> = all.iter().map(|g| g.subject.as_str()).collect();
    assert_eq!(subjects[0], "openclaw.default.bridge.connected");
    assert_eq!(subjects[1], "openclaw.default.bridge.resync");
    assert_eq!(all[1].env["payload"]["reason"], "reconnect");
    assert!(subjects.contains(&"openclaw.default.gateway.suspension"));

    // A new gateway session is a new epoch, announced by a marker; a seq gap
    // is announced too.
    gw.drop_all();
    assert!(app.wait_state("connected", T).await);
    gw.wait_for(T, |g| g.handshakes_total() >= 2).await;
    assert!(app.wait_connected(T).await);
    gw.send_event_with_seq("agent", agent_event(100), Some(1));
    gw.send_event_with_seq("agent", agent_event(101), Some(5));
    let all = read(&js, "openclaw.default.>", 1, T, |g| {
        g.iter().any(|m| m.env["payload"]["reason"] == "seq_gap")
    })
    .await;
    let reasons: Vec<(u64, String)> = all
        .iter()
        .filter(|m| m.subject == "openclaw.default.bridge.resync")
        .map(|m| {
            (
                m.env["epoch"].as_u64().unwrap_or(0),
                m.env["payload"]["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(reasons.contains(&(2, "reconnect".into())), "{reasons:?}");
    assert!(reasons.contains(&(2, "seq_gap".into())), "{reasons:?}");
    app.stop().await;
}

#[actix_rt::test]
async fn a_late_consumer_gets_the_registry_from_kv_and_resumes_from_a_stream_sequence() {
    let server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions {
        agents: vec![
            json!({"id": "main", "name": "Main"}),
            json!({"id": "ops", "name": "Ops"}),
        ],
        ..Default::default()
    });
    let app = app_with_nats(&gw, &server, "").await;
    for i in 0..10 {
        gw.send_event("agent", agent_event(i));
    }
    let nc = client(&server).await;
    let js = jetstream::new(nc.clone());

    // The replica's view of the registry: one KV read per agent, no events.
    let deadline = Instant::now() + T;
    let (main, ops) = loop {
        if let Ok(kv) = js.get_key_value("openclaw_agents").await {
            // Keys are `<gateway>.<agent>`.
            let main = kv.get("default.main").await.ok().flatten();
            let ops = kv.get("default.ops").await.ok().flatten();
            if let (Some(m), Some(o)) = (main, ops) {
                let m: Value = serde_json::from_slice(&m).unwrap();
                let o: Value = serde_json::from_slice(&o).unwrap();
                if m["listed"] == true && o["listed"] == true && m["stale"] == false {
                    break (m, o);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the KV bucket never got both agents"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(main["id"], "main");
    assert_eq!(main["name"], "Main");
    assert_eq!(ops["name"], "Ops");
    let (_, http) = app.get("/v1/agents/ops").await;
    for k in ["id", "name", "is_default", "listed"] {
        assert_eq!(ops[k], http[k], "{k}");
    }

    // Resume: remember where the first 5 agent events end, then a consumer
    // starting after that sequence sees exactly what followed.
    let first = read(&js, "openclaw.default.agent.>", 1, T, |g| g.len() >= 10).await;
    assert_eq!(first.len(), 10);
    let resume_at = first[4].stream_seq + 1;
    for i in 10..15 {
        gw.send_event("agent", agent_event(i));
    }
    let rest = read(&js, "openclaw.default.agent.>", resume_at, T, |g| {
        g.len() >= 10
    })
    .await;
    let ids: Vec<u64> = rest
        .iter()
        .map(|g| g.env["payload"]["data"]["i"].as_u64().unwrap_or(999))
        .collect();
    assert_eq!(ids, (5..15).collect::<Vec<_>>());
    app.stop().await;
}

#[actix_rt::test]
async fn nats_killed_under_a_flood_sse_keeps_working_and_the_gap_is_announced() {
    let mut server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions::default());
    // A small publish queue so the outage overflows it.
    let app = app_with_nats(&gw, &server, "buffer = 50\n").await;
    let nc = client(&server).await;
    let js = jetstream::new(nc.clone());
    gw.send_event("agent", agent_event(0));
    let warm = read(&js, "openclaw.default.agent.>", 1, T, |g| !g.is_empty()).await;
    assert_eq!(warm.len(), 1, "NATS publishing works before the outage");
    drop(nc);

    let mut sub = app
        .broker
        .send(Subscribe {
            filter: Filter::default(),
            since: None,
            label: "flood".into(),
        })
        .await
        .unwrap()
        .expect("subscribed");
    server.kill();
    const FLOOD: u64 = 400;
    for i in 1..=FLOOD {
        gw.send_event("agent", agent_event(i));
    }
    // The local path keeps working throughout: every event, in order.
    let mut flood_ids = Vec::new();
    let deadline = Instant::now() + T;
    while flood_ids.len() < FLOOD as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let item = tokio::time::timeout(left, sub.recv())
            .await
            .expect("the broker keeps delivering while NATS is down")
            .expect("open");
        if item.name() == "agent" {
            flood_ids.push(item.id);
        }
    }
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200, "the bridge stays ready without NATS");

    server.restart();
    let nc = client(&server).await;
    let js = jetstream::new(nc.clone());
    // Until the bridge has reconnected its queue is still full, so an event
    // sent now may itself be dropped (and announced): keep sending one now
    // and then until one arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut k = FLOOD;
    loop {
        k += 1;
        gw.send_event("agent", agent_event(k));
        let got = read(
            &js,
            "openclaw.default.agent.>",
            1,
            Duration::from_millis(500),
            |g| {
                g.iter()
                    .any(|m| m.env["payload"]["data"]["i"].as_u64() > Some(FLOOD))
            },
        )
        .await;
        if got
            .iter()
            .any(|m| m.env["payload"]["data"]["i"].as_u64() > Some(FLOOD))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "publishing never resumed after NATS came back"
        );
    }
    // Every flood event ends up either in the stream or named by an
    // `events_lost` marker (events in flight when NATS died count as lost
    // once their acknowledgement times out): wait for that, bounded.
    let accounted = |all: &[Got]| -> (Vec<u64>, usize) {
        let published: BTreeSet<u64> = all
            .iter()
            .filter_map(|m| m.env["bridge_id"].as_u64())
            .collect();
        let mut missed: Vec<(u64, u64)> = Vec::new();
        for m in all
            .iter()
            .filter(|m| m.env["payload"]["reason"] == "events_lost")
        {
            for r in m.env["payload"]["missed"].as_array().into_iter().flatten() {
                missed.push((r[0].as_u64().unwrap_or(0), r[1].as_u64().unwrap_or(0)));
            }
        }
        let silent = flood_ids
            .iter()
            .copied()
            .filter(|id| {
                !published.contains(id) && !missed.iter().any(|r| r.0 <= *id && *id <= r.1)
            })
            .collect();
        (silent, missed.len())
    };
    let all = read(&js, "openclaw.default.>", 1, Duration::from_secs(30), |g| {
        accounted(g).0.is_empty()
    })
    .await;
    let (silent, markers) = accounted(&all);
    assert!(silent.is_empty(), "lost without a marker: {silent:?}");
    assert!(markers > 0, "the outage lost events and said so");
    let text = app.metrics_text().await;
    // Samples with values, not only the HELP/TYPE lines.
    let value = |name: &str, labels: &[&str]| metric(&text, name, labels).unwrap_or(0.0);
    let gw_label = r#"gateway="default""#;
    assert!(
        value(
            "openclaw_bridge_nats_dropped_total",
            &[gw_label, r#"reason="queue_full""#]
        ) > 0.0,
        "{text}"
    );
    assert!(
        value("openclaw_bridge_nats_published_total", &[gw_label]) > 0.0,
        "{text}"
    );
    assert!(
        metric(&text, "openclaw_bridge_nats_connection_state", &[gw_label]).is_some(),
        "{text}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn rpc_over_nats_answers_like_post_v1_rpc() {
    let server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions::default());
    let app = app_with_nats(&gw, &server, "rpc = true\nrpc_methods = [\"*\"]\n").await;
    let nc = client(&server).await;
    let ask = |body: Value| {
        let nc = nc.clone();
        async move {
            // The responder subscribes in the background: retry briefly.
            let deadline = Instant::now() + T;
            loop {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    nc.request("openclaw.rpc.default", body.to_string().into()),
                )
                .await
                {
                    Ok(Ok(m)) => return serde_json::from_slice::<Value>(&m.payload).unwrap(),
                    _ if Instant::now() < deadline => {
                        actix_rt::time::sleep(Duration::from_millis(100)).await
                    }
                    other => panic!("no RPC answer over NATS: {other:?}"),
                }
            }
        }
    };
    assert_eq!(
        ask(json!({"method": "health"})).await,
        json!({"ok": true, "payload": {"ok": true}})
    );
    gw.set_responder(|r| match r.method.as_str() {
        "forbidden" => Reply::Err(json!({"code": "FORBIDDEN", "message": "missing scope: operator.admin", "details": {"code": "MISSING_SCOPE"}})),
        "busy" => Reply::Err(json!({"code": "UNAVAILABLE", "message": "busy", "retryAfterMs": 1500})),
        _ => Reply::Default,
    });
    for (body, status, code) in [
        (json!({"method": "forbidden"}), 403, "FORBIDDEN"),
        (json!({"method": "busy"}), 503, "UNAVAILABLE"),
        (json!({"method": "no.such"}), 400, "INVALID_REQUEST"),
        (json!({"method": ""}), 400, "BRIDGE_BAD_REQUEST"),
        (
            json!({"method": "x", "params": [1]}),
            400,
            "BRIDGE_BAD_REQUEST",
        ),
    ] {
        let got = ask(body.clone()).await;
        assert_eq!(got["ok"], false, "{body}");
        assert_eq!(got["status"], status, "{body}: {got}");
        assert_eq!(got["error"]["code"], code, "{body}: {got}");
        let (http_status, http_body) = app.rpc(body.clone()).await;
        assert_eq!(http_status, status, "HTTP agrees for {body}");
        assert_eq!(
            http_body["error"], got["error"],
            "same error object for {body}"
        );
    }
    app.stop().await;
}

#[actix_rt::test]
async fn kv_keys_of_vanished_agents_are_deleted_and_other_gateways_keys_kept() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    // What an earlier run left: an agent that no longer exists, and a key of
    // another bridge's gateway.
    let kv = js
        .create_key_value(jetstream::kv::Config {
            bucket: "openclaw_agents".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .expect("bucket");
    kv.put("default.ghost", "{}".into()).await.expect("put");
    kv.put("other-gw.main", "{}".into()).await.expect("put");
    let gw = FakeGateway::start(FakeOptions::default());
    let app = app_with_nats(&gw, &server, "").await;
    let deadline = Instant::now() + T;
    loop {
        let main = kv.get("default.main").await.ok().flatten();
        let ghost = kv.get("default.ghost").await.ok().flatten();
        if main.is_some() && ghost.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "main {main:?} ghost {ghost:?}: the mirror did not catch up"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    let main: Value =
        serde_json::from_slice(&kv.get("default.main").await.unwrap().unwrap()).unwrap();
    assert_eq!(main["gateway_id"], "default");
    assert!(
        kv.get("other-gw.main").await.ok().flatten().is_some(),
        "another gateway's key must be left alone"
    );
    app.stop().await;
}

/// JetStream answers a publish with an error (here: a full stream that
/// discards new messages). Each refused event counts as lost, exactly: once
/// the stream takes messages again an `events_lost` marker names the refused
/// ids and no stored one.
#[actix_rt::test]
async fn events_jetstream_refuses_are_announced_by_id_once_it_takes_messages_again() {
    let server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions::default());
    let app = app_with_nats(&gw, &server, "").await;
    let js = jetstream::new(client(&server).await);
    gw.send_event("agent", agent_event(0));
    let warm = read(&js, "openclaw.default.agent.>", 1, T, |g| !g.is_empty()).await;
    assert_eq!(
        warm.len(),
        1,
        "NATS publishing works before the stream fills"
    );

    // Room for five more messages, then JetStream refuses
    // ("maximum messages exceeded").
    let mut stream = js
        .get_stream("OPENCLAW")
        .await
        .expect("the bridge's stream");
    let held = stream.info().await.expect("stream info").state.messages;
    let mut config = stream.cached_info().config.clone();
    config.max_messages = i64::try_from(held + 5).expect("small");
    config.discard = jetstream::stream::DiscardPolicy::New;
    js.update_stream(&config).await.expect("limit the stream");

    let mut sub = app
        .broker
        .send(Subscribe {
            filter: Filter::default(),
            since: None,
            label: "refused".into(),
        })
        .await
        .unwrap()
        .expect("subscribed");
    const FLOOD: u64 = 20;
    for i in 1..=FLOOD {
        gw.send_event("agent", agent_event(i));
    }
    let mut flood_ids = BTreeSet::new();
    while flood_ids.len() < FLOOD as usize {
        let item = tokio::time::timeout(T, sub.recv())
            .await
            .expect("the broker delivers the flood")
            .expect("open");
        if item.name() == "agent" {
            flood_ids.insert(item.id);
        }
    }
    let refused = |t: &str| {
        metric(
            t,
            "openclaw_bridge_nats_dropped_total",
            &[r#"gateway="default""#, r#"reason="publish_failed""#],
        )
        .unwrap_or(0.0)
    };
    let deadline = Instant::now() + T;
    while refused(&app.metrics_text().await) < 15.0 {
        assert!(
            Instant::now() < deadline,
            "JetStream refused 15 events and the bridge did not count them: {}",
            app.metrics_text().await
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }

    config.max_messages = -1;
    js.update_stream(&config).await.expect("lift the limit");
    let marker_ids = |all: &[Got]| -> BTreeSet<u64> {
        all.iter()
            .filter(|m| m.env["payload"]["reason"] == "events_lost")
            .flat_map(|m| {
                m.env["payload"]["missed"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .flat_map(|r| r[0].as_u64().unwrap_or(1)..=r[1].as_u64().unwrap_or(0))
            .collect()
    };
    let all = read(&js, "openclaw.default.>", 1, T, |g| {
        marker_ids(g).len() >= 15
    })
    .await;
    let stored: BTreeSet<u64> = all
        .iter()
        .filter(|m| m.env["event"] == "agent")
        .filter_map(|m| m.env["bridge_id"].as_u64())
        .filter(|id| flood_ids.contains(id))
        .collect();
    let missed = marker_ids(&all);
    assert_eq!(
        stored.len(),
        5,
        "the five that fitted are stored: {stored:?}"
    );
    assert_eq!(
        missed,
        flood_ids
            .difference(&stored)
            .copied()
            .collect::<BTreeSet<u64>>(),
        "the marker names exactly the refused events"
    );
    let lost = all
        .iter()
        .find(|m| m.env["payload"]["reason"] == "events_lost")
        .expect("a marker");
    assert_eq!(lost.env["payload"]["count"], 15);
    app.stop().await;
}

/// The daemon as operators run it, in a process of its own: its NATS
/// metrics have values from the first event on. (The publisher looks its
/// metric handles up once; one looked up before the recorder was installed
/// would stay a no-op for the life of the process.)
#[actix_rt::test]
async fn a_daemon_process_exports_its_nats_metrics_from_the_first_event() {
    let server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions::default());
    let daemon = ChildBridge::start(&gw.url(), &nats_toml(&server, ""));
    gw.wait_for(T, |g| g.handshakes_total() >= 1).await;
    gw.send_event("agent", agent_event(1));
    let js = jetstream::new(client(&server).await);
    let got = read(&js, "openclaw.default.agent.>", 1, T, |g| !g.is_empty()).await;
    assert_eq!(got.len(), 1, "the daemon publishes to JetStream");

    let http = awc::Client::default();
    let gw_label = r#"gateway="default""#;
    let deadline = Instant::now() + T;
    loop {
        let text = match http
            .get(format!("http://127.0.0.1:{}/metrics", daemon.port))
            .send()
            .await
        {
            Ok(mut r) => r
                .body()
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        let published = metric(&text, "openclaw_bridge_nats_published_total", &[gw_label]);
        let queued = metric(&text, "openclaw_bridge_nats_queue", &[gw_label]);
        if published >= Some(1.0) && queued.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no published count or queue gauge for NATS on /metrics: {text}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}
