//! RPC over NATS request–reply on `P.rpc.G`.

use std::sync::Arc;

use actix::Addr;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{watch, Semaphore};

use crate::actors::Supervisor;
use crate::api::ApiError;
use crate::telemetry::events as ev;

/// Requests over NATS handled at once.
const RPC_CONCURRENCY: usize = 256;

/// RPC over NATS request–reply on `P.rpc.G`: the body and answers of
/// `POST /v1/rpc`, failures with the HTTP status they would have.
pub(super) async fn rpc_task(
    client: async_nats::Client,
    subject: String,
    gateway: String,
    allowed: Arc<Vec<String>>,
    supervisor: Addr<Supervisor>,
    mut stop: watch::Receiver<bool>,
) {
    let mut sub = match client
        .queue_subscribe(subject.clone(), format!("openclaw-bridge.{gateway}"))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(
                gateway = %gateway,
                event = ev::NATS_UNAVAILABLE,
                subject,
                "cannot subscribe for RPC over NATS: {e}"
            );
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(RPC_CONCURRENCY));
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m {
                Some(m) => m,
                None => return,
            },
            _ = stop.changed() => {
                let _ = sub.unsubscribe().await;
                return;
            }
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let supervisor = supervisor.clone();
        let allowed = allowed.clone();
        let gateway = gateway.clone();
        actix_rt::spawn(async move {
            let body = match refused(&allowed, &msg.payload) {
                Some(method) => {
                    tracing::warn!(gateway = %gateway, event = ev::RPC_FAILED, method, code = "BRIDGE_FORBIDDEN", "RPC over NATS refused: the method is not in nats.rpc_methods");
                    Bytes::from(
                        ApiError::Forbidden(format!(
                            "method {method:?} may not be called over NATS; allowed: nats.rpc_methods = {:?}",
                            allowed.as_slice()
                        ))
                        .rpc_reply()
                        .to_string(),
                    )
                }
                None => rpc_answer(&supervisor, &msg.payload).await,
            };
            if let Err(e) = client.publish(reply.clone(), body).await {
                let v = ApiError::Internal(format!("the answer could not be sent over NATS: {e}"))
                    .rpc_reply();
                let _ = client.publish(reply, Bytes::from(v.to_string())).await;
            }
            drop(permit);
        });
    }
}

/// The method of a request body that `nats.rpc_methods` does not allow
/// (`*` allows all). A body that does not parse is not refused here: it
/// gets `rpc_answer`'s `BRIDGE_BAD_REQUEST`.
fn refused(allowed: &[String], body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Method {
        method: String,
    }
    let m = serde_json::from_slice::<Method>(body).ok()?.method;
    if m.trim().is_empty() {
        return None;
    }
    let ok = allowed.iter().any(|a| a == "*" || *a == m);
    (!ok).then_some(m)
}

/// The reply to one RPC request body.
pub async fn rpc_answer(supervisor: &Addr<Supervisor>, body: &[u8]) -> Bytes {
    let err = |e: ApiError| Bytes::from(e.rpc_reply().to_string());
    let msg = match crate::api::parse_rpc_body(body) {
        Ok(m) => m,
        Err(e) => return err(e),
    };
    match supervisor.send(crate::actors::messages::Rpc(msg)).await {
        Err(_) => err(ApiError::Internal("the supervisor is not running".into())),
        Ok(Err(e)) => err(ApiError::from(e)),
        // A reattached run adds `"reattached":true` (CONTRACT "Additions").
        Ok(Ok(answer)) => Bytes::from(answer.to_body()),
    }
}

#[cfg(test)]
mod tests {
    use super::refused;

    #[test]
    fn only_allowed_methods_pass() {
        let allowed = vec!["health".to_owned(), "agents.list".to_owned()];
        assert_eq!(refused(&allowed, br#"{"method":"health"}"#), None);
        assert_eq!(
            refused(&allowed, br#"{"method":"agent","params":{}}"#),
            Some("agent".to_owned())
        );
        // Bad bodies are not refused here: they get BRIDGE_BAD_REQUEST.
        assert_eq!(refused(&allowed, b"not json"), None);
        assert_eq!(refused(&allowed, br#"{"method":""}"#), None);
        assert_eq!(refused(&["*".to_owned()], br#"{"method":"agent"}"#), None);
        assert_eq!(
            refused(&[], br#"{"method":"health"}"#),
            Some("health".to_owned())
        );
    }
}
