use super::*;
use crate::protocol::{decode, GatewayEvent, Inbound};
use actix::Actor;
use serde_json::{json, Value};

fn ev(name: &str, agent: &str, run: &str) -> EventMsg {
    ev_sized(name, agent, run, 0)
}

fn ev_sized(name: &str, agent: &str, run: &str, pad: usize) -> EventMsg {
    let pad = "p".repeat(pad);
    let text = format!(
        r#"{{"type":"event","event":"{name}","seq":1,"payload":{{"runId":"{run}","agentId":"{agent}","stream":"assistant","pad":"{pad}"}}}}"#
    );
    match decode(&text).unwrap() {
        Inbound::Event(f) => EventMsg(Arc::new(GatewayEvent::from_frame(&f).0)),
        _ => panic!(),
    }
}

async fn subscribe(
    b: &actix::Addr<EventBroker>,
    filter: Filter,
    since: Option<u64>,
    label: &str,
) -> Subscription {
    b.send(Subscribe {
        filter,
        since,
        label: label.into(),
    })
    .await
    .unwrap()
    .unwrap()
}

fn drain(s: &mut Subscription) -> Vec<Arc<BrokerItem>> {
    std::iter::from_fn(|| s.try_recv().ok()).collect()
}

fn ids(s: &mut Subscription) -> Vec<u64> {
    drain(s).iter().map(|i| i.id).collect()
}

fn payload(item: &BrokerItem) -> Value {
    serde_json::from_str(item.payload()).unwrap()
}

#[actix_rt::test]
async fn filters_and_order() {
    let b = EventBroker::new(100).start();
    let mut all = subscribe(&b, Filter::default(), None, "all").await;
    let mut only_b = subscribe(
        &b,
        Filter {
            agent: Some("b".into()),
            ..Default::default()
        },
        None,
        "b",
    )
    .await;
    for (a, r) in [("a", "r1"), ("b", "r2"), ("a", "r1"), ("b", "r3")] {
        b.send(ev("agent", a, r)).await.unwrap();
    }
    assert_eq!(ids(&mut all), vec![1, 2, 3, 4]);
    let got: Vec<(u64, Option<String>)> = drain(&mut only_b)
        .iter()
        .map(|i| (i.id, i.run_id().map(str::to_owned)))
        .collect();
    assert_eq!(got, vec![(2, Some("r2".into())), (4, Some("r3".into()))]);
}

#[actix_rt::test]
async fn a_subscriber_behind_by_less_than_the_ring_misses_nothing() {
    // The default ring (10 000 events); 5 000 behind is five times what a
    // per-subscriber queue of the old design (1024) held.
    let b = EventBroker::new(10_000).start();
    let mut slow = subscribe(&b, Filter::default(), None, "slow").await;
    let mut fast = subscribe(&b, Filter::default(), None, "fast").await;
    for i in 0..5_000 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
        assert_eq!(fast.recv().await.unwrap().id, i + 1);
    }
    let stats = b.send(BrokerStats).await.unwrap();
    assert_eq!((stats.lagged_subscribers, stats.dropped_total), (0, 0));
    assert_eq!(ids(&mut slow), (1..=5_000).collect::<Vec<_>>());
}

#[actix_rt::test]
async fn a_subscriber_the_ring_moved_past_gets_the_exact_gap() {
    let b = EventBroker::new(3).start();
    let mut slow = subscribe(&b, Filter::default(), None, "slow").await;
    for i in 0..5 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
    }
    let stats = b.send(BrokerStats).await.unwrap();
    assert_eq!(stats.lagged_subscribers, 1);
    let got = drain(&mut slow);
    assert_eq!(got[0].name(), "bridge.gap");
    assert_eq!(payload(&got[0]), json!({"from": 1, "to": 2, "dropped": 2}));
    let rest: Vec<u64> = got[1..].iter().map(|i| i.id).collect();
    assert_eq!(rest, vec![3, 4, 5]);
    let stats = b.send(BrokerStats).await.unwrap();
    assert_eq!((stats.lagged_subscribers, stats.dropped_total), (0, 2));
}

#[actix_rt::test]
async fn the_ring_is_bounded_in_bytes_and_keeps_the_newest() {
    let b = EventBroker::new(1000).buffer_bytes(10_000).start();
    for i in 0..20 {
        b.send(ev_sized("agent", "a", &format!("r{i}"), 1000))
            .await
            .unwrap();
    }
    let stats = b.send(BrokerStats).await.unwrap();
    assert!(stats.buffered_bytes <= 10_000, "{stats:?}");
    assert!(stats.buffered >= 5 && stats.buffered < 20, "{stats:?}");
    // One event over the whole bound is still kept (alone), so it can be read.
    b.send(ev_sized("agent", "a", "big", 20_000)).await.unwrap();
    let stats = b.send(BrokerStats).await.unwrap();
    assert_eq!(stats.buffered, 1, "{stats:?}");
    let mut s = subscribe(&b, Filter::default(), Some(20), "x").await;
    let got = drain(&mut s);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].run_id(), Some("big"));
}

