//! NATS JetStream: fan-out to many Control Center replicas (`[nats]`).
//!
//! **Owns:** one NATS client (the official `async-nats`, on a thread of its
//! own, an actix arbiter, so publishing never takes the gateway reader's
//! time), a bounded publish queue fed by [`NatsSink`] (an
//! [`EventSink`] on the `EventBroker`), and three tasks: the publisher, the
//! registry → KV mirror, and the RPC responder.
//!
//! **Subjects** (`P` = `nats.subject_prefix`, `G` = `nats.gateway_id`):
//! - `P.G.<event>[.<agentId>]`: every gateway event and bridge lifecycle item
//!   (`bridge.connected`, `bridge.disconnected`, `bridge.resync`). Dots in an
//!   event name stay subject levels (`gateway.suspension` →
//!   `P.G.gateway.suspension`); `*`, `>`, whitespace and empty levels become
//!   `_`. The agent id is one level: `.`, `*`, `>` and whitespace become `_`
//!   (the envelope carries the exact id). `P.G.agent.>` gets every agent
//!   event that names an agent; `P.G.>` gets everything.
//! - `P.rpc.G`: RPC request–reply, only with `nats.rpc = true` and only for
//!   the methods in `nats.rpc_methods`. Not under `P.G.>` on purpose: the stream
//!   captures `P.G.>`, and JetStream acknowledges every captured message that
//!   has a reply subject, which would answer the request before the bridge.
//!
//! **Envelope** (JSON): `{"gateway","epoch","seq","bridge_id","event",
//! "agent_id"?,"run_id"?,"payload"}`: `epoch` counts gateway sessions
//! (hello-ok) since the bridge started, `seq` is the gateway's outer seq (or
//! null), `bridge_id` the bridge's event id (SSE `id:`).
//!
//! **Resync markers** on `P.G.bridge.resync` (same envelope, `bridge_id`
//! null), `payload.reason`: `reconnect` (a new gateway session: state may have
//! changed unseen; re-read the KV bucket), `seq_gap` (`expected`, `got`), and
//! `events_lost` (`missed`: inclusive bridge id ranges, `count`): events that
//! did not reach JetStream (queue full while NATS was down or slow, or no
//! acknowledgement). Loss is never silent.
//!
//! **Two bridges per gateway:** every gateway event is published with a
//! `Nats-Msg-Id` that another bridge on the same gateway derives identically
//! (`dedupe`), so the stream's duplicate window (`nats.duplicate_window_s`)
//! stores it once; KV writes are revision-checked and ranked by gateway
//! event order (`kv`).
//!
//! **Never blocks the broker:** `NatsSink::offer` is a `try_send` into a
//! queue of `nats.buffer` items. While NATS is down the publisher holds
//! back and the queue absorbs the outage; when it is full further events are
//! counted (`openclaw_bridge_nats_dropped_total`), logged (`nats.dropped`,
//! at most every 5 s) and announced once NATS is back.
//!
//! # Layout
//! - this file: [`start`], the publisher loop and [`NatsHandle`];
//! - `acks`: publishes in flight and their acknowledgements (a plain type):
//!   each message asks for its ack on `<inbox>.<n>`, one subscription reads
//!   them all, [`PUBLISH_WINDOW`] in flight;
//! - `subjects`: subject names and KV keys (pure functions);
//! - `sink`: [`NatsSink`], the broker side, and the [`Lost`] id ranges;
//! - `envelope`: the JSON envelope and resync marker bodies;
//! - `dedupe`: the `Nats-Msg-Id` of an event (pure);
//! - `stream`: creating or extending the JetStream stream;
//! - `kv`: the registry → KV mirror;
//! - `rpc`: RPC over NATS request–reply.
//!
//! [`EventSink`]: crate::actors::broker::EventSink

mod acks;
mod dedupe;
mod envelope;
mod kv;
mod rpc;
mod sink;
mod stream;
mod subjects;
#[cfg(test)]
mod tests;

