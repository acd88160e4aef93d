//! Request correlation as a plain value: the pending map, the deadlines
//! (one ordered index, so one timer serves every request), the ids whose late
//! answers are dropped quietly, and what a request's answer is. No actix: the
//! connection owns one [`Correlator`], feeds it responses, deadlines and
//! departures, and arms its timer for [`Correlator::next_deadline`]. Every
//! request registered here is answered exactly once through its responder:
//! at once when it fails, times out or is refused; an answer decoded from a
//! response is held until the owner calls [`Correlator::release`] (at the end
//! of its read pass), or the correlator is dropped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::Weak;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::actors::messages::{Answer, RequestError, RunFailure};
use crate::protocol::{GatewayError, ResponseFrame};

/// Ids of requests answered early (an `agent` `accepted`) or timed out are
/// remembered so their late answers are dropped quietly; bounded.
pub const FINISHED_IDS_KEPT: usize = 4096;

/// A request's answer: the payload or a typed error.
pub type Reply = Result<Box<RawValue>, RequestError>;

/// Where a request's one answer goes: the caller's own answer channel, as a
/// `Send` (the payload) or an `Rpc` (an [`Answer`]) expects it, so neither
/// needs a channel or future of its own in between.
#[derive(Debug)]
pub enum Responder {
    Send(oneshot::Sender<Reply>),
    Rpc(oneshot::Sender<Result<Answer, RequestError>>),
}

impl Responder {
    /// The caller stopped waiting.
    pub fn is_closed(&self) -> bool {
        match self {
            Responder::Send(tx) => tx.is_closed(),
            Responder::Rpc(tx) => tx.is_closed(),
        }
    }

    /// Answer (a caller that is gone is not an error).
    pub fn send(self, reply: Reply) {
        match self {
            Responder::Send(tx) => {
                let _ = tx.send(reply);
            }
            Responder::Rpc(tx) => {
                let _ = tx.send(reply.map(|payload| Answer {
                    payload,
                    reattached: false,
                }));
            }
        }
    }
}

impl From<oneshot::Sender<Reply>> for Responder {
    fn from(tx: oneshot::Sender<Reply>) -> Self {
        Responder::Send(tx)
    }
}

/// What a request needs to be correlated.
#[derive(Debug)]
pub struct Request {
    /// `agent` answers twice (`accepted`, then final); only its payload is
    /// inspected.
    pub is_agent: bool,
    /// For `agent`: answer with the final payload, not `accepted`.
    pub expect_final: bool,
    /// Alive while the caller waits (see `Send::caller`).
    pub caller: Option<Weak<()>>,
    pub timeout: Duration,
    /// A caller's request (counted and timed by the observer): its method
    /// and when the caller asked. `None`: the bridge's own (resyncs, …).
    pub metered: Option<Metered>,
}

/// What the observer of a caller's request needs when it ends.
#[derive(Debug)]
pub struct Metered {
    pub method: String,
    pub started: Instant,
}

/// Told how each metered request ended: its method, how long since the
/// caller asked, and the answer (before the caller gets it).
pub type Observer = Box<dyn FnMut(&str, Duration, &Reply)>;

struct Pending {
    tx: Responder,
    is_agent: bool,
    expect_final: bool,
    /// An `accepted` answer came; the final one is awaited.
    accepted_seen: bool,
    /// The accepted run's id: a timeout or a lost link hands it back
    /// ([`RequestError::Run`]) so the run can still be followed.
    run_id: Option<String>,
    caller: Option<Weak<()>>,
    metered: Option<Metered>,
    /// Key of this request in `deadlines`.
    deadline: (Instant, u64),
    timeout_ms: u64,
}

impl Pending {
    fn caller_gone(&self) -> bool {
        self.tx.is_closed() || self.caller.as_ref().is_some_and(|w| w.strong_count() == 0)
    }
}

