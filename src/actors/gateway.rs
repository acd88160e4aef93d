//! `GatewayConnection`: one WebSocket session to the gateway.
//!
//! **Owns:** the socket (awc stream + `SinkWrite`), the handshake state, the
//! map of pending request ids, the outer `seq` it expects next, and the time of
//! the last inbound frame (watchdog). Nothing is shared: correlation state lives
//! in this actor's mailbox-serialised state only.
//!
//! **Handles:** [`Send`] (from `Supervisor`): writes a `req` with a fresh uuid
//! id and answers when the `res` with that id arrives, in any order, or with a
//! typed error on timeout / disconnect / shutdown; [`Close`] (from `Supervisor`):
//! graceful close with 1000.
//!
//! **Sends:** [`ConnectionUp`] after hello-ok, [`SeqGap`] when the outer seq
//! jumps, and exactly one [`ConnectionDown`] when it stops (to its owner);
//! [`EventMsg`] for every event to the broker and, for the events the registry
//! tracks, to the registry.
//!
//! **Lifecycle:** one value per socket. It never reconnects itself: when it
//! stops, every pending request fails at once and the owner decides what next.
//! A fresh actor means a fresh socket, handshake and empty pending map.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::io::{SinkWrite, WriteHandler};
use actix::prelude::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, Context, Handler, Message, Recipient,
    ResponseFuture, Running, SpawnHandle, StreamHandler, WrapFuture,
};
use actix_http::ws::Item;
use awc::ws::{CloseCode, CloseReason, Codec, Frame, Message as WsMessage};
use awc::BoxedSocket;
use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::messages::{
    ConnectionDown, ConnectionUp, DisconnectCause, EventMsg, RequestError, Send, SeqGap,
};
use crate::protocol::{
    self, Challenge, ClientInfo, ConnectAuth, ConnectParams, DeviceProof, EventKind, GatewayError,
    GatewayEvent, HelloOk, Inbound, ResponseFrame, PROTOCOL_VERSION,
};
use crate::telemetry::events as ev;

/// The largest WebSocket message accepted from the gateway. The gateway may
/// send frames up to its `policy.maxPayload` (25 MiB); this leaves headroom
/// for the envelope while bounding memory per connection.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Ids of requests answered early (an `agent` `accepted`) or timed out are
/// remembered so their late answers are dropped quietly; bounded.
const FINISHED_IDS_KEPT: usize = 4096;

type WsSink = SplitSink<actix_codec::Framed<BoxedSocket, Codec>, WsMessage>;

/// Signs the challenge for a device identity (see `identity`).
pub trait DeviceSigner: std::fmt::Debug + std::marker::Send + Sync {
    fn sign(&self, params: &ConnectParams, nonce: &str, signed_at: u64) -> DeviceProof;
}

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
}

impl std::fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |t: &Option<String>| t.as_ref().map(|_| "<redacted>");
        f.debug_struct("ConnectionConfig")
            .field("gateway", &self.gateway)
            .field("url", &self.url)
            .field("token", &redacted(&self.token))
            .field("device_token", &redacted(&self.device_token))
            .field("client_id", &self.client_id)
            .field("client_mode", &self.client_mode)
            .field("scopes", &self.scopes)
            .field("device", &self.device.is_some())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Where a connection reports and delivers.
#[derive(Clone)]
pub struct Wiring {
    pub up: Recipient<ConnectionUp>,
    pub down: Recipient<ConnectionDown>,
    pub gap: Recipient<SeqGap>,
    /// Every event (the broker).
    pub events: Option<Recipient<EventMsg>>,
    /// `agent`, `chat`, `health` events (the registry).
    pub agent_events: Option<Recipient<EventMsg>>,
}

/// Close the session politely (1000) and stop; pending requests fail with
/// `ShuttingDown` when `shutting_down`, else `Disconnected`.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Close {
    pub shutting_down: bool,
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

