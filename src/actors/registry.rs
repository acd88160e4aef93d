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
//! **Persistence:** with a store (`state.dir`/bridge.db), it starts from what
//! was persisted (served as stale until the gateway answers), and writes
//! through in batches: changed agents and runs are marked dirty and handed to
//! the store's writer thread every [`FLUSH_EVERY`], so the event path never
//! waits on disk. [`FlushStore`] (shutdown) writes what is pending and waits.

use std::collections::{BTreeMap, HashMap, VecDeque};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::{Actor, AsyncContext, Context, Handler, Message, MessageResult, Recipient};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::messages::{EventMsg, LinkChanged};
use crate::protocol::{EventKind, RunPhase};
use crate::store::{Change, SessionInfo, StoreWriter, StoredAgent, StoredRun};
use crate::telemetry::events as ev;

/// Recent runs kept per agent.
const RUNS_KEPT: usize = 20;
/// How often dirty agents and runs are handed to the store's writer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
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
    /// The configured id of the gateway this agent lives on.
    pub gateway_id: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// Write what is pending to the store and wait (bounded); shutdown.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FlushStore;

/// The result of `sessions.list`, from `Supervisor`: which runs are active.
#[derive(Debug, Message)]
#[rtype(result = "()")]
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

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub status: RunStatus,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub last_event_at: Option<u64>,
    /// When this bridge last saw an event of the run (local clock).
    #[serde(skip)]
    pub touched: Option<std::time::Instant>,
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
    /// An `agents.list` answer arrived since the link last came up: the
    /// list is the gateway's, not what the store or events suggested.
    #[serde(skip)]
    pub synced: bool,
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
    resync: Option<Recipient<RequestResync>>,
}

use crate::now_ms;

impl AgentRegistry {
    pub fn new() -> Self {
        AgentRegistry {
            gateway: Arc::from(crate::config::DEFAULT_GATEWAY),
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
                touched: None,
            });
            if runs.len() > RUNS_KEPT {
                runs.pop_back();
            }
        }
        reg
    }

    fn mark_agent(&mut self, id: &str) {
        if self.writer.is_some() && !self.dirty_agents.contains(id) {
            self.dirty_agents.insert(id.to_owned());
        }
    }

    fn mark_run(&mut self, agent: &str, run: &str) {
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
    fn flush(&mut self) {
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

    /// Runs that are active on the gateway, from `sessions.list`. A run we
    /// hold as running that is not among them ended while we could not see
    /// it (`unknown`) — but only if no event of it arrived since the request
    /// was sent (events are newer than the answer), and only when the list is
    /// complete (no `hasMore`).
    fn apply_sessions(&mut self, payload: &RawValue, requested_at: std::time::Instant) {
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
            return;
        };
        let complete = !wire.has_more;
        let mut active: HashMap<String, Vec<String>> = HashMap::new();
        for r in wire.sessions {
            if let Some(a) = r.agent_id {
                active.entry(a).or_default().extend(r.active_run_ids);
            }
        }
        let stale = |r: &RunRecord| r.touched.is_none_or(|t| t < requested_at);
        let mut touched_runs = Vec::new();
        if complete {
            for (agent, runs) in self.runs.iter_mut() {
                let live = active.get(agent);
                for r in runs.iter_mut() {
                    let is_live = live.is_some_and(|ids| ids.contains(&r.run_id));
                    if r.status == RunStatus::Running && !is_live && stale(r) {
                        r.status = RunStatus::Unknown;
                        touched_runs.push((agent.clone(), r.run_id.clone()));
                    }
                }
            }
        }
        for (agent, run) in touched_runs {
            self.mark_run(&agent, &run);
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

    fn remember_run(&mut self, run_id: &str, agent_id: &str) {
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

    fn apply_run(&mut self, agent_id: &str, run_id: &str, phase: RunPhase, aborted: bool, ts: u64) {
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
            self.mark_agent(&id);
            seen.push(id);
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

impl Actor for AgentRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
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

impl Handler<SessionsSnapshot> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, msg: SessionsSnapshot, _: &mut Context<Self>) {
        self.apply_sessions(&msg.payload, msg.requested_at);
    }
}

impl Handler<EventMsg> for AgentRegistry {
    type Result = ();

    fn handle(&mut self, EventMsg(event): EventMsg, _: &mut Context<Self>) {
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
                    let aborted = a.phase == RunPhase::Ended
                        && event.payload_json().contains("\"aborted\":true");
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
