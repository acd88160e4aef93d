//! Reattach first (fake gateway): a caller waiting for an accepted run's final
//! answer is held across a dropped link and answered from `agent.wait`; every
//! way that can end is typed and carries the `runId`; the run is never sent twice.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::app::{connected_with, settings_env, TestApp};
use crate::support::fake_gateway::{FakeGateway, FakeOptions, FakeRuns};

const T: Duration = Duration::from_secs(10);

/// A bridge connected to a default fake gateway whose runs `runs` keeps.
async fn connected_with_runs(env: &[(&str, &str)], runs: &FakeRuns) -> (FakeGateway, TestApp) {
    connected_with(FakeOptions::default(), |gw| {
        runs.install(gw);
        settings_env(&gw.url(), None, env)
    })
    .await
}

fn agent_call(key: &str, message: &str, timeout_ms: u64) -> Value {
    json!({"method": "agent", "expectFinal": true, "timeoutMs": timeout_ms,
        "params": {"message": message, "agentId": "main", "sessionKey": "agent:main:main", "idempotencyKey": key}})
}

/// Start `agent` with `expectFinal` in the background; resolves to (status, body, elapsed).
fn start_call(
    app: &TestApp,
    body: Value,
) -> impl std::future::Future<Output = (u16, Value, Duration)> {
    // A client of its own: the shared one's pool (100 connections) would
    // queue the 101st caller behind the first.
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(60))
        .finish();
    let url = app.url("/v1/rpc");
    let started = Instant::now();
    let h = actix_rt::spawn(async move {
        let mut res = client.post(url).send_json(&body).await.expect("POST");
        let bytes = res.body().limit(1 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            started.elapsed(),
        )
    });
    async move { h.await.expect("caller task") }
}

/// Wait until the fake saw the `agent` request with this key (its `accepted` goes out
/// with the request), plus a moment for the answer to reach the bridge.
async fn accepted(gw: &FakeGateway, runs: &FakeRuns, key: &str) {
    let r = runs.clone();
    let k = key.to_owned();
    assert!(
        gw.wait_for(T, move |_| r.agent_requests().contains_key(&k))
            .await,
        "agent request {key} never arrived"
    );
    actix_rt::time::sleep(Duration::from_millis(100)).await;
}

#[actix_rt::test]
async fn a_held_caller_gets_the_runs_outcome_once_with_reattached_true() {
    let runs = FakeRuns::default();
    let (gw, app) = connected_with_runs(&[], &runs).await;
    let call = start_call(&app, agent_call("k-ok", "sleep:800", 15_000));
    accepted(&gw, &runs, "k-ok").await;
    gw.drop_all();
    let (status, body, _) = call.await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reattached"], true, "{body}");
    assert_eq!(body["payload"]["status"], "ok", "{body}");
    assert_eq!(body["payload"]["runId"], "k-ok");
    assert_eq!(body["payload"]["terminalReply"]["text"], "done k-ok");
    assert_eq!(runs.agent_requests()["k-ok"], 1, "the run was sent again");
    let (status, run) = app.get("/v1/runs/k-ok").await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        (&run["status"], &run["reattached"], &run["agent_id"]),
        (&json!("ok"), &json!(true), &json!("main")),
        "{run}"
    );
    assert!(run["ended_at"].as_u64().is_some(), "{run}");
    app.stop().await;
}

#[actix_rt::test]
async fn agent_wait_error_is_the_runs_outcome_not_a_failed_request() {
    let runs = FakeRuns::default();
    let (gw, app) = connected_with_runs(&[], &runs).await;
    let call = start_call(&app, agent_call("k-err", "fail:500", 15_000));
    accepted(&gw, &runs, "k-err").await;
    gw.drop_all();
    let (status, body, _) = call.await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["reattached"], &body["payload"]["status"]),
        (&json!(true), &json!("error")),
        "{body}"
    );
    let (_, run) = app.get("/v1/runs/k-err").await;
    assert_eq!(run["status"], "error", "{run}");
    app.stop().await;
}

