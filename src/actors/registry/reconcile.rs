//! Runs whose end the bridge did not see (the link was down): their real
//! outcome, from `agent.wait` via the `Supervisor` ([`RunOutcome`]), and one
//! run by id for `GET /v1/runs/{runId}` ([`GetRun`]).

use std::sync::Arc;

use actix::prelude::{Context, Handler, Message, MessageResult};
use serde::Serialize;

use super::{AgentRegistry, AgentStatus, RunRecord, RunStatus, RUNS_KEPT};
use crate::clock::now_ms;

/// A run held as running that `sessions.list` no longer shows active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleRun {
    pub agent_id: String,
    pub run_id: String,
}

/// How a run ended, as `agent.wait` told the `Supervisor` (`Unknown`: the
/// gateway no longer knows it). Answers the correction when it changed what
/// the registry showed, so it is announced once (`bridge.run_reconciled`).
#[derive(Debug, Message)]
#[rtype(result = "Option<Reconciled>")]
pub struct RunOutcome {
    /// `None`: from the run index (events named it before).
    pub agent_id: Option<String>,
    pub run_id: String,
    pub status: RunStatus,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub stop_reason: Option<String>,
}

/// The `bridge.run_reconciled` payload (CONTRACT "Additions").
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reconciled {
    pub run_id: String,
    pub agent_id: String,
    pub status: RunStatus,
    pub ended_at: Option<u64>,
    pub stop_reason: Option<String>,
    pub via: &'static str,
}

/// One run by id, if the registry holds it.
#[derive(Debug, Message)]
#[rtype(result = "Option<RunView>")]
pub struct GetRun(pub String);

/// A run as `GET /v1/runs/{runId}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunView {
    pub agent_id: Option<String>,
    #[schema(value_type = String)]
    pub gateway_id: Arc<str>,
    #[serde(flatten)]
    pub run: RunRecord,
    /// `registry` (the bridge saw the run) or `gateway` (asked `agent.wait`).
    #[schema(value_type = String)]
    pub source: &'static str,
}

impl AgentRegistry {
    fn apply_outcome(&mut self, msg: RunOutcome) -> Option<Reconciled> {
        let agent_id = msg
            .agent_id
            .or_else(|| self.run_agent.get(&msg.run_id).cloned())?;
        let runs = self.runs.entry(agent_id.clone()).or_default();
        let idx = match runs.iter().position(|r| r.run_id == msg.run_id) {
            Some(i) => i,
            None => {
                runs.push_back(RunRecord {
                    run_id: msg.run_id.clone(),
                    status: RunStatus::Running,
                    started_at: msg.started_at,
                    ended_at: None,
                    last_event_at: None,
                    stop_reason: None,
                    reattached: false,
                    touched: None,
                });
                if runs.len() > RUNS_KEPT {
                    runs.pop_front();
                }
                runs.len() - 1
            }
        };
        let run = &mut runs[idx];
        // Only a run the bridge last saw running (or judged unknown) is
        // corrected: one whose end was seen live keeps what the events said.
        let correctable = match run.status {
            RunStatus::Running => msg.status != RunStatus::Running,
            RunStatus::Unknown => !matches!(msg.status, RunStatus::Running | RunStatus::Unknown),
            _ => false,
        };
        if !correctable {
            return None;
        }
        let known = msg.status != RunStatus::Unknown;
        run.status = msg.status;
        run.ended_at = if known {
            Some(msg.ended_at.unwrap_or_else(now_ms))
        } else {
            None
        };
        if run.started_at.is_none() {
            run.started_at = msg.started_at;
        }
        run.stop_reason = msg.stop_reason.clone();
        run.reattached = known;
        let ended_at = run.ended_at;
        self.remember_run(&msg.run_id, &agent_id);
        self.mark_run(&agent_id, &msg.run_id);
        let agent = self.agent_mut(&agent_id);
        if agent.current_run_id.as_deref() == Some(msg.run_id.as_str()) {
            agent.status = AgentStatus::Idle;
            agent.current_run_id = None;
        }
        self.mark_agent(&agent_id);
        Some(Reconciled {
            run_id: msg.run_id,
            agent_id,
            status: msg.status,
            ended_at,
            stop_reason: msg.stop_reason,
            via: "agent.wait",
        })
    }
}

