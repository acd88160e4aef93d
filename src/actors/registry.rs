//! `AgentRegistry`: which agents exist and what each is doing.
//!
//! **Owns:** one [`AgentState`] per agent id (from `agents.list`, updated by
//! `agent` / `chat` / `health` events), the recent runs of each, whether the
//! view is live or stale (link down).
//!
//! **Handles:** [`EventMsg`] (from `GatewayConnection`), [`AgentsSnapshot`]
//! (from `Supervisor` after each hello-ok / seq gap), [`LinkChanged`] (from
//! `Supervisor`), [`ListAgents`] / [`GetAgent`] (from the HTTP API).
//!
//! **Sends:** [`RequestResync`] to its resync target when `health` shows a set
//! of agent ids different from the last `agents.list` (no event announces added
//! or removed agents, PROTOCOL.md §5).
//!
//! **On stop:** state is in memory only; it is rebuilt from `agents.list` on the
//! next session.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::{Actor, Context, Handler, Message, MessageResult, Recipient};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::messages::{EventMsg, LinkChanged};
use crate::protocol::{EventKind, RunPhase};
use crate::telemetry::events as ev;

/// Recent runs kept per agent.
const RUNS_KEPT: usize = 20;
/// run id → agent id entries kept (chat events may not name the agent).
const RUN_INDEX_KEPT: usize = 10_000;

/// The result of `agents.list`, from `Supervisor`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AgentsSnapshot {
    pub generation: u64,
    pub payload: Box<RawValue>,
}

/// Ask the owner of the link to refetch `agents.list`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RequestResync;

/// Where resync requests go (set once the supervisor exists).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetResyncTarget(pub Recipient<RequestResync>);

#[derive(Debug, Message)]
#[rtype(result = "AgentList")]
pub struct ListAgents;

#[derive(Debug, Message)]
#[rtype(result = "Option<AgentDetail>")]
pub struct GetAgent(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Idle,
    Running,
}

/// One agent as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentState {
    pub id: String,
    pub name: Option<String>,
    pub status: AgentStatus,
    pub current_run_id: Option<String>,
    /// Epoch ms of the last event about this agent.
    pub last_event_at: Option<u64>,
    pub is_default: bool,
    /// False when the agent was seen in events but not (yet) in `agents.list`.
    pub listed: bool,
    /// True while the bridge is not connected: the view may be out of date.
    pub stale: bool,
    /// The gateway's `agents.list` row, as sent.
    #[serde(skip_serializing_if = "Value::is_null")]
    pub gateway: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Ok,
    Error,
    Aborted,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub status: RunStatus,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub last_event_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub agent: AgentState,
    pub runs: Vec<RunRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentList {
    pub agents: Vec<AgentState>,
    pub stale: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentsListWire {
    #[serde(default)]
    default_id: Option<String>,
    #[serde(default)]
    agents: Vec<Value>,
}

#[derive(Default)]
pub struct AgentRegistry {
    agents: BTreeMap<String, AgentState>,
    /// Newest last.
    runs: HashMap<String, VecDeque<RunRecord>>,
    run_agent: HashMap<String, String>,
    run_order: VecDeque<String>,
    connected: bool,
    resync: Option<Recipient<RequestResync>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AgentRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn agent_mut(&mut self, id: &str) -> &mut AgentState {
        let stale = !self.connected;
        self.agents
            .entry(id.to_owned())
            .or_insert_with(|| AgentState {
                id: id.to_owned(),
                name: None,
                status: AgentStatus::Idle,
                current_run_id: None,
                last_event_at: None,
                is_default: false,
                listed: false,
                stale,
                gateway: Value::Null,
            })
    }

    fn remember_run(&mut self, run_id: &str, agent_id: &str) {
        if self
            .run_agent
            .insert(run_id.to_owned(), agent_id.to_owned())
            .is_none()
        {
            self.run_order.push_back(run_id.to_owned());
            if self.run_order.len() > RUN_INDEX_KEPT {
                if let Some(old) = self.run_order.pop_front() {
                    self.run_agent.remove(&old);
                }
            }
        }
    }

    fn apply_run(&mut self, agent_id: &str, run_id: &str, phase: RunPhase, aborted: bool, ts: u64) {
        self.remember_run(run_id, agent_id);
        let runs = self.runs.entry(agent_id.to_owned()).or_default();
        let idx = runs.iter().position(|r| r.run_id == run_id);
        let run = match idx {
            Some(i) => &mut runs[i],
            None => {
                runs.push_back(RunRecord {
                    run_id: run_id.to_owned(),
                    status: RunStatus::Running,
                    started_at: Some(ts),
                    ended_at: None,
                    last_event_at: None,
                });
                if runs.len() > RUNS_KEPT {
                    runs.pop_front();
                }
                let last = runs.len() - 1;
                &mut runs[last]
            }
        };
        run.last_event_at = Some(ts);
        // A run is over at its first `end` or `error`; later events only touch it.
        let was_running = run.status == RunStatus::Running;
        if was_running {
            match phase {
                RunPhase::Active => {}
                RunPhase::Ended => {
                    run.status = if aborted {
                        RunStatus::Aborted
                    } else {
                        RunStatus::Ok
                    };
                    run.ended_at = Some(ts);
                }
                RunPhase::Failed => {
                    run.status = RunStatus::Error;
                    run.ended_at = Some(ts);
                }
            }
        }
        let still_running = run.status == RunStatus::Running;
        let agent = self.agent_mut(agent_id);
        agent.last_event_at = Some(ts);
        if still_running {
            agent.status = AgentStatus::Running;
            agent.current_run_id = Some(run_id.to_owned());
        } else if agent.current_run_id.as_deref() == Some(run_id) {
            agent.status = AgentStatus::Idle;
            agent.current_run_id = None;
        }
    }

    fn apply_snapshot(&mut self, payload: &RawValue) {
        let wire: AgentsListWire = match serde_json::from_str(payload.get()) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(
                    event = ev::REGISTRY_RESYNCED,
                    "agents.list answer not understood: {e}"
                );
                return;
            }
        };
        let mut seen = Vec::new();
        for row in wire.agents {
            let Some(id) = row.get("id").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let name = row
                .get("name")
                .and_then(Value::as_str)
                .or_else(|| row.pointer("/identity/name").and_then(Value::as_str))
                .map(str::to_owned);
            let is_default = wire.default_id.as_deref() == Some(id.as_str());
            let a = self.agent_mut(&id);
            a.name = name;
            a.is_default = is_default;
            a.listed = true;
            a.gateway = row;
            seen.push(id);
        }
        // Agents gone from the gateway and not running anything are removed.
        self.agents
            .retain(|id, a| seen.contains(id) || a.status == AgentStatus::Running);
        tracing::info!(
            event = ev::REGISTRY_RESYNCED,
            agents = seen.len(),
            "agent list refreshed from agents.list"
        );
    }
}

