//! Gateways are isolated (issue 14, item 5): each gateway's stack runs on
//! its own thread, so a flood from one gateway cannot starve or overflow
//! another's.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::http_api::{metric, metrics_text};
use crate::support::app::{multi_settings, spawn_with, Gw};
use crate::support::fake_gateway::{FakeGateway, FakeOptions};
use crate::support::sse_client::open;

const T: Duration = Duration::from_secs(20);

#[actix_rt::test]
async fn a_flood_on_one_gateway_leaves_the_other_untouched() {
    let flood = FakeGateway::start(FakeOptions::default());
    // The calm gateway ticks every 150 ms: its watchdog (2 ticks) trips if
    // its connection is not served for 300 ms.
    let calm = FakeGateway::start(FakeOptions {
        tick_interval_ms: 150,
        send_ticks: true,
        ..Default::default()
    });
    let gw = |id, url| Gw {
        id,
        url,
        token: None,
        required: true,
    };
    let settings = multi_settings(
        &[gw("iso-flood", flood.url()), gw("iso-calm", calm.url())],
        "",
    );
    let app = spawn_with(settings).await;
    assert!(app.wait_connected(T).await);
    let mut calm_events = open(&app, "/v1/gateways/iso-calm/events?event=calm.ping", &[]).await;

    // The flood: agent events as fast as the fake can write them, for
    // several seconds of the bridge's time.
    let big = "x".repeat(2048);
    for i in 0..150_000u64 {
        flood.send_event(
            "agent",
            json!({"runId": format!("f{}", i % 64), "stream": "assistant", "agentId": "main",
                   "sessionKey": "agent:main:main", "seq": i, "ts": 1_700_000_000_000u64,
                   "data": {"text": big}}),
        );
    }
    // Meanwhile the calm gateway: events and RPCs at a steady pace.
    const CALM: u64 = 100;
    let started = Instant::now();
    for n in 0..CALM {
        calm.send_event("calm.ping", json!({"n": n}));
        if n % 10 == 0 {
            let (status, body) = app
                .post(
                    "/v1/gateways/iso-calm/rpc",
                    json!({"method": "echo", "params": {"n": n}}),
                )
                .await;
            assert_eq!(
                (status, &body["payload"]),
                (200, &json!({"n": n})),
                "{body}"
            );
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..CALM {
        let e = calm_events.next_gateway_event().await;
        assert_eq!(
            e.payload(),
            json!({"n": n}),
            "calm events arrive, all, in order"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        calm.connections_total(),
        1,
        "the calm gateway's session never dropped (watchdog) during the flood"
    );
    let text = metrics_text(&app, None).await;
    for to in ["registry", "broker"] {
        assert_eq!(
            metric(
                &text,
                "openclaw_bridge_events_undelivered_total",
                &["gateway=\"iso-calm\"", &format!("to=\"{to}\"")]
            )
            .unwrap_or(0.0),
            0.0,
            "nothing dropped on the calm gateway"
        );
    }
}
