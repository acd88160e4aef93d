//! Status and readiness: the link as `/readyz` shows it ([`GetStatus`]), and
//! callers waiting for a session ([`WaitReady`]), woken by the first hello-ok,
//! a final failure in FailFast mode, or shutdown.

use std::time::{Duration, Instant};

use actix::prelude::{Context, Handler, Message, MessageResult, ResponseFuture};
use serde::Serialize;
use tokio::sync::oneshot;

use super::Supervisor;
use crate::actors::messages::{DisconnectCause, LinkState};

/// The last thing that went wrong, for `/readyz`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LastError {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
    /// What the operator must do, when a retry cannot fix it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The gateway's error object, when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub gateway_error: Option<serde_json::Value>,
    pub at_ms: u64,
}

/// The live session, for `/readyz`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GatewayInfo {
    pub url: String,
    pub server_version: Option<String>,
    pub protocol: Option<u32>,
    pub conn_id: Option<String>,
    pub boot_id: Option<String>,
    /// Epoch ms of hello-ok.
    pub connected_since: Option<u64>,
    pub scopes: Vec<String>,
}

/// The link as `/readyz` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub state: LinkState,
    pub gateway: GatewayInfo,
    pub last_error: Option<LastError>,
    pub next_attempt_in_ms: Option<u64>,
    /// Consecutive failed attempts since the last stable session.
    pub attempt: u32,
}

#[derive(Debug, Message)]
#[rtype(result = "Status")]
pub struct GetStatus;

/// Resolve when connected; in FailFast mode fail with the first final cause.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ReadyError>")]
pub struct WaitReady {
    pub timeout: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadyError {
    #[error("{}", .0.message())]
    Failed(DisconnectCause),
    #[error("not connected after {0:?}")]
    Timeout(Duration),
    #[error("the bridge is shutting down")]
    ShuttingDown,
}

impl Supervisor {
    pub(super) fn wake_waiters(&mut self, result: Result<(), ReadyError>) {
        for w in self.waiters.drain(..) {
            let _ = w.send(result.clone());
        }
    }

    pub fn status(&self) -> Status {
        Status {
            state: self.state,
            gateway: self.info.clone(),
            last_error: self.last_error.clone(),
            next_attempt_in_ms: self
                .next_attempt_at
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            attempt: self.attempt,
        }
    }
}

impl Handler<GetStatus> for Supervisor {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}

impl Handler<WaitReady> for Supervisor {
    type Result = ResponseFuture<Result<(), ReadyError>>;

    fn handle(&mut self, msg: WaitReady, _: &mut Context<Self>) -> Self::Result {
        if self.state == LinkState::Connected {
            return Box::pin(async { Ok(()) });
        }
        if self.state == LinkState::Stopping {
            return Box::pin(async { Err(ReadyError::ShuttingDown) });
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        let timeout = msg.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(ReadyError::ShuttingDown),
                Err(_) => Err(ReadyError::Timeout(timeout)),
            }
        })
    }
}
