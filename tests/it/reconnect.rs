//! Resilience against the fake gateway: every way a session can end, what the
//! bridge reports, and when it tries again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openclaw_bridge::actors::supervisor::RetryNow;
use openclaw_bridge::actors::Send;
use serde_json::json;

use crate::http_api::metric;
use crate::support::app::{connected, spawn_app, spawn_app_env, TestApp};
use crate::support::fake_gateway::{ConnectMode, FakeGateway, FakeOptions};

const T: Duration = Duration::from_secs(10);

async fn last_error_code(app: &TestApp) -> String {
    app.status()
        .await
        .last_error
        .map(|e| e.code)
        .unwrap_or_default()
}

/// A fake gateway started with `opts` and a bridge pointed at it, `env`
/// applied over the test settings.
async fn fake_and_bridge(opts: FakeOptions, env: &[(&str, &str)]) -> (FakeGateway, TestApp) {
    let gw = FakeGateway::start(opts);
    let app = spawn_app_env(&gw.url(), None, env).await;
    (gw, app)
}

#[actix_rt::test]
async fn an_abrupt_drop_reconnects_and_says_why() {
    let (gw, app) = connected().await;
    gw.drop_tcp();
    assert!(gw.wait_handshakes(2, T).await, "reconnected by itself");
    assert!(app.wait_connected(T).await);
    assert_eq!(last_error_code(&app).await, "connection_lost");
    app.stop().await;
}

#[actix_rt::test]
async fn every_close_code_is_reported_and_retried() {
    let (gw, app) = connected().await;
    let mut n = 1;
    for (code, reason) in [
        (1000, ""),
        (1001, "going away"),
        (1008, "slow consumer"),
        (1011, "oops"),
        (1012, "service restart"),
        (1013, "gateway starting"),
        (4000, "tick timeout"),
        (4001, "device removed"),
    ] {
        gw.close(code, reason);
        n += 1;
        assert!(
            gw.wait_handshakes(n, T).await,
            "no reconnect after close {code}"
        );
        assert!(app.wait_connected(T).await);
        // The close is what the status names (waited for: under load the
        // check can run between the handshake the fake counts and the
        // status the supervisor reports).
        let want = format!("close_{code}");
        let deadline = Instant::now() + T;
        let mut status = app.status().await;
        while status.last_error.as_ref().map(|e| e.code.as_str()) != Some(want.as_str())
            && Instant::now() < deadline
        {
            actix_rt::time::sleep(Duration::from_millis(10)).await;
            status = app.status().await;
        }
        let e = status.last_error.clone().expect("last error");
        assert_eq!(
            e.code,
            want,
            "status {status:?}; the fake saw {} connections, {} handshakes",
            gw.connections_total(),
            gw.handshakes_total()
        );
        assert_eq!(e.close_code, Some(code));
        assert!(e.message.contains(reason), "{}", e.message);
    }
    // 1002 (protocol mismatch) cannot be fixed by retrying: parked.
    gw.close(1002, "protocol mismatch");
    assert!(
        app.wait_state("parked", T).await,
        "{:?}",
        app.status().await
    );
    app.stop().await;
}

/// Gaps between accepted connections, in order.
fn gaps(gw: &FakeGateway) -> Vec<Duration> {
    gw.connect_times().windows(2).map(|w| w[1] - w[0]).collect()
}

#[actix_rt::test]
async fn accept_then_drop_loops_follow_the_jittered_schedule() {
    let gw = FakeGateway::start(FakeOptions {
        answer_connect: ConnectMode::DropTcp,
        ..Default::default()
    });
    // initial 20 ms, max 300 ms
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(gw.wait_connections(12, T).await);
    app.stop().await;
    let gaps = gaps(&gw);
    let slack = Duration::from_millis(40);
    for (i, gap) in gaps.iter().enumerate() {
        let ceiling = Duration::from_millis((20u64 << i.min(20)).min(300));
        assert!(
            *gap <= ceiling + slack,
            "retry {i}: waited {gap:?}, ceiling {ceiling:?}: {gaps:?}"
        );
    }
    // Full jitter: the waits are spread, not the same every time.
    let distinct: std::collections::HashSet<u128> = gaps.iter().map(|g| g.as_millis()).collect();
    assert!(distinct.len() >= 4, "{gaps:?}");
    // Backing off: once at the cap, waits average well above the initial delay.
    let late: Vec<&Duration> = gaps.iter().skip(5).collect();
    let mean = late.iter().map(|d| d.as_secs_f64()).sum::<f64>() / late.len() as f64;
    assert!(mean > 0.06, "mean wait at the cap {mean}s: {gaps:?}");
}

