//! SIGHUP: the configuration is re-read (token files included) and a parked
//! link retries at once with the new values.

use std::time::Duration;

use crate::support::fake_gateway::{FakeGateway, FakeOptions};

fn kill(sig: &str, pid: u32) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid}");
}

/// `openclaw-bridge run --config FILE`, logs (JSON) on a pipe.
fn run_daemon(config: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
        .args(["run", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .env_remove("OPENCLAW_GATEWAY_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start openclaw-bridge")
}

/// SIGTERM; asserts a clean exit (0) and returns stdout and its JSON lines.
async fn stop_daemon(mut child: std::process::Child) -> (String, Vec<serde_json::Value>) {
    kill("TERM", child.id());
    let (status, stdout) = tokio::task::spawn_blocking(move || {
        let status = child.wait();
        let mut stdout = String::new();
        if let Some(mut s) = child.stdout.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut stdout);
        }
        (status, stdout)
    })
    .await
    .expect("waiter");
    assert_eq!(status.expect("exit status").code(), Some(0), "{stdout}");
    let lines = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (stdout, lines)
}

#[actix_rt::test]
async fn fixing_the_token_file_and_sighup_connects_a_parked_bridge() {
    let gw = FakeGateway::start(FakeOptions::with_token("the-right-token"));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gateway-token");
    std::fs::write(&token_file, "an-old-wrong-token\n").unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nurl = {:?}\ntoken_file = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = {:?}\n[log]\nformat = \"json\"\n",
            gw.url(),
            token_file.display().to_string(),
            dir.path().display().to_string()
        ),
    )
    .unwrap();
    let child = run_daemon(&config);
    // Refused once, then parked: park_retry_ms is 60 s, so no second attempt.
    assert!(gw.wait_connections(1, Duration::from_secs(10)).await);
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.handshakes_total(), 0);
    assert_eq!(
        gw.connections_total(),
        1,
        "a parked link must not retry quickly"
    );

    std::fs::write(&token_file, "the-right-token\n").unwrap();
    kill("HUP", child.id());
    assert!(
        gw.wait_handshakes(1, Duration::from_secs(5)).await,
        "connected after SIGHUP"
    );
    assert_eq!(
        gw.last_connect_params().unwrap()["auth"]["token"],
        "the-right-token"
    );

    let (stdout, lines) = stop_daemon(child).await;
    let events: Vec<&str> = lines.iter().filter_map(|v| v["event"].as_str()).collect();
    let pos = |e: &str| {
        events
            .iter()
            .position(|x| *x == e)
            .unwrap_or_else(|| panic!("no {e} in {events:?}"))
    };
    assert!(pos("gateway.rejected") < pos("gateway.parked"));
    assert!(pos("gateway.parked") < pos("config.reloaded"));
    assert!(pos("config.reloaded") < pos("gateway.connected"));
    let reloaded = lines
        .iter()
        .find(|v| v["event"] == "config.reloaded")
        .unwrap();
    assert!(
        reloaded["changed"]
            .as_str()
            .unwrap()
            .contains("gateway.token"),
        "{reloaded}"
    );
    assert_eq!(
        events.iter().filter(|e| **e == "gateway.parked").count(),
        1,
        "parked is logged once"
    );
    assert!(
        !stdout.contains("the-right-token") && !stdout.contains("an-old-wrong-token"),
        "a token leaked into the log"
    );
}

/// Two gateways in one daemon: every gateway log line names its gateway, a
/// wrong token parks only its own gateway, and SIGHUP fixes that one while
/// the other stays connected throughout.
#[actix_rt::test]
async fn with_two_gateways_logs_name_the_gateway_and_sighup_fixes_only_the_parked_one() {
    let good = FakeGateway::start(FakeOptions::with_token("token-of-a"));
    let locked = FakeGateway::start(FakeOptions::with_token("token-of-b"));
    let dir = tempfile::tempdir().unwrap();
    let token_b = dir.path().join("gateway-b-token");
    std::fs::write(&token_b, "a-wrong-token-for-b\n").unwrap();
    std::fs::set_permissions(
        &token_b,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[[gateways]]\nid = \"gw-a\"\nurl = {:?}\ntoken = \"token-of-a\"\n\
             [[gateways]]\nid = \"gw-b\"\nurl = {:?}\ntoken_file = {:?}\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = {:?}\n[log]\nformat = \"json\"\n",
            good.url(),
            locked.url(),
            token_b.display().to_string(),
            dir.path().display().to_string()
        ),
    )
    .unwrap();
    let child = run_daemon(&config);
    assert!(good.wait_handshakes(1, Duration::from_secs(10)).await);
    assert!(locked.wait_connections(1, Duration::from_secs(10)).await);
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(locked.handshakes_total(), 0, "gw-b is parked");

    std::fs::write(&token_b, "token-of-b\n").unwrap();
    kill("HUP", child.id());
    assert!(
        locked.wait_handshakes(1, Duration::from_secs(5)).await,
        "gw-b connected after SIGHUP"
    );
    assert_eq!(good.connections_total(), 1, "gw-a was never dropped");

    let (stdout, lines) = stop_daemon(child).await;
    let of = |event: &str, gw: &str| {
        lines
            .iter()
            .filter(|v| v["event"] == event && v["gateway"] == gw)
            .count()
    };
    // Every gateway.* line says which gateway.
    for v in lines.iter().filter(|v| {
        v["event"]
            .as_str()
            .is_some_and(|e| e.starts_with("gateway."))
    }) {
        assert!(
            v["gateway"] == "gw-a" || v["gateway"] == "gw-b",
            "a gateway line without its gateway: {v}"
        );
    }
    assert_eq!(of("gateway.connected", "gw-a"), 1, "{}", stdout);
    assert_eq!(of("gateway.connected", "gw-b"), 1, "{}", stdout);
    assert_eq!(of("gateway.parked", "gw-b"), 1);
    assert_eq!(of("gateway.parked", "gw-a"), 0);
    assert_eq!(of("gateway.rejected", "gw-a"), 0);
    let reloaded = lines
        .iter()
        .find(|v| v["event"] == "config.reloaded")
        .expect("config.reloaded");
    let changed = reloaded["changed"].as_str().unwrap_or_default();
    assert!(changed.contains("gateway.token (gw-b)"), "{reloaded}");
    assert!(!changed.contains("gw-a"), "{reloaded}");
    let started = lines
        .iter()
        .find(|v| v["event"] == "bridge.started")
        .expect("bridge.started");
    assert_eq!(started["gateways"], 2, "{started}");
    for secret in ["token-of-a", "token-of-b", "a-wrong-token-for-b"] {
        assert!(!stdout.contains(secret), "{secret} leaked into the log");
    }
}
