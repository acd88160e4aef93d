//! Device tokens issued at hello-ok: stored and sent alone on later
//! connections; dropped when the gateway refuses them, so the next attempt
//! falls back to the shared token.

use std::sync::Arc;

use super::Supervisor;
use crate::clock::now_ms;
use crate::telemetry::events as ev;

impl Supervisor {
    /// Persist a device token from hello-ok and use it from now on.
    pub(super) fn keep_device_token(&mut self, token: String, scopes: &[String]) {
        if self.cfg.connection.device_token.as_deref() == Some(token.as_str()) {
            return;
        }
        if let Some(store) = self.cfg.device_tokens.clone() {
            // The save fsyncs: off this thread, which also runs the
            // connection (its socket must not wait on a disk).
            let gateway = self.cfg.connection.gateway.clone();
            let url = self.cfg.connection.url.clone();
            let (token, scopes) = (token.clone(), scopes.to_vec());
            actix_rt::spawn(async move {
                let shown_scopes = scopes.join(",");
                let path = store.path().display().to_string();
                let saved = actix_rt::task::spawn_blocking(move || {
                    store.save(&url, crate::protocol::ROLE, &token, &scopes, now_ms())
                })
                .await;
                match saved {
                    Ok(Ok(())) => {
                        tracing::info!(gateway = %gateway, event = ev::DEVICE_TOKEN_STORED, path = %path, scopes = %shown_scopes, "device token issued by the gateway stored; later connections use it")
                    }
                    Ok(Err(e)) => tracing::warn!(gateway = %gateway,
                        event = ev::STORE_WRITE_FAILED,
                        "could not store the device token ({e}); it is used until the bridge restarts"
                    ),
                    Err(e) => tracing::warn!(gateway = %gateway,
                        event = ev::STORE_WRITE_FAILED,
                        "could not store the device token ({e}); it is used until the bridge restarts"
                    ),
                }
            });
        }
        let mut conn = (*self.cfg.connection).clone();
        conn.device_token = Some(token);
        self.cfg.connection = Arc::new(conn);
    }

    /// The gateway no longer takes our device token: forget it, so the next
    /// attempt uses the shared token (and, if needed, asks for pairing again).
    pub(super) fn drop_device_token(&mut self, why: &str) -> bool {
        if self.cfg.connection.device_token.is_none() {
            return false;
        }
        if let Some(store) = &self.cfg.device_tokens {
            if let Err(e) = store.clear(&self.cfg.connection.url, crate::protocol::ROLE) {
                tracing::warn!(gateway = %self.cfg.connection.gateway, "could not remove the stored device token: {e}");
            }
        }
        let mut conn = (*self.cfg.connection).clone();
        conn.device_token = None;
        self.cfg.connection = Arc::new(conn);
        tracing::warn!(gateway = %self.cfg.connection.gateway,
            event = ev::DEVICE_TOKEN_DROPPED,
            reason = why,
            "the gateway refused the device token; dropped it, retrying with the shared token"
        );
        true
    }
}
