//! The event ring as SSE clients see it: a short stall loses nothing, a
//! closed stream is gone at once whatever its filter, and the number of
//! streams is bounded (`http.max_sse_subscribers`).

use std::time::{Duration, Instant};

use actix_http::ws::Message;
use openclaw_bridge::actors::broker::BrokerStats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http_api::{metric, metrics_text};
use crate::support::app::{connected, connected_with, test_settings, TestApp};
use crate::support::fake_gateway::FakeOptions;
use crate::support::sse_client::open;

const T: Duration = Duration::from_secs(10);

#[actix_rt::test]
async fn a_subscriber_paused_10ms_during_a_flood_gets_every_event_in_order() {
    // Default settings: the ring's span, not a per-subscriber queue, is what
    // a stalled reader has.
    let (gw, app) = connected().await;
    let mut sub = open(&app, "/v1/events?event=flood", &[]).await;
    const N: u64 = 50_000;
    let flood: Vec<Message> = (0..N)
        .map(|i| {
            Message::Text(
                format!(r#"{{"type":"event","event":"flood","payload":{{"i":{i}}}}}"#).into(),
            )
        })
        .collect();
    gw.send_messages(flood);
    let started = Instant::now();
    let mut next = 0u64;
    while next < N {
        let e = sub.next().await;
        assert_ne!(e.event, "bridge.gap", "after {next} events: {e:?}");
        if e.event != "flood" {
            continue;
        }
        assert_eq!(e.payload()["i"], next, "in order, none missing");
        next += 1;
        if next == N / 5 {
            // The pause: as if the reader's thread were descheduled.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    eprintln!("{N} events read in {:?}", started.elapsed());
    let stats = app.broker.send(BrokerStats).await.expect("broker");
    assert_eq!(stats.dropped_total, 0, "{stats:?}");
    app.stop().await;
}

/// Open `/v1/events` on a raw socket with a filter that matches nothing,
/// wait for the stream's first bytes, return the socket.
async fn connect_nothing(app: &TestApp) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    s.write_all(
        format!(
            "GET /v1/events?event=matches-nothing HTTP/1.1\r\nHost: {}\r\n\r\n",
            app.addr
        )
        .as_bytes(),
    )
    .await
    .expect("write request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(": connected") {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .expect("stream head within the timeout")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s
}

async fn subscribers_gauge(app: &TestApp) -> f64 {
    metric(
        &metrics_text(app, None).await,
        "openclaw_bridge_sse_subscribers",
        &[],
    )
    .unwrap_or(-1.0)
}

#[actix_rt::test]
async fn ten_thousand_closed_streams_that_match_nothing_leave_no_subscriber() {
    let (_gw, app) = connected().await;
    const TOTAL: usize = 10_000;
    const AT_ONCE: usize = 50;
    for _ in 0..TOTAL / AT_ONCE {
        let socks =
            futures_util::future::join_all((0..AT_ONCE).map(|_| connect_nothing(&app))).await;
        drop(socks);
    }
    let closed_at = Instant::now();
    loop {
        let gauge = subscribers_gauge(&app).await;
        let stats = app.broker.send(BrokerStats).await.expect("broker");
        if gauge == 0.0 && stats.subscribers == 0 {
            break;
        }
        assert!(
            closed_at.elapsed() < Duration::from_secs(1),
            "still counted a second after the last close: gauge {gauge}, {stats:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}

#[actix_rt::test]
async fn streams_past_the_maximum_get_503_overloaded_with_retry_after() {
    let (_gw, app) = connected_with(FakeOptions::default(), |gw| {
        let mut settings = test_settings(&gw.url(), None, "");
        settings.http.max_sse_subscribers = 2;
        settings
    })
    .await;
    let first = connect_nothing(&app).await;
    let _second = connect_nothing(&app).await;
    let res = app
        .client
        .get(app.url("/v1/events"))
        .send()
        .await
        .expect("answered");
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(
        res.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let mut res = res;
    let body: serde_json::Value = res.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], "BRIDGE_OVERLOADED", "{body}");
    // A closed stream frees its place at once.
    drop(first);
    let deadline = Instant::now() + T;
    loop {
        let res = app
            .client
            .get(app.url("/v1/events"))
            .send()
            .await
            .expect("answered");
        if res.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place is never given");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}
