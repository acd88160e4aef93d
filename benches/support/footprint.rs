//! The release binary's footprint (idle RSS, start → ready) and reconnect
//! times after a gateway restart or drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::report::{list, median, min_max};
use super::{clients, procfs};
use crate::{GatewayProc, Plan, RESTART_EXPECTED_MS};
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
pub(crate) fn footprint(plan: &Plan, url: &str) -> (f64, f64) {
    println!("\n## Footprint: the release binary, `openclaw-bridge run`");
    // build.rs: whether the start-up code was linked first (README "Link order").
    println!(
        "link order (src/link-order.txt): {}",
        option_env!("OPENCLAW_BRIDGE_LINK_ORDER_STATE").unwrap_or("unknown")
    );
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
pub(crate) fn reconnect(plan: &Plan) -> (f64, f64) {
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
                .expect("subscribe")
                .expect("under the subscriber cap");
            let _ = up_tx.send(Instant::now());
            while let Some(item) = sub.recv().await {
                if item.name() == "bridge.connected" && up_tx.send(Instant::now()).is_err() {
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
