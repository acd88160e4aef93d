//! The session reports of the current connection: hello-ok ([`ConnectionUp`])
//! and its end ([`ConnectionDown`]), where the cause decides between a backoff,
//! a fast poll through an announced restart, parking, and (FailFast) giving up.

use std::time::{Duration, Instant};

use actix::prelude::{AsyncContext, Context, Handler};
use serde_json::json;

use super::{
    ConnectionDown, ConnectionUp, GatewayInfo, LastError, Mode, ReadyError, Supervisor,
    MAX_RETRY_AFTER, RESTART_GRACE, RESTART_POLL,
};
use crate::actors::messages::{DisconnectCause, LinkState, RetryClass};
use crate::clock::now_ms;
use crate::telemetry::{emit, events as ev};

impl Handler<ConnectionUp> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionUp, ctx: &mut Context<Self>) {
        if msg.generation != self.generation {
            return;
        }
        let h = msg.hello;
        self.set_state(LinkState::Connected);
        self.restart_window_until = None;
        self.parked_code = None;
        self.info = GatewayInfo {
            url: msg.url.clone(),
            server_version: Some(h.server.version.clone()),
            protocol: Some(h.protocol),
            conn_id: h.server.conn_id.clone(),
            boot_id: h.server.boot_id.clone(),
            connected_since: Some(now_ms()),
            scopes: h.scopes.clone(),
        };
        emit::gateway_connected(&self.cfg.connection.gateway, &h);
        let restarted = matches!(
            (&self.last_boot_id, &h.server.boot_id),
            (Some(old), Some(new)) if old != new
        );
        if restarted {
            tracing::info!(gateway = %self.cfg.connection.gateway,
                event = ev::GATEWAY_RESTARTED,
                boot_id = h.server.boot_id.as_deref().unwrap_or(""),
                "the gateway restarted since the last session (new bootId)"
            );
        }
        if h.server.boot_id.is_some() {
            self.last_boot_id = h.server.boot_id.clone();
        }
        if let Some(token) = h.device_token.clone() {
            self.keep_device_token(token, &h.scopes);
        }
        let stable_after = self.cfg.stable_after;
        self.stable_timer = Some(ctx.run_later(stable_after, |act, _| {
            act.attempt = 0;
            act.stable_timer = None;
        }));
        self.notify_link(
            true,
            json!({"url": self.info.url, "server_version": h.server.version, "conn_id": h.server.conn_id, "boot_id": h.server.boot_id, "gateway_restarted": restarted}),
        );
        self.wake_waiters(Ok(()));
        self.resync_on_hello(ctx);
        self.reattach_all(ctx);
    }
}

