//! Request correlation: the pending map, the one deadline timer that serves
//! every pending request, and the ids whose late answers are dropped quietly.
//! [`Send`] writes a `req` and parks its answer here until the `res` with the
//! same id comes back, the deadline passes, or the connection stops.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use actix::prelude::{AsyncContext, Context, Handler, ResponseFuture};
use awc::ws::Message as WsMessage;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::{GatewayConnection, Phase, Queued, RequestError, Send};
use crate::actors::messages::RunFailure;
use crate::protocol::{self, GatewayError, ResponseFrame};
use crate::telemetry::events as ev;

/// Ids of requests answered early (an `agent` `accepted`) or timed out are
/// remembered so their late answers are dropped quietly; bounded.
pub(super) const FINISHED_IDS_KEPT: usize = 4096;

pub(super) struct Pending {
    tx: oneshot::Sender<Result<Box<RawValue>, RequestError>>,
    /// Only `agent` answers twice; only its payload is inspected.
    is_agent: bool,
    expect_final: bool,
    /// An `accepted` answer came; the final one is awaited.
    accepted_seen: bool,
    /// The accepted run's id: a timeout or a lost link hands it back
    /// ([`RequestError::Run`]) so the run can still be followed.
    run_id: Option<String>,
    /// Alive while the caller waits (see `Send::caller`).
    caller: Option<std::sync::Weak<()>>,
    /// Key of this request in `GatewayConnection::deadlines`.
    deadline: (Instant, u64),
    timeout_ms: u64,
}

impl Pending {
    fn caller_gone(&self) -> bool {
        self.tx.is_closed() || self.caller.as_ref().is_some_and(|w| w.strong_count() == 0)
    }
}

/// A bounded set of ids whose late answers are expected and dropped quietly.
#[derive(Default)]
pub(super) struct FinishedIds {
    order: VecDeque<String>,
    pub(super) set: HashSet<String>,
}

impl FinishedIds {
    pub(super) fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > FINISHED_IDS_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
    pub(super) fn remove(&mut self, id: &str) -> bool {
        // Kept in `order` until evicted; harmless.
        self.set.remove(id)
    }
}

impl GatewayConnection {
    pub(super) fn on_response(&mut self, res: ResponseFrame<'_>, ctx: &mut Context<Self>) {
        if let Phase::AwaitHello { connect_id } = &self.phase {
            if res.id == connect_id.as_str() {
                self.on_hello(res, ctx);
                return;
            }
        }
        let Some(p) = self.pending.get_mut(res.id.as_ref()) else {
            if self.finished.remove(&res.id) {
                tracing::trace!(id = %res.id, "late answer to a finished request dropped");
            } else {
                tracing::debug!(gateway = %self.cfg.gateway, event = ev::GATEWAY_UNKNOWN_RESPONSE, id = %res.id, ok = res.ok, code = res.error.as_ref().map(|e| e.code.as_str()), "response for no pending request");
            }
            return;
        };
        let accepted = res.ok && p.is_agent && res.payload.is_some_and(is_accepted);
        if accepted && p.expect_final {
            // Keep the id open for the final answer.
            p.accepted_seen = true;
            p.run_id = res.payload.and_then(accepted_run_id);
            return;
        }
        let removed = self.pending.remove(res.id.as_ref());
        self.report_pending();
        let Some(p) = removed else {
            return;
        };
        self.deadlines.remove(&p.deadline);
        if accepted {
            // The final answer will come with the same id: drop it quietly.
            self.finished.insert(res.id.to_string());
        }
        let result = if res.ok {
            Ok(res.payload.map(ToOwned::to_owned).unwrap_or_else(null_raw))
        } else if let (true, Some(outcome)) = (
            p.accepted_seen,
            res.payload
                .and_then(|raw| run_outcome(raw, res.error.as_ref())),
        ) {
            // A run that was accepted and then failed ends with `ok:false`
            // plus a payload `{runId, status:"error", …}`: that is the run's
            // outcome, not a failed request (retrying it would run it again).
            Ok(outcome)
        } else {
            Err(RequestError::Rejected(Box::new(res.error.unwrap_or_else(
                || {
                    GatewayError::local(
                        "UNKNOWN",
                        "the gateway answered ok:false without an error object",
                    )
                },
            ))))
        };
        let _ = p.tx.send(result);
    }