pub use dedupe::msg_id;
pub use kv::KV_EVERY;
pub use rpc::rpc_answer;
pub use sink::{Lost, NatsSink};
pub use subjects::{agent_key, event_levels, filter_covers_tree, kv_key, token, Subjects};

use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use async_nats::connection::State;
use async_nats::jetstream;
use futures_util::{FutureExt, StreamExt};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use crate::actors::{AgentRegistry, Supervisor};
use crate::config::NatsSettings;
use crate::telemetry::{emit, events as ev};

use acks::{outcome, reply_subject, token_of, AckWindow};
use envelope::Outgoing;
use envelope::{marker_body, Renderer};
use kv::kv_task;
use rpc::rpc_task;
use sink::Shared;
use stream::stream_ready;

/// Acks awaited at once by the publisher (pipelined publishing).
pub const PUBLISH_WINDOW: usize = 1024;
/// How long a JetStream acknowledgement may take before the event counts as lost.
const ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// Minimum interval between two `nats.dropped` / `nats.unavailable` lines.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Stops the NATS tasks (flushing what is queued, bounded).
#[derive(Clone)]
pub struct NatsHandle {
    stop: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
    /// The thread the NATS client and its tasks run on.
    arbiter: actix_rt::ArbiterHandle,
}

impl NatsHandle {
    /// Ask the tasks to stop and wait (at most `bound`) for the publisher to
    /// flush what is queued.
    pub async fn stop(&self, bound: Duration) {
        let _ = self.stop.send(true);
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(bound, done.wait_for(|d| *d)).await;
        self.arbiter.stop();
    }
}