#[actix_rt::test]
async fn a_session_that_drops_at_once_does_not_reset_the_backoff_but_a_stable_one_does() {
    let (gw, app) = fake_and_bridge(
        FakeOptions::default(),
        &[("OPENCLAW_BRIDGE__RECONNECT__STABLE_AFTER_MS", "300")],
    )
    .await;
    // Five sessions that drop right after hello-ok: the attempt count grows.
    for n in 1..=5 {
        assert!(gw.wait_handshakes(n, T).await);
        gw.drop_tcp();
    }
    assert!(gw.wait_handshakes(6, T).await);
    assert!(app.status().await.attempt >= 4, "{:?}", app.status().await);
    // A stable session resets it: the next reconnect is quick.
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.status().await.attempt, 0);
    let dropped_at = Instant::now();
    gw.drop_tcp();
    assert!(gw.wait_handshakes(7, T).await);
    let reconnect = *gw.connect_times().last().unwrap() - dropped_at;
    assert!(
        reconnect < Duration::from_millis(60),
        "after a stable session the first retry waits at most initial_ms (20 ms): {reconnect:?}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn challenge_never_sent_times_out_and_retries() {
    let (gw, app) = fake_and_bridge(
        FakeOptions {
            send_challenge: false,
            ..Default::default()
        },
        &[("OPENCLAW_BRIDGE__GATEWAY__HANDSHAKE_TIMEOUT_MS", "200")],
    )
    .await;
    assert!(gw.wait_connections(2, T).await, "retried after the timeout");
    assert_eq!(last_error_code(&app).await, "challenge_timeout");
    let (status, body) = app.rpc(json!({"method": "health"})).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "BRIDGE_NOT_CONNECTED");
    app.stop().await;
}

#[actix_rt::test]
async fn hello_never_sent_times_out_and_retries() {
    let (gw, app) = fake_and_bridge(
        FakeOptions {
            answer_connect: ConnectMode::Never,
            ..Default::default()
        },
        &[("OPENCLAW_BRIDGE__GATEWAY__HANDSHAKE_TIMEOUT_MS", "200")],
    )
    .await;
    assert!(gw.wait_connections(2, T).await);
    assert_eq!(last_error_code(&app).await, "hello_timeout");
    app.stop().await;
}

#[actix_rt::test]
async fn silence_trips_the_watchdog() {
    let gw = FakeGateway::start(FakeOptions {
        tick_interval_ms: 150,
        send_ticks: true,
        ..Default::default()
    });
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(app.wait_connected(T).await);
    // Ticks keep it alive well past 2 × tick.
    actix_rt::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.handshakes_total(), 1);
    let silent_at = Instant::now();
    gw.go_silent();
    assert!(
        gw.wait_handshakes(2, T).await,
        "reconnected after the watchdog"
    );
    let took = silent_at.elapsed();
    // Silence counts from the last tick before go_silent (up to one tick
    // interval earlier), so the watchdog (2 × 150 ms) fires 150–300 ms later.
    assert!(
        took >= Duration::from_millis(140) && took < Duration::from_secs(2),
        "watchdog after {took:?}"
    );
    assert_eq!(last_error_code(&app).await, "watchdog_expired");
    app.stop().await;
}

#[actix_rt::test]
async fn an_oversized_frame_is_counted_and_the_session_goes_on() {
    let (gw, app) = connected().await;
    let huge = "x".repeat(65 * 1024 * 1024);
    gw.send_event("agent", json!({"runId": "big", "data": {"text": huge}}));
    drop(huge);
    gw.send_event("after.big", json!({"ok": 1}));
    let deadline = Instant::now() + T;
    let mut metrics = String::new();
    while Instant::now() < deadline {
        metrics = app.metrics_text().await;
        if metric(
            &metrics,
            "openclaw_bridge_bad_frames_total",
            &["kind=\"oversized\""],
        )
        .is_some()
            && metrics.contains("event=\"after.big\"")
        {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metric(
            &metrics,
            "openclaw_bridge_bad_frames_total",
            &["gateway=\"default\"", "kind=\"oversized\""]
        ) == Some(1.0),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "openclaw_bridge_events_total",
            &["gateway=\"default\"", "event=\"after.big\""]
        ) == Some(1.0),
        "the next event still arrives"
    );
    assert_eq!(gw.handshakes_total(), 1, "no reconnect needed");
    app.stop().await;
}

