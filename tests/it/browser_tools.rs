//! A live bridge on the fake gateway for the API tools in `.ci/run`
//! (schemathesis, promtool): ignored, run on purpose with
//! `cargo test --test it serve_for_api_tools -- --ignored`. It writes the
//! bridge's address to `target/api-tools/addr` and serves until
//! `target/api-tools/stop` appears (or 15 minutes pass).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::app::spawn_app_env;
use crate::support::fake_gateway::{FakeGateway, FakeOptions};

/// The API token the tools send.
pub const TOOLS_TOKEN: &str = "api-tools-token";

#[actix_rt::test]
#[ignore = "a server for .ci/run's API tools, not a test"]
async fn serve_for_api_tools() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/api-tools");
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("stop"));
    let gw = FakeGateway::start(FakeOptions::default());
    let app = spawn_app_env(
        &gw.url(),
        None,
        &[("OPENCLAW_BRIDGE__HTTP__TOKEN", TOOLS_TOKEN)],
    )
    .await;
    assert!(app.wait_connected(Duration::from_secs(30)).await);
    // Some traffic, so /metrics has the request and RPC series too.
    let (status, _) = app.rpc(serde_json::json!({"method": "health"})).await;
    assert!(status == 200 || status == 401, "{status}");
    let tmp = dir.join("addr.tmp");
    std::fs::write(&tmp, app.addr.to_string()).unwrap();
    std::fs::rename(&tmp, dir.join("addr")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    while !dir.join("stop").exists() && Instant::now() < deadline {
        actix_rt::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_file(dir.join("addr"));
    app.stop().await;
}