#[actix_rt::test]
async fn agent_wait_timeout_at_the_callers_deadline_is_bridge_timeout_with_the_run_id() {
    let runs = FakeRuns::default();
    let (gw, app) = connected_with_runs(&[], &runs).await;
    let call = start_call(&app, agent_call("k-long", "sleep:60000", 2_000));
    accepted(&gw, &runs, "k-long").await;
    gw.drop_all();
    let (status, body, elapsed) = call.await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "BRIDGE_TIMEOUT");
    assert_eq!(body["error"]["details"]["runId"], "k-long");
    assert!(
        elapsed < Duration::from_millis(2_000 + 1_500),
        "held past its deadline: {elapsed:?}"
    );
    // The gateway was asked with the time the caller had left, not more.
    let waits: Vec<u64> = gw
        .drain_requests()
        .iter()
        .filter(|r| r.method == "agent.wait")
        .filter_map(|r| r.params["timeoutMs"].as_u64())
        .collect();
    assert!(
        !waits.is_empty() && waits.iter().all(|&ms| ms > 0 && ms < 2_000),
        "{waits:?}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn a_run_lost_in_a_gateway_restart_is_outcome_unknown_well_before_the_deadline() {
    let runs = FakeRuns::new(2, 5);
    let (gw, app) = connected_with_runs(&[], &runs).await;
    let call = start_call(&app, agent_call("k-lost", "sleep:60000", 20_000));
    accepted(&gw, &runs, "k-lost").await;
    runs.lose_all();
    gw.restart();
    let (status, body, elapsed) = call.await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "BRIDGE_RUN_OUTCOME_UNKNOWN");
    assert_eq!(
        body["error"]["details"],
        json!({"runId": "k-lost", "boot_changed": true})
    );
    assert!(elapsed < Duration::from_secs(10), "waited {elapsed:?}");
    assert_eq!(runs.agent_requests()["k-lost"], 1);
    // Neither the bridge's registry nor the gateway knows it as anything but lost.
    let (status, run) = app.get("/v1/runs/k-lost").await;
    assert_eq!((status, &run["status"]), (200, &json!("unknown")), "{run}");
    app.stop().await;
}

#[actix_rt::test]
async fn a_run_the_gateway_forgot_without_restarting_is_unknown_too() {
    let runs = FakeRuns::default();
    let (gw, app) = connected_with_runs(&[], &runs).await;
    let call = start_call(&app, agent_call("k-gone", "sleep:60000", 20_000));
    accepted(&gw, &runs, "k-gone").await;
    runs.lose_all();
    gw.drop_all();
    let (status, body, elapsed) = call.await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(
        body["error"]["details"],
        json!({"runId": "k-gone", "boot_changed": false})
    );
    assert!(elapsed < Duration::from_secs(10), "waited {elapsed:?}");
    app.stop().await;
}

#[actix_rt::test]
async fn a_reconnect_that_never_comes_is_bridge_timeout_with_the_run_id_before_the_deadline() {
    let runs = FakeRuns::default();
    let (gw, app) = connected_with_runs(&[], &runs).await;
    let call = start_call(&app, agent_call("k-cut", "sleep:500", 1_500));
    accepted(&gw, &runs, "k-cut").await;
    gw.stop_listening();
    gw.drop_all();
    let (status, body, elapsed) = call.await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["details"]["runId"], "k-cut");
    assert!(
        elapsed < Duration::from_millis(1_500 + 1_000),
        "{elapsed:?}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn past_max_reattach_the_caller_gets_the_old_answer_which_says_why() {
    let runs = FakeRuns::default();
    let (gw, app) =
        connected_with_runs(&[("OPENCLAW_BRIDGE__GATEWAY__MAX_REATTACH", "0")], &runs).await;
    let call = start_call(&app, agent_call("k-nohold", "sleep:500", 10_000));
    accepted(&gw, &runs, "k-nohold").await;
    gw.drop_all();
    let (status, body, _) = call.await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "BRIDGE_DISCONNECTED");
    assert_eq!(body["error"]["details"]["runId"], "k-nohold");
    let msg = body["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("gateway.max_reattach"), "{msg}");
    app.stop().await;
}

#[actix_rt::test]
async fn shutdown_answers_a_held_caller_with_shutting_down_and_its_run_id() {
    let runs = FakeRuns::default();
    let (gw, app) = connected_with_runs(&[], &runs).await;
    let call = start_call(&app, agent_call("k-stop", "sleep:500", 20_000));
    accepted(&gw, &runs, "k-stop").await;
    gw.stop_listening();
    gw.drop_all();
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    app.stop().await;
    let (status, body, elapsed) = call.await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "BRIDGE_SHUTTING_DOWN");
    assert_eq!(body["error"]["details"]["runId"], "k-stop");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[actix_rt::test]
