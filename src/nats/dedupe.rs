//! The `Nats-Msg-Id` of a gateway event: two bridges on one gateway derive
//! the same id for the same event, so JetStream's duplicate window stores it
//! once (active-active without a consensus of our own).
//!
//! What is stable across sockets was measured on the real gateway (openclaw
//! 2026.9.6, two bridges connected at once, three agent runs and 40 s of
//! idle traffic; README "Scaling out"): every event reached both sockets
//! with a byte-identical payload, in the same order. The outer `seq` is
//! per socket, so it is never part of the id. Hence:
//! - `agent`: gateway, event, `runId`, `stream`, payload `seq`;
//! - `chat`: gateway, event, `runId`, `state`, payload `seq`. `state` is in
//!   the key because one run sent `delta` and `final` with the same `seq`;
//! - other events whose payload identifies one emission (a top-level `ts`,
//!   or the full-state upserts `task` / `cron`, or `session.message` /
//!   `session.tool` with their message ids): gateway, event and a digest of
//!   the payload bytes. No byte-identical repeat was seen in the measurement;
//!   should one come within the duplicate window it carries nothing new;
//! - the rest (e.g. `chat.metadata.changed {}`, `skills.changed`,
//!   `update.available`, events this version does not know) and the bridge's
//!   own `bridge.*` items: no id. Two emissions of such a payload can be
//!   byte-identical and both matter, so each bridge stores its own copy:
//!   with two bridges a consumer sees them twice (idempotent notifications).
//!
//! The id is `oc1-` and 32 hex digits of SHA-256 over the length-prefixed
//! fields (no separator can make two field lists collide). The derivation is
//! versioned by that prefix: bridges of different versions on one gateway
//! agree as long as the prefix is the same.

use std::borrow::Cow;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Events keyed by their run: event name and the payload field that, with
/// the payload `seq`, tells two events of one run apart.
fn run_field(event: &str) -> Option<&'static str> {
    match event {
        "agent" => Some("stream"),
        "chat" => Some("state"),
        _ => None,
    }
}

/// Events whose payload names one emission even without a `ts`.
const CONTENT_KEYED: &[&str] = &["task", "cron", "session.message", "session.tool"];

#[derive(Deserialize)]
struct RunFields<'a> {
    #[serde(rename = "runId", borrow)]
    run_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow)]
    state: Option<Cow<'a, str>>,
    seq: Option<u64>,
    ts: Option<serde::de::IgnoredAny>,
}

fn digest(fields: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f);
    }
    let out = h.finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    s.push_str("oc1-");
    for &b in &out[..16] {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    s
}

/// The id of an `agent` / `chat` event from the fields the connection
/// already decoded (no second parse on the publish path): `part` is the
/// agent event's `stream` or the chat event's `state`.
pub fn run_key(gateway: &str, event: &str, run: &str, part: &str, seq: u64) -> String {
    digest(&[
        b"run",
        gateway.as_bytes(),
        event.as_bytes(),
        run.as_bytes(),
        part.as_bytes(),
        &seq.to_be_bytes(),
    ])
}

