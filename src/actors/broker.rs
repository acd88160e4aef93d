//! `EventBroker`: fan-out of gateway events to subscribers.
//!
//! **Owns:** the bridge's own event id counter (monotonic for the process),
//! a ring buffer of the last `events.buffer` events for resume, and the
//! subscribers, each with a bounded queue and a filter.
//!
//! **Handles:** [`EventMsg`] (from `GatewayConnection`), [`LinkChanged`] (from
//! `Supervisor`: `bridge.connected` / `bridge.disconnected`), [`Subscribe`] /
//! [`BrokerStats`] (from the HTTP API).
//!
//! **Never waits for a subscriber:** each delivery is a `try_send`. A full
//! queue marks the subscriber lagged (one `sse.subscriber_lagged` log, a
//! count of dropped events); when its queue has room again it first gets a
//! `bridge.gap` message naming the missed id range, so a loss is never silent.
//! A subscriber whose receiver is gone is removed.
//!
//! **On stop:** subscribers' channels close, so their streams end.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use actix::prelude::{Actor, Context, Handler, Message, MessageResult};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::messages::{EventMsg, LinkChanged};
use crate::telemetry::events as ev;

/// An immutable string shared without copying: the name, ids and data line
/// of a gateway event are rendered once and shared by every item and
/// subscriber. Reads as a `str`.
#[derive(Clone)]
pub struct Text(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Text {
    pub const fn from_static(s: &'static str) -> Text {
        Text(Repr::Static(s))
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(Repr::Shared(Arc::from(s)))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Repr::Shared(Arc::from(s)))
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Text {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One message as subscribers get it, rendered once for all of them.
#[derive(Debug)]
pub struct BrokerItem {
    /// The bridge's event id (SSE `id:`).
    pub id: u64,
    /// The gateway event name, or `bridge.*`.
    pub name: Text,
    pub agent_id: Option<Text>,
    pub run_id: Option<Text>,
    /// `{"seq": …, "payload": …}`: the SSE `data:` line.
    pub data: Text,
}

/// Another destination for every published item (e.g. NATS JetStream), fed
/// from [`EventBroker`]'s publish path after the ring buffer and before the
/// SSE fan-out. `offer` is called on the broker's thread for each item in
/// order and must not wait: queue with `try_send` semantics, count and
/// announce what it cannot take. Per-subscriber `bridge.gap` items are not
/// offered (they are not events).
pub trait EventSink: std::marker::Send {
    fn offer(&mut self, item: &Arc<BrokerItem>);
}

/// Add a sink (wired by `Application::build` when `[nats]` is configured).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddSink(pub Box<dyn EventSink>);

/// What a subscriber wants. Empty means everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub events: Vec<String>,
    pub agent: Option<String>,
    pub run: Option<String>,
}

impl Filter {
    fn matches(&self, item: &BrokerItem) -> bool {
        // Bridge lifecycle and gap messages reach every subscriber.
        if item.name.starts_with("bridge.") {
            return true;
        }
        if !self.events.is_empty() && !self.events.iter().any(|e| item.name == *e) {
            return false;
        }
        if let Some(a) = &self.agent {
            if item.agent_id.as_deref() != Some(a.as_str()) {
                return false;
            }
        }
        if let Some(r) = &self.run {
            if item.run_id.as_deref() != Some(r.as_str()) {
                return false;
            }
        }
        true
    }
}

/// Subscribe; with `since`, replay the buffered events after that id first.
#[derive(Debug, Message)]
#[rtype(result = "Subscription")]
pub struct Subscribe {
    pub filter: Filter,
    pub since: Option<u64>,
    /// A name for logs (e.g. the peer address).
    pub label: String,
}

pub struct Subscription {
    pub id: u64,
    pub rx: mpsc::Receiver<Arc<BrokerItem>>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub subscribers: usize,
    pub lagged_subscribers: usize,
    pub last_event_id: u64,
    pub buffered: usize,
    pub dropped_total: u64,
}

#[derive(Debug, Message)]
#[rtype(result = "Stats")]
pub struct BrokerStats;

struct Subscriber {
    tx: mpsc::Sender<Arc<BrokerItem>>,
    filter: Filter,
    label: String,
    /// First id not delivered since the queue overflowed.
    lagged_from: Option<u64>,
    dropped: u64,
}

pub struct EventBroker {
    /// The configured id of this broker's gateway (logs, metrics).
    gateway: Arc<str>,
    next_id: u64,
    ring: VecDeque<Arc<BrokerItem>>,
    ring_cap: usize,
    queue: usize,
    subscribers: HashMap<u64, Subscriber>,
    next_sub: u64,
    dropped_total: u64,
    /// After [`CloseAll`] (shutdown) new subscriptions end at once.
    closed: bool,
    sinks: Vec<Box<dyn EventSink>>,
    /// The first id this process issued: a resume id below it is from a
    /// previous process.
    first_id: u64,
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

impl EventBroker {
    /// Ids start at `first_id` (see [`boot_first_id`]); `new` starts at 1.
    pub fn starting_at(mut self, first_id: u64) -> Self {
        self.next_id = first_id.max(1);
        self.first_id = self.next_id;
        self
    }

    /// The broker of gateway `id` (logs and metric labels).
    pub fn for_gateway(mut self, id: &str) -> Self {
        self.gateway = Arc::from(id);
        self
    }

    pub fn new(buffer: usize, subscriber_queue: usize) -> Self {
        EventBroker {
            gateway: Arc::from(crate::config::DEFAULT_GATEWAY),
            next_id: 1,
            ring: VecDeque::with_capacity(buffer.min(65_536)),
            ring_cap: buffer.max(1),
            queue: subscriber_queue.max(1),
            subscribers: HashMap::new(),
            next_sub: 1,
            dropped_total: 0,
            closed: false,
            sinks: Vec::new(),
            first_id: 1,
        }
    }

    fn publish(&mut self, name: Text, agent_id: Option<Text>, run_id: Option<Text>, data: Text) {
        let item = Arc::new(BrokerItem {
            id: self.next_id,
            name,
            agent_id,
            run_id,
            data,
        });
        self.next_id += 1;
        if self.ring.len() == self.ring_cap {
            self.ring.pop_front();
        }
        self.ring.push_back(item.clone());
        for sink in &mut self.sinks {
            sink.offer(&item);
        }
        let mut closed = Vec::new();
        // Drops are counted here and reported to metrics once per event.
        let dropped_before = self.dropped_total;
        for (sid, sub) in self.subscribers.iter_mut() {
            if !sub.filter.matches(&item) {
                continue;
            }
            if let Some(from) = sub.lagged_from {
                // Resume only once half the queue is free: resuming at the
                // first free slot would lag again at once, event after event.
                if sub.tx.capacity() < (self.queue / 2).max(2) {
                    sub.dropped += 1;
                    self.dropped_total += 1;
                    continue;
                }
                let gap = gap_item(from, item.id - 1, sub.dropped);
                match sub.tx.try_send(Arc::new(gap)) {
                    Ok(()) => {
                        sub.lagged_from = None;
                        sub.dropped = 0;
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.dropped += 1;
                        self.dropped_total += 1;
                        continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        closed.push(*sid);
                        continue;
                    }
                }
            }
            match sub.tx.try_send(item.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.lagged_from = Some(item.id);
                    sub.dropped = 1;
                    self.dropped_total += 1;
                    tracing::warn!(gateway = %self.gateway, event = ev::SSE_SUBSCRIBER_LAGGED, subscriber = %sub.label, subscriber_id = *sid, dropped = 1u64, queue = self.queue, "subscriber is not keeping up; skipping events for it (it gets a bridge.gap message)");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => closed.push(*sid),
            }
        }
        if self.dropped_total > dropped_before {
            crate::metrics::sse_dropped(&self.gateway, self.dropped_total - dropped_before);
        }
        if !closed.is_empty() {
            for sid in closed {
                self.subscribers.remove(&sid);
            }
            crate::metrics::sse_subscribers(&self.gateway, self.subscribers.len());
        }
    }
}

fn gap_item(from: u64, to: u64, dropped: u64) -> BrokerItem {
    BrokerItem {
        id: to,
        name: Text::from_static("bridge.gap"),
        agent_id: None,
        run_id: None,
        data: json!({"seq": null, "payload": {"from": from, "to": to, "dropped": dropped}})
            .to_string()
            .into(),
    }
}

impl Actor for EventBroker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
    }
}

impl Handler<EventMsg> for EventBroker {
    type Result = ();

    fn handle(&mut self, EventMsg(event): EventMsg, _: &mut Context<Self>) {
        self.publish(
            event.name.clone(),
            event.agent_text().cloned(),
            event.run_text().cloned(),
            event.data().clone(),
        );
    }
}

impl Handler<LinkChanged> for EventBroker {
    type Result = ();

    fn handle(&mut self, msg: LinkChanged, _: &mut Context<Self>) {
        let name = if msg.connected {
            "bridge.connected"
        } else {
            "bridge.disconnected"
        };
        let data = json!({"seq": Value::Null, "payload": msg.detail}).to_string();
        self.publish(Text::from_static(name), None, None, data.into());
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
        let mut replay: Vec<Arc<BrokerItem>> = Vec::new();
        if let Some(mut asked) = msg.since {
            // 0 asks for everything buffered: as if resuming from just before
            // this process's first event.
            if asked == 0 {
                asked = self.first_id - 1;
            }
            // An id this bridge never issued (the client saw a previous
            // process): everything buffered is new to it, and what came
            // before is unknown, so say so and replay it all.
            let unknown = asked >= self.next_id || asked.saturating_add(1) < self.first_id;
            let since = if unknown { 0 } else { asked };
            let oldest = self.ring.front().map_or(self.next_id, |i| i.id);
            if unknown {
                replay.push(Arc::new(BrokerItem {
                    data: json!({"seq": null, "payload": {"from": 1, "to": oldest - 1, "reason": "unknown_id", "last_event_id": asked}}).to_string().into(),
                    ..gap_item(1, oldest - 1, 0)
                }));
            } else if since.saturating_add(1) < oldest {
                replay.push(Arc::new(gap_item(
                    since + 1,
                    oldest - 1,
                    oldest - 1 - since,
                )));
            }
            replay.extend(
                self.ring
                    .iter()
                    .filter(|i| i.id > since && msg.filter.matches(i))
                    .cloned(),
            );
        }
        let (tx, rx) = mpsc::channel(self.queue + replay.len());
        for item in replay {
            // Capacity was sized for the replay: this cannot be full.
            let _ = tx.try_send(item);
        }
        let id = self.next_sub;
        self.next_sub += 1;
        if self.closed {
            // Dropping `tx` ends the stream once the replay is read.
            return MessageResult(Subscription { id, rx });
        }
        self.subscribers.insert(
            id,
            Subscriber {
                tx,
                filter: msg.filter,
                label: msg.label,
                lagged_from: None,
                dropped: 0,
            },
        );
        crate::metrics::sse_subscribers(&self.gateway, self.subscribers.len());
        MessageResult(Subscription { id, rx })
    }
}

impl Handler<BrokerStats> for EventBroker {
    type Result = MessageResult<BrokerStats>;

    fn handle(&mut self, _: BrokerStats, _: &mut Context<Self>) -> Self::Result {
        self.subscribers.retain(|_, s| !s.tx.is_closed());
        MessageResult(Stats {
            subscribers: self.subscribers.len(),
            lagged_subscribers: self
                .subscribers
                .values()
                .filter(|s| s.lagged_from.is_some())
                .count(),
            last_event_id: self.next_id - 1,
            buffered: self.ring.len(),
            dropped_total: self.dropped_total,
        })
    }
}

/// Drop every subscriber (shutdown): their streams end cleanly.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseAll;

impl Handler<CloseAll> for EventBroker {
    type Result = ();

    fn handle(&mut self, _: CloseAll, _: &mut Context<Self>) {
        self.subscribers.clear();
        self.closed = true;
        crate::metrics::sse_subscribers(&self.gateway, 0);
    }
}

#[cfg(test)]
mod tests;
