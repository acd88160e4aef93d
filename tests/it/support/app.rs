//! Spawn the bridge the way the binary does (`Application::build`), pointed at
//! a gateway, with an HTTP API on a free loopback port.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::Addr;
use openclaw_bridge::actors::supervisor::{GetStatus, Status};
use openclaw_bridge::actors::Supervisor;
use openclaw_bridge::config::{Settings, Sources};
use openclaw_bridge::{Application, Stopper};
use serde_json::Value;

use super::fake_gateway::{FakeGateway, FakeOptions};

/// How long [`connected`] and its variants wait for the bridge's link to come up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub addr: SocketAddr,
    pub supervisor: Addr<Supervisor>,
    pub broker: Addr<openclaw_bridge::actors::EventBroker>,
    pub stopper: Stopper,
    pub client: awc::Client,
    /// The app's `state.dir`, removed on drop.
    pub dir: std::path::PathBuf,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Settings for tests: fast handshake/retry timings, HTTP on port 0, a fresh
/// state directory; `extra_toml` is appended to the file, `env` applied over it.
fn build_settings(
    url: &str,
    token: Option<&str>,
    extra_toml: &str,
    env: &[(&str, &str)],
) -> Settings {
    let dir = state_dir();
    let path = dir.join("bridge.toml");
    let token_line = token
        .map(|t| format!("token = {t:?}\n"))
        .unwrap_or_default();
    let toml = format!(
        "[gateway]\nurl = {url:?}\n{token_line}handshake_timeout_ms = 2000\nrequest_timeout_ms = 5000\n\
         [reconnect]\ninitial_ms = 20\nmax_ms = 300\nstable_after_ms = 1000\npark_retry_ms = 60000\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = {:?}\n{extra_toml}",
        dir.display().to_string()
    );
    std::fs::write(&path, toml).expect("write config");
    let s = Settings::load_from(&Sources {
        system_file: None,
        file: Some(path),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    });
    match s {
        Ok(s) => s,
        Err(e) => panic!("test settings invalid: {e}"),
    }
}

/// Settings for tests with `extra_toml` appended to the generated file.
pub fn test_settings(url: &str, token: Option<&str>, extra_toml: &str) -> Settings {
    build_settings(url, token, extra_toml, &[])
}

pub async fn spawn_app(url: &str, token: Option<&str>, extra_toml: &str) -> TestApp {
    spawn_with(test_settings(url, token, extra_toml)).await
}

/// A state directory that outlives the settings built on it; the `TestApp`
/// using it removes it when dropped.
pub fn state_dir() -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix("bridge-test-")
        .tempdir()
        .expect("temp dir")
        .keep()
}

