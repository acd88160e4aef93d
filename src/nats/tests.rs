use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::envelope::render;
use super::sink::{Shared, MAX_RANGES};
use super::{agent_key, filter_covers_tree, kv_key, Lost, NatsSink, Subjects};
use crate::actors::broker::{BrokerItem, EventSink};
use crate::protocol::{decode, GatewayEvent, Inbound, SeqSkip};

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

fn item(id: u64, epoch: u64, seq: Option<u64>, gap: Option<(u64, u64)>) -> Arc<BrokerItem> {
    let seq = seq.map_or(String::new(), |s| format!(",\"seq\":{s}"));
    let text = format!(
        r#"{{"type":"event","event":"agent","payload":{{"runId":"r","agentId":"main","seq":7,"x":1}}{seq}}}"#
    );
    let mut event = match decode(&text).unwrap() {
        Inbound::Event(f) => GatewayEvent::from_frame(&f).0,
        other => panic!("{other:?}"),
    };
    event.gap = gap.map(|(expected, got)| SeqSkip { expected, got });
    Arc::new(BrokerItem::gateway(id, epoch, Arc::new(event)))
}

fn connected(id: u64, epoch: u64) -> Arc<BrokerItem> {
    Arc::new(BrokerItem::bridge(
        id,
        epoch,
        "bridge.connected",
        "{}".into(),
    ))
}

#[test]
fn sink_takes_epochs_and_gaps_from_the_items_and_counts_drops() {
    let (tx, mut rx) = mpsc::channel(5);
    let shared = Arc::new(Shared {
        lost: Mutex::new(Lost::default()),
    });
    let mut sink = NatsSink::new(Arc::from("default"), tx, shared.clone());
    sink.offer(&connected(1, 1));
    sink.offer(&item(2, 1, Some(1), None));
    // The seq skipped 2: the connection said so on the event.
    sink.offer(&item(3, 1, Some(3), Some((2, 3))));
    let subjects = Subjects::new("openclaw", "default");
    let mut got = Vec::new();
    while let Ok(o) = rx.try_recv() {
        let (subject, _, body) = render(&subjects, &o);
        let v: Value = serde_json::from_slice(&body).unwrap();
        got.push((subject, v));
    }
    assert_eq!(got[0].0, "openclaw.default.bridge.connected");
    assert_eq!(got[0].1["epoch"], 1);
    assert_eq!(got[1].0, "openclaw.default.bridge.resync");
    assert_eq!(got[1].1["payload"]["reason"], "reconnect");
    assert_eq!(got[2].0, "openclaw.default.agent.main");
    assert_eq!(
        got[2].1,
        json!({"gateway": "default", "epoch": 1, "seq": 1, "bridge_id": 2, "event": "agent",
            "agent_id": "main", "run_id": "r", "payload": {"runId": "r", "agentId": "main", "seq": 7, "x": 1}})
    );
    assert_eq!(got[3].1["payload"]["reason"], "seq_gap");
    assert_eq!(got[3].1["payload"]["expected"], 2);
    assert_eq!(got[3].1["payload"]["got"], 3);
    assert_eq!(got[4].1["bridge_id"], 3);
    assert_eq!(got.len(), 5);
    // A seq that goes back (no gap reported by the connection) is no marker.
    sink.offer(&item(4, 1, Some(2), None));
    let o = rx.try_recv().unwrap();
    assert_eq!(render(&subjects, &o).1, Some(4));
    // Queue of 5 now empty; fill it and overflow.
    for id in 10..20 {
        sink.offer(&item(id, 1, Some(id - 6), None));
    }
    let lost = shared.take();
    assert_eq!(lost.ranges, vec![(15, 19)]);
    assert_eq!(lost.count, 5);
}

#[test]
fn envelope_bytes_are_what_serde_writes() {
    // The hand-written envelope must stay byte-identical to the documented
    // serde shape (field order, escaping, absent ids left out).
    let subjects = Subjects::new("openclaw", "gw\"1");
    for it in [
        item(9, 3, Some(4), None),
        Arc::new(BrokerItem::bridge(
            5,
            2,
            "bridge.disconnected",
            r#"{"reason":"x\n"}"#.into(),
        )),
    ] {
        let (_, _, body) = render(
            &subjects,
            &super::envelope::Outgoing::Event {
                item: it.clone(),
                epoch: it.epoch,
            },
        );
        let expected = serde_json::to_vec(&Envelope {
            gateway: "gw\"1",
            epoch: it.epoch,
            seq: it.seq(),
            bridge_id: Some(it.id),
            event: it.name(),
            agent_id: it.agent_id(),
            run_id: it.run_id(),
            payload: &serde_json::value::RawValue::from_string(it.payload().to_owned()).unwrap(),
        })
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&expected)
        );
    }
}

#[derive(serde::Serialize)]
struct Envelope<'a> {
    gateway: &'a str,
    epoch: u64,
    seq: Option<u64>,
    bridge_id: Option<u64>,
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<&'a str>,
    payload: &'a serde_json::value::RawValue,
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