/// Start the NATS side: returns the sink to add to the broker and a handle
/// for shutdown. The client connects (and reconnects) in the background; the
/// bridge never waits for NATS.
pub fn start(
    settings: &NatsSettings,
    gateway: &str,
    supervisor: Addr<Supervisor>,
    registry: Addr<AgentRegistry>,
) -> (NatsSink, NatsHandle) {
    let (tx, rx) = mpsc::channel(settings.buffer.max(1));
    let shared = Arc::new(Shared {
        lost: Mutex::new(Lost::default()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let gw: Arc<str> = Arc::from(gateway);
    crate::metrics::nats_state(&gw, false);
    let cfg = settings.clone();
    let task_gw = gw.clone();
    let task_shared = shared.clone();
    // Its own thread: JetStream publishing (rendering, acks, the client's
    // socket) must not share the gateway reader's thread, or every published
    // event costs ingest time.
    let arbiter = actix_rt::Arbiter::new();
    arbiter.spawn(async move {
        run(cfg, task_gw, rx, task_shared, supervisor, registry, stop_rx).await;
        let _ = done_tx.send(true);
    });
    (
        NatsSink::new(gw, tx, shared),
        NatsHandle {
            stop: Arc::new(stop_tx),
            done: done_rx,
            arbiter: arbiter.handle(),
        },
    )
}

async fn connect(cfg: &NatsSettings, gw: &Arc<str>) -> Result<async_nats::Client, String> {
    let cb_gw = gw.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("openclaw-bridge/{gw}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|n| {
            Duration::from_millis(100u64.saturating_mul(1 << n.min(5)).min(2000))
        })
        .event_callback(move |e| {
            let gw = cb_gw.clone();
            async move {
                match e {
                    async_nats::Event::Connected => emit::nats_connected(&gw),
                    async_nats::Event::Disconnected => emit::nats_disconnected(&gw),
                    other => tracing::debug!(gateway = %gw, event = "nats.event", "NATS: {other}"),
                }
            }
        });
    if let Some(t) = &cfg.token {
        opts = opts.token(t.expose().to_owned());
    }
    if let Some((u, p)) = &cfg.user {
        opts = opts.user_and_password(u.clone(), p.expose().to_owned());
    }
    if let Some(f) = &cfg.credentials_file {
        opts = opts
            .credentials_file(f)
            .await
            .map_err(|e| format!("cannot use nats.credentials_file {}: {e}", f.display()))?;
    }
    opts.connect(cfg.url.as_str()).await.map_err(|e| {
        format!(
            "cannot connect to NATS at {}: {e}",
            crate::config::redact_url(&cfg.url)
        )
    })
}

async fn run(
    cfg: NatsSettings,
    gw: Arc<str>,
    mut rx: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
    supervisor: Addr<Supervisor>,
    registry: Addr<AgentRegistry>,
    mut stop: watch::Receiver<bool>,
) {
    let subjects = Subjects::new(&cfg.subject_prefix, &gw);
    let mut renderer = Renderer::new(subjects.clone());
    let started = async {
        let client = connect(&cfg, &gw).await?;
        let pubs = Acked::new(client.clone(), gw.clone(), shared.clone()).await?;
        Ok::<_, String>((client, pubs))
    };
    let (client, mut pubs) = match started.await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                gateway = %gw,
                event = ev::NATS_UNAVAILABLE,
                "{e}; NATS publishing is off (SSE keeps working)"
            );
            return;
        }
    };
    let mut js = jetstream::new(client.clone());
    js.set_timeout(ACK_TIMEOUT);
    // Looked up once: a lookup builds and hashes the label set.
    let queued = crate::metrics::nats_queue_gauge(&gw);
    if cfg.rpc {
        actix_rt::spawn(rpc_task(
            client.clone(),
            subjects.rpc(),
            gw.to_string(),
            Arc::new(cfg.rpc_methods.clone()),
            supervisor,
            stop.clone(),
        ));
    }
    actix_rt::spawn(kv_task(
        client.clone(),
        js.clone(),
        cfg.clone(),
        gw.clone(),
        registry,
        stop.clone(),
    ));

    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = false; // stream ensured on the current connection
    let mut epoch = 0u64;
    let mut last_unavailable_log: Option<Instant> = None;
    let mut last_stream_log: Option<Instant> = None;
    let mut stopping = false;
    loop {
        let connected = client.connection_state() == State::Connected;
        if !connected {
            ready = false;
        } else if !ready {
            ready = stream_ready(&js, &gw, &cfg, &subjects, &mut last_stream_log).await;
        }
        if connected && ready {
            announce_loss(&js, &gw, &subjects, &shared, &pubs.published, epoch).await;
        }
        queued.set(rx.len() as f64);
        if stopping && rx.is_empty() {
            break;
        }
        let next = if pubs.window.is_empty() {
            tokio::select! {
                o = rx.recv() => match o {
                    Some(o) => Some(o),
                    None => break,
                },
                _ = tick.tick() => None,
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    None
                }
            }
        } else {
            if !pubs.settle() {
                ready = false;
            }
            match rx.try_recv() {
                Ok(o) => Some(o),
                Err(mpsc::error::TryRecvError::Empty) => {
                    if !pubs.wait().await {
                        ready = false;
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        };
        let Some(out) = next else { continue };
        let (Outgoing::Event { epoch: e, .. } | Outgoing::Marker { epoch: e, .. }) = &out;
        epoch = *e;
        // Hold the item until NATS is back; the queue absorbs the outage.
        let mut waited = false;
        while client.connection_state() != State::Connected || !ready {
            if stopping || *stop.borrow() {
                stopping = true;
                break;
            }
            if last_unavailable_log.is_none_or(|t| t.elapsed() >= LOG_EVERY * 2) {
                tracing::warn!(
                    gateway = %gw,
                    event = ev::NATS_UNAVAILABLE,
                    queued = rx.len() + 1,
                    "NATS is unavailable; holding events in the bounded queue (SSE keeps working)"
                );
                last_unavailable_log = Some(Instant::now());
            }
            waited = true;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => {}
            }
            if client.connection_state() == State::Connected && !ready {
                ready = stream_ready(&js, &gw, &cfg, &subjects, &mut last_stream_log).await;
            }
        }
        if stopping && client.connection_state() != State::Connected {
            // Shutting down without NATS: what is left is lost (and logged).
            if let Outgoing::Event { item, .. } = &out {
                shared.lose(item.id);
            }
            while let Ok(o) = rx.try_recv() {
                if let Outgoing::Event { item, .. } = o {
                    shared.lose(item.id);
                }
            }
            break;
        }
        if waited {
            announce_loss(&js, &gw, &subjects, &shared, &pubs.published, epoch).await;
        }
        let (subject, id, body) = renderer.render(&out);
        if !pubs
            .publish(subject, id, event_msg_id(&gw, &out), body)
            .await
        {
            ready = false;
        }
        // A full window waits for its oldest publish to settle (answered, or
        // failed at its deadline): answers to newer ones do not make room,
        // so the window never holds more than PUBLISH_WINDOW.
        while pubs.window.len() >= PUBLISH_WINDOW {
            if !pubs.wait().await {
                ready = false;
            }
        }
    }
    // Every publish in flight is answered or times out (bounded).
    while !pubs.window.is_empty() {
        pubs.wait().await;
    }
    if client.connection_state() == State::Connected {
        announce_loss(&js, &gw, &subjects, &shared, &pubs.published, epoch).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
    }
    let left = shared.take();
    if !left.is_empty() {
        tracing::warn!(gateway = %gw, event = ev::NATS_DROPPED, dropped = left.count, missed = ?left.ranges, "stopping with events that did not reach NATS");
    }
}