/// What became of a response frame.
#[derive(Debug)]
pub enum Delivered<'a> {
    /// Its request was answered (and is no longer pending).
    Answered,
    /// An `accepted` for a caller awaiting the final answer: still pending.
    KeptOpen,
    /// A late answer to a request already finished: dropped quietly.
    Late,
    /// No request has this id: the frame, for the log.
    Unknown(ResponseFrame<'a>),
}

/// A request id as the correlator keeps it: shared by the pending map, the
/// deadline index and the write queue (one allocation per request).
pub type RequestId = Rc<str>;

/// A fast hasher for the pending map. Its keys are our own random ids (a
/// peer can only look up, never insert), so SipHash's flooding resistance
/// buys nothing here and costs a measurable share of a request.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The pending requests of one connection.
#[derive(Default)]
pub struct Correlator {
    pending: HashMap<RequestId, Pending, BuildHasherDefault<IdHasher>>,
    /// Pending ids by deadline (the sequence number keeps equal instants apart).
    deadlines: BTreeMap<(Instant, u64), RequestId>,
    next_seq: u64,
    finished: FinishedIds,
    observer: Option<Observer>,
    /// Answers to responses, held until [`Correlator::release`] (the end
    /// of the read pass they came in): a pass of answers then wakes a
    /// caller's thread once, not once per answer (a cross-thread wake-up
    /// was the costliest single step of a request).
    held: Vec<(Responder, Reply)>,
}

impl Drop for Correlator {
    fn drop(&mut self) {
        self.release();
    }
}

impl Correlator {
    /// A correlator that tells `observer` how each metered request ended.
    pub fn observed(observer: Observer) -> Self {
        let mut c = Correlator::default();
        c.observer = Some(observer);
        c
    }

    /// Answer a request that never became pending (refused at once).
    pub fn refuse(
        &mut self,
        metered: Option<Metered>,
        tx: impl Into<Responder>,
        err: RequestError,
    ) {
        self.deliver(metered.as_ref(), tx.into(), Err(err));
    }

    /// Answer a request now: the observer first, then its caller.
    fn deliver(&mut self, metered: Option<&Metered>, tx: Responder, reply: Reply) {
        self.observe(metered, &reply);
        tx.send(reply);
    }

    /// Tell the observer how a metered request ended (once per request,
    /// before its caller has the answer).
    fn observe(&mut self, metered: Option<&Metered>, reply: &Reply) {
        if let (Some(m), Some(observe)) = (metered, self.observer.as_mut()) {
            observe(&m.method, m.started.elapsed(), reply);
        }
    }

    /// Send the answers held since the last release, in the order their
    /// responses came.
    pub fn release(&mut self) {
        for (tx, reply) in self.held.drain(..) {
            tx.send(reply);
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Register request `id`, answered through `tx`. Its deadline (returned)
    /// is `now` plus its timeout.
    pub fn insert(
        &mut self,
        id: RequestId,
        req: Request,
        tx: impl Into<Responder>,
        now: Instant,
    ) -> Instant {
        self.next_seq += 1;
        let deadline = (now + req.timeout, self.next_seq);
        self.deadlines.insert(deadline, id.clone());
        self.pending.insert(
            id,
            Pending {
                tx: tx.into(),
                is_agent: req.is_agent,
                expect_final: req.expect_final,
                accepted_seen: false,
                run_id: None,
                caller: req.caller,
                metered: req.metered,
                deadline,
                timeout_ms: req.timeout.as_millis() as u64,
            },
        );
        deadline.0
    }

    /// The earliest deadline of a pending request.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first_key_value().map(|(&(at, _), _)| at)
    }

    /// Answer the request `res` is for: held until [`Correlator::release`].
    pub fn answer<'a>(&mut self, res: ResponseFrame<'a>) -> Delivered<'a> {
        let Some(p) = self.pending.get_mut(res.id.as_ref()) else {
            return if self.finished.remove(&res.id) {
                Delivered::Late
            } else {
                Delivered::Unknown(res)
            };
        };
        let accepted = res.ok && p.is_agent && res.payload.is_some_and(is_accepted);
        if accepted && p.expect_final {
            // Keep the id open for the final answer.
            p.accepted_seen = true;
            p.run_id = res.payload.and_then(accepted_run_id);
            return Delivered::KeptOpen;
        }
        let Some(p) = self.pending.remove(res.id.as_ref()) else {
            return Delivered::Unknown(res);
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
        // Timed at decode: the hold until the pass ends is not counted.
        self.observe(p.metered.as_ref(), &result);
        self.held.push((p.tx, result));
        Delivered::Answered
    }

