//! Reattach first: an accepted `agent` run is never lost with the link.
//!
//! The gateway keeps running an accepted run when the socket drops
//! (PROTOCOL.md §5.1). A caller waiting for its final answer ([`Rpc`] with
//! `expect_final`) is therefore *held* here, up to its own deadline, instead
//! of failing with `BRIDGE_DISCONNECTED`. After the next hello-ok the
//! supervisor asks `agent.wait {runId, timeoutMs: <time the caller has
//! left>}` and answers with the real outcome (`reattached: true`). The
//! `agent` request is never sent again: that would start a second run.
//!
//! An unknown run and one still in flight both answer `timeout`; only
//! `sessions.list`'s `activeRunIds` tells them apart. So a `timeout` that
//! comes back before the caller's deadline, or any `timeout` after a new
//! `bootId`, is checked there: not active means the gateway lost the run
//! (`BRIDGE_RUN_OUTCOME_UNKNOWN`), at once rather than at the deadline.
//!
//! Held callers (and so the `agent.wait` calls in flight for them) are
//! bounded by `gateway.max_reattach`; past it, a caller gets the old
//! `BRIDGE_DISCONNECTED`, which says so.

use std::time::{Duration, Instant};

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::{
    ActorFutureExt, Addr, AsyncContext, Context, Handler, ResponseActFuture, WrapFuture,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::requests::SendReply;
use super::run_queries::{active_runs, agent_wait, WaitAnswer};
use super::{GatewayConnection, Supervisor};
use crate::actors::gateway::Responder;
use crate::actors::messages::{Answer, LinkState, RequestError, Rpc, RunFailure};
use crate::actors::registry::{RunOutcome, RunStatus};
use crate::telemetry::events as ev;

/// A run still active but whose `agent.wait` came back early is asked
/// again after this pause (never a tight loop).
const REWAIT_PAUSE: Duration = Duration::from_millis(250);

/// A caller held across a dropped link.
pub(super) struct Held {
    run_id: String,
    /// From the `agent` params (`agentId`, or the session key's agent).
    agent_id: Option<String>,
    /// The caller's own deadline.
    deadline: Instant,
    timeout_ms: u64,
    /// The `bootId` of the session that accepted the run: a different one
    /// after the reconnect means the gateway restarted (and may have lost it).
    boot_id: Option<String>,
    /// The connection generation whose loss put the caller here: a reattach
    /// waits for a newer session.
    lost_generation: u64,
    tx: Option<oneshot::Sender<Result<Answer, RequestError>>>,
    /// An `agent.wait` for this caller is in flight.
    busy: bool,
    held_since: Instant,
}

/// What `agent.wait` (and `sessions.list`) said about a held run.
#[derive(Debug)]
enum Resolution {
    /// The run ended: the `agent.wait` payload.
    Ended(Box<RawValue>),
    /// The gateway does not know the run (lost in a restart, or gone).
    Unknown {
        boot_changed: bool,
    },
    /// The caller's deadline came first.
    Timeout,
    /// The link dropped again: wait for the next hello-ok.
    LinkLost,
    ShuttingDown,
    /// The gateway refused `agent.wait` itself.
    Failed(RequestError),
}

/// The agent an `agent` request runs: `agentId`, else the session key's.
fn agent_of(params: Option<&RawValue>) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        agent_id: Option<String>,
        session_key: Option<String>,
    }
    let p: P = serde_json::from_str(params?.get()).ok()?;
    p.agent_id.or_else(|| {
        let key = p.session_key?;
        let mut parts = key.splitn(3, ':');
        match (parts.next(), parts.next()) {
            (Some("agent"), Some(id)) if !id.is_empty() => Some(id.to_owned()),
            _ => None,
        }
    })
}

/// The supervisor's answer to an [`Rpc`]: a request that cannot be held
/// goes to the connection with the caller's own responder, as a `Send`
/// does (no future of the supervisor's per request); an `agent` awaited
/// with `expect_final` is followed here, so it can be held across a drop.
pub enum RpcReply {
    Direct(SendReply),
    Holdable(ResponseActFuture<Supervisor, Result<Answer, RequestError>>),
}