impl Handler<RunOutcome> for AgentRegistry {
    type Result = MessageResult<RunOutcome>;

    fn handle(&mut self, msg: RunOutcome, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.apply_outcome(msg))
    }
}

impl Handler<GetRun> for AgentRegistry {
    type Result = MessageResult<GetRun>;

    fn handle(&mut self, GetRun(run_id): GetRun, _: &mut Context<Self>) -> Self::Result {
        let found = self.runs.iter().find_map(|(agent, runs)| {
            runs.iter()
                .find(|r| r.run_id == run_id)
                .map(|r| (agent.clone(), r.clone()))
        });
        MessageResult(found.map(|(agent, run)| RunView {
            agent_id: Some(agent),
            gateway_id: self.gateway.clone(),
            run,
            source: "registry",
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(run: &str, status: RunStatus) -> RunOutcome {
        RunOutcome {
            agent_id: Some("main".into()),
            run_id: run.into(),
            status,
            started_at: Some(1),
            ended_at: Some(5),
            stop_reason: Some("stop".into()),
        }
    }

    #[test]
    fn a_run_seen_running_gets_its_real_outcome_once() {
        let mut r = AgentRegistry::new();
        r.apply_run("main", "r1", crate::protocol::RunPhase::Active, false, 1);
        let c = r.apply_outcome(outcome("r1", RunStatus::Ok));
        assert_eq!(
            c.as_ref().map(|c| (c.status, c.ended_at, c.via)),
            Some((RunStatus::Ok, Some(5), "agent.wait"))
        );
        let run = &r.runs["main"][0];
        assert_eq!((run.status, run.reattached), (RunStatus::Ok, true));
        assert_eq!(r.agents["main"].status, AgentStatus::Idle);
        // The same outcome again (the held caller's reattach) changes nothing.
        assert_eq!(r.apply_outcome(outcome("r1", RunStatus::Ok)), None);
    }

    #[test]
    fn an_end_seen_live_is_not_overwritten() {
        let mut r = AgentRegistry::new();
        r.apply_run("main", "r1", crate::protocol::RunPhase::Active, false, 1);
        r.apply_run("main", "r1", crate::protocol::RunPhase::Failed, false, 2);
        assert_eq!(r.apply_outcome(outcome("r1", RunStatus::Ok)), None);
        assert_eq!(r.runs["main"][0].status, RunStatus::Error);
    }

    #[test]
    fn unknown_is_only_for_runs_the_gateway_lost_and_can_be_put_right() {
        let mut r = AgentRegistry::new();
        r.apply_run("main", "r1", crate::protocol::RunPhase::Active, false, 1);
        let c = r.apply_outcome(outcome("r1", RunStatus::Unknown));
        assert_eq!(
            c.map(|c| (c.status, c.ended_at)),
            Some((RunStatus::Unknown, None))
        );
        assert!(!r.runs["main"][0].reattached);
        let c = r.apply_outcome(outcome("r1", RunStatus::Aborted));
        assert_eq!(c.map(|c| c.status), Some(RunStatus::Aborted));
    }

    #[test]
    fn a_run_the_registry_never_saw_is_recorded_and_found_by_id() {
        let mut r = AgentRegistry::new();
        assert!(r.apply_outcome(outcome("r9", RunStatus::Error)).is_some());
        let found = r
            .runs
            .get("main")
            .and_then(|runs| runs.iter().find(|x| x.run_id == "r9"));
        assert_eq!(found.map(|x| x.status), Some(RunStatus::Error));
        // Without an agent id and no event naming the run, nothing to place.
        let mut no_agent = outcome("r10", RunStatus::Ok);
        no_agent.agent_id = None;
        assert_eq!(r.apply_outcome(no_agent), None);
    }
}
