//! Issue 4, real gateway: the bridge comes back by itself after each way a
//! real gateway (openclaw 2026.9.6) can go down, and says why it was down.
//!
//! Each test disturbs its own private gateway instance (never `shared()`):
//! SIGUSR2 (in-process restart), SIGTERM then start again, SIGKILL then start
//! again, SIGSTOP for longer than two ticks then SIGCONT. During every outage
//! a request fails fast with `BRIDGE_NOT_CONNECTED`, `/v1/agents` still
//! answers (stale), and a request in flight when the link dies fails with
//! `BRIDGE_DISCONNECTED` instead of hanging.
//!
//! The bridge's own log lines are captured (a thread-local JSON subscriber on
//! the test's actix thread, where the supervisor and connection actors run),
//! so the tests also check what an operator would read.
//!
//! Blocking harness calls (waiting for the gateway process, probing its
//! readiness) run off the test thread: the bridge's actors share it.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openclaw_bridge::actors::supervisor::Status;
use serde_json::{json, Value};

use crate::support::app::{spawn_app, TestApp};
use crate::support::real_gateway::{GatewayOptions, RealGateway, READY_TIMEOUT};

/// Bound on every wait for the bridge.
const WAIT: Duration = Duration::from_secs(60);
/// Issue 4's "Done when": ready within this long of the gateway being ready.
const READY_AFTER_GATEWAY: Duration = Duration::from_secs(2);
/// A refusal while not connected must come back at once, not after a timeout.
const FAST: Duration = Duration::from_secs(1);

// ------------------------------------------------------------------ logs

/// The bridge's log lines (JSON, one per line) captured on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Capture `info` and above on this thread until the guard drops.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let buf = self.0.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(buf.clone()))
            .finish();
        tracing::subscriber::set_default(sub)
    }

    fn lines(&self) -> Vec<Value> {
        let buf = self.0.lock().unwrap();
        String::from_utf8_lossy(&buf)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many lines so far (to look only at what came after).
    fn mark(&self) -> usize {
        self.lines().len()
    }

    /// Lines since `mark` with `event == name`.
    fn named_since(&self, mark: usize, name: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .skip(mark)
            .filter(|l| l["event"] == name)
            .collect()
    }

    /// The first `n` lines of `dump_since(mark)`.
    fn head_since(&self, mark: usize, n: usize) -> String {
        self.dump_since(mark)
            .lines()
            .take(n)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The operator-facing lines since `mark`, compact, for reports.
    fn dump_since(&self, mark: usize) -> String {
        let mut out = String::new();
        for l in self.lines().into_iter().skip(mark) {
            let Some(event) = l["event"].as_str() else {
                continue;
            };
            let mut o = l.as_object().cloned().unwrap_or_default();
            for k in ["timestamp", "target", "event", "level"] {
                o.remove(k);
            }
            out.push_str(&format!(
                "  {} {event} {}\n",
                l["timestamp"].as_str().unwrap_or(""),
                Value::Object(o)
            ));
        }
        out
    }
}

// ------------------------------------------------------------------ bridge watch

/// Polls the bridge's status every 10 ms and records each change of
/// (state, last_error.code), with times relative to `t0`.
struct Watch<'a> {
    app: &'a TestApp,
    t0: Instant,
    last: Option<(String, Option<String>)>,
    timeline: Vec<String>,
    states_seen: Vec<String>,
}

impl<'a> Watch<'a> {
    fn new(app: &'a TestApp, t0: Instant) -> Self {
        Watch {
            app,
            t0,
            last: None,
            timeline: Vec::new(),
            states_seen: Vec::new(),
        }
    }

    fn record(&mut self, s: &Status) {
        let state = s.state.as_str().to_owned();
        let code = s.last_error.as_ref().map(|e| e.code.clone());
        let key = (state.clone(), code.clone());
        if self.last.as_ref() != Some(&key) {
            self.timeline.push(format!(
                "+{:>6.3}s {state:<10} last_error={} next_attempt_in_ms={:?} attempt={}",
                self.t0.elapsed().as_secs_f64(),
                code.as_deref().unwrap_or("-"),
                s.next_attempt_in_ms,
                s.attempt
            ));
            self.last = Some(key);
        }
        if !self.states_seen.contains(&state) {
            self.states_seen.push(state);
        }
    }

