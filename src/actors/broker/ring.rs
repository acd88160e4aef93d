//! The broker's one ring of events and the subscribers' cursors into it.
//!
//! The broker appends; every subscriber reads the same `Arc`s at its own
//! pace from its own position (a cursor: the next id it wants), on its own
//! thread. Nothing is queued per subscriber, so memory is one copy of each
//! event whatever the number of subscribers, and a subscriber that stalls
//! for less than the ring's span (`events.buffer` events, `events.buffer_bytes`
//! bytes) misses nothing. When the ring has moved past a cursor, the
//! subscriber's next read is a `bridge.gap` naming exactly the ids that were
//! overwritten before it read them.
//!
//! A subscription is counted from [`Ring::subscribe`] until its
//! [`Subscription`] is dropped (the SSE response ends), whatever its filter.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::json;
use tokio::sync::Notify;

use super::item::{BrokerItem, Filter};

/// Items scanned per lock hold by a reader: bounds how long a subscriber
/// whose filter matches little holds the broker's lock.
const SCAN: usize = 1024;

pub(super) struct Ring {
    state: Mutex<State>,
    /// Woken after an append (when someone waits) and on close.
    notify: Notify,
    /// Readers about to wait or waiting: an append wakes only when there are
    /// some (a busy reader finds the new items by itself).
    waiting: AtomicUsize,
    gateway: Arc<str>,
    /// Live subscriptions (the `openclaw_bridge_sse_subscribers` gauge).
    subscribers: AtomicUsize,
    /// Ids overwritten before a subscriber read them, summed (stats).
    dropped_total: AtomicU64,
    /// Each live subscription's next id, for the lagged count in stats.
    cursors: Mutex<HashMap<u64, Arc<AtomicU64>>>,
}

struct State {
    items: VecDeque<Arc<BrokerItem>>,
    bytes: usize,
    cap: usize,
    cap_bytes: usize,
    /// The id the next item gets.
    next_id: u64,
    /// After shutdown: readers end once they have read what is left.
    closed: bool,
}

impl State {
    fn oldest(&self) -> u64 {
        self.items.front().map_or(self.next_id, |i| i.id)
    }
}

impl Ring {
    pub(super) fn new(gateway: Arc<str>, cap: usize, cap_bytes: usize, first_id: u64) -> Ring {
        Ring {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(cap.min(65_536)),
                bytes: 0,
                cap: cap.max(1),
                cap_bytes: cap_bytes.max(1),
                next_id: first_id,
                closed: false,
            }),
            notify: Notify::new(),
            waiting: AtomicUsize::new(0),
            gateway,
            subscribers: AtomicUsize::new(0),
            dropped_total: AtomicU64::new(0),
            cursors: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the ring consistent (every
        // update is a push or pop), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id the next item gets.
    pub(super) fn next_id(&self) -> u64 {
        self.lock().next_id
    }

    /// Append the item `make` builds with the next id; return it. Evicted
    /// items are freed after the lock is released.
    pub(super) fn push(&self, make: impl FnOnce(u64) -> BrokerItem) -> Arc<BrokerItem> {
        // Usually one item is evicted per push: keep it out of a Vec (no
        // allocation per event).
        let mut evicted: Option<Arc<BrokerItem>> = None;
        let mut more: Vec<Arc<BrokerItem>> = Vec::new();
        let item = {
            let mut s = self.lock();
            let item = Arc::new(make(s.next_id));
            s.next_id += 1;
            s.bytes += item.cost();
            s.items.push_back(item.clone());
            // Keep at least the newest item, however large, or nobody could
            // ever read it.
            while s.items.len() > 1 && (s.items.len() > s.cap || s.bytes > s.cap_bytes) {
                if let Some(old) = s.items.pop_front() {
                    s.bytes -= old.cost();
                    match evicted {
                        None => evicted = Some(old),
                        Some(_) => more.push(old),
                    }
                }
            }
            item
        };
        drop((evicted, more));
        item
    }

    /// Wake the readers waiting for an append. The broker calls this once
    /// per batch of pushes (see `EventBroker::wake_readers`), not per item:
    /// a reader on another thread costs a cross-thread wake-up each time.
    pub(super) fn wake(&self) {
        // A reader counts itself before it looks at the ring under the lock,
        // so one that found nothing is seen here and woken.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }

    /// (items held, bytes held, lagged subscribers, dropped total).
    pub(super) fn stats(&self) -> (usize, usize, usize, u64) {
        let (len, bytes, oldest) = {
            let s = self.lock();
            (s.items.len(), s.bytes, s.oldest())
        };
        let lagged = self
            .cursors
            .lock()
            .map(|c| {
                c.values()
                    .filter(|p| p.load(Ordering::Relaxed) < oldest)
                    .count()
            })
            .unwrap_or(0);
        (
            len,
            bytes,
            lagged,
            self.dropped_total.load(Ordering::Relaxed),
        )
    }

    pub(super) fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Count a new subscriber unless `max` are already live.
    pub(super) fn admit(&self, max: usize) -> bool {
        self.subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A cursor at `next` (an admitted subscriber), after the `first` items.
    pub(super) fn subscribe(
        self: &Arc<Self>,
        sub_id: u64,
        next: u64,
        filter: Filter,
        label: String,
        first: Vec<Arc<BrokerItem>>,
    ) -> Subscription {
        let pos = Arc::new(AtomicU64::new(next));
        if let Ok(mut c) = self.cursors.lock() {
            c.insert(sub_id, pos.clone());
        }
        crate::metrics::sse_subscribers(&self.gateway, self.subscribers());
        Subscription {
            id: sub_id,
            ring: self.clone(),
            next,
            pos,
            filter,
            label,
            ready: first.into(),
        }
    }

    /// The oldest id held and the next id to be issued.
    pub(super) fn span(&self) -> (u64, u64) {
        let s = self.lock();
        (s.oldest(), s.next_id)
    }
}

/// One subscriber's cursor into the ring. Dropping it unsubscribes.
pub struct Subscription {
    pub id: u64,
    ring: Arc<Ring>,
    /// The next id this subscriber has not looked at.
    next: u64,
    /// `next`, published for the lagged count in stats.
    pos: Arc<AtomicU64>,
    filter: Filter,
    label: String,
    /// Items taken from the ring (or made for this subscriber: replay
    /// markers, gaps) and not yet handed out.
    ready: VecDeque<Arc<BrokerItem>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("next", &self.next)
            .finish()
    }
}

/// Why [`Subscription::try_recv`] gave nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing new yet.
    Empty,
    /// The broker closed (shutdown) and everything was read.
    Closed,
}

impl Subscription {
    /// Move what is new for this subscriber into `ready`: a `bridge.gap` if
    /// the ring moved past the cursor, then up to `max` matching items.
    /// Returns false when the ring is closed and nothing is left.
    fn fill(&mut self, max: usize) -> bool {
        let ring = self.ring.clone();
        let mut lost = None;
        {
            let s = ring.lock();
            let oldest = s.oldest();
            if self.next < oldest {
                lost = Some((self.next, oldest - 1));
                self.next = oldest;
            }
            let start = (self.next - oldest) as usize;
            let mut taken = 0;
            for item in s.items.iter().skip(start).take(SCAN) {
                self.next = item.id + 1;
                if self.filter.matches(item) {
                    self.ready.push_back(item.clone());
                    taken += 1;
                    if taken == max {
                        break;
                    }
                }
            }
            if self.ready.is_empty() && lost.is_none() && s.closed && self.next >= s.next_id {
                return false;
            }
        }
        self.pos.store(self.next, Ordering::Relaxed);
        if let Some((from, to)) = lost {
            let dropped = to - from + 1;
            ring.dropped_total.fetch_add(dropped, Ordering::Relaxed);
            crate::telemetry::emit::sse_lagged(&ring.gateway, &self.label, self.id, from, to);
            self.ready.push_front(Arc::new(gap_item(from, to, dropped)));
        }
        true
    }

