use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::envelope::{data_seq, render};
use super::sink::{Shared, MAX_RANGES};
use super::{agent_key, filter_covers_tree, kv_key, Lost, NatsSink, Subjects};
use crate::actors::broker::{BrokerItem, EventSink};

#[test]
fn stream_filters_that_capture_a_gateway() {
    let t = ["openclaw", "eu-1"];
    for f in [
        "openclaw.eu-1.>",
        "openclaw.*.>",
        "openclaw.>",
        ">",
        "*.eu-1.>",
    ] {
        assert!(filter_covers_tree(f, &t), "{f}");
    }
    for f in [
        "openclaw.eu-1.*",
        "openclaw.eu-2.>",
        "openclaw.eu-1",
        "openclaw.eu-1.agent.>",
        "other.>",
        "openclaw.*.*",
    ] {
        assert!(!filter_covers_tree(f, &t), "{f}");
    }
}

#[test]
fn subjects_are_sanitized_and_levelled() {
    let s = Subjects::new("openclaw", "default");
    assert_eq!(
        s.event("agent", Some("main")),
        "openclaw.default.agent.main"
    );
    assert_eq!(
        s.event("agent", Some("a.b *>\tc")),
        "openclaw.default.agent.a_b____c"
    );
    assert_eq!(
        s.event("gateway.suspension", None),
        "openclaw.default.gateway.suspension"
    );
    assert_eq!(s.event("we*rd..x>", None), "openclaw.default.we_rd._.x_");
    assert_eq!(s.event("agent", Some("")), "openclaw.default.agent._");
    assert_eq!(s.resync(), "openclaw.default.bridge.resync");
    assert_eq!(s.rpc(), "openclaw.rpc.default");
    assert_eq!(s.stream_filter(), "openclaw.default.>");
    assert_eq!(agent_key("eu-1", "a.b"), "eu-1.a.b");
    assert_eq!(kv_key("main"), "main");
    assert_eq!(kv_key(".a b*"), "_a_b_");
    assert_eq!(kv_key("x."), "x_");
    assert_eq!(kv_key(""), "_");
}

#[test]
fn seq_is_read_from_the_data_line() {
    assert_eq!(data_seq("{\"seq\":42,\"payload\":{}}"), Some(42));
    assert_eq!(data_seq("{\"seq\":null,\"payload\":{}}"), None);
    assert_eq!(data_seq("{\"payload\":{},\"seq\":1}"), None);
}

#[test]
fn lost_ids_become_ranges_and_never_shrink() {
    let mut l = Lost::default();
    for id in [3, 4, 5, 9, 10, 4] {
        l.add(id);
    }
    assert_eq!(l.ranges, vec![(3, 5), (9, 10)]);
    for id in (100..1000).step_by(2) {
        l.add(id);
    }
    assert!(l.ranges.len() <= MAX_RANGES);
    for id in [3, 5, 9, 10, 100, 998] {
        assert!(l.ranges.iter().any(|r| r.0 <= id && id <= r.1), "{id}");
    }
    let mut a = Lost::default();
    a.add(1);
    let mut b = Lost::default();
    b.add(7);
    b.add(8);
    b.add(9);
    a.merge(b);
    assert_eq!(a.ranges, vec![(1, 1), (7, 9)]);
    assert_eq!(a.count, 4);
}

fn item(id: u64, name: &str, seq: Option<u64>) -> Arc<BrokerItem> {
    let seq = seq.map_or("null".to_owned(), |s| s.to_string());
    Arc::new(BrokerItem {
        id,
        name: name.into(),
        agent_id: Some("main".into()),
        run_id: None,
        data: format!("{{\"seq\":{seq},\"payload\":{{\"x\":1}}}}").into(),
    })
}

#[test]
fn sink_numbers_epochs_marks_gaps_and_counts_drops() {
    let (tx, mut rx) = mpsc::channel(5);
    let shared = Arc::new(Shared {
        lost: Mutex::new(Lost::default()),
    });
    let mut sink = NatsSink::new(Arc::from("default"), tx, shared.clone());
    sink.offer(&item(1, "bridge.connected", None));
    sink.offer(&item(2, "agent", Some(1)));
    sink.offer(&item(3, "agent", Some(3)));
    let subjects = Subjects::new("openclaw", "default");
    let mut got = Vec::new();
    while let Ok(o) = rx.try_recv() {
        let (subject, _, body) = render(&subjects, &o);
        let v: Value = serde_json::from_slice(&body).unwrap();
        got.push((subject, v));
    }
    assert_eq!(got[0].0, "openclaw.default.bridge.connected.main");
    assert_eq!(got[0].1["epoch"], 1);
    assert_eq!(got[1].0, "openclaw.default.bridge.resync");
    assert_eq!(got[1].1["payload"]["reason"], "reconnect");
    assert_eq!(got[2].1["seq"], 1);
    assert_eq!(got[2].1["bridge_id"], 2);
    assert_eq!(got[2].1["payload"], json!({"x": 1}));
    assert_eq!(got[3].1["payload"]["reason"], "seq_gap");
    assert_eq!(got[3].1["payload"]["expected"], 2);
    assert_eq!(got[4].1["bridge_id"], 3);
    // Queue of 5 now empty; fill it and overflow.
    for id in 10..20 {
        sink.offer(&item(id, "agent", Some(id - 6)));
    }
    let lost = shared.take();
    assert_eq!(lost.ranges, vec![(15, 19)]);
    assert_eq!(lost.count, 5);
}

#[test]
fn kv_views_of_two_bridges_rank_by_gateway_order_then_liveness() {
    use super::kv::ours_wins;
    let v =
        |at: u64, stale: bool| format!(r#"{{"id":"main","last_event_at":{at},"stale":{stale}}}"#);
    // A newer gateway event wins; an older one never undoes it.
    assert!(ours_wins(
        v(200, false).as_bytes(),
        v(300, false).as_bytes()
    ));
    assert!(!ours_wins(
        v(300, false).as_bytes(),
        v(200, false).as_bytes()
    ));
    // A bridge that lost its gateway (stale) does not overwrite a live view
    // of the same moment; the live one replaces the stale one.
    assert!(!ours_wins(
        v(300, false).as_bytes(),
        v(300, true).as_bytes()
    ));
    assert!(ours_wins(v(300, true).as_bytes(), v(300, false).as_bytes()));
    // The same bytes are never written again.
    assert!(!ours_wins(
        v(300, false).as_bytes(),
        v(300, false).as_bytes()
    ));
    // Something unreadable in the bucket is replaced.
    assert!(ours_wins(b"{}", v(1, true).as_bytes()));
}
