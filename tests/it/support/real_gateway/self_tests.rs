//! Self-tests of the real-gateway harness (skipped with `OPENCLAW_BRIDGE_SKIP_REAL=1`).

use std::fs;
use std::time::{Duration, Instant};

use crate::support::fake_model::FakeModel;

use super::install::env_flag;
use super::*;

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