/// Publishing with one JetStream acknowledgement per message, every
/// acknowledgement read from one subscription (see `acks`).
struct Acked {
    client: async_nats::Client,
    /// `<inbox>`: publish `t` asks for its ack on `<inbox>.<t>`.
    inbox: String,
    acks: async_nats::Subscriber,
    window: AckWindow,
    gw: Arc<str>,
    shared: Arc<Shared>,
    /// Looked up once: a lookup builds and hashes the label set.
    published: metrics::Counter,
    /// The deadline timer of [`wait`](Self::wait), and whether it is armed.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl Acked {
    async fn new(
        client: async_nats::Client,
        gw: Arc<str>,
        shared: Arc<Shared>,
    ) -> Result<Acked, String> {
        let inbox = client.new_inbox();
        // Kept across reconnects (async-nats subscribes again).
        let acks = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| format!("cannot subscribe to the JetStream ack inbox: {e}"))?;
        Ok(Acked {
            published: crate::metrics::nats_published_counter(&gw),
            client,
            inbox,
            acks,
            window: AckWindow::new(),
            gw,
            shared,
            timer: Box::pin(tokio::time::sleep(ACK_TIMEOUT)),
            armed: false,
        })
    }

    /// Publish one message; false when the client refused it (its event
    /// counts as lost when it settles).
    async fn publish(
        &mut self,
        subject: async_nats::Subject,
        id: Option<u64>,
        msg_id: Option<String>,
        body: bytes::Bytes,
    ) -> bool {
        // The token is taken before the send and stays taken: a message the
        // client sends after all cannot have its ack read as the next one's.
        let token = self.window.push(id, Instant::now());
        let reply = async_nats::Subject::from(reply_subject(&self.inbox, token));
        let send = async {
            match msg_id {
                Some(m) => {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, m.as_str());
                    self.client
                        .publish_with_reply_and_headers(subject, reply, headers, body)
                        .await
                }
                None => self.client.publish_with_reply(subject, reply, body).await,
            }
        };
        // Bounded: the client's command queue stops draining while it
        // reconnects, and a full one would hold this loop (and `stop`).
        let failed = match tokio::time::timeout(ACK_TIMEOUT, send).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("the NATS client took no message for {ACK_TIMEOUT:?}"),
        };
        // Counted as lost when it settles, in publish order, like any failure.
        self.window.answer(token, acks::Outcome::Failed(failed));
        false
    }

    fn record(&mut self, m: &async_nats::Message) {
        if let Some(token) = token_of(&m.subject) {
            let no_responders = m.status == Some(async_nats::StatusCode::NO_RESPONDERS);
            self.window
                .answer(token, outcome(no_responders, &m.payload));
        }
    }

    /// Record the acknowledgements already received, without waiting.
    fn take_answers(&mut self) {
        while let Some(Some(m)) = self.acks.next().now_or_never() {
            self.record(&m);
        }
    }

    /// Count what is settled, in publish order; false when JetStream refused
    /// a message or never answered (the stream may be gone or no longer
    /// capture our subjects).
    fn settle(&mut self) -> bool {
        // Answers already received first: one that came in while the loop
        // was busy elsewhere must not count as late.
        self.take_answers();
        let now = Instant::now();
        let mut ok = true;
        while let Some((id, out)) = self.window.pop(now, ACK_TIMEOUT) {
            match out {
                acks::Outcome::Stored => self.published.increment(1),
                acks::Outcome::Failed(why) => {
                    lose(&self.gw, &self.shared, id, &why);
                    ok = false;
                }
            }
        }
        ok
    }

    /// Wait for the next acknowledgement, at most until the oldest publish's
    /// deadline, then [`settle`](Self::settle).
    ///
    /// One timer, armed for the deadline of the publish that was oldest when
    /// it was armed: deadlines only grow (publishes settle in order), so it
    /// fires on time or early, never late, and is re-armed only after it
    /// fired, not for every message.
    async fn wait(&mut self) -> bool {
        if let Some(deadline) = self.window.deadline(ACK_TIMEOUT) {
            if !self.armed {
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(deadline));
                self.armed = true;
            }
            tokio::select! {
                m = self.acks.next() => match m {
                    Some(m) => self.record(&m),
                    // The client is gone: only the deadline is left.
                    None => {
                        self.timer.as_mut().await;
                        self.armed = false;
                    }
                },
                _ = self.timer.as_mut() => self.armed = false,
            }
        }
        self.settle()
    }
}

