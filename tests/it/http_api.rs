//! The HTTP API as Control Center sees it (`../shared/CONTRACT.md`, "HTTP API"):
//! every route, the RPC status mapping, auth on and off, body limits and bad
//! JSON, metrics after traffic, the agent registry live and stale. A real HTTP
//! client (awc) against the running daemon; the fake gateway for faults.
//! (`rpc.rs` covers INVALID_REQUEST / FORBIDDEN / UNAVAILABLE / other gateway
//! errors, BRIDGE_TIMEOUT, BRIDGE_DISCONNECTED and the first bad bodies; it is
//! not repeated here.)

use std::time::Duration;

use awc::http::header::HeaderMap;
use bytes::Bytes;
use openclaw_bridge::config::Secret;
use serde_json::{json, Value};

use crate::support::app::{
    connected, connected_env, connected_with, spawn_app, test_settings, TestApp,
};
use crate::support::fake_gateway::{ConnectMode, FakeGateway, FakeOptions, Reply};

const T: Duration = Duration::from_secs(10);

/// Connected, with gateway id `id`: the metrics recorder is shared by every
/// test in the process, and a unique gateway label makes this app's series
/// its own, so counts can be exact.
async fn connected_as(id: &str) -> (FakeGateway, TestApp) {
    connected_env(&[("OPENCLAW_BRIDGE__GATEWAY__ID", id)]).await
}

/// The daemon with `http.token` set.
async fn connected_with_http_token(token: &str) -> (FakeGateway, TestApp) {
    connected_with(FakeOptions::default(), |gw| {
        let mut settings = test_settings(&gw.url(), None, "");
        settings.http.token = Some(Secret::new(token));
        settings
    })
    .await
}

/// What a user sees: status, headers, body bytes.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(req: awc::ClientRequest, body: Option<&str>) -> Answer {
    let sent = match body {
        Some(b) => req.send_body(b.to_owned()).await,
        None => req.send().await,
    };
    let mut res = sent.expect("the request reaches the bridge");
    let body = res.body().limit(64 << 20).await.expect("body");
    Answer {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body,
    }
}

async fn get(app: &TestApp, path: &str, auth: Option<&str>) -> Answer {
    let mut req = app.client.get(app.url(path));
    if let Some(a) = auth {
        req = req.insert_header(("authorization", a));
    }
    send(req, None).await
}

async fn post_rpc(app: &TestApp, body: &str, auth: Option<&str>) -> Answer {
    let mut req = app
        .client
        .post(app.url("/v1/rpc"))
        .insert_header(("content-type", "application/json"));
    if let Some(a) = auth {
        req = req.insert_header(("authorization", a));
    }
    send(req, Some(body)).await
}

/// Open an SSE stream and return its status and content type without
/// reading the (endless) body.
async fn open_events(app: &TestApp, path: &str, auth: Option<&str>) -> (u16, String, Value) {
    let mut req = app.client.get(app.url(path));
    if let Some(a) = auth {
        req = req.insert_header(("authorization", a));
    }
    let mut res = req.send().await.expect("the request reaches the bridge");
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = if status == 200 {
        Value::Null
    } else {
        let b = res.body().await.expect("error body");
        serde_json::from_slice(&b).unwrap_or(Value::Null)
    };
    (status, ct, body)
}

