//! RPC over NATS locked down, and the consumer story (real `nats-server
//! -js`): opt-in and allowlisted, one answer per request through the queue
//! group of two bridges, nats-server's own subject permissions keeping
//! other clients off the RPC subject, and a Control Center replica on a
//! durable consumer that is killed and resumes with nothing lost or repeated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::nats_ha::{js, nats_toml, wait_publishers};
use crate::support::app::{spawn_app, TestApp};
use crate::support::fake_gateway::{FakeGateway, FakeOptions};
use crate::support::nats_server::NatsServer;

const T: Duration = Duration::from_secs(30);
const RPC: &str = "openclaw.rpc.default";

/// Ask until the responder is subscribed (it starts in the background).
async fn ask(nc: &async_nats::Client, body: Value) -> Value {
    let deadline = Instant::now() + T;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            nc.request(RPC, body.to_string().into()),
        )
        .await
        {
            Ok(Ok(m)) => return serde_json::from_slice(&m.payload).expect("JSON answer"),
            _ if Instant::now() < deadline => {
                actix_rt::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("no RPC answer over NATS: {other:?}"),
        }
    }
}

async fn app(gw: &FakeGateway, server: &NatsServer, extra: &str) -> TestApp {
    let app = spawn_app(&gw.url(), None, &nats_toml(server, extra)).await;
    assert!(app.wait_connected(T).await);
    app
}

#[actix_rt::test]
async fn rpc_is_off_by_default_and_serves_only_allowed_methods_when_on() {
    let server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions::default());
    let off = app(&gw, &server, "").await;
    let js = js(&server).await;
    // The bridge is on NATS (it publishes), yet nobody answers RPC.
    wait_publishers(&js, "default", 1).await;
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let nc = async_nats::connect(server.url()).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        nc.request(RPC, json!({"method": "health"}).to_string().into()),
    )
    .await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "an answer with nats.rpc off: {r:?}"
    );
    off.stop().await;

    let on = app(&gw, &server, "rpc = true\n").await;
    assert_eq!(
        ask(&nc, json!({"method": "health"})).await,
        json!({"ok": true, "payload": {"ok": true}})
    );
    gw.drain_requests();
    // A write method is not in the default allowlist: a clear refusal, and
    // the gateway never sees the request.
    let got = ask(&nc, json!({"method": "agent", "params": {"message": "hi"}})).await;
    assert_eq!(got["ok"], false, "{got}");
    assert_eq!(got["status"], 403, "{got}");
    assert_eq!(got["error"]["code"], "BRIDGE_FORBIDDEN", "{got}");
    assert!(
        got["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nats.rpc_methods")),
        "{got}"
    );
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !gw.drain_requests().iter().any(|r| r.method == "agent"),
        "a refused method reached the gateway"
    );
    on.stop().await;
}