    /// The pending-requests gauge (its handle is looked up once).
    fn report_pending(&mut self) {
        let n = self.pending.len() as f64;
        self.pending_gauge
            .get_or_insert_with(|| metrics::gauge!(crate::metrics::PENDING_REQUESTS, "gateway" => self.cfg.gateway.to_string()))
            .set(n);
    }

    /// Keep the one deadline timer armed for the earliest pending deadline.
    fn arm_deadline_timer(&mut self, ctx: &mut Context<Self>) {
        let Some((&(at, _), _)) = self.deadlines.first_key_value() else {
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
            act.expire_requests(ctx);
        });
        self.deadline_timer = Some((at, h));
    }

    /// Fail every request whose deadline has passed with `Timeout`.
    fn expire_requests(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let mut expired = false;
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            if let Some(p) = self.pending.remove(&id) {
                expired = true;
                self.finished.insert(id);
                let err = match p.run_id {
                    Some(run_id) => RequestError::Run {
                        run_id,
                        failure: RunFailure::Timeout {
                            after_ms: p.timeout_ms,
                        },
                    },
                    None => RequestError::Timeout {
                        after_ms: p.timeout_ms,
                    },
                };
                let _ = p.tx.send(Err(err));
            }
        }
        if expired {
            self.report_pending();
        }
        self.arm_deadline_timer(ctx);
    }

    /// Fail one pending request now (its answer, if any, is dropped
    /// quietly). Whether it was pending.
    pub(super) fn fail_request(&mut self, id: &str, err: RequestError) -> bool {
        let Some(p) = self.pending.remove(id) else {
            return false;
        };
        self.deadlines.remove(&p.deadline);
        self.finished.insert(id.to_owned());
        let _ = p.tx.send(Err(err));
        self.report_pending();
        true
    }

    /// Asked by the writer just before a request goes on the wire: is it
    /// still wanted? Not when its deadline passed (its caller has, or is
    /// about to get, `BRIDGE_TIMEOUT`) or its caller went away; such a
    /// request is never written, so a frozen gateway that wakes up does not
    /// start work nobody waits for.
    pub(super) fn still_wanted(&mut self, id: &str, deadline: Instant) -> bool {
        let wanted =
            Instant::now() < deadline && self.pending.get(id).is_some_and(|p| !p.caller_gone());
        if !wanted {
            crate::metrics::unwritten(&self.cfg.gateway);
            if let Some(p) = self.pending.remove(id) {
                self.deadlines.remove(&p.deadline);
                let _ = p.tx.send(Err(RequestError::Timeout {
                    after_ms: p.timeout_ms,
                }));
                self.report_pending();
            }
        }
        wanted
    }

    /// Release the entries of callers that went away (an HTTP client that
    /// disconnected). The gateway is not told: an accepted run keeps
    /// running; a late answer is dropped quietly.
    pub(super) fn release_abandoned(&mut self) {
        let gone: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.caller_gone())
            .map(|(id, _)| id.clone())
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in gone {
            if let Some(p) = self.pending.remove(&id) {
                self.deadlines.remove(&p.deadline);
                self.finished.insert(id);
            }
        }
        self.report_pending();
    }

    /// Refuse a request past `max_pending` / `max_pending_bytes`: logged
    /// when the bound starts being hit, counted every time.
    fn overloaded(&mut self, bound: &'static str, limit: u64) -> RequestError {
        crate::metrics::overloaded(&self.cfg.gateway, bound);
        if !self.overloaded {
            self.overloaded = true;
            tracing::warn!(gateway = %self.cfg.gateway,
                event = ev::HTTP_OVERLOADED,
                bound,
                limit,
                pending = self.pending.len(),
                queued_bytes = self.out.bytes,
                "too many requests in flight to this gateway; refusing with BRIDGE_OVERLOADED until some finish"
            );
        }
        RequestError::Overloaded {
            bound,
            limit,
            retry_after_ms: 1000,
        }
    }

    pub(super) fn fail_pending(&mut self, err: &RequestError) -> usize {
        self.deadlines.clear();
        let n = self.pending.len();
        for (_, p) in self.pending.drain() {
            let _ = p.tx.send(Err(match (p.run_id, err) {
                (Some(run_id), RequestError::Disconnected { reason }) => RequestError::Run {
                    run_id,
                    failure: RunFailure::Disconnected {
                        reason: reason.clone(),
                    },
                },
                (Some(run_id), RequestError::ShuttingDown) => RequestError::Run {
                    run_id,
                    failure: RunFailure::ShuttingDown,
                },
                _ => err.clone(),
            }));
        }
        n
    }
}

