//! The JetStream stream that captures `P.G.>`: created when missing, our
//! subjects added to an existing one.

use std::time::Instant;

use async_nats::jetstream;

use super::{filter_covers_tree, Subjects, LOG_EVERY};
use crate::config::NatsSettings;
use crate::telemetry::events as ev;

/// Serializes stream checks and updates of the gateways of this process, so
/// two of them never read the subject list at once and each drop the other's
/// addition.
static STREAM_UPDATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Create the stream if missing; an existing one is used with its limits,
/// and our subjects are added to it when it does not capture them yet (one
/// stream shared by the bridges of several gateways). `Err` says why the
/// stream cannot be used yet (the caller logs it, rate-limited, and retries).
async fn ensure_stream(
    js: &jetstream::Context,
    gw: &str,
    cfg: &NatsSettings,
    subjects: &Subjects,
) -> Result<(), String> {
    let _one_at_a_time = STREAM_UPDATE.lock().await;
    let ours = subjects.stream_filter();
    let tokens: Vec<&str> = subjects
        .prefix
        .split('.')
        .chain(std::iter::once(subjects.gateway.as_str()))
        .collect();
    let sc = jetstream::stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![ours.clone()],
        max_age: cfg.max_age,
        max_bytes: i64::try_from(cfg.max_bytes).unwrap_or(i64::MAX),
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::Old,
        duplicate_window: cfg.duplicate_window,
        description: Some("openclaw-bridge: gateway events".into()),
        ..Default::default()
    };
    let mut stream = js.get_or_create_stream(sc).await.map_err(|e| {
        format!(
            "cannot create or find the JetStream stream {} (is JetStream enabled, -js?): {e}",
            cfg.stream
        )
    })?;
    let info = stream
        .info()
        .await
        .map_err(|e| format!("cannot read the JetStream stream {}: {e}", cfg.stream))?
        .clone();
    let covered = |subjects: &[String]| subjects.iter().any(|f| filter_covers_tree(f, &tokens));
    // The duplicate window is ours to set even on an existing stream: two
    // bridges rely on it to store each event once.
    let window_ok = info.config.duplicate_window == cfg.duplicate_window;
    if covered(&info.config.subjects) && window_ok {
        return Ok(());
    }
    let mut config = info.config;
    if !covered(&config.subjects) {
        config.subjects.push(ours.clone());
    }
    config.duplicate_window = cfg.duplicate_window;
    let updated = js.update_stream(&config).await.map_err(|e| {
        format!(
            "the JetStream stream {} does not capture {ours} and could not be updated: {e}",
            cfg.stream
        )
    })?;
    if updated.config.duplicate_window != cfg.duplicate_window {
        return Err(format!(
            "the JetStream stream {} kept a duplicate window of {:?} after an update to {:?}",
            cfg.stream, updated.config.duplicate_window, cfg.duplicate_window
        ));
    }
    if !covered(&updated.config.subjects) {
        return Err(format!(
            "the JetStream stream {} still does not capture {ours} after an update",
            cfg.stream
        ));
    }
    tracing::info!(gateway = gw, stream = %cfg.stream, subject = %ours, duplicate_window_s = cfg.duplicate_window.as_secs(), "updated the existing JetStream stream: this gateway's subjects and the duplicate window");
    Ok(())
}

/// [`ensure_stream`], its failures logged at most every [`LOG_EVERY`].
pub(super) async fn stream_ready(
    js: &jetstream::Context,
    gw: &str,
    cfg: &NatsSettings,
    subjects: &Subjects,
    last_log: &mut Option<Instant>,
) -> bool {
    match ensure_stream(js, gw, cfg, subjects).await {
        Ok(()) => true,
        Err(e) => {
            if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                tracing::warn!(
                    gateway = gw,
                    event = ev::NATS_UNAVAILABLE,
                    "{e}; events wait in the bounded queue"
                );
                *last_log = Some(Instant::now());
            }
            false
        }
    }
}
