//! The registry reattaches too: after each hello-ok, runs the registry held
//! as running that `sessions.list` (read to the end) no longer shows active
//! get their real outcome from `agent.wait {timeoutMs: 0}` instead of
//! `unknown`. Each correction the registry accepts goes out to the broker
//! (SSE, NATS) as `bridge.run_reconciled`.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::{Addr, AsyncContext, Context, Handler, Message, ResponseFuture};
use futures_util::StreamExt;
use serde_json::json;

use super::run_queries::{agent_wait, sessions_all, WaitAnswer};
use super::{GatewayConnection, Outputs, SessionsSnapshot, Supervisor};
use crate::actors::messages::{EventBatch, LinkState, RequestError};
use crate::actors::registry::{Reconciled, RunOutcome, RunRecord, RunStatus, RunView, StaleRun};
use crate::protocol::{GatewayEvent, Inbound};
use crate::telemetry::events as ev;

/// What the gateway knows of a run the registry does not hold
/// (`GET /v1/runs/{runId}`): `agent.wait {timeoutMs: 0}`, and for a
/// `timeout` answer the sessions' `activeRunIds`. `None`: the gateway does
/// not know it either.
#[derive(Debug, Message)]
#[rtype(result = "Result<Option<RunView>, RequestError>")]
pub struct LookupRun(pub String);

/// The SSE / NATS event name of a registry correction (CONTRACT).
pub const RUN_RECONCILED: &str = "bridge.run_reconciled";

impl Supervisor {
    /// Hand a run's outcome to the registry (announcing it if it corrected
    /// what the registry showed), then answer the held caller: whoever got
    /// the answer and reads `/v1/runs` next sees the same outcome.
    pub(super) fn record_outcome_then<T: 'static>(
        &self,
        outcome: RunOutcome,
        tx: Option<tokio::sync::oneshot::Sender<T>>,
        answer: T,
        ctx: &mut Context<Self>,
    ) {
        let out = self.out.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            apply(out, outcome).await;
            if let Some(tx) = tx {
                let _ = tx.send(answer);
            }
        }));
    }

    /// Read `sessions.list` to the end, give it to the registry, and settle
    /// the runs it no longer shows active (at most `max_reattach` at once).
    pub(super) fn sync_sessions(&mut self, conn: Addr<GatewayConnection>, ctx: &mut Context<Self>) {
        let Some(sessions) = self.out.sessions.clone() else {
            return;
        };
        let out = self.out.clone();
        let gateway = self.cfg.connection.gateway.clone();
        let parallel = self.cfg.max_reattach.max(1);
        let requested_at = Instant::now();
        ctx.spawn(actix::fut::wrap_future(async move {
            let payload = match sessions_all(&conn).await {
                Ok(p) => p,
                Err(e) => return failed(&gateway, "sessions.list", &e),
            };
            let Ok(stale) = sessions
                .send(SessionsSnapshot {
                    payload,
                    requested_at,
                })
                .await
            else {
                return;
            };
            futures_util::stream::iter(stale)
                .for_each_concurrent(parallel, |run| settle(&conn, &out, &gateway, run))
                .await;
        }));
    }
}

impl Handler<LookupRun> for Supervisor {
    type Result = ResponseFuture<Result<Option<RunView>, RequestError>>;

    fn handle(&mut self, LookupRun(run_id): LookupRun, _: &mut Context<Self>) -> Self::Result {
        let gateway = self.cfg.connection.gateway.clone();
        let conn = match (&self.conn, self.state) {
            (_, LinkState::Stopping) => Err(RequestError::ShuttingDown),
            (Some(conn), LinkState::Connected) => Ok(conn.clone()),
            _ => Err(RequestError::NotConnected {
                state: self.state.as_str().into(),
                next_attempt_in_ms: self
                    .next_attempt_at
                    .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            }),
        };
        Box::pin(async move {
            let conn = conn?;
            let answer = agent_wait(&conn, &run_id, std::time::Duration::ZERO).await?;
            let w = WaitAnswer::parse(&answer);
            let view = |agent_id, status| RunView {
                agent_id,
                gateway_id: gateway.clone(),
                run: RunRecord {
                    run_id: run_id.clone(),
                    status,
                    started_at: w.started_at,
                    ended_at: w.ended_at,
                    last_event_at: None,
                    stop_reason: w.stop_reason.clone(),
                    reattached: false,
                    touched: None,
                },
                source: "gateway",
            };
            if !w.is_pending() {
                return Ok(Some(view(None, w.run_status())));
            }
            // `timeout` at once: in flight, or unknown to the gateway.
            let all = sessions_all(&conn).await?;
            Ok(active_agent(&all, &run_id).map(|agent| view(agent, RunStatus::Running)))
        })
    }
}