    /// Fail every request whose deadline is not after `now` with a timeout
    /// (carrying the run id of an accepted run). How many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let id = entry.remove();
            if let Some(p) = self.pending.remove(&id) {
                n += 1;
                self.finished.insert(id.to_string());
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
                self.deliver(p.metered.as_ref(), p.tx, Err(err));
            }
        }
        n
    }

    /// Fail one pending request now (its answer, if any, is dropped
    /// quietly). Whether it was pending.
    pub fn fail(&mut self, id: &str, err: RequestError) -> bool {
        let Some(p) = self.pending.remove(id) else {
            return false;
        };
        self.deadlines.remove(&p.deadline);
        self.finished.insert(id.to_owned());
        self.deliver(p.metered.as_ref(), p.tx, Err(err));
        true
    }

    /// Asked just before a request goes on the wire: is it still wanted?
    /// Not when its deadline passed (its caller has, or is about to get,
    /// `BRIDGE_TIMEOUT`) or its caller went away; such a request is answered
    /// with a timeout here and must not be written.
    pub fn still_wanted(&mut self, id: &str, deadline: Instant, now: Instant) -> bool {
        let wanted = now < deadline && self.pending.get(id).is_some_and(|p| !p.caller_gone());
        if !wanted {
            if let Some(p) = self.pending.remove(id) {
                self.deadlines.remove(&p.deadline);
                let err = RequestError::Timeout {
                    after_ms: p.timeout_ms,
                };
                self.deliver(p.metered.as_ref(), p.tx, Err(err));
            }
        }
        wanted
    }

    /// Release the entries of callers that went away. The gateway is not
    /// told: an accepted run keeps running; a late answer is dropped quietly.
    /// How many.
    pub fn release_abandoned(&mut self) -> usize {
        if self.is_empty() {
            return 0;
        }
        let gone: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.caller_gone())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            if let Some(p) = self.pending.remove(id) {
                self.deadlines.remove(&p.deadline);
                self.finished.insert(id.to_string());
            }
        }
        gone.len()
    }

    /// The connection is gone: fail every pending request with `err`
    /// (an accepted run's caller gets its run id with it). How many.
    pub fn fail_all(&mut self, err: &RequestError) -> usize {
        self.deadlines.clear();
        let n = self.pending.len();
        let pending = std::mem::take(&mut self.pending);
        for (_, p) in pending {
            let reply = Err(match (p.run_id, err) {
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
            });
            self.deliver(p.metered.as_ref(), p.tx, reply);
        }
        n
    }
}

/// A bounded set of ids whose late answers are expected and dropped quietly.
#[derive(Default)]
struct FinishedIds {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl FinishedIds {
    fn insert(&mut self, id: String) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > FINISHED_IDS_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
    fn remove(&mut self, id: &str) -> bool {
        // Kept in `order` until evicted; harmless.
        self.set.remove(id)
    }
}

/// A fresh request id: a v4 UUID from the thread's fast PRNG (ids only
/// correlate answers on our own socket; a syscall per id cost more than the
/// rest of a request).
pub fn request_id() -> RequestId {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    Rc::from(&*id.hyphenated().encode_lower(&mut buf))
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

#[cfg(test)]
mod tests;
