//! Request/response correlation: every request resolves exactly once.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

use crate::support::app::connected;
use crate::support::fake_gateway::Reply;

const T: Duration = Duration::from_secs(5);

#[actix_rt::test]
async fn payload_and_gateway_error_objects_come_back_intact() {
    let (gw, app) = connected().await;
    let (status, body) = app
        .rpc(json!({"method": "echo", "params": {"a": [1, "é"]}}))
        .await;
    assert_eq!(
        (status, &body),
        (200, &json!({"ok": true, "payload": {"a": [1, "é"]}}))
    );

    gw.set_responder(|r| match r.method.as_str() {
        "forbidden" => Reply::Err(json!({"code": "FORBIDDEN", "message": "missing scope: operator.admin", "details": {"code": "MISSING_SCOPE", "missingScope": "operator.admin"}})),
        "busy" => Reply::Err(json!({"code": "UNAVAILABLE", "message": "busy", "retryable": true, "retryAfterMs": 1500})),
        "weird" => Reply::Err(json!({"code": "APPROVAL_NOT_FOUND", "message": "gone", "extra": 7})),
        _ => Reply::Default,
    });
    let (status, body) = app.rpc(json!({"method": "no.such.method"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no.such.method"));
    let (status, body) = app.rpc(json!({"method": "forbidden"})).await;
    assert_eq!(status, 403);
    assert_eq!(
        body["error"]["details"],
        json!({"code": "MISSING_SCOPE", "missingScope": "operator.admin"})
    );
    let mut res = app
        .client
        .post(app.url("/v1/rpc"))
        .send_json(&json!({"method": "busy"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers().get("retry-after").unwrap(), "2");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["retryAfterMs"], 1500);
    let (status, body) = app.rpc(json!({"method": "weird"})).await;
    assert_eq!(status, 502);
    assert_eq!(
        body["error"]["extra"], 7,
        "unknown fields of the error object are kept"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn two_hundred_concurrent_requests_out_of_order_never_cross() {
    let (gw, app) = connected().await;
    // Answer in reverse-ish order: later requests are answered sooner.
    gw.set_responder(|r| {
        let n = r.params["n"].as_u64().unwrap_or(0);
        Reply::Delayed(
            Duration::from_millis(200 - n),
            Box::new(Reply::Ok(json!({"n": n}))),
        )
    });
    let calls = (0..200u64).map(|n| {
        let app = &app;
        async move {
            (
                n,
                app.rpc(json!({"method": "echo", "params": {"n": n}})).await,
            )
        }
    });
    let results = join_all(calls).await;
    for (n, (status, body)) in results {
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["payload"]["n"], n, "request {n} got another's answer");
    }
    let ids: std::collections::HashSet<String> = gw
        .drain_requests()
        .into_iter()
        .filter(|r| r.method == "echo")
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 200, "ids must be unique");
    app.stop().await;
}

#[actix_rt::test]
async fn timeout_then_late_answer_is_dropped_quietly() {
    let (gw, app) = connected().await;
    gw.set_responder(|r| {
        if r.method == "slow" {
            Reply::Manual
        } else {
            Reply::Default
        }
    });
    let (status, body) = app.rpc(json!({"method": "slow", "timeoutMs": 200})).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "BRIDGE_TIMEOUT");
    let req = gw.next_request_for("slow", T).await.expect("request seen");
    gw.respond(&req.id, true, json!({"late": true}));
    // An answer for an id nobody ever sent is ignored too.
    gw.send_text(r#"{"type":"res","id":"never-sent","ok":true,"payload":{}}"#);
    let (status, _) = app.rpc(json!({"method": "health"})).await;
    assert_eq!(status, 200, "the session goes on");
    app.stop().await;
}

#[actix_rt::test]
async fn agent_answers_twice_final_or_first() {
    let (gw, app) = connected().await;
    gw.set_responder(|r| {
        if r.method == "agent" {
            Reply::Twice(
                json!({"runId": "run-1", "status": "accepted", "acceptedAt": 1}),
                json!({"runId": "run-1", "status": "ok", "summary": "completed", "result": {"payloads": [{"text": "hi"}]}}),
                Duration::from_millis(150),
            )
        } else {
            Reply::Default
        }
    });
    let (status, body) = app
        .rpc(json!({"method": "agent", "params": {"message": "hi"}, "expectFinal": true}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["payload"]["status"], "ok");
    assert_eq!(body["payload"]["result"]["payloads"][0]["text"], "hi");

    let (status, body) = app
        .rpc(json!({"method": "agent", "params": {"message": "hi"}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["payload"]["status"], "accepted");
    // The late final answer arrives and is dropped; the session stays healthy.
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = app.rpc(json!({"method": "health"})).await;
    assert_eq!(status, 200);
    assert_eq!(app.status().await.state.as_str(), "connected");
    app.stop().await;
}

#[actix_rt::test]
async fn a_drop_fails_all_hundred_pending_at_once() {
    let (gw, app) = connected().await;
    gw.set_responder(|_| Reply::Never);
    let calls =
        (0..100).map(|_| app.rpc(json!({"method": "echo", "params": {}, "timeoutMs": 30000})));
    let all = join_all(calls);
    let dropper = async {
        // 100 echoes plus the agents.list sent after hello-ok.
        assert!(gw.wait_for(T, |g| g.requests_total() >= 101).await);
        gw.drop_tcp();
        Instant::now()
    };
    let (results, dropped_at) = tokio::join!(all, dropper);
    assert!(
        dropped_at.elapsed() < Duration::from_secs(2),
        "pending requests must fail at once, not time out"
    );
    for (status, body) in results {
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "BRIDGE_DISCONNECTED");
    }
    app.stop().await;
}

#[actix_rt::test]
async fn bad_http_requests_get_clear_json_errors() {
    let (_gw, app) = connected().await;
    let post = |body: &'static str| {
        app.client
            .post(app.url("/v1/rpc"))
            .insert_header(("content-type", "application/json"))
            .send_body(body)
    };
    for (body, needle) in [
        ("not json", "body must be JSON"),
        ("{}", "missing field `method`"),
        (r#"{"method": 5}"#, "invalid type"),
        (
            r#"{"method": "health", "params": [1]}"#,
            "params must be a JSON object",
        ),
        (r#"{"method": "health", "timeoutMs": 0}"#, "timeoutMs"),
        (
            r#"{"method": "health", "bogus": 1}"#,
            "unknown field `bogus`",
        ),
        (r#"{"method": ""}"#, "method must not be empty"),
    ] {
        let mut res = post(body).await.unwrap();
        assert_eq!(res.status().as_u16(), 400, "{body}");
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "BRIDGE_BAD_REQUEST");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    let big = format!(
        r#"{{"method":"echo","params":{{"x":"{}"}}}}"#,
        "a".repeat(1024 * 1024 + 10)
    );
    let mut res = app
        .client
        .post(app.url("/v1/rpc"))
        .send_body(big)
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["ok"], false);
    let (status, v) = app.get("/v1/nope").await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "BRIDGE_NOT_FOUND");
    app.stop().await;
}

#[actix_rt::test]
async fn a_failed_run_is_its_final_answer_not_a_request_error() {
    let (gw, app) = connected().await;
    gw.set_responder(|r| {
        if r.method == "agent" {
            Reply::Manual
        } else {
            Reply::Default
        }
    });
    let call = app.rpc(json!({"method": "agent", "params": {"message": "x"}, "expectFinal": true}));
    let answer = async {
        let req = gw
            .next_request_for("agent", T)
            .await
            .expect("agent request");
        let id = req.id;
        gw.send_text(json!({"type": "res", "id": id, "ok": true, "payload": {"runId": "r9", "status": "accepted"}}).to_string());
        gw.send_text(json!({"type": "res", "id": id, "ok": false,
            "payload": {"runId": "r9", "status": "error", "summary": "LLM request failed"},
            "error": {"code": "UNAVAILABLE", "message": "LLM request failed: 400", "retryable": false}}).to_string());
    };
    let ((status, body), ()) = tokio::join!(call, answer);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"]["status"], "error");
    assert_eq!(body["payload"]["runId"], "r9");
    assert_eq!(body["payload"]["error"]["code"], "UNAVAILABLE");
    app.stop().await;
}