#[actix_rt::test]
async fn two_bridges_answer_a_thousand_requests_each_exactly_once() {
    const N: usize = 1000;
    let server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions::default());
    let extra = "rpc = true\nrpc_methods = [\"echo\"]\n";
    let a = app(&gw, &server, extra).await;
    let b = app(&gw, &server, extra).await;
    let nc = async_nats::connect(server.url()).await.unwrap();
    // Both responders are subscribed once both answer a probe; the queue
    // group picks one at random, so probe until each has answered.
    let deadline = Instant::now() + T;
    let mut conns = std::collections::BTreeSet::new();
    loop {
        ask(&nc, json!({"method": "echo", "params": {"probe": true}})).await;
        conns.extend(
            gw.drain_requests()
                .iter()
                .filter(|r| r.method == "echo")
                .map(|r| r.conn),
        );
        if conns.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "both responders never answered");
    }
    gw.drain_requests();

    let mut replies = nc.subscribe("h18.replies.>").await.unwrap();
    for i in 0..N {
        nc.publish_with_reply(
            RPC,
            format!("h18.replies.{i}"),
            json!({"method": "echo", "params": {"i": i}})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    }
    nc.flush().await.unwrap();
    let mut answers: BTreeMap<usize, Vec<Value>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut extra_wait = None;
    loop {
        let left = match extra_wait {
            Some(until) => until,
            None => deadline,
        }
        .saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, replies.next()).await {
            Ok(Some(m)) => {
                let i: usize = m.subject.rsplit('.').next().unwrap().parse().unwrap();
                answers
                    .entry(i)
                    .or_default()
                    .push(serde_json::from_slice(&m.payload).unwrap());
                if answers.len() == N && extra_wait.is_none() {
                    // Any second answer would come now.
                    extra_wait = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            _ => break,
        }
    }
    assert_eq!(answers.len(), N, "requests answered");
    for (i, list) in &answers {
        assert_eq!(list.len(), 1, "request {i} answered {} times", list.len());
        assert_eq!(
            list[0],
            json!({"ok": true, "payload": {"i": i}}),
            "request {i}"
        );
    }
    // The queue group shares the load between the two bridges.
    let mut per_conn: BTreeMap<usize, usize> = BTreeMap::new();
    for r in gw.drain_requests().iter().filter(|r| r.method == "echo") {
        *per_conn.entry(r.conn).or_default() += 1;
    }
    assert_eq!(per_conn.values().sum::<usize>(), N, "{per_conn:?}");
    assert_eq!(per_conn.len(), 2, "both bridges served: {per_conn:?}");
    a.stop().await;
    b.stop().await;
}

/// nats-server users: the bridge, Control Center, and a viewer that may read
/// the stream but not call RPC (the README's permissions, trimmed to what
/// the test needs).
const AUTH: &str = r#"
authorization {
  users = [
    { user: bridge, password: bridge-pw, permissions: {
        publish: { allow: ["openclaw.>", "$JS.API.>", "$KV.openclaw_agents.>"], deny: ["openclaw.rpc.>"] }
        subscribe: { allow: ["openclaw.rpc.>", "_INBOX.>"] }
        allow_responses: true } }
    { user: cc, password: cc-pw, permissions: {
        publish: { allow: ["openclaw.rpc.>", "$JS.API.>", "$JS.ACK.>"] }
        subscribe: { allow: ["openclaw.*.>", "_INBOX.>"], deny: ["openclaw.rpc.>"] } } }
    { user: viewer, password: viewer-pw, permissions: {
        publish: { allow: ["$JS.API.>", "$JS.ACK.>"], deny: ["openclaw.rpc.>"] }
        subscribe: { allow: ["openclaw.*.>", "_INBOX.>"], deny: ["openclaw.rpc.>"] } } }
  ]
}
"#;

async fn user_client(
    server: &NatsServer,
    user: &str,
    pw: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let nc = async_nats::ConnectOptions::with_user_and_password(user.into(), pw.into())
        .event_callback(move |e| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(server.url())
        .await
        .expect("user connects");
    (nc, errors)
}

#[actix_rt::test]
async fn only_the_control_center_user_may_publish_to_the_rpc_subject() {
    let server = NatsServer::start_with_auth(AUTH);
    let gw = FakeGateway::start(FakeOptions::default());
    let bridge = app(
        &gw,
        &server,
        "rpc = true\nuser = \"bridge\"\npassword = \"bridge-pw\"\n",
    )
    .await;
    let (cc, _) = user_client(&server, "cc", "cc-pw").await;
    // The bridge works under its own user: events stored, RPC served.
    wait_publishers(&jetstream::new(cc.clone()), "default", 1).await;
    assert_eq!(
        ask(&cc, json!({"method": "health"})).await,
        json!({"ok": true, "payload": {"ok": true}})
    );
    gw.drain_requests();

    let (viewer, errors) = user_client(&server, "viewer", "viewer-pw").await;
    // The viewer reads the stream…
    let got = crate::nats::read(
        &jetstream::new(viewer.clone()),
        "openclaw.default.bridge.connected",
        1,
        T,
        |g| !g.is_empty(),
    )
    .await;
    assert_eq!(got.len(), 1, "the viewer may read events");
    // …but its RPC request is refused by nats-server and never answered.
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        viewer.request(RPC, json!({"method": "health"}).to_string().into()),
    )
    .await;
    assert!(!matches!(r, Ok(Ok(_))), "the viewer got an answer: {r:?}");
    let deadline = Instant::now() + T;
    while !errors.lock().unwrap().iter().any(|e| {
        e.to_lowercase()
            .contains("permissions violation for publish")
    }) {
        assert!(
            Instant::now() < deadline,
            "no permission error: {:?}",
            errors.lock().unwrap()
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !gw.drain_requests().iter().any(|r| r.method == "health"),
        "the viewer's request reached the gateway"
    );
    bridge.stop().await;
}

/// A Control Center replica: reads agent events through durable consumer
/// `name`, handles each (records its `i`) and acknowledges it, until
/// `stop_after` are handled or `until` passes; then it is "killed" (the
/// connection dropped, no goodbye, later messages left unacknowledged).
async fn replica(server: &NatsServer, name: &str, stop_after: usize, handled: &mut Vec<u64>) {
    let nc = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(nc.clone());
    let stream = js.get_stream("OPENCLAW").await.expect("stream");
    let c: consumer::PullConsumer = stream
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.into()),
                filter_subject: "openclaw.default.agent.>".into(),
                ack_policy: consumer::AckPolicy::Explicit,
                // Delivered but unacknowledged when the replica died: sent
                // again to the next replica after this long.
                ack_wait: Duration::from_secs(2),
                // One unacknowledged message at a time keeps stream order
                // across a restart (a redelivery cannot overtake).
                max_ack_pending: 1,
                ..Default::default()
            },
        )
        .await
        .expect("durable consumer");
    let mut msgs = c.messages().await.expect("messages");
    let mut n = 0;
    let deadline = Instant::now() + T;
    while n < stop_after {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(m))) = tokio::time::timeout(left, msgs.next()).await else {
            break;
        };
        let env: Value = serde_json::from_slice(&m.payload).unwrap();
        handled.push(env["payload"]["data"]["i"].as_u64().unwrap_or(u64::MAX));
        // Acknowledged and confirmed before the next: what was handled is
        // never sent again.
        m.double_ack().await.expect("ack");
        n += 1;
    }
    drop(msgs);
    drop(nc);
}

