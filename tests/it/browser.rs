//! A web page in the operator's browser must not be able to drive a
//! tokenless bridge: no cross-site RPC (CSRF), no DNS rebinding.

use std::time::Duration;

use serde_json::json;

use crate::support::app::{spawn_app, spawn_app_env};
use crate::support::fake_gateway::{FakeGateway, FakeOptions};

#[actix_rt::test]
async fn a_tokenless_api_refuses_browser_borne_requests() {
    let gw = FakeGateway::start(FakeOptions::default());
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(app.wait_connected(Duration::from_secs(5)).await);
    let post =
        |ct: Option<&'static str>, origin: Option<&'static str>, host: Option<&'static str>| {
            let mut r = app.client.post(app.url("/v1/rpc"));
            if let Some(ct) = ct {
                r = r.insert_header(("content-type", ct));
            }
            if let Some(o) = origin {
                r = r.insert_header(("origin", o));
            }
            if let Some(h) = host {
                r = r.insert_header(("host", h));
            }
            r.send_body(json!({"method": "health"}).to_string())
        };
    // A "simple" cross-site request (text/plain, no preflight): refused.
    let mut res = post(Some("text/plain"), None, None).await.unwrap();
    assert_eq!(res.status().as_u16(), 415);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "BRIDGE_UNSUPPORTED_MEDIA_TYPE");
    // A foreign Origin: refused, whatever the content type.
    let mut res = post(Some("application/json"), Some("https://evil.example"), None)
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "BRIDGE_FORBIDDEN");
    // DNS rebinding: a foreign Host name, even on a GET.
    let mut res = app
        .client
        .get(app.url("/v1/agents"))
        .insert_header(("host", "evil.example:18800"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    let _ = res.body().await;
    // None of that reached the gateway.
    assert!(gw.drain_requests().iter().all(|r| r.method != "health"));
    // Local callers are fine: no Origin, a localhost Origin, a loopback Host.
    assert_eq!(
        post(Some("application/json"), None, None)
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        post(
            Some("application/json; charset=utf-8"),
            Some("http://localhost:3000"),
            Some("localhost:18800")
        )
        .await
        .unwrap()
        .status()
        .as_u16(),
        200
    );
    app.stop().await;
}

#[actix_rt::test]
async fn with_a_token_other_origins_and_names_are_allowed_with_the_bearer() {
    let gw = FakeGateway::start(FakeOptions::default());
    let app = spawn_app_env(
        &gw.url(),
        None,
        &[("OPENCLAW_BRIDGE__HTTP__TOKEN", "api-token")],
    )
    .await;
    assert!(app.wait_connected(Duration::from_secs(5)).await);
    let res = app
        .client
        .post(app.url("/v1/rpc"))
        .insert_header(("content-type", "application/json"))
        .insert_header(("origin", "https://control-center.example"))
        .insert_header(("host", "bridge.internal:18800"))
        .insert_header(("authorization", "Bearer api-token"))
        .send_body(json!({"method": "health"}).to_string())
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    app.stop().await;
}