async fn the_registry_settles_runs_that_ended_while_the_link_was_down() {
    // Two sessions a page, five idle sessions first: the runs' session is on page 3.
    let runs = FakeRuns::new(2, 5);
    let (gw, app) = connected_with_runs(&[], &runs).await;
    for (run, len, fails) in [
        ("r-ok", 300, false),
        ("r-err", 300, true),
        ("r-lost", 60_000, false),
        ("r-live", 60_000, false),
    ] {
        runs.add(run, Duration::from_millis(len), fails);
        gw.send_event(
            "agent",
            json!({"runId": run, "agentId": "main", "stream": "lifecycle", "data": {"phase": "start"}}),
        );
    }
    let app_ref = &app;
    let running = || async move {
        let (_, a) = app_ref.get("/v1/agents/main").await;
        a["runs"].as_array().map_or(0, |r| r.len())
    };
    let deadline = Instant::now() + T;
    while running().await < 4 && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop_listening();
    gw.drop_all();
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    runs.lose_all();
    runs.add("r-ok", Duration::ZERO, false);
    runs.add("r-err", Duration::ZERO, true);
    runs.add("r-live", Duration::from_secs(60), false);
    gw.resume_listening().expect("listen again");
    assert!(app.wait_connected(T).await);
    let status_of = |v: &Value, id: &str| {
        v["runs"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["run_id"] == id))
            .map(|r| r["status"].as_str().unwrap_or("").to_owned())
    };
    let deadline = Instant::now() + T;
    let mut agent = Value::Null;
    while Instant::now() < deadline {
        agent = app.get("/v1/agents/main").await.1;
        if status_of(&agent, "r-lost").as_deref() == Some("unknown") {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(&agent, "r-ok").as_deref(), Some("ok"), "{agent}");
    assert_eq!(
        status_of(&agent, "r-err").as_deref(),
        Some("error"),
        "{agent}"
    );
    assert_eq!(
        status_of(&agent, "r-lost").as_deref(),
        Some("unknown"),
        "{agent}"
    );
    assert_eq!(
        status_of(&agent, "r-live").as_deref(),
        Some("running"),
        "{agent}"
    );
    let (_, run) = app.get("/v1/runs/r-ok").await;
    assert_eq!(
        (&run["reattached"], &run["stop_reason"]),
        (&json!(true), &json!("stop")),
        "{run}"
    );
    assert!(run["ended_at"].as_u64().is_some(), "{run}");
    // Every page was read.
    let offsets: Vec<Value> = gw
        .drain_requests()
        .iter()
        .filter(|r| r.method == "sessions.list")
        .map(|r| r.params["offset"].clone())
        .collect();
    assert!(offsets.contains(&json!(4)), "{offsets:?}");
    app.stop().await;
}

#[actix_rt::test]
async fn runs_route_asks_the_gateway_for_runs_the_registry_does_not_hold() {
    let runs = FakeRuns::default();
    let (_gw, app) = connected_with_runs(&[], &runs).await;
    runs.add("elsewhere-done", Duration::ZERO, false);
    runs.add("elsewhere-live", Duration::from_secs(60), false);
    let (status, run) = app.get("/v1/runs/elsewhere-done").await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(
        (&run["status"], &run["source"]),
        (&json!("ok"), &json!("gateway"))
    );
    let (status, run) = app.get("/v1/runs/elsewhere-live").await;
    assert_eq!(
        (status, &run["status"], &run["agent_id"]),
        (200, &json!("running"), &json!("main")),
        "{run}"
    );
    let (status, body) = app.get("/v1/gateways/default/runs/nobody-knows").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "BRIDGE_NOT_FOUND");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("nobody-knows"));
    app.stop().await;
}