impl Actor for AgentRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<EventMsg> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, EventMsg(event): EventMsg, _: &mut Context<Self>) {
        let now = now_ms();
        match &event.kind {
            EventKind::Agent(a) => {
                let agent_id = a
                    .agent_id
                    .clone()
                    .or_else(|| self.run_agent.get(&a.run_id).cloned())
                    .or_else(|| session_agent(a.session_key.as_deref()));
                if let Some(agent_id) = agent_id {
                    let aborted = a.phase == RunPhase::Ended
                        && event.payload_json().contains("\"aborted\":true");
                    self.apply_run(&agent_id, &a.run_id, a.phase, aborted, a.ts.unwrap_or(now));
                }
            }
            EventKind::Chat(c) => {
                let agent_id = c
                    .agent_id
                    .clone()
                    .or_else(|| {
                        c.run_id
                            .as_ref()
                            .and_then(|r| self.run_agent.get(r).cloned())
                    })
                    .or_else(|| session_agent(c.session_key.as_deref()));
                if let Some(id) = agent_id {
                    self.agent_mut(&id).last_event_at = Some(now);
                }
            }
            EventKind::Health(h) => {
                let mut listed: Vec<&str> = self
                    .agents
                    .values()
                    .filter(|a| a.listed)
                    .map(|a| a.id.as_str())
                    .collect();
                listed.sort_unstable();
                let mut health: Vec<&str> = h.agent_ids.iter().map(String::as_str).collect();
                health.sort_unstable();
                if !health.is_empty() && health != listed {
                    if let Some(r) = &self.resync {
                        let _ = r.try_send(RequestResync);
                    }
                }
            }
            _ => {}
        }
    }
}

/// `agent:<agentId>:<mainKey>` → agentId.
fn session_agent(key: Option<&str>) -> Option<String> {
    let mut parts = key?.splitn(3, ':');
    match (parts.next(), parts.next()) {
        (Some("agent"), Some(id)) if !id.is_empty() => Some(id.to_owned()),
        _ => None,
    }
}

impl Handler<AgentsSnapshot> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentsSnapshot, _: &mut Context<Self>) {
        self.apply_snapshot(&msg.payload);
    }
}

impl Handler<LinkChanged> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: LinkChanged, _: &mut Context<Self>) {
        self.connected = msg.connected;
        for a in self.agents.values_mut() {
            a.stale = !msg.connected;
        }
    }
}

impl Handler<SetResyncTarget> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: SetResyncTarget, _: &mut Context<Self>) {
        self.resync = Some(msg.0);
    }
}

impl Handler<ListAgents> for AgentRegistry {
    type Result = MessageResult<ListAgents>;

    fn handle(&mut self, _: ListAgents, _: &mut Context<Self>) -> Self::Result {
        MessageResult(AgentList {
            agents: self.agents.values().cloned().collect(),
            stale: !self.connected,
        })
    }
}

