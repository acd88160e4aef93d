//! Requests over the live connection: [`Send`] from the HTTP API / CLI,
//! forwarded or refused at once (nothing is queued).

use std::time::Instant;

use actix::prelude::{Context, Handler, ResponseFuture};
use serde_json::value::RawValue;

use super::{Send, Supervisor};
use crate::actors::messages::{LinkState, RequestError};
use crate::telemetry::emit;

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
            emit::request_done(
                &mut metrics.borrow_mut(),
                &gateway,
                &method,
                result
                    .as_ref()
                    .err()
                    .map(|e| (e.code(), e as &dyn std::fmt::Display)),
                started.elapsed(),
            );
            result
        })
    }
}