/// A fresh request id: a v4 UUID from the thread's fast PRNG (ids only
/// correlate answers on our own socket; a syscall per id cost more than the
/// rest of a request).
fn request_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .to_string()
}

fn null_raw() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// The final answer of a failed run: its payload object, with the gateway's
/// error object added as `error` when the payload has none.
pub(super) fn run_outcome(
    payload: &RawValue,
    error: Option<&GatewayError>,
) -> Option<Box<RawValue>> {
    let mut obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(payload.get()).ok()?;
    if let Some(e) = error {
        obj.entry("error").or_insert_with(|| e.to_value());
    }
    serde_json::value::to_raw_value(&obj).ok()
}

/// The `runId` of an `accepted` answer.
fn accepted_run_id(payload: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    struct Accepted {
        #[serde(rename = "runId")]
        run_id: Option<String>,
    }
    serde_json::from_str::<Accepted>(payload.get())
        .ok()
        .and_then(|a| a.run_id)
        .filter(|r| !r.is_empty())
}

/// Is this `agent` answer the first, `accepted` one?
pub(super) fn is_accepted(payload: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Status<'a> {
        #[serde(borrow, default)]
        status: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Status<'_>>(payload.get())
        .ok()
        .and_then(|s| s.status)
        .is_some_and(|s| s == "accepted")
}

impl Handler<Send> for GatewayConnection {
    type Result = ResponseFuture<Result<Box<RawValue>, RequestError>>;

    fn handle(&mut self, msg: Send, ctx: &mut Context<Self>) -> Self::Result {
        let immediate = |e| -> Self::Result { Box::pin(async move { Err(e) }) };
        if self.shutting_down {
            return immediate(RequestError::ShuttingDown);
        }
        if !matches!(self.phase, Phase::Ready { .. }) {
            return immediate(RequestError::NotConnected {
                state: "connecting".into(),
                next_attempt_in_ms: None,
            });
        }
        if msg.method.is_empty() {
            return immediate(RequestError::BadRequest("method must not be empty".into()));
        }
        if let Some(p) = &msg.params {
            if !p.get().trim_start().starts_with('{') {
                return immediate(RequestError::BadRequest(
                    "params must be a JSON object".into(),
                ));
            }
        }
        if self.pending.len() >= self.cfg.max_pending {
            return immediate(self.overloaded("gateway.max_pending", self.cfg.max_pending as u64));
        }
        let id = request_id();
        let text = match protocol::encode_request(&id, &msg.method, msg.params.as_deref()) {
            Ok(t) => t,
            Err(e) => return immediate(RequestError::BadRequest(e.to_string())),
        };
        // One request alone may exceed the byte bound when nothing else is
        // queued: the bound is on what piles up, not on a request's size.
        if self.out.bytes > 0 && self.out.bytes + text.len() > self.cfg.max_pending_bytes {
            return immediate(self.overloaded(
                "gateway.max_pending_bytes",
                self.cfg.max_pending_bytes as u64,
            ));
        }
        self.overloaded = false;
        if !self.out.open {
            return immediate(RequestError::Disconnected {
                reason: "the socket is closed".into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        let timeout = msg.timeout.unwrap_or(self.cfg.request_timeout);
        self.next_deadline_seq += 1;
        let deadline = (Instant::now() + timeout, self.next_deadline_seq);
        self.out.push(Queued {
            bytes: text.len(),
            msg: WsMessage::Text(text.into()),
            request: Some((id.clone(), deadline.0)),
        });
        self.deadlines.insert(deadline, id.clone());
        self.pending.insert(
            id,
            Pending {
                tx,
                is_agent: msg.method == "agent",
                expect_final: msg.expect_final,
                caller: msg.caller,
                accepted_seen: false,
                run_id: None,
                deadline,
                timeout_ms: timeout.as_millis() as u64,
            },
        );
        self.report_pending();
        self.arm_deadline_timer(ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(RequestError::Disconnected {
                    reason: "the connection stopped".into(),
                })
            })
        })
    }
}