/// `Some(agent)` when a session lists `run_id` among its active runs.
fn active_agent(sessions: &serde_json::value::RawValue, run_id: &str) -> Option<Option<String>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Row {
        #[serde(default)]
        agent_id: Option<String>,
        #[serde(default)]
        active_run_ids: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct All {
        #[serde(default)]
        sessions: Vec<Row>,
    }
    let all: All = serde_json::from_str(sessions.get()).ok()?;
    all.sessions
        .into_iter()
        .find(|r| r.active_run_ids.iter().any(|id| id == run_id))
        .map(|r| r.agent_id)
}

/// One run the gateway no longer shows active: how did it end?
async fn settle(conn: &Addr<GatewayConnection>, out: &Outputs, gateway: &Arc<str>, run: StaleRun) {
    let w = match agent_wait(conn, &run.run_id, std::time::Duration::ZERO).await {
        Ok(a) => WaitAnswer::parse(&a),
        // Refused (e.g. no `operator.write`): not active is all there is to
        // know, so `unknown`, as before reattaching.
        Err(e @ RequestError::Rejected(_)) => {
            failed(gateway, "agent.wait", &e);
            WaitAnswer::default()
        }
        // Still `running` in the registry: the next session asks again.
        Err(e) => return failed(gateway, "agent.wait", &e),
    };
    // Not active and `timeout`: the gateway does not know it any more.
    let status = if w.is_pending() {
        RunStatus::Unknown
    } else {
        w.run_status()
    };
    apply(
        out.clone(),
        RunOutcome {
            agent_id: Some(run.agent_id),
            run_id: run.run_id,
            status,
            started_at: w.started_at,
            ended_at: w.ended_at,
            stop_reason: w.stop_reason,
        },
    )
    .await;
}

async fn apply(out: Outputs, outcome: RunOutcome) {
    let Some(runs) = out.runs else {
        return;
    };
    let Ok(Some(reconciled)) = runs.send(outcome).await else {
        return;
    };
    if let (Some(events), Some(event)) = (out.events, reconciled_event(&reconciled)) {
        let _ = events.try_send(EventBatch(vec![Arc::new(event)]));
    }
}

/// `bridge.run_reconciled` as the broker takes events (`seq` null).
fn reconciled_event(r: &Reconciled) -> Option<GatewayEvent> {
    let frame = json!({"type": "event", "event": RUN_RECONCILED, "payload": r}).to_string();
    match crate::protocol::decode(&frame) {
        Ok(Inbound::Event(f)) => Some(GatewayEvent::from_frame(&f).0),
        _ => None,
    }
}

fn failed(gateway: &str, method: &str, e: &RequestError) {
    tracing::warn!(
        gateway,
        event = ev::RPC_FAILED,
        method,
        code = e.code(),
        "could not reconcile the registry's runs: {e}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconciled_event_has_the_contract_shape() {
        let e = reconciled_event(&Reconciled {
            run_id: "r1".into(),
            agent_id: "main".into(),
            status: RunStatus::Ok,
            ended_at: Some(7),
            stop_reason: Some("stop".into()),
            via: "agent.wait",
        })
        .unwrap();
        assert_eq!(e.name.as_str(), RUN_RECONCILED);
        let payload: serde_json::Value = serde_json::from_str(e.payload_json()).unwrap();
        assert_eq!(e.seq, None);
        assert_eq!(
            payload,
            json!({"runId": "r1", "agentId": "main", "status": "ok",
                "endedAt": 7, "stopReason": "stop", "via": "agent.wait"})
        );
    }
}
