//! Inbound frames: text decoding, fragment reassembly, events (seq-gap
//! detection and delivery to the registry and the broker) and the socket's
//! control frames and codec errors.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::{Context, StreamHandler};
use actix_http::ws::Item;
use awc::ws::{Frame, Message as WsMessage};
use bytes::{Bytes, BytesMut};

use super::{GatewayConnection, Phase, MAX_MESSAGE_BYTES};
use crate::actors::messages::{DisconnectCause, EventMsg, SeqGap};
use crate::protocol::{self, Challenge, EventKind, GatewayEvent, Inbound};
use crate::telemetry::events as ev;

impl GatewayConnection {
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
        let mut gap = None;
        if let Some(seq) = frame.seq {
            if let Some(expected) = self.expected_seq {
                if seq > expected {
                    gap = Some(protocol::SeqSkip { expected, got: seq });
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
        // The payload is copied out of the frame once (not sliced): a slice
        // would pin the socket's whole read buffer for as long as the ring
        // holds the event, past `events.buffer_bytes`.
        let (mut event, warning) = GatewayEvent::from_frame(&frame);
        event.gap = gap;
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
