//! End-to-end against the real gateway (openclaw 2026.9.6, protocol 4),
//! started offline on loopback by `support::real_gateway`.

use std::process::{Command, Output};
use std::time::Duration;

use futures_util::future::join_all;
use openclaw_bridge::actors::broker::{Filter, Subscribe};
use serde_json::{json, Value};

use crate::support::app::spawn_app;
use crate::support::real_gateway::{shared, RealGateway};

const T: Duration = Duration::from_secs(30);

/// Run the bridge binary against `url` with `token`.
pub fn bridge(url: &str, token: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
        .args(args)
        .env("OPENCLAW_GATEWAY_URL", url)
        .env("OPENCLAW_GATEWAY_TOKEN", token)
        .env_remove("RUST_LOG")
        .output()
        .expect("run openclaw-bridge")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn cli_call_agents_list_prints_main() {
    if !RealGateway::available() {
        return;
    }
    let gw = shared();
    let out = bridge(&gw.url(), gw.token(), &["call", "agents.list"]);
    assert!(
        out.status.success(),
        "exit {:?}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["defaultId"], "main");
    assert!(
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "main"),
        "{v}"
    );

    let out = bridge(&gw.url(), gw.token(), &["call", "health", "{}"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn cli_wrong_token_exits_3_naming_the_mismatch() {
    if !RealGateway::available() {
        return;
    }
    let gw = shared();
    let out = bridge(&gw.url(), "definitely-wrong-token", &["call", "health"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("gateway token mismatch"), "{err}");
    assert!(err.contains("AUTH_TOKEN_MISMATCH"), "{err}");
    assert!(err.contains("what to do:"), "{err}");
    assert!(
        !err.contains("definitely-wrong-token"),
        "the token must not be printed"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn cli_unknown_method_keeps_the_gateway_error_object() {
    if !RealGateway::available() {
        return;
    }
    let gw = shared();
    let out = bridge(&gw.url(), gw.token(), &["call", "no.such.method", "{}"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let err: Value = serde_json::from_slice(&out.stderr).expect("stderr is the error object");
    // A non-admin caller is told about the admin scope (PROTOCOL.md §1).
    assert_eq!(err["code"], "FORBIDDEN", "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("operator.admin"),
        "{err}"
    );
}

#[test]
fn cli_unreachable_gateway_exits_3() {
    let port = crate::support::real_gateway::free_port();
    let out = bridge(&format!("ws://127.0.0.1:{port}/"), "t", &["call", "health"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("could not connect"),
        "{}",
        text(&out.stderr)
    );
}

#[actix_rt::test]
async fn daemon_runs_an_agent_to_completion_and_tracks_it() {
    if !RealGateway::available() {
        return;
    }
    let gw = shared();
    let app = spawn_app(&gw.url(), Some(gw.token()), "").await;
    assert!(app.wait_connected(T).await, "{:?}", app.status().await);
    let mut sub = app
        .broker
        .send(Subscribe {
            filter: Filter {
                events: vec!["agent".into()],
                ..Default::default()
            },
            since: None,
            label: "t".into(),
        })
        .await
        .unwrap()
        .expect("subscribed");
    let key = uuid::Uuid::new_v4().to_string();
    let (status, body) = app
        .rpc(json!({"method": "agent", "expectFinal": true, "timeoutMs": 60000,
            "params": {"message": "hello bridge", "agentId": "main", "sessionKey": "agent:main:main", "idempotencyKey": key}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let p = &body["payload"];
    assert_eq!(p["status"], "ok", "{body}");
    let run_id = p["runId"].as_str().expect("runId").to_owned();
    let reply = p["result"]["payloads"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reply.contains("pong"),
        "fake model's answer expected: {body}"
    );

    // The run's events reached the broker, ending with lifecycle end.
    let mut saw_end = false;
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await {
        if item.run_id() == Some(run_id.as_str())
            && item.payload().contains("\"stream\":\"lifecycle\"")
            && item.payload().contains("\"phase\":\"end\"")
        {
            saw_end = true;
            break;
        }
    }
    assert!(saw_end, "lifecycle end of {run_id} not seen");
    let (status, agent) = app.get("/v1/agents/main").await;
    assert_eq!(status, 200);
    assert_eq!(agent["status"], "idle");
    assert!(
        agent["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["status"] == "ok"),
        "{agent}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn daemon_answers_two_hundred_concurrent_requests_without_crossing() {
    if !RealGateway::available() {
        return;
    }
    let gw = shared();
    let app = spawn_app(&gw.url(), Some(gw.token()), "").await;
    assert!(app.wait_connected(T).await, "{:?}", app.status().await);
    // Four methods with answers of distinct shapes, interleaved.
    let methods = ["health", "agents.list", "status", "agent.identity.get"];
    let calls = (0..200).map(|i| {
        let app = &app;
        let method = methods[i % methods.len()];
        let params = if method == "agent.identity.get" {
            json!({"agentId": "main"})
        } else {
            json!({})
        };
        async move {
            (
                method,
                app.rpc(json!({"method": method, "params": params, "timeoutMs": 60000}))
                    .await,
            )
        }
    });
    for (method, (status, body)) in join_all(calls).await {
        assert_eq!(status, 200, "{method}: {body}");
        let p = &body["payload"];
        let right = match method {
            "health" => p.get("ok").is_some() && p.get("defaultId").is_none(),
            "agents.list" => p["defaultId"] == "main",
            "status" => p.get("runtimeVersion").is_some() || p.get("pid").is_some(),
            _ => p["agentId"] == "main",
        };
        assert!(right, "{method} got an answer of another shape: {p}");
    }
    app.stop().await;
}
