//! One real gateway instance: start, readiness, signals, `cli`, stop.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::fake_model::FakeModel;

use super::hello::{connect_frame, try_hello, NODE_HELLO_SCRIPT};
use super::install::{env_flag, install, instances_base, Install};
use super::netns::{kill_until_gone, nsenter_prefix};
use super::options::{merge_json, GatewayOptions, INSTANCE_ENV, READY_TIMEOUT};
use super::process::{free_port, run_bounded, wait_group_captured};

static INSTANCE_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One real gateway instance. Stopped (whole process group) on drop.
pub struct RealGateway {
    install: &'static Install,
    opts: GatewayOptions,
    pub(super) dir: PathBuf,
    home: PathBuf,
    port: u16,
    token: String,
    pub(super) marker: String,
    child: Mutex<Option<Child>>,
    pid: AtomicU32,
    starts: AtomicUsize,
    last_hello: Mutex<Option<Value>>,
    model: FakeModel,
}

/// The gateway shared by all tests that do not disturb it (no signals, no
/// rate-limit lockouts, no config changes). Started and ready on first use.
/// Lives until the test process exits; the guard then stops it.
pub fn shared() -> &'static RealGateway {
    static SHARED: OnceLock<RealGateway> = OnceLock::new();
    SHARED.get_or_init(|| {
        let gw = RealGateway::start(GatewayOptions::default());
        gw.wait_ready(READY_TIMEOUT);
        gw
    })
}

impl RealGateway {
    /// False (and prints why) when `OPENCLAW_BRIDGE_SKIP_REAL=1`.
    /// Real-gateway tests start with `if !RealGateway::available() { return; }`.
    pub fn available() -> bool {
        if env_flag("OPENCLAW_BRIDGE_SKIP_REAL") {
            eprintln!("skipping: OPENCLAW_BRIDGE_SKIP_REAL=1");
            return false;
        }
        true
    }

    /// Installs if needed, prepares an instance dir and launches
    /// `openclaw gateway run`. Does not wait: call [`wait_ready`](Self::wait_ready).
    pub fn start(opts: GatewayOptions) -> RealGateway {
        let install = install();
        let n = INSTANCE_COUNTER.fetch_add(1, Ordering::SeqCst);
        let rand = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("gw-{}-{}-{}", std::process::id(), n, &rand[..8]);
        let dir = instances_base().join(&name);
        let home = dir.join("home");
        for d in [
            home.join(".openclaw"),
            dir.join("tmp"),
            home.join(".config"),
            home.join(".cache"),
            home.join(".local/share"),
            home.join(".local/state"),
        ] {
            fs::create_dir_all(&d)
                .unwrap_or_else(|e| panic!("real_gateway: cannot create {}: {e}", d.display()));
        }
        let token = opts
            .token
            .clone()
            .unwrap_or_else(|| format!("tok-{}", uuid::Uuid::new_v4().simple()));
        let port = free_port();
        let model = FakeModel::start();

        let mut config = json!({
            "agents": {"defaults": {
                "model": {"primary": "fake/fake-model"},
                "heartbeat": {"every": "0m"}
            }},
            "models": model.models_config(),
            "update": {"checkOnStart": false},
            "discovery": {"mdns": {"mode": "off"}},
            "logging": {"file": dir.join("gateway.log").to_string_lossy()},
        });
        if let Some(host) = &opts.bind_custom_host {
            merge_json(
                &mut config,
                &json!({"gateway": {"bind": "custom", "customBindHost": host}}),
            );
        }
        if let Some(extra) = &opts.extra_config {
            merge_json(&mut config, extra);
        }
        let config_path = home.join(".openclaw/openclaw.json");
        fs::write(
            &config_path,
            serde_json::to_string_pretty(&config).expect("real_gateway: config serialises"),
        )
        .unwrap_or_else(|e| panic!("real_gateway: cannot write {}: {e}", config_path.display()));

        let gw = RealGateway {
            install,
            marker: name,
            opts,
            dir,
            home,
            port,
            token,
            child: Mutex::new(None),
            pid: AtomicU32::new(0),
            starts: AtomicUsize::new(0),
            last_hello: Mutex::new(None),
            model,
        };
        gw.launch();
        gw
    }

