//! Events: decoded once, delivered whole (large, fragmented), garbage survived.

use std::time::Duration;

use openclaw_bridge::actors::broker::{BrokerItem, Filter, Subscribe, Subscription};
use serde_json::{json, Value};

use crate::support::app::{connected, TestApp};

const T: Duration = Duration::from_secs(10);

async fn subscribe(app: &TestApp) -> Subscription {
    app.broker
        .send(Subscribe {
            filter: Filter::default(),
            since: None,
            label: "test".into(),
        })
        .await
        .unwrap()
        .expect("under http.max_sse_subscribers")
}

/// Next item that is a gateway event (skips bridge.* lifecycle messages).
async fn next_event(sub: &mut Subscription) -> std::sync::Arc<BrokerItem> {
    next_event_within(sub, T).await
}

/// A bound, not a speed check: a 20 MB frame in a debug build on 2 busy
/// cores takes seconds to encode, send and decode.
async fn next_event_within(sub: &mut Subscription, t: Duration) -> std::sync::Arc<BrokerItem> {
    loop {
        let item = tokio::time::timeout(t, sub.recv())
            .await
            .expect("an event within the timeout")
            .expect("stream open");
        if !item.is_bridge() {
            return item;
        }
    }
}

/// The ids `/v1/agents` lists, once it lists `n` of them (or after 2 s).
async fn agent_ids(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..100 {
        let (_, agents) = app.get("/v1/agents").await;
        ids = agents
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        if ids.len() == n {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    ids
}

fn data(item: &BrokerItem) -> Value {
    let payload: Value = serde_json::from_str(item.payload()).expect("payload is JSON");
    json!({"seq": item.seq(), "payload": payload})
}

#[actix_rt::test]
async fn large_events_arrive_intact() {
    let (gw, app) = connected().await;
    let mut sub = subscribe(&app).await;
    for size in [1 << 20, 20_000_000] {
        let text: String = "é\"x\\ ".chars().cycle().take(size / 2).collect();
        gw.send_event("agent", json!({"runId": "big", "stream": "assistant", "agentId": "main", "data": {"text": text}}));
        let item = next_event_within(&mut sub, Duration::from_secs(120)).await;
        let v = data(&item);
        assert_eq!(
            v["payload"]["data"]["text"].as_str().unwrap(),
            text,
            "{size}-byte event altered"
        );
    }
    app.stop().await;
}

#[actix_rt::test]
async fn fragmented_messages_with_pings_between_are_reassembled() {
    let (gw, app) = connected().await;
    let mut sub = subscribe(&app).await;
    let payload =
        json!({"runId": "r", "stream": "assistant", "data": {"text": "ünïcödé ".repeat(5000)}});
    let frame =
        json!({"type": "event", "event": "agent", "seq": 1, "payload": payload}).to_string();
    gw.send_fragmented_with_pings(frame, 37);
    let item = next_event(&mut sub).await;
    assert_eq!(data(&item)["payload"], payload);
    assert!(
        gw.wait_for(T, |g| g.pongs_received() >= 36).await,
        "every ping is answered"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn pings_are_answered_with_pongs() {
    let (gw, app) = connected().await;
    for _ in 0..3 {
        gw.send_ping();
    }
    assert!(gw.wait_for(T, |g| g.pongs_received() >= 3).await);
    app.stop().await;
}

#[actix_rt::test]
async fn garbage_and_unknown_events_do_not_break_the_session() {
    let (gw, app) = connected().await;
    let mut sub = subscribe(&app).await;
    // A text frame that is not UTF-8 (a server's frame, unmasked, under 126
    // bytes): dropped whole, never delivered as the `agent` event it looks like.
    let text = b"{\"type\":\"event\",\"event\":\"agent\",\"payload\":{\"runId\":\"\xff\xfe\"}}";
    let mut frame = vec![0x81, u8::try_from(text.len()).unwrap()];
    frame.extend_from_slice(text);
    gw.send_raw(frame);
    for junk in [
        "not json",
        "{",
        "[]",
        r#"{"type":"event"}"#,
        r#"{"type":"event","event":"agent","payload":{"no":"runId"}}"#,
        r#"{"type":"mystery","x":1}"#,
        r#"{"type":"res","ok":true}"#,
    ] {
        gw.send_text(junk);
    }
    gw.send_binary(vec![0, 159, 146, 150]);
    gw.send_event("some.future.event", json!({"novel": [1, 2, {"x": null}]}));
    // The malformed `agent` event is passed on untyped; then the unknown one.
    let first = next_event(&mut sub).await;
    assert_eq!(first.name(), "agent");
    assert_eq!(data(&first)["payload"], json!({"no": "runId"}));
    let item = next_event(&mut sub).await;
    assert_eq!(item.name(), "some.future.event");
    assert_eq!(
        data(&item)["payload"],
        json!({"novel": [1, 2, {"x": null}]})
    );
    assert_eq!(app.status().await.state.as_str(), "connected");
    let (status, _) = app.rpc(json!({"method": "health"})).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[actix_rt::test]
async fn seq_gap_triggers_an_agents_list_resync() {
    let (gw, app) = connected().await;
    assert!(
        gw.next_request_for("agents.list", T).await.is_some(),
        "listed after hello-ok"
    );
    let (_, agents) = app.get("/v1/agents").await;
    assert_eq!(agents[0]["id"], "main");
    gw.set_agents(vec![
        json!({"id": "main"}),
        json!({"id": "ops", "name": "Ops"}),
    ]);
    gw.send_event("tick", json!({"ts": 1}));
    gw.send_event_with_seq("tick", json!({"ts": 2}), Some(10));
    assert!(
        gw.next_request_for("agents.list", T).await.is_some(),
        "resync after the gap"
    );
    assert_eq!(agent_ids(&app, 2).await, vec!["main", "ops"]);
    app.stop().await;
}

#[actix_rt::test]
async fn a_late_lower_seq_does_not_fake_a_gap() {
    let (gw, app) = connected().await;
    assert!(gw.next_request_for("agents.list", T).await.is_some());
    // Let the resync rate limit pass, so a false gap would show as a request.
    actix_rt::time::sleep(Duration::from_millis(2100)).await;
    gw.drain_requests();
    for seq in [1, 2, 3, 2, 4, 5] {
        gw.send_event_with_seq("tick", json!({"ts": seq}), Some(seq));
    }
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let resyncs = gw
        .drain_requests()
        .into_iter()
        .filter(|r| r.method == "agents.list")
        .count();
    assert_eq!(resyncs, 0, "no gap in 1,2,3,2,4,5");
    app.stop().await;
}

#[actix_rt::test]
async fn health_naming_other_agents_triggers_an_agents_list_resync() {
    let (gw, app) = connected().await;
    assert!(gw.next_request_for("agents.list", T).await.is_some());
    // Past the resync rate limit, so a resync shows at once as a request.
    actix_rt::time::sleep(Duration::from_millis(2100)).await;
    gw.drain_requests();
    // The agents agents.list gave: no resync.
    gw.send_event(
        "health",
        json!({"ok": true, "agents": [{"agentId": "main"}]}),
    );
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let early = gw
        .drain_requests()
        .into_iter()
        .filter(|r| r.method == "agents.list")
        .count();
    assert_eq!(early, 0, "health matching agents.list needs no resync");
    // An agent was added on the gateway: no event says so but health.
    gw.set_agents(vec![
        json!({"id": "main"}),
        json!({"id": "ops", "name": "Ops"}),
    ]);
    gw.send_event(
        "health",
        json!({"ok": true, "agents": [{"agentId": "ops"}, {"agentId": "main"}]}),
    );
    assert!(
        gw.next_request_for("agents.list", T).await.is_some(),
        "health drift resyncs"
    );
    assert_eq!(agent_ids(&app, 2).await, vec!["main", "ops"]);
    app.stop().await;
}
