//! Graceful stop: pending requests are answered, the socket closes with 1000.

use std::time::Duration;

use serde_json::json;

use crate::support::app::spawn_app;
use crate::support::fake_gateway::{FakeGateway, FakeOptions, Reply};

#[actix_rt::test]
async fn stop_fails_pending_with_shutting_down_and_closes_1000() {
    let gw = FakeGateway::start(FakeOptions::default());
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(app.wait_connected(Duration::from_secs(5)).await);
    gw.set_responder(|_| Reply::Never);
    let pending = app.rpc(json!({"method": "echo", "params": {}, "timeoutMs": 30000}));
    let stopper = async {
        assert!(gw
            .next_request_for("echo", Duration::from_secs(5))
            .await
            .is_some());
        app.stop().await;
    };
    let ((status, body), ()) = tokio::join!(pending, stopper);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "BRIDGE_SHUTTING_DOWN");
    assert!(
        gw.wait_for(Duration::from_secs(3), |g| g
            .client_closes()
            .iter()
            .any(|c| matches!(c, Some((1000, _)))))
            .await,
        "closes: {:?}",
        gw.client_closes()
    );
}