struct Pending {
    tx: oneshot::Sender<Result<Box<RawValue>, RequestError>>,
    /// Only `agent` answers twice; only its payload is inspected.
    is_agent: bool,
    expect_final: bool,
    /// An `accepted` answer came; the final one is awaited.
    accepted_seen: bool,
    /// Key of this request in `GatewayConnection::deadlines`.
    deadline: (Instant, u64),
    timeout_ms: u64,
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

pub struct GatewayConnection {
    /// Tags every report so the owner can ignore a previous connection's.
    generation: u64,
    cfg: Arc<ConnectionConfig>,
    wiring: Wiring,
    sink: Option<SinkWrite<WsMessage, WsSink>>,
    phase: Phase,
    pending: HashMap<String, Pending>,
    /// Pending ids by deadline; one timer, armed for the earliest, serves
    /// them all (a timer per request costs more than the request).
    deadlines: BTreeMap<(Instant, u64), String>,
    deadline_timer: Option<(Instant, SpawnHandle)>,
    next_deadline_seq: u64,
    pending_gauge: Option<metrics::Gauge>,
    finished: FinishedIds,
    /// Any inbound frame counts as liveness (PROTOCOL.md §4).
    last_rx: Instant,
    /// Next outer `seq` expected; `None` until the first numbered event.
    expected_seq: Option<u64>,
    /// A fragmented message being reassembled (text?, bytes so far).
    partial: Option<(bool, BytesMut)>,
    /// Set once; reported in `ConnectionDown`.
    cause: Option<DisconnectCause>,
    restart_expected_ms: Option<u64>,
    shutting_down: bool,
    handshake_timer: Option<SpawnHandle>,
    /// Frames the codec refused as too large (each one a lost message).
    oversized_frames: u64,
    close_sent: bool,
    /// Cached per-event-name counters (no label hashing per event).
    event_counters: crate::metrics::EventCounters,
}

impl GatewayConnection {
    pub fn new(generation: u64, cfg: Arc<ConnectionConfig>, wiring: Wiring) -> Self {
        GatewayConnection {
            event_counters: crate::metrics::EventCounters::new(&cfg.gateway),
            generation,
            cfg,
            wiring,
            sink: None,
            phase: Phase::Opening,
            pending: HashMap::new(),
            deadlines: BTreeMap::new(),
            deadline_timer: None,
            next_deadline_seq: 0,
            pending_gauge: None,
            finished: FinishedIds::default(),
            last_rx: Instant::now(),
            expected_seq: None,
            partial: None,
            cause: None,
            restart_expected_ms: None,
            shutting_down: false,
            handshake_timer: None,
            oversized_frames: 0,
            close_sent: false,
        }
    }

    /// Record why we are stopping (first cause wins) and stop.
    fn fail(&mut self, cause: DisconnectCause, ctx: &mut Context<Self>) {
        if self.cause.is_none() {
            self.cause = Some(cause);
        }
        ctx.stop();
    }

    fn write(&mut self, msg: WsMessage) -> bool {
        match self.sink.as_mut() {
            Some(sink) => sink.write(msg).is_ok(),
            None => false,
        }
    }

    fn arm_handshake_timer(&mut self, stage: &'static str, ctx: &mut Context<Self>) {
        if let Some(h) = self.handshake_timer.take() {
            ctx.cancel_future(h);
        }
        let h = ctx.run_later(self.cfg.handshake_timeout, move |act, ctx| {
            act.fail(DisconnectCause::HandshakeTimeout { stage }, ctx);
        });
        self.handshake_timer = Some(h);
    }

    fn on_text(&mut self, bytes: Bytes, ctx: &mut Context<Self>) {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            bad_frame(&self.cfg.gateway, "text frame is not UTF-8", bytes.len());
            return;
        };
        match protocol::decode(text) {
            Ok(Inbound::Event(frame)) => self.on_event(frame, ctx),
            Ok(Inbound::Response(res)) => self.on_response(res, ctx),
            Ok(Inbound::Unknown { kind }) => {
                tracing::debug!(gateway = %self.cfg.gateway, event = ev::GATEWAY_BAD_FRAME, kind = %kind, "frame of unknown type ignored");
            }
            Err(e) => bad_frame(&self.cfg.gateway, &e.to_string(), bytes.len()),
        }
    }