/// The `Nats-Msg-Id` of gateway event `event` with payload JSON `payload`
/// (its exact text as the gateway sent it), for gateway `gateway`; `None`
/// when the event has no identity that two sockets share (see the module).
pub fn msg_id(gateway: &str, event: &str, payload: &str) -> Option<String> {
    if event.starts_with("bridge.") {
        return None;
    }
    let fields: Option<RunFields> = if payload.starts_with('{') {
        serde_json::from_str(payload).ok()
    } else {
        None
    };
    if let (Some(which), Some(f)) = (run_field(event), &fields) {
        let part = if which == "stream" {
            &f.stream
        } else {
            &f.state
        };
        if let (Some(run), Some(seq)) = (&f.run_id, f.seq) {
            return Some(run_key(
                gateway,
                event,
                run,
                part.as_deref().unwrap_or(""),
                seq,
            ));
        }
    }
    let has_ts = fields.as_ref().is_some_and(|f| f.ts.is_some());
    if has_ts || CONTENT_KEYED.contains(&event) {
        return Some(digest(&[
            b"content",
            gateway.as_bytes(),
            event.as_bytes(),
            payload.as_bytes(),
        ]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "ad2e32eb-52a9-4fed-8ccf-04266294723d";

    fn agent(stream: &str, seq: u64, text: &str) -> String {
        format!(
            r#"{{"runId":"{RUN}","seq":{seq},"stream":"{stream}","ts":1796473405996,"data":{{"text":"{text}"}},"sessionKey":"agent:main:main","agentId":"main"}}"#
        )
    }

    #[test]
    fn agent_events_are_keyed_by_run_stream_and_payload_seq_only() {
        let a = msg_id("gw1", "agent", &agent("assistant", 3, "pong:")).unwrap();
        assert!(a.starts_with("oc1-") && a.len() == 36, "{a}");
        // Same run, stream and seq: same id whatever else differs (the outer
        // seq is not in the payload at all; the text cannot differ for one
        // seq, but the id must not depend on field order or extra fields).
        let reordered =
            format!(r#"{{"seq":3,"stream":"assistant","runId":"{RUN}","extra":[1,2]}}"#);
        assert_eq!(msg_id("gw1", "agent", &reordered).unwrap(), a);
        // Each part of the key matters.
        assert_ne!(
            msg_id("gw1", "agent", &agent("assistant", 5, "")).unwrap(),
            a
        );
        assert_ne!(
            msg_id("gw1", "agent", &agent("lifecycle", 3, "")).unwrap(),
            a
        );
        assert_ne!(
            msg_id("gw2", "agent", &agent("assistant", 3, "")).unwrap(),
            a
        );
        let other_run = agent("assistant", 3, "").replace(RUN, "r2");
        assert_ne!(msg_id("gw1", "agent", &other_run).unwrap(), a);
    }

    #[test]
    fn chat_delta_and_final_with_one_seq_are_two_events() {
        // Measured: a run's last `delta` and its `final` share seq 9.
        let delta = format!(r#"{{"runId":"{RUN}","sessionKey":"k","seq":9,"state":"delta"}}"#);
        let fin = format!(r#"{{"runId":"{RUN}","sessionKey":"k","seq":9,"state":"final"}}"#);
        let d = msg_id("gw", "chat", &delta).unwrap();
        assert_ne!(d, msg_id("gw", "chat", &fin).unwrap());
        // A chat and an agent event of one run and seq never collide.
        let as_agent = format!(r#"{{"runId":"{RUN}","seq":9,"stream":"delta"}}"#);
        assert_ne!(d, msg_id("gw", "agent", &as_agent).unwrap());
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let a = msg_id("g", "agent", r#"{"runId":"ab","stream":"c","seq":1}"#);
        let b = msg_id("g", "agent", r#"{"runId":"a","stream":"bc","seq":1}"#);
        assert_ne!(a, b);
        let c = msg_id("g.x", "tick", r#"{"ts":1}"#);
        let d = msg_id("g", "x.tick", r#"{"ts":1}"#);
        assert_ne!(c, d);
    }

    #[test]
    fn timestamped_and_snapshot_events_are_keyed_by_their_bytes() {
        let t = msg_id("gw", "tick", r#"{"ts":1796473418326}"#).unwrap();
        assert_eq!(msg_id("gw", "tick", r#"{"ts":1796473418326}"#).unwrap(), t);
        assert_ne!(msg_id("gw", "tick", r#"{"ts":1796473448326}"#).unwrap(), t);
        let task = r#"{"action":"upserted","task":{"id":"t1","status":"running"}}"#;
        assert!(msg_id("gw", "task", task).is_some());
        // An agent event without runId or seq falls back to its content.
        assert!(msg_id("gw", "agent", r#"{"stream":"x","ts":5}"#).is_some());
    }

    #[test]
    fn events_without_identity_and_bridge_items_get_no_id() {
        assert_eq!(msg_id("gw", "chat.metadata.changed", "{}"), None);
        assert_eq!(
            msg_id("gw", "skills.changed", r#"{"reason":"watch-targets"}"#),
            None
        );
        assert_eq!(msg_id("gw", "gateway.suspension", r#"{"on":true}"#), None);
        assert_eq!(msg_id("gw", "agent", "null"), None);
        assert_eq!(msg_id("gw", "bridge.connected", r#"{"ts":1}"#), None);
        assert_eq!(msg_id("gw", "bridge.resync", r#"{"ts":1}"#), None);
    }

    #[test]
    fn the_typed_key_is_the_key_read_from_the_payload() {
        // The publisher keys agent/chat events from the decoded fields; a
        // bridge that reads them from the payload must agree.
        assert_eq!(
            msg_id("gw1", "agent", &agent("assistant", 3, "x")),
            Some(run_key("gw1", "agent", RUN, "assistant", 3))
        );
        assert_ne!(
            run_key("gw1", "chat", RUN, "delta", 9),
            run_key("gw1", "chat", RUN, "final", 9)
        );
    }
}
