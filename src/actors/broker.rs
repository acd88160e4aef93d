//! `EventBroker`: fan-out of gateway events to subscribers and sinks.
//!
//! **Owns:** the bridge's own event id counter (monotonic for the process),
//! one bounded ring of events (`events.buffer` events, `events.buffer_bytes`
//! bytes) shared by every subscriber, the session epoch, and the sinks (NATS).
//!
//! **Handles:** [`EventBatch`] (from `GatewayConnection`: the events of one
//! read pass, in order; from `Supervisor`: `bridge.run_reconciled` items),
//! [`EventMsg`] (one event, from tests),
//! [`LinkChanged`] (from `Supervisor`: `bridge.connected` /
//! `bridge.disconnected`, and the session epoch), [`Subscribe`] / [`BrokerStats`]
//! (from the HTTP API, the status page and tests), [`AddSink`] (from `app` at
//! start, once per sink: the sink is built after the supervisor it needs, so
//! it cannot be passed to the constructor), [`CloseAll`] (from `app`'s
//! `Stopper`).
//!
//! **Sends:** nothing to other actors. Publishing appends to the ring and
//! wakes readers; sinks are offered each item in order on this thread.
//!
//! **Never waits for a subscriber:** each subscriber reads from its own
//! cursor on its own thread (see `ring`). One a whole ring behind gets a
//! `bridge.gap` with the exact ids it missed, never silence. A subscriber is
//! gone as soon as its [`Subscription`] is dropped, whatever its filter.
//!
//! **Lifecycle:** one per gateway, on that gateway's thread, for the life of
//! the process. On stop ([`CloseAll`]) readers end once they have read what
//! is left.

mod item;
mod ring;

use std::sync::Arc;

use actix::prelude::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult,
};
use serde_json::json;

use super::messages::{EventBatch, EventMsg, LinkChanged};
pub use crate::protocol::Text;
pub use item::{BrokerItem, Filter};
use ring::{gap_item, Ring};
pub use ring::{Subscription, TryRecvError};

/// Another destination for every published item (e.g. NATS JetStream), fed
/// from [`EventBroker`]'s publish path after the ring. `offer` is called on
/// the broker's thread for each item in order and must not wait: queue with
/// `try_send` semantics, count and announce what it cannot take.
/// Per-subscriber `bridge.gap` items are not offered (they are not events).
pub trait EventSink: std::marker::Send {
    fn offer(&mut self, item: &Arc<BrokerItem>);
}

/// Add a sink (wired by `Application::build` when `[nats]` is configured).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddSink(pub Box<dyn EventSink>);

/// Subscribe; with `since`, replay the buffered events after that id first.
#[derive(Debug, Message)]
#[rtype(result = "Result<Subscription, Overloaded>")]
pub struct Subscribe {
    pub filter: Filter,
    pub since: Option<u64>,
    /// A name for logs (e.g. the peer address).
    pub label: String,
}

/// `http.max_sse_subscribers` are already subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{max} event subscribers are connected already (http.max_sse_subscribers)")]
pub struct Overloaded {
    pub max: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub subscribers: usize,
    /// Subscribers the ring has moved past (they get a `bridge.gap`).
    pub lagged_subscribers: usize,
    pub last_event_id: u64,
    pub buffered: usize,
    pub buffered_bytes: usize,
    /// Ids overwritten before a subscriber read them, over all subscribers.
    pub dropped_total: u64,
}

#[derive(Debug, Message)]
#[rtype(result = "Stats")]
pub struct BrokerStats;

pub struct EventBroker {
    /// The configured id of this broker's gateway (logs, metrics).
    gateway: Arc<str>,
    ring: Arc<Ring>,
    cap: usize,
    cap_bytes: usize,
    max_subscribers: usize,
    next_sub: u64,
    sinks: Vec<Box<dyn EventSink>>,
    /// The first id this process issued: a resume id below it is from a
    /// previous process.
    first_id: u64,
    /// Gateway sessions seen (`LinkChanged` with `connected`): the epoch
    /// stamped on every item, so sinks need not infer it.
    epoch: u64,
    /// A wake-up of the ring's readers is scheduled (see [`Self::wake_readers`]).
    wake_scheduled: bool,
}