    fn on_event(&mut self, frame: protocol::EventFrame<'_>, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::Ready { .. } => {}
            Phase::AwaitChallenge if frame.event == "connect.challenge" => {
                let challenge = frame
                    .payload
                    .and_then(|p| serde_json::from_str::<Challenge>(p.get()).ok());
                match challenge {
                    Some(c) => self.send_connect(c, ctx),
                    None => {
                        bad_frame(&self.cfg.gateway, "connect.challenge without a nonce", 0);
                        // Most likely a transient fault: back off, do not park.
                        self.fail(
                            DisconnectCause::ProtocolError {
                                error: "connect.challenge carried no nonce".into(),
                            },
                            ctx,
                        );
                    }
                }
                return;
            }
            _ => {
                tracing::debug!(gateway = %self.cfg.gateway, event_name = %frame.event, "event before hello-ok ignored");
                return;
            }
        }
        if let Some(seq) = frame.seq {
            if let Some(expected) = self.expected_seq {
                if seq > expected {
                    crate::metrics::seq_gap(&self.cfg.gateway);
                    tracing::warn!(gateway = %self.cfg.gateway,
                        event = ev::GATEWAY_SEQ_GAP,
                        expected,
                        got = seq,
                        "events were missed; resyncing the registry"
                    );
                    let _ = self.wiring.gap.try_send(SeqGap {
                        generation: self.generation,
                        expected,
                        got: seq,
                    });
                }
            }
            // Never rewind: a late (lower) seq must not fake a gap next time.
            let next = seq.saturating_add(1);
            self.expected_seq = Some(self.expected_seq.map_or(next, |e| e.max(next)));
        }
        self.event_counters.count(&frame.event);
        let (event, warning) = GatewayEvent::from_frame(&frame);
        if let Some(w) = warning {
            tracing::debug!(gateway = %self.cfg.gateway, event = ev::GATEWAY_BAD_FRAME, "{w}");
        }
        if let EventKind::Shutdown(s) = &event.kind {
            tracing::info!(gateway = %self.cfg.gateway,
                reason = s.reason.as_deref().unwrap_or(""),
                restart_expected_ms = s.restart_expected_ms,
                "gateway announced shutdown"
            );
            self.restart_expected_ms = s.restart_expected_ms;
        }
        let for_registry = matches!(
            event.kind,
            EventKind::Agent(_) | EventKind::Chat(_) | EventKind::Health(_)
        );
        let event = Arc::new(event);
        if for_registry {
            if let Some(r) = &self.wiring.agent_events {
                if r.try_send(EventMsg(event.clone())).is_err() {
                    crate::metrics::undelivered(&self.cfg.gateway, "registry");
                    tracing::warn!(gateway = %self.cfg.gateway,
                        event = ev::EVENT_UNDELIVERED,
                        to = "registry",
                        "registry mailbox full: event not applied"
                    );
                }
            }
        }
        if let Some(b) = &self.wiring.events {
            if b.try_send(EventMsg(event)).is_err() {
                crate::metrics::undelivered(&self.cfg.gateway, "broker");
                tracing::warn!(gateway = %self.cfg.gateway,
                    event = ev::EVENT_UNDELIVERED,
                    to = "broker",
                    "broker mailbox full: event dropped"
                );
            }
        }
    }

    fn send_connect(&mut self, challenge: Challenge, ctx: &mut Context<Self>) {
        let cfg = &self.cfg;
        let mut params = ConnectParams {
            min_protocol: PROTOCOL_VERSION,
            max_protocol: PROTOCOL_VERSION,
            client: ClientInfo {
                id: cfg.client_id.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                platform: std::env::consts::OS.into(),
                mode: cfg.client_mode.clone(),
                display_name: Some(cfg.display_name.clone()),
                device_family: None,
            },
            role: "operator".into(),
            scopes: cfg.scopes.clone(),
            // A device token, once issued, is sent alone: it becomes the signed
            // token and authenticates as `device-token` (PROTOCOL.md §3.4), which
            // survives a shared-token change and a shared-token lockout. If the
            // gateway refuses it, the supervisor drops it and the shared token
            // is used again.
            auth: match &cfg.device_token {
                Some(dt) => ConnectAuth {
                    token: None,
                    device_token: Some(dt.clone()),
                },
                None => ConnectAuth {
                    token: cfg.token.clone(),
                    device_token: None,
                },
            },
            device: None,
        };
        if let Some(signer) = &cfg.device {
            let signed_at = challenge.ts.unwrap_or_else(now_ms);
            params.device = Some(signer.sign(&params, &challenge.nonce, signed_at));
        }
        let connect_id = format!("connect-{}", uuid::Uuid::new_v4());
        let text = match protocol::encode_request(&connect_id, "connect", Some(&params)) {
            Ok(t) => t,
            Err(e) => {
                self.fail(
                    DisconnectCause::ProtocolError {
                        error: e.to_string(),
                    },
                    ctx,
                );
                return;
            }
        };
        if !self.write(WsMessage::Text(text.into())) {
            self.fail(DisconnectCause::Lost, ctx);
            return;
        }
        self.phase = Phase::AwaitHello { connect_id };
        self.arm_handshake_timer("hello", ctx);
    }

    fn on_response(&mut self, res: ResponseFrame<'_>, ctx: &mut Context<Self>) {
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

    fn on_hello(&mut self, res: ResponseFrame<'_>, ctx: &mut Context<Self>) {
        if let Some(h) = self.handshake_timer.take() {
            ctx.cancel_future(h);
        }
        if !res.ok {
            let error = res.error.unwrap_or_else(|| {
                GatewayError::local("UNKNOWN", "connect refused without an error object")
            });
            // The gateway closes after a refusal; we close first, politely.
            self.close_socket();
            self.fail(DisconnectCause::Rejected { error }, ctx);
            return;
        }
        let hello = match HelloOk::parse(res.payload.map_or("null", RawValue::get)) {
            Ok(h) => h,
            Err(error) => {
                self.close_socket();
                self.fail(DisconnectCause::BadHello { error }, ctx);
                return;
            }
        };
        let missing = hello.missing_scopes(&self.cfg.scopes);
        if !missing.is_empty() {
            self.close_socket();
            self.fail(
                DisconnectCause::ScopesMissing {
                    missing,
                    granted: hello.scopes.clone(),
                },
                ctx,
            );
            return;
        }
        let tick = Duration::from_millis(hello.policy.tick_interval_ms.max(1));
        self.phase = Phase::Ready {
            since: Instant::now(),
        };
        self.expected_seq = None;
        self.start_watchdog(tick, ctx);
        let _ = self.wiring.up.try_send(ConnectionUp {
            generation: self.generation,
            hello,
        });
    }

    fn start_watchdog(&mut self, tick: Duration, ctx: &mut Context<Self>) {
        let limit = tick * 2;
        let every = (tick / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
        ctx.run_interval(every, move |act, ctx| {
            let silent = act.last_rx.elapsed();
            if silent > limit {
                let silent_ms = silent.as_millis() as u64;
                tracing::warn!(gateway = %act.cfg.gateway,
                    event = ev::GATEWAY_WATCHDOG_EXPIRED,
                    silent_ms,
                    limit_ms = limit.as_millis() as u64,
                    "no traffic from the gateway; reconnecting"
                );
                act.close_socket();
                act.fail(DisconnectCause::WatchdogExpired { silent_ms }, ctx);
            }
        });
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

    fn on_fragment(&mut self, item: Item, ctx: &mut Context<Self>) {
        let (first, text, chunk, last) = match item {
            Item::FirstText(b) => (true, true, b, false),
            Item::FirstBinary(b) => (true, false, b, false),
            Item::Continue(b) => (false, false, b, false),
            Item::Last(b) => (false, false, b, true),
        };
        if first {
            let mut buf = BytesMut::with_capacity(chunk.len() * 2);
            buf.extend_from_slice(&chunk);
            self.partial = Some((text, buf));
        } else {
            let Some((_, buf)) = self.partial.as_mut() else {
                bad_frame(
                    &self.cfg.gateway,
                    "continuation frame without a first frame",
                    chunk.len(),
                );
                return;
            };
            if buf.len() + chunk.len() > MAX_MESSAGE_BYTES {
                let size = buf.len() + chunk.len();
                self.partial = None;
                tracing::error!(gateway = %self.cfg.gateway,
                    event = ev::GATEWAY_BAD_FRAME,
                    size,
                    limit = MAX_MESSAGE_BYTES,
                    "fragmented message over the size limit; reconnecting"
                );
                self.close_socket();
                self.fail(
                    DisconnectCause::ProtocolError {
                        error: format!("message of more than {MAX_MESSAGE_BYTES} bytes"),
                    },
                    ctx,
                );
                return;
            }
            buf.extend_from_slice(&chunk);
        }
        if last {
            if let Some((is_text, buf)) = self.partial.take() {
                if is_text {
                    self.on_text(buf.freeze(), ctx);
                } else {
                    bad_frame(&self.cfg.gateway, "binary message ignored", buf.len());
                }
            }
        }
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
                let _ = p.tx.send(Err(RequestError::Timeout {
                    after_ms: p.timeout_ms,
                }));
            }
        }
        if expired {
            self.report_pending();
        }
        self.arm_deadline_timer(ctx);
    }

    fn fail_pending(&mut self, err: &RequestError) -> usize {
        self.deadlines.clear();
        let n = self.pending.len();
        for (_, p) in self.pending.drain() {
            let _ = p.tx.send(Err(err.clone()));
        }
        n
    }
}

