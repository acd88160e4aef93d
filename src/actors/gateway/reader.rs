//! The one future that reads the socket: frames in passes of up to
//! [`FRAMES_PER_PASS`], each handled as it comes ([`StreamHandler`] on the
//! connection), and the events a pass decoded handed to the broker and the
//! registry at its end, in one message each, then the pass's answers to
//! their callers (one wake-up of a caller's thread per pass).
//!
//! Actix's own `add_stream` reads the same way (16 frames a pass) but has no
//! end-of-pass hook, so every event was one message (an envelope, a mailbox
//! push) per recipient. A pass ends when the socket has nothing more to read
//! or after [`FRAMES_PER_PASS`] frames (then the thread's other work runs
//! first), so an event or an answer waits at most for the frames read with
//! it.

use std::pin::Pin;
use std::task::Poll;

use actix::prelude::{ActorFuture, AsyncContext, Context, StreamHandler};
use futures_util::Stream;

use super::GatewayConnection;
use crate::actors::messages::FRAMES_PER_PASS;

/// Reads `stream` into the connection; lives as long as the connection.
pub(super) struct ReadLoop<S> {
    pub stream: S,
}

impl<S, I> ActorFuture<GatewayConnection> for ReadLoop<S>
where
    S: Stream<Item = I> + Unpin,
    GatewayConnection: StreamHandler<I>,
{
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut GatewayConnection,
        ctx: &mut Context<GatewayConnection>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..FRAMES_PER_PASS {
            match Pin::new(&mut this.stream).poll_next(task) {
                Poll::Ready(Some(item)) => {
                    StreamHandler::handle(act, item, ctx);
                    if ctx.waiting() {
                        act.end_pass();
                        return Poll::Pending;
                    }
                }
                Poll::Ready(None) => {
                    act.end_pass();
                    StreamHandler::finished(act, ctx);
                    return Poll::Ready(());
                }
                Poll::Pending => {
                    act.end_pass();
                    return Poll::Pending;
                }
            }
        }
        act.end_pass();
        task.waker().wake_by_ref();
        Poll::Pending
    }
}
