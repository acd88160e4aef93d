use super::*;
use crate::protocol::{decode, GatewayEvent, Inbound};
use actix::Actor;

fn ev(name: &str, agent: &str, run: &str) -> EventMsg {
    let text = format!(
        r#"{{"type":"event","event":"{name}","seq":1,"payload":{{"runId":"{run}","agentId":"{agent}","stream":"assistant"}}}}"#
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
}

#[actix_rt::test]
async fn filters_and_order() {
    let b = EventBroker::new(100, 10).start();
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
    let ids: Vec<u64> = (0..4).map(|_| all.rx.try_recv().unwrap().id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    let got: Vec<(u64, Option<String>)> = (0..2)
        .map(|_| {
            let i = only_b.rx.try_recv().unwrap();
            (i.id, i.run_id.as_deref().map(str::to_owned))
        })
        .collect();
    assert_eq!(got, vec![(2, Some("r2".into())), (4, Some("r3".into()))]);
    assert!(only_b.rx.try_recv().is_err());
}

#[actix_rt::test]
async fn stalled_subscriber_is_skipped_then_told_the_gap() {
    let b = EventBroker::new(100, 2).start();
    let mut slow = subscribe(&b, Filter::default(), None, "slow").await;
    let mut fast = subscribe(&b, Filter::default(), None, "fast").await;
    for i in 0..5 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
        // the fast one keeps up
        assert_eq!(fast.rx.recv().await.unwrap().id, i + 1);
    }
    let stats = b.send(BrokerStats).await.unwrap();
    assert_eq!(stats.lagged_subscribers, 1);
    assert_eq!(stats.dropped_total, 3);
    assert_eq!(slow.rx.try_recv().unwrap().id, 1);
    assert_eq!(slow.rx.try_recv().unwrap().id, 2);
    b.send(ev("agent", "a", "r5")).await.unwrap();
    let gap = slow.rx.try_recv().unwrap();
    assert_eq!(gap.name, "bridge.gap");
    let v: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(v["payload"], json!({"from": 3, "to": 5, "dropped": 3}));
    assert_eq!(slow.rx.try_recv().unwrap().id, 6);
}

#[actix_rt::test]
async fn resume_from_buffer_and_gap_when_evicted() {
    let b = EventBroker::new(3, 10).start();
    for i in 0..5 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
    }
    // ids 3,4,5 are buffered
    let mut s = subscribe(&b, Filter::default(), Some(3), "x").await;
    assert_eq!(s.rx.try_recv().unwrap().id, 4);
    assert_eq!(s.rx.try_recv().unwrap().id, 5);
    assert!(s.rx.try_recv().is_err());
    let mut s = subscribe(&b, Filter::default(), Some(0), "y").await;
    let gap = s.rx.try_recv().unwrap();
    assert_eq!(gap.name, "bridge.gap");
    let v: Value = serde_json::from_str(&gap.data).unwrap();
    assert_eq!(v["payload"]["from"], 1);
    assert_eq!(v["payload"]["to"], 2);
    assert_eq!(s.rx.try_recv().unwrap().id, 3);
}

#[actix_rt::test]
async fn resume_from_an_id_never_issued_replays_all_with_a_marker() {
    let b = EventBroker::new(10, 10).start();
    for i in 0..3 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
    }
    for asked in [99, u64::MAX] {
        let mut s = subscribe(&b, Filter::default(), Some(asked), "x").await;
        let first = s.rx.try_recv().unwrap();
        assert_eq!(first.name, "bridge.gap");
        let v: Value = serde_json::from_str(&first.data).unwrap();
        assert_eq!(v["payload"]["reason"], "unknown_id");
        let ids: Vec<u64> = std::iter::from_fn(|| s.rx.try_recv().ok())
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }
}

#[actix_rt::test]
async fn sinks_get_every_item_in_order() {
    struct Collect(std::sync::Arc<std::sync::Mutex<Vec<u64>>>);
    impl EventSink for Collect {
        fn offer(&mut self, item: &Arc<BrokerItem>) {
            if let Ok(mut v) = self.0.lock() {
                v.push(item.id);
            }
        }
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = EventBroker::new(10, 10).start();
    b.send(AddSink(Box::new(Collect(seen.clone()))))
        .await
        .unwrap();
    for i in 0..3 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
    }
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
}

#[actix_rt::test]
async fn an_id_from_a_previous_process_is_announced_not_misread() {
    let b = EventBroker::new(10, 10).starting_at(1_000).start();
    for i in 0..3 {
        b.send(ev("agent", "a", &format!("r{i}"))).await.unwrap();
    }
    // The old process had issued up to 500; this one started at 1000.
    let mut s = subscribe(&b, Filter::default(), Some(500), "x").await;
    let first = s.rx.try_recv().unwrap();
    let v: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(
        (first.name.as_str(), v["payload"]["reason"].as_str()),
        ("bridge.gap", Some("unknown_id"))
    );
    let ids: Vec<u64> = std::iter::from_fn(|| s.rx.try_recv().ok())
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec![1_000, 1_001, 1_002]);
    // since=0: everything buffered, no gap (nothing evicted yet).
    let mut s = subscribe(&b, Filter::default(), Some(0), "y").await;
    let ids: Vec<u64> = std::iter::from_fn(|| s.rx.try_recv().ok())
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, vec![1_000, 1_001, 1_002]);
    assert!(super::boot_first_id() > 1 << 40 && super::boot_first_id() < 1 << 53);
}

#[test]
fn data_line_shape() {
    let EventMsg(e) = ev("agent", "a", "r");
    let v: Value = serde_json::from_str(e.data().as_str()).unwrap();
    assert_eq!(v["seq"], 1);
    assert_eq!(v["payload"]["runId"], "r");
}