/// A first event id for this process: milliseconds since 2024-01-01 times
/// 2^14. Ids of a later process are higher than any an earlier one can have
/// issued (under 16 384 events a millisecond), so a client resuming with an
/// id from before a restart is recognised; ids stay below 2^53 (exact in
/// JavaScript) until about 2041.
pub fn boot_first_id() -> u64 {
    const EPOCH_2024_MS: u64 = 1_704_067_200_000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(EPOCH_2024_MS);
    (now.saturating_sub(EPOCH_2024_MS) << 14).max(1)
}

/// `events.buffer_bytes` default: 16 MiB.
pub const DEFAULT_BUFFER_BYTES: usize = 16 << 20;
/// `http.max_sse_subscribers` default.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 1024;

impl EventBroker {
    /// A ring of `buffer` events (and [`DEFAULT_BUFFER_BYTES`]).
    pub fn new(buffer: usize) -> Self {
        let gateway: Arc<str> = Arc::from(crate::config::DEFAULT_GATEWAY);
        let cap = buffer.max(1);
        EventBroker {
            ring: Arc::new(Ring::new(gateway.clone(), cap, DEFAULT_BUFFER_BYTES, 1)),
            gateway,
            cap,
            cap_bytes: DEFAULT_BUFFER_BYTES,
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            next_sub: 1,
            sinks: Vec::new(),
            first_id: 1,
            epoch: 0,
            wake_scheduled: false,
        }
    }

    fn rebuild(mut self) -> Self {
        self.ring = Arc::new(Ring::new(
            self.gateway.clone(),
            self.cap,
            self.cap_bytes,
            self.first_id,
        ));
        self
    }

    /// Ids start at `first_id` (see [`boot_first_id`]); `new` starts at 1.
    pub fn starting_at(mut self, first_id: u64) -> Self {
        self.first_id = first_id.max(1);
        self.rebuild()
    }

    /// The broker of gateway `id` (logs and metric labels).
    pub fn for_gateway(mut self, id: &str) -> Self {
        self.gateway = Arc::from(id);
        self.rebuild()
    }

    /// Bound the ring's bytes too (`events.buffer_bytes`).
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.cap_bytes = bytes.max(1);
        self.rebuild()
    }

    /// At most `n` live subscriptions (`http.max_sse_subscribers`).
    pub fn max_subscribers(mut self, n: usize) -> Self {
        self.max_subscribers = n;
        self
    }

    fn publish(&mut self, item: Arc<BrokerItem>, ctx: &mut Context<Self>) {
        for sink in &mut self.sinks {
            sink.offer(&item);
        }
        self.wake_readers(ctx);
    }

    /// Wake the ring's waiting readers a few turns of this thread from now
    /// ([`WAKE_TURNS`]). Actix handles every queued message before it polls
    /// the context's futures, and the connection hands a flood over 16
    /// frames per turn, so a flood costs one wake-up per up to
    /// `16 × WAKE_TURNS` events instead of one cross-thread wake-up (an
    /// `eventfd` write, a context switch on the reader's side) per event.
    /// A quiet thread runs those turns back to back: a lone event waits
    /// microseconds, not for the next one.
    fn wake_readers(&mut self, ctx: &mut Context<Self>) {
        if self.wake_scheduled {
            return;
        }
        self.wake_scheduled = true;
        ctx.spawn(actix::fut::wrap_future(Turns(WAKE_TURNS)).map(
            |(), broker: &mut Self, _: &mut Context<Self>| {
                broker.wake_scheduled = false;
                broker.ring.wake();
            },
        ));
    }
}

/// The turns of the stack's thread a wake-up of the ring's readers waits
/// (see [`EventBroker::wake_readers`]). In paired runs of the bench's actors
/// child (200k-event floods) 1 turn gave a median of 370k events/s, 4 gave
/// 429k, 16 gave 469k (490k with the faster UTF-8 check) and 64 gave 520k,
/// with CPU per event down by 40 %: at 64 a flood wakes a reader once per
/// up to 1024 events, about 2 ms of it. A lone event's delivery to another
/// thread took the same time at 16 and at 64 turns.
const WAKE_TURNS: u8 = 64;

/// Ready after its count of polls: each `Pending` reschedules the task
/// behind whatever else the thread has to run.
struct Turns(u8);

