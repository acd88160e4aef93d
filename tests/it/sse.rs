//! `GET /v1/events` as a client sees it: filters, order, ids, resume with
//! `Last-Event-ID`, `bridge.gap`, lifecycle messages, a stalled subscriber,
//! clean end on shutdown; and a real agent run end to end.

use std::time::{Duration, Instant};

use openclaw_bridge::actors::broker::BrokerStats;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http_api::{metric, metrics_text};
use crate::support::app::{connected, connected_toml, spawn_app};
use crate::support::real_gateway::{shared, RealGateway};
use crate::support::sse_client::{no_timeout_client, open, SseClient, SseEnd};

const T: Duration = Duration::from_secs(10);

fn agent_ev(agent: &str, run: &str, mark: u32) -> Value {
    json!({"runId": run, "agentId": agent, "stream": "assistant", "ts": mark,
           "sessionKey": format!("agent:{agent}:main"), "data": {"text": "x"}, "mark": mark})
}

fn chat_ev(agent: &str, run: &str, mark: u32) -> Value {
    json!({"runId": run, "agentId": agent, "sessionKey": format!("agent:{agent}:main"),
           "seq": 1, "state": "delta", "mark": mark})
}

/// Read gateway events until one with payload `mark == last`; return all
/// marks seen, checking ids increase and the outer seq too.
async fn marks_until(sub: &mut SseClient, last: u64) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut last_id = 0;
    let mut last_seq = 0;
    loop {
        let e = sub.next_gateway_event().await;
        let id = e.id.expect("every event has an id");
        assert!(id > last_id, "ids increase: {last_id} then {id}");
        last_id = id;
        let v = e.json();
        if let Some(seq) = v["seq"].as_u64() {
            assert!(seq > last_seq, "gateway seq in order");
            last_seq = seq;
        }
        let mark = v["payload"]["mark"].as_u64().expect("mark");
        out.push((e.event.clone(), mark));
        if mark == last {
            return out;
        }
        assert!(out.len() < 1000, "runaway");
    }
}

// ---------------------------------------------------------------------------------------------
// Filters and order
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn subscribers_with_different_filters_get_exactly_their_events_in_order() {
    let (gw, app) = connected().await;
    let mut by_event_and_agent = open(&app, "/v1/events?event=chat&agent=a", &[]).await;
    let mut by_run = open(&app, "/v1/events?run=r2", &[]).await;
    let mut by_agent_two_events = open(&app, "/v1/events?agent=b&event=agent,%20chat", &[]).await;
    let mut everything = open(&app, "/v1/events", &[]).await;

    gw.send_event("agent", agent_ev("a", "r1", 1));
    gw.send_event("chat", chat_ev("a", "r1", 2));
    gw.send_event("agent", agent_ev("b", "r2", 3));
    gw.send_event("chat", chat_ev("b", "r2", 4));
    gw.send_event(
        "health",
        json!({"ok": true, "agents": [{"agentId": "main"}], "mark": 5}),
    );
    gw.send_event("chat", chat_ev("a", "r3", 6));
    gw.send_event("agent", agent_ev("b", "r3", 7));
    gw.send_event("tick", json!({"ts": 1, "mark": 8}));
    gw.send_event("chat", chat_ev("a", "r2", 9));
    gw.send_event("agent", agent_ev("a", "r2", 10));
    gw.send_event("presence", json!({"mark": 11}));

    let m = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(e, n)| (e.to_string(), *n)).collect()
    };
    assert_eq!(
        marks_until(&mut by_event_and_agent, 9).await,
        m(&[("chat", 2), ("chat", 6), ("chat", 9)])
    );
    assert_eq!(
        marks_until(&mut by_run, 10).await,
        m(&[("agent", 3), ("chat", 4), ("chat", 9), ("agent", 10)])
    );
    assert_eq!(
        marks_until(&mut by_agent_two_events, 7).await,
        m(&[("agent", 3), ("chat", 4), ("agent", 7)])
    );
    let all = marks_until(&mut everything, 11).await;
    assert_eq!(
        all.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
    // And nothing more for the filtered ones.
    for sub in [
        &mut by_event_and_agent,
        &mut by_run,
        &mut by_agent_two_events,
    ] {
        match sub.next_within(Duration::from_millis(300)).await {
            Err(SseEnd::Timeout) => {}
            other => panic!("an extra event: {other:?}"),
        }
    }
    // The payload is passed through untouched with the gateway seq.
    gw.send_event("agent", agent_ev("a", "r9", 12));
    let e = everything.next_gateway_event().await;
    let v = e.json();
    assert!(v["seq"].is_u64(), "{v}");
    assert_eq!(v["payload"], agent_ev("a", "r9", 12));
    app.stop().await;
}