fn bad_frame(gateway: &str, problem: &str, size: usize) {
    crate::metrics::bad_frame(gateway, "undecodable");
    tracing::warn!(
        gateway,
        event = ev::GATEWAY_BAD_FRAME,
        size,
        problem,
        "frame from the gateway dropped"
    );
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

use crate::now_ms;

/// The final answer of a failed run: its payload object, with the gateway's
/// error object added as `error` when the payload has none.
fn run_outcome(payload: &RawValue, error: Option<&GatewayError>) -> Option<Box<RawValue>> {
    let mut obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(payload.get()).ok()?;
    if let Some(e) = error {
        obj.entry("error").or_insert_with(|| e.to_value());
    }
    serde_json::value::to_raw_value(&obj).ok()
}

/// Is this `agent` answer the first, `accepted` one?
fn is_accepted(payload: &RawValue) -> bool {
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
        let fut = async move {
            client
                .ws(cfg.url.as_str())
                .max_frame_size(MAX_MESSAGE_BYTES)
                .connect()
                .await
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((_resp, framed)) => {
                let (sink, stream) = framed.split();
                act.sink = Some(SinkWrite::new(sink, ctx));
                ctx.add_stream(stream);
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
        // The upgrade itself is bounded by the client timeout; this covers a
        // peer that accepts TCP and then says nothing at all.
        self.arm_handshake_timer("upgrade", ctx);
    }

    fn stopping(&mut self, _ctx: &mut Context<Self>) -> Running {
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
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

impl StreamHandler<Result<Frame, awc::error::WsProtocolError>> for GatewayConnection {
    fn handle(
        &mut self,
        item: Result<Frame, awc::error::WsProtocolError>,
        ctx: &mut Context<Self>,
    ) {
        self.last_rx = Instant::now();
        match item {
            Ok(Frame::Text(bytes)) => self.on_text(bytes, ctx),
            Ok(Frame::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(Frame::Ping(p)) => {
                self.write(WsMessage::Pong(p));
            }
            Ok(Frame::Pong(_)) => {}
            Ok(Frame::Binary(b)) => bad_frame(&self.cfg.gateway, "binary frame ignored", b.len()),
            Ok(Frame::Close(reason)) => {
                let (code, reason) = match reason {
                    Some(r) => (u16::from(r.code), r.description.unwrap_or_default()),
                    None => (1005, String::new()),
                };
                self.close_socket();
                self.fail(DisconnectCause::Closed { code, reason }, ctx);
            }
            Err(awc::error::WsProtocolError::Overflow) => {
                // The codec skips the whole oversized frame and goes on: the
                // event is lost, so say so loudly, but keep the session.
                self.oversized_frames += 1;
                crate::metrics::bad_frame(&self.cfg.gateway, "oversized");
                tracing::error!(gateway = %self.cfg.gateway,
                    event = ev::GATEWAY_BAD_FRAME,
                    problem = "frame over the size limit",
                    limit = MAX_MESSAGE_BYTES,
                    oversized_frames = self.oversized_frames,
                    "a frame from the gateway was too large and was dropped"
                );
            }
            Err(e) => {
                // Any other codec error repeats on every poll: the stream is
                // unusable, so reconnect.
                let error = e.to_string();
                tracing::error!(gateway = %self.cfg.gateway, event = ev::GATEWAY_BAD_FRAME, problem = %error, "WebSocket protocol error; reconnecting");
                self.fail(DisconnectCause::ProtocolError { error }, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.fail(DisconnectCause::Lost, ctx);
    }
}

impl WriteHandler<awc::error::WsProtocolError> for GatewayConnection {
    fn error(&mut self, err: awc::error::WsProtocolError, ctx: &mut Context<Self>) -> Running {
        if self.cause.is_none() {
            self.cause = Some(DisconnectCause::ProtocolError {
                error: err.to_string(),
            });
        }
        ctx.stop();
        Running::Stop
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // Our sink closed: after a close we initiated, or the peer went away.
        if self.cause.is_none() {
            self.cause = Some(DisconnectCause::Lost);
        }
        ctx.stop();
    }
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
        let id = request_id();
        let text = match protocol::encode_request(&id, &msg.method, msg.params.as_deref()) {
            Ok(t) => t,
            Err(e) => return immediate(RequestError::BadRequest(e.to_string())),
        };
        if !self.write(WsMessage::Text(text.into())) {
            return immediate(RequestError::Disconnected {
                reason: "the socket is closed".into(),
            });
        }
        let (tx, rx) = oneshot::channel();
        let timeout = msg.timeout.unwrap_or(self.cfg.request_timeout);
        self.next_deadline_seq += 1;
        let deadline = (Instant::now() + timeout, self.next_deadline_seq);
        self.deadlines.insert(deadline, id.clone());
        self.pending.insert(
            id,
            Pending {
                tx,
                is_agent: msg.method == "agent",
                expect_final: msg.expect_final,
                accepted_seen: false,
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
        if self.sink.is_some() {
            self.close_socket();
            // Wait briefly for the gateway's close echo, then stop regardless.
            ctx.run_later(Duration::from_millis(500), |_, ctx| ctx.stop());
        } else {
            ctx.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_detection() {
        let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
        assert!(is_accepted(&raw(
            r#"{"runId":"r","status":"accepted","acceptedAt":1}"#
        )));
        assert!(!is_accepted(&raw(r#"{"runId":"r","status":"ok"}"#)));
        assert!(!is_accepted(&raw(r#"{"runId":"r","status":"in_flight"}"#)));
        assert!(!is_accepted(&raw("[1]")));
        assert!(!is_accepted(&raw("null")));
    }

    #[test]
    fn failed_run_outcome_keeps_payload_and_error() {
        let raw = RawValue::from_string(
            r#"{"runId":"r","status":"error","summary":"LLM request failed"}"#.to_owned(),
        )
        .unwrap();
        let err: GatewayError = serde_json::from_str(
            r#"{"code":"UNAVAILABLE","message":"LLM request failed","retryable":true}"#,
        )
        .unwrap();
        let out: serde_json::Value =
            serde_json::from_str(run_outcome(&raw, Some(&err)).unwrap().get()).unwrap();
        assert_eq!(out["status"], "error");
        assert_eq!(out["error"]["code"], "UNAVAILABLE");
        assert!(run_outcome(&RawValue::from_string("[1]".into()).unwrap(), None).is_none());
    }

    #[test]
    fn finished_ids_are_bounded() {
        let mut f = FinishedIds::default();
        for i in 0..(FINISHED_IDS_KEPT + 10) {
            f.insert(i.to_string());
        }
        assert!(f.set.len() <= FINISHED_IDS_KEPT);
        assert!(!f.remove("0"));
        assert!(f.remove(&(FINISHED_IDS_KEPT + 9).to_string()));
    }
}
