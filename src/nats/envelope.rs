//! The wire format: subject and JSON envelope of an outgoing item, and the
//! gateway seq read from a broker item's `data` line.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::sink::Outgoing;
use super::Subjects;

/// The gateway seq at the start of a `data` line (`{"seq":N,…`).
pub(super) fn data_seq(data: &str) -> Option<u64> {
    let rest = data.strip_prefix("{\"seq\":")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

#[derive(Serialize)]
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
    payload: &'a RawValue,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Subject and envelope of an outgoing item.
pub(super) fn render(subjects: &Subjects, out: &Outgoing) -> (String, Option<u64>, Bytes) {
    match out {
        Outgoing::Event { item, epoch } => {
            let subject = subjects.event(&item.name, item.agent_id.as_deref());
            let null = RawValue::NULL;
            let (seq, payload) = match serde_json::from_str::<Data>(&item.data) {
                Ok(d) => (d.seq, d.payload),
                Err(_) => (None, null),
            };
            let env = Envelope {
                gateway: &subjects.gateway,
                epoch: *epoch,
                seq,
                bridge_id: Some(item.id),
                event: &item.name,
                agent_id: item.agent_id.as_deref(),
                run_id: item.run_id.as_deref(),
                payload,
            };
            let body = serde_json::to_vec(&env).unwrap_or_default();
            (subject, Some(item.id), Bytes::from(body))
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