impl MessageResponse<Supervisor, Rpc> for RpcReply {
    fn handle(
        self,
        ctx: &mut Context<Supervisor>,
        tx: Option<OneshotSender<Result<Answer, RequestError>>>,
    ) {
        match self {
            RpcReply::Direct(reply) => {
                reply.answer(Responder::Rpc(tx.unwrap_or_else(|| oneshot::channel().0)))
            }
            RpcReply::Holdable(fut) => MessageResponse::<Supervisor, Rpc>::handle(fut, ctx, tx),
        }
    }
}

impl Handler<Rpc> for Supervisor {
    type Result = RpcReply;

    fn handle(&mut self, Rpc(msg): Rpc, _: &mut Context<Self>) -> Self::Result {
        let holdable = msg.method == "agent" && msg.expect_final;
        if !holdable {
            return RpcReply::Direct(self.route(msg));
        }
        let timeout = msg.timeout.unwrap_or(self.cfg.connection.request_timeout);
        let deadline = Instant::now() + timeout;
        let agent_id = agent_of(msg.params.as_deref());
        let generation = self.generation;
        let boot_id = self.info.boot_id.clone();
        let sent = self.forward(msg);
        RpcReply::Holdable(Box::pin(sent.into_actor(self).then(
            move |res, act, ctx| match res {
                Err(RequestError::Run {
                    run_id,
                    failure: RunFailure::Disconnected { reason },
                }) => act.hold(
                    Held {
                        run_id,
                        agent_id,
                        deadline,
                        timeout_ms: timeout.as_millis() as u64,
                        boot_id,
                        lost_generation: generation,
                        tx: None,
                        busy: false,
                        held_since: Instant::now(),
                    },
                    reason,
                    ctx,
                ),
                other => Box::pin(actix::fut::ready(other.map(|payload| Answer {
                    payload,
                    reattached: false,
                }))),
            },
        )))
    }
}