    /// Starts an instance and waits for hello-ok ([`READY_TIMEOUT`]).
    pub fn start_ready(opts: GatewayOptions) -> RealGateway {
        let gw = RealGateway::start(opts);
        gw.wait_ready(READY_TIMEOUT);
        gw
    }

    /// Environment for the gateway and the CLI (on top of a filtered copy
    /// of the test's environment).
    fn env(&self) -> Vec<(String, String)> {
        let i = self.install;
        let path = format!(
            "{}:{}",
            i.node_bin_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())
        );
        let local = self.model.root_url();
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), self.home.display().to_string()),
            ("PATH".into(), path),
            ("TMPDIR".into(), self.dir.join("tmp").display().to_string()),
            (
                "XDG_CONFIG_HOME".into(),
                self.home.join(".config").display().to_string(),
            ),
            (
                "XDG_CACHE_HOME".into(),
                self.home.join(".cache").display().to_string(),
            ),
            (
                "XDG_DATA_HOME".into(),
                self.home.join(".local/share").display().to_string(),
            ),
            (
                "XDG_STATE_HOME".into(),
                self.home.join(".local/state").display().to_string(),
            ),
            // Offline switches (PROTOCOL.md §8).
            ("OPENCLAW_NO_AUTO_UPDATE".into(), "1".into()),
            ("DO_NOT_TRACK".into(), "1".into()),
            ("OPENCLAW_DISABLE_BONJOUR".into(), "1".into()),
            ("CLAWHUB_DISABLE_TELEMETRY".into(), "1".into()),
            ("OPENCLAW_CLAWHUB_URL".into(), local.clone()),
            ("CLAWHUB_URL".into(), local),
            ("OPENCLAW_NO_RESPAWN".into(), "1".into()),
            (
                "NODE_OPTIONS".into(),
                format!("--import=file://{}", i.guard.display()),
            ),
            (
                "OPENCLAW_GUARD_LOG".into(),
                self.dir.join("guard.log").display().to_string(),
            ),
            (
                "OPENCLAW_TEST_PARENT_PID".into(),
                std::process::id().to_string(),
            ),
            ("OPENCLAW_GATEWAY_TOKEN".into(), self.token.clone()),
            (INSTANCE_ENV.into(), self.marker.clone()),
            ("NO_COLOR".into(), "1".into()),
            ("FORCE_COLOR".into(), "0".into()),
        ];
        if let Some(host) = &self.opts.bind_custom_host {
            env.push(("OPENCLAW_GUARD_ALLOW_HOSTS".into(), host.clone()));
        }
        if let Some(ms) = self.opts.tick_interval_ms {
            env.push(("OPENCLAW_TEST_TICK_INTERVAL_MS".into(), ms.to_string()));
        }
        env.extend(self.opts.extra_env.iter().cloned());
        env
    }

    /// The effective command prefix: `command_prefix`, else `nsenter` into
    /// `netns`, else none.
    fn prefix(&self) -> Vec<String> {
        if !self.opts.command_prefix.is_empty() {
            return self.opts.command_prefix.clone();
        }
        match &self.opts.netns {
            Some(ns) => nsenter_prefix(ns),
            None => Vec::new(),
        }
    }

    fn command(&self, program: &Path, args: &[String]) -> Command {
        let prefix = self.prefix();
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args);
        // Drop inherited settings that could point the gateway elsewhere.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("OPENCLAW_")
                || k.starts_with("CLAWHUB_")
                || k.starts_with("NODE_")
                || k.starts_with("npm_")
                || k == "KEEP_GATEWAY"
            {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.envs(self.env());
        cmd.current_dir(&self.dir);
        cmd.stdin(Stdio::null());
        cmd
    }

    fn launch(&self) {
        let run = self.starts.fetch_add(1, Ordering::SeqCst);
        let mut args: Vec<String> = [
            "gateway",
            "run",
            "--allow-unconfigured",
            "--auth",
            "token",
            "--token",
            &self.token,
            "--port",
            &self.port.to_string(),
            "--bind",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(if self.opts.bind_custom_host.is_some() {
            "custom".into()
        } else {
            "loopback".into()
        });
        if self.opts.verbose {
            args.push("--verbose".into());
        }
        let suffix = if run == 0 {
            String::new()
        } else {
            format!(".{run}")
        };
        let open = |name: &str| {
            let p = self.dir.join(format!("{name}{suffix}.log"));
            fs::File::create(&p)
                .unwrap_or_else(|e| panic!("real_gateway: cannot create {}: {e}", p.display()))
        };
        let mut cmd = self.command(&self.install.openclaw_bin, &args);
        cmd.stdout(open("stdout")).stderr(open("stderr"));
        cmd.process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "real_gateway: cannot spawn {}: {e}",
                self.install.openclaw_bin.display()
            )
        });
        self.pid.store(child.id(), Ordering::SeqCst);
        *self.child.lock().expect("real_gateway: child lock") = Some(child);
    }

    /// Launches the same instance again (same home, port, token) after it
    /// exited (SIGTERM/SIGKILL). Panics if it is still running. Does not wait
    /// for readiness. Logs go to `stdout.N.log` / `stderr.N.log`.
    pub fn start_again(&self) {
        if let Some(status) = self.wait_exit(Duration::from_secs(10)) {
            let _ = status;
        } else {
            panic!(
                "real_gateway: start_again: gateway pid {} is still running",
                self.pid()
            );
        }
        self.launch();
    }

    /// `ws://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The instance's `HOME` (config in `home/.openclaw/openclaw.json`).
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The instance dir (logs: `stdout.log`, `stderr.log`, `gateway.log`,
    /// `guard.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Pid of the gateway process (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// This instance's fake model server.
    pub fn model(&self) -> &FakeModel {
        &self.model
    }

    /// The hello-ok payload of the last successful [`wait_ready`](Self::wait_ready).
    pub fn last_hello(&self) -> Option<Value> {
        self.last_hello.lock().ok().and_then(|h| h.clone())
    }

    /// Whether the launched process has not exited yet (a stopped process
    /// counts as running).
    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().expect("real_gateway: child lock");
        match guard.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for the gateway process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut guard = self.child.lock().expect("real_gateway: child lock");
                match guard.as_mut() {
                    None => return Some(ExitStatus::default()),
                    Some(c) => {
                        if let Ok(Some(s)) = c.try_wait() {
                            return Some(s);
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal to the gateway process (not its group) with `kill`:
    /// `"TERM"`, `"USR2"`, `"STOP"`, `"CONT"`, `"KILL"`, … (with or without
    /// the `SIG` prefix).
    pub fn signal(&self, sig: &str) {
        let sig = sig.trim_start_matches("SIG");
        let status = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .stderr(Stdio::null())
            .status()
            .expect("real_gateway: cannot run `kill`");
        assert!(
            status.success(),
            "real_gateway: kill -s {sig} {} failed (process gone?)",
            self.pid()
        );
    }

    /// Sends a signal to the gateway's whole process group; errors ignored.
    fn signal_group(&self, sig: &str) {
        let pid = self.pid();
        if pid == 0 {
            return;
        }
        let _ = Command::new("kill")
            .args(["-s", sig, "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    }

    /// Pids of every live process carrying this instance's marker.
    pub fn instance_pids(&self) -> Vec<u32> {
        let needle = format!("{INSTANCE_ENV}={}", self.marker);
        let mut pids = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return pids;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(environ) = fs::read(e.path().join("environ")) else {
                continue;
            };
            if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
                // Skip zombies: they are gone, only not reaped yet.
                let zombie = fs::read_to_string(e.path().join("stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit_once(')')
                            .map(|(_, r)| r.trim_start().starts_with('Z'))
                    })
                    .unwrap_or(false);
                if !zombie {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Runs the openclaw CLI with this instance's environment (HOME, PATH,
    /// guard, offline switches), e.g.
    /// `gw.cli(&["devices","approve",id,"--url",&gw.url(),"--token",gw.token(),"--json"])`.
    /// With [`GatewayOptions::netns`] (or a `command_prefix`) it runs inside
    /// the gateway's namespace, where [`url`](Self::url) is that namespace's
    /// loopback. Times out (and kills the CLI) after 120 s.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_timeout(args, Duration::from_secs(120))
    }

    /// [`cli`](Self::cli) with an explicit timeout.
    pub fn cli_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut cmd = self.command(&self.install.openclaw_bin, &args);
        cmd.env_remove("OPENCLAW_GUARD_LOG");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("real_gateway: cannot run openclaw {args:?}: {e}"));
        let (out, timed_out) = wait_group_captured(child, timeout)
            .unwrap_or_else(|e| panic!("real_gateway: waiting for openclaw {args:?}: {e}"));
        if timed_out {
            eprintln!("real_gateway: openclaw {args:?} timed out after {timeout:?}");
        }
        out
    }

    /// The last lines of the instance's logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = format!(
            "--- real gateway {} (pid {}, port {}) ---\n",
            self.dir.display(),
            self.pid(),
            self.port
        );
        let mut names: Vec<String> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".log"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        for name in names {
            let text = fs::read_to_string(self.dir.join(&name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(30);
            out.push_str(&format!(
                "--- {name} (last {} lines) ---\n",
                lines.len() - from
            ));
            for l in &lines[from..] {
                let l: String = l.chars().take(400).collect();
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }

    /// One handshake attempt (challenge → connect as `gateway-client`/
    /// `backend`, scopes read+write) with this instance's token.
    /// With [`GatewayOptions::netns`] the attempt is made from inside that
    /// namespace (see [`netns_hello`](Self::netns_hello)).
    pub fn try_hello(&self, timeout: Duration) -> Result<Value, String> {
        if self.opts.netns.is_some() {
            return self.netns_hello(timeout);
        }
        try_hello(&self.url(), &self.token, timeout)
    }

    /// One handshake attempt from inside the instance's network namespace
    /// (or the test's, without one): `node` with the install's `ws` package
    /// sends the same [`connect_frame`] as [`try_hello`] to
    /// `ws://127.0.0.1:PORT/` (that namespace's loopback) and prints the
    /// hello-ok payload. Killed after `timeout` + 5 s.
    pub fn netns_hello(&self, timeout: Duration) -> Result<Value, String> {
        let ws = self.install.root.join("node_modules/ws");
        let ms = timeout.as_millis().max(1).to_string();
        let args: Vec<String> = vec![
            "-e".into(),
            NODE_HELLO_SCRIPT.into(),
            ws.display().to_string(),
            self.url(),
            connect_frame("harness-connect", &self.token).to_string(),
            ms,
        ];
        let mut cmd = self.command(&self.install.node_bin_dir.join("node"), &args);
        cmd.env_remove("OPENCLAW_GUARD_LOG");
        let out = run_bounded(cmd, timeout + Duration::from_secs(5))
            .map_err(|e| format!("handshake probe: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().rev().find(|l| l.starts_with('{'));
        let v: Value = match line.map(serde_json::from_str::<Value>) {
            Some(Ok(v)) => v,
            _ => {
                return Err(format!(
                    "handshake probe gave no answer ({}): stdout {:?} stderr {:?}",
                    out.status,
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        if v["ok"] == true {
            Ok(v["hello"].clone())
        } else {
            Err(v["error"]
                .as_str()
                .unwrap_or("handshake probe failed")
                .to_owned())
        }
    }

    /// Waits until a real handshake reaches hello-ok and returns its payload
    /// (`server.bootId`, `policy.tickIntervalMs`, `auth.scopes`, …). Retries
    /// refused connections and `UNAVAILABLE`/1013 "gateway starting".
    /// Panics with the log tail on timeout or if the process exits.
    pub fn wait_ready(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("no attempt");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "real_gateway: not ready within {timeout:?} (last error: {last_err})\n{}",
                    self.log_tail()
                );
            }
            if !self.is_running() {
                panic!(
                    "real_gateway: gateway process exited before ready (last error: {last_err})\n{}",
                    self.log_tail()
                );
            }
            match self.try_hello(left.min(Duration::from_secs(20))) {
                Ok(hello) => {
                    if let Ok(mut h) = self.last_hello.lock() {
                        *h = Some(hello.clone());
                    }
                    return hello;
                }
                Err(e) => last_err = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for RealGateway {
    fn drop(&mut self) {
        // A stopped process handles TERM only once continued.
        self.signal_group("CONT");
        self.signal_group("TERM");
        let exited = self.wait_exit(Duration::from_secs(3)).is_some();
        self.signal_group("KILL");
        // Processes that left the group (setsid) but carry the marker.
        kill_until_gone(|| self.instance_pids());
        if !exited {
            let _ = self.wait_exit(Duration::from_secs(2));
        }
        if env_flag("KEEP_GATEWAY") {
            eprintln!("real_gateway: kept {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