#[actix_rt::test]
async fn an_announced_restart_is_retried_right_after_the_expected_time() {
    let (gw, app) = fake_and_bridge(
        FakeOptions::default(),
        &[
            ("OPENCLAW_BRIDGE__RECONNECT__MAX_MS", "30000"),
            ("OPENCLAW_BRIDGE__RECONNECT__INITIAL_MS", "5000"),
        ],
    )
    .await;
    assert!(app.wait_connected(T).await);
    let boot1 = app.status().await.gateway.boot_id;
    gw.send_event(
        "shutdown",
        json!({"reason": "gateway restarting", "restartExpectedMs": 300}),
    );
    gw.stop_listening();
    gw.restart();
    actix_rt::time::sleep(Duration::from_millis(700)).await;
    gw.resume_listening().unwrap();
    let back = Instant::now();
    assert!(gw.wait_handshakes(2, T).await);
    // With initial_ms = 5 s a backoff step could wait 5 s; the restart hint
    // makes it poll instead.
    assert!(
        back.elapsed() < Duration::from_millis(400),
        "ready {:?} after the gateway came back",
        back.elapsed()
    );
    assert!(app.wait_connected(T).await);
    assert_ne!(app.status().await.gateway.boot_id, boot1, "new bootId seen");
    app.stop().await;
}

#[actix_rt::test]
async fn the_startup_window_honours_retry_after() {
    let gw = FakeGateway::start(FakeOptions {
        answer_connect: ConnectMode::starting(),
        ..Default::default()
    });
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(gw.wait_connections(3, T).await);
    gw.set_connect_mode(ConnectMode::Hello);
    assert!(app.wait_connected(T).await);
    for gap in gaps(&gw).iter().take(2) {
        assert!(
            *gap >= Duration::from_millis(480),
            "retried sooner than retryAfterMs (500): {gap:?}"
        );
    }
    app.stop().await;
}