impl Supervisor {
    /// Hold a caller whose accepted run lost its link, or refuse to (bound,
    /// stopping, deadline passed) with a typed error carrying the `runId`.
    fn hold(
        &mut self,
        mut held: Held,
        reason: String,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<Answer, RequestError>> {
        let run_id = held.run_id.clone();
        let refuse = |failure| -> ResponseActFuture<Self, Result<Answer, RequestError>> {
            Box::pin(actix::fut::ready(Err(RequestError::Run {
                run_id: run_id.clone(),
                failure,
            })))
        };
        if self.state == LinkState::Stopping {
            return refuse(RunFailure::ShuttingDown);
        }
        if Instant::now() >= held.deadline {
            return refuse(RunFailure::Timeout {
                after_ms: held.timeout_ms,
            });
        }
        self.purge_gone();
        let max = self.cfg.max_reattach;
        if self.held.len() >= max {
            return refuse(RunFailure::Disconnected {
                reason: format!(
                    "{reason}; not held for a reattach: {max} callers are held already (gateway.max_reattach)"
                ),
            });
        }
        let (tx, rx) = oneshot::channel();
        held.tx = Some(tx);
        let deadline = held.deadline;
        let timeout_ms = held.timeout_ms;
        self.next_held_id += 1;
        let id = self.next_held_id;
        tracing::info!(gateway = %self.cfg.connection.gateway, run_id = %held.run_id, deadline_in_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64, "link lost after the run was accepted; the caller is held until the link is back");
        let newer_session =
            self.state == LinkState::Connected && self.generation != held.lost_generation;
        self.held.insert(id, held);
        if newer_session {
            self.reattach(id, ctx);
        } else if self.conn.is_none() && self.retry_timer.is_none() {
            // A FailFast link (`call`) may have given up before the caller
            // was held: it must come back for the reattach.
            let delay = self.cfg.backoff.delay(self.attempt);
            self.schedule(
                delay,
                "run_held",
                "a caller waits for its accepted run",
                ctx,
            );
        }
        let wait = async move {
            match tokio::time::timeout_at(deadline.into(), rx).await {
                Ok(Ok(answer)) => answer,
                // Dropped without an answer: only when the supervisor stops.
                Ok(Err(_)) => Err(RequestError::Run {
                    run_id,
                    failure: RunFailure::ShuttingDown,
                }),
                Err(_) => Err(RequestError::Run {
                    run_id,
                    failure: RunFailure::Timeout {
                        after_ms: timeout_ms,
                    },
                }),
            }
        };
        Box::pin(wait.into_actor(self).map(move |res, act, _| {
            // An `agent.wait` still in flight keeps its slot until it ends.
            if act.held.get(&id).is_some_and(|h| !h.busy) {
                act.held.remove(&id);
            }
            res
        }))
    }

    /// Forget held callers that went away (an HTTP client that hung up drops
    /// its future, so its slot is not freed there) unless an `agent.wait`
    /// for them is still in flight: the bound counts only live callers.
    fn purge_gone(&mut self) {
        self.held
            .retain(|_, h| h.busy || h.tx.as_ref().is_some_and(|tx| !tx.is_closed()));
    }

    /// After a hello-ok: ask about every held run not being asked already.
    pub(super) fn reattach_all(&mut self, ctx: &mut Context<Self>) {
        self.purge_gone();
        let ids: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| !h.busy && h.lost_generation != self.generation)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.reattach(id, ctx);
        }
    }

    fn reattach(&mut self, id: u64, ctx: &mut Context<Self>) {
        let Some(conn) = self.conn.as_deref().cloned() else {
            return;
        };
        let generation = self.generation;
        let current_boot = self.info.boot_id.clone();
        let Some(h) = self.held.get_mut(&id) else {
            return;
        };
        if h.busy || h.tx.as_ref().is_none_or(|tx| tx.is_closed()) {
            return;
        }
        h.busy = true;
        let boot_changed = matches!((&h.boot_id, &current_boot), (Some(a), Some(b)) if a != b);
        let fut = resolve(conn, h.run_id.clone(), h.deadline, boot_changed);
        ctx.spawn(
            fut.into_actor(self)
                .map(move |res, act, ctx| act.finish(id, generation, res, ctx)),
        );
    }

    fn finish(&mut self, id: u64, generation: u64, res: Resolution, ctx: &mut Context<Self>) {
        let Some(h) = self.held.get_mut(&id) else {
            return;
        };
        h.busy = false;
        let caller_gone = h.tx.as_ref().is_none_or(|tx| tx.is_closed());
        if let (Resolution::LinkLost, false) = (&res, caller_gone) {
            // Held on: the next hello-ok asks again (or now, if it came).
            h.lost_generation = generation;
            if self.state == LinkState::Connected && self.generation != generation {
                self.reattach(id, ctx);
            }
            return;
        }
        let Some(mut h) = self.held.remove(&id) else {
            return;
        };
        let gateway = self.cfg.connection.gateway.clone();
        let held_ms = h.held_since.elapsed().as_millis() as u64;
        let run = |failure| RequestError::Run {
            run_id: h.run_id.clone(),
            failure,
        };
        let outcome = |w: &WaitAnswer, status| RunOutcome {
            agent_id: h.agent_id.clone(),
            run_id: h.run_id.clone(),
            status,
            started_at: w.started_at,
            ended_at: w.ended_at,
            stop_reason: w.stop_reason.clone(),
        };
        let (answer, record) = match res {
            Resolution::Ended(payload) => {
                let w = WaitAnswer::parse(&payload);
                tracing::info!(gateway = %gateway, event = ev::GATEWAY_RUN_REATTACHED, run_id = %h.run_id, outcome = w.status.as_deref().unwrap_or(""), stop_reason = w.stop_reason.as_deref().unwrap_or(""), held_ms, "the held caller got the run's real outcome from agent.wait");
                let record = outcome(&w, w.run_status());
                (
                    Ok(Answer {
                        payload,
                        reattached: true,
                    }),
                    Some(record),
                )
            }
            Resolution::Unknown { boot_changed } => {
                tracing::warn!(gateway = %gateway, event = ev::GATEWAY_RUN_REATTACHED, run_id = %h.run_id, outcome = "unknown", boot_changed, held_ms, "the gateway no longer knows the accepted run: its outcome is unknown");
                let record = outcome(&WaitAnswer::default(), RunStatus::Unknown);
                (
                    Err(run(RunFailure::OutcomeUnknown { boot_changed })),
                    Some(record),
                )
            }
            Resolution::Timeout => (
                Err(run(RunFailure::Timeout {
                    after_ms: h.timeout_ms,
                })),
                None,
            ),
            Resolution::LinkLost => return,
            Resolution::ShuttingDown => (Err(run(RunFailure::ShuttingDown)), None),
            Resolution::Failed(e) => (Err(e), None),
        };
        match record {
            // The registry first, so the caller's next read agrees.
            Some(record) => self.record_outcome_then(record, h.tx.take(), answer, ctx),
            None => {
                if let Some(tx) = h.tx.take() {
                    let _ = tx.send(answer);
                }
            }
        }
    }

    /// Shutdown: every held caller gets `BRIDGE_SHUTTING_DOWN` with its run.
    pub(super) fn release_held(&mut self) {
        for (_, mut h) in self.held.drain() {
            if let Some(tx) = h.tx.take() {
                let _ = tx.send(Err(RequestError::Run {
                    run_id: h.run_id,
                    failure: RunFailure::ShuttingDown,
                }));
            }
        }
    }

    /// Whether callers are held (a `call --final` keeps reconnecting then).
    pub(super) fn holds_callers(&self) -> bool {
        !self.held.is_empty()
    }
}

