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

/// Start the daemon binary against `url`; HTTP on a free port.
fn daemon(url: &str, state: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
        .arg("run")
        .env("OPENCLAW_GATEWAY_URL", url)
        .env("OPENCLAW_GATEWAY_TOKEN", "shutdown-test-token")
        .env("OPENCLAW_BRIDGE__HTTP__LISTEN", "127.0.0.1:0")
        .env("OPENCLAW_BRIDGE__STATE__DIR", state)
        .env("OPENCLAW_BRIDGE__LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the daemon")
}

fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[actix_rt::test]
async fn sigterm_and_sigint_exit_0_after_closing_with_1000() {
    for sig in ["TERM", "INT"] {
        let gw = FakeGateway::start(FakeOptions::with_token("shutdown-test-token"));
        let state = tempfile::tempdir().unwrap();
        let mut child = daemon(&gw.url(), state.path());
        assert!(
            gw.wait_handshakes(1, Duration::from_secs(10)).await,
            "daemon connected"
        );
        let kill = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = wait_exit(&mut child, Duration::from_secs(10)).expect("exits within 10 s");
        assert_eq!(status.code(), Some(0), "SIG{sig}");
        assert!(
            gw.client_closes()
                .iter()
                .any(|c| matches!(c, Some((1000, _)))),
            "SIG{sig}: closes {:?}",
            gw.client_closes()
        );
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let events: Vec<String> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["event"].as_str().map(str::to_owned))
            .collect();
        let pos = |e: &str| {
            events
                .iter()
                .position(|x| x == e)
                .unwrap_or_else(|| panic!("no {e} in {events:?}"))
        };
        assert!(
            pos("bridge.started") < pos("gateway.connected"),
            "{events:?}"
        );
        assert!(
            pos("gateway.connected") < pos("bridge.stopping"),
            "{events:?}"
        );
        assert!(pos("bridge.stopping") < pos("bridge.stopped"), "{events:?}");
        assert!(!stdout.contains("shutdown-test-token"), "token in the logs");
    }
}
