//! Inbound frames: text decoding, fragment reassembly, events (seq-gap
//! detection and delivery to the registry and the broker) and the socket's
//! control frames and codec errors.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::{Context, StreamHandler};
use actix_http::ws::Item;
use awc::ws::{Frame, Message as WsMessage};
use bytes::{Bytes, BytesMut};

use super::codec::{Decoded, Oversized};
use super::{Discard, GatewayConnection, Partial, Phase};
use crate::actors::messages::{DisconnectCause, HealthSeen, RequestError, SeqGap};
use crate::protocol::{self, Challenge, EventKind, GatewayEvent, Inbound};
use crate::telemetry::{emit, events as ev};

impl GatewayConnection {
    fn on_text(&mut self, bytes: Bytes, ctx: &mut Context<Self>) {
        // `simdutf8` accepts exactly what `std::str::from_utf8` does.
        let Ok(text) = simdutf8::basic::from_utf8(&bytes) else {
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
                    emit::seq_gap(&self.cfg.gateway, expected, seq);
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
        if let EventKind::Health(h) = &event.kind {
            if !h.agent_ids.is_empty() {
                let mut agent_ids = h.agent_ids.clone();
                agent_ids.sort_unstable();
                agent_ids.dedup();
                let _ = self.wiring.health.try_send(HealthSeen {
                    generation: self.generation,
                    agent_ids,
                });
            }
        }
        // Handed over at the end of the read pass (see `reader`).
        let for_registry = matches!(event.kind, EventKind::Agent(_) | EventKind::Chat(_));
        let event = Arc::new(event);
        if for_registry && self.wiring.agent_events.is_some() {
            self.to_registry.push(event.clone());
        }
        if self.wiring.events.is_some() {
            self.to_broker.push(event);
        }
    }

    fn on_fragment(&mut self, item: Item, ctx: &mut Context<Self>) {
        let (first, text, chunk, last) = match item {
            Item::FirstText(b) => (true, true, b, false),
            Item::FirstBinary(b) => (true, false, b, false),
            Item::Continue(b) => (false, false, b, false),
            Item::Last(b) => (false, false, b, true),
        };
        let cap = self.frame_cap();
        if first {
            let mut buf = BytesMut::with_capacity(chunk.len().saturating_mul(2).min(cap));
            buf.extend_from_slice(&chunk);
            self.partial = Some(Partial::Reassembling { text, buf });
        } else {
            self.on_continuation(chunk, last, cap);
        }
        if last {
            match self.partial.take() {
                Some(Partial::Reassembling { text: true, buf }) => self.on_text(buf.freeze(), ctx),
                Some(Partial::Reassembling { buf, .. }) => {
                    bad_frame(&self.cfg.gateway, "binary message ignored", buf.len());
                }
                Some(Partial::Discarding(mut d)) => self.report_oversized(&mut d),
                None => {}
            }
        }
    }

    fn on_continuation(&mut self, chunk: Bytes, last: bool, cap: usize) {
        match self.partial.take() {
            None => {
                bad_frame(
                    &self.cfg.gateway,
                    "continuation frame without a first frame",
                    chunk.len(),
                );
            }
            Some(Partial::Discarding(mut d)) => {
                d.size += chunk.len() as u64;
                self.discard_piece(&mut d, &chunk);
                self.partial = Some(Partial::Discarding(d));
            }
            Some(Partial::Reassembling { text, mut buf }) => {
                if buf.len() + chunk.len() > cap {
                    // The message as a whole is over the cap: drop what we
                    // have, read on only for the request it answers.
                    let mut d = Discard::new((buf.len() + chunk.len()) as u64, last);
                    self.discard_piece(&mut d, &buf);
                    self.discard_piece(&mut d, &chunk);
                    self.partial = Some(Partial::Discarding(d));
                } else {
                    buf.extend_from_slice(&chunk);
                    self.partial = Some(Partial::Reassembling { text, buf });
                }
            }
        }
    }

    fn frame_cap(&self) -> usize {
        self.frame_cap.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A frame over the cap, seen from its header: its payload follows in
    /// pieces ([`Self::on_skipped`]).
    pub(super) fn on_oversized(&mut self, o: Oversized) {
        if o.starts_message {
            self.partial = Some(Partial::Discarding(Discard::new(o.declared, o.fin)));
            return;
        }
        // A later piece of a fragmented message: the message is lost.
        let d = match self.partial.take() {
            Some(Partial::Reassembling { buf, .. }) => {
                let mut d = Discard::new(buf.len() as u64 + o.declared, o.fin);
                self.discard_piece(&mut d, &buf);
                d
            }
            Some(Partial::Discarding(mut d)) => {
                d.size += o.declared;
                d.fin = o.fin;
                d
            }
            None => {
                bad_frame(
                    &self.cfg.gateway,
                    "continuation frame without a first frame",
                    0,
                );
                Discard {
                    reported: true,
                    ..Discard::new(0, o.fin)
                }
            }
        };
        self.partial = Some(Partial::Discarding(d));
    }

    /// A piece of an oversized frame. The request is failed as soon as its
    /// id is known, at the latest when the message ends.
    fn on_skipped(&mut self, chunk: Bytes, last: bool) {
        let Some(Partial::Discarding(mut d)) = self.partial.take() else {
            return;
        };
        self.discard_piece(&mut d, &chunk);
        if last && d.fin {
            self.report_oversized(&mut d);
        } else {
            self.partial = Some(Partial::Discarding(d));
        }
    }

    /// Read a piece of a message being discarded for the request it
    /// answers (then it is dropped); report the message once that is known.
    fn discard_piece(&mut self, d: &mut Discard, piece: &[u8]) {
        if !d.reported && d.scan.feed(piece) {
            self.report_oversized(d);
        }
    }

    /// Count and log a message over the frame cap once, and fail the
    /// request it answers (when it named one) instead of letting it time
    /// out.
    fn report_oversized(&mut self, d: &mut Discard) {
        if std::mem::replace(&mut d.reported, true) {
            return;
        }
        let limit = self.frame_cap();
        self.oversized_frames += 1;
        let id = d.scan.response_id().map(str::to_owned);
        let failed = id.as_deref().is_some_and(|id| {
            self.fail_request(
                id,
                RequestError::FrameTooLarge {
                    size: d.size,
                    limit: limit as u64,
                },
            )
        });
        emit::bad_frame_oversized(
            &self.cfg.gateway,
            d.size,
            limit,
            id.as_deref(),
            failed,
            self.oversized_frames,
        );
    }
}

fn bad_frame(gateway: &str, problem: &str, size: usize) {
    emit::bad_frame_undecodable(gateway, problem, size);
}

impl StreamHandler<Result<Decoded, awc::error::WsProtocolError>> for GatewayConnection {
    fn handle(
        &mut self,
        item: Result<Decoded, awc::error::WsProtocolError>,
        ctx: &mut Context<Self>,
    ) {
        self.last_rx = Instant::now();
        let item = match item {
            Ok(Decoded::Oversized(o)) => return self.on_oversized(o),
            Ok(Decoded::Skipped { chunk, last }) => return self.on_skipped(chunk, last),
            Ok(Decoded::Frame(f)) => Ok(f),
            Err(e) => Err(e),
        };
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
