//! Accepted runs as the real gateway keeps them (PROTOCOL.md §5.1).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::handle::FakeGateway;
use super::options::{Reply, Request};

/// A responder for `agent`, `agent.wait` and `sessions.list` that keeps runs the way the
/// real gateway does: an accepted run goes on whatever happens to the socket, `agent.wait`
/// answers its outcome (blocking up to `timeoutMs` while it runs), an unknown run answers
/// `timeout`, and `sessions.list` pages its rows (`hasMore`/`nextOffset`). A run's length
/// comes from its message: `"sleep:MS"` (default 200 ms); `"fail:MS"` ends in `error`.
#[derive(Clone, Default)]
pub struct FakeRuns {
    inner: Arc<std::sync::Mutex<RunBook>>,
}

#[derive(Default)]
struct RunBook {
    /// run id → (accepted at, length, fails)
    runs: HashMap<String, (std::time::Instant, Duration, bool)>,
    /// `agent` requests seen per idempotencyKey.
    agent_requests: HashMap<String, usize>,
    /// Sessions per `sessions.list` page (0: all on one page).
    page_size: usize,
    /// Rows of idle sessions listed besides the runs' (paging tests).
    idle_sessions: usize,
}

impl FakeRuns {
    pub fn new(page_size: usize, idle_sessions: usize) -> FakeRuns {
        let runs = FakeRuns::default();
        {
            let mut b = runs.book();
            b.page_size = page_size;
            b.idle_sessions = idle_sessions;
        }
        runs
    }

    fn book(&self) -> std::sync::MutexGuard<'_, RunBook> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Install as the gateway's responder (other methods: the default replies).
    pub fn install(&self, gw: &FakeGateway) {
        let runs = self.clone();
        gw.set_responder(move |r| runs.reply(r).unwrap_or(Reply::Default));
    }

    /// A run the gateway knows (as if accepted from another client): `len` from now.
    pub fn add(&self, run_id: &str, len: Duration, fails: bool) {
        self.book()
            .runs
            .insert(run_id.into(), (std::time::Instant::now(), len, fails));
    }

    /// A gateway restart: every run is forgotten.
    pub fn lose_all(&self) {
        self.book().runs.clear();
    }

    /// `agent` requests seen per idempotencyKey.
    pub fn agent_requests(&self) -> HashMap<String, usize> {
        self.book().agent_requests.clone()
    }

    fn outcome(run_id: &str, at: std::time::Instant, len: Duration, fails: bool) -> Value {
        let started = epoch_ms_of(at);
        json!({"runId": run_id, "status": if fails { "error" } else { "ok" },
            "startedAt": started, "endedAt": started + len.as_millis() as u64,
            "stopReason": if fails { "error" } else { "stop" },
            "terminalReply": {"disposition": "visible", "text": format!("done {run_id}")}})
    }

    /// The reply to `agent`, `agent.wait` or `sessions.list`; `None` for other methods.
    pub fn reply(&self, req: &Request) -> Option<Reply> {
        let now = std::time::Instant::now();
        match req.method.as_str() {
            "agent" => {
                let key = req.params["idempotencyKey"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                let msg = req.params["message"].as_str().unwrap_or("");
                let (fails, ms) = match msg.split_once(':') {
                    Some(("fail", ms)) => (true, ms.parse().unwrap_or(200)),
                    Some((_, ms)) => (false, ms.parse().unwrap_or(200)),
                    None => (false, 200),
                };
                let len = Duration::from_millis(ms);
                let mut b = self.book();
                *b.agent_requests.entry(key.clone()).or_default() += 1;
                b.runs.insert(key.clone(), (now, len, fails));
                let accepted =
                    json!({"runId": key, "status": "accepted", "acceptedAt": epoch_ms_of(now)});
                Some(Reply::Twice(
                    accepted,
                    Self::outcome(&key, now, len, fails),
                    len,
                ))
            }
            "agent.wait" => {
                let run_id = req.params["runId"].as_str().unwrap_or("").to_owned();
                let wait = Duration::from_millis(req.params["timeoutMs"].as_u64().unwrap_or(0));
                let timeout = Reply::Ok(json!({"runId": run_id, "status": "timeout"}));
                let b = self.book();
                let Some(&(at, len, fails)) = b.runs.get(&run_id) else {
                    return Some(timeout);
                };
                let left = (at + len).saturating_duration_since(now);
                let done = Reply::Ok(Self::outcome(&run_id, at, len, fails));
                Some(if left.is_zero() {
                    done
                } else if left <= wait {
                    Reply::Delayed(left, Box::new(done))
                } else {
                    Reply::Delayed(wait, Box::new(timeout))
                })
            }
            "sessions.list" => {
                let b = self.book();
                let mut rows: Vec<Value> = (0..b.idle_sessions)
                    .map(|i| json!({"key": format!("agent:idle{i}:main"), "agentId": format!("idle{i}"), "status": "done", "activeRunIds": []}))
                    .collect();
                let mut active: Vec<&String> = b
                    .runs
                    .iter()
                    .filter(|(_, (at, len, _))| *at + *len > now)
                    .map(|(id, _)| id)
                    .collect();
                active.sort();
                rows.push(json!({"key": "agent:main:main", "agentId": "main",
                    "status": if active.is_empty() { "done" } else { "running" },
                    "hasActiveRun": !active.is_empty(), "activeRunIds": active}));
                let total = rows.len();
                let offset = req.params["offset"].as_u64().unwrap_or(0) as usize;
                let size = if b.page_size == 0 { total } else { b.page_size };
                let page: Vec<Value> = rows.into_iter().skip(offset).take(size).collect();
                let next = offset + page.len();
                Some(Reply::Ok(json!({"count": page.len(), "totalCount": total,
                    "hasMore": next < total, "nextOffset": if next < total { json!(next) } else { Value::Null },
                    "sessions": page})))
            }
            _ => None,
        }
    }
}

fn epoch_ms_of(at: std::time::Instant) -> u64 {
    let ago = at.elapsed();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.saturating_sub(ago.as_millis() as u64)
}
