//! Two real gateways (openclaw 2026.9.6, offline on loopback) behind one
//! bridge that also publishes to a real `nats-server -js`: an agent run on
//! each gateway is attributed to its gateway everywhere a user looks —
//! HTTP, SSE, NATS subjects and envelopes, the KV mirror and metrics.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::http_api::{metric, metrics_text};
use crate::nats::read;
use crate::support::app::{multi_settings, spawn_with, Gw, TestApp};
use crate::support::nats_server::NatsServer;
use crate::support::real_gateway::{shared, GatewayOptions, RealGateway, READY_TIMEOUT};
use crate::support::sse_client::{open, SseClient};

const T: Duration = Duration::from_secs(60);

/// Start an agent run on gateway `gw` through the bridge; its run id.
async fn start_run(app: &TestApp, gw: &str) -> String {
    let (status, body) = app
        .post(
            &format!("/v1/gateways/{gw}/rpc"),
            json!({"method": "agent", "timeoutMs": 60000, "params": {
            "message": format!("hello from {gw}"), "agentId": "main",
            "sessionKey": "agent:main:main", "idempotencyKey": Uuid::new_v4().to_string()}}),
        )
        .await;
    assert_eq!(status, 200, "{gw}: {body}");
    body["payload"]["runId"]
        .as_str()
        .unwrap_or_else(|| panic!("{gw}: no runId in {body}"))
        .to_owned()
}

/// Read `sub` until run `run`'s lifecycle end; every run id seen on the way.
async fn until_end(sub: &mut SseClient, run: &str) -> Vec<String> {
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let e = match sub.next_within(Duration::from_secs(30)).await {
            Ok(e) => e,
            Err(end) => panic!("stream ended before the end of {run}: {end:?}; saw {seen:?}"),
        };
        if e.event.starts_with("bridge.") {
            continue;
        }
        let p = e.payload();
        let id = p["runId"].as_str().unwrap_or_default().to_owned();
        let end = p["stream"] == "lifecycle" && p["data"]["phase"] == "end";
        seen.push(id.clone());
        if id == run && end {
            return seen;
        }
    }
    panic!("no lifecycle end of {run} within {T:?}; saw {seen:?}");
}

