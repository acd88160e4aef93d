//! `AgentRegistry`: which agents exist and what each is doing.
//!
//! **Owns:** one [`AgentState`] per agent id (from `agents.list`, updated by
//! `agent` / `chat` events), the recent runs of each, whether the
//! view is live or stale (link down), the store writer (if any).
//!
//! **Handles:** [`EventBatch`] (from `GatewayConnection`: the `agent` and
//! `chat` events of one read pass, in order; [`EventMsg`], one event, from
//! tests), [`AgentsSnapshot`] and [`SessionsSnapshot`] (from `Supervisor`'s
//! resyncs; a sessions snapshot answers the runs held as running that no
//! session lists as active any more), [`LinkChanged`] (from `Supervisor`),
//! [`RunOutcome`] (from `Supervisor`: how a run it lost sight of ended, per
//! `agent.wait`; answered with the correction, if any, for
//! `bridge.run_reconciled`), [`ListAgents`] / [`GetAgent`] / [`GetRun`] (from
//! the HTTP API and NATS), [`FlushStore`] (from `app`'s `Stopper`).
//!
//! **Sends:** nothing to other actors: it answers the messages above. It
//! never asks for a resync: the supervisor decides those (its `resync`
//! module: hello-ok, seq gaps, `health` naming other agents than
//! `agents.list`). Changes go to the store's writer thread.
//!
//! **Lifecycle:** one per gateway, on that gateway's thread, started before
//! the supervisor; it lives until the process stops.
//!
//! **Persistence:** with a store (`state.dir`/bridge.db), it starts from what
//! was persisted (served as stale until the gateway answers), and writes
//! through in batches: changed agents and runs are marked dirty and handed to
//! the store's writer thread every [`FLUSH_EVERY`], so the event path never
//! waits on disk. [`FlushStore`] (shutdown) writes what is pending and waits.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::messages::{EventBatch, EventMsg, LinkChanged};
use crate::clock::now_ms;
use crate::store::{SessionInfo, StoreWriter, StoredAgent, StoredRun};
use crate::telemetry::events as ev;

mod persist;
mod reconcile;
mod runs;
mod snapshots;

pub use reconcile::{GetRun, Reconciled, RunOutcome, RunView, StaleRun};

/// Recent runs kept per agent.
pub(crate) const RUNS_KEPT: usize = 20;
/// How often dirty agents and runs are handed to the store's writer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The result of `agents.list`, from `Supervisor`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AgentsSnapshot {
    pub payload: Box<RawValue>,
}

#[derive(Debug, Message)]
#[rtype(result = "AgentList")]
pub struct ListAgents;

#[derive(Debug, Message)]
#[rtype(result = "Option<AgentDetail>")]
pub struct GetAgent(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Idle,
    Running,
}

/// One agent as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    #[schema(value_type = Object)]
    pub gateway: Value,
    /// The configured id of the gateway this agent lives on.
    #[schema(value_type = String)]
    pub gateway_id: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Ok,
    Error,
    Aborted,
    /// Was running when the bridge lost sight of it (restart, outage) and is
    /// no longer active on the gateway: how it ended is not known.
    Unknown,
}

/// Write what is pending to the store and wait (bounded); shutdown.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FlushStore;

/// The result of `sessions.list` (every page), from `Supervisor`: which runs
/// are active. Answers the runs held as running that are not active: the
/// supervisor asks `agent.wait` how each ended ([`RunOutcome`]).
#[derive(Debug, Message)]
#[rtype(result = "Vec<StaleRun>")]
pub struct SessionsSnapshot {
    pub payload: Box<RawValue>,
    /// When the request was sent: only runs with no event since then may
    /// be judged from this answer (events after it are newer than it).
    pub requested_at: std::time::Instant,
}

