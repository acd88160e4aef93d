//! The wire format: subject and JSON envelope of an outgoing item, written
//! from the item's typed fields (the payload is copied in as sent, never
//! re-parsed).

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use super::sink::Outgoing;
use super::Subjects;

/// `s` as a JSON string.
fn put_str(out: &mut BytesMut, s: &str) {
    // Writing into a BytesMut cannot fail, and a `str` always serialises.
    let _ = serde_json::to_writer(out.writer(), s);
}

fn put_u64(out: &mut BytesMut, n: Option<u64>) {
    use std::fmt::Write as _;
    match n {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// `{"gateway","epoch","seq","bridge_id","event","agent_id"?,"run_id"?,"payload"}`:
/// the same bytes serde would write for these fields, in this order.
pub(super) fn event_body(
    gateway: &str,
    epoch: u64,
    item: &crate::actors::broker::BrokerItem,
) -> Bytes {
    let payload = item.payload();
    let mut out = BytesMut::with_capacity(payload.len() + 160);
    out.extend_from_slice(b"{\"gateway\":");
    put_str(&mut out, gateway);
    out.extend_from_slice(b",\"epoch\":");
    put_u64(&mut out, Some(epoch));
    out.extend_from_slice(b",\"seq\":");
    put_u64(&mut out, item.seq());
    out.extend_from_slice(b",\"bridge_id\":");
    put_u64(&mut out, Some(item.id));
    out.extend_from_slice(b",\"event\":");
    put_str(&mut out, item.name());
    if let Some(a) = item.agent_id() {
        out.extend_from_slice(b",\"agent_id\":");
        put_str(&mut out, a);
    }
    if let Some(r) = item.run_id() {
        out.extend_from_slice(b",\"run_id\":");
        put_str(&mut out, r);
    }
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b"}");
    out.freeze()
}

/// Subject and envelope of an outgoing item.
pub(super) fn render(subjects: &Subjects, out: &Outgoing) -> (String, Option<u64>, Bytes) {
    match out {
        Outgoing::Event { item, epoch } => {
            let subject = subjects.event(item.name(), item.agent_id());
            let body = event_body(&subjects.gateway, *epoch, item);
            (subject, Some(item.id), body)
        }
        Outgoing::Marker { epoch, payload } => (
            subjects.resync(),
            None,
            marker_body(subjects, *epoch, payload),
        ),
    }
}

pub(super) fn marker_body(subjects: &Subjects, epoch: u64, payload: &Value) -> Bytes {
    let v = json!({"gateway": subjects.gateway, "epoch": epoch, "seq": null, "bridge_id": null, "event": "bridge.resync", "payload": payload});
    Bytes::from(v.to_string())
}