/// The `Nats-Msg-Id` of an outgoing gateway event (see `dedupe`); markers
/// have none (they describe this bridge's own queue).
fn event_msg_id(gateway: &str, out: &Outgoing) -> Option<String> {
    match out {
        Outgoing::Event { item, .. } => {
            use crate::protocol::EventKind;
            // agent / chat (the bulk): the fields decoded with the frame.
            let typed = item.event().and_then(|e| match &e.kind {
                EventKind::Agent(a) => Some((a.run_id.as_str(), a.stream.as_str(), a.payload_seq)),
                EventKind::Chat(c) => c
                    .run_id
                    .as_ref()
                    .map(|r| (r.as_str(), c.state.as_deref().unwrap_or(""), c.payload_seq)),
                _ => None,
            });
            match typed {
                Some((run, part, Some(seq))) => {
                    Some(dedupe::run_key(gateway, item.name(), run, part, seq))
                }
                _ => dedupe::msg_id(gateway, item.name(), item.payload()),
            }
        }
        Outgoing::Marker { .. } => None,
    }
}

/// JetStream did not store event `id` (a marker has no id: nothing lost).
fn lose(gw: &str, shared: &Shared, id: Option<u64>, error: &dyn std::fmt::Display) {
    if let Some(id) = id {
        shared.lose(id);
        emit::nats_publish_failed(gw, Some(id), error);
    }
}

/// Publish an `events_lost` marker for what was lost, if anything; on failure
/// the loss is kept for the next attempt.
async fn announce_loss(
    js: &jetstream::Context,
    gw: &str,
    subjects: &Subjects,
    shared: &Shared,
    published: &metrics::Counter,
    epoch: u64,
) {
    let lost = shared.take();
    if lost.is_empty() {
        return;
    }
    let payload = json!({"reason": "events_lost", "missed": lost.ranges, "count": lost.count});
    let body = marker_body(subjects, epoch, &payload);
    let ok = match js.publish(subjects.resync(), body).await {
        Ok(ack) => matches!(
            tokio::time::timeout(ACK_TIMEOUT + Duration::from_secs(1), ack.into_future()).await,
            Ok(Ok(_))
        ),
        Err(_) => false,
    };
    if ok {
        published.increment(1);
        tracing::warn!(gateway = gw, event = ev::NATS_RESYNC, reason = "events_lost", dropped = lost.count, missed = ?lost.ranges, "announced events that did not reach NATS (bridge.resync marker)");
    } else {
        shared.put_back(lost);
    }
}