/// What a registry starts from (loaded from the store) and where it writes.
pub struct Persisted {
    pub agents: Vec<StoredAgent>,
    pub runs: Vec<StoredRun>,
    pub writer: StoreWriter,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunRecord {
    pub run_id: String,
    pub status: RunStatus,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub last_event_at: Option<u64>,
    /// Why the run ended, when `agent.wait` said (`stop`, `aborted`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// The outcome was recovered with `agent.wait` after the link dropped
    /// (the bridge did not see the run end).
    pub reattached: bool,
    /// When this bridge last saw an event of the run (local clock).
    #[serde(skip)]
    pub touched: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AgentDetail {
    #[serde(flatten)]
    pub agent: AgentState,
    pub runs: Vec<RunRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentList {
    pub agents: Vec<AgentState>,
    pub stale: bool,
    /// An `agents.list` answer arrived since the link last came up: the
    /// list is the gateway's, not what the store or events suggested.
    #[serde(skip)]
    pub synced: bool,
}

#[derive(Default)]
pub struct AgentRegistry {
    /// The configured id of this registry's gateway (logs, `gateway_id`).
    gateway: Arc<str>,
    agents: BTreeMap<String, AgentState>,
    /// The store's writer thread, when persistence is on.
    writer: Option<StoreWriter>,
    dirty_agents: HashSet<String>,
    /// agent id → its dirty run ids.
    dirty_runs: HashMap<String, HashSet<String>>,
    /// Agents removed by a snapshot since the last flush.
    listed_ids: Option<Vec<String>>,
    session: Option<SessionInfo>,
    /// Newest last.
    runs: HashMap<String, VecDeque<RunRecord>>,
    run_agent: HashMap<String, String>,
    run_order: VecDeque<String>,
    /// (agent, run) of the last `apply_run`: the run index holds it and,
    /// until the next flush, both are marked dirty. Consecutive events of a
    /// run skip those lookups.
    last_applied: Option<(String, String)>,
    connected: bool,
    /// See [`AgentList::synced`].
    synced: bool,
}

impl AgentRegistry {
    pub fn new() -> Self {
        AgentRegistry {
            gateway: Arc::from(crate::config::DEFAULT_GATEWAY),
            ..Self::default()
        }
    }

    fn agent_mut(&mut self, id: &str) -> &mut AgentState {
        // Look up before inserting: no key copy for an agent already known.
        if !self.agents.contains_key(id) {
            self.agents.insert(
                id.to_owned(),
                AgentState {
                    id: id.to_owned(),
                    name: None,
                    status: AgentStatus::Idle,
                    current_run_id: None,
                    last_event_at: None,
                    is_default: false,
                    listed: false,
                    stale: !self.connected,
                    gateway: Value::Null,
                    gateway_id: self.gateway.clone(),
                },
            );
        }
        match self.agents.get_mut(id) {
            Some(a) => a,
            None => unreachable!("inserted above"),
        }
    }
}

impl Actor for AgentRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(super::messages::EVENT_MAILBOX);
        if self.writer.is_some() {
            ctx.run_interval(FLUSH_EVERY, |act, _| act.flush());
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.flush();
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.close(Duration::from_secs(2)) {
                tracing::warn!(gateway = %self.gateway,
                    event = ev::STORE_WRITE_FAILED,
                    "store not flushed on stop: {e}"
                );
            }
        }
    }
}

impl Handler<LinkChanged> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: LinkChanged, _: &mut Context<Self>) {
        self.connected = msg.connected;
        self.synced = false;
        if msg.connected && self.writer.is_some() {
            let d = &msg.detail;
            let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
            self.session = Some(SessionInfo {
                url: text("url").unwrap_or_default(),
                server_version: text("server_version").unwrap_or_default(),
                conn_id: text("conn_id"),
                boot_id: text("boot_id"),
                connected_since: Some(now_ms()),
            });
        }
        for a in self.agents.values_mut() {
            a.stale = !msg.connected;
        }
    }
}

impl Handler<ListAgents> for AgentRegistry {
    type Result = MessageResult<ListAgents>;

    fn handle(&mut self, _: ListAgents, _: &mut Context<Self>) -> Self::Result {
        MessageResult(AgentList {
            agents: self.agents.values().cloned().collect(),
            stale: !self.connected,
            synced: self.synced,
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
mod tests;
