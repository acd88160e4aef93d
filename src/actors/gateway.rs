//! `GatewayConnection`: one WebSocket session to the gateway.
//!
//! **Owns:** the socket (awc stream + `SinkWrite`) and its write queue, the
//! handshake state, a [`Correlator`] (pending requests by id and deadline: a
//! plain value with its own unit tests) and the one deadline timer, the outer
//! `seq` it expects next, and the time of the last inbound frame (watchdog).
//! Nothing is shared: correlation state lives in this actor's
//! mailbox-serialised state only.
//!
//! **Handles:** [`Forward`] (from `Supervisor`: a caller's request with the
//! caller's own responder; metered) and [`Send`] (from `Supervisor`: the
//! bridge's own requests — resyncs, `agent.wait`): writes a `req` with a
//! fresh uuid id and answers at the end of the read pass in which the `res`
//! with that id arrives (after that pass's events are handed over), in any
//! order, or with a typed error on timeout / disconnect / shutdown; [`Close`]
//! (from `Supervisor`): graceful close with 1000.
//!
//! **Sends:** [`ConnectionUp`] after hello-ok, [`SeqGap`] when the outer seq
//! jumps, [`HealthSeen`] with each `health` event's agent ids, and exactly one
//! [`ConnectionDown`] when it stops (to its owner, the `Supervisor`);
//! [`EventBatch`] with the events of each read pass (up to
//! [`FRAMES_PER_PASS`](crate::actors::messages::FRAMES_PER_PASS) frames) to the
//! broker and, for `agent` and `chat` events, to the registry: one message
//! per pass, not per event, handed over before the next pass and before
//! [`ConnectionDown`].
//!
//! **Lifecycle:** one value per socket. It never reconnects itself: when it
//! stops, every pending request fails at once and the owner decides what next.
//! A fresh actor means a fresh socket, handshake and empty pending map.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient,
    Running, SpawnHandle, WrapFuture,
};
use awc::ws::{CloseCode, CloseReason, Message as WsMessage};
use awc::BoxedSocket;
use bytes::BytesMut;
use futures_util::stream::{SplitSink, StreamExt};

use super::messages::{
    ConnectionDown, ConnectionUp, DisconnectCause, EventBatch, HealthSeen, RequestError, Send,
    SeqGap,
};
use crate::protocol::GatewayEvent;
use crate::telemetry::emit;

mod codec;
pub mod correlator;
mod frames;
mod handshake;
mod reader;
mod requests;
mod writer;

use codec::BoundedCodec;
pub use correlator::{Correlator, Reply, Responder};
use reader::ReadLoop;
pub use requests::Forward;
use writer::{Outbound, Queued, WriteLoop};

/// Added to the gateway's `policy.maxPayload` for the inbound frame cap
/// when `gateway.max_frame_bytes` is not set: the gateway bounds what it
/// *accepts* by maxPayload, and an answer carrying a base64 attachment of
/// `attachments.maxBytes` plus its envelope can come close to it.
pub const FRAME_HEADROOM_BYTES: usize = 8 * 1024 * 1024;
/// The gateway's documented `policy.maxPayload` (PROTOCOL.md §2), the bound
/// until hello-ok says otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 25 * 1024 * 1024;

/// How often pending entries of callers that went away are released.
const RELEASE_SWEEP: Duration = Duration::from_secs(1);

type WsSink = SplitSink<actix_codec::Framed<BoxedSocket, BoundedCodec>, WsMessage>;

pub use crate::identity::DeviceSigner;

