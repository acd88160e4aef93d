//! The registry → KV mirror: one key per agent (`<gateway>.<agent>`) in
//! the `nats.kv_bucket` bucket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use async_nats::connection::State;
use async_nats::jetstream;
use async_nats::jetstream::kv::{CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::agent_key;
use crate::actors::registry::ListAgents;
use crate::actors::AgentRegistry;
use crate::config::NatsSettings;
use crate::telemetry::events as ev;

/// How often the registry is compared with the KV bucket.
pub const KV_EVERY: Duration = Duration::from_millis(500);

/// The KV bucket, created if missing.
async fn ensure_bucket(
    js: &jetstream::Context,
    gw: &str,
    cfg: &NatsSettings,
) -> Option<jetstream::kv::Store> {
    if let Ok(s) = js.get_key_value(cfg.kv_bucket.as_str()).await {
        return Some(s);
    }
    let kc = jetstream::kv::Config {
        bucket: cfg.kv_bucket.clone(),
        description: "openclaw-bridge: current state of every agent".into(),
        history: 1,
        // No max_age: an idle agent's state must not expire.
        max_bytes: i64::try_from(cfg.max_bytes).unwrap_or(i64::MAX),
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    match js.create_key_value(kc).await {
        Ok(s) => Some(s),
        Err(e) => {
            // A concurrent creator may have won.
            match js.get_key_value(cfg.kv_bucket.as_str()).await {
                Ok(s) => Some(s),
                Err(_) => {
                    tracing::warn!(gateway = gw, event = ev::NATS_UNAVAILABLE, bucket = %cfg.kv_bucket, "cannot create the KV bucket: {e}");
                    None
                }
            }
        }
    }
}

/// Mirror the registry to the KV bucket: every [`KV_EVERY`], put the agents
/// whose JSON changed and delete the ones that are gone. Off the event path.
pub(super) async fn kv_task(
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: NatsSettings,
    gw: Arc<str>,
    registry: Addr<AgentRegistry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut store: Option<jetstream::kv::Store> = None;
    let mut last: HashMap<String, Bytes> = HashMap::new();
    // Keys of vanished agents → the revision seen when first found gone.
    let mut doomed: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(KV_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if client.connection_state() != State::Connected {
            continue;
        }
        let Some(kv) = (match &store {
            Some(s) => Some(s.clone()),
            None => {
                let s = ensure_bucket(&js, &gw, &cfg).await;
                // A (re)created bucket: put everything again, and treat this
                // gateway's keys already there (an earlier run's) as ours,
                // so agents that vanished meanwhile are deleted.
                last.clear();
                if let Some(kv) = &s {
                    for k in gateway_keys(kv, &gw).await {
                        last.insert(k, Bytes::new());
                    }
                }
                store = s.clone();
                s
            }
        }) else {
            continue;
        };
        let Ok(list) = registry.send(ListAgents).await else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
        let mut failed = false;
        for a in &list.agents {
            let key = agent_key(&gw, &a.id);
            seen.insert(key.clone());
            doomed.remove(&key);
            let Ok(v) = serde_json::to_vec(a) else {
                continue;
            };
            let v = Bytes::from(v);
            if last.get(&key) == Some(&v) {
                continue;
            }
            match mirror_one(&kv, &key, &v).await {
                Ok(()) => {
                    last.insert(key, v);
                }
                // Another bridge wrote first: look again next time.
                Err(None) => {}
                Err(Some(e)) => {
                    tracing::debug!(gateway = %gw, event = ev::NATS_UNAVAILABLE, key, "KV write failed: {e}");
                    failed = true;
                    break;
                }
            }
        }
        // Deletions only from the gateway's own list: right after a start
        // the registry holds what the store had, which may lack agents
        // that still exist.
        if failed {
            store = None;
        } else if list.synced {
            let gone: Vec<String> = last
                .keys()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            for k in gone {
                if delete_settled(&kv, &k, &mut doomed).await {
                    last.remove(&k);
                }
            }
        }
    }
}

/// How a bridge's view of an agent ranks against what is in the bucket:
/// gateway event order (`last_event_at`, the gateway's own `ts`), then a
/// live view over a stale one (the bridge lost its gateway link).
fn rank(v: &[u8]) -> (u64, bool) {
    #[derive(serde::Deserialize)]
    struct Order {
        last_event_at: Option<u64>,
        #[serde(default)]
        stale: bool,
    }
    match serde_json::from_slice::<Order>(v) {
        Ok(o) => (o.last_event_at.unwrap_or(0), !o.stale),
        Err(_) => (0, false),
    }
}

/// Whether our view of an agent should replace the bucket's: never one
/// the gateway's event order (or liveness) ranks higher, so two bridges on
/// one gateway never undo each other (last writer wins by gateway order).
pub(super) fn ours_wins(current: &[u8], ours: &[u8]) -> bool {
    current != ours && rank(ours) >= rank(current)
}

/// Put one agent, revision-checked: `Ok` when the bucket holds our value
/// or a view that outranks it, `Err(None)` when another writer got in
/// between (try again next time), `Err(Some(_))` when NATS failed.
async fn mirror_one(kv: &jetstream::kv::Store, key: &str, v: &Bytes) -> Result<(), Option<String>> {
    let current = kv.entry(key).await.map_err(|e| Some(e.to_string()))?;
    match current {
        Some(e) if e.operation == Operation::Put => {
            if !ours_wins(&e.value, v) {
                return Ok(());
            }
            kv.update(key, v.clone(), e.revision)
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(e.to_string()),
                })
        }
        // Missing or deleted: create (fails if another bridge just did).
        _ => kv
            .create(key, v.clone())
            .await
            .map(|_| ())
            .map_err(|e| match e.kind() {
                CreateErrorKind::AlreadyExists => None,
                _ => Some(e.to_string()),
            }),
    }
}

/// Delete a key of an agent the gateway no longer lists, only once the
/// same revision has been seen on two passes (a key another bridge has
/// just written changes revision and is kept), and only that revision.
/// True when the key is gone.
async fn delete_settled(
    kv: &jetstream::kv::Store,
    key: &str,
    doomed: &mut HashMap<String, u64>,
) -> bool {
    let rev = match kv.entry(key).await {
        Ok(Some(e)) if e.operation == Operation::Put => e.revision,
        Ok(_) => {
            doomed.remove(key);
            return true;
        }
        Err(_) => return false,
    };
    if doomed.get(key) != Some(&rev) {
        doomed.insert(key.to_owned(), rev);
        return false;
    }
    if kv.delete_expect_revision(key, Some(rev)).await.is_ok() {
        doomed.remove(key);
        return true;
    }
    false
}

/// The keys of gateway `gw` in the bucket (`<gw>.…`), bounded in time.
async fn gateway_keys(kv: &jetstream::kv::Store, gw: &str) -> Vec<String> {
    let prefix = format!("{gw}.");
    let list = async {
        let mut out = Vec::new();
        if let Ok(mut keys) = kv.keys().await {
            while let Some(Ok(k)) = keys.next().await {
                if k.starts_with(&prefix) {
                    out.push(k);
                }
            }
        }
        out
    };
    match tokio::time::timeout(Duration::from_secs(5), list).await {
        Ok(keys) => keys,
        Err(_) => {
            tracing::warn!(
                gateway = gw,
                event = ev::NATS_UNAVAILABLE,
                "listing the KV bucket took over 5 s; keys of agents that vanished while the bridge was down stay until they change"
            );
            Vec::new()
        }
    }
}
