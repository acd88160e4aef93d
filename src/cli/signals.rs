//! The daemon's signals: SIGTERM and SIGINT stop it; SIGHUP reloads the
//! configuration and retries every parked or waiting link at once.

use std::path::PathBuf;

use crate::actors::supervisor::Mode;
use crate::actors::GatewayStack;
use crate::app::supervisor_config;
use crate::config::Settings;
use crate::telemetry::{self, events as ev};

/// The daemon's signal handlers, installed before anything starts: the
/// gateway stacks run on their own threads and may be up before the main
/// thread gets to wait, and a signal before the handlers would kill the
/// process uncleanly.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Needs a running runtime.
    pub(super) fn install() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Signals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }
}

/// Return on SIGTERM or SIGINT. SIGHUP reloads the configuration (see
/// [`reload`]) and retries a parked or waiting link at once.
pub(super) async fn wait_for_signals(
    signals: Option<Signals>,
    gateways: Vec<GatewayStack>,
    api_token: crate::http::ApiToken,
    config_path: Option<PathBuf>,
    mut current: Settings,
) {
    let Some(Signals {
        mut term,
        mut int,
        mut hup,
    }) = signals
    else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(event = ev::BRIDGE_STOPPING, signal = "SIGTERM", "stopping"); return; }
            _ = int.recv() => { tracing::info!(event = ev::BRIDGE_STOPPING, signal = "SIGINT", "stopping"); return; }
            _ = hup.recv() => {
                if let Some(next) = reload(&current, config_path.clone(), &gateways, &api_token) {
                    current = next;
                }
                for g in &gateways {
                    g.supervisor.do_send(crate::actors::supervisor::RetryNow);
                }
            }
        }
    }
}

/// Re-read every configuration layer (token files included). Applied at run
/// time: gateway tokens and connection settings (from the next connection
/// attempt on), reconnect bounds, log level, `http.token` (the old one is
/// refused at once). `http.listen`, `state.*` and
/// `events.*` need a restart; a change there is logged. An invalid new
/// configuration is reported and the running one kept.
fn reload(
    current: &Settings,
    config_path: Option<PathBuf>,
    gateways: &[GatewayStack],
    api_token: &crate::http::ApiToken,
) -> Option<Settings> {
    let next = match Settings::load(config_path) {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(event = ev::CONFIG_INVALID, key = %e.key, problem = %e.problem, "SIGHUP: the new configuration is invalid; keeping the running one");
            }
            return None;
        }
    };
    let mut changed: Vec<String> = Vec::new();
    let mut restart_needed: Vec<String> = Vec::new();
    let multi = gateways.len() > 1 || next.multi_gateway();
    // Compared for the gateways that run: a gateway added or removed since
    // the start needs a restart, however many reloads ago that was.
    for stack in gateways {
        let (Some(g), Some(n)) = (current.gateway(&stack.id), next.gateway(&stack.id)) else {
            continue;
        };
        let name = |what: &str| {
            if multi {
                format!("{what} ({})", g.id)
            } else {
                what.to_owned()
            }
        };
        if g.token != n.token {
            changed.push(name("gateway.token"));
        }
        if g.url != n.url {
            changed.push(name("gateway.url"));
        }
        if g.scopes != n.scopes
            || g.client_id != n.client_id
            || g.client_mode != n.client_mode
            || g.display_name != n.display_name
        {
            changed.push(name("gateway client/scopes"));
        }
        if g.request_timeout != n.request_timeout || g.handshake_timeout != n.handshake_timeout {
            changed.push(name("gateway timeouts"));
        }
        if stack.required != n.required {
            restart_needed.push(name("gateway.required"));
        }
    }
    let same_ids = gateways.len() == next.gateways.len()
        && gateways.iter().all(|s| next.gateway(&s.id).is_some());
    let (r, m) = (&current.reconnect, &next.reconnect);
    if r.backoff != m.backoff || r.stable_after != m.stable_after || r.park_retry != m.park_retry {
        changed.push("reconnect".into());
    }
    if current.http.token != next.http.token {
        changed.push("http.token".into());
    }
    if current.log.level != next.log.level {
        match telemetry::set_level(&next.log.level) {
            Ok(()) => changed.push("log.level".into()),
            Err(e) => tracing::warn!("SIGHUP: log.level not changed: {e}"),
        }
    }
    restart_needed.extend(
        [
            ("http.listen", current.http.listen != next.http.listen),
            (
                "http.max_sse_subscribers",
                current.http.max_sse_subscribers != next.http.max_sse_subscribers,
            ),
            ("state.dir", current.state.dir != next.state.dir),
            (
                "events",
                current.events.buffer != next.events.buffer
                    || current.events.buffer_bytes != next.events.buffer_bytes
                    || current.events.subscriber_queue != next.events.subscriber_queue,
            ),
            ("log.format", current.log.format != next.log.format),
            ("gateways added or removed", !same_ids),
            ("nats", current.nats != next.nats),
        ]
        .into_iter()
        .filter_map(|(k, c)| c.then_some(k.to_owned())),
    );
    // Every running gateway's new settings must be usable before any is applied.
    let mut apply = Vec::new();
    for stack in gateways {
        let Some(g) = next.gateway(&stack.id) else {
            continue;
        };
        match supervisor_config(&next, g, Mode::Daemon) {
            Ok(cfg) => apply.push((stack.supervisor.clone(), cfg)),
            Err(e) => {
                tracing::error!(gateway = %stack.id, event = ev::CONFIG_INVALID, key = e.key(), problem = %e, "SIGHUP: keeping the running configuration");
                return None;
            }
        }
    }
    for (supervisor, cfg) in apply {
        supervisor.do_send(crate::actors::supervisor::Reconfigure(cfg));
    }
    if current.http.token != next.http.token {
        // Validation kept a non-loopback listener from losing its token:
        // setting it is always safe. Set before `config.reloaded` is
        // logged, so whoever waits for that line sees the new token in force.
        api_token.set(next.http.token.clone());
    }
    tracing::info!(event = ev::CONFIG_RELOADED, changed = %changed.join(", "), restart_needed = %restart_needed.join(", "), "SIGHUP: configuration reloaded");
    Some(next)
}