/// Sum of every sample of `name` whose label set contains all of `labels`
/// (`key="value"` strings); `None` when no such sample is rendered.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if let Some(v) = rest.strip_prefix(' ') {
            ("", v)
        } else {
            continue; // a longer name with this prefix
        };
        if labels.iter().all(|l| label_part.contains(l)) {
            let v: f64 = value.trim().parse().unwrap_or(f64::NAN);
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

pub async fn metrics_text(app: &TestApp, auth: Option<&str>) -> String {
    let a = get(app, "/metrics", auth).await;
    assert_eq!(a.status, 200, "{}", a.text());
    a.text()
}

// ---------------------------------------------------------------------------------------------
// Health and readiness
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn healthz_and_readyz_follow_the_link() {
    let (gw, app) = connected().await;

    let a = get(&app, "/healthz", None).await;
    assert_eq!((a.status, a.json()), (200, json!({"status": "ok"})));
    assert!(a
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));

    let a = get(&app, "/readyz", None).await;
    let v = a.json();
    assert_eq!(a.status, 200, "{v}");
    assert_eq!(v["state"], "connected");
    assert_eq!(v["gateway"]["url"], gw.url());
    assert_eq!(v["gateway"]["protocol"], 4);
    for key in ["server_version", "conn_id", "connected_since"] {
        assert!(
            !v["gateway"][key].is_null(),
            "readyz.gateway.{key} missing: {v}"
        );
    }
    assert!(v.get("last_error").is_some() && v.get("next_attempt_in_ms").is_some());

    // The gateway goes away and stays away: not ready, with the reason and
    // when the next attempt is; the process itself is still healthy.
    gw.stop_listening();
    gw.drop_tcp();
    assert!(app.wait_state("backoff", T).await);
    // Retries are quick here (backoff up to 300 ms): look until one answer
    // shows the wait between attempts.
    let mut seen = Vec::new();
    let mut in_backoff = Value::Null;
    for _ in 0..200 {
        let a = get(&app, "/readyz", None).await;
        let v = a.json();
        assert_eq!(a.status, 503, "{v}");
        assert!(v["last_error"]["code"].is_string(), "{v}");
        if v["state"] == "backoff" {
            in_backoff = v;
            break;
        }
        seen.push(v["state"].clone());
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(in_backoff["state"], "backoff", "states seen: {seen:?}");
    assert!(in_backoff["next_attempt_in_ms"].is_u64(), "{in_backoff}");
    let a = get(&app, "/healthz", None).await;
    assert_eq!(a.status, 200);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Routing: unknown routes and wrong methods are JSON errors too
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn wrong_method_and_unknown_route_are_json_errors() {
    let (_gw, app) = connected().await;
    let a = get(&app, "/v1/rpc", None).await;
    assert_eq!(a.status, 405, "{}", a.text());
    assert_eq!(a.json()["ok"], false);
    assert_eq!(a.json()["error"]["code"], "BRIDGE_METHOD_NOT_ALLOWED");
    assert_eq!(a.header("allow"), Some("POST"));
    for path in ["/healthz", "/v1/agents", "/v1/events", "/metrics"] {
        let a = send(app.client.post(app.url(path)), Some("{}")).await;
        assert_eq!(a.status, 405, "POST {path}: {}", a.text());
        assert_eq!(a.json()["error"]["code"], "BRIDGE_METHOD_NOT_ALLOWED");
        assert_eq!(a.header("allow"), Some("GET"), "POST {path}");
    }
    let a = get(&app, "/v2/agents", None).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"]["code"], "BRIDGE_NOT_FOUND");
    app.stop().await;
}

#[actix_rt::test]
async fn a_gateway_that_refuses_the_run_lookup_is_a_502_with_its_own_error() {
    // The fake gateway has no `agent.wait`: it answers INVALID_REQUEST, as a
    // gateway without the method would. The client's request was fine, so
    // the bridge answers 502 (documented), not the gateway's 400.
    let (_gw, app) = connected().await;
    for path in ["/v1/runs/run-x", "/v1/gateways/default/runs/run-x"] {
        let a = get(&app, path, None).await;
        assert_eq!(a.status, 502, "{path}: {}", a.text());
        assert_eq!(a.json()["ok"], false);
        assert_eq!(a.json()["error"]["code"], "INVALID_REQUEST", "{path}");
        assert!(
            a.text().contains("agent.wait"),
            "{path}: the gateway's message is kept: {}",
            a.text()
        );
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// RPC status mapping (the parts rpc.rs does not cover)
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn not_paired_is_503_with_retry_after_and_the_error_object_intact() {
    let (gw, app) = connected().await;
    gw.set_responder(|r| match r.method.as_str() {
        "paired" => Reply::Err(json!({"code": "NOT_PAIRED", "message": "device not paired",
            "retryable": true, "retryAfterMs": 4001, "details": {"requestId": "req-1"}})),
        "unavailable.now" => Reply::Err(json!({"code": "UNAVAILABLE", "message": "busy"})),
        "invalid" => Reply::Err(json!({"code": "INVALID_REQUEST", "message": "bad params"})),
        _ => Reply::Default,
    });
    let a = post_rpc(&app, r#"{"method": "paired"}"#, None).await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(
        a.header("retry-after"),
        Some("5"),
        "4001 ms rounds up to 5 s"
    );
    assert_eq!(
        a.json(),
        json!({"ok": false, "error": {"code": "NOT_PAIRED", "message": "device not paired",
            "retryable": true, "retryAfterMs": 4001, "details": {"requestId": "req-1"}}})
    );
    // Without retryAfterMs there is no number to pass on.
    let a = post_rpc(&app, r#"{"method": "unavailable.now"}"#, None).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.json()["error"]["code"], "UNAVAILABLE");
    assert_eq!(a.header("retry-after"), None);
    // The gateway's INVALID_REQUEST and the bridge's own bad request are both
    // 400, told apart by the code.
    let a = post_rpc(&app, r#"{"method": "invalid", "params": {}}"#, None).await;
    assert_eq!(
        (a.status, a.json()["error"]["code"].clone()),
        (400, json!("INVALID_REQUEST"))
    );
    app.stop().await;
}

#[actix_rt::test]
async fn not_connected_is_503_with_retry_after_and_the_link_state() {
    // Backoff: the gateway is gone, the next attempt is scheduled.
    let (gw, app) = connected().await;
    gw.stop_listening();
    gw.drop_tcp();
    assert!(app.wait_state("backoff", T).await);
    let a = post_rpc(&app, r#"{"method": "health"}"#, None).await;
    let v = a.json();
    assert_eq!(a.status, 503, "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["error"]["code"], "BRIDGE_NOT_CONNECTED");
    assert!(
        ["backoff", "connecting"].contains(&v["error"]["details"]["state"].as_str().unwrap_or("")),
        "{v}"
    );
    let secs: u64 = a
        .header("retry-after")
        .expect("Retry-After while not connected")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!((1..=60).contains(&secs), "{secs}");
    app.stop().await;

    // Connecting: the handshake is under way, no attempt is scheduled yet;
    // the caller is still told when to come back.
    let gw = FakeGateway::start(FakeOptions {
        answer_connect: ConnectMode::Never,
        ..Default::default()
    });
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(gw.wait_for(T, |g| g.connects_total() >= 1).await);
    assert_eq!(app.status().await.state.as_str(), "connecting");
    let a = post_rpc(&app, r#"{"method": "health"}"#, None).await;
    let v = a.json();
    assert_eq!(a.status, 503, "{v}");
    assert_eq!(v["error"]["code"], "BRIDGE_NOT_CONNECTED");
    assert_eq!(v["error"]["details"]["state"], "connecting");
    assert!(
        a.header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s >= 1),
        "Retry-After while connecting: {:?}",
        a.header("retry-after")
    );
    app.stop().await;
}

#[actix_rt::test]
async fn more_malformed_bodies_are_400_bridge_bad_request() {
    let (gw, app) = connected().await;
    for body in [
        "",
        r#"{"method":"#,
        r#"{"method": "health"} trailing"#,
        r#"[{"method": "health"}]"#,
        r#"{"method": "health", "params": "x"}"#,
        r#"{"method": "health", "params": 3}"#,
        r#"{"method": "health", "expectFinal": "yes"}"#,
        r#"{"method": "health", "timeoutMs": -5}"#,
        r#"{"method": "health", "timeoutMs": 600001}"#,
        r#"{"method": "health", "timeoutMs": 1.5}"#,
        r#"{"method": "   "}"#,
        r#"{"method": null}"#,
    ] {
        let a = post_rpc(&app, body, None).await;
        assert_eq!(a.status, 400, "{body:?}: {}", a.text());
        let v = a.json();
        assert_eq!(v["ok"], false, "{body:?}");
        assert_eq!(v["error"]["code"], "BRIDGE_BAD_REQUEST", "{body:?}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body:?}: {v}"
        );
    }
    // Invalid UTF-8 is refused the same way.
    let res = app
        .client
        .post(app.url("/v1/rpc"))
        .insert_header(("content-type", "application/json"))
        .send_body(Bytes::from_static(b"{\"method\": \"\xff\xfe\"}"))
        .await;
    let mut res = res.expect("reaches the bridge");
    assert_eq!(res.status().as_u16(), 400);
    let v: Value = res.json().await.expect("JSON error");
    assert_eq!(v["error"]["code"], "BRIDGE_BAD_REQUEST");
    // None of these reached the gateway.
    assert!(gw
        .drain_requests()
        .iter()
        .all(|r| r.method == "agents.list" || r.method == "sessions.list"));
    // params: null is the same as no params; the good form still works.
    let a = post_rpc(
        &app,
        r#"{"method": "health", "params": null, "expectFinal": false, "timeoutMs": 600000}"#,
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"ok": true, "payload": {"ok": true}}));
    app.stop().await;
}

#[actix_rt::test]
async fn body_limit_is_one_mebibyte_with_or_without_content_length() {
    let (_gw, app) = connected().await;
    // Exactly 1 MiB is allowed and forwarded whole.
    let prefix = r#"{"method":"echo","params":{"x":""#;
    let suffix = r#""}}"#;
    let fill = 1024 * 1024 - prefix.len() - suffix.len();
    let exact = format!("{prefix}{}{suffix}", "a".repeat(fill));
    assert_eq!(exact.len(), 1024 * 1024);
    let a = post_rpc(&app, &exact, None).await;
    assert_eq!(a.status, 200, "{}", &a.text()[..a.text().len().min(300)]);
    assert_eq!(a.json()["payload"]["x"].as_str().map(str::len), Some(fill));

    // One byte more, sent chunked (no Content-Length): 413 all the same.
    let over = format!("{prefix}{}{suffix}", "a".repeat(fill + 1));
    let chunks: Vec<Result<Bytes, std::io::Error>> = over
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let res = app
        .client
        .post(app.url("/v1/rpc"))
        .insert_header(("content-type", "application/json"))
        .send_stream(futures_util::stream::iter(chunks))
        .await;
    let mut res = res.expect("a 413 answer, not a broken connection");
    assert_eq!(res.status().as_u16(), 413);
    let v: Value = res.json().await.expect("JSON error");
    assert_eq!(v["error"]["code"], "BRIDGE_PAYLOAD_TOO_LARGE");
    // The bridge is fine afterwards.
    let a = post_rpc(&app, r#"{"method": "health"}"#, None).await;
    assert_eq!(a.status, 200);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn with_a_token_v1_and_metrics_need_the_bearer_token() {
    let token = "s3cret-http-token";
    let good = format!("Bearer {token}");
    let (_gw, app) = connected_with_http_token(token).await;

    // Open routes.
    assert_eq!(get(&app, "/healthz", None).await.status, 200);
    assert_eq!(get(&app, "/readyz", None).await.status, 200);

    // Every protected route: missing, wrong, almost right, other scheme.
    let wrong: [Option<String>; 6] = [
        None,
        Some("Bearer nope".into()),
        Some(format!("Bearer {token}x")),
        Some(format!("Bearer {}", &token[..token.len() - 1])),
        Some(format!("Basic {token}")),
        Some(token.to_owned()),
    ];
    let mut bodies = Vec::new();
    for auth in &wrong {
        for path in ["/v1/agents", "/v1/agents/main", "/metrics", "/v1/events"] {
            let a = get(&app, path, auth.as_deref()).await;
            assert_eq!(a.status, 401, "GET {path} with {auth:?}");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
            let v = a.json();
            assert_eq!(v["ok"], false);
            assert_eq!(v["error"]["code"], "BRIDGE_UNAUTHORIZED");
            assert!(!a.text().contains(token), "the token is never echoed");
            bodies.push(v);
        }
        let a = post_rpc(&app, r#"{"method": "health"}"#, auth.as_deref()).await;
        assert_eq!(a.status, 401, "POST /v1/rpc with {auth:?}");
        assert_eq!(a.json()["error"]["code"], "BRIDGE_UNAUTHORIZED");
        bodies.push(a.json());
    }
    // The answer does not say which part was wrong.
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");

    // The right token opens everything.
    let a = get(&app, "/v1/agents", Some(&good)).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()[0]["id"], "main");
    assert_eq!(get(&app, "/v1/agents/main", Some(&good)).await.status, 200);
    assert_eq!(get(&app, "/metrics", Some(&good)).await.status, 200);
    assert_eq!(
        get(&app, "/metrics", Some(&format!("bearer {token}")))
            .await
            .status,
        200,
        "the scheme is case-insensitive"
    );
    let a = post_rpc(&app, r#"{"method": "health"}"#, Some(&good)).await;
    assert_eq!(a.status, 200);
    let (status, ct, _) = open_events(&app, "/v1/events", Some(&good)).await;
    assert_eq!((status, ct.as_str()), (200, "text/event-stream"));

    // ?access_token= works on /v1/events only (EventSource cannot set headers).
    let (status, ct, _) =
        open_events(&app, &format!("/v1/events?access_token={token}"), None).await;
    assert_eq!((status, ct.as_str()), (200, "text/event-stream"));
    let (status, _, body) = open_events(
        &app,
        &format!("/v1/events?event=agent&access_token={token}&run=r1"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = open_events(&app, "/v1/events?access_token=nope", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "BRIDGE_UNAUTHORIZED");
    for path in ["/v1/agents", "/v1/agents/main", "/metrics"] {
        let a = get(&app, &format!("{path}?access_token={token}"), None).await;
        assert_eq!(a.status, 401, "{path}?access_token= must not work");
    }
    let a = send(
        app.client
            .post(app.url(&format!("/v1/rpc?access_token={token}")))
            .insert_header(("content-type", "application/json")),
        Some(r#"{"method": "health"}"#),
    )
    .await;
    assert_eq!(a.status, 401, "/v1/rpc?access_token= must not work");
    app.stop().await;
}

#[actix_rt::test]
async fn without_a_token_everything_is_open() {
    let (_gw, app) = connected().await;
    for path in [
        "/v1/agents",
        "/v1/agents/main",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        let a = get(&app, path, None).await;
        assert_eq!(a.status, 200, "GET {path}: {}", a.text());
    }
    // A stray Authorization header does not matter either.
    let a = get(&app, "/v1/agents", Some("Bearer whatever")).await;
    assert_eq!(a.status, 200);
    let (status, ct, _) = open_events(&app, "/v1/events", None).await;
    assert_eq!((status, ct.as_str()), (200, "text/event-stream"));
    let a = post_rpc(&app, r#"{"method": "health"}"#, None).await;
    assert_eq!(a.status, 200);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn metrics_show_the_traffic() {
    let (gw, app) = connected_as("metrics-traffic").await;
    const GW: &str = r#"gateway="metrics-traffic""#;
    let before = metrics_text(&app, None).await;
    let health_ok = |t: &str| {
        metric(
            t,
            "openclaw_bridge_requests_total",
            &[GW, r#"method="health""#, r#"outcome="ok""#],
        )
        .unwrap_or(0.0)
    };
    let events_named = |t: &str| {
        metric(
            t,
            "openclaw_bridge_events_total",
            &[GW, r#"event="metrics.test.event""#],
        )
        .unwrap_or(0.0)
    };
    let connects = |t: &str| metric(t, "openclaw_bridge_connects_total", &[GW]).unwrap_or(0.0);
    let disconnects =
        |t: &str| metric(t, "openclaw_bridge_disconnects_total", &[GW]).unwrap_or(0.0);

    gw.set_responder(|r| match r.method.as_str() {
        "nope" => Reply::error("INVALID_REQUEST", "no"),
        _ => Reply::Default,
    });
    for _ in 0..3 {
        assert_eq!(
            post_rpc(&app, r#"{"method": "health"}"#, None).await.status,
            200
        );
    }
    assert_eq!(
        post_rpc(&app, r#"{"method": "nope"}"#, None).await.status,
        400
    );
    // Events by name.
    for i in 0..4 {
        gw.send_event("metrics.test.event", json!({"i": i}));
    }
    gw.send_event("metrics.test.event", json!({"i": 4}));
    // A drop and a reconnect.
    assert!(gw.wait_for(T, |g| g.requests_total() >= 5).await);
    let mut after = String::new();
    for _ in 0..200 {
        after = metrics_text(&app, None).await;
        if events_named(&after) - events_named(&before) >= 5.0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    gw.drop_tcp();
    assert!(gw.wait_handshakes(2, T).await);
    assert!(app.wait_connected(T).await);
    let after_reconnect = metrics_text(&app, None).await;

    assert_eq!(health_ok(&before), 0.0, "this app's own series");
    assert!(
        health_ok(&after) - health_ok(&before) == 3.0,
        "requests_total{{method=health,outcome=ok}}: {} -> {}",
        health_ok(&before),
        health_ok(&after)
    );
    assert_eq!(
        metric(
            &after,
            "openclaw_bridge_requests_total",
            &[GW, r#"method="other""#, r#"outcome="INVALID_REQUEST""#]
        ),
        Some(1.0),
        "a failed request is counted by outcome:\n{after}"
    );
    assert_eq!(events_named(&after) - events_named(&before), 5.0, "{after}");
    assert!(
        connects(&after_reconnect) > connects(&after),
        "connects counted"
    );
    assert!(
        disconnects(&after_reconnect) > disconnects(&after),
        "disconnects counted (by reason)"
    );
    assert!(
        metric(
            &after_reconnect,
            "openclaw_bridge_disconnects_total",
            &["reason=\""]
        )
        .is_some(),
        "disconnects carry a reason label"
    );
    // One-hot by state; process-global, so other tests' apps share it: only
    // its presence is checked here.
    for state in ["connecting", "connected", "backoff", "parked"] {
        assert!(
            metric(
                &after_reconnect,
                "openclaw_bridge_connection_state",
                &[&format!("state=\"{state}\"")]
            )
            .is_some(),
            "connection_state{{state={state}}} missing:\n{after_reconnect}"
        );
    }
    for name in [
        "openclaw_bridge_request_duration_seconds_bucket",
        "openclaw_bridge_request_duration_seconds_count",
        "openclaw_bridge_pending_requests",
        "openclaw_bridge_sse_subscribers",
    ] {
        assert!(
            metric(&after_reconnect, name, &[]).is_some(),
            "{name} missing from /metrics:\n{after_reconnect}"
        );
    }
    assert!(after_reconnect.contains("# TYPE openclaw_bridge_request_duration_seconds histogram"));
    let a = get(&app, "/metrics", None).await;
    assert!(a
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn agents_live_then_running_then_idle_then_stale() {
    let gw = FakeGateway::start(FakeOptions {
        agents: vec![
            json!({"id": "main", "name": "Main"}),
            json!({"id": "ops", "identity": {"name": "Ops"}}),
        ],
        ..Default::default()
    });
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(app.wait_connected(T).await);
    // The list arrives right after hello-ok.
    let mut list = Value::Null;
    for _ in 0..250 {
        list = get(&app, "/v1/agents", None).await.json();
        if list.as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let agents = list.as_array().expect("an array of agents");
    assert_eq!(agents.len(), 2, "{list}");
    let main = &agents[0];
    assert_eq!(main["id"], "main");
    assert_eq!(main["name"], "Main");
    assert_eq!(main["status"], "idle");
    assert_eq!(main["current_run_id"], Value::Null);
    assert_eq!(main["stale"], false);
    assert_eq!(main["is_default"], true);
    assert_eq!(agents[1]["name"], "Ops");
    assert_eq!(agents[1]["is_default"], false);

    let a = get(&app, "/v1/agents/nope", None).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.json()["error"]["code"], "BRIDGE_NOT_FOUND");

    // A run starts: running, with its id.
    gw.send_event(
        "agent",
        json!({"runId": "run-a", "agentId": "main", "stream": "lifecycle", "ts": 1000,
               "sessionKey": "agent:main:main", "data": {"phase": "start"}}),
    );
    let mut d = Value::Null;
    for _ in 0..250 {
        d = get(&app, "/v1/agents/main", None).await.json();
        if d["status"] == "running" {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d["status"], "running", "{d}");
    assert_eq!(d["current_run_id"], "run-a");
    assert_eq!(d["runs"][0]["run_id"], "run-a");
    assert_eq!(d["runs"][0]["status"], "running");
    let listed = get(&app, "/v1/agents", None).await.json();
    assert_eq!(listed[0]["status"], "running");
    assert_eq!(listed[1]["status"], "idle", "only main runs");

    // It ends: idle, the run recorded as ok.
    gw.send_event(
        "agent",
        json!({"runId": "run-a", "agentId": "main", "stream": "lifecycle", "ts": 2000,
               "data": {"phase": "end"}}),
    );
    for _ in 0..250 {
        d = get(&app, "/v1/agents/main", None).await.json();
        if d["status"] == "idle" {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d["status"], "idle", "{d}");
    assert_eq!(d["current_run_id"], Value::Null);
    assert_eq!(d["runs"][0]["status"], "ok");
    assert_eq!(d["runs"][0]["ended_at"], 2000);

    // The gateway goes away: the list is still served, marked stale.
    gw.stop_listening();
    gw.drop_tcp();
    assert!(app.wait_state("backoff", T).await);
    let a = get(&app, "/v1/agents", None).await;
    assert_eq!(a.status, 200);
    let v = a.json();
    let agents = v.as_array().expect("still an array");
    assert_eq!(agents.len(), 2, "{v}");
    assert!(agents.iter().all(|a| a["stale"] == true), "{v}");
    let a = get(&app, "/v1/agents/main", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["stale"], true);
    assert_eq!(a.json()["runs"][0]["run_id"], "run-a");

    // And it comes back: fresh again.
    gw.resume_listening().expect("listen again");
    assert!(app.wait_connected(Duration::from_secs(20)).await);
    let mut fresh = false;
    for _ in 0..250 {
        let v = get(&app, "/v1/agents", None).await.json();
        if v.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x["stale"] == false))
        {
            fresh = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fresh, "agents not fresh after the reconnect");
    app.stop().await;
}

#[actix_rt::test]
async fn metrics_count_seq_gaps() {
    let (gw, app) = connected_as("metrics-gaps").await;
    let gaps = |t: &str| {
        metric(
            t,
            "openclaw_bridge_seq_gaps_total",
            &[r#"gateway="metrics-gaps""#],
        )
        .unwrap_or(0.0)
    };
    let before = gaps(&metrics_text(&app, None).await);
    gw.send_event("tick", json!({"ts": 1}));
    gw.send_event_with_seq("tick", json!({"ts": 2}), Some(1000));
    // The gap makes the bridge refetch agents.list: then it has been seen.
    assert!(gw.next_request_for("agents.list", T).await.is_some());
    assert!(gw.next_request_for("agents.list", T).await.is_some());
    let after = metrics_text(&app, None).await;
    assert!(
        gaps(&after) - before == 1.0,
        "openclaw_bridge_seq_gaps_total did not increase after a seq gap:\n{after}"
    );
    app.stop().await;
}
