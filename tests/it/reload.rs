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

#[actix_rt::test]
async fn fixing_the_token_file_and_sighup_connects_a_parked_bridge() {
    let gw = FakeGateway::start(FakeOptions::with_token("the-right-token"));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("gateway-token");
    std::fs::write(&token_file, "an-old-wrong-token\n").unwrap();
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
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .env_remove("OPENCLAW_GATEWAY_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
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

    kill("TERM", child.id());
    let out = tokio::task::spawn_blocking(move || {
        let status = child.wait();
        let mut stdout = String::new();
        if let Some(mut s) = child.stdout.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut stdout);
        }
        (status, stdout)
    })
    .await
    .unwrap();
    assert_eq!(out.0.unwrap().code(), Some(0));
    let lines: Vec<serde_json::Value> = out
        .1
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
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
        !out.1.contains("the-right-token") && !out.1.contains("an-old-wrong-token"),
        "a token leaked into the log"
    );
}
