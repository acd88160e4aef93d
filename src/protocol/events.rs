//! Typed gateway events.
//!
//! Every event keeps its raw payload (forwarded as-is to subscribers). Events
//! the bridge acts on also get a typed view in [`EventKind`]; a known event
//! whose payload does not have the expected shape degrades to
//! [`EventKind::Other`] with a warning instead of being dropped.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::EventFrame;

/// One gateway event, decoded once, shared (`Arc`) by every consumer.
#[derive(Debug)]
pub struct GatewayEvent {
    pub name: String,
    /// Outer per-socket sequence number; `None` for direct sends.
    pub seq: Option<u64>,
    pub payload: Option<Box<RawValue>>,
    pub kind: EventKind,
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
    pub run_id: String,
    pub stream: String,
    pub agent_id: Option<String>,
    pub session_key: Option<String>,
    pub ts: Option<u64>,
    /// `data.phase` for `lifecycle` / `run_status`.
    pub data_phase: Option<String>,
    pub phase: RunPhase,
}

/// A `chat` event (§6).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatEvent {
    pub run_id: Option<String>,
    pub session_key: Option<String>,
    pub agent_id: Option<String>,
    pub state: Option<String>,
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
    run_id: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    session_key: Option<String>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PhaseWire {
    #[serde(default)]
    phase: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatWire {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    session_key: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    state: Option<String>,
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

impl GatewayEvent {
    /// Build the shared event from a decoded frame. The second value is a
    /// warning when a known event's payload had an unexpected shape.
    pub fn from_frame(frame: &EventFrame<'_>) -> (GatewayEvent, Option<String>) {
        let (kind, warning) = match typed(frame) {
            Ok(kind) => (kind, None),
            Err(e) => (
                EventKind::Other,
                Some(format!("{} payload not as expected: {e}", frame.event)),
            ),
        };
        let event = GatewayEvent {
            name: frame.event.to_string(),
            seq: frame.seq,
            payload: frame.payload.map(ToOwned::to_owned),
            kind,
        };
        (event, warning)
    }

    /// The raw payload text (`null` when absent).
    pub fn payload_json(&self) -> &str {
        self.payload.as_deref().map_or("null", RawValue::get)
    }

    /// The agent this event concerns, when it names one.
    pub fn agent_id(&self) -> Option<&str> {
        match &self.kind {
            EventKind::Agent(a) => a.agent_id.as_deref(),
            EventKind::Chat(c) => c.agent_id.as_deref(),
            _ => None,
        }
    }

    /// The run this event concerns, when it names one.
    pub fn run_id(&self) -> Option<&str> {
        match &self.kind {
            EventKind::Agent(a) => Some(&a.run_id),
            EventKind::Chat(c) => c.run_id.as_deref(),
            _ => None,
        }
    }
}

fn parse<'a, T: Deserialize<'a>>(payload: Option<&'a RawValue>) -> Result<T, String> {
    let text = payload.map_or("null", RawValue::get);
    serde_json::from_str(text).map_err(|e| e.to_string())
}

fn typed(frame: &EventFrame<'_>) -> Result<EventKind, String> {
    Ok(match frame.event.as_ref() {
        "agent" => {
            let w: AgentWire<'_> = parse(frame.payload)?;
            let stream = w.stream.unwrap_or_default();
            let data_phase = match (stream.as_str(), w.data) {
                ("lifecycle" | "run_status", Some(d)) => serde_json::from_str::<PhaseWire>(d.get())
                    .ok()
                    .and_then(|p| p.phase),
                _ => None,
            };
            let phase = match (stream.as_str(), data_phase.as_deref()) {
                ("lifecycle", Some("end")) => RunPhase::Ended,
                ("lifecycle", Some("error")) => RunPhase::Failed,
                _ => RunPhase::Active,
            };
            EventKind::Agent(AgentEvent {
                run_id: w.run_id,
                stream,
                agent_id: w.agent_id,
                session_key: w.session_key,
                ts: w.ts,
                data_phase,
                phase,
            })
        }
        "chat" => {
            let w: ChatWire = parse(frame.payload)?;
            EventKind::Chat(ChatEvent {
                run_id: w.run_id,
                session_key: w.session_key,
                agent_id: w.agent_id,
                state: w.state,
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