/// Poll `path` until the agent's recorded runs include `run` (bounded).
async fn agent_with_run(app: &TestApp, path: &str, run: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, agent) = app.get(path).await;
        let has = agent["runs"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["run_id"] == run));
        if status == 200 && has {
            return agent;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never listed run {run}: {agent}"
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

fn runs_of(agent: &Value) -> Vec<String> {
    agent["runs"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|r| r["run_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[actix_rt::test]
async fn two_real_gateways_each_run_is_attributed_to_its_gateway_everywhere() {
    if !RealGateway::available() {
        return;
    }
    let server = NatsServer::start();
    let a = shared();
    let b = RealGateway::start(GatewayOptions::default());
    b.wait_ready(READY_TIMEOUT);
    let app = spawn_with(multi_settings(
        &[
            Gw {
                id: "gw-a",
                url: a.url(),
                token: Some(a.token()),
                required: true,
            },
            Gw {
                id: "gw-b",
                url: b.url(),
                token: Some(b.token()),
                required: true,
            },
        ],
        &format!("[nats]\nurl = {:?}\n", server.url()),
    ))
    .await;
    let deadline = Instant::now() + T;
    let ready = loop {
        let (status, body) = app.get("/readyz").await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready["gateways"]["gw-a"]["gateway"]["url"], a.url());
    assert_eq!(ready["gateways"]["gw-b"]["gateway"]["url"], b.url());

    // Streams open before the runs start, so nothing is missed.
    let mut sse_a = open(&app, "/v1/gateways/gw-a/events?event=agent&agent=main", &[]).await;
    let mut sse_b = open(&app, "/v1/gateways/gw-b/events?event=agent&agent=main", &[]).await;
    let (run_a, run_b) =
        futures_util::future::join(start_run(&app, "gw-a"), start_run(&app, "gw-b")).await;
    assert_ne!(run_a, run_b);

    // SSE: each gateway's stream has its own run and never the other's.
    let on_a = until_end(&mut sse_a, &run_a).await;
    let on_b = until_end(&mut sse_b, &run_b).await;
    assert!(
        !on_a.contains(&run_b),
        "gw-b's run on gw-a's stream: {on_a:?}"
    );
    assert!(
        !on_b.contains(&run_a),
        "gw-a's run on gw-b's stream: {on_b:?}"
    );

    // HTTP: each agent's runs, on its own gateway only.
    let agent_a = agent_with_run(&app, "/v1/gateways/gw-a/agents/main", &run_a).await;
    let agent_b = agent_with_run(&app, "/v1/gateways/gw-b/agents/main", &run_b).await;
    assert_eq!(agent_a["gateway_id"], "gw-a");
    assert_eq!(agent_b["gateway_id"], "gw-b");
    assert!(!runs_of(&agent_a).contains(&run_b), "{agent_a}");
    assert!(!runs_of(&agent_b).contains(&run_a), "{agent_b}");

    // NATS: each run on its gateway's subjects, envelopes naming it.
    let js = jetstream::new(
        async_nats::connect(server.url())
            .await
            .expect("test client connects"),
    );
    for (gw, run, other) in [("gw-a", &run_a, &run_b), ("gw-b", &run_b, &run_a)] {
        let subject = format!("openclaw.{gw}.agent.main");
        let got = read(&js, &subject, 1, T, |g| {
            g.iter().any(|m| {
                m.env["run_id"] == run.as_str()
                    && m.env["payload"]["stream"] == "lifecycle"
                    && m.env["payload"]["data"]["phase"] == "end"
            })
        })
        .await;
        assert!(
            got.iter().any(|m| m.env["run_id"] == run.as_str()),
            "{gw}: run {run} not on {subject}"
        );
        // In order: bridge ids and (within a gateway session) gateway seqs rise.
        let num = |v: &Value, k: &str| {
            v[k].as_u64()
                .unwrap_or_else(|| panic!("{k} missing in {v}"))
        };
        for pair in got.windows(2) {
            let (x, y) = (&pair[0].env, &pair[1].env);
            assert!(num(x, "bridge_id") < num(y, "bridge_id"), "{x} then {y}");
            if x["epoch"] == y["epoch"] {
                assert!(num(x, "seq") < num(y, "seq"), "{x} then {y}");
            }
        }
        for m in &got {
            assert_eq!(m.subject, subject);
            assert_eq!(m.env["gateway"], gw, "{:?}", m.env);
            assert_ne!(
                m.env["run_id"],
                other.as_str(),
                "{gw}: the other gateway's run"
            );
        }
    }

    // KV: one key per gateway and agent.
    let kv = js
        .get_key_value("openclaw_agents")
        .await
        .expect("the KV bucket exists");
    for gw in ["gw-a", "gw-b"] {
        let deadline = Instant::now() + Duration::from_secs(10);
        let v: Value = loop {
            if let Ok(Some(v)) = kv.get(format!("{gw}.main")).await {
                break serde_json::from_slice(&v).expect("KV value is JSON");
            }
            assert!(Instant::now() < deadline, "no KV key {gw}.main");
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(v["gateway_id"], gw, "{v}");
    }

    // Metrics: the run request and the run's events, per gateway.
    let m = metrics_text(&app, None).await;
    for gw in ["gw-a", "gw-b"] {
        let g = format!("gateway=\"{gw}\"");
        let requests = metric(
            &m,
            "openclaw_bridge_requests_total",
            &[&g, "method=\"agent\"", "outcome=\"ok\""],
        );
        assert!(requests.unwrap_or(0.0) >= 1.0, "{gw}: {m}");
        let events = metric(&m, "openclaw_bridge_events_total", &[&g, "event=\"agent\""]);
        assert!(events.unwrap_or(0.0) >= 1.0, "{gw}: {m}");
        let published = metric(&m, "openclaw_bridge_nats_published_total", &[&g]);
        assert!(published.unwrap_or(0.0) >= 1.0, "{gw}: {m}");
    }
    app.stop().await;
}