/// Ask the gateway how a held run ended, within the caller's deadline.
async fn resolve(
    conn: Addr<GatewayConnection>,
    run_id: String,
    deadline: Instant,
    boot_changed: bool,
) -> Resolution {
    let mut checked_boot = !boot_changed;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Resolution::Timeout;
        }
        // After a restart a lost run answers `timeout` at once, like one in
        // flight: ask without waiting, then look at `activeRunIds`.
        let wait_for = if checked_boot {
            deadline - now
        } else {
            Duration::ZERO
        };
        let answer = match agent_wait(&conn, &run_id, wait_for).await {
            Ok(p) => p,
            Err(e) => match from_error(e) {
                Some(end) => return end,
                None => {
                    pause(deadline).await;
                    continue;
                }
            },
        };
        if !WaitAnswer::parse(&answer).is_pending() {
            return Resolution::Ended(answer);
        }
        if checked_boot && Instant::now() >= deadline {
            return Resolution::Timeout;
        }
        // `timeout` before the deadline: in flight, or unknown?
        match active_runs(&conn).await {
            Ok(Some(active)) if !active.contains(&run_id) => {
                return Resolution::Unknown { boot_changed }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(end) = from_error(e) {
                    return end;
                }
                pause(deadline).await;
                continue;
            }
        }
        if checked_boot {
            pause(deadline).await;
        }
        checked_boot = true;
    }
}

/// A short pause before asking again, never past the caller's deadline.
async fn pause(deadline: Instant) {
    tokio::time::sleep(REWAIT_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
}

/// How a failed `agent.wait` / `sessions.list` ends the reattach; `None`:
/// ask again (a slow or still-starting gateway is not the run's outcome).
fn from_error(e: RequestError) -> Option<Resolution> {
    Some(match e {
        RequestError::NotConnected { .. }
        | RequestError::Disconnected { .. }
        | RequestError::Run {
            failure: RunFailure::Disconnected { .. },
            ..
        } => Resolution::LinkLost,
        RequestError::ShuttingDown
        | RequestError::Run {
            failure: RunFailure::ShuttingDown,
            ..
        } => Resolution::ShuttingDown,
        RequestError::Timeout { .. } => return None,
        RequestError::Rejected(g) if g.code == "UNAVAILABLE" => return None,
        other => Resolution::Failed(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn the_agent_of_a_request_comes_from_its_params() {
        assert_eq!(
            agent_of(Some(&raw(r#"{"agentId":"ops","message":"x"}"#))).as_deref(),
            Some("ops")
        );
        assert_eq!(
            agent_of(Some(&raw(r#"{"sessionKey":"agent:main:main"}"#))).as_deref(),
            Some("main")
        );
        assert_eq!(agent_of(Some(&raw(r#"{"message":"x"}"#))), None);
        assert_eq!(agent_of(None), None);
    }
}