#[actix_rt::test]
async fn a_replica_on_a_durable_consumer_resumes_after_a_kill_with_nothing_lost_or_repeated() {
    let server = NatsServer::start();
    let gw = FakeGateway::start(FakeOptions::default());
    let bridge = app(&gw, &server, "").await;
    let js = js(&server).await;
    wait_publishers(&js, "default", 1).await;
    let ev = |i: u64| {
        json!({"runId": "r", "seq": i, "stream": "assistant", "agentId": "main",
               "ts": 1_790_000_000_000u64 + i, "data": {"i": i}})
    };
    for i in 0..100 {
        gw.send_event("agent", ev(i));
    }
    let mut handled = Vec::new();
    replica(&server, "cc-replica", 40, &mut handled).await;
    assert_eq!(handled.len(), 40);
    // Events keep coming while the replica is down.
    for i in 100..200 {
        gw.send_event("agent", ev(i));
    }
    // Restarted, it picks up where it stopped.
    replica(&server, "cc-replica", 160, &mut handled).await;
    assert_eq!(handled, (0..200).collect::<Vec<u64>>());
    // Nothing more is pending for it.
    let mut c: consumer::PullConsumer = js
        .get_stream("OPENCLAW")
        .await
        .unwrap()
        .get_consumer("cc-replica")
        .await
        .unwrap();
    let info = c.info().await.unwrap();
    assert_eq!(info.num_pending, 0, "{info:?}");
    bridge.stop().await;
}
