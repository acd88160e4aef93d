//! A real browser (Debian's headless `chromium`, over the DevTools
//! protocol) against a bridge on the real gateway: what Control Center's
//! page does from its own origin.
//!
//! A page on `http://127.0.0.2:P` (listed in `http.cors_origins`) opens an
//! EventSource with `?access_token=`, sees a real agent run's events,
//! resumes with `Last-Event-ID` after its socket is cut, and calls
//! `POST /v1/rpc` with a bearer token through the preflight. The same page
//! from `http://127.0.0.3:Q` (not listed) gets nothing. A screenshot of the
//! status page during a run lands in `target/browser/status-page.png`.

use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

use crate::support::app::spawn_app_env;
use crate::support::cdp::{chromium, Browser, CutProxy};
use crate::support::real_gateway::{shared, RealGateway};

const TOKEN: &str = "browser-api-token";
const T: Duration = Duration::from_secs(60);

/// The test page: helpers the test calls through `Runtime.evaluate`.
const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>cc</title></head><body>
<script>
window.got = []; window.esOpen = false; window.esErrors = 0;
window.startEvents = function (base, token) {
  const es = new EventSource(base + "/v1/events?access_token=" + encodeURIComponent(token));
  window.es = es;
  es.onopen = () => { window.esOpen = true; };
  es.onerror = () => { window.esErrors += 1; };
  es.addEventListener("agent", (e) => { window.got.push({ id: Number(e.lastEventId), data: JSON.parse(e.data) }); });
  return true;
};
window.rpc = async function (base, token, body) {
  try {
    const r = await fetch(base + "/v1/rpc", { method: "POST",
      headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    return { status: r.status, body: await r.json() };
  } catch (e) { return { blocked: String(e) }; }
};
window.runEvents = (runId) => window.got.filter((e) => e.data.payload && e.data.payload.runId === runId);
window.ended = (runId) => window.runEvents(runId).some((e) => e.data.payload.stream === "lifecycle" && e.data.payload.data && e.data.payload.data.phase === "end");
</script></body></html>"#;

/// Serve [`PAGE`] on 127.0.0.2 and 127.0.0.3 (two origins); returns ports.
fn serve_page() -> (u16, u16, actix_web::dev::ServerHandle) {
    let srv = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::Ok()
                .content_type("text/html; charset=utf-8")
                .body(PAGE)
        }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.2:0")
    .expect("bind 127.0.0.2")
    .bind("127.0.0.3:0")
    .expect("bind 127.0.0.3");
    let addrs = srv.addrs();
    let port = |ip: &str| {
        addrs
            .iter()
            .find(|a| a.ip().to_string() == ip)
            .unwrap()
            .port()
    };
    let (listed, unlisted) = (port("127.0.0.2"), port("127.0.0.3"));
    let server = srv.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    (listed, unlisted, handle)
}

fn agent_params(message: &str, session: &str) -> Value {
    json!({"message": message, "agentId": "main", "sessionKey": session,
           "idempotencyKey": uuid::Uuid::new_v4().to_string()})
}

/// `POST /v1/rpc` from the test itself, with the API token.
async fn rpc(app: &crate::support::app::TestApp, body: Value) -> (u16, Value) {
    let mut res = app
        .client
        .post(app.url("/v1/rpc"))
        .insert_header(("authorization", format!("Bearer {TOKEN}")))
        .insert_header(("content-type", "application/json"))
        .send_body(body.to_string())
        .await
        .expect("rpc");
    let v = res.json().limit(1 << 24).await.unwrap_or(Value::Null);
    (res.status().as_u16(), v)
}

#[actix_rt::test]
async fn control_centers_page_in_a_real_browser() {
    if !RealGateway::available() {
        return;
    }
    let Some(bin) = chromium() else { return };
    let gw = shared();
    let (listed_port, unlisted_port, page_server) = serve_page();
    let listed = format!("http://127.0.0.2:{listed_port}");
    let app = spawn_app_env(
        &gw.url(),
        Some(gw.token()),
        &[
            ("OPENCLAW_BRIDGE__HTTP__TOKEN", TOKEN),
            ("OPENCLAW_BRIDGE__HTTP__CORS_ORIGINS", listed.as_str()),
        ],
    )
    .await;
    assert!(app.wait_connected(T).await, "{:?}", app.status().await);
    let bridge = app.url("");
    let proxy = CutProxy::start(app.addr).await;
    let via_proxy = format!("http://127.0.0.1:{}", proxy.port);

    let browser = Browser::launch(&bin, &format!("{listed}/"));
    let mut page = browser.page().await;
    assert!(
        page.wait_for("typeof window.startEvents === 'function'", T)
            .await
    );

    // EventSource from the listed origin, through the cuttable relay.
    page.eval(&format!("startEvents({via_proxy:?}, {TOKEN:?})"))
        .await;
    assert!(
        page.wait_for("window.esOpen", T).await,
        "EventSource did not open"
    );

    // A real agent turn, asked with fetch + bearer through the preflight.
    let body = json!({"method": "agent", "expectFinal": true, "timeoutMs": 90000,
                      "params": agent_params("hello from the browser", "agent:main:browser")});
    let r = page
        .eval(&format!("rpc({bridge:?}, {TOKEN:?}, {body})"))
        .await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"]["payload"]["status"], "ok", "{r}");
    let run1 = r["body"]["payload"]["runId"].as_str().unwrap().to_owned();
    assert!(
        page.wait_for(&format!("ended({run1:?})"), T).await,
        "the run's lifecycle end reached the page: {}",
        page.eval("JSON.stringify(window.got)").await
    );
    let last_before: u64 = page
        .eval("Math.max(...window.got.map((e) => e.id))")
        .await
        .as_u64()
        .unwrap();
    let heads = proxy.heads();
    assert!(
        heads
            .iter()
            .any(|h| h.starts_with("get /v1/events?access_token=")
                && h.contains(&format!("origin: {listed}"))),
        "{heads:?}"
    );

    // Cut the bridge's socket; a second run happens while the page is cut
    // off; the page resumes with Last-Event-ID and gets it all, once.
    proxy.cut();
    let r = page
        .eval(&format!(
            "rpc({bridge:?}, {TOKEN:?}, {})",
            json!({"method": "agent", "expectFinal": true, "timeoutMs": 90000,
                   "params": agent_params("second turn", "agent:main:browser")})
        ))
        .await;
    assert_eq!(r["status"], 200, "{r}");
    let run2 = r["body"]["payload"]["runId"].as_str().unwrap().to_owned();
    assert!(
        page.wait_for(&format!("ended({run2:?})"), T).await,
        "events of the run during the cut arrived after the reconnect: {}",
        page.eval("JSON.stringify(window.got.map((e) => e.id))")
            .await
    );
    let heads = proxy.heads();
    let resumed = heads
        .iter()
        .filter(|h| h.starts_with("get /v1/events"))
        .nth(1)
        .unwrap_or_else(|| panic!("no reconnect: {heads:?}"));
    // The browser resumes from the last event of any name it saw (the page
    // records only `agent` ones).
    let resumed_from: u64 = resumed
        .lines()
        .find_map(|l| l.strip_prefix("last-event-id: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("reconnect without Last-Event-ID: {resumed}"));
    assert!(
        resumed_from >= last_before,
        "{resumed_from} < {last_before}"
    );
    let ids: Vec<u64> =
        serde_json::from_value(page.eval("window.got.map((e) => e.id)").await).unwrap();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "no duplicates, in order: {ids:?}"
    );
    assert!(page.eval("window.esErrors").await.as_u64().unwrap() >= 1);

    // The same page from an origin not in cors_origins: nothing readable.
    page.goto(&format!("http://127.0.0.3:{unlisted_port}/"))
        .await;
    assert!(
        page.wait_for("typeof window.startEvents === 'function'", T)
            .await
    );
    let r = page
        .eval(&format!(
            "rpc({bridge:?}, {TOKEN:?}, {})",
            json!({"method": "health"})
        ))
        .await;
    assert!(
        r["blocked"]
            .as_str()
            .is_some_and(|e| e.contains("Failed to fetch")),
        "{r}"
    );
    page.eval(&format!("startEvents({bridge:?}, {TOKEN:?})"))
        .await;
    assert!(page.wait_for("window.esErrors > 0", T).await);
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(page.eval("window.esOpen").await, false);

    // The status page during a run: the agent shows as running.
    page.goto(&format!("{bridge}/")).await;
    page.eval(&format!(
        "document.getElementById('token').value = {TOKEN:?}; document.getElementById('auth').requestSubmit(); true"
    ))
    .await;
    assert!(
        page.wait_for("document.querySelector('tr[data-agent=\"main\"]')", T)
            .await
    );
    let (status, accepted) = rpc(
        &app,
        json!({"method": "agent", "params": agent_params("SLOWLONG screenshot", "agent:main:browser-shot")}),
    )
    .await;
    assert_eq!(status, 200, "{accepted}");
    let run3 = accepted["payload"]["runId"].as_str().unwrap().to_owned();
    assert!(
        page.wait_for(
            "document.querySelector('tr[data-agent=\"main\"][data-status=\"running\"]')",
            T
        )
        .await,
        "status page shows main running"
    );
    let png = page.screenshot().await;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("status-page.png"), &png).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    // Stop the long run so it does not hold the shared gateway.
    let _ = rpc(
        &app,
        json!({"method": "chat.abort", "params": {"sessionKey": "agent:main:browser-shot", "runId": run3}}),
    )
    .await;

    drop(page);
    drop(browser);
    page_server.stop(false).await;
    app.stop().await;
}
