//! Secrets and transport (issue 14, item 6): passwords in URLs never shown,
//! `http.token` rotation by SIGHUP, the insecure-transport warning, and
//! `/readyz` naming the session it holds.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::{spawn_app, test_settings};
use crate::support::fake_gateway::{FakeGateway, FakeOptions};

/// `openclaw-bridge run --config FILE` with its JSON log lines collected.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(config: &std::path::Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("OPENCLAW_GATEWAY_TOKEN")
            .env_remove("OPENCLAW_GATEWAY_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start openclaw-bridge");
        let collect = |out: Box<dyn std::io::Read + std::marker::Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let lines = collect(Box::new(child.stdout.take().expect("stdout")));
        let stderr = collect(Box::new(child.stderr.take().expect("stderr")));
        Daemon {
            child,
            lines,
            stderr,
        }
    }

    fn events(&self, event: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == event)
            .collect()
    }

    async fn wait(&self, event: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self.events(event);
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {n}x {event}; log:\n{}",
                self.all_output()
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    fn all_output(&self) -> String {
        let mut all = self.lines.lock().unwrap().join("\n");
        all.push('\n');
        all.push_str(&self.stderr.lock().unwrap().join("\n"));
        all
    }

    async fn stop(mut self) -> String {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "the daemon did not stop");
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        self.all_output()
    }
}

fn write_secret(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

async fn get(url: &str, token: Option<&str>) -> (u16, Value) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.insert_header(("authorization", format!("Bearer {t}")));
    }
    let mut res = req.send().await.expect("GET reaches the bridge");
    let body = res.body().await.unwrap_or_default();
    (
        res.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[actix_rt::test]
async fn url_passwords_stay_hidden_the_http_token_rotates_and_clear_text_is_flagged_once() {
    let dir = tempfile::tempdir().unwrap();
    let http_token = dir.path().join("http-token");
    write_secret(&http_token, "old-http-token\n");
    let config = dir.path().join("bridge.toml");
    // A non-loopback ws:// gateway (TEST-NET-1: never answers) with a token.
    std::fs::write(
        &config,
        format!(
            "[gateway]\nurl = \"ws://bob:pa55word@192.0.2.1:9/\"\ntoken = \"gw-secret-tok\"\ndevice_identity = \"never\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n[state]\ndir = {:?}\n[log]\nformat = \"json\"\n",
            http_token.display().to_string(),
            dir.path().display().to_string()
        ),
    )
    .unwrap();
    let d = Daemon::start(&config);
    let started = d.wait("bridge.started", 1).await;
    let listen = started[0]["listen"].as_str().expect("listen").to_owned();
    let base = format!("http://{listen}");

    let (_, ready) = get(&format!("{base}/readyz"), None).await;
    assert_eq!(
        ready["gateway"]["url"], "ws://<redacted>@192.0.2.1:9/",
        "{ready}"
    );
    assert_eq!(d.events("config.insecure_transport").len(), 1);

    assert_eq!(
        get(&format!("{base}/v1/agents"), Some("old-http-token"))
            .await
            .0,
        200
    );
    write_secret(&http_token, "new-http-token\n");
    d.signal("HUP");
    d.wait("config.reloaded", 1).await;
    assert_eq!(
        get(&format!("{base}/v1/agents"), Some("old-http-token"))
            .await
            .0,
        401
    );
    assert_eq!(
        get(&format!("{base}/v1/agents"), Some("new-http-token"))
            .await
            .0,
        200
    );
    assert_eq!(
        d.events("config.insecure_transport").len(),
        1,
        "warned once, not per reload"
    );

    let out = d.stop().await;
    for secret in [
        "pa55word",
        "gw-secret-tok",
        "old-http-token",
        "new-http-token",
    ] {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }
}

#[actix_rt::test]
async fn check_config_hides_url_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        "[gateway]\nurl = \"wss://bob:pa55word@gw.example:443/\"\n[nats]\nurl = \"nats://alice:natspass@127.0.0.1:4222\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
        .args(["check-config", "--config"])
        .arg(&config)
        .env_remove("OPENCLAW_GATEWAY_URL")
        .env_remove("OPENCLAW_GATEWAY_TOKEN")
        .output()
        .expect("check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("wss://<redacted>@gw.example:443/"), "{text}");
    assert!(
        !text.contains("pa55word") && !text.contains("natspass"),
        "{text}"
    );
}

/// After a reload changes `gateway.url`, the live session (to the old URL)
/// is kept until the next attempt: `/readyz` names the one it holds.
#[actix_rt::test]
async fn readyz_names_the_session_it_holds_after_a_url_reload() {
    use openclaw_bridge::actors::supervisor::{Mode, Reconfigure};
    let gw = FakeGateway::start(FakeOptions::default());
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(app.wait_connected(Duration::from_secs(10)).await);
    let next = test_settings("ws://127.0.0.1:9/", None, "");
    let cfg = openclaw_bridge::supervisor_config(&next, &next.gateways[0], Mode::Daemon)
        .expect("supervisor config");
    app.supervisor.send(Reconfigure(cfg)).await.unwrap();
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["state"], "connected");
    assert_eq!(ready["gateway"]["url"], gw.url(), "{ready}");
}

/// The image's `HEALTHCHECK` asks liveness: it passes while the gateway is
/// unreachable (where `/readyz` says 503), so no orchestrator restarts a
/// bridge that is reconnecting by itself.
#[actix_rt::test]
async fn the_docker_healthcheck_is_liveness() {
    let dockerfile = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/docker/Dockerfile"
    ))
    .expect("Dockerfile");
    let cmd = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .find_map(|l| l.trim().strip_prefix("CMD "))
        .expect("HEALTHCHECK CMD");
    let args: Vec<String> = serde_json::from_str(cmd).expect("exec-form CMD");
    assert_eq!(args[0], "/usr/local/bin/openclaw-bridge");
    let url = args.last().expect("--url URL");
    assert!(url.ends_with("/healthz"), "{url}");

    let app = spawn_app("ws://127.0.0.1:9/", None, "").await;
    let run = move |url: String| {
        Command::new(env!("CARGO_BIN_EXE_openclaw-bridge"))
            .args(&args[1..args.len() - 1])
            .arg(url)
            .status()
            .expect("healthcheck")
    };
    let live = app.url("/healthz");
    let ready = app.url("/readyz");
    let (live, ready) = tokio::task::spawn_blocking(move || (run(live), run(ready)))
        .await
        .unwrap();
    assert!(live.success(), "liveness passes while the gateway is down");
    assert!(!ready.success(), "readiness does not");
}
