//! Several gateways behind one bridge (`[[gateways]]`), against fake
//! gateways: each gateway's agents, events, RPC and metrics under
//! `/v1/gateways/{id}/…`, the single-gateway routes for `default`, and
//! `/readyz` ready only when every required gateway is. The same against two
//! real gateways (and NATS) is in `real_multi`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http_api::{metric, metrics_text};
use crate::support::app::{multi_settings, spawn_with, Gw, TestApp};
use crate::support::fake_gateway::{FakeGateway, FakeOptions, Reply};
use crate::support::real_gateway::free_port;
use crate::support::sse_client::{open, SseClient, SseEvent};

const T: Duration = Duration::from_secs(10);

fn fake(agent: &str) -> FakeGateway {
    FakeGateway::start(FakeOptions {
        agents: vec![json!({"id": agent, "name": agent})],
        ..Default::default()
    })
}

fn gw<'a>(id: &'a str, url: String, required: bool) -> Gw<'a> {
    Gw {
        id,
        url,
        token: None,
        required,
    }
}

/// Poll `path` until `ok(status, body)` or the timeout; the last answer.
async fn get_until(app: &TestApp, path: &str, ok: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = Instant::now() + T;
    loop {
        let (status, body) = app.get(path).await;
        if ok(status, &body) || Instant::now() > deadline {
            return (status, body);
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next event that is not bridge lifecycle.
async fn next_event(sub: &mut SseClient, within: Duration) -> Option<SseEvent> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sub.next_within(left).await {
            Ok(e) if e.event.starts_with("bridge.") => continue,
            Ok(e) => return Some(e),
            Err(_) => return None,
        }
    }
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[actix_rt::test]
async fn each_gateway_is_served_under_its_id_and_default_keeps_the_old_routes() {
    let a = fake("alpha");
    let b = fake("beta");
    let app = spawn_with(multi_settings(
        &[gw("default", a.url(), true), gw("eu-1", b.url(), true)],
        "",
    ))
    .await;
    let (status, ready) = get_until(&app, "/readyz", |s, _| s == 200).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["state"], "connected",
        "primary's fields stay: {ready}"
    );
    for id in ["default", "eu-1"] {
        assert_eq!(ready["gateways"][id]["state"], "connected", "{ready}");
        assert_eq!(ready["gateways"][id]["ready"], true, "{ready}");
        assert_eq!(ready["gateways"][id]["required"], true, "{ready}");
    }
    assert_eq!(ready["gateways"]["default"]["gateway"]["url"], a.url());
    assert_eq!(ready["gateways"]["eu-1"]["gateway"]["url"], b.url());

    // Agents: each gateway's own, attributed by gateway_id.
    let (_, list) = get_until(&app, "/v1/gateways/eu-1/agents", |s, v| {
        s == 200 && !ids(v).is_empty()
    })
    .await;
    assert_eq!(ids(&list), vec!["beta"], "{list}");
    assert_eq!(list[0]["gateway_id"], "eu-1");
    let (_, list) = get_until(&app, "/v1/agents", |s, v| s == 200 && !ids(v).is_empty()).await;
    assert_eq!(
        ids(&list),
        vec!["alpha"],
        "the old route is gateway default: {list}"
    );
    assert_eq!(list[0]["gateway_id"], "default");
    let (_, same) = app.get("/v1/gateways/default/agents").await;
    assert_eq!(ids(&same), vec!["alpha"]);
    assert_eq!(app.get("/v1/gateways/eu-1/agents/beta").await.0, 200);
    assert_eq!(app.get("/v1/gateways/eu-1/agents/alpha").await.0, 404);

    // Events: each stream carries its own gateway's events only.
    let mut eu = open(&app, "/v1/gateways/eu-1/events?event=agent", &[]).await;
    let mut def = open(&app, "/v1/events?event=agent", &[]).await;
    a.send_event(
        "agent",
        json!({"runId": "run-a", "agentId": "alpha", "stream": "assistant", "data": {}}),
    );
    b.send_event(
        "agent",
        json!({"runId": "run-b", "agentId": "beta", "stream": "assistant", "data": {}}),
    );
    let e = next_event(&mut eu, T).await.expect("an event on eu-1");
    assert_eq!(e.payload()["runId"], "run-b", "{e:?}");
    let e = next_event(&mut def, T).await.expect("an event on default");
    assert_eq!(e.payload()["runId"], "run-a", "{e:?}");
    a.send_event(
        "agent",
        json!({"runId": "run-a2", "agentId": "alpha", "stream": "assistant", "data": {}}),
    );
    let e = next_event(&mut def, T)
        .await
        .expect("a second event on default");
    assert_eq!(e.payload()["runId"], "run-a2");
    assert!(
        next_event(&mut eu, Duration::from_millis(300))
            .await
            .is_none(),
        "gateway default's event leaked into eu-1's stream"
    );

    // RPC: to the gateway named in the path.
    b.set_responder(|r| match r.method.as_str() {
        "whoami" => Reply::Ok(json!({"gateway": "b"})),
        _ => Reply::Default,
    });
    a.set_responder(|r| match r.method.as_str() {
        "whoami" => Reply::Ok(json!({"gateway": "a"})),
        _ => Reply::Default,
    });
    let (status, body) = app
        .post("/v1/gateways/eu-1/rpc", json!({"method": "whoami"}))
        .await;
    assert_eq!(
        (status, &body["payload"]["gateway"]),
        (200, &json!("b")),
        "{body}"
    );
    let (status, body) = app.post("/v1/rpc", json!({"method": "whoami"})).await;
    assert_eq!(
        (status, &body["payload"]["gateway"]),
        (200, &json!("a")),
        "{body}"
    );

    // Metrics: per gateway. (The recorder is process-wide and other tests
    // run gateways called `default` too: exact counts for `eu-1` only.)
    let m = metrics_text(&app, None).await;
    let count = |id: &str| {
        metric(
            &m,
            "openclaw_bridge_events_total",
            &[&format!("gateway=\"{id}\""), "event=\"agent\""],
        )
    };
    assert!(count("default").unwrap_or(0.0) >= 2.0, "{m}");
    assert_eq!(count("eu-1"), Some(1.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "openclaw_bridge_connection_state",
            &["gateway=\"eu-1\"", "state=\"connected\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "openclaw_bridge_requests_total",
            &["gateway=\"eu-1\"", "outcome=\"ok\""]
        ),
        Some(1.0),
        "the whoami request on eu-1: {m}"
    );

    // The gateway list and one gateway's status.
    let (status, list) = app.get("/v1/gateways").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&list), vec!["default", "eu-1"], "{list}");
    let (status, one) = app.get("/v1/gateways/eu-1").await;
    assert_eq!((status, &one["state"]), (200, &json!("connected")), "{one}");

    // An unknown gateway: 404 naming the configured ones.
    let (status, body) = app.get("/v1/gateways/nope/agents").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "BRIDGE_NOT_FOUND");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("default, eu-1"), "{msg}");
    let (status, _) = app
        .post("/v1/gateways/nope/rpc", json!({"method": "health"}))
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[actix_rt::test]
async fn readyz_waits_for_required_gateways_only() {
    let a = fake("alpha");
    let down = format!("ws://127.0.0.1:{}/", free_port());
    // The unreachable gateway is optional: ready.
    let app = spawn_with(multi_settings(
        &[
            gw("default", a.url(), true),
            gw("spare", down.clone(), false),
        ],
        "",
    ))
    .await;
    let (status, body) = get_until(&app, "/readyz", |s, _| s == 200).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["gateways"]["spare"]["ready"], false, "{body}");
    assert_eq!(body["gateways"]["spare"]["required"], false);
    assert_ne!(body["gateways"]["spare"]["state"], "connected");
    // Its routes answer as a disconnected gateway does.
    let (status, body) = app
        .post("/v1/gateways/spare/rpc", json!({"method": "health"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "BRIDGE_NOT_CONNECTED");
    app.stop().await;

    // The same gateway required: not ready, and the body says which.
    let app = spawn_with(multi_settings(
        &[gw("default", a.url(), true), gw("spare", down, true)],
        "",
    ))
    .await;
    let (_, first) = get_until(&app, "/v1/gateways/default", |_, v| {
        v["state"] == "connected"
    })
    .await;
    assert_eq!(first["state"], "connected");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false);
    assert_eq!(body["gateways"]["default"]["ready"], true);
    assert_eq!(body["gateways"]["spare"]["ready"], false);
    app.stop().await;
}

