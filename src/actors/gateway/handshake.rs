//! The handshake: `connect.challenge` → `connect` (signed when a device
//! identity is configured) → `hello-ok`, each stage under its own timer, and
//! the tick watchdog that hello-ok starts.

use std::time::{Duration, Instant};

use actix::prelude::{AsyncContext, Context};
use awc::ws::Message as WsMessage;
use serde_json::value::RawValue;

use super::{GatewayConnection, Phase};
use crate::actors::messages::{ConnectionUp, DisconnectCause};
use crate::clock::now_ms;
use crate::protocol::{
    self, Challenge, ClientInfo, ConnectAuth, ConnectParams, GatewayError, HelloOk, ResponseFrame,
    PROTOCOL_VERSION,
};
use crate::telemetry::events as ev;

impl GatewayConnection {
    pub(super) fn arm_handshake_timer(&mut self, stage: &'static str, ctx: &mut Context<Self>) {
        if let Some(h) = self.handshake_timer.take() {
            ctx.cancel_future(h);
        }
        let h = ctx.run_later(self.cfg.handshake_timeout, move |act, ctx| {
            act.fail(DisconnectCause::HandshakeTimeout { stage }, ctx);
        });
        self.handshake_timer = Some(h);
    }

    pub(super) fn send_connect(&mut self, challenge: Challenge, ctx: &mut Context<Self>) {
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
            role: crate::protocol::ROLE.into(),
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
        let text = match serde_json::value::to_raw_value(&params) {
            Ok(p) => protocol::encode_request(&connect_id, "connect", Some(&p)),
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

    pub(super) fn on_hello(&mut self, res: ResponseFrame<'_>, ctx: &mut Context<Self>) {
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
        let cap = self.cfg.frame_cap(hello.policy.max_payload);
        self.frame_cap
            .store(cap, std::sync::atomic::Ordering::Relaxed);
        let tick = Duration::from_millis(hello.policy.tick_interval_ms.max(1));
        self.phase = Phase::Ready {
            since: Instant::now(),
        };
        self.expected_seq = None;
        self.start_watchdog(tick, ctx);
        let _ = self.wiring.up.try_send(ConnectionUp {
            url: crate::config::redact_url(&self.cfg.url).into_owned(),
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
}
