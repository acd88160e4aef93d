//! When the registry is refreshed from the gateway, in one place. A resync
//! fetches `agents.list` (which agents exist) and every page of
//! `sessions.list` (which runs are active; see `reconcile`). Its triggers:
//! - **hello-ok**: every new session refetches at once ([`Supervisor::resync_on_hello`]);
//! - **a seq gap**: events were missed ([`SeqGap`] from the connection);
//! - **health drift**: a `health` event names other agents than the last
//!   `agents.list` answer ([`HealthSeen`] from the connection).
//!
//! Triggers in a burst (a struggling link) coalesce: at most one resync per
//! [`RESYNC_MIN_INTERVAL`], the last one trailing. The registry only receives
//! the answers: it never asks for a resync (no message goes back up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::{ActorFutureExt, Addr, AsyncContext, Context, Handler, WrapFuture};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{AgentsSnapshot, GatewayConnection, Send, Supervisor};
use crate::actors::messages::{HealthSeen, LinkState, RequestError, SeqGap};
use crate::telemetry::events as ev;

/// Registry resyncs (`agents.list` + `sessions.list`) are at most this frequent.
pub const RESYNC_MIN_INTERVAL: Duration = Duration::from_secs(2);

impl Supervisor {
    /// A new session (hello-ok) refetches at once, whatever the last resync.
    pub(super) fn resync_on_hello(&mut self, ctx: &mut Context<Self>) {
        self.last_resync = None;
        self.resync(ctx);
    }

    /// Refetch `agents.list` and `sessions.list` for the registry.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        if let Some(last) = self.last_resync {
            let since = last.elapsed();
            if since < RESYNC_MIN_INTERVAL {
                if !self.resync_scheduled {
                    self.resync_scheduled = true;
                    ctx.run_later(RESYNC_MIN_INTERVAL - since, |act, ctx| {
                        act.resync_scheduled = false;
                        if act.state == LinkState::Connected {
                            act.resync(ctx);
                        }
                    });
                }
                return;
            }
        }
        let Some(conn) = self.conn.as_deref().cloned() else {
            return;
        };
        self.last_resync = Some(Instant::now());
        self.fetch_agents(&conn, ctx);
        // Read to the end (paged), then runs no longer active are settled.
        self.sync_sessions(conn, ctx);
    }

    /// `agents.list`: its ids are kept for the health drift check, its
    /// payload goes to the registry.
    fn fetch_agents(&mut self, conn: &Addr<GatewayConnection>, ctx: &mut Context<Self>) {
        let gateway = self.cfg.connection.gateway.clone();
        let snap = self.out.snapshots.clone();
        let req = conn.send(Send::new("agents.list", Some(json!({}))));
        ctx.spawn(req.into_actor(self).map(move |res, act, _| match res {
            Ok(Ok(payload)) => {
                if let Some(ids) = listed_ids(&payload) {
                    act.listed_agents = Some(ids);
                }
                if let Some(snap) = snap {
                    let _ = snap.try_send(AgentsSnapshot { payload });
                }
            }
            Ok(Err(e)) => resync_failed(&gateway, "agents.list", &e),
            Err(_) => {}
        }));
    }
}

/// The agent ids of an `agents.list` answer, sorted; `None` if it is not
/// understood (the registry says so when it applies the same payload).
fn listed_ids(payload: &RawValue) -> Option<Vec<String>> {
    #[derive(Deserialize)]
    struct Row {
        id: Option<String>,
    }
    #[derive(Deserialize)]
    struct Wire {
        #[serde(default)]
        agents: Vec<Row>,
    }
    let wire: Wire = serde_json::from_str(payload.get()).ok()?;
    let mut ids: Vec<String> = wire.agents.into_iter().filter_map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
}

/// Whether a `health` event's agents (sorted) differ from the last listed.
fn drifted(listed: Option<&[String]>, health: &[String]) -> bool {
    !health.is_empty() && listed.is_some_and(|l| l != health)
}

fn resync_failed(gateway: &Arc<str>, method: &str, e: &RequestError) {
    tracing::warn!(
        gateway = %gateway,
        event = ev::RPC_FAILED,
        method,
        code = e.code(),
        "could not refresh the registry: {e}"
    );
}

impl Handler<SeqGap> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: SeqGap, ctx: &mut Context<Self>) {
        if msg.generation == self.generation && self.state == LinkState::Connected {
            self.resync(ctx);
        }
    }
}

impl Handler<HealthSeen> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: HealthSeen, ctx: &mut Context<Self>) {
        if msg.generation != self.generation || self.state != LinkState::Connected {
            return;
        }
        if drifted(self.listed_agents.as_deref(), &msg.agent_ids) {
            tracing::debug!(gateway = %self.cfg.connection.gateway, agents = ?msg.agent_ids, "health names other agents than agents.list; resyncing");
            self.resync(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn listed_ids_are_sorted_and_ignore_rows_without_id() {
        let p = raw(
            r#"{"defaultId":"main","agents":[{"id":"ops"},{"name":"x"},{"id":"main"},{"id":"ops"}]}"#,
        );
        assert_eq!(listed_ids(&p), Some(vec!["main".into(), "ops".into()]));
        assert_eq!(listed_ids(&raw(r#"{"agents":[]}"#)), Some(vec![]));
        assert_eq!(listed_ids(&raw(r#"[1,2]"#)), None);
    }

    #[test]
    fn drift_needs_a_known_list_and_a_non_empty_health() {
        let listed = vec!["main".to_owned(), "ops".to_owned()];
        assert!(!drifted(Some(&listed), &listed));
        assert!(drifted(Some(&listed), &["main".to_owned()]));
        assert!(drifted(
            Some(&listed),
            &["main".to_owned(), "ops".to_owned(), "qa".to_owned()]
        ));
        // Nothing listed yet: hello-ok's resync is already under way.
        assert!(!drifted(None, &["main".to_owned()]));
        // A health event without agents says nothing about the list.
        assert!(!drifted(Some(&listed), &[]));
    }
}
