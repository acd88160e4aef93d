//! Requests over the live connection: [`Send`] from the HTTP API / CLI,
//! forwarded or refused at once (nothing is queued). A forwarded request
//! carries its caller's own answer channel to the connection
//! ([`Forward`]): no future, task or channel of the supervisor's in between.

use std::future::Future;
use std::rc::Rc;
use std::time::Instant;

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::{Addr, Context, Handler};
use tokio::sync::oneshot;

use super::{Send, Supervisor};
use crate::actors::gateway::{Forward, GatewayConnection, Reply, Responder};
use crate::actors::messages::{LinkState, RequestError};
use crate::telemetry::emit;

/// The supervisor's answer to a [`Send`]: refused now, or handed to the
/// connection with the caller's responder.
pub enum SendReply {
    Now(Reply),
    Forward(Rc<Addr<GatewayConnection>>, Forward),
}

impl SendReply {
    /// Answer through `tx`: now, or by the connection. Undelivered (the
    /// connection just stopped), `Forward`'s drop answers `Disconnected`.
    pub(super) fn answer(self, tx: Responder) {
        match self {
            SendReply::Now(reply) => tx.send(reply),
            SendReply::Forward(conn, mut fwd) => {
                fwd.tx = Some(tx);
                conn.do_send(fwd);
            }
        }
    }
}

impl MessageResponse<Supervisor, Send> for SendReply {
    fn handle(self, _: &mut Context<Supervisor>, tx: Option<OneshotSender<Reply>>) {
        // Nobody waits (`do_send`): the request is still made.
        self.answer(Responder::Send(tx.unwrap_or_else(|| oneshot::channel().0)));
    }
}

impl Supervisor {
    /// Route `msg`: to the live connection, or refused at once with why.
    pub(super) fn route(&mut self, msg: Send) -> SendReply {
        let started = Instant::now();
        let refused = match (&self.conn, self.state) {
            (_, LinkState::Stopping) => RequestError::ShuttingDown,
            (Some(conn), LinkState::Connected) => {
                let fwd = Forward {
                    msg,
                    tx: None,
                    started,
                };
                return SendReply::Forward(conn.clone(), fwd);
            }
            _ => RequestError::NotConnected {
                state: self.state.as_str().into(),
                next_attempt_in_ms: self
                    .next_attempt_at
                    .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            },
        };
        emit::request_done(
            &mut self.request_metrics,
            &self.cfg.connection.gateway,
            &msg.method,
            Some((refused.code(), &refused)),
            started.elapsed(),
        );
        SendReply::Now(Err(refused))
    }

    /// [`Send`] as a future, for the supervisor's own handlers (`Rpc`).
    pub(super) fn forward(&mut self, msg: Send) -> impl Future<Output = Reply> + 'static {
        let (tx, rx) = oneshot::channel();
        self.route(msg).answer(Responder::Send(tx));
        async move {
            rx.await.unwrap_or_else(|_| {
                Err(RequestError::Disconnected {
                    reason: "the connection stopped".into(),
                })
            })
        }
    }
}

impl Handler<Send> for Supervisor {
    type Result = SendReply;

    fn handle(&mut self, msg: Send, _: &mut Context<Self>) -> SendReply {
        self.route(msg)
    }
}
