//! Typed gateway events.
//!
//! Every event keeps its raw payload (forwarded as-is to subscribers). Events
//! the bridge acts on also get a typed view in [`EventKind`]; a known event
//! whose payload does not have the expected shape degrades to
//! [`EventKind::Other`] with a warning instead of being dropped.
//!
//! An event is decoded once and carries what every consumer needs: the outer
//! `seq`, the name, the agent and run ids, the payload's own `seq`, and the
//! payload text (copied once out of the frame into its own allocation; see
//! [`GatewayEvent::from_frame_in`] for why not a slice). How it is rendered for a
//! transport (SSE data line, NATS envelope) is the transport's business.

use std::cell::RefCell;

use bytestring::ByteString;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::frames::{AgentFields, RawJson, Str};
use super::text::Text;
use super::EventFrame;

/// One gateway event, decoded once, shared (`Arc`) by every consumer.
#[derive(Debug)]
pub struct GatewayEvent {
    pub name: Text,
    /// Outer per-socket sequence number; `None` for direct sends.
    pub seq: Option<u64>,
    /// The payload's JSON text as the gateway sent it (`null` when absent).
    payload: ByteString,
    pub kind: EventKind,
    /// Set by the connection when this event's outer `seq` skipped ahead
    /// (the same detection that sends `SeqGap` to the supervisor), so that
    /// transports announce the gap in order, before this event.
    pub gap: Option<SeqSkip>,
}

/// Outer seqs the gateway skipped before an event: `expected..got`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSkip {
    pub expected: u64,
    pub got: u64,
}

/// The typed view of the events the bridge acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Agent(AgentEvent),
    Chat(ChatEvent),
    Health(HealthEvent),
    Tick,
    Presence,
    Shutdown(ShutdownEvent),
    /// Unknown to the bridge (or not acted on): passed through untouched.
    Other,
}

/// Where a run is, as far as the bridge tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    /// Any event of a run that has not ended.
    Active,
    /// `lifecycle` `end` (including aborted runs).
    Ended,
    /// `lifecycle` `error`.
    Failed,
}

/// An `agent` event (§6).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEvent {
    pub run_id: Text,
    pub stream: Text,
    pub agent_id: Option<Text>,
    pub session_key: Option<Text>,
    pub ts: Option<u64>,
    /// The payload's own `seq` (per run), when it is a whole number.
    pub payload_seq: Option<u64>,
    /// `data.phase` for `lifecycle` / `run_status`.
    pub data_phase: Option<String>,
    pub phase: RunPhase,
    /// `data.aborted` of a `lifecycle` event: the run was cancelled.
    pub aborted: bool,
}

/// A `chat` event (§6).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatEvent {
    pub run_id: Option<Text>,
    pub session_key: Option<String>,
    pub agent_id: Option<Text>,
    pub state: Option<String>,
    /// The payload's own `seq`, when it is a whole number.
    pub payload_seq: Option<u64>,
}

/// A `health` event: the ids in `agents[]` tell when the agent list changed.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthEvent {
    pub agent_ids: Vec<String>,
}

