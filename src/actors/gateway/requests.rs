//! The actix side of request correlation: [`Send`] registers a request with
//! the connection's [`Correlator`](super::correlator::Correlator) and queues
//! its frame; responses, the one deadline timer, departed callers and the
//! pending gauge are fed to and read from it here.

use std::time::Instant;

use actix::prelude::{AsyncContext, Context, Handler, Message, ResponseFuture};
use awc::ws::Message as WsMessage;
use tokio::sync::oneshot;

use super::correlator::{request_id, Delivered, Metered, Reply, Request, RequestId, Responder};
use super::{GatewayConnection, Phase, Queued, RequestError, Send};
use crate::protocol::{self, ResponseFrame};
use crate::telemetry::{emit, events as ev};

impl GatewayConnection {
    pub(super) fn on_response(&mut self, res: ResponseFrame<'_>, ctx: &mut Context<Self>) {
        if let Phase::AwaitHello { connect_id } = &self.phase {
            if res.id == connect_id.as_str() {
                self.on_hello(res, ctx);
                return;
            }
        }
        match self.requests.answer(res) {
            Delivered::Answered => self.report_pending(),
            Delivered::KeptOpen => {}
            Delivered::Late => tracing::trace!("late answer to a finished request dropped"),
            Delivered::Unknown(res) => {
                tracing::debug!(gateway = %self.cfg.gateway, event = ev::GATEWAY_UNKNOWN_RESPONSE, id = %res.id, ok = res.ok, code = res.error.as_ref().map(|e| e.code.as_str()), "response for no pending request");
            }
        }
    }

    /// The pending-requests gauge (its handle is looked up once).
    fn report_pending(&mut self) {
        let n = self.requests.len() as f64;
        self.pending_gauge
            .get_or_insert_with(|| metrics::gauge!(crate::metrics::PENDING_REQUESTS, "gateway" => self.cfg.gateway.to_string()))
            .set(n);
    }

    /// Keep the one deadline timer armed for the earliest pending deadline.
    fn arm_deadline_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(at) = self.requests.next_deadline() else {
            return;
        };
        if let Some((armed_at, h)) = self.deadline_timer {
            if armed_at <= at {
                return;
            }
            ctx.cancel_future(h);
        }
        let h = ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
            act.deadline_timer = None;
            if act.requests.expire(Instant::now()) > 0 {
                act.report_pending();
            }
            act.arm_deadline_timer(ctx);
        });
        self.deadline_timer = Some((at, h));
    }

    /// Fail one pending request now (its answer, if any, is dropped
    /// quietly). Whether it was pending.
    pub(super) fn fail_request(&mut self, id: &str, err: RequestError) -> bool {
        let failed = self.requests.fail(id, err);
        if failed {
            self.report_pending();
        }
        failed
    }

    /// Asked by the writer just before a request goes on the wire (see
    /// [`Correlator::still_wanted`](super::correlator::Correlator::still_wanted)):
    /// a frozen gateway that wakes up does not start work nobody waits for.
    pub(super) fn still_wanted(&mut self, id: &str, deadline: Instant, now: Instant) -> bool {
        let wanted = self.requests.still_wanted(id, deadline, now);
        if !wanted {
            crate::metrics::unwritten(&self.cfg.gateway);
            self.report_pending();
        }
        wanted
    }

    /// Release the entries of callers that went away (an HTTP client that
    /// disconnected).
    pub(super) fn release_abandoned(&mut self) {
        if self.requests.release_abandoned() > 0 {
            self.report_pending();
        }
    }

    /// Refuse a request past `max_pending` / `max_pending_bytes`: logged
    /// when the bound starts being hit, counted every time.
    fn overloaded(&mut self, bound: &'static str, limit: u64) -> RequestError {
        emit::overloaded(
            &self.cfg.gateway,
            bound,
            limit,
            self.requests.len(),
            self.out.bytes,
            !self.overloaded,
        );
        self.overloaded = true;
        RequestError::Overloaded {
            bound,
            limit,
            retry_after_ms: 1000,
        }
    }

    pub(super) fn fail_pending(&mut self, err: &RequestError) -> usize {
        self.requests.fail_all(err)
    }
}