impl Handler<ConnectionDown> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ConnectionDown, ctx: &mut Context<Self>) {
        if msg.generation != self.generation {
            return;
        }
        self.conn = None;
        if let Some(h) = self.stable_timer.take() {
            ctx.cancel_future(h);
        }
        let cause = msg.cause;
        emit::gateway_disconnected(
            &self.cfg.connection.gateway,
            &cause.code(),
            &cause.message(),
            cause.close_code(),
            msg.connected_for,
            msg.pending_failed,
        );
        let was_connected = msg.connected_for.is_some();
        if was_connected {
            self.info.connected_since = None;
            self.notify_link(
                false,
                json!({"reason": cause.message(), "close_code": cause.close_code()}),
            );
        }
        if self.state == LinkState::Stopping {
            for w in self.stop_waiters.drain(..) {
                let _ = w.send(());
            }
            // Stays alive while stopping: late callers get `ShuttingDown`
            // (503 BRIDGE_SHUTTING_DOWN), not a dead mailbox.
            return;
        }
        if msg
            .connected_for
            .is_some_and(|d| d >= self.cfg.stable_after)
        {
            self.attempt = 0;
        }
        let token_refused = match &cause {
            DisconnectCause::Rejected { error } => matches!(
                error.details_code(),
                Some("AUTH_DEVICE_TOKEN_MISMATCH" | "AUTH_SCOPE_MISMATCH")
            ),
            DisconnectCause::Closed { code: 4001, .. } => true,
            _ => false,
        };
        if token_refused && self.drop_device_token(&cause.code()) {
            self.last_error = Some(LastError {
                code: cause.code(),
                message: cause.message(),
                close_code: cause.close_code(),
                action: None,
                gateway_error: None,
                at_ms: now_ms(),
            });
            let delay = self.cfg.backoff.initial();
            self.schedule(delay, &cause.code(), &cause.message(), ctx);
            return;
        }
        let class = cause.retry_class();
        // What "the same parked situation" means: the code, plus the pairing
        // request id (a new request must be announced again).
        let park_key = match &cause {
            DisconnectCause::Rejected { error } => format!(
                "{}/{}",
                cause.code(),
                error.detail_str("requestId").unwrap_or("")
            ),
            _ => cause.code(),
        };
        let repeat = self.parked_code.as_deref() == Some(park_key.as_str());
        let gateway_error = match &cause {
            DisconnectCause::Rejected { error } => {
                // Logged once per parked situation; repeats go to debug.
                warn_or_debug!(
                    repeat,
                    gateway = %self.cfg.connection.gateway,
                    event = ev::GATEWAY_REJECTED,
                    code = %error.code,
                    details_code = error.details_code().unwrap_or(""),
                    message = %error.message,
                    next_step = error.next_step().unwrap_or(""),
                    "the gateway refused the handshake"
                );
                Some(error.to_value())
            }
            _ => None,
        };
        let action = match &class {
            RetryClass::Park { action, .. } => Some(action.clone()),
            _ => None,
        };
        self.last_error = Some(LastError {
            code: cause.code(),
            message: cause.message(),
            close_code: cause.close_code(),
            action: action.clone(),
            gateway_error,
            at_ms: now_ms(),
        });

        // A held caller (`call --final`) keeps a FailFast link retrying
        // what a retry can fix, until its own deadline.
        let fail_fast = self.cfg.mode == Mode::FailFast
            && (!self.holds_callers() || matches!(class, RetryClass::Park { .. }));
        if fail_fast && !matches!(class, RetryClass::After(_) | RetryClass::Restarting) {
            self.set_state(LinkState::Parked);
            self.wake_waiters(Err(ReadyError::Failed(cause)));
            return;
        }

        let code = cause.code();
        let delay = match class {
            RetryClass::Park { action, at_least } => {
                self.set_state(LinkState::Parked);
                let delay = at_least
                    .map_or(self.cfg.park_retry, |d| d.max(self.cfg.park_retry))
                    .min(MAX_RETRY_AFTER.max(self.cfg.park_retry));
                if !repeat {
                    if let DisconnectCause::Rejected { error } = &cause {
                        if error.details_code() == Some("PAIRING_REQUIRED") {
                            let id = error.detail_str("requestId").unwrap_or("");
                            tracing::warn!(gateway = %self.cfg.connection.gateway, event = ev::GATEWAY_PAIRING_REQUIRED, request_id = id, approve_command = %format!("openclaw devices approve {id}"), "this device must be approved on the gateway");
                        }
                    }
                    tracing::error!(gateway = %self.cfg.connection.gateway, event = ev::GATEWAY_PARKED, code = %code, action = %action, retry_in_ms = delay.as_millis() as u64, "a retry cannot fix this; retrying slowly until the operator acts (SIGHUP retries at once)");
                    self.parked_code = Some(park_key.clone());
                }
                delay
            }
            RetryClass::After(d) => d,
            RetryClass::Restarting if msg.restart_expected_ms.is_some() => {
                // First try around when the gateway said it would be back.
                let expected = Duration::from_millis(msg.restart_expected_ms.unwrap_or_default())
                    .min(RESTART_GRACE);
                self.restart_window_until = Some(Instant::now() + expected + RESTART_GRACE);
                self.restart_polls = 0;
                expected
            }
            RetryClass::Restarting | RetryClass::Backoff => {
                if self.in_restart_window() {
                    RESTART_POLL + RESTART_POLL.mul_f64(fastrand::f64())
                } else {
                    let d = self.cfg.backoff.delay(self.attempt);
                    self.attempt = self.attempt.saturating_add(1);
                    d
                }
            }
        };
        self.schedule(delay, &code, &cause.message(), ctx);
    }
}
