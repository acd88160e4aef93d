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

const LISTED: &str = "http://127.0.0.2:3000";

async fn cors_app(
    token: Option<&str>,
    origins: &str,
) -> (FakeGateway, crate::support::app::TestApp) {
    let gw = FakeGateway::start(FakeOptions::default());
    let mut env = vec![("OPENCLAW_BRIDGE__HTTP__CORS_ORIGINS", origins)];
    if let Some(t) = token {
        env.push(("OPENCLAW_BRIDGE__HTTP__TOKEN", t));
    }
    let app = spawn_app_env(&gw.url(), None, &env).await;
    assert!(app.wait_connected(Duration::from_secs(10)).await);
    (gw, app)
}

fn header(res: &awc::ClientResponse<impl futures_util::Stream>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[actix_rt::test]
async fn a_listed_origin_gets_preflight_and_grant_others_get_nothing() {
    let (_gw, app) = cors_app(Some("api-token"), LISTED).await;
    let preflight = |origin: &'static str, path: &'static str| {
        app.client
            .request(awc::http::Method::OPTIONS, app.url(path))
            .insert_header(("origin", origin))
            .insert_header(("access-control-request-method", "POST"))
            .insert_header((
                "access-control-request-headers",
                "authorization,content-type",
            ))
            .send()
    };
    let res = preflight(LISTED, "/v1/rpc").await.unwrap();
    assert_eq!(res.status().as_u16(), 204);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(LISTED)
    );
    let allowed = header(&res, "access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    assert!(header(&res, "access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    // An unlisted origin: refused, and no grant a browser could use.
    let mut res = preflight("http://127.0.0.3:3000", "/v1/rpc").await.unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    let v: serde_json::Value = res.json().await.unwrap();
    assert_eq!(v["error"]["code"], "BRIDGE_FORBIDDEN");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("http.cors_origins"));

    // The actual request: the grant for the listed origin only.
    let post = |origin: &'static str| {
        app.client
            .post(app.url("/v1/rpc"))
            .insert_header(("origin", origin))
            .insert_header(("content-type", "application/json"))
            .insert_header(("authorization", "Bearer api-token"))
            .send_body(json!({"method": "health"}).to_string())
    };
    let res = post(LISTED).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(LISTED)
    );
    assert!(header(&res, "vary").unwrap().contains("Origin"));
    let res = post("https://evil.example").await.unwrap();
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    // The token is still required from a listed origin.
    let mut res = app
        .client
        .get(app.url("/v1/agents"))
        .insert_header(("origin", LISTED))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(LISTED)
    );
    let _ = res.body().await;
    // EventSource: ?access_token= and the grant on the stream.
    let res = app
        .client
        .get(app.url("/v1/events?access_token=api-token"))
        .insert_header(("origin", LISTED))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(LISTED)
    );
    drop(res);
    // Health and metrics are not for other origins.
    let res = app
        .client
        .get(app.url("/readyz"))
        .insert_header(("origin", LISTED))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    app.stop().await;
}

#[actix_rt::test]
async fn without_a_token_a_listed_origin_passes_the_csrf_check_and_others_do_not() {
    let (gw, app) = cors_app(None, "https://control-center.example").await;
    let post = |origin: &'static str| {
        app.client
            .post(app.url("/v1/rpc"))
            .insert_header(("origin", origin))
            .insert_header(("content-type", "application/json"))
            .send_body(json!({"method": "health"}).to_string())
    };
    let res = post("https://control-center.example").await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some("https://control-center.example")
    );
    gw.drain_requests();
    let res = post("https://evil.example").await.unwrap();
    assert_eq!(res.status().as_u16(), 403);
    assert!(gw.drain_requests().iter().all(|r| r.method != "health"));
    // DNS rebinding stays refused even for a listed origin.
    let res = app
        .client
        .get(app.url("/v1/agents"))
        .insert_header(("origin", "https://control-center.example"))
        .insert_header(("host", "evil.example:18800"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 403);
    app.stop().await;
}

#[actix_rt::test]
async fn the_status_page_loads_without_a_token_and_the_openapi_document_needs_one() {
    let (_gw, app) = cors_app(Some("api-token"), LISTED).await;
    let mut res = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(header(&res, "content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(header(&res, "content-security-policy")
        .unwrap()
        .contains("connect-src 'self'"));
    let html = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    // Self-contained: no external script, style or image.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    assert!(html.contains("href=\"/metrics\"") && html.contains("href=\"/readyz\""));
    assert!(html.contains("type=\"password\""), "asks for the token");

    let mut res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let _ = res.body().await;
    let mut res = app
        .client
        .get(app.url("/openapi.json"))
        .insert_header(("authorization", "Bearer api-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let doc: serde_json::Value = res.json().limit(1 << 20).await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/rpc"]["post"]["responses"]["503"].is_object());
    assert!(doc["paths"]["/v1/gateways/{gw}/events"]["get"].is_object());
    app.stop().await;
}