/// What a connection needs to know, fixed for its lifetime. `Debug` leaves
/// the tokens out.
#[derive(Clone)]
pub struct ConnectionConfig {
    /// The gateway's configured id (logs, metrics).
    pub gateway: Arc<str>,
    pub url: String,
    pub token: Option<String>,
    pub device_token: Option<String>,
    pub client_id: String,
    pub client_mode: String,
    pub display_name: String,
    pub scopes: Vec<String>,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub device: Option<Arc<dyn DeviceSigner>>,
    /// For `wss://` (see `tls`); `None` for `ws://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `gateway.max_frame_bytes`; `None`: hello-ok's `maxPayload` plus
    /// [`FRAME_HEADROOM_BYTES`].
    pub max_frame_bytes: Option<usize>,
    /// `gateway.max_pending`: requests waiting to be written or answered.
    pub max_pending: usize,
    /// `gateway.max_pending_bytes`: request bytes queued, not yet written.
    pub max_pending_bytes: usize,
}

impl ConnectionConfig {
    /// The inbound frame cap for a gateway whose hello-ok said `max_payload`.
    pub fn frame_cap(&self, max_payload: usize) -> usize {
        self.max_frame_bytes
            .unwrap_or_else(|| max_payload.saturating_add(FRAME_HEADROOM_BYTES))
    }
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectionConfig")
            .field("gateway", &self.gateway)
            .field("url", &crate::config::redact_url(&self.url))
            .field("token", &redacted(&self.token))
            .field("device_token", &redacted(&self.device_token))
            .field("client_id", &self.client_id)
            .field("client_mode", &self.client_mode)
            .field("scopes", &self.scopes)
            .field("device", &self.device.is_some())
            .field("tls", &self.tls.is_some())
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_pending", &self.max_pending)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .finish_non_exhaustive()
    }
}

/// Where a connection reports and delivers.
#[derive(Clone)]
pub struct Wiring {
    pub up: Recipient<ConnectionUp>,
    pub down: Recipient<ConnectionDown>,
    pub gap: Recipient<SeqGap>,
    /// The agent ids of each `health` event (the supervisor's drift check).
    pub health: Recipient<HealthSeen>,
    /// Every event (the broker).
    pub events: Option<Recipient<EventBatch>>,
    /// `agent` and `chat` events (the registry).
    pub agent_events: Option<Recipient<EventBatch>>,
}

/// Close the session politely (1000) and stop; pending requests fail with
/// `ShuttingDown` when `shutting_down`, else `Disconnected`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close {
    pub shutting_down: bool,
}

/// A fragmented message in progress.
enum Partial {
    Reassembling {
        text: bool,
        buf: BytesMut,
    },
    /// Over the cap: the rest is dropped until its last fragment, read
    /// only for the request it answers (failed once known).
    Discarding(Discard),
}

/// A message over the cap, on its way through.
struct Discard {
    scan: codec::HeadScan,
    /// Its length as far as known (declared by the headers seen so far).
    size: u64,
    /// The message was counted, logged and its request failed.
    reported: bool,
    /// The frame being skipped is the message's last (FIN).
    fin: bool,
}

