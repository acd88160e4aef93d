//! Handshake against the fake gateway: what the bridge sends, what it reports.

use std::time::Duration;

use crate::support::app::spawn_app;
use crate::support::fake_gateway::{FakeGateway, FakeOptions};

const T: Duration = Duration::from_secs(5);

#[actix_rt::test]
async fn sends_the_backend_connect_params_and_reports_ready() {
    let gw = FakeGateway::start(FakeOptions::with_token("tok-1"));
    let app = spawn_app(&gw.url(), Some("tok-1"), "").await;
    assert!(
        app.wait_connected(T).await,
        "never connected: {:?}",
        app.status().await
    );

    let p = gw.last_connect_params().expect("connect params");
    assert_eq!(p["minProtocol"], 4);
    assert_eq!(p["maxProtocol"], 4);
    assert_eq!(p["client"]["id"], "gateway-client");
    assert_eq!(p["client"]["mode"], "backend");
    assert_eq!(p["client"]["displayName"], "openclaw-bridge");
    assert_eq!(p["client"]["platform"], "linux");
    assert_eq!(p["role"], "operator");
    assert_eq!(
        p["scopes"],
        serde_json::json!(["operator.read", "operator.write"])
    );
    assert_eq!(p["auth"]["token"], "tok-1");
    assert!(p.get("device").is_none(), "no device identity on loopback");
    // No Origin header: it would disable the gateway's loopback rules.
    let up = gw.last_upgrade_request().expect("upgrade request");
    assert!(up.header("origin").is_none());

    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "connected");
    assert_eq!(body["gateway"]["server_version"], "fake-1.0");
    assert_eq!(body["gateway"]["protocol"], 4);
    assert!(body["gateway"]["conn_id"].is_string());
    assert!(body["gateway"]["connected_since"].is_u64());
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
    app.stop().await;
}

#[actix_rt::test]
async fn wrong_token_parks_with_the_gateway_reason_and_does_not_hammer() {
    let gw = FakeGateway::start(FakeOptions::with_token("right"));
    let app = spawn_app(&gw.url(), Some("wrong"), "").await;
    assert!(
        app.wait_state("parked", T).await,
        "{:?}",
        app.status().await
    );
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["state"], "parked");
    assert_eq!(body["last_error"]["code"], "AUTH_TOKEN_MISMATCH");
    assert_eq!(
        body["last_error"]["gateway_error"]["details"]["code"],
        "AUTH_TOKEN_MISMATCH"
    );
    assert!(body["last_error"]["action"]
        .as_str()
        .unwrap()
        .contains("gateway.token"));
    // park_retry_ms is 60 s in tests: no second attempt burns the auth budget.
    let n = gw.connects_total();
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gw.connects_total(),
        n,
        "a parked link must not retry quickly"
    );
    assert!(
        !body.to_string().contains("wrong"),
        "token leaked into /readyz"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn requests_while_not_connected_fail_at_once_with_the_state() {
    // Nothing listens on this port: every attempt is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = spawn_app(&format!("ws://127.0.0.1:{port}/"), None, "").await;
    let started = std::time::Instant::now();
    let (status, body) = app.rpc(serde_json::json!({"method": "health"})).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "NotConnected must be immediate"
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ok"], false);
    assert_eq!(body["error"]["code"], "BRIDGE_NOT_CONNECTED");
    let state = body["error"]["details"]["state"].as_str().unwrap();
    assert!(["connecting", "backoff"].contains(&state), "{state}");
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(ready["last_error"]["code"], "connect_failed");
    app.stop().await;
}

#[actix_rt::test]
async fn scopes_narrower_than_configured_park_with_the_missing_ones() {
    let gw = FakeGateway::start(FakeOptions {
        granted_scopes: Some(vec![]),
        ..Default::default()
    });
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(
        app.wait_state("parked", T).await,
        "{:?}",
        app.status().await
    );
    let (_, body) = app.get("/readyz").await;
    assert_eq!(body["last_error"]["code"], "scopes_missing");
    let msg = body["last_error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("operator.read") && msg.contains("operator.write"),
        "{msg}"
    );
    app.stop().await;
}
