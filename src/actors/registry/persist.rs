//! Write-through to the store: rows changed by events and snapshots are
//! marked dirty and handed to the writer thread in one batch per flush, so
//! the event path never waits on disk; a registry with a store starts from
//! what it persisted.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::{Context, Handler};

use super::{
    AgentRegistry, AgentState, AgentStatus, FlushStore, Persisted, RunRecord, RunStatus, RUNS_KEPT,
};
use crate::clock::now_ms;
use crate::store::{Change, StoredAgent, StoredRun};
use crate::telemetry::events as ev;

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Error => "error",
            RunStatus::Aborted => "aborted",
            RunStatus::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> RunStatus {
        match s {
            "running" => RunStatus::Running,
            "ok" => RunStatus::Ok,
            "error" => RunStatus::Error,
            "aborted" => RunStatus::Aborted,
            _ => RunStatus::Unknown,
        }
    }
}

impl AgentRegistry {
    /// For gateway `gateway`, without a store (it could not be opened: the
    /// bridge serves what the gateway reports, and keeps nothing).
    pub fn without_store(gateway: &str) -> Self {
        AgentRegistry {
            gateway: Arc::from(gateway),
            ..Self::default()
        }
    }

    /// A registry for gateway `gateway` that starts from persisted state and
    /// writes through.
    pub fn with_store(p: Persisted, gateway: &str) -> Self {
        let mut reg = AgentRegistry {
            gateway: Arc::from(gateway),
            writer: Some(p.writer),
            ..Self::default()
        };
        for a in p.agents {
            let status = if a.status == "running" {
                AgentStatus::Running
            } else {
                AgentStatus::Idle
            };
            reg.agents.insert(
                a.id.clone(),
                AgentState {
                    id: a.id,
                    name: a.name,
                    status,
                    current_run_id: a.current_run_id,
                    last_event_at: a.last_event_at,
                    is_default: a.is_default,
                    listed: true,
                    stale: true,
                    gateway: a.gateway,
                    gateway_id: reg.gateway.clone(),
                },
            );
        }
        // Oldest first, as `apply_run` keeps them.
        for r in p.runs.into_iter().rev() {
            reg.remember_run(&r.run_id, &r.agent_id);
            let runs = reg.runs.entry(r.agent_id.clone()).or_default();
            runs.push_front(RunRecord {
                run_id: r.run_id,
                status: RunStatus::parse(&r.status),
                started_at: r.started_at,
                ended_at: r.ended_at,
                last_event_at: r.last_event_at,
                stop_reason: None,
                reattached: false,
                touched: None,
            });
            if runs.len() > RUNS_KEPT {
                runs.pop_back();
            }
        }
        reg
    }

    pub(super) fn mark_agent(&mut self, id: &str) {
        if self.writer.is_some() && !self.dirty_agents.contains(id) {
            self.dirty_agents.insert(id.to_owned());
        }
    }

    pub(super) fn mark_run(&mut self, agent: &str, run: &str) {
        if self.writer.is_none() {
            return;
        }
        // Look up before inserting: most events touch a run already marked.
        match self.dirty_runs.get_mut(agent) {
            Some(runs) => {
                if !runs.contains(run) {
                    runs.insert(run.to_owned());
                }
            }
            None => {
                self.dirty_runs
                    .insert(agent.to_owned(), HashSet::from([run.to_owned()]));
            }
        }
    }

    /// Hand the dirty rows to the writer thread (never waits on disk).
    pub(super) fn flush(&mut self) {
        let Some(writer) = &self.writer else { return };
        let mut batch = Vec::new();
        if let Some(ids) = self.listed_ids.take() {
            batch.push(Change::RemoveAgentsExcept { ids });
        }
        let now = now_ms();
        self.last_applied = None;
        for id in self.dirty_agents.drain() {
            if let Some(a) = self.agents.get(&id) {
                batch.push(Change::UpsertAgent(StoredAgent {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    is_default: a.is_default,
                    gateway: a.gateway.clone(),
                    status: match a.status {
                        AgentStatus::Running => "running".into(),
                        AgentStatus::Idle => "idle".into(),
                    },
                    current_run_id: a.current_run_id.clone(),
                    last_event_at: a.last_event_at,
                    updated_at: now,
                }));
            }
        }
        let dirty_runs = std::mem::take(&mut self.dirty_runs);
        for (agent, run) in dirty_runs
            .into_iter()
            .flat_map(|(agent, runs)| runs.into_iter().map(move |run| (agent.clone(), run)))
        {
            let Some(r) = self
                .runs
                .get(&agent)
                .and_then(|runs| runs.iter().find(|r| r.run_id == run))
            else {
                continue;
            };
            batch.push(Change::UpsertRun(StoredRun {
                run_id: r.run_id.clone(),
                agent_id: agent,
                status: r.status.as_str().into(),
                started_at: r.started_at,
                ended_at: r.ended_at,
                last_event_at: r.last_event_at,
                summary: None,
            }));
        }
        if let Some(s) = self.session.take() {
            batch.push(Change::SetSession(s));
        }
        if !batch.is_empty() && !writer.submit(batch) {
            tracing::warn!(gateway = %self.gateway,
                event = ev::STORE_WRITE_FAILED,
                "store writer is full: a batch of changes was dropped"
            );
        }
    }
}

impl Handler<FlushStore> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, _: FlushStore, _: &mut Context<Self>) {
        self.flush();
        if let Some(w) = &self.writer {
            // Shutdown only: bounded, and the HTTP server runs elsewhere.
            if let Err(e) = w.flush(Duration::from_secs(2)) {
                tracing::warn!(gateway = %self.gateway, event = ev::STORE_WRITE_FAILED, "store not flushed: {e}");
            }
        }
    }
}