impl Handler<GetAgent> for AgentRegistry {
    type Result = Option<AgentDetail>;

    fn handle(&mut self, GetAgent(id): GetAgent, _: &mut Context<Self>) -> Self::Result {
        let agent = self.agents.get(&id)?.clone();
        let runs = self
            .runs
            .get(&id)
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default();
        Some(AgentDetail { agent, runs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode, GatewayEvent, Inbound};
    use std::sync::Arc;

    fn event(text: &str) -> EventMsg {
        match decode(text).unwrap() {
            Inbound::Event(f) => EventMsg(Arc::new(GatewayEvent::from_frame(&f).0)),
            _ => panic!(),
        }
    }

    #[actix_rt::test]
    async fn run_lifecycle_moves_agent_running_then_idle() {
        let reg = AgentRegistry::new().start();
        reg.send(AgentsSnapshot {
            generation: 1,
            payload: RawValue::from_string(
                r#"{"defaultId":"main","agents":[{"id":"main","name":"Main"},{"id":"b"}]}"#.into(),
            )
            .unwrap(),
        })
        .await
        .unwrap();
        reg.send(LinkChanged {
            connected: true,
            detail: Value::Null,
        })
        .await
        .unwrap();
        reg.send(event(r#"{"type":"event","event":"agent","seq":1,"payload":{"runId":"r1","stream":"lifecycle","ts":10,"agentId":"main","data":{"phase":"start"}}}"#)).await.unwrap();
        let d = reg.send(GetAgent("main".into())).await.unwrap().unwrap();
        assert_eq!(d.agent.status, AgentStatus::Running);
        assert_eq!(d.agent.current_run_id.as_deref(), Some("r1"));
        assert_eq!(d.agent.name.as_deref(), Some("Main"));
        assert!(d.agent.is_default && !d.agent.stale);
        // chat events without agentId are attributed through the run id
        reg.send(event(r#"{"type":"event","event":"chat","payload":{"runId":"r1","sessionKey":"agent:main:main","state":"delta"}}"#)).await.unwrap();
        reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r1","stream":"lifecycle","ts":20,"agentId":"main","data":{"phase":"end","aborted":false}}}"#)).await.unwrap();
        // a late event of the finished run does not make it running again
        reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r1","stream":"assistant","ts":21,"agentId":"main","data":{"text":"x"}}}"#)).await.unwrap();
        let d = reg.send(GetAgent("main".into())).await.unwrap().unwrap();
        assert_eq!(d.agent.status, AgentStatus::Idle);
        assert_eq!(d.agent.current_run_id, None);
        assert_eq!(d.runs.len(), 1);
        assert_eq!(d.runs[0].status, RunStatus::Ok);
        assert_eq!(d.runs[0].ended_at, Some(20));
        let list = reg.send(ListAgents).await.unwrap();
        assert_eq!(list.agents.len(), 2);
        reg.send(LinkChanged {
            connected: false,
            detail: Value::Null,
        })
        .await
        .unwrap();
        let list = reg.send(ListAgents).await.unwrap();
        assert!(list.stale && list.agents.iter().all(|a| a.stale));
        assert!(reg.send(GetAgent("nope".into())).await.unwrap().is_none());
    }

    #[actix_rt::test]
    async fn failed_and_aborted_runs() {
        let reg = AgentRegistry::new().start();
        reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r2","stream":"lifecycle","sessionKey":"agent:ops:main","data":{"phase":"start"}}}"#)).await.unwrap();
        reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r2","stream":"lifecycle","agentId":"ops","data":{"phase":"error","error":"LLM request failed"}}}"#)).await.unwrap();
        reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r3","stream":"lifecycle","agentId":"ops","data":{"phase":"start"}}}"#)).await.unwrap();
        reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r3","stream":"lifecycle","agentId":"ops","data":{"phase":"end","status":"cancelled","aborted":true}}}"#)).await.unwrap();
        reg.send(event(r#"{"type":"event","event":"agent","payload":{"runId":"r3","stream":"lifecycle","agentId":"ops","data":{"phase":"error","stopReason":"aborted"}}}"#)).await.unwrap();
        let d = reg.send(GetAgent("ops".into())).await.unwrap().unwrap();
        assert_eq!(d.agent.status, AgentStatus::Idle);
        assert!(!d.agent.listed);
        let statuses: Vec<RunStatus> = d.runs.iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![RunStatus::Aborted, RunStatus::Error]);
    }

    #[test]
    fn session_keys() {
        assert_eq!(
            session_agent(Some("agent:main:main")).as_deref(),
            Some("main")
        );
        assert_eq!(session_agent(Some("agent::x")), None);
        assert_eq!(session_agent(Some("other:main")), None);
        assert_eq!(session_agent(None), None);
    }
}