#[actix_rt::test]
async fn two_hundred_accepted_runs_across_fifty_drops_each_answered_once_never_run_twice() {
    let runs = FakeRuns::default();
    let (gw, app) = connected_with_runs(&[], &runs).await;
    let mut rng = fastrand::Rng::with_seed(13);
    let mut calls = Vec::new();
    for i in 0..200 {
        let key = format!("k{i:03}");
        let len = rng.u64(300..3_000);
        let timeout = rng.u64(6_000..10_000);
        let call = start_call(&app, agent_call(&key, &format!("sleep:{len}"), timeout));
        calls.push((key, timeout, call));
    }
    // Every run accepted first, then 50 drops at random moments over about 3 s.
    let r = runs.clone();
    assert!(
        gw.wait_for(T, move |_| r.agent_requests().len() == 200)
            .await
    );
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let dropper = {
        let gw_drops = async {
            for _ in 0..50 {
                actix_rt::time::sleep(Duration::from_millis(rng.u64(20..100))).await;
                gw.drop_all();
            }
        };
        gw_drops
    };
    let answers = futures_util::future::join(
        dropper,
        futures_util::future::join_all(calls.into_iter().map(|(key, timeout, call)| async move {
            let (status, body, elapsed) = call.await;
            (key, timeout, status, body, elapsed)
        })),
    )
    .await
    .1;
    let mut reattached = 0;
    for (key, timeout, status, body, elapsed) in &answers {
        assert!(
            *elapsed < Duration::from_millis(timeout + 1_500),
            "{key} outlived its deadline: {elapsed:?}"
        );
        match status {
            200 => {
                assert_eq!(body["payload"]["runId"], json!(key), "{body}");
                assert_eq!(body["payload"]["status"], "ok", "{body}");
                if body["reattached"] == true {
                    reattached += 1;
                }
            }
            504 => assert_eq!(body["error"]["details"]["runId"], json!(key), "{body}"),
            _ => panic!("{key}: {status} {body}"),
        }
    }
    assert_eq!(answers.len(), 200);
    let count = |s: u16| answers.iter().filter(|a| a.2 == s).count();
    eprintln!(
        "200 runs, 50 drops: {} ok ({reattached} reattached), {} timed out",
        count(200),
        count(504)
    );
    let twice: Vec<(String, usize)> = runs
        .agent_requests()
        .into_iter()
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(twice.is_empty(), "runs sent more than once: {twice:?}");
    assert!(
        reattached > 100,
        "only {reattached} callers were reattached"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn call_final_prints_the_reattached_payload_and_says_so_on_stderr() {
    let runs = FakeRuns::default();
    let gw = FakeGateway::start(FakeOptions::default());
    runs.install(&gw);
    let url = gw.url();
    let params =
        json!({"message": "sleep:1000", "agentId": "main", "idempotencyKey": "k-cli"}).to_string();
    let child = actix_rt::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
            .args(["call", "agent", &params, "--final", "--timeout", "20"])
            .env("OPENCLAW_GATEWAY_URL", url)
            .env_remove("OPENCLAW_GATEWAY_TOKEN")
            .env_remove("RUST_LOG")
            .output()
            .expect("run openclaw-bridge")
    });
    accepted(&gw, &runs, "k-cli").await;
    gw.drop_all();
    let out = child.await.expect("call");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let payload: Value = serde_json::from_slice(&out.stdout).expect("stdout is the payload");
    assert_eq!(
        (&payload["runId"], &payload["status"]),
        (&json!("k-cli"), &json!("ok")),
        "{payload}"
    );
    assert!(stderr.contains("reattached"), "{stderr}");
    assert_eq!(runs.agent_requests()["k-cli"], 1);
}

#[actix_rt::test]
async fn a_gateway_still_starting_is_asked_again_not_taken_for_the_outcome() {
    let runs = FakeRuns::default();
    let (gw, app) = connected_with_runs(&[], &runs).await;
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (r, n) = (runs.clone(), refused.clone());
    gw.set_responder(move |req| {
        if req.method == "agent.wait" && n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2
        {
            return crate::support::fake_gateway::Reply::Err(json!({"code": "UNAVAILABLE",
                "message": "gateway starting; retry shortly", "retryable": true, "retryAfterMs": 100}));
        }
        r.reply(req)
            .unwrap_or(crate::support::fake_gateway::Reply::Default)
    });
    let call = start_call(&app, agent_call("k-starting", "sleep:300", 15_000));
    accepted(&gw, &runs, "k-starting").await;
    gw.drop_all();
    let (status, body, _) = call.await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["reattached"], &body["payload"]["status"]),
        (&json!(true), &json!("ok")),
        "{body}"
    );
    assert!(refused.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    app.stop().await;
}