    /// The next item, without waiting.
    pub fn try_recv(&mut self) -> Result<Arc<BrokerItem>, TryRecvError> {
        if self.ready.is_empty() && !self.fill(usize::MAX) {
            return Err(TryRecvError::Closed);
        }
        self.ready.pop_front().ok_or(TryRecvError::Empty)
    }

    /// The next item; `None` once the broker closed and all was read.
    pub async fn recv(&mut self) -> Option<Arc<BrokerItem>> {
        if self.wait_ready(64).await {
            self.ready.pop_front()
        } else {
            None
        }
    }

    /// Wait for at least one item, then append up to `max` to `out`.
    /// Returns false (and appends nothing) once the broker closed and all
    /// was read.
    pub async fn recv_many(&mut self, out: &mut Vec<Arc<BrokerItem>>, max: usize) -> bool {
        let max = max.max(1);
        if !self.wait_ready(max).await {
            return false;
        }
        let n = self.ready.len().min(max);
        out.extend(self.ready.drain(..n));
        true
    }

    /// Until `ready` holds something (taking up to `max` matching items from
    /// the ring at a time); false once the broker closed and all was read.
    async fn wait_ready(&mut self, max: usize) -> bool {
        while self.ready.is_empty() {
            // A busy reader finds items without registering for a wake-up.
            if !self.fill(max) {
                return false;
            }
            if !self.ready.is_empty() {
                break;
            }
            // Registered before looking again, so an append between the look
            // and the wait still wakes us.
            let ring = self.ring.clone();
            let notified = ring.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let _waiting = Waiting::new(&ring.waiting);
            if !self.fill(max) {
                return false;
            }
            if self.ready.is_empty() {
                notified.await;
            }
        }
        true
    }
}

/// Counts a reader in [`Ring::waiting`] while it lives (also when the wait
/// is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut c) = self.ring.cursors.lock() {
            c.remove(&self.id);
        }
        let left = self
            .ring
            .subscribers
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        crate::metrics::sse_subscribers(&self.ring.gateway, left);
    }
}

/// `bridge.gap`: ids `from..=to` are gone (`dropped` of them). Its id is
/// `to`, so a client resuming from it does not ask for them again.
pub(super) fn gap_item(from: u64, to: u64, dropped: u64) -> BrokerItem {
    BrokerItem::bridge(
        to,
        0,
        "bridge.gap",
        json!({"from": from, "to": to, "dropped": dropped}).to_string(),
    )
}
