//! What the bridge asks the gateway about runs, over one connection:
//! `agent.wait` (and what its answer means) and every page of
//! `sessions.list` (which runs are active). Used by `reattach` (held
//! callers), `reconcile` (the registry) and `LookupRun`.

use std::collections::HashSet;
use std::time::Duration;

use actix::prelude::Addr;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::GatewayConnection;
use crate::actors::messages::{RequestError, Send};
use crate::actors::registry::RunStatus;

/// `sessions.list` pages read at most (a gateway with more sessions than
/// this many pages is read no further; runs are then not judged).
const MAX_SESSION_PAGES: usize = 1000;
/// Extra time the bridge gives an `agent.wait` over its own `timeoutMs`, so
/// the gateway's answer, not our request timeout, ends it.
const WAIT_GRACE: Duration = Duration::from_secs(5);

/// The parts of an `agent.wait` answer the bridge acts on.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WaitAnswer {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub started_at: Option<u64>,
    #[serde(default)]
    pub ended_at: Option<u64>,
    #[serde(default)]
    pub stop_reason: Option<String>,
}

impl WaitAnswer {
    pub fn parse(payload: &RawValue) -> WaitAnswer {
        serde_json::from_str(payload.get()).unwrap_or_default()
    }

    /// `timeout`: still running, or unknown to the gateway (PROTOCOL §5.1).
    pub fn is_pending(&self) -> bool {
        matches!(self.status.as_deref(), Some("timeout") | None)
    }

    /// The registry's status for an ended run.
    pub fn run_status(&self) -> RunStatus {
        match (self.status.as_deref(), self.stop_reason.as_deref()) {
            (_, Some("aborted" | "abort" | "cancelled")) => RunStatus::Aborted,
            (Some("ok"), _) => RunStatus::Ok,
            (Some("timeout") | None, _) => RunStatus::Running,
            _ => RunStatus::Error,
        }
    }
}

/// `agent.wait {runId, timeoutMs}` on this connection.
pub(super) async fn agent_wait(
    conn: &Addr<GatewayConnection>,
    run_id: &str,
    wait: Duration,
) -> Result<Box<RawValue>, RequestError> {
    let msg = Send::new(
        "agent.wait",
        Some(json!({"runId": run_id, "timeoutMs": wait.as_millis() as u64})),
    )
    .timeout(wait + WAIT_GRACE);
    conn.send(msg).await.unwrap_or_else(|_| {
        Err(RequestError::Disconnected {
            reason: "the connection stopped".into(),
        })
    })
}

/// Every page of `sessions.list`, merged into one `{"sessions":[…],
/// "hasMore":…}` (`hasMore` stays true when paging had to stop early).
pub(super) async fn sessions_all(
    conn: &Addr<GatewayConnection>,
) -> Result<Box<RawValue>, RequestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Page {
        #[serde(default)]
        sessions: Vec<Box<RawValue>>,
        #[serde(default)]
        has_more: bool,
        #[serde(default)]
        next_offset: Option<u64>,
    }
    let mut rows: Vec<Box<RawValue>> = Vec::new();
    let mut offset: Option<u64> = None;
    let mut has_more = false;
    for _ in 0..MAX_SESSION_PAGES {
        let params = match offset {
            None => json!({}),
            Some(o) => json!({"offset": o}),
        };
        let raw = conn
            .send(Send::new("sessions.list", Some(params)))
            .await
            .unwrap_or_else(|_| {
                Err(RequestError::Disconnected {
                    reason: "the connection stopped".into(),
                })
            })?;
        let page: Page = match serde_json::from_str(raw.get()) {
            Ok(p) => p,
            // Not understood: hand it on as it is (the registry says so).
            Err(_) if offset.is_none() => return Ok(raw),
            Err(_) => {
                has_more = true;
                break;
            }
        };
        let got = page.sessions.len() as u64;
        rows.extend(page.sessions);
        has_more = page.has_more;
        if !page.has_more {
            break;
        }
        // The next page must move forward, or paging stops (incomplete).
        let next = page.next_offset.unwrap_or(offset.unwrap_or(0) + got);
        if got == 0 || offset.is_some_and(|o| next <= o) {
            break;
        }
        offset = Some(next);
    }
    let body = json!({"sessions": rows, "hasMore": has_more});
    serde_json::value::to_raw_value(&body).map_err(|e| RequestError::BadRequest(e.to_string()))
}

/// The run ids active on the gateway (`None`: the list is incomplete, so
/// nothing can be concluded from a run's absence).
pub(super) async fn active_runs(
    conn: &Addr<GatewayConnection>,
) -> Result<Option<HashSet<String>>, RequestError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Row {
        #[serde(default)]
        active_run_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct All {
        #[serde(default)]
        sessions: Vec<Row>,
        #[serde(default)]
        has_more: bool,
    }
    let raw = sessions_all(conn).await?;
    let all: All = match serde_json::from_str(raw.get()) {
        Ok(a) => a,
        Err(_) => return Ok(None),
    };
    if all.has_more {
        return Ok(None);
    }
    Ok(Some(
        all.sessions
            .into_iter()
            .flat_map(|r| r.active_run_ids)
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn agent_wait_answers_map_to_run_statuses() {
        let w = WaitAnswer::parse(&raw(
            r#"{"runId":"r","status":"ok","startedAt":1,"endedAt":2,"stopReason":"stop","terminalReply":{"text":"hi"}}"#,
        ));
        assert!(!w.is_pending());
        assert_eq!(w.run_status(), RunStatus::Ok);
        assert_eq!((w.started_at, w.ended_at), (Some(1), Some(2)));
        let w = WaitAnswer::parse(&raw(
            r#"{"runId":"r","status":"error","stopReason":"error"}"#,
        ));
        assert_eq!(w.run_status(), RunStatus::Error);
        let w = WaitAnswer::parse(&raw(
            r#"{"runId":"r","status":"ok","stopReason":"aborted"}"#,
        ));
        assert_eq!(w.run_status(), RunStatus::Aborted);
        let w = WaitAnswer::parse(&raw(r#"{"runId":"r","status":"timeout"}"#));
        assert!(w.is_pending());
        assert!(WaitAnswer::parse(&raw("[]")).is_pending());
    }
}