#[actix_rt::test]
async fn subscribers_are_counted_until_dropped_whatever_the_filter() {
    let b = EventBroker::new(10).max_subscribers(2).start();
    let nothing = Filter {
        events: vec!["never".into()],
        ..Default::default()
    };
    let s1 = subscribe(&b, nothing.clone(), None, "1").await;
    let s2 = subscribe(&b, nothing.clone(), None, "2").await;
    let over = b
        .send(Subscribe {
            filter: nothing.clone(),
            since: None,
            label: "3".into(),
        })
        .await
        .unwrap();
    assert_eq!(over.unwrap_err(), Overloaded { max: 2 });
    assert_eq!(b.send(BrokerStats).await.unwrap().subscribers, 2);
    drop(s1);
    assert_eq!(b.send(BrokerStats).await.unwrap().subscribers, 1);
    drop(s2);
    assert_eq!(b.send(BrokerStats).await.unwrap().subscribers, 0);
    let _s3 = subscribe(&b, nothing, None, "3").await;
}

#[actix_rt::test]
async fn resume_from_buffer_and_gap_when_evicted() {
    let b = EventBroker::new(3).start();
    for i in 0..5 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
    }
    // ids 3,4,5 are buffered
    let mut s = subscribe(&b, Filter::default(), Some(3), "x").await;
    assert_eq!(ids(&mut s), vec![4, 5]);
    let mut s = subscribe(&b, Filter::default(), Some(0), "y").await;
    let got = drain(&mut s);
    assert_eq!(got[0].name(), "bridge.gap");
    let v = payload(&got[0]);
    assert_eq!((v["from"].as_u64(), v["to"].as_u64()), (Some(1), Some(2)));
    assert_eq!(got[1].id, 3);
}

#[actix_rt::test]
async fn resume_from_an_id_never_issued_replays_all_with_a_marker() {
    let b = EventBroker::new(10).start();
    for i in 0..3 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
    }
    for asked in [99, u64::MAX] {
        let mut s = subscribe(&b, Filter::default(), Some(asked), "x").await;
        let got = drain(&mut s);
        assert_eq!(got[0].name(), "bridge.gap");
        assert_eq!(payload(&got[0])["reason"], "unknown_id");
        let ids: Vec<u64> = got[1..].iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }
}

#[actix_rt::test]
async fn sinks_get_every_item_in_order_with_the_epoch() {
    struct Collect(std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>);
    impl EventSink for Collect {
        fn offer(&mut self, item: &Arc<BrokerItem>) {
            if let Ok(mut v) = self.0.lock() {
                v.push((item.id, item.epoch));
            }
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = EventBroker::new(10).start();
    b.send(AddSink(Box::new(Collect(seen.clone()))))
        .await
        .unwrap();
    b.send(ev("agent", "a", "r0")).await.unwrap();
    let link = |connected| LinkChanged {
        connected,
        detail: json!({}),
    };
    b.send(link(true)).await.unwrap();
    b.send(ev("agent", "a", "r1")).await.unwrap();
    b.send(link(false)).await.unwrap();
    b.send(link(true)).await.unwrap();
    b.send(ev("agent", "a", "r2")).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(1, 0), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2)]
    );
}

#[actix_rt::test]
async fn an_id_from_a_previous_process_is_announced_not_misread() {
    let b = EventBroker::new(10).starting_at(1_000).start();
    for i in 0..3 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
    }
    // The old process had issued up to 500; this one started at 1000.
    let mut s = subscribe(&b, Filter::default(), Some(500), "x").await;
    let got = drain(&mut s);
    assert_eq!(
        (got[0].name(), payload(&got[0])["reason"].as_str()),
        ("bridge.gap", Some("unknown_id"))
    );
    let rest: Vec<u64> = got[1..].iter().map(|i| i.id).collect();
    assert_eq!(rest, vec![1_000, 1_001, 1_002]);
    // since=0: everything buffered, no gap (nothing evicted yet).
    let mut s = subscribe(&b, Filter::default(), Some(0), "y").await;
    assert_eq!(ids(&mut s), vec![1_000, 1_001, 1_002]);
    assert!(super::boot_first_id() > 1 << 40 && super::boot_first_id() < 1 << 53);
}

#[actix_rt::test]
async fn close_all_ends_streams_after_what_is_left() {
    let b = EventBroker::new(10).start();
    let mut s = subscribe(&b, Filter::default(), None, "x").await;
    b.send(ev("agent", "a", "r")).await.unwrap();
    b.send(CloseAll).await.unwrap();
    assert_eq!(s.recv().await.map(|i| i.id), Some(1));
    assert!(s.recv().await.is_none());
    let mut late = subscribe(&b, Filter::default(), None, "late").await;
    assert!(late.recv().await.is_none());
}

/// The broker wakes waiting readers a few turns after an append, not at
/// once (`WAKE_TURNS`): a reader on another thread, as every SSE stream is,
/// still gets a lone event, and the last of a burst, without a later one.
#[actix_rt::test]
async fn a_reader_on_another_thread_is_woken_for_a_lone_event_and_a_burst_end() {
    let arbiter = actix::Arbiter::new();
    let b = EventBroker::start_in_arbiter(&arbiter.handle(), |_| EventBroker::new(1_000));
    let mut s = subscribe(&b, Filter::default(), None, "far").await;
    let within = std::time::Duration::from_secs(5);
    b.do_send(ev("agent", "a", "r0"));
    let lone = actix_rt::time::timeout(within, s.recv()).await;
    assert_eq!(lone.ok().flatten().map(|i| i.id), Some(1), "the lone event");
    for i in 1..=300 {
        b.do_send(ev("agent", "a", &format!("r{i}")));
    }
    for want in 2..=301 {
        let got = actix_rt::time::timeout(within, s.recv()).await;
        assert_eq!(got.ok().flatten().map(|i| i.id), Some(want));
    }
    arbiter.stop();
}
