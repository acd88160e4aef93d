//! Snapshots from the gateway: `agents.list` (which agents exist) and
//! `sessions.list` (which runs are still active), both requested by the
//! `Supervisor` after each hello-ok and seq gap.

use std::collections::HashMap;

use actix::prelude::{Context, Handler, MessageResult};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{
    AgentRegistry, AgentStatus, AgentsSnapshot, RunRecord, RunStatus, SessionsSnapshot, StaleRun,
};
use crate::telemetry::events as ev;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AgentsListWire {
    #[serde(default)]
    default_id: Option<String>,
    #[serde(default)]
    agents: Vec<Value>,
}

impl AgentRegistry {
    /// Runs that are active on the gateway, from `sessions.list`. A run we
    /// hold as running that is not among them ended while we could not see
    /// it — but only if no event of it arrived since the request was sent
    /// (events are newer than the answer), and only when the list is
    /// complete (no `hasMore`). Those runs are returned: how each ended is
    /// asked of `agent.wait` ([`RunOutcome`](super::RunOutcome)).
    fn apply_sessions(
        &mut self,
        payload: &RawValue,
        requested_at: std::time::Instant,
    ) -> Vec<StaleRun> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Row {
            #[serde(default)]
            agent_id: Option<String>,
            #[serde(default)]
            active_run_ids: Vec<String>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            #[serde(default)]
            sessions: Vec<Row>,
            #[serde(default)]
            has_more: bool,
        }
        let Ok(wire) = serde_json::from_str::<Wire>(payload.get()) else {
            tracing::warn!(gateway = %self.gateway, "sessions.list answer not understood");
            return Vec::new();
        };
        let complete = !wire.has_more;
        let mut active: HashMap<String, Vec<String>> = HashMap::new();
        for r in wire.sessions {
            if let Some(a) = r.agent_id {
                active.entry(a).or_default().extend(r.active_run_ids);
            }
        }
        let stale = |r: &RunRecord| r.touched.is_none_or(|t| t < requested_at);
        let mut ended = Vec::new();
        if complete {
            for (agent, runs) in self.runs.iter() {
                let live = active.get(agent);
                for r in runs.iter() {
                    let is_live = live.is_some_and(|ids| ids.contains(&r.run_id));
                    if r.status == RunStatus::Running && !is_live && stale(r) {
                        ended.push(StaleRun {
                            agent_id: agent.clone(),
                            run_id: r.run_id.clone(),
                        });
                    }
                }
            }
        }
        let ids: Vec<String> = self.agents.keys().cloned().collect();
        for id in ids {
            // A run the gateway lists as active, unless we already saw it end.
            let live = active.get(&id).and_then(|runs| {
                runs.iter()
                    .find(|run| {
                        !self.runs.get(&id).is_some_and(|known| {
                            known.iter().any(|k| {
                                &k.run_id == *run
                                    && k.status != RunStatus::Running
                                    && k.status != RunStatus::Unknown
                            })
                        })
                    })
                    .cloned()
            });
            let Some(a) = self.agents.get_mut(&id) else {
                continue;
            };
            let next = match live {
                Some(run) => Some((AgentStatus::Running, Some(run))),
                // Idle only from a complete list, and only if the current run
                // had no event since the request.
                None if complete => {
                    let current_is_fresh = a.current_run_id.as_ref().is_some_and(|cur| {
                        self.runs
                            .get(&id)
                            .and_then(|rs| rs.iter().find(|r| &r.run_id == cur))
                            .is_some_and(|r| !stale(r))
                    });
                    (!current_is_fresh).then_some((AgentStatus::Idle, None))
                }
                None => None,
            };
            if let Some((status, current)) = next {
                if a.status != status || a.current_run_id != current {
                    a.status = status;
                    a.current_run_id = current;
                    self.mark_agent(&id);
                }
            }
        }
        ended
    }

    fn apply_snapshot(&mut self, payload: &RawValue) {
        let wire: AgentsListWire = match serde_json::from_str(payload.get()) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(gateway = %self.gateway,
                    event = ev::REGISTRY_RESYNCED,
                    "agents.list answer not understood: {e}"
                );
                return;
            }
        };
        self.synced = self.connected;
        let mut seen = std::collections::HashSet::new();
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
            self.mark_agent(&id);
            seen.insert(id);
        }
        // Agents gone from the gateway and not running anything are removed.
        self.agents
            .retain(|id, a| seen.contains(id) || a.status == AgentStatus::Running);
        if self.writer.is_some() {
            self.listed_ids = Some(self.agents.keys().cloned().collect());
        }
        tracing::info!(gateway = %self.gateway,
            event = ev::REGISTRY_RESYNCED,
            agents = seen.len(),
            "agent list refreshed from agents.list"
        );
    }
}

impl Handler<SessionsSnapshot> for AgentRegistry {
    type Result = MessageResult<SessionsSnapshot>;

    fn handle(&mut self, msg: SessionsSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.apply_sessions(&msg.payload, msg.requested_at))
    }
}

impl Handler<AgentsSnapshot> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: AgentsSnapshot, _: &mut Context<Self>) {
        self.apply_snapshot(&msg.payload);
    }
}
