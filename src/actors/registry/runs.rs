//! Run bookkeeping from `agent` and `chat` events: the recent runs of each
//! agent, its current run, and the bounded run id → agent id index for
//! events that do not name their agent.

use actix::prelude::{Context, Handler};

use super::{AgentRegistry, AgentStatus, EventBatch, EventMsg, RunRecord, RunStatus, RUNS_KEPT};
use crate::clock::now_ms;
use crate::protocol::{EventKind, GatewayEvent, RunPhase};

/// run id → agent id entries kept (chat events may not name the agent).
const RUN_INDEX_KEPT: usize = 10_000;

impl AgentRegistry {
    pub(super) fn remember_run(&mut self, run_id: &str, agent_id: &str) {
        // Most events are of a run already known with the same agent.
        if let Some(a) = self.run_agent.get_mut(run_id) {
            if a != agent_id {
                *a = agent_id.to_owned();
            }
            return;
        }
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

    pub(super) fn apply_run(
        &mut self,
        agent_id: &str,
        run_id: &str,
        phase: RunPhase,
        aborted: bool,
        ts: u64,
    ) {
        let repeat = self
            .last_applied
            .as_ref()
            .is_some_and(|(a, r)| a == agent_id && r == run_id);
        if !repeat {
            self.remember_run(run_id, agent_id);
        }
        let runs = match self.runs.get_mut(agent_id) {
            Some(runs) => runs,
            None => self.runs.entry(agent_id.to_owned()).or_default(),
        };
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
                    stop_reason: None,
                    reattached: false,
                    touched: None,
                });
                if runs.len() > RUNS_KEPT {
                    runs.pop_front();
                }
                let last = runs.len() - 1;
                &mut runs[last]
            }
        };
        run.last_event_at = Some(ts);
        run.touched = Some(std::time::Instant::now());
        // A run judged `unknown` from a snapshot is plainly still going.
        if run.status == RunStatus::Unknown {
            run.status = RunStatus::Running;
            run.ended_at = None;
        }
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
        if !repeat {
            self.mark_run(agent_id, run_id);
            self.mark_agent(agent_id);
            self.last_applied = Some((agent_id.to_owned(), run_id.to_owned()));
        }
        let agent = self.agent_mut(agent_id);
        agent.last_event_at = Some(ts);
        if still_running {
            agent.status = AgentStatus::Running;
            if agent.current_run_id.as_deref() != Some(run_id) {
                agent.current_run_id = Some(run_id.to_owned());
            }
        } else if agent.current_run_id.as_deref() == Some(run_id) {
            agent.status = AgentStatus::Idle;
            agent.current_run_id = None;
        }
    }
}

impl Handler<EventMsg> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, EventMsg(event): EventMsg, _: &mut Context<Self>) {
        self.apply_event(&event);
    }
}

impl Handler<EventBatch> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, EventBatch(events): EventBatch, _: &mut Context<Self>) {
        for event in &events {
            self.apply_event(event);
        }
    }
}

impl AgentRegistry {
    /// What an `agent` or `chat` event says about its agent and run.
    fn apply_event(&mut self, event: &GatewayEvent) {
        match &event.kind {
            EventKind::Agent(a) => {
                let agent_id: Option<std::borrow::Cow<'_, str>> = match &a.agent_id {
                    Some(id) => Some(id.as_str().into()),
                    None => self
                        .run_agent
                        .get(a.run_id.as_str())
                        .cloned()
                        .or_else(|| session_agent(a.session_key.as_deref()))
                        .map(Into::into),
                };
                if let Some(agent_id) = agent_id {
                    let aborted = a.phase == RunPhase::Ended && a.aborted;
                    // Epoch ms beyond 2^53 are not real times (and SQLite's
                    // integer is signed): use our clock instead.
                    let ts = a.ts.filter(|t| *t < (1 << 53)).unwrap_or_else(now_ms);
                    self.apply_run(&agent_id, &a.run_id, a.phase, aborted, ts);
                }
            }
            EventKind::Chat(c) => {
                let agent_id = c
                    .agent_id
                    .as_ref()
                    .map(|a| a.as_str().to_owned())
                    .or_else(|| {
                        c.run_id
                            .as_ref()
                            .and_then(|r| self.run_agent.get(r.as_str()).cloned())
                    })
                    .or_else(|| session_agent(c.session_key.as_deref()));
                if let Some(id) = agent_id {
                    self.agent_mut(&id).last_event_at = Some(now_ms());
                    self.mark_agent(&id);
                }
            }
            _ => {}
        }
    }
}

/// `agent:<agentId>:<mainKey>` → agentId.
pub(super) fn session_agent(key: Option<&str>) -> Option<String> {
    let mut parts = key?.splitn(3, ':');
    match (parts.next(), parts.next()) {
        (Some("agent"), Some(id)) if !id.is_empty() => Some(id.to_owned()),
        _ => None,
    }
}
