//! The wire format: subject and JSON envelope of an outgoing item, written
//! from the item's typed fields (the payload is copied in as sent, never
//! re-parsed).

use std::sync::Arc;

use async_nats::Subject;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use super::Subjects;
use crate::actors::broker::BrokerItem;

/// What the sink hands the publisher: an event, or a gap marker.
#[derive(Debug)]
pub(super) enum Outgoing {
    Event { item: Arc<BrokerItem>, epoch: u64 },
    Marker { epoch: u64, payload: Value },
}

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
pub(super) fn event_body(gateway: &str, epoch: u64, item: &BrokerItem) -> Bytes {
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

/// Renders outgoing items; the subject of the last (event, agent) pair is
/// kept, since a flood is mostly one run's events (one subject).
pub(super) struct Renderer {
    subjects: Subjects,
    last: Option<(String, Option<String>, Subject)>,
}

impl Renderer {
    pub(super) fn new(subjects: Subjects) -> Self {
        Renderer {
            subjects,
            last: None,
        }
    }

    fn event_subject(&mut self, name: &str, agent: Option<&str>) -> Subject {
        if let Some((n, a, s)) = &self.last {
            if n == name && a.as_deref() == agent {
                return s.clone();
            }
        }
        let s = Subject::from(self.subjects.event(name, agent));
        self.last = Some((name.to_owned(), agent.map(str::to_owned), s.clone()));
        s
    }

    /// Subject, bridge id (events) and envelope of an outgoing item.
    pub(super) fn render(&mut self, out: &Outgoing) -> (Subject, Option<u64>, Bytes) {
        match out {
            Outgoing::Event { item, epoch } => {
                let subject = self.event_subject(item.name(), item.agent_id());
                let body = event_body(&self.subjects.gateway, *epoch, item);
                (subject, Some(item.id), body)
            }
            Outgoing::Marker { epoch, payload } => (
                Subject::from(self.subjects.resync()),
                None,
                marker_body(&self.subjects, *epoch, payload),
            ),
        }
    }
}

/// [`Renderer::render`] once, with the subject as a string (tests).
#[cfg(test)]
pub(super) fn render(subjects: &Subjects, out: &Outgoing) -> (String, Option<u64>, Bytes) {
    let (s, id, body) = Renderer::new(subjects.clone()).render(out);
    (s.to_string(), id, body)
}

pub(super) fn marker_body(subjects: &Subjects, epoch: u64, payload: &Value) -> Bytes {
    let v = json!({"gateway": subjects.gateway, "epoch": epoch, "seq": null, "bridge_id": null, "event": "bridge.resync", "payload": payload});
    Bytes::from(v.to_string())
}