pub async fn spawn_with(settings: Settings) -> TestApp {
    let dir = settings.state.dir.clone();
    let app = Application::build(settings)
        .await
        .expect("application starts");
    let addr = app.http_addr();
    let supervisor = app.supervisor.clone();
    let broker = app.broker.clone();
    let stopper = app.stopper();
    actix_rt::spawn(async move {
        let _ = app.run_until_stopped().await;
    });
    TestApp {
        addr,
        supervisor,
        broker,
        stopper,
        client: awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish(),
        dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn status(&self) -> Status {
        self.supervisor
            .send(GetStatus)
            .await
            .expect("supervisor alive")
    }

    /// Wait until the link is connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait_state("connected", timeout).await
    }

    pub async fn wait_state(&self, state: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.status().await.state.as_str() == state {
                return true;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let mut res = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("GET reaches the bridge");
        let body = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    /// The `/metrics` page as text.
    pub async fn metrics_text(&self) -> String {
        let mut res = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics reaches the bridge");
        let body = res.body().limit(16 << 20).await.expect("metrics body");
        String::from_utf8_lossy(&body).into_owned()
    }

    pub async fn rpc(&self, body: Value) -> (u16, Value) {
        self.post("/v1/rpc", body).await
    }

    /// POST `body` as JSON to `path`; the status and the JSON answer.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let mut res = self
            .client
            .post(self.url(path))
            .send_json(&body)
            .await
            .expect("POST reaches the bridge");
        let bytes = res.body().limit(64 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn stop(&self) {
        self.stopper.stop().await;
    }
}

/// A fake gateway started with `opts` and a bridge spawned with the settings `settings` makes
/// for it (the closure may also set the gateway up, e.g. install a responder, before the bridge
/// connects). Panics with the bridge's status if the link is not up within [`CONNECT_TIMEOUT`].
pub async fn connected_with(
    opts: FakeOptions,
    settings: impl FnOnce(&FakeGateway) -> Settings,
) -> (FakeGateway, TestApp) {
    let gw = FakeGateway::start(opts);
    let settings = settings(&gw);
    let app = spawn_with(settings).await;
    assert!(
        app.wait_connected(CONNECT_TIMEOUT).await,
        "{:?}",
        app.status().await
    );
    (gw, app)
}

/// A default fake gateway and a bridge with the test settings, connected to it.
pub async fn connected() -> (FakeGateway, TestApp) {
    connected_toml("").await
}

/// Like [`connected`], with `extra_toml` appended to the test settings.
pub async fn connected_toml(extra_toml: &str) -> (FakeGateway, TestApp) {
    connected_with(FakeOptions::default(), |gw| {
        test_settings(&gw.url(), None, extra_toml)
    })
    .await
}

/// Like [`connected`], with `env` (`OPENCLAW_BRIDGE__…`) applied over the test settings.
pub async fn connected_env(env: &[(&str, &str)]) -> (FakeGateway, TestApp) {
    connected_with(FakeOptions::default(), |gw| {
        settings_env(&gw.url(), None, env)
    })
    .await
}

/// Like [`spawn_app`], with extra `OPENCLAW_BRIDGE__…` settings applied over
/// the test defaults (environment layer, so any key can be overridden).
pub async fn spawn_app_env(url: &str, token: Option<&str>, env: &[(&str, &str)]) -> TestApp {
    spawn_with(settings_env(url, token, env)).await
}

/// Test settings with `env` (e.g. `("OPENCLAW_BRIDGE__RECONNECT__MAX_MS", "5")`).
pub fn settings_env(url: &str, token: Option<&str>, env: &[(&str, &str)]) -> Settings {
    build_settings(url, token, "", env)
}

/// One `[[gateways]]` entry for [`multi_settings`].
pub struct Gw<'a> {
    pub id: &'a str,
    pub url: String,
    pub token: Option<&'a str>,
    pub required: bool,
}

/// Test settings with several gateways (`[[gateways]]`), the test timings
/// of [`test_settings`] and `extra_toml` appended.
pub fn multi_settings(gateways: &[Gw<'_>], extra_toml: &str) -> Settings {
    let dir = state_dir();
    let path = dir.join("bridge.toml");
    let mut toml = String::from(
        "[gateway]\nhandshake_timeout_ms = 2000\nrequest_timeout_ms = 5000\n\
         [reconnect]\ninitial_ms = 20\nmax_ms = 300\nstable_after_ms = 1000\npark_retry_ms = 60000\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
    );
    toml.push_str(&format!("[state]\ndir = {:?}\n", dir.display().to_string()));
    for g in gateways {
        toml.push_str(&format!(
            "[[gateways]]\nid = {:?}\nurl = {:?}\nrequired = {}\n",
            g.id, g.url, g.required
        ));
        if let Some(t) = g.token {
            toml.push_str(&format!("token = {t:?}\n"));
        }
    }
    toml.push_str(extra_toml);
    std::fs::write(&path, toml).expect("write config");
    match Settings::load_from(&Sources {
        system_file: None,
        file: Some(path),
        env: Default::default(),
    }) {
        Ok(s) => s,
        Err(e) => panic!("test settings invalid: {e}"),
    }
}