#[actix_rt::test]
async fn without_a_default_gateway_the_old_routes_say_which_to_use() {
    let a = fake("alpha");
    let b = fake("beta");
    let app = spawn_with(multi_settings(
        &[gw("a", a.url(), true), gw("b", b.url(), true)],
        "",
    ))
    .await;
    let (status, _) = get_until(&app, "/readyz", |s, _| s == 200).await;
    assert_eq!(status, 200);
    let (status, body) = app.get("/v1/agents").await;
    assert_eq!(status, 404, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("/v1/gateways/{id}/agents"), "{msg}");
    assert!(msg.contains("a, b"), "{msg}");
    let (status, _) = app.get("/v1/gateways/b/agents").await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[actix_rt::test]
async fn agent_ids_are_percent_decoded_under_both_routes() {
    let a = fake("team/alpha");
    let app = spawn_with(multi_settings(&[gw("default", a.url(), true)], "")).await;
    let (status, list) = get_until(&app, "/v1/agents", |s, v| s == 200 && !ids(v).is_empty()).await;
    assert_eq!((status, ids(&list)), (200, vec!["team/alpha".to_owned()]));
    for path in [
        "/v1/agents/team%2Falpha",
        "/v1/gateways/default/agents/team%2Falpha",
    ] {
        let (status, agent) = app.get(path).await;
        assert_eq!(status, 200, "{path}: {agent}");
        assert_eq!(agent["id"], "team/alpha");
    }
    app.stop().await;
}
