//! The broker side of NATS: [`NatsSink`] queues each item with `try_send`,
//! preceded by a `bridge.resync` marker where the item says so (a new epoch:
//! the broker counts sessions from the supervisor's link changes; a seq gap:
//! the connection's own detection, carried on the event). What it cannot
//! queue is counted in [`Lost`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::envelope::Outgoing;
use super::LOG_EVERY;
use crate::actors::broker::{BrokerItem, EventSink};
use crate::telemetry::emit;

/// Loss ranges kept before neighbouring ranges are merged.
pub(super) const MAX_RANGES: usize = 64;

/// Bridge ids that did not reach JetStream, as inclusive ranges.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Lost {
    pub ranges: Vec<(u64, u64)>,
    pub count: u64,
}

impl Lost {
    pub fn add(&mut self, id: u64) {
        self.count += 1;
        // Ids are lost in order while NATS is down: extend the last range
        // in place (no sort, no allocation per event).
        if let Some(last) = self.ranges.last_mut() {
            if last.0 <= id && id <= last.1.saturating_add(1) {
                last.1 = last.1.max(id);
                return;
            }
        }
        self.add_range(id, id);
    }

    /// Add an inclusive range (ids only; `count` is not changed).
    fn add_range(&mut self, from: u64, to: u64) {
        self.ranges.push((from, to));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for (a, b) in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        while merged.len() > MAX_RANGES {
            // Merge the two closest neighbours: the marker then names a
            // superset (conservative), never fewer ids than were lost.
            let mut best = 0;
            let mut best_gap = u64::MAX;
            for i in 0..merged.len() - 1 {
                let gap = merged[i + 1].0.saturating_sub(merged[i].1);
                if gap < best_gap {
                    best_gap = gap;
                    best = i;
                }
            }
            let next = merged.remove(best + 1);
            merged[best].1 = merged[best].1.max(next.1);
        }
        self.ranges = merged;
    }

    pub fn merge(&mut self, other: Lost) {
        for (a, b) in other.ranges {
            self.add_range(a, b);
        }
        self.count += other.count;
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

pub(super) struct Shared {
    pub(super) lost: Mutex<Lost>,
}

impl Shared {
    pub(super) fn lose(&self, id: u64) {
        if let Ok(mut l) = self.lost.lock() {
            l.add(id);
        }
    }

    pub(super) fn take(&self) -> Lost {
        self.lost
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    pub(super) fn put_back(&self, lost: Lost) {
        if let Ok(mut l) = self.lost.lock() {
            let newer = std::mem::take(&mut *l);
            *l = lost;
            l.merge(newer);
        }
    }
}

/// The broker side: turns epochs and seq gaps into markers, queues with `try_send`.
pub struct NatsSink {
    gateway: Arc<str>,
    tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
    /// The epoch of the last item offered: a new one starts a session.
    epoch: u64,
    /// A marker that could not be queued: sent with the next item that fits.
    pending_marker: Option<Value>,
    dropped_unlogged: u64,
    dropped_total: u64,
    last_log: Option<Instant>,
    /// `openclaw_bridge_nats_dropped_total{reason="queue_full"}`, looked up once.
    queue_full: metrics::Counter,
}

impl NatsSink {
    pub(super) fn new(gateway: Arc<str>, tx: mpsc::Sender<Outgoing>, shared: Arc<Shared>) -> Self {
        NatsSink {
            queue_full: crate::metrics::nats_dropped_counter(&gateway, "queue_full"),
            gateway,
            tx,
            shared,
            epoch: 0,
            pending_marker: None,
            dropped_unlogged: 0,
            dropped_total: 0,
            last_log: None,
        }
    }

    fn queue(&mut self, out: Outgoing) -> bool {
        match self.tx.try_send(out) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o)) => {
                match o {
                    Outgoing::Event { item, .. } => {
                        self.shared.lose(item.id);
                        self.dropped_unlogged += 1;
                        self.dropped_total += 1;
                        let log = self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY);
                        emit::nats_queue_full(
                            &self.gateway,
                            &self.queue_full,
                            log.then_some((self.dropped_unlogged, self.dropped_total)),
                        );
                        if log {
                            self.dropped_unlogged = 0;
                            self.last_log = Some(Instant::now());
                        }
                    }
                    Outgoing::Marker { payload, .. } => {
                        // Keep the latest reason; the loss marker covers the rest.
                        self.pending_marker = Some(payload);
                    }
                }
                false
            }
        }
    }
}

impl EventSink for NatsSink {
    fn offer(&mut self, item: &Arc<BrokerItem>) {
        let epoch = item.epoch;
        // The first item of a new session (its `bridge.connected`) is
        // followed by the reconnect marker.
        let after =
            (epoch != self.epoch).then(|| json!({"reason": "reconnect", "bridge_id": item.id}));
        self.epoch = epoch;
        if let Some(gap) = item.seq_gap() {
            let m = json!({"reason": "seq_gap", "expected": gap.expected, "got": gap.got, "bridge_id": item.id});
            self.queue(Outgoing::Marker { epoch, payload: m });
        }
        if let Some(m) = self.pending_marker.take() {
            // Still full: the item below is dropped too (and counted).
            self.queue(Outgoing::Marker { epoch, payload: m });
        }
        self.queue(Outgoing::Event {
            item: item.clone(),
            epoch,
        });
        if let Some(m) = after {
            self.queue(Outgoing::Marker { epoch, payload: m });
        }
    }
}