/// A `shutdown` event: a stop or a restart is coming.
#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownEvent {
    pub reason: Option<String>,
    pub restart_expected_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentWire<'a> {
    #[serde(borrow)]
    run_id: Str<'a>,
    #[serde(borrow, default)]
    stream: Option<Str<'a>>,
    #[serde(borrow, default)]
    agent_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    session_key: Option<Str<'a>>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(borrow, default)]
    seq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PhaseWire {
    #[serde(default)]
    phase: Option<String>,
    /// `lifecycle` `end` of a cancelled run (PROTOCOL.md §6).
    #[serde(default)]
    aborted: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatWire<'a> {
    #[serde(borrow, default)]
    run_id: Option<Str<'a>>,
    #[serde(default)]
    session_key: Option<String>,
    #[serde(borrow, default)]
    agent_id: Option<Str<'a>>,
    #[serde(default)]
    state: Option<String>,
    #[serde(borrow, default)]
    seq: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthAgentWire {
    agent_id: String,
}

#[derive(Deserialize)]
struct HealthWire {
    #[serde(default)]
    agents: Vec<HealthAgentWire>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShutdownWire {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    restart_expected_ms: Option<u64>,
}

/// Event names and streams seen on every event: shared, not allocated.
fn known(s: &str) -> Text {
    match s {
        "agent" => Text::from_static("agent"),
        "chat" => Text::from_static("chat"),
        "health" => Text::from_static("health"),
        "tick" => Text::from_static("tick"),
        "presence" => Text::from_static("presence"),
        "shutdown" => Text::from_static("shutdown"),
        "assistant" => Text::from_static("assistant"),
        "lifecycle" => Text::from_static("lifecycle"),
        "tool" => Text::from_static("tool"),
        "run_status" => Text::from_static("run_status"),
        other => Text::from(other),
    }
}

thread_local! {
    /// The last run id, agent id and session key seen: consecutive events of
    /// one run share them instead of allocating each.
    static RECENT: RefCell<[Option<Text>; 3]> = const { RefCell::new([None, None, None]) };
}

const RECENT_RUN: usize = 0;
const RECENT_AGENT: usize = 1;
const RECENT_SESSION: usize = 2;

/// `s` as a [`Text`], shared with the previous event's when equal.
fn recent(slot: usize, s: &str) -> Text {
    RECENT.with(|r| {
        let mut r = r.borrow_mut();
        match &r[slot] {
            Some(t) if t.as_str() == s => t.clone(),
            _ => {
                let t = Text::from(s);
                r[slot] = Some(t.clone());
                t
            }
        }
    })
}

/// A whole-number `seq` read leniently: anything else is no seq, not an error
/// (the payload's `seq` is informational; a gateway may change its type).
fn whole(v: Option<&RawValue>) -> Option<u64> {
    v.and_then(|v| v.get().trim().parse().ok())
}

impl GatewayEvent {
    /// Build the shared event from a decoded frame, copying the payload. The
    /// second value is a warning when a known event's payload had an
    /// unexpected shape.
    pub fn from_frame(frame: &EventFrame<'_>) -> (GatewayEvent, Option<String>) {
        let payload = frame.payload.map_or("null", |p| p.get());
        Self::build(frame, ByteString::from(payload))
    }

    /// [`GatewayEvent::from_frame`] for a frame decoded from `text`: the
    /// payload is a slice of `text` (shared, not copied). Only for text that
    /// owns its allocation: a slice of a socket's read buffer would keep the
    /// whole buffer alive while the event is held (the connection copies).
    pub fn from_frame_in(
        frame: &EventFrame<'_>,
        text: &ByteString,
    ) -> (GatewayEvent, Option<String>) {
        let payload = match frame.payload {
            None => ByteString::from_static("null"),
            Some(p) => {
                let (base, len) = (text.as_ptr() as usize, text.len());
                let (at, plen) = (p.get().as_ptr() as usize, p.get().len());
                // Only a sub-slice can be shared (`slice_ref` panics otherwise);
                // decoded frames always borrow, but never bet on it.
                if at >= base && at + plen <= base + len {
                    text.slice_ref(p.get())
                } else {
                    ByteString::from(p.get())
                }
            }
        };
        Self::build(frame, payload)
    }

    fn build(frame: &EventFrame<'_>, payload: ByteString) -> (GatewayEvent, Option<String>) {
        let (kind, warning) = match typed(frame) {
            Ok(kind) => (kind, None),
            Err(e) => (
                EventKind::Other,
                Some(format!("{} payload not as expected: {e}", frame.event)),
            ),
        };
        let event = GatewayEvent {
            name: known(&frame.event),
            seq: frame.seq,
            payload,
            kind,
            gap: None,
        };
        (event, warning)
    }

    /// The raw payload text (`null` when absent).
    pub fn payload_json(&self) -> &str {
        &self.payload
    }

    /// [`GatewayEvent::payload_json`], shareable (a slice of the frame).
    pub fn payload(&self) -> &ByteString {
        &self.payload
    }

    /// The payload's own `seq` (`agent` and `chat` events), when present.
    pub fn payload_seq(&self) -> Option<u64> {
        match &self.kind {
            EventKind::Agent(a) => a.payload_seq,
            EventKind::Chat(c) => c.payload_seq,
            _ => None,
        }
    }

    /// The agent this event concerns, when it names one.
    pub fn agent_id(&self) -> Option<&str> {
        self.agent_text().map(Text::as_str)
    }

    /// The run this event concerns, when it names one.
    pub fn run_id(&self) -> Option<&str> {
        self.run_text().map(Text::as_str)
    }

    /// [`GatewayEvent::agent_id`], shareable.
    pub fn agent_text(&self) -> Option<&Text> {
        match &self.kind {
            EventKind::Agent(a) => a.agent_id.as_ref(),
            EventKind::Chat(c) => c.agent_id.as_ref(),
            _ => None,
        }
    }

    /// [`GatewayEvent::run_id`], shareable.
    pub fn run_text(&self) -> Option<&Text> {
        match &self.kind {
            EventKind::Agent(a) => Some(&a.run_id),
            EventKind::Chat(c) => c.run_id.as_ref(),
            _ => None,
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(payload: Option<RawJson<'a>>) -> Result<T, String> {
    let text = payload.map_or("null", |p| p.get());
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// The typed `agent` payload from the raw fields found while decoding the
/// frame, without reading the payload again. `None` when anything would not
/// decode: then the payload is parsed as a whole, for the same result or error.
fn agent_wire<'a>(f: &AgentFields<'a>) -> Option<AgentWire<'a>> {
    fn opt<'a, T: Deserialize<'a>>(v: Option<&'a RawValue>) -> Option<Option<T>> {
        match v {
            None => Some(None),
            Some(v) => serde_json::from_str::<Option<T>>(v.get()).ok(),
        }
    }
    Some(AgentWire {
        run_id: serde_json::from_str(f.run_id?.get()).ok()?,
        stream: opt(f.stream)?,
        agent_id: opt(f.agent_id)?,
        session_key: opt(f.session_key)?,
        ts: opt(f.ts)?,
        seq: f.seq,
        data: opt(f.data)?,
    })
}

fn typed(frame: &EventFrame<'_>) -> Result<EventKind, String> {
    Ok(match frame.event.as_ref() {
        "agent" => {
            let w: AgentWire<'_> = match frame.agent.as_ref().and_then(agent_wire) {
                Some(w) => w,
                None => parse(frame.payload)?,
            };
            let stream = w.stream.map_or(Text::from_static(""), |s| known(&s.0));
            let (data_phase, aborted) = match (stream.as_str(), w.data) {
                ("lifecycle" | "run_status", Some(d)) => {
                    match serde_json::from_str::<PhaseWire>(d.get()) {
                        Ok(p) => (p.phase, p.aborted && stream.as_str() == "lifecycle"),
                        Err(_) => (None, false),
                    }
                }
                _ => (None, false),
            };
            let phase = match (stream.as_str(), data_phase.as_deref()) {
                ("lifecycle", Some("end")) => RunPhase::Ended,
                ("lifecycle", Some("error")) => RunPhase::Failed,
                _ => RunPhase::Active,
            };
            EventKind::Agent(AgentEvent {
                run_id: recent(RECENT_RUN, &w.run_id.0),
                stream,
                agent_id: w.agent_id.map(|s| recent(RECENT_AGENT, &s.0)),
                session_key: w.session_key.map(|s| recent(RECENT_SESSION, &s.0)),
                ts: w.ts,
                payload_seq: whole(w.seq),
                data_phase,
                phase,
                aborted,
            })
        }
        "chat" => {
            let w: ChatWire<'_> = parse(frame.payload)?;
            EventKind::Chat(ChatEvent {
                run_id: w.run_id.map(|s| recent(RECENT_RUN, &s.0)),
                session_key: w.session_key,
                agent_id: w.agent_id.map(|s| recent(RECENT_AGENT, &s.0)),
                state: w.state,
                payload_seq: whole(w.seq),
            })
        }
        "health" => {
            let w: HealthWire = parse(frame.payload)?;
            EventKind::Health(HealthEvent {
                agent_ids: w.agents.into_iter().map(|a| a.agent_id).collect(),
            })
        }
        "tick" => EventKind::Tick,
        "presence" => EventKind::Presence,
        "shutdown" => {
            let w: ShutdownWire = match frame.payload {
                Some(_) => parse(frame.payload)?,
                None => ShutdownWire {
                    reason: None,
                    restart_expected_ms: None,
                },
            };
            EventKind::Shutdown(ShutdownEvent {
                reason: w.reason,
                restart_expected_ms: w.restart_expected_ms,
            })
        }
        _ => EventKind::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode, Inbound};

    fn ev(text: &str) -> (GatewayEvent, Option<String>) {
        match decode(text).unwrap() {
            Inbound::Event(f) => GatewayEvent::from_frame(&f),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn aborted_is_read_from_data_not_found_by_text() {
        let aborted = |text: &str| match ev(text).0.kind {
            EventKind::Agent(a) => a.aborted,
            k => panic!("{k:?}"),
        };
        // Spaced as a pretty-printing gateway would send it.
        assert!(aborted(
            r#"{"type":"event","event":"agent","payload":{"runId":"r","stream":"lifecycle","data":{"phase" : "end", "aborted" : true}}}"#
        ));
        // The words inside the run's output are not the flag.
        assert!(!aborted(
            r#"{"type":"event","event":"agent","payload":{"runId":"r","stream":"lifecycle","data":{"phase":"end","aborted":false,"terminalReply":{"text":"\"aborted\":true"}}}}"#
        ));
        assert!(!aborted(
            r#"{"type":"event","event":"agent","payload":{"runId":"r","stream":"assistant","data":{"aborted":true}}}"#
        ));
    }

    #[test]
    fn agent_lifecycle_end_with_extra_fields() {
        let (e, w) = ev(
            r#"{"type":"event","event":"agent","seq":12,"payload":{"runId":"r1","seq":9,"stream":"lifecycle","ts":1,"sessionKey":"agent:main:main","sessionId":"s","agentId":"main","lane":"x","session":{},"data":{"phase":"end","startedAt":1,"endedAt":2,"aborted":false,"stopReason":"stop"}}}"#,
        );
        assert!(w.is_none());
        assert_eq!(e.seq, Some(12));
        assert_eq!(e.agent_id(), Some("main"));
        assert_eq!(e.run_id(), Some("r1"));
        match e.kind {
            EventKind::Agent(a) => {
                assert_eq!(a.stream, "lifecycle");
                assert_eq!(a.data_phase.as_deref(), Some("end"));
                assert_eq!(a.phase, RunPhase::Ended);
            }
            k => panic!("{k:?}"),
        }
    }

    #[test]
    fn agent_error_and_assistant_streams() {
        let (e, _) = ev(
            r#"{"type":"event","event":"agent","payload":{"runId":"r","stream":"lifecycle","data":{"phase":"error","error":"LLM request failed"}}}"#,
        );
        assert!(matches!(e.kind, EventKind::Agent(ref a) if a.phase == RunPhase::Failed));
        let (e, _) = ev(
            r#"{"type":"event","event":"agent","payload":{"runId":"r","stream":"assistant","data":{"text":"hé \"x\"","delta":"x","phase":"end"}}}"#,
        );
        // `phase` only means something on lifecycle/run_status streams.
        assert!(
            matches!(e.kind, EventKind::Agent(ref a) if a.phase == RunPhase::Active && a.data_phase.is_none())
        );
        assert!(e.payload_json().contains("hé"));
    }

    #[test]
    fn malformed_known_event_degrades_to_other_with_warning() {
        let (e, w) = ev(r#"{"type":"event","event":"agent","payload":{"stream":"x"}}"#);
        assert_eq!(e.kind, EventKind::Other);
        assert!(w.unwrap().contains("agent payload"));
        assert_eq!(e.payload_json(), r#"{"stream":"x"}"#);
    }

    #[test]
    fn unknown_event_passes_untouched() {
        let (e, w) = ev(
            r#"{"type":"event","event":"gateway.suspension","seq":3,"payload":{"state":"preparing","x":[1,2]}}"#,
        );
        assert!(w.is_none());
        assert_eq!(e.kind, EventKind::Other);
        assert_eq!(e.name, "gateway.suspension");
        assert_eq!(e.payload_json(), r#"{"state":"preparing","x":[1,2]}"#);
    }

    #[test]
    fn shutdown_health_chat_tick_presence() {
        let (e, _) = ev(
            r#"{"type":"event","event":"shutdown","payload":{"reason":"gateway restarting","restartExpectedMs":1500},"seq":4}"#,
        );
        assert_eq!(
            e.kind,
            EventKind::Shutdown(ShutdownEvent {
                reason: Some("gateway restarting".into()),
                restart_expected_ms: Some(1500)
            })
        );
        let (e, _) = ev(
            r#"{"type":"event","event":"health","payload":{"ok":true,"agents":[{"agentId":"main","isDefault":true},{"agentId":"b"}]}}"#,
        );
        assert_eq!(
            e.kind,
            EventKind::Health(HealthEvent {
                agent_ids: vec!["main".into(), "b".into()]
            })
        );
        let (e, _) = ev(
            r#"{"type":"event","event":"chat","payload":{"runId":"r","sessionKey":"k","seq":1,"state":"final"}}"#,
        );
        assert!(
            matches!(e.kind, EventKind::Chat(ref c) if c.state.as_deref() == Some("final") && c.agent_id.is_none())
        );
        assert_eq!(
            ev(r#"{"type":"event","event":"tick","payload":{"ts":1}}"#)
                .0
                .kind,
            EventKind::Tick
        );
        assert_eq!(
            ev(r#"{"type":"event","event":"presence","payload":{"presence":[]}}"#)
                .0
                .kind,
            EventKind::Presence
        );
    }
}
