//! Requests over the live connection: [`Send`] from the HTTP API / CLI,
//! forwarded or refused at once (nothing is queued), and the registry
//! resyncs (`agents.list`, `sessions.list`) the supervisor makes itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::{Addr, AsyncContext, Context, Handler, ResponseFuture};
use serde_json::json;
use serde_json::value::RawValue;

use super::{AgentsSnapshot, GatewayConnection, Send, Supervisor};
use crate::actors::messages::{LinkState, RequestError};
use crate::telemetry::events as ev;

/// Registry resyncs (`agents.list` + `sessions.list`) are at most this frequent.
const RESYNC_MIN_INTERVAL: Duration = Duration::from_secs(2);

impl Supervisor {
    /// Refetch `agents.list` (which agents exist) and `sessions.list` (which
    /// runs are active) for the registry.
    pub(super) fn resync(&mut self, ctx: &mut Context<Self>) {
        // At most one resync per RESYNC_MIN_INTERVAL: gaps and health changes
        // in a burst (a struggling link) coalesce into one trailing resync.
        if let Some(last) = self.last_resync {
            let since = last.elapsed();
            if since < RESYNC_MIN_INTERVAL {
                if !self.resync_scheduled {
                    self.resync_scheduled = true;
                    ctx.run_later(RESYNC_MIN_INTERVAL - since, |act, ctx| {
                        act.resync_scheduled = false;
                        act.resync(ctx);
                    });
                }
                return;
            }
        }
        let Some(conn) = self.conn.clone() else {
            return;
        };
        self.last_resync = Some(Instant::now());
        if let Some(snap) = self.out.snapshots.clone() {
            fetch(
                ctx,
                &conn,
                self.cfg.connection.gateway.clone(),
                "agents.list",
                move |payload| {
                    let _ = snap.try_send(AgentsSnapshot { payload });
                },
            );
        }
        // Read to the end (paged), then runs no longer active are settled.
        self.sync_sessions(conn, ctx);
    }
}

/// Send `method` with `{}` and hand a successful answer to `done`; a failure
/// is logged (the registry keeps its current view).
fn fetch(
    ctx: &mut Context<Supervisor>,
    conn: &Addr<GatewayConnection>,
    gateway: Arc<str>,
    method: &'static str,
    done: impl FnOnce(Box<RawValue>) + 'static,
) {
    let req = conn.send(Send::new(method, Some(json!({}))));
    ctx.spawn(actix::fut::wrap_future(async move {
        match req.await {
            Ok(Ok(payload)) => done(payload),
            Ok(Err(e)) => resync_failed(&gateway, method, &e),
            Err(_) => {}
        }
    }));
}

fn resync_failed(gateway: &str, method: &str, e: &RequestError) {
    tracing::warn!(
        gateway,
        event = ev::RPC_FAILED,
        method,
        code = e.code(),
        "could not refresh the registry: {e}"
    );
}

impl Handler<Send> for Supervisor {
    type Result = ResponseFuture<Result<Box<RawValue>, RequestError>>;

    fn handle(&mut self, msg: Send, _ctx: &mut Context<Self>) -> Self::Result {
        let method = msg.method.clone();
        let gateway = self.cfg.connection.gateway.clone();
        let metrics = self.request_metrics.clone();
        let started = Instant::now();
        let fut: Result<_, RequestError> = match (&self.conn, self.state) {
            (_, LinkState::Stopping) => Err(RequestError::ShuttingDown),
            (Some(conn), LinkState::Connected) => Ok(conn.send(msg)),
            _ => Err(RequestError::NotConnected {
                state: self.state.as_str().into(),
                next_attempt_in_ms: self
                    .next_attempt_at
                    .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            }),
        };
        Box::pin(async move {
            let result = match fut {
                Ok(f) => f.await.unwrap_or_else(|_| {
                    Err(RequestError::Disconnected {
                        reason: "the connection stopped".into(),
                    })
                }),
                Err(e) => Err(e),
            };
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.code(),
            };
            metrics
                .borrow_mut()
                .done(&method, outcome, started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                tracing::info!(gateway = %gateway, event = ev::RPC_FAILED, method = %method, code = e.code(), elapsed_ms = started.elapsed().as_millis() as u64, "request failed: {e}");
            }
            result
        })
    }
}