#[actix_rt::test]
async fn a_rate_limit_is_never_retried_sooner_than_retry_after() {
    let mode = ConnectMode::Reject {
        error: json!({"code": "INVALID_REQUEST", "message": "unauthorized: too many failed authentication attempts (retry later)",
            "details": {"code": "AUTH_RATE_LIMITED", "authReason": "rate_limited", "recommendedNextStep": "wait_then_retry"},
            "retryable": true, "retryAfterMs": 1500}),
        close_code: 1008,
        reason: "unauthorized: too many failed authentication attempts (retry later)".into(),
    };
    let (gw, app) = fake_and_bridge(
        FakeOptions {
            answer_connect: mode,
            ..Default::default()
        },
        &[("OPENCLAW_BRIDGE__RECONNECT__PARK_RETRY_MS", "100")],
    )
    .await;
    assert!(app.wait_state("parked", T).await);
    let s = app.status().await;
    assert!(s.next_attempt_in_ms.unwrap() > 1300, "{s:?}");
    assert_eq!(s.last_error.unwrap().code, "AUTH_RATE_LIMITED");
    actix_rt::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(gw.connections_total(), 1, "retried before retryAfterMs");
    assert!(
        gw.wait_connections(2, T).await,
        "retried after retryAfterMs"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn pairing_required_parks_with_the_approve_command_and_sighup_retries() {
    let gw = FakeGateway::start(FakeOptions {
        answer_connect: ConnectMode::Reject {
            error: json!({"code": "NOT_PAIRED", "message": "pairing required: device is not approved yet",
                "details": {"code": "PAIRING_REQUIRED", "reason": "not-paired", "requestId": "0d5219c5-d0ab"}}),
            close_code: 1008,
            reason: "pairing required".into(),
        },
        ..Default::default()
    });
    let app = spawn_app(&gw.url(), None, "").await;
    assert!(app.wait_state("parked", T).await);
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(
        body["last_error"]["action"]
            .as_str()
            .unwrap()
            .contains("openclaw devices approve 0d5219c5-d0ab"),
        "{body}"
    );
    // Approved: SIGHUP (RetryNow) retries at once instead of after park_retry_ms (60 s).
    gw.set_connect_mode(ConnectMode::Hello);
    app.supervisor.send(RetryNow).await.unwrap();
    assert!(app.wait_connected(Duration::from_secs(2)).await);
    app.stop().await;
}

/// 1000 random drops while 50 callers send continuously: every request
/// resolves exactly once, none outlives its timeout, the state recovers.
#[actix_rt::test]
async fn chaos_every_request_resolves_exactly_once() {
    let (gw, app) = fake_and_bridge(
        FakeOptions::default(),
        &[
            ("OPENCLAW_BRIDGE__RECONNECT__INITIAL_MS", "1"),
            ("OPENCLAW_BRIDGE__RECONNECT__MAX_MS", "4"),
            ("OPENCLAW_BRIDGE__RECONNECT__STABLE_AFTER_MS", "60000"),
        ],
    )
    .await;
    assert!(app.wait_connected(T).await);
    let rss_before = rss_kib();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let answered_ok = Arc::new(AtomicUsize::new(0));
    let answered_err = Arc::new(AtomicUsize::new(0));
    let hung = Arc::new(AtomicUsize::new(0));
    let timeout = Duration::from_millis(800);
    let mut callers = Vec::new();
    for c in 0..50u64 {
        let (sup, done, sent, ok, err, hung) = (
            app.supervisor.clone(),
            done.clone(),
            sent.clone(),
            answered_ok.clone(),
            answered_err.clone(),
            hung.clone(),
        );
        callers.push(actix_rt::spawn(async move {
            let mut i = 0u64;
            while !done.load(Ordering::Relaxed) {
                let n = c * 1_000_000 + i;
                i += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                let call = sup.send(Send::new("echo", Some(json!({"n": n}))).timeout(timeout));
                match tokio::time::timeout(timeout + Duration::from_millis(700), call).await {
                    Ok(Ok(Ok(payload))) => {
                        let v: serde_json::Value = serde_json::from_str(payload.get()).unwrap();
                        assert_eq!(v["n"], n, "an answer crossed to another request");
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(Err(_))) => {
                        err.fetch_add(1, Ordering::Relaxed);
                        // Not connected: do not spin.
                        actix_rt::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok(Err(mailbox)) => panic!("supervisor mailbox error: {mailbox}"),
                    Err(_) => {
                        hung.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    let mut drops = 0usize;
    while drops < 1000 && started.elapsed() < Duration::from_secs(90) {
        let h = gw.handshakes_total();
        // Wait for the session to be up again (bounded), let traffic flow a bit, then break it.
        if !gw
            .wait_handshakes(h.max(drops + 1), Duration::from_secs(5))
            .await
        {
            break;
        }
        actix_rt::time::sleep(Duration::from_micros(fastrand::u64(0..3000))).await;
        match fastrand::u8(0..4) {
            0 => gw.drop_tcp(),
            1 => gw.reset_tcp(),
            2 => gw.close(1011, "chaos"),
            _ => gw.close(1001, "going away"),
        }
        drops += 1;
    }
    done.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let (s, ok, err, hung) = (
        sent.load(Ordering::Relaxed),
        answered_ok.load(Ordering::Relaxed),
        answered_err.load(Ordering::Relaxed),
        hung.load(Ordering::Relaxed),
    );
    eprintln!(
        "chaos: {drops} drops in {:?}; {s} requests: {ok} ok, {err} failed, {hung} hung",
        started.elapsed()
    );
    assert_eq!(drops, 1000, "the fault loop did not complete");
    assert_eq!(hung, 0, "requests outlived their timeout");
    assert_eq!(ok + err, s, "every request resolves exactly once");
    assert!(ok > 1000, "requests went through between the drops: {ok}");
    // It recovers: a session after the last drop, and requests work again.
    assert!(gw.wait_handshakes(drops + 1, T).await);
    assert!(app.wait_connected(T).await);
    let (status, _) = app.rpc(json!({"method": "health"})).await;
    assert_eq!(status, 200);
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 200 * 1024,
        "memory grew by {grown} KiB over the run"
    );
    app.stop().await;
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

#[actix_rt::test]
async fn a_plain_stop_backs_off_but_an_announced_restart_polls() {
    // Announced: shutdown with restartExpectedMs, then 1012 — polls, the
    // backoff exponent stays 0.
    let (gw, app) = connected().await;
    gw.send_event(
        "shutdown",
        json!({"reason": "gateway restarting", "restartExpectedMs": 100}),
    );
    gw.stop_listening();
    gw.close_all(1012, "service restart");
    actix_rt::time::sleep(Duration::from_millis(1200)).await;
    let s = app.status().await;
    assert_eq!(
        s.attempt, 0,
        "an announced restart is polled, not backed off: {s:?}"
    );
    assert!(s.next_attempt_in_ms.unwrap_or(u64::MAX) <= 200, "{s:?}");
    gw.resume_listening().unwrap();
    assert!(app.wait_connected(T).await);
    app.stop().await;

    // Plain stop: 1012 with no restartExpectedMs — ordinary backoff.
    let (gw, app) = connected().await;
    gw.send_event("shutdown", json!({"reason": "gateway stopping"}));
    gw.stop_listening();
    gw.close_all(1012, "service restart");
    actix_rt::time::sleep(Duration::from_millis(1200)).await;
    let s = app.status().await;
    assert!(
        s.attempt >= 3,
        "a plain stop backs off (attempts counted): {s:?}"
    );
    app.stop().await;
}