impl Discard {
    fn new(size: u64, fin: bool) -> Self {
        Discard {
            scan: codec::HeadScan::default(),
            size,
            reported: false,
            fin,
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// TCP + HTTP upgrade under way.
    Opening,
    AwaitChallenge,
    AwaitHello {
        connect_id: String,
    },
    Ready {
        since: Instant,
    },
    Closing,
}

pub struct GatewayConnection {
    /// Tags every report so the owner can ignore a previous connection's.
    generation: u64,
    cfg: Arc<ConnectionConfig>,
    wiring: Wiring,
    /// Frames waiting for the socket (see `writer`).
    out: Outbound,
    /// The inbound frame cap, shared with the codec (set at hello-ok).
    frame_cap: Arc<AtomicUsize>,
    phase: Phase,
    /// Pending requests (a plain value; see `correlator`).
    requests: Correlator,
    /// The one timer, armed for the earliest pending deadline.
    deadline_timer: Option<(Instant, SpawnHandle)>,
    pending_gauge: Option<metrics::Gauge>,
    /// Any inbound frame counts as liveness (PROTOCOL.md §4).
    last_rx: Instant,
    /// Next outer `seq` expected; `None` until the first numbered event.
    expected_seq: Option<u64>,
    /// A fragmented message being reassembled or skipped.
    partial: Option<Partial>,
    /// Set once; reported in `ConnectionDown`.
    cause: Option<DisconnectCause>,
    restart_expected_ms: Option<u64>,
    shutting_down: bool,
    handshake_timer: Option<SpawnHandle>,
    /// Messages over the frame cap (each one lost, its request failed).
    oversized_frames: u64,
    /// A `max_pending*` bound is being hit (logged on the change only).
    overloaded: bool,
    close_sent: bool,
    /// Cached per-event-name counters (no label hashing per event).
    event_counters: crate::metrics::EventCounters,
    /// The events of the current read pass, for the broker and (`agent`,
    /// `chat`) the registry: handed over at its end (see `reader`).
    to_broker: Vec<Arc<GatewayEvent>>,
    to_registry: Vec<Arc<GatewayEvent>>,
}

impl GatewayConnection {
    pub fn new(generation: u64, cfg: Arc<ConnectionConfig>, wiring: Wiring) -> Self {
        let cfg_frame_cap = cfg.frame_cap(DEFAULT_MAX_PAYLOAD);
        let gateway = cfg.gateway.clone();
        let mut request_metrics = crate::metrics::RequestMetrics::new(&gateway);
        let observer = Box::new(move |method: &str, elapsed: Duration, reply: &Reply| {
            let failure = reply
                .as_ref()
                .err()
                .map(|e| (e.code(), e as &dyn std::fmt::Display));
            crate::telemetry::emit::request_done(
                &mut request_metrics,
                &gateway,
                method,
                failure,
                elapsed,
            );
        });
        GatewayConnection {
            event_counters: crate::metrics::EventCounters::new(&cfg.gateway),
            generation,
            cfg,
            wiring,
            out: Outbound::default(),
            frame_cap: Arc::new(AtomicUsize::new(cfg_frame_cap)),
            phase: Phase::Opening,
            requests: Correlator::observed(observer),
            deadline_timer: None,
            pending_gauge: None,
            last_rx: Instant::now(),
            expected_seq: None,
            partial: None,
            cause: None,
            restart_expected_ms: None,
            shutting_down: false,
            handshake_timer: None,
            oversized_frames: 0,
            overloaded: false,
            close_sent: false,
            to_broker: Vec::new(),
            to_registry: Vec::new(),
        }
    }

    /// The end of a read pass: its events go to the broker and the
    /// registry, one message each (counted as undelivered when a mailbox is
    /// full), then its answers to their callers, so a caller that reads
    /// events after its answer finds the pass's events already handed over.
    fn end_pass(&mut self) {
        let gw = &self.cfg.gateway;
        let registry = self.wiring.agent_events.as_ref();
        hand_over(gw, "registry", &mut self.to_registry, registry);
        hand_over(
            gw,
            "broker",
            &mut self.to_broker,
            self.wiring.events.as_ref(),
        );
        self.requests.release();
    }

    /// Record why we are stopping (first cause wins) and stop.
    fn fail(&mut self, cause: DisconnectCause, ctx: &mut Context<Self>) {
        if self.cause.is_none() {
            self.cause = Some(cause);
        }
        ctx.stop();
    }

    /// Queue a frame that is not a request (control frames, `connect`).
    fn write(&mut self, msg: WsMessage) -> bool {
        if !self.out.open {
            return false;
        }
        self.out.push(Queued {
            msg,
            bytes: 0,
            request: None,
        });
        true
    }

    /// Send our close frame (once). The sink is not closed here: closing
    /// Framed drops bytes not yet flushed, the close frame among them; the
    /// socket closes when the actor stops and drops it.
    fn close_socket(&mut self) {
        if !self.close_sent {
            self.close_sent = true;
            self.write(WsMessage::Close(Some(CloseReason {
                code: CloseCode::Normal,
                description: None,
            })));
        }
    }
}

/// Send `events` (emptied) to `to` as one [`EventBatch`]; what a full
/// mailbox refuses is counted and logged (`gateway.event_undelivered`).
fn hand_over(
    gateway: &str,
    to: &'static str,
    events: &mut Vec<Arc<GatewayEvent>>,
    recipient: Option<&Recipient<EventBatch>>,
) {
    if events.is_empty() {
        return;
    }
    let events = std::mem::take(events);
    let n = events.len();
    if let Some(r) = recipient {
        if r.try_send(EventBatch(events)).is_err() {
            emit::event_undelivered(gateway, to, n);
        }
    }
}

impl Actor for GatewayConnection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        let cfg = self.cfg.clone();
        // No `max_http_version` here: in awc it replaces a custom TLS config
        // with the default one. Our TLS config pins ALPN to http/1.1.
        // The client timeout is a backstop; the "upgrade" handshake timer
        // below fires first, so a peer that accepts TCP and then says nothing
        // (a frozen gateway) is reported as `upgrade_timeout`.
        let builder =
            awc::Client::builder().timeout(cfg.handshake_timeout + Duration::from_secs(1));
        let client = match &cfg.tls {
            Some(tls) => builder
                .connector(awc::Connector::new().rustls_0_23(tls.clone()))
                .finish(),
            None => builder.finish(),
        };
        let fut = async move { client.ws(cfg.url.as_str()).connect().await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((_resp, framed)) => {
                let cap = act.frame_cap.clone();
                let framed = framed.into_map_codec(|c| BoundedCodec::new(c, cap.clone()));
                let (sink, stream) = framed.split();
                act.out.open = true;
                ctx.spawn(WriteLoop { sink });
                ctx.spawn(ReadLoop { stream });
                act.last_rx = Instant::now();
                act.phase = Phase::AwaitChallenge;
                act.arm_handshake_timer("challenge", ctx);
            }
            Err(e) => act.fail(
                DisconnectCause::ConnectFailed {
                    error: e.to_string(),
                },
                ctx,
            ),
        }));
        ctx.run_interval(RELEASE_SWEEP, |act, _| act.release_abandoned());
        // The upgrade itself is bounded by the client timeout; this covers a
        // peer that accepts TCP and then says nothing at all.
        self.arm_handshake_timer("upgrade", ctx);
    }

    fn stopping(&mut self, _ctx: &mut Context<Self>) -> Running {
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // What the last pass decoded reaches the broker before the link
        // change does, and its answers their callers before the pending
        // requests fail.
        self.end_pass();
        let cause = self.cause.take().unwrap_or(DisconnectCause::Lost);
        let err = if self.shutting_down {
            RequestError::ShuttingDown
        } else {
            RequestError::Disconnected {
                reason: cause.message(),
            }
        };
        let pending_failed = self.fail_pending(&err);
        let connected_for = match self.phase {
            Phase::Ready { since, .. } => Some(since.elapsed()),
            _ => None,
        };
        let _ = self.wiring.down.try_send(ConnectionDown {
            generation: self.generation,
            cause,
            restart_expected_ms: self.restart_expected_ms,
            connected_for,
            pending_failed,
        });
    }
}

impl Handler<Close> for GatewayConnection {
    type Result = ();

    fn handle(&mut self, msg: Close, ctx: &mut Context<Self>) {
        self.shutting_down = msg.shutting_down;
        if self.cause.is_none() {
            self.cause = Some(DisconnectCause::ClosedByUs);
        }
        let err = if msg.shutting_down {
            RequestError::ShuttingDown
        } else {
            RequestError::Disconnected {
                reason: "closed by the bridge".into(),
            }
        };
        self.fail_pending(&err);
        self.phase = Phase::Closing;
        if self.out.open {
            self.close_socket();
            // Wait briefly for the gateway's close echo, then stop regardless.
            ctx.run_later(Duration::from_millis(500), |_, ctx| ctx.stop());
        } else {
            ctx.stop();
        }
    }
}
