//! The outbound queue and the one future that drains it into the socket.
//!
//! Requests wait in the connection's own queue, not in a sink buffer we can't
//! see into, so that at the moment of writing the writer can still ask the
//! connection whether the request is wanted: a request whose deadline passed
//! (its caller already has `BRIDGE_TIMEOUT`) or whose caller went away is
//! dropped unwritten. A frozen gateway then wakes up to no stale work. The
//! queue is bounded by the connection (`max_pending`, `max_pending_bytes`);
//! below it, the socket's own buffer is bounded by `Framed`'s write
//! high-water mark.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Poll, Waker};
use std::time::Instant;

use actix::prelude::{ActorFuture, Context};
use awc::ws::Message as WsMessage;
use futures_util::Sink;

use super::{GatewayConnection, WsSink};
use crate::actors::messages::DisconnectCause;

/// One frame waiting to be written.
pub(super) struct Queued {
    pub msg: WsMessage,
    pub bytes: usize,
    /// For a request: its id and deadline (checked again just before writing).
    pub request: Option<(super::correlator::RequestId, Instant)>,
}

/// The frames not yet handed to the socket.
#[derive(Default)]
pub(super) struct Outbound {
    pub queue: VecDeque<Queued>,
    /// Sum of `Queued::bytes` (bounded by `max_pending_bytes`).
    pub bytes: usize,
    /// The writer's task, woken when something is queued.
    pub waker: Option<Waker>,
    /// A socket is up and has not failed.
    pub open: bool,
}

impl Outbound {
    pub fn push(&mut self, q: Queued) {
        self.bytes += q.bytes;
        self.queue.push_back(q);
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    fn pop(&mut self) -> Option<Queued> {
        let q = self.queue.pop_front()?;
        self.bytes -= q.bytes;
        Some(q)
    }
}

/// Drains `GatewayConnection::out` into the socket; lives as long as the
/// connection (spawned into its context).
pub(super) struct WriteLoop {
    pub sink: WsSink,
}

impl ActorFuture<GatewayConnection> for WriteLoop {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut GatewayConnection,
        ctx: &mut Context<GatewayConnection>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        act.out.waker = Some(task.waker().clone());
        // One clock read per batch: a request whose deadline passes while
        // this batch is written goes out and times out as usual.
        let now = Instant::now();
        while !act.out.queue.is_empty() {
            match Pin::new(&mut this.sink).poll_ready(task) {
                Poll::Ready(Ok(())) => {
                    let Some(q) = act.out.pop() else { break };
                    if let Some((id, deadline)) = &q.request {
                        if !act.still_wanted(id, *deadline, now) {
                            continue;
                        }
                    }
                    if let Err(e) = Pin::new(&mut this.sink).start_send(q.msg) {
                        return act.write_failed(e, ctx);
                    }
                }
                Poll::Ready(Err(e)) => return act.write_failed(e, ctx),
                Poll::Pending => break,
            }
        }
        if let Poll::Ready(Err(e)) = Pin::new(&mut this.sink).poll_flush(task) {
            return act.write_failed(e, ctx);
        }
        Poll::Pending
    }
}

impl GatewayConnection {
    /// The socket cannot be written any more: the session is over.
    fn write_failed(
        &mut self,
        err: awc::error::WsProtocolError,
        ctx: &mut Context<Self>,
    ) -> Poll<()> {
        self.out.open = false;
        self.out.waker = None;
        self.fail(
            DisconnectCause::ProtocolError {
                error: err.to_string(),
            },
            ctx,
        );
        Poll::Ready(())
    }
}
