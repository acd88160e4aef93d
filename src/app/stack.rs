//! Starting one gateway's stack: its thread (arbiter), registry, broker,
//! supervisor and, with `[nats]`, its NATS side.

use std::sync::Arc;

use actix::prelude::Actor;

use super::setup::{registry_for, supervisor_config};
use super::AppError;
use crate::actors::broker::AddSink;
use crate::actors::supervisor::{Mode, Outputs};
use crate::actors::{self, AgentRegistry, EventBroker, GatewayStack, Supervisor};
use crate::config::{self, Settings};
use crate::nats;

/// Start gateway `g`'s actors (and its NATS side when `[nats]` is set).
/// The stack's thread holds its actors back until `gate` opens (or its
/// sender is dropped): `bridge.started` comes first in the log.
pub(super) fn start(
    settings: &Settings,
    g: &config::GatewaySettings,
    gate: std::sync::mpsc::Receiver<()>,
) -> Result<(GatewayStack, Option<nats::NatsHandle>), AppError> {
    // The whole stack on its own thread: one gateway's flood keeps that
    // thread busy and fills that stack's mailboxes, never another's.
    let arbiter = actix::Arbiter::new().handle();
    // Log through the starting thread's subscriber: the global one in
    // the daemon (so this changes nothing), a thread-scoped one where a
    // test captures the logs. The guard lives as long as the thread.
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    arbiter.spawn_fn(move || {
        std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        let _ = gate.recv();
    });
    let registry = registry_for(settings, &g.id);
    let registry = AgentRegistry::start_in_arbiter(&arbiter, move |_| registry);
    let events = settings.events.clone();
    let max_subscribers = settings.http.max_sse_subscribers;
    let id = g.id.clone();
    let broker = EventBroker::start_in_arbiter(&arbiter, move |_| {
        EventBroker::new(events.buffer)
            .buffer_bytes(events.buffer_bytes)
            .max_subscribers(max_subscribers)
            .for_gateway(&id)
            .starting_at(actors::broker::boot_first_id())
    });
    let out = Outputs {
        link: vec![registry.clone().recipient(), broker.clone().recipient()],
        events: Some(broker.clone().recipient()),
        agent_events: Some(registry.clone().recipient()),
        snapshots: Some(registry.clone().recipient()),
        sessions: Some(registry.clone().recipient()),
        runs: Some(registry.clone().recipient()),
    };
    let cfg = supervisor_config(settings, g, Mode::Daemon)?;
    // Its connections start from its context: on this thread too.
    let supervisor = Supervisor::start_in_arbiter(&arbiter, move |_| Supervisor::new(cfg, out));
    let nats = settings.nats.as_ref().map(|n| {
        let (sink, handle) = nats::start(n, &g.id, supervisor.clone(), registry.clone());
        broker.do_send(AddSink(Box::new(sink)));
        tracing::info!(gateway = %g.id, url = %n.url, stream = %n.stream, "publishing events to NATS JetStream");
        handle
    });
    let stack = GatewayStack {
        id: Arc::from(g.id.as_str()),
        required: g.required,
        supervisor,
        registry,
        broker,
        arbiter,
    };
    Ok((stack, nats))
}
