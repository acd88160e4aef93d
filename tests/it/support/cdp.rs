//! Headless Debian `chromium` driven over the DevTools protocol (CDP): a
//! minimal client over awc's WebSocket, enough to load pages, evaluate
//! script (awaiting promises) and take screenshots. Plus [`CutProxy`], a
//! loopback TCP relay whose connections can be cut, to make a browser's
//! EventSource reconnect.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_codec::Framed;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The `chromium` binary, or `None` (after saying so loudly) when it is not
/// installed. Under CI (`CI` set) a missing chromium is a failure: CI
/// installs it (.ci/run), so its absence there is a broken install.
pub fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("chromium"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is not installed: .ci/run installs Debian's chromium; the browser test cannot run");
        }
        eprintln!("\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n!!! SKIPPING the real-browser test: `chromium` is not installed.\n!!! Install it with: apt-get install chromium   (CI does; see .ci/run)\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n");
    }
    found
}

/// A running headless chromium; killed on drop.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    devtools_port: u16,
}

impl Browser {
    /// Start chromium showing `url` and wait for its DevTools endpoint.
    pub fn launch(bin: &PathBuf, url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(bin)
            .args([
                "--headless=new",
                // Root in a container: the setuid sandbox is unavailable.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1100,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("chromium stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("DevTools listening on ws://").nth(1) {
                    let port = rest
                        .split('/')
                        .next()
                        .and_then(|hp| hp.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    if let (Some(tx), Some(port)) = (tx.take(), port) {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let devtools_port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium printed its DevTools address within 60 s");
        Browser {
            child,
            _profile: profile,
            devtools_port,
        }
    }

    /// Connect to the first page target.
    pub async fn page(&self) -> Page {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            let list: Value = match client
                .get(format!("http://127.0.0.1:{}/json/list", self.devtools_port))
                .send()
                .await
            {
                Ok(mut r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let url = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(str::to_owned)
            });
            if let Some(u) = url {
                break u;
            }
            assert!(Instant::now() < deadline, "no page target: {list}");
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        };
        let (_res, ws) = awc::Client::new()
            .ws(ws_url)
            .max_frame_size(64 << 20)
            .connect()
            .await
            .expect("connect to the page's DevTools socket");
        let mut page = Page { ws, next_id: 0 };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One page's DevTools session.
pub struct Page {
    ws: Framed<BoxedSocket, Codec>,
    next_id: u64,
}

impl Page {
    /// Send one command and wait for its answer (events in between are
    /// skipped). Panics on a protocol error: a test helper.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::Text(msg.into()))
            .await
            .expect("send to chromium");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method} in 120 s"))
                .expect("chromium closed the DevTools socket")
                .expect("DevTools frame");
            let text = match frame {
                Frame::Text(b) | Frame::Binary(b) => b,
                Frame::Ping(p) => {
                    let _ = self.ws.send(Message::Pong(p)).await;
                    continue;
                }
                _ => continue,
            };
            let v: Value = serde_json::from_slice(&text).expect("DevTools JSON");
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method} failed: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Navigate and wait until the document has loaded.
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        let expr = format!(
            "document.readyState === 'complete' && location.href.startsWith({})",
            serde_json::to_string(url).unwrap_or_default()
        );
        assert!(
            self.wait_for(&expr, Duration::from_secs(30)).await,
            "{url} did not load"
        );
    }

    /// Evaluate `expr` in the page (awaiting a promise) and return its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("script threw: {ex}\n{expr}");
        }
        r["result"]["value"].clone()
    }

    /// Poll `expr` until it is `true`.
    pub async fn wait_for(&mut self, expr: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(&format!("!!({expr})")).await == Value::Bool(true) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }
}

/// A TCP relay on 127.0.0.1 to `upstream` that records the head of every
/// request it carries and can cut every open connection at once.
pub struct CutProxy {
    pub port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl CutProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let h = heads.clone();
        actix_rt::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let heads = h.clone();
                let mut cut_rx = cut_rx.clone();
                cut_rx.borrow_and_update();
                actix_rt::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let relay = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        let n = client.read(&mut buf).await?;
                        heads
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                        up.write_all(&buf[..n]).await?;
                        tokio::io::copy_bidirectional(&mut client, &mut up).await
                    };
                    tokio::select! {
                        _ = relay => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        CutProxy { port, heads, cut }
    }

    /// Close every connection open now.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// The request heads seen so far (lower-cased).
    pub fn heads(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect()
    }
}