/// A caller's request handed over by the `Supervisor` with the caller's own
/// responder (actix's answer channel of the caller's `Send` or `Rpc`): the connection
/// answers the caller directly, with no future or channel of its own in
/// between, and counts and times it (`openclaw_bridge_requests_total`,
/// `rpc.failed`). Dropped undelivered (the connection stopped), it answers
/// `Disconnected`: every request resolves exactly once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forward {
    pub msg: Send,
    pub tx: Option<Responder>,
    /// When the caller asked.
    pub started: Instant,
}

impl Drop for Forward {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            tx.send(Err(RequestError::Disconnected {
                reason: "the connection stopped".into(),
            }));
        }
    }
}

impl Handler<Forward> for GatewayConnection {
    type Result = ();

    fn handle(&mut self, mut fwd: Forward, ctx: &mut Context<Self>) {
        let Some(tx) = fwd.tx.take() else {
            return;
        };
        let msg = std::mem::replace(&mut fwd.msg, Send::new(String::new(), None));
        self.start_request(msg, tx, Some(fwd.started), ctx);
    }
}

impl Handler<Send> for GatewayConnection {
    type Result = ResponseFuture<Reply>;

    /// The bridge's own requests (resyncs, `agent.wait`): not metered.
    fn handle(&mut self, msg: Send, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.start_request(msg, Responder::Send(tx), None, ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(RequestError::Disconnected {
                    reason: "the connection stopped".into(),
                })
            })
        })
    }
}

impl GatewayConnection {
    /// Check, register and queue a request; `tx` gets its one answer. A
    /// caller's request (`started`: when the caller asked) is metered.
    fn start_request(
        &mut self,
        msg: Send,
        tx: Responder,
        started: Option<Instant>,
        ctx: &mut Context<Self>,
    ) {
        let queued = self.queue_request(&msg);
        let Send {
            method,
            timeout,
            expect_final,
            caller,
            ..
        } = msg;
        let is_agent = method == "agent";
        // A caller's deadline counts from when it asked (one clock read
        // fewer per request).
        let now = started.unwrap_or_else(Instant::now);
        let metered = started.map(|started| Metered { method, started });
        let (id, text) = match queued {
            Ok(q) => q,
            Err(e) => return self.requests.refuse(metered, tx, e),
        };
        let timeout = timeout.unwrap_or(self.cfg.request_timeout);
        let request = Request {
            is_agent,
            expect_final,
            caller,
            timeout,
            metered,
        };
        let deadline = self.requests.insert(id.clone(), request, tx, now);
        self.out.push(Queued {
            bytes: text.len(),
            msg: WsMessage::Text(text.into()),
            request: Some((id, deadline)),
        });
        self.report_pending();
        self.arm_deadline_timer(ctx);
    }

    /// Whether `msg` may be sent now, and if so its id and frame.
    fn queue_request(&mut self, msg: &Send) -> Result<(RequestId, String), RequestError> {
        if self.shutting_down {
            return Err(RequestError::ShuttingDown);
        }
        if !matches!(self.phase, Phase::Ready { .. }) {
            return Err(RequestError::NotConnected {
                state: "connecting".into(),
                next_attempt_in_ms: None,
            });
        }
        if msg.method.is_empty() {
            return Err(RequestError::BadRequest("method must not be empty".into()));
        }
        if let Some(p) = &msg.params {
            if !p.get().trim_start().starts_with('{') {
                return Err(RequestError::BadRequest(
                    "params must be a JSON object".into(),
                ));
            }
        }
        if self.requests.len() >= self.cfg.max_pending {
            return Err(self.overloaded("gateway.max_pending", self.cfg.max_pending as u64));
        }
        let id = request_id();
        let text = protocol::encode_request(&id, &msg.method, msg.params.as_deref());
        // One request alone may exceed the byte bound when nothing else is
        // queued: the bound is on what piles up, not on a request's size.
        if self.out.bytes > 0 && self.out.bytes + text.len() > self.cfg.max_pending_bytes {
            return Err(self.overloaded(
                "gateway.max_pending_bytes",
                self.cfg.max_pending_bytes as u64,
            ));
        }
        self.overloaded = false;
        if !self.out.open {
            return Err(RequestError::Disconnected {
                reason: "the socket is closed".into(),
            });
        }
        Ok((id, text))
    }
}