#[actix_rt::test]
async fn multi_line_payloads_and_odd_event_names_keep_the_framing() {
    let (gw, app) = connected().await;
    let mut sub = open(&app, "/v1/events", &[]).await;
    // A gateway may send pretty-printed JSON: raw newlines inside the payload.
    gw.send_text(
        "{\"type\":\"event\",\"event\":\"agent\",\"payload\":{\n  \"runId\": \"nl\",\r\n  \"stream\": \"assistant\",\n  \"data\": {\"text\": \"a\\nb\"}\n}}",
    );
    gw.send_text(r#"{"type":"event","event":"odd\nevent: fake\ndata: {}","payload":{"x":1}}"#);
    gw.send_event("tick", json!({"after": true}));
    let e = sub.next_gateway_event().await;
    assert_eq!(e.event, "agent");
    assert_eq!(
        e.payload(),
        json!({"runId": "nl", "stream": "assistant", "data": {"text": "a\nb"}})
    );
    let e = sub.next_gateway_event().await;
    assert_ne!(e.event, "fake", "an event name cannot inject SSE fields");
    assert!(e.event.starts_with("odd"), "{e:?}");
    assert_eq!(e.payload(), json!({"x": 1}));
    let e = sub.next_gateway_event().await;
    assert_eq!(
        (e.event.as_str(), e.payload()),
        ("tick", json!({"after": true}))
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A stalled subscriber
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn a_stalled_subscriber_does_not_delay_the_other() {
    // A ring of 1000 events (3 MB here): far less than the flood below.
    let (gw, app) = connected_toml("[events]\nbuffer = 1000\n").await;
    let dropped_before = metric(
        &metrics_text(&app, None).await,
        "openclaw_bridge_sse_events_dropped_total",
        &[],
    )
    .unwrap_or(0.0);

    // The stalled one: asks for the stream and never reads a byte.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stalled = sock.connect(app.addr).await.expect("connect");
    stalled
        .write_all(
            format!(
                "GET /v1/events HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
                app.addr
            )
            .as_bytes(),
        )
        .await
        .expect("write request");
    let mut fast = open(&app, "/v1/events?event=load", &[]).await;
    let mut subscribed = false;
    for _ in 0..500 {
        if app
            .broker
            .send(BrokerStats)
            .await
            .expect("broker")
            .subscribers
            >= 2
        {
            subscribed = true;
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(subscribed, "both subscribed");

    // 5000 events of ~3 KB (15 MB, far more than the stalled socket's buffers
    // and queue), in batches of 100; each batch must reach the fast one
    // within a bound, whatever the stalled one does.
    let pad = "p".repeat(3000);
    let started = Instant::now();
    let mut last_id = 0;
    let mut worst = Duration::ZERO;
    for batch in 0..50u64 {
        let sent_at = Instant::now();
        for i in batch * 100..(batch + 1) * 100 {
            gw.send_event("load", json!({"i": i, "pad": pad}));
        }
        for i in batch * 100..(batch + 1) * 100 {
            let e = match fast.next_within(T).await {
                Ok(e) => e,
                Err(end) => panic!("fast subscriber stuck at event {i}: {end:?}"),
            };
            assert_eq!(e.event, "load", "{e:?}");
            assert_eq!(e.payload()["i"], i, "in order, none missing");
            let id = e.id.expect("id");
            assert!(id > last_id);
            last_id = id;
        }
        worst = worst.max(sent_at.elapsed());
    }
    eprintln!(
        "5000 events to the fast subscriber in {:?}, worst batch {worst:?}",
        started.elapsed()
    );
    assert!(
        worst < Duration::from_secs(5),
        "a batch of 100 took {worst:?}"
    );

    // The ring has moved past the stalled one.
    let stats = app.broker.send(BrokerStats).await.expect("broker");
    assert_eq!(stats.lagged_subscribers, 1, "{stats:?}");

    // When it reads again it is told what it missed before the next event.
    let reader = async {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut gap: Option<String> = None;
        loop {
            let n = stalled.read(&mut buf).await.expect("read");
            assert!(n > 0, "stream ended");
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            match &gap {
                None => {
                    if let Some(at) = text.find("event: bridge.gap\n") {
                        if let Some(end) = text[at..].find("\n\n") {
                            assert!(
                                !text[..at].contains("\"after\":true"),
                                "the gap message comes before the next event"
                            );
                            let data = text[at..at + end]
                                .lines()
                                .find_map(|l| l.strip_prefix("data: "))
                                .expect("gap data")
                                .to_owned();
                            gap = Some(data);
                            seen.drain(..at + end);
                            continue;
                        }
                    }
                    if seen.len() > 1 << 20 {
                        // keep a tail large enough to hold a gap message
                        seen.drain(..seen.len() - (64 << 10));
                    }
                }
                Some(data) => {
                    if text.contains("\"after\":true") {
                        return data.clone();
                    }
                    if seen.len() > 1 << 20 {
                        seen.drain(..seen.len() - (64 << 10));
                    }
                }
            }
        }
    };
    let sender = async {
        // Once the old backlog is out, send one more event.
        let mut n = 0;
        loop {
            let s = app.broker.send(BrokerStats).await.expect("broker");
            if s.lagged_subscribers == 1 {
                n += 1;
                gw.send_event("load", json!({"after": true}));
            }
            if s.lagged_subscribers == 0 || n > 50 {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (gap_data, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(reader, sender)
    })
    .await
    .expect("the stalled subscriber catches up");
    let gap: Value = serde_json::from_str(&gap_data).expect("gap data is JSON");
    assert!(gap["payload"]["dropped"].as_u64().unwrap_or(0) > 0, "{gap}");
    let bound = |k: &str| {
        gap["payload"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {gap}"))
    };
    assert!(bound("from") <= bound("to"), "{gap}");
    assert_eq!(bound("dropped"), bound("to") - bound("from") + 1, "{gap}");
    // Its loss is counted once it is known (the gap message went out).
    let stats = app.broker.send(BrokerStats).await.expect("broker");
    assert!(stats.dropped_total >= bound("dropped"), "{stats:?}");
    let dropped_after = metric(
        &metrics_text(&app, None).await,
        "openclaw_bridge_sse_events_dropped_total",
        &[],
    )
    .unwrap_or(0.0);
    assert!(
        dropped_after - dropped_before >= stats.dropped_total as f64,
        "sse_events_dropped_total {dropped_before} -> {dropped_after}, broker dropped {}",
        stats.dropped_total
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn reconnect_with_last_event_id_gets_exactly_the_missed_events() {
    let (gw, app) = connected().await;
    let mut watcher = open(&app, "/v1/events?event=resume", &[]).await;
    let mut first = open(&app, "/v1/events?event=resume", &[]).await;
    for i in 0..5 {
        gw.send_event("resume", json!({"mark": i}));
    }
    let mut last_seen = 0;
    for i in 0..5 {
        let e = first.next_gateway_event().await;
        assert_eq!(e.payload()["mark"], i);
        last_seen = e.id.expect("id");
    }
    drop(first);

    // Missed while away (an unrelated event in between).
    for i in 5..10 {
        gw.send_event("resume", json!({"mark": i}));
        gw.send_event("other", json!({"mark": 100 + i}));
    }
    let mut ids = Vec::new();
    for i in 0..10 {
        let e = watcher.next_gateway_event().await;
        assert_eq!(e.payload()["mark"], i);
        ids.push(e.id.expect("id"));
    }

    let last = last_seen.to_string();
    let mut resumed = open(
        &app,
        "/v1/events?event=resume",
        &[("Last-Event-ID", last.as_str())],
    )
    .await;
    let mut by_query = open(&app, &format!("/v1/events?event=resume&since={last}"), &[]).await;
    gw.send_event("resume", json!({"mark": 10}));
    for sub in [&mut resumed, &mut by_query] {
        let got = marks_until(sub, 10).await;
        assert_eq!(
            got.iter().map(|(_, m)| *m).collect::<Vec<_>>(),
            (5..=10).collect::<Vec<_>>(),
            "exactly the missed events, then live ones"
        );
    }
    // The replayed ids are the original ones.
    let mut again = open(
        &app,
        "/v1/events?event=resume",
        &[("Last-Event-ID", ids[7].to_string().as_str())],
    )
    .await;
    let e = again.next_gateway_event().await;
    assert_eq!(
        (e.id, e.payload()["mark"].clone()),
        (Some(ids[8]), json!(8))
    );

    // A resume from the newest id replays nothing.
    let newest = watcher
        .next_gateway_event()
        .await
        .id
        .expect("id")
        .to_string();
    let mut up_to_date = open(
        &app,
        "/v1/events?event=resume",
        &[("Last-Event-ID", newest.as_str())],
    )
    .await;
    gw.send_event("resume", json!({"mark": 11}));
    assert_eq!(up_to_date.next_gateway_event().await.payload()["mark"], 11);
    app.stop().await;
}

#[actix_rt::test]
async fn resume_from_an_evicted_id_starts_with_bridge_gap() {
    let (gw, app) = connected_toml("[events]\nbuffer = 5\n").await;
    let mut watcher = open(&app, "/v1/events", &[]).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        // Paced: the watcher must not fall a whole (5-event) ring behind.
        gw.send_event("ev", json!({"mark": i}));
        let e = watcher.next_gateway_event().await;
        assert_eq!(e.payload()["mark"], i);
        ids.push(e.id.expect("id"));
    }
    // The buffer holds marks 15..=19; resume after mark 1.
    let since = ids[1].to_string();
    let mut sub = open(&app, "/v1/events", &[("Last-Event-ID", since.as_str())]).await;
    let gap = sub.next().await;
    assert_eq!(gap.event, "bridge.gap", "{gap:?}");
    let p = gap.payload();
    assert_eq!(p["from"], ids[1] + 1, "{p}");
    assert_eq!(p["to"], ids[15] - 1, "{p}");
    assert_eq!(p["dropped"], ids[15] - 1 - ids[1], "{p}");
    let gap_id = gap.id.expect("the gap has an id");
    let mut prev = gap_id;
    for (mark, &id) in ids.iter().enumerate().skip(15) {
        let e = sub.next_gateway_event().await;
        assert_eq!((e.id, e.payload()["mark"].clone()), (Some(id), json!(mark)));
        assert!(id > prev);
        prev = id;
    }
    // The same with a filter: the gap still comes first.
    let mut filtered = open(&app, &format!("/v1/events?event=ev&since={}", ids[0]), &[]).await;
    assert_eq!(filtered.next().await.event, "bridge.gap");
    assert_eq!(filtered.next_gateway_event().await.payload()["mark"], 15);
    // Right at the edge of the buffer: no gap.
    let edge = ids[14].to_string();
    let mut sub = open(&app, "/v1/events", &[("Last-Event-ID", edge.as_str())]).await;
    let e = sub.next().await;
    assert_eq!(
        (e.event.as_str(), e.payload()["mark"].clone()),
        ("ev", json!(15))
    );
    app.stop().await;
}

#[actix_rt::test]
async fn bad_resume_ids_are_400() {
    let (_gw, app) = connected().await;
    let client = no_timeout_client();
    for (header, query) in [
        (Some("abc"), ""),
        (Some("-1"), ""),
        (None, "?since=1.5"),
        (Some("18446744073709551616"), ""),
        (Some("18446744073709551615"), ""),
    ] {
        let mut req = client.get(app.url(&format!("/v1/events{query}")));
        if let Some(h) = header {
            req = req.insert_header(("Last-Event-ID", h));
        }
        let mut res = tokio::time::timeout(T, req.send())
            .await
            .expect("answer within the timeout")
            .expect("reaches the bridge");
        assert_eq!(res.status().as_u16(), 400, "{header:?} {query}");
        let v: Value = res.json().await.expect("JSON error");
        assert_eq!(v["error"]["code"], "BRIDGE_BAD_REQUEST");
    }
    // The bridge still serves streams.
    let mut sub = open(&app, "/v1/events?since=0", &[]).await;
    assert_eq!(sub.next().await.event, "bridge.connected");
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Lifecycle and shutdown
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn lifecycle_messages_when_the_gateway_drops() {
    let (gw, app) = connected().await;
    // A filter does not hide lifecycle messages.
    let mut sub = open(&app, "/v1/events?event=agent", &[]).await;
    gw.send_event("agent", agent_ev("a", "r1", 1));
    let before = sub.next_gateway_event().await.id.expect("id");
    gw.drop_tcp();
    let down = sub.next().await;
    assert_eq!(down.event, "bridge.disconnected", "{down:?}");
    assert!(down.id.expect("id") > before);
    assert_eq!(down.json()["seq"], Value::Null);
    let up = sub.next().await;
    assert_eq!(up.event, "bridge.connected", "{up:?}");
    assert!(up.id > down.id);
    assert!(gw.wait_handshakes(2, T).await);
    gw.send_event("agent", agent_ev("a", "r2", 2));
    let e = sub.next_gateway_event().await;
    assert_eq!(e.payload()["mark"], 2);
    assert!(e.id > up.id, "ids keep increasing across sessions");
    app.stop().await;
}

#[actix_rt::test]
async fn a_burst_read_with_the_close_frame_comes_before_bridge_disconnected() {
    let (gw, app) = connected().await;
    let mut sub = open(&app, "/v1/events?event=agent", &[]).await;
    // The bridge reads frames in passes and hands a pass's events over at
    // its end: a pass that also holds the close frame still delivers every
    // event, in order, before the link change.
    for mark in 1..=40 {
        gw.send_event("agent", agent_ev("a", "r1", mark));
    }
    gw.close(1012, "service restart");
    let mut marks = Vec::new();
    loop {
        let e = sub.next().await;
        match e.event.as_str() {
            "agent" => marks.push(e.payload()["mark"].as_u64().expect("mark")),
            "bridge.disconnected" => break,
            "bridge.connected" if marks.is_empty() => {}
            _ => panic!("after {} events: {e:?}", marks.len()),
        }
    }
    assert_eq!(marks, (1..=40).collect::<Vec<u64>>());
    app.stop().await;
}

#[actix_rt::test]
async fn streams_end_cleanly_on_shutdown() {
    let (gw, app) = connected().await;
    let mut a = open(&app, "/v1/events", &[]).await;
    let mut b = open(&app, "/v1/events?event=agent&run=r1", &[]).await;
    gw.send_event("agent", agent_ev("a", "r1", 1));
    assert_eq!(a.next_gateway_event().await.payload()["mark"], 1);
    assert_eq!(b.next_gateway_event().await.payload()["mark"], 1);
    let started = Instant::now();
    tokio::time::timeout(openclaw_bridge::SHUTDOWN_BOUND, app.stop())
        .await
        .expect("stop does not hang on open streams");
    for sub in [&mut a, &mut b] {
        loop {
            match sub.next_within(Duration::from_secs(5)).await {
                Ok(e) if e.is_bridge() => continue,
                Ok(e) => panic!("unexpected event {e:?}"),
                Err(end) => {
                    assert_eq!(end, SseEnd::Closed, "the stream ends cleanly");
                    break;
                }
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown with two open streams took {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Real gateway end to end
// ---------------------------------------------------------------------------------------------

#[actix_rt::test]
async fn real_agent_run_streams_to_sse_and_shows_in_agents() {
    if !RealGateway::available() {
        return;
    }
    let gw = shared();
    let app = spawn_app(&gw.url(), Some(gw.token()), "").await;
    assert!(
        app.wait_connected(Duration::from_secs(30)).await,
        "{:?}",
        app.status().await
    );
    // Where the stream is now: resuming from here cannot miss the run's
    // first events, whenever they arrive relative to the RPC answer.
    let start_id = app
        .broker
        .send(BrokerStats)
        .await
        .expect("broker")
        .last_event_id;
    let key = uuid::Uuid::new_v4().to_string();
    let (status, body) = app
        .rpc(json!({"method": "agent", "timeoutMs": 30000, "params": {
            "message": "sse end to end SLOW", "agentId": "main",
            "sessionKey": "agent:main:main", "idempotencyKey": key}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payload"]["status"], "accepted", "{body}");
    let run_id = body["payload"]["runId"].as_str().expect("runId").to_owned();

    let since = start_id.to_string();
    let mut sub = open(
        &app,
        &format!("/v1/events?run={run_id}"),
        &[("Last-Event-ID", since.as_str())],
    )
    .await;
    let mut by_agent = open(
        &app,
        "/v1/events?event=agent&agent=main",
        &[("Last-Event-ID", since.as_str())],
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut streams = std::collections::BTreeSet::new();
    let mut saw_running = false;
    let mut saw_end = false;
    let mut last_id = start_id;
    while Instant::now() < deadline {
        let e = match sub.next_within(Duration::from_secs(30)).await {
            Ok(e) => e,
            Err(end) => panic!("run {run_id}: stream stopped before the end: {end:?}"),
        };
        if e.is_bridge() {
            assert_ne!(e.event, "bridge.gap");
            continue;
        }
        let id = e.id.expect("id");
        assert!(id > last_id);
        last_id = id;
        let p = e.payload();
        assert_eq!(p["runId"], run_id.as_str(), "only this run: {e:?}");
        if e.event != "agent" {
            continue;
        }
        let stream = p["stream"].as_str().unwrap_or_default().to_owned();
        streams.insert(stream.clone());
        if stream == "assistant" && !saw_running {
            // Mid-run (SLOW streams for ~3 s): the registry says running.
            let (status, agent) = app.get("/v1/agents/main").await;
            assert_eq!(status, 200);
            if agent["status"] == "running" {
                assert_eq!(agent["current_run_id"], run_id.as_str(), "{agent}");
                saw_running = true;
            }
        }
        if stream == "lifecycle" && p["data"]["phase"] == "end" {
            saw_end = true;
            break;
        }
    }
    assert!(
        saw_end,
        "lifecycle end of {run_id} not seen; streams {streams:?}"
    );
    assert!(streams.contains("assistant"), "{streams:?}");
    assert!(
        saw_running,
        "/v1/agents/main never said running during the run"
    );

    // After the end: idle, with the run recorded.
    let mut agent = Value::Null;
    for _ in 0..100 {
        agent = app.get("/v1/agents/main").await.1;
        if agent["status"] == "idle" {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(agent["status"], "idle", "{agent}");
    assert_eq!(agent["current_run_id"], Value::Null);
    assert!(
        agent["runs"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["run_id"] == run_id.as_str() && r["status"] == "ok")),
        "{agent}"
    );

    // The agent filter sees the same run.
    let mut seen = false;
    while let Ok(e) = by_agent.next_within(Duration::from_secs(5)).await {
        if e.event == "agent" && e.payload()["runId"] == run_id.as_str() {
            seen = true;
            break;
        }
    }
    assert!(seen, "?agent=main did not get the run's agent events");
    app.stop().await;
}
