//! The registry → KV mirror: one key per agent (`<gateway>.<agent>`) in
//! the `nats.kv_bucket` bucket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use async_nats::connection::State;
use async_nats::jetstream;
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
            let Ok(v) = serde_json::to_vec(a) else {
                continue;
            };
            let v = Bytes::from(v);
            if last.get(&key) == Some(&v) {
                continue;
            }
            match kv.put(&key, v.clone()).await {
                Ok(_) => {
                    last.insert(key, v);
                }
                Err(e) => {
                    tracing::debug!(gateway = %gw, event = ev::NATS_UNAVAILABLE, key, "KV put failed: {e}");
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
                if kv.delete(&k).await.is_ok() {
                    last.remove(&k);
                }
            }
        }
    }
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
