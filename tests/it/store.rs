//! The store survives `kill -9`: after a restart the agents and finished runs
//! are there, served (stale) while the gateway is unreachable.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use openclaw_bridge::store::Store;
use serde_json::{json, Value};

use crate::support::fake_gateway::{FakeGateway, FakeOptions};

fn daemon(url: &str, state: &std::path::Path) -> (Child, std::sync::mpsc::Receiver<Value>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
        .arg("run")
        .env("OPENCLAW_GATEWAY_URL", url)
        .env("OPENCLAW_GATEWAY_TOKEN", "t")
        .env("OPENCLAW_BRIDGE__STATE__DIR", state)
        .env("OPENCLAW_BRIDGE__HTTP__LISTEN", "127.0.0.1:0")
        .env("OPENCLAW_BRIDGE__LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx)
}

fn wait_log(rx: &std::sync::mpsc::Receiver<Value>, event: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Ok(v) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if v["event"] == event {
            return v;
        }
    }
    panic!("no {event} log line");
}

fn agent_event(run: &str, stream: &str, data: Value) -> Value {
    json!({"runId": run, "stream": stream, "agentId": "main", "sessionKey": "agent:main:main", "ts": 1_700_000_000_000u64, "data": data})
}

#[actix_rt::test]
async fn kill_9_mid_burst_keeps_agents_and_finished_runs() {
    let gw = FakeGateway::start(FakeOptions::with_token("t"));
    let state = tempfile::tempdir().unwrap();
    let (mut child, logs) = daemon(&gw.url(), state.path());
    wait_log(&logs, "gateway.connected");
    for i in 0..5 {
        let run = format!("done-{i}");
        gw.send_event(
            "agent",
            agent_event(&run, "lifecycle", json!({"phase": "start"})),
        );
        gw.send_event(
            "agent",
            agent_event(&run, "assistant", json!({"text": "hi", "delta": "hi"})),
        );
        gw.send_event(
            "agent",
            agent_event(&run, "lifecycle", json!({"phase": "end", "aborted": false})),
        );
    }
    // Wait until the writer has put them on disk (read through a second
    // connection, as WAL allows).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done = Store::open(state.path())
            .and_then(|s| s.load_runs("main", 50))
            .map(|runs| runs.iter().filter(|r| r.status == "ok").count())
            .unwrap_or(0);
        if done == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "finished runs never reached the store"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    // A burst on a running run, killed in the middle of it.
    gw.send_event(
        "agent",
        agent_event("burst", "lifecycle", json!({"phase": "start"})),
    );
    for i in 0..20_000 {
        gw.send_event(
            "agent",
            agent_event(
                "burst",
                "assistant",
                json!({"text": format!("token {i}"), "delta": "x"}),
            ),
        );
        if i == 10_000 {
            let ok = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
    }
    let _ = child.wait();

    // Restart with the gateway gone: the store is all there is.
    drop(gw);
    let (mut child, logs) = daemon("ws://127.0.0.1:9/", state.path());
    let started = wait_log(&logs, "bridge.started");
    let listen = started["listen"].as_str().unwrap().to_owned();
    let client = awc::Client::default();
    let mut res = client
        .get(format!("http://{listen}/v1/agents/main"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let agent: Value = res.json().limit(1 << 20).await.unwrap();
    assert_eq!(agent["stale"], true, "{agent}");
    let runs = agent["runs"].as_array().unwrap();
    for i in 0..5 {
        let run = runs
            .iter()
            .find(|r| r["run_id"] == format!("done-{i}").as_str());
        assert_eq!(
            run.map(|r| r["status"].clone()),
            Some(json!("ok")),
            "done-{i}: {agent}"
        );
    }
    let mut res = client
        .get(format!("http://{listen}/v1/agents"))
        .send()
        .await
        .unwrap();
    let all: Value = res.json().await.unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "main" && a["stale"] == true),
        "{all}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // And the file itself is sound.
    Store::open(state.path()).unwrap().quick_check().unwrap();
}