impl std::future::Future for Turns {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 <= 1 {
            return std::task::Poll::Ready(());
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl Actor for EventBroker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(super::messages::EVENT_MAILBOX);
        // The gauge exists from the start (0), not from the first subscriber:
        // an alert on it needs the series.
        crate::metrics::sse_subscribers(&self.gateway, 0);
    }
}

impl Handler<EventMsg> for EventBroker {
    type Result = ();

    fn handle(&mut self, EventMsg(event): EventMsg, ctx: &mut Context<Self>) {
        let epoch = self.epoch;
        let item = self.ring.push(|id| BrokerItem::gateway(id, epoch, event));
        self.publish(item, ctx);
    }
}

impl Handler<EventBatch> for EventBroker {
    type Result = ();

    fn handle(&mut self, EventBatch(events): EventBatch, ctx: &mut Context<Self>) {
        let epoch = self.epoch;
        for event in events {
            let item = self.ring.push(|id| BrokerItem::gateway(id, epoch, event));
            // One wake-up for the batch: `wake_readers` schedules it once.
            self.publish(item, ctx);
        }
    }
}

impl Handler<LinkChanged> for EventBroker {
    type Result = ();

    fn handle(&mut self, msg: LinkChanged, ctx: &mut Context<Self>) {
        let name = if msg.connected {
            self.epoch += 1;
            "bridge.connected"
        } else {
            "bridge.disconnected"
        };
        let epoch = self.epoch;
        let payload = msg.detail.to_string();
        let item = self
            .ring
            .push(|id| BrokerItem::bridge(id, epoch, name, payload));
        self.publish(item, ctx);
    }
}

impl Handler<AddSink> for EventBroker {
    type Result = ();

    fn handle(&mut self, AddSink(sink): AddSink, _: &mut Context<Self>) {
        self.sinks.push(sink);
    }
}

impl Handler<Subscribe> for EventBroker {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        if !self.ring.admit(self.max_subscribers) {
            return MessageResult(Err(Overloaded {
                max: self.max_subscribers,
            }));
        }
        let (oldest, next_id) = self.ring.span();
        let mut first: Vec<Arc<BrokerItem>> = Vec::new();
        let mut next = next_id;
        if let Some(mut asked) = msg.since {
            // 0 asks for everything buffered: as if resuming from just before
            // this process's first event.
            if asked == 0 {
                asked = self.first_id - 1;
            }
            // An id this bridge never issued (the client saw a previous
            // process): everything buffered is new to it, and what came
            // before is unknown, so say so and replay it all.
            let unknown = asked >= next_id || asked.saturating_add(1) < self.first_id;
            let since = if unknown { 0 } else { asked };
            if unknown {
                first.push(Arc::new(BrokerItem::bridge(
                    oldest - 1,
                    0,
                    "bridge.gap",
                    json!({"from": 1, "to": oldest - 1, "reason": "unknown_id", "last_event_id": asked}).to_string(),
                )));
            } else if since.saturating_add(1) < oldest {
                first.push(Arc::new(gap_item(
                    since + 1,
                    oldest - 1,
                    oldest - 1 - since,
                )));
            }
            // The cursor starts at the oldest held item after `since`; it
            // reads the replay from the ring like any other event.
            next = (since + 1).max(oldest);
        }
        let id = self.next_sub;
        self.next_sub += 1;
        let sub = self.ring.subscribe(id, next, msg.filter, msg.label, first);
        MessageResult(Ok(sub))
    }
}

impl Handler<BrokerStats> for EventBroker {
    type Result = MessageResult<BrokerStats>;

    fn handle(&mut self, _: BrokerStats, _: &mut Context<Self>) -> Self::Result {
        let (buffered, buffered_bytes, lagged_subscribers, dropped_total) = self.ring.stats();
        MessageResult(Stats {
            subscribers: self.ring.subscribers(),
            lagged_subscribers,
            last_event_id: self.ring.next_id() - 1,
            buffered,
            buffered_bytes,
            dropped_total,
        })
    }
}

/// End every subscriber's stream (shutdown) once it has read what is left.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseAll;

impl Handler<CloseAll> for EventBroker {
    type Result = ();

    fn handle(&mut self, _: CloseAll, _: &mut Context<Self>) {
        // Subscriptions made after this end at once, too.
        self.ring.close();
    }
}

#[cfg(test)]
mod tests;
