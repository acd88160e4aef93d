//! Logs an operator can run on, against the real gateway: connect, restart,
//! a wrong-token park, SIGTERM. Every stdout line is JSON with the contract's
//! event names, in order, and no token appears anywhere.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::real_gateway::{GatewayOptions, RealGateway};

#[test]
fn a_day_in_the_logs_connect_restart_wrong_token_park_stop() {
    if !RealGateway::available() {
        return;
    }
    let gw = RealGateway::start(GatewayOptions::default());
    gw.wait_ready(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", gw.token())).unwrap();
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nurl = {:?}\ntoken_file = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = {:?}\n[log]\nformat = \"json\"\n[reconnect]\ninitial_ms = 100\nmax_ms = 1000\n",
            gw.url(),
            token_file.display().to_string(),
            dir.path().display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .env_remove("OPENCLAW_GATEWAY_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let out = child.stdout.take().unwrap();
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let count = |event: &str| -> usize {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == event)
            .count()
    };
    let wait = |event: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while count(event) < n {
            assert!(
                Instant::now() < deadline,
                "no {n}× {event}; log:\n{}",
                lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let kill = |sig: &str, pid: u32| {
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };

    wait("gateway.connected", 1);
    // A restart of the gateway.
    gw.signal("USR2");
    wait("gateway.disconnected", 1);
    wait("gateway.connected", 2);
    // The operator puts a wrong token in place and reloads; the live session
    // stays up until the next reconnect, which the gateway then refuses.
    std::fs::write(&token_file, "this-token-is-wrong\n").unwrap();
    kill("HUP", child.id());
    wait("config.reloaded", 1);
    gw.signal("USR2");
    wait("gateway.parked", 1);
    kill("TERM", child.id());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");

    let lines = lines.lock().unwrap().clone();
    let mut events = Vec::new();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for field in ["timestamp", "level", "message"] {
            assert!(v.get(field).is_some(), "no {field}: {l}");
        }
        if let Some(e) = v["event"].as_str() {
            events.push(e.to_owned());
        }
    }
    let expected = [
        "bridge.started",
        "gateway.connecting",
        "gateway.connected",
        "gateway.disconnected",
        "gateway.backoff",
        "gateway.connected",
        "gateway.restarted",
        "config.reloaded",
        "gateway.disconnected",
        "gateway.rejected",
        "gateway.parked",
        "bridge.stopping",
        "bridge.stopped",
    ];
    let mut at = 0;
    for e in &events {
        if at < expected.len() && *e == expected[at] {
            at += 1;
        }
    }
    assert_eq!(
        at,
        expected.len(),
        "expected {:?} in order; got {events:?}",
        &expected[at..]
    );
    // The restart itself may be refused first ("gateway starting"); the
    // wrong token must be named.
    let parsed: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        parsed.iter().any(|v| v["event"] == "gateway.rejected" && v["details_code"] == "AUTH_TOKEN_MISMATCH"),
        "no gateway.rejected naming AUTH_TOKEN_MISMATCH"
    );
    let parked: Vec<&Value> = parsed
        .iter()
        .filter(|v| v["event"] == "gateway.parked")
        .collect();
    assert_eq!(parked.len(), 1, "parked is logged once");
    assert!(
        parked[0]["action"]
            .as_str()
            .unwrap_or("")
            .contains("gateway.token"),
        "{}",
        parked[0]
    );
    let all = format!("{}\n{stderr}", lines.join("\n"));
    assert!(
        !all.contains(gw.token()),
        "the gateway token leaked into the logs"
    );
    assert!(
        !all.contains("this-token-is-wrong"),
        "the wrong token leaked into the logs"
    );
}
