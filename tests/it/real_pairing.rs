//! Pairing end-to-end against the real gateway from a non-loopback peer
//! (issue 7; PROTOCOL.md §3.2–§3.4 and §8 "A non-loopback peer on one
//! machine").
//!
//! The gateway runs in one network namespace (bound to 10.213.7.1 and its own
//! loopback), the bridge binary in another (10.213.7.2), joined only by a veth
//! pair, so the gateway sees a remote peer and demands a device identity and
//! pairing. Needs root and `ip netns`; skipped with a message otherwise.
//! Nothing here connects to 10.213.7.x from the test's own namespace: every
//! client of the gateway's address runs inside the client namespace.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::real_gateway::{
    install, run_bounded, GatewayOptions, NetnsPair, RealGateway, NETNS_CL_ADDR, NETNS_GW_ADDR,
};

/// Bound for every wait on the bridge.
const WAIT: Duration = Duration::from_secs(60);
/// Bound for the gateway's start (10–20 s cold, more with other gateways
/// starting in parallel).
const GATEWAY_READY: Duration = Duration::from_secs(90);

const BIN: &str = env!("CARGO_BIN_EXE_openclaw-bridge");

/// The network namespaces, or `None` after printing why the test is skipped.
fn netns_or_skip() -> Option<NetnsPair> {
    if !RealGateway::available() {
        return None;
    }
    match NetnsPair::create() {
        Ok(n) => Some(n),
        Err(why) => {
            eprintln!("skipping: {why}");
            None
        }
    }
}

/// A real gateway inside `net.gw`, bound to 10.213.7.1 and the namespace's
/// loopback, ready (probed from inside the namespace).
fn gateway_in(net: &NetnsPair) -> RealGateway {
    let t = Instant::now();
    let gw = RealGateway::start(GatewayOptions {
        netns: Some(net.gw.clone()),
        bind_custom_host: Some(NETNS_GW_ADDR.into()),
        ..Default::default()
    });
    let hello = gw.wait_ready(GATEWAY_READY);
    eprintln!(
        "real_pairing: gateway ready in netns {} after {:?} (pid {}, port {}, {})",
        net.gw,
        t.elapsed(),
        gw.pid(),
        gw.port(),
        hello["server"]["version"]
    );
    gw
}