    /// The first status for which `pred` holds (and when it was seen), or
    /// `None` after `timeout`.
    async fn until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> Option<(Instant, Status)> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.app.status().await;
            let at = Instant::now();
            self.record(&s);
            if pred(&s) {
                return Some((at, s));
            }
            if at >= deadline {
                return None;
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `until` the bridge is no longer connected (within `WAIT`), or panic
    /// with `what` and the timeline.
    async fn until_down(&mut self, what: &str) -> (Instant, Status) {
        self.until(WAIT, |s| !is_connected(s))
            .await
            .unwrap_or_else(|| panic!("{what}\n{}", self.show()))
    }

    /// `until` `pred` holds (within `timeout`), or panic saying the bridge is
    /// not back after `what`, with the timeline, the bridge's log since
    /// `mark` and the gateway's log tail.
    async fn until_back(
        &mut self,
        timeout: Duration,
        pred: impl FnMut(&Status) -> bool,
        what: &str,
        (logs, mark): (&Logs, usize),
        gw: &RealGateway,
    ) -> (Instant, Status) {
        self.until(timeout, pred).await.unwrap_or_else(|| {
            panic!(
                "bridge not back after {what}\n{}\n{}\n{}",
                self.show(),
                logs.dump_since(mark),
                gw.log_tail()
            )
        })
    }

    /// The bridge never went to `parked` while watched.
    fn assert_never_parked(&self, msg: &str) {
        assert!(
            !self.states_seen.iter().any(|s| s == "parked"),
            "{msg}: {}",
            self.show()
        );
    }

    fn show(&self) -> String {
        format!("bridge timeline:\n  {}", self.timeline.join("\n  "))
    }
}

fn is_connected(s: &Status) -> bool {
    s.state.as_str() == "connected"
}

fn boot_of(s: &Status) -> Option<String> {
    s.gateway.boot_id.clone()
}

// ------------------------------------------------------------------ gateway side

async fn off_thread<T: std::marker::Send + 'static>(
    f: impl FnOnce() -> T + std::marker::Send + 'static,
) -> T {
    actix_rt::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Starts a private gateway and waits for its hello-ok (off the test thread).
async fn private_gateway(opts: GatewayOptions) -> (Arc<RealGateway>, Value, Duration) {
    let t = Instant::now();
    let gw = Arc::new(RealGateway::start(opts));
    let g = gw.clone();
    let hello = off_thread(move || g.wait_ready(READY_TIMEOUT)).await;
    (gw, hello, t.elapsed())
}

/// Polls the gateway's own readiness (a real handshake every ~20 ms) on a
/// thread; yields the instant of the first hello-ok whose bootId differs
/// from `not_boot` (any hello-ok when `None`), or `None` after `timeout`.
fn probe_gateway(
    gw: Arc<RealGateway>,
    not_boot: Option<Value>,
    timeout: Duration,
) -> JoinHandle<Option<(Instant, Value)>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(h) = gw.try_hello(Duration::from_secs(5)) {
                let at = Instant::now();
                if not_boot.as_ref() != Some(&h["server"]["bootId"]) {
                    return Some((at, h));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
}

/// Sends SIGCONT to the gateway when dropped (also on a failed assertion), so
/// a stopped gateway never outlives its test.
struct ContOnDrop(u32);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "CONT", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

// ------------------------------------------------------------------ common checks

/// The bridge's log captured on this thread (while the guard lives), then a
/// private gateway started with `opts`, then a bridge connected to it:
/// `(logs, guard, gateway, its hello-ok, its start time, bridge)`.
async fn rig(
    opts: GatewayOptions,
) -> (
    Logs,
    tracing::subscriber::DefaultGuard,
    Arc<RealGateway>,
    Value,
    Duration,
    TestApp,
) {
    let logs = Logs::default();
    let log_guard = logs.install();
    let (gw, hello, started) = private_gateway(opts).await;
    let app = connected_app(&gw).await;
    (logs, log_guard, gw, hello, started, app)
}

/// Bridge up against `gw` with `main` listed (not stale) in `/v1/agents`.
async fn connected_app(gw: &RealGateway) -> TestApp {
    let app = spawn_app(&gw.url(), Some(gw.token()), "").await;
    assert!(
        app.wait_connected(WAIT).await,
        "bridge never connected: {:?}\n{}",
        app.status().await,
        gw.log_tail()
    );
    wait_agents(&app, false).await;
    app
}

/// Waits until `/v1/agents` lists `main` with `stale == stale`.
async fn wait_agents(app: &TestApp, stale: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = app.get("/v1/agents").await;
        let main = body
            .as_array()
            .and_then(|a| a.iter().find(|a| a["id"] == "main"))
            .cloned();
        if status == 200 && main.as_ref().is_some_and(|m| m["stale"] == stale) {
            return main.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "/v1/agents never showed main with stale={stale}: {status} {body}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// While down: `/readyz` is 503 with the state and the last error, a request
/// is refused at once with 503 `BRIDGE_NOT_CONNECTED` carrying the state, and
/// `/v1/agents` still answers, marked stale. Returns a one-line summary.
async fn check_down_behaviour(app: &TestApp) -> String {
    let (code, ready) = app.get("/readyz").await;
    assert_eq!(code, 503, "/readyz while down: {ready}");
    assert_ne!(ready["state"], "connected", "{ready}");
    assert!(
        ready["last_error"]["code"].is_string(),
        "/readyz says why: {ready}"
    );

    let t = Instant::now();
    let (code, body) = app.rpc(json!({"method": "health"})).await;
    let took = t.elapsed();
    assert_eq!(code, 503, "health while down: {body}");
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["error"]["code"], "BRIDGE_NOT_CONNECTED", "{body}");
    let state = body["error"]["details"]["state"].as_str().unwrap_or("");
    assert!(
        ["connecting", "backoff"].contains(&state),
        "details.state names the link state: {body}"
    );
    assert!(took < FAST, "refused after {took:?}, not at once: {body}");

    let main = wait_agents(app, true).await;
    assert_eq!(main["stale"], true);
    format!(
        "readyz 503 state={} last_error={}; health refused in {:?} with state={state}; /v1/agents main stale=true",
        ready["state"], ready["last_error"]["code"], took
    )
}

/// After the outage: a request goes through and the registry is live again.
/// (The first `health` on a freshly started gateway process takes ~2 s alone
/// and more under load, hence the explicit timeout.)
async fn check_back(app: &TestApp, what: &str) {
    let t = Instant::now();
    let (code, body) = app
        .rpc(json!({"method": "health", "timeoutMs": 30000}))
        .await;
    assert_eq!(code, 200, "health after reconnect: {body}");
    eprintln!(
        "RESILIENCE {what}: first health after reconnect answered in {:?}",
        t.elapsed()
    );
    wait_agents(app, false).await;
}

/// `(elapsed since t0)` for a report line.
fn since(t0: Instant, t: Instant) -> String {
    format!("{:.3}s", t.saturating_duration_since(t0).as_secs_f64())
}

/// `since(t0, …)` of the probe's hello-ok, or `?` when it never came.
fn since_probe(t0: Instant, probed: &Option<(Instant, Value)>) -> String {
    probed
        .as_ref()
        .map(|(t, _)| since(t0, *t))
        .unwrap_or_else(|| "?".into())
}

/// Starts the exited gateway again and waits (up to 90 s) for the bridge to
/// be connected to a new boot, never parking meanwhile. Returns when the
/// start began, when the bridge was back (and its status then), and the
/// gateway's own first hello-ok on the new boot.
async fn start_again_until_back(
    gw: &Arc<RealGateway>,
    boot1: &Value,
    watch: &mut Watch<'_>,
    log_since: (&Logs, usize),
    what: &str,
) -> (Instant, Instant, Status, Option<(Instant, Value)>) {
    let t_start = Instant::now();
    gw.start_again();
    let probe = probe_gateway(gw.clone(), Some(boot1.clone()), Duration::from_secs(90));
    let (bridge_at, up) = watch
        .until_back(
            Duration::from_secs(90),
            |s| is_connected(s) && boot_of(s).as_deref() != boot1.as_str(),
            what,
            log_since,
            gw,
        )
        .await;
    let gw_ready = off_thread(move || probe.join().expect("probe thread")).await;
    watch.assert_never_parked("never parked");
    (t_start, bridge_at, up, gw_ready)
}

fn code_of(s: &Status) -> String {
    s.last_error
        .as_ref()
        .map(|e| e.code.clone())
        .unwrap_or_default()
}

// ------------------------------------------------------------------ tests

/// SIGUSR2: the gateway restarts in-process (shutdown event with
/// restartExpectedMs, close 1012, refused, 1013, hello-ok with a new bootId).
/// The bridge says why it is down and is ready within 2 s of the gateway.
#[actix_rt::test]
async fn usr2_restart_reconnects_within_2s_of_the_gateway() {
    if !RealGateway::available() {
        return;
    }
    let (logs, _log_guard, gw, hello, started, app) = rig(GatewayOptions::default()).await;
    let boot1 = hello["server"]["bootId"].clone();
    assert_eq!(
        boot_of(&app.status().await).as_deref(),
        boot1.as_str(),
        "the bridge sees the gateway's bootId"
    );
    let mark = logs.mark();

    let t0 = Instant::now();
    gw.signal("USR2");
    let probe = probe_gateway(gw.clone(), Some(boot1.clone()), WAIT);
    let mut watch = Watch::new(&app, t0);

    let (down_at, down) = watch.until_down("bridge never noticed the restart").await;
    let err = down.last_error.clone().expect("last_error while down");
    assert_eq!(err.code, "close_1012", "{err:?}\n{}", watch.show());
    assert_eq!(err.close_code, Some(1012), "{err:?}");
    assert!(
        err.message.contains("service restart"),
        "last_error says service restart: {err:?}"
    );
    let down_summary = check_down_behaviour(&app).await;

    let (bridge_at, up) = watch
        .until_back(
            WAIT,
            |s| is_connected(s) && boot_of(s).as_deref() != boot1.as_str(),
            "USR2",
            (&logs, mark),
            &gw,
        )
        .await;
    let (gw_at, gw_hello) = off_thread(move || probe.join().expect("probe thread"))
        .await
        .unwrap_or_else(|| panic!("gateway not ready after USR2\n{}", gw.log_tail()));
    assert_eq!(
        boot_of(&up).as_deref(),
        gw_hello["server"]["bootId"].as_str(),
        "the bridge is on the new boot"
    );
    let lag = bridge_at.saturating_duration_since(gw_at);
    eprintln!(
        "RESILIENCE usr2: gateway started in {started:?}; after SIGUSR2: bridge down at {}, \
         gateway ready (probe hello-ok, new bootId) at {}, bridge ready at {} => bridge {} the gateway \
         (lag {lag:?})\n  down: {down_summary}\n{}\nbridge log:\n{}",
        since(t0, down_at),
        since(t0, gw_at),
        since(t0, bridge_at),
        if bridge_at >= gw_at {
            format!("{:.3}s after", (bridge_at - gw_at).as_secs_f64())
        } else {
            format!("{:.3}s before", (gw_at - bridge_at).as_secs_f64())
        },
        watch.show(),
        logs.dump_since(mark)
    );
    assert!(
        lag <= READY_AFTER_GATEWAY,
        "bridge ready {lag:?} after the gateway (limit {READY_AFTER_GATEWAY:?})\n{}\n{}",
        watch.show(),
        logs.dump_since(mark)
    );
    watch.assert_never_parked("a restart must not park");

    // What the operator reads.
    let disc = logs.named_since(mark, "gateway.disconnected");
    assert!(
        disc.iter().any(|l| l["close_code"] == 1012),
        "gateway.disconnected with close_code 1012: {disc:?}"
    );
    assert!(
        !logs.named_since(mark, "gateway.restarted").is_empty(),
        "gateway.restarted logged for the new bootId\n{}",
        logs.dump_since(mark)
    );
    check_back(&app, "usr2").await;
    app.stop().await;
}

/// SIGTERM, wait for the process to exit, start it again: the bridge reports
/// the stop (1012), keeps retrying (never parks), serves stale agents, and
/// reconnects by itself to the new process.
#[actix_rt::test]
async fn term_then_start_again_reconnects_by_itself() {
    if !RealGateway::available() {
        return;
    }
    let (logs, _log_guard, gw, hello, started, app) = rig(GatewayOptions::default()).await;
    let boot1 = hello["server"]["bootId"].clone();
    let mark = logs.mark();

    let t0 = Instant::now();
    gw.signal("TERM");
    let mut watch = Watch::new(&app, t0);
    let (down_at, down) = watch.until_down("bridge never noticed SIGTERM").await;
    let err = down.last_error.clone().expect("last_error while down");
    assert_eq!(err.code, "close_1012", "{err:?}\n{}", watch.show());
    assert!(err.message.contains("service restart"), "{err:?}");
    let down_summary = check_down_behaviour(&app).await;

    // Watch the bridge while the process takes its time to exit.
    let exited = Arc::new(AtomicBool::new(false));
    let (g, e) = (gw.clone(), exited.clone());
    let waiter = std::thread::spawn(move || {
        let r = g.wait_exit(Duration::from_secs(30));
        e.store(true, Ordering::SeqCst);
        (r, Instant::now())
    });
    watch
        .until(Duration::from_secs(35), |_| exited.load(Ordering::SeqCst))
        .await;
    let (status, exit_at) = off_thread(move || waiter.join().expect("waiter")).await;
    assert!(status.is_some(), "gateway did not exit within 30 s of TERM");
    let attempts_before = logs.named_since(mark, "gateway.connecting").len();

    // Down for a while with nothing listening: still retrying, not parked.
    watch.until(Duration::from_secs(1), |_| false).await;
    let s = app.status().await;
    assert!(
        ["backoff", "connecting"].contains(&s.state.as_str()),
        "state while the gateway is gone: {s:?}"
    );
    let attempts = logs.named_since(mark, "gateway.connecting").len();
    assert!(
        attempts >= attempts_before + 2,
        "the bridge keeps retrying while the gateway is gone ({attempts_before} -> {attempts} attempts)\n{}",
        logs.dump_since(mark)
    );
    let gone_error = code_of(&s);
    let gone_message = s.last_error.as_ref().map(|e| e.message.clone());
    assert!(
        gone_error == "connect_failed" || gone_error == "close_1012",
        "last_error while nothing listens: {s:?}"
    );
    check_down_behaviour(&app).await;

    let (t_start, bridge_at, up, gw_ready) =
        start_again_until_back(&gw, &boot1, &mut watch, (&logs, mark), "TERM + start again").await;
    let backoffs = logs.named_since(mark, "gateway.backoff");
    let max_delay = backoffs
        .iter()
        .filter_map(|l| l["delay_ms"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(
        max_delay <= 2000,
        "retry delays stay short with reconnect.max_ms = 300 (max {max_delay} ms)"
    );
    eprintln!(
        "RESILIENCE term: gateway started in {started:?}; after SIGTERM: bridge down at {}, process exit at {}, \
         start_again at {}, gateway ready at {}, bridge ready at {} (boot {:?}); {} connect attempts, \
         {} backoff lines, max delay {max_delay} ms; last_error with nothing listening: \
         {gone_error} {gone_message:?}\n  down: {down_summary}\n{}\nbridge log (first 40 lines):\n{}",
        since(t0, down_at),
        since(t0, exit_at),
        since(t0, t_start),
        since_probe(t0, &gw_ready),
        since(t0, bridge_at),
        boot_of(&up),
        logs.named_since(mark, "gateway.connecting").len(),
        backoffs.len(),
        watch.show(),
        logs.head_since(mark, 40)
    );
    check_back(&app, "term").await;
    app.stop().await;
}

/// SIGKILL with an accepted `agent` run in flight: the bridge reports the
/// lost connection and reconnects by itself when the gateway is started
/// again. The run's caller is held meanwhile (issue 13, reattach first) and
/// then told the run was lost with the old process
/// (`BRIDGE_RUN_OUTCOME_UNKNOWN`, `boot_changed`), not made to wait out its
/// whole timeout.
#[actix_rt::test]
async fn kill_then_start_again_fails_in_flight_and_reconnects() {
    if !RealGateway::available() {
        return;
    }
    let (logs, _log_guard, gw, hello, started, app) = rig(GatewayOptions::default()).await;
    let boot1 = hello["server"]["bootId"].clone();
    let mark = logs.mark();

    // A long agent run (~30 s of streaming), waiting for its final answer.
    let n0 = gw.model().request_count();
    let key = uuid::Uuid::new_v4().to_string();
    let client = app.client.clone();
    let url = app.url("/v1/rpc");
    let run = actix_rt::spawn(async move {
        let body = json!({"method": "agent", "expectFinal": true, "timeoutMs": 120000,
            "params": {"message": "keep talking SLOWLONG", "agentId": "main",
                       "sessionKey": "agent:main:main", "idempotencyKey": key}});
        let mut res = client
            .post(url)
            .timeout(Duration::from_secs(150))
            .send_json(&body)
            .await
            .expect("POST reaches the bridge");
        let bytes = res.body().limit(1 << 20).await.expect("body");
        (
            res.status().as_u16(),
            serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            Instant::now(),
        )
    });
    // Kill once the model is streaming the answer.
    let deadline = Instant::now() + WAIT;
    while gw.model().request_count() <= n0 {
        assert!(!run.is_finished(), "the agent run ended before the kill");
        assert!(
            Instant::now() < deadline,
            "the model never got the run\n{}",
            gw.log_tail()
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    assert!(!run.is_finished(), "the run is still in flight");
    let t0 = Instant::now();
    gw.signal("KILL");
    let mut watch = Watch::new(&app, t0);

    // The caller of the accepted run is held while the gateway is gone.
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !run.is_finished(),
        "the accepted run's caller was answered while the gateway was down"
    );

    let (down_at, down) = watch.until_down("bridge never noticed SIGKILL").await;
    let first_code = code_of(&down);
    assert!(
        ["connection_lost", "protocol_error", "connect_failed"].contains(&first_code.as_str()),
        "last_error after SIGKILL: {:?}\n{}",
        down.last_error,
        watch.show()
    );
    let disc = logs.named_since(mark, "gateway.disconnected");
    assert_eq!(disc.len(), 1, "one gateway.disconnected: {disc:?}");
    assert!(
        ["connection_lost", "protocol_error"].contains(&disc[0]["cause"].as_str().unwrap_or("")),
        "gateway.disconnected says the connection was lost: {}",
        disc[0]
    );
    assert!(
        disc[0]["pending_failed"].as_u64() >= Some(1),
        "the in-flight run was failed: {}",
        disc[0]
    );
    let g = gw.clone();
    let exited = off_thread(move || g.wait_exit(Duration::from_secs(10))).await;
    assert!(exited.is_some(), "gateway did not die on SIGKILL");
    let down_summary = check_down_behaviour(&app).await;

    let (t_start, bridge_at, up, gw_ready) =
        start_again_until_back(&gw, &boot1, &mut watch, (&logs, mark), "KILL + start again").await;
    let (code, body, answered_at) = actix_rt::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the held run hangs after the gateway came back")
        .expect("run task");
    let in_flight_after = answered_at.saturating_duration_since(t0);
    assert_eq!(code, 502, "held run after SIGKILL + start again: {body}");
    assert_eq!(
        (
            &body["error"]["code"],
            &body["error"]["details"]["boot_changed"]
        ),
        (&json!("BRIDGE_RUN_OUTCOME_UNKNOWN"), &json!(true)),
        "{body}"
    );
    assert!(
        answered_at.saturating_duration_since(bridge_at) < Duration::from_secs(30),
        "the lost run was reported only {:?} after the bridge was back",
        answered_at.saturating_duration_since(bridge_at)
    );
    eprintln!(
        "RESILIENCE kill: gateway started in {started:?}; held agent run answered {in_flight_after:?} after SIGKILL \
         with {}; bridge down at {} ({first_code}); start_again at {}, gateway ready at {}, bridge ready at {} \
         (boot {:?})\n  down: {down_summary}\n{}\nbridge log (first 30 lines):\n{}",
        body["error"]["message"],
        since(t0, down_at),
        since(t0, t_start),
        since_probe(t0, &gw_ready),
        since(t0, bridge_at),
        boot_of(&up),
        watch.show(),
        logs.head_since(mark, 30)
    );
    check_back(&app, "kill").await;
    app.stop().await;
}

/// SIGSTOP for longer than two ticks (tick patched to 1 s, test-only): no
/// traffic, TCP stays open, so only the watchdog notices. A request in flight
/// fails with `BRIDGE_DISCONNECTED` when it fires; after SIGCONT the bridge
/// reconnects by itself to the same boot.
#[actix_rt::test]
async fn stop_past_two_ticks_trips_the_watchdog_then_cont_reconnects() {
    if !RealGateway::available() {
        return;
    }
    let (logs, _log_guard, gw, hello, started, app) = rig(GatewayOptions {
        tick_interval_ms: Some(1000),
        ..Default::default()
    })
    .await;
    assert_eq!(hello["policy"]["tickIntervalMs"], 1000, "tick patch active");
    let boot1 = hello["server"]["bootId"].clone();
    let mark = logs.mark();

    let cont = ContOnDrop(gw.pid());
    let t0 = Instant::now();
    gw.signal("STOP");
    let mut watch = Watch::new(&app, t0);
    // A request sent to the frozen gateway: answered when the watchdog fires,
    // not after its own (longer) timeout.
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let t_req = Instant::now();
    let (code, body) = app
        .rpc(json!({"method": "health", "timeoutMs": 30000}))
        .await;
    let in_flight_after = t_req.elapsed();
    assert_eq!(code, 503, "in-flight health while frozen: {body}");
    assert_eq!(body["error"]["code"], "BRIDGE_DISCONNECTED", "{body}");
    assert!(
        in_flight_after < Duration::from_secs(5),
        "in-flight request failed only after {in_flight_after:?}"
    );

    let (down_at, down) = watch.until_down("watchdog never fired").await;
    let err = down.last_error.clone().expect("last_error");
    assert_eq!(
        err.code,
        "watchdog_expired",
        "{err:?}\n{}\n{}",
        watch.show(),
        logs.dump_since(mark)
    );
    assert!(err.message.contains("no traffic"), "{err:?}");
    let wd_after = down_at.saturating_duration_since(t0);
    assert!(
        wd_after <= Duration::from_secs(4),
        "watchdog (2 x 1 s tick) fired only {wd_after:?} after SIGSTOP"
    );
    let wd = logs.named_since(mark, "gateway.watchdog_expired");
    assert_eq!(wd.len(), 1, "one gateway.watchdog_expired line: {wd:?}");
    assert_eq!(wd[0]["limit_ms"], 2000, "{}", wd[0]);
    let down_summary = check_down_behaviour(&app).await;

    // Stay frozen a while: the bridge keeps trying (handshakes time out).
    watch
        .until(Duration::from_secs(5), |_| {
            t0.elapsed() >= Duration::from_secs(5)
        })
        .await;
    let s = app.status().await;
    assert!(
        ["backoff", "connecting"].contains(&s.state.as_str()),
        "state while frozen: {s:?}"
    );
    let frozen_error = s
        .last_error
        .as_ref()
        .map(|e| format!("{} ({})", e.code, e.message));
    let attempts = logs.named_since(mark, "gateway.connecting").len();
    assert!(
        attempts >= 2,
        "keeps trying while frozen: {attempts}\n{}",
        logs.dump_since(mark)
    );

    let t_cont = Instant::now();
    drop(cont);
    let probe = probe_gateway(gw.clone(), None, WAIT);
    let (bridge_at, up) = watch
        .until_back(WAIT, is_connected, "SIGCONT", (&logs, mark), &gw)
        .await;
    let gw_ready = off_thread(move || probe.join().expect("probe thread")).await;
    assert_eq!(
        boot_of(&up).as_deref(),
        boot1.as_str(),
        "a paused gateway is the same boot"
    );
    watch.assert_never_parked("never parked");
    eprintln!(
        "RESILIENCE stop: gateway started in {started:?}; after SIGSTOP: in-flight health failed after \
         {in_flight_after:?} (sent at +0.2s), watchdog at {}; SIGCONT at {}, gateway hello-ok at {}, \
         bridge ready at {} ({} after SIGCONT); {attempts} connect attempts while frozen, last_error then \
         {frozen_error:?}\n  down: {down_summary}\n{}\n\
         bridge log:\n{}",
        since(t0, down_at),
        since(t0, t_cont),
        since_probe(t0, &gw_ready),
        since(t0, bridge_at),
        since(t_cont, bridge_at),
        watch.show(),
        logs.dump_since(mark)
    );
    check_back(&app, "stop").await;
    app.stop().await;
}