/// The bridge daemon (`openclaw-bridge run`) inside the client namespace,
/// its stdout/stderr lines collected by threads. SIGKILLed on drop if still
/// running.
struct Bridge {
    label: &'static str,
    child: Child,
    exit: Option<ExitStatus>,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Bridge {
    fn start(
        label: &'static str,
        net: &NetnsPair,
        gw: &RealGateway,
        state_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> Bridge {
        let mut cmd = NetnsPair::command_in(&net.cl, BIN);
        cmd.arg("run");
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("OPENCLAW_") || k == "RUST_LOG" || k == "STATE_DIRECTORY" {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.env(
            "OPENCLAW_GATEWAY_URL",
            format!("ws://{NETNS_GW_ADDR}:{}/", gw.port()),
        )
        .env("OPENCLAW_GATEWAY_TOKEN", gw.token())
        .env("OPENCLAW_BRIDGE__STATE__DIR", state_dir)
        .env("OPENCLAW_BRIDGE__HTTP__LISTEN", "127.0.0.1:0")
        .env("OPENCLAW_BRIDGE__LOG__FORMAT", "json")
        .env("OPENCLAW_BRIDGE__LOG__LEVEL", "info")
        .env("OPENCLAW_BRIDGE__RECONNECT__PARK_RETRY_MS", "1000");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} run in netns {}: {e}", net.cl));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let so = child.stdout.take().expect("bridge stdout");
        let se = child.stderr.take().expect("bridge stderr");
        for (pipe, sink) in [
            (Box::new(so) as Box<dyn std::io::Read + Send>, out.clone()),
            (Box::new(se) as Box<dyn std::io::Read + Send>, err.clone()),
        ] {
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().unwrap().push(line);
                }
            }));
        }
        Bridge {
            label,
            child,
            exit: None,
            out,
            err,
            readers,
        }
    }

    fn stdout_lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// Every stdout line that is JSON.
    fn logs(&self) -> Vec<Value> {
        self.stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The log lines with `event` = `name`.
    fn events(&self, name: &str) -> Vec<Value> {
        self.logs()
            .into_iter()
            .filter(|v| v["event"] == name)
            .collect()
    }

    fn running(&mut self) -> bool {
        if self.exit.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exit = Some(s);
            }
        }
        self.exit.is_none()
    }

    /// The first log line with `event` = `name` (from line index `from` of the
    /// parsed logs on) that `pred` accepts; panics with the logs after `WAIT`
    /// or if the bridge exits.
    fn wait_event(
        &mut self,
        name: &str,
        from: usize,
        pred: impl Fn(&Value) -> bool,
        gw: &RealGateway,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self
                .logs()
                .into_iter()
                .skip(from)
                .find(|v| v["event"] == name && pred(v))
            {
                return v;
            }
            if !self.running() {
                // Let the readers drain the pipes.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "{}: bridge exited ({:?}) before logging {name}\n{}",
                    self.label,
                    self.exit,
                    diagnostics(&[self], gw)
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: no {name} within {WAIT:?}\n{}",
                    self.label,
                    diagnostics(&[self], gw)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTP address from `bridge.started` (`127.0.0.1:PORT`, inside the
    /// client namespace).
    fn http_addr(&mut self, gw: &RealGateway) -> String {
        let started = self.wait_event("bridge.started", 0, |_| true, gw);
        started["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("bridge.started has listen: {started}"))
            .to_owned()
    }

    /// SIGTERM (with `kill`), then wait for the exit.
    fn terminate(&mut self, gw: &RealGateway) -> ExitStatus {
        let pid = self.child.id();
        let t = Instant::now();
        let status = Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = t + Duration::from_secs(20);
        while self.running() {
            if Instant::now() >= deadline {
                panic!(
                    "{}: bridge still running 20 s after SIGTERM\n{}",
                    self.label,
                    diagnostics(&[self], gw)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        eprintln!(
            "real_pairing: {} exited {:?} {:?} after SIGTERM",
            self.label,
            self.exit,
            t.elapsed()
        );
        self.exit.expect("exit status")
    }

    fn tail(&self) -> String {
        let mut s = String::new();
        for (name, lines) in [
            ("stdout", self.stdout_lines()),
            ("stderr", self.stderr_lines()),
        ] {
            let from = lines.len().saturating_sub(40);
            s.push_str(&format!(
                "--- bridge {} {name} (last {} of {} lines) ---\n",
                self.label,
                lines.len() - from,
                lines.len()
            ));
            for l in &lines[from..] {
                let l: String = l.chars().take(600).collect();
                s.push_str(&l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn diagnostics(bridges: &[&Bridge], gw: &RealGateway) -> String {
    let mut s = String::new();
    for b in bridges {
        s.push_str(&b.tail());
    }
    s.push_str(&gw.log_tail());
    s
}

/// `GET http://<addr><path>` from inside the client namespace (where the
/// bridge's HTTP API is): `(status, JSON body)`.
fn get_in_client_ns(net: &NetnsPair, addr: &str, path: &str) -> (u16, Value) {
    let node = install().node_bin_dir.join("node");
    let mut cmd = NetnsPair::command_in(&net.cl, node);
    cmd.args([
        "-e",
        "fetch(process.argv[1]).then(async (r) => console.log(JSON.stringify({status: r.status, body: await r.text()})), (e) => { console.log(JSON.stringify({status: 0, body: String(e)})); })",
        &format!("http://{addr}{path}"),
    ]);
    cmd.env_remove("NODE_OPTIONS");
    let out = run_bounded(cmd, Duration::from_secs(20)).expect("GET from the client netns");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "GET {path}: no answer ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let status = v["status"].as_u64().unwrap_or(0) as u16;
    let body = v["body"].as_str().unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Fails if `secret` appears in anything the bridge printed.
fn assert_not_printed(bridge: &Bridge, what: &str, secret: &str) {
    assert!(!secret.is_empty(), "{what} is empty");
    for (stream, lines) in [
        ("stdout", bridge.stdout_lines()),
        ("stderr", bridge.stderr_lines()),
    ] {
        if let Some(l) = lines.iter().find(|l| l.contains(secret)) {
            panic!(
                "{}: the {what} appears in the bridge's {stream}: {l}",
                bridge.label
            );
        }
    }
}

/// Issue 7: a bridge on a non-loopback address gets `PAIRING_REQUIRED`, logs
/// the request id and the approve command, parks (logged once) and retries
/// with the same request id; after `openclaw devices approve` it connects
/// with full scopes and stores the device token (0600); restarted with the
/// same state dir it connects with the device token, without a new approval.
#[test]
fn real_pairing_remote_bridge_pairs_then_reconnects_with_its_device_token() {
    let Some(net) = netns_or_skip() else { return };
    let t0 = Instant::now();
    let gw = gateway_in(&net);
    let t_gateway = t0.elapsed();
    let state = tempfile::tempdir().expect("state dir");
    let shared_token = gw.token().to_owned();
    let approve_args = |id: &str| -> Vec<String> {
        [
            "devices",
            "approve",
            id,
            "--url",
            &gw.url(),
            "--token",
            gw.token(),
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    // 1. Unpaired: pairing_required with a request id and the command.
    let t1 = Instant::now();
    let mut first = Bridge::start("first run", &net, &gw, state.path(), &[]);
    let http = first.http_addr(&gw);
    let pairing = first.wait_event("gateway.pairing_required", 0, |_| true, &gw);
    let t_pairing = t1.elapsed();
    eprintln!("real_pairing: {pairing}");
    let request_id = pairing["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("pairing_required has request_id: {pairing}"))
        .to_owned();
    assert!(!request_id.is_empty(), "{pairing}");
    let approve_command = pairing["approve_command"].as_str().unwrap_or("");
    assert!(
        approve_command.contains(&format!("openclaw devices approve {request_id}")),
        "approve_command names the request: {pairing}"
    );
    assert_eq!(pairing["level"], "WARN", "{pairing}");

    // Parked, retrying every second: wait for two retries after the first
    // refusal, then the park is logged once and the request id is the same.
    let retries = |b: &Bridge| {
        // One `gateway.backoff` per refused attempt (repeat refusals while
        // parked are logged at debug, not as `gateway.rejected`).
        b.events("gateway.backoff")
            .into_iter()
            .filter(|v| v["cause"] == "PAIRING_REQUIRED")
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while retries(&first) < 3 {
        assert!(
            Instant::now() < deadline && first.running(),
            "no retries while parked\n{}",
            diagnostics(&[&first], &gw)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let parked = first.events("gateway.parked");
    assert_eq!(
        parked.len(),
        1,
        "gateway.parked logged once, not per retry: {parked:?}\n{}",
        first.tail()
    );
    assert_eq!(parked[0]["code"], "PAIRING_REQUIRED", "{}", parked[0]);
    assert!(
        parked[0]["action"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("openclaw devices approve {request_id}")),
        "park action: {}",
        parked[0]
    );
    assert_eq!(
        first.events("gateway.pairing_required").len(),
        1,
        "pairing_required logged once\n{}",
        first.tail()
    );
    let (status, ready) = get_in_client_ns(&net, &http, "/readyz");
    eprintln!("real_pairing: /readyz while waiting for approval: {status} {ready}");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["state"], "parked", "{ready}");
    assert_eq!(
        ready["last_error"]["gateway_error"]["details"]["requestId"], request_id,
        "the latest retry got the same request id: {ready}"
    );
    let list = gw.cli(&[
        "devices",
        "list",
        "--url",
        &gw.url(),
        "--token",
        gw.token(),
        "--json",
    ]);
    let list_text = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.status.success(),
        "devices list: {}\n{list_text}\n{}",
        list.status,
        String::from_utf8_lossy(&list.stderr)
    );
    eprintln!("real_pairing: devices list: {}", list_text.trim());
    let list_json: Value = serde_json::from_str(&list_text).unwrap_or(Value::Null);
    let pending = list_json["pending"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        pending.len(),
        1,
        "one pending request after {} attempts: {list_text}",
        retries(&first)
    );
    assert_eq!(pending[0]["requestId"], request_id, "{list_text}");
    assert_eq!(pending[0]["remoteIp"], NETNS_CL_ADDR, "{list_text}");

    // 2. Approve from inside the gateway's namespace.
    let t2 = Instant::now();
    let args = approve_args(&request_id);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let approved = gw.cli(&args);
    assert!(
        approved.status.success(),
        "devices approve: {}\n{}\n{}",
        approved.status,
        String::from_utf8_lossy(&approved.stdout),
        String::from_utf8_lossy(&approved.stderr)
    );
    let t_approve_cli = t2.elapsed();

    // 3. Connected with full scopes; the device token is stored.
    let connected = first.wait_event("gateway.connected", 0, |_| true, &gw);
    let t_connected = t2.elapsed();
    eprintln!("real_pairing: {connected}");
    assert_eq!(
        connected["scopes"], "operator.read,operator.write",
        "{connected}"
    );
    let stored = first.wait_event("gateway.device_token_stored", 0, |_| true, &gw);
    eprintln!("real_pairing: {stored}");
    assert_eq!(stored["level"], "INFO", "stored, not a failure: {stored}");
    let key = state.path().join("device-key");
    let token_file = state.path().join("device-token.json");
    assert_eq!(mode(&key), 0o600, "{}", key.display());
    assert_eq!(mode(&token_file), 0o600, "{}", token_file.display());
    let tokens: Value =
        serde_json::from_str(&std::fs::read_to_string(&token_file).expect("read token file"))
            .expect("device-token.json is JSON");
    let entry = &tokens["tokens"][0];
    assert_eq!(
        entry["gatewayUrl"]
            .as_str()
            .map(|u| u.trim_end_matches('/')),
        Some(format!("ws://{NETNS_GW_ADDR}:{}", gw.port()).as_str()),
        "{}",
        tokens["tokens"]
    );
    assert_eq!(entry["role"], "operator");
    assert_eq!(
        entry["scopes"],
        serde_json::json!(["operator.read", "operator.write"])
    );
    let device_token = entry["token"].as_str().expect("stored token").to_owned();
    let (status, ready) = get_in_client_ns(&net, &http, "/readyz");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["state"], "connected", "{ready}");

    // 4. Stop cleanly; nothing secret was printed.
    let exit = first.terminate(&gw);
    assert_eq!(exit.code(), Some(0), "{}", first.tail());
    assert_not_printed(&first, "shared gateway token", &shared_token);
    assert_not_printed(&first, "device token", &device_token);

    // 5. Restart with the same state dir: the device token, no new approval.
    let t3 = Instant::now();
    let mut second = Bridge::start("second run", &net, &gw, state.path(), &[]);
    let again = second.wait_event("gateway.connected", 0, |_| true, &gw);
    let t_reconnect = t3.elapsed();
    eprintln!("real_pairing: {again}");
    assert_eq!(again["scopes"], "operator.read,operator.write", "{again}");
    assert_eq!(
        again["auth_method"],
        "device-token",
        "the second run authenticates with the stored device token: {again}\n{}",
        second.tail()
    );
    for name in [
        "gateway.pairing_required",
        "gateway.rejected",
        "gateway.parked",
    ] {
        assert!(
            second.events(name).is_empty(),
            "no {name} on the second run\n{}",
            second.tail()
        );
    }
    let exit = second.terminate(&gw);
    assert_eq!(exit.code(), Some(0), "{}", second.tail());
    assert_not_printed(&second, "shared gateway token", &shared_token);
    assert_not_printed(&second, "device token", &device_token);
    let after: Value =
        serde_json::from_str(&std::fs::read_to_string(&token_file).expect("read token file"))
            .expect("device-token.json is JSON");
    assert_eq!(
        after["tokens"][0]["token"].as_str(),
        Some(device_token.as_str()),
        "the stored device token is kept"
    );

    eprintln!(
        "real_pairing: timings: gateway ready {t_gateway:?}, pairing_required {t_pairing:?} \
         after bridge start, approve CLI {t_approve_cli:?}, connected {t_connected:?} after \
         approve started, restart to connected {t_reconnect:?}, total {:?}",
        t0.elapsed()
    );
}

/// PROTOCOL.md §3.2 "empty-scopes trap": without a device identity a remote
/// bridge gets hello-ok with scopes `[]`; it must not count that as
/// connected but park, saying a device identity is needed.
#[test]
fn real_pairing_remote_bridge_without_device_parks_on_missing_scopes() {
    let Some(net) = netns_or_skip() else { return };
    let t0 = Instant::now();
    let gw = gateway_in(&net);
    let state = tempfile::tempdir().expect("state dir");
    let mut bridge = Bridge::start(
        "device_identity=never",
        &net,
        &gw,
        state.path(),
        &[("OPENCLAW_BRIDGE__GATEWAY__DEVICE_IDENTITY", "never")],
    );
    let http = bridge.http_addr(&gw);
    let parked = bridge.wait_event("gateway.parked", 0, |_| true, &gw);
    eprintln!("real_pairing: {parked}");
    assert_eq!(parked["code"], "scopes_missing", "{parked}");
    let action = parked["action"].as_str().unwrap_or("");
    assert!(
        action.contains("device identity"),
        "the park action says a device identity is needed: {parked}"
    );
    assert!(
        action.contains("operator.read") && action.contains("operator.write"),
        "the park action names the missing scopes: {parked}"
    );
    let (status, ready) = get_in_client_ns(&net, &http, "/readyz");
    eprintln!("real_pairing: /readyz: {status} {ready}");
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["state"], "parked", "{ready}");
    assert_eq!(ready["last_error"]["code"], "scopes_missing", "{ready}");
    // Retries (every second) are not logged as new parks, and it never
    // counts the empty-scope session as connected.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        bridge.running(),
        "still running\n{}",
        diagnostics(&[&bridge], &gw)
    );
    assert_eq!(
        bridge.events("gateway.parked").len(),
        1,
        "{}",
        bridge.tail()
    );
    assert!(
        bridge.events("gateway.connected").is_empty(),
        "{}",
        bridge.tail()
    );
    assert!(
        bridge.events("gateway.pairing_required").is_empty(),
        "{}",
        bridge.tail()
    );
    assert!(
        !state.path().join("device-key").exists(),
        "no device key with device_identity = never"
    );
    let exit = bridge.terminate(&gw);
    assert_eq!(exit.code(), Some(0), "{}", bridge.tail());
    assert_not_printed(&bridge, "shared gateway token", gw.token());
    eprintln!("real_pairing: device-less case took {:?}", t0.elapsed());
}
