//! From validated settings to what the actors are started with: connection and
//! supervisor settings (TLS roots, device identity, stored device token), the
//! store and the registry over it.

use std::sync::Arc;

use crate::actors::gateway::ConnectionConfig;
use crate::actors::supervisor::{Mode, SupervisorConfig};
use crate::actors::{self, AgentRegistry};
use crate::config::{self, Settings};
use crate::telemetry::events as ev;
use crate::{identity, protocol, store, tls};

/// A setting that passed validation but cannot be put to use (trust roots,
/// the device key). Reported like a configuration error (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
    #[error("no gateway is configured; set [gateway] url or add [[gateways]] entries")]
    NoGateway,
}

impl SetupError {
    /// The configuration key to fix.
    pub fn key(&self) -> &'static str {
        match self {
            SetupError::Tls(_) => "gateway.tls_ca_file",
            SetupError::Identity(_) => "state.dir",
            SetupError::NoGateway => "gateway.url",
        }
    }
}

/// The connection settings a supervisor uses for gateway `g`: TLS roots for
/// `wss://`, the bridge's device identity and a stored device token when
/// `device_identity` applies (one device for the bridge; tokens are kept per
/// gateway URL).
pub fn connection_config(
    settings: &Settings,
    g: &config::GatewaySettings,
) -> Result<(ConnectionConfig, Option<Arc<identity::DeviceTokenStore>>), SetupError> {
    let tls = if g.url.to_ascii_lowercase().starts_with("wss://") {
        Some(tls::client_config(g.tls_ca_file.as_deref())?)
    } else {
        None
    };
    let mut device: Option<Arc<dyn actors::gateway::DeviceSigner>> = None;
    let mut device_token = None;
    let mut tokens = None;
    if g.uses_device_identity() {
        let id = identity::DeviceIdentity::load_or_create(&settings.state.dir)?;
        if id.was_created() {
            tracing::info!(gateway = %g.id, device_id = id.device_id(), key = %id.key_path().display(), "created a device identity; the gateway will ask for it to be approved (pairing)");
        }
        let store = identity::DeviceTokenStore::new(&settings.state.dir, id.device_id());
        // A stored token is used only if it was granted every configured
        // scope; otherwise the shared token asks for a scope upgrade.
        if let Some(t) = store.load(&g.url, protocol::ROLE)? {
            if protocol::missing_scopes(&t.scopes, &g.scopes).is_empty() {
                device_token = Some(t.token);
            } else {
                tracing::info!(gateway = %g.id, "the stored device token lacks some of the gateway's scopes; asking for a scope upgrade");
            }
        }
        device = Some(Arc::new(id));
        tokens = Some(Arc::new(store));
    }
    let config = ConnectionConfig {
        gateway: Arc::from(g.id.as_str()),
        url: g.url.clone(),
        token: g.token.as_ref().map(|t| t.expose().to_owned()),
        device_token,
        client_id: g.client_id.clone(),
        client_mode: g.client_mode.clone(),
        display_name: g.display_name.clone(),
        scopes: g.scopes.clone(),
        request_timeout: g.request_timeout,
        handshake_timeout: g.handshake_timeout,
        device,
        tls,
        max_frame_bytes: g.max_frame_bytes,
        max_pending: g.max_pending,
        max_pending_bytes: g.max_pending_bytes,
    };
    Ok((config, tokens))
}

/// The supervisor settings for gateway `g`.
pub fn supervisor_config(
    settings: &Settings,
    g: &config::GatewaySettings,
    mode: Mode,
) -> Result<SupervisorConfig, SetupError> {
    let (connection, device_tokens) = connection_config(settings, g)?;
    Ok(SupervisorConfig {
        connection: Arc::new(connection),
        backoff: settings.reconnect.backoff,
        stable_after: settings.reconnect.stable_after,
        park_retry: settings.reconnect.park_retry,
        mode,
        device_tokens,
        max_reattach: g.max_reattach,
    })
}

/// A token sent over `ws://` to another host travels in clear text: say so
/// once, at start (a reload does not repeat it).
pub(super) fn warn_insecure_transport(g: &config::GatewaySettings) {
    let plain = g.url.to_ascii_lowercase().starts_with("ws://");
    if plain && g.token.is_some() && !config::url_is_loopback(&g.url) {
        tracing::warn!(
            gateway = %g.id,
            event = ev::CONFIG_INSECURE_TRANSPORT,
            url = %config::redact_url(&g.url),
            "the gateway token is sent unencrypted over ws:// to a host that is not this machine; use wss:// (or a loopback address through an encrypted tunnel)"
        );
    }
}

/// Where gateway `id` keeps its store: `state.dir` itself for `default`
/// (as before several gateways existed), else `state.dir/gateways/<id>`.
pub fn store_dir(settings: &Settings, id: &str) -> std::path::PathBuf {
    if id == config::DEFAULT_GATEWAY {
        settings.state.dir.clone()
    } else {
        settings.state.dir.join("gateways").join(id)
    }
}

/// Gateway `id`'s registry, with its store when the store can be used. The
/// store is a cache: a damaged file is moved aside and a fresh one started;
/// a store that cannot be opened at all (unwritable directory, a newer
/// schema) is logged as `store.unavailable` with the fix, and the bridge
/// serves without it rather than not at all.
pub(super) fn registry_for(settings: &Settings, id: &str) -> AgentRegistry {
    let dir = store_dir(settings, id);
    let unavailable = |e: &store::StoreError, what: &str| {
        tracing::error!(gateway = %id, event = ev::STORE_UNAVAILABLE, dir = %dir.display(), error = %e, "{what}");
    };
    let opened = match open_store(&dir, id) {
        Err(e) if e.is_corrupt() => match store::move_aside(&dir) {
            Ok(to) => {
                unavailable(&e, &format!("the store was damaged; moved it aside to {} and started an empty one (it refills from the gateway)", to.display()));
                open_store(&dir, id)
            }
            Err(io) => {
                tracing::error!(gateway = %id, event = ev::STORE_UNAVAILABLE, dir = %dir.display(), error = %io, "could not move the damaged store aside");
                Err(e)
            }
        },
        other => other,
    };
    match opened {
        Ok(persisted) => {
            tracing::info!(gateway = %id, agents = persisted.agents.len(), runs = persisted.runs.len(), dir = %dir.display(), "loaded the store");
            AgentRegistry::with_store(persisted, id)
        }
        Err(e) => {
            unavailable(&e, "running without the store: agents and runs are not kept across restarts until it is fixed (the error says how), then restart");
            AgentRegistry::without_store(id)
        }
    }
}

/// Open the store in `dir` and load what it holds for a registry.
fn open_store(
    dir: &std::path::Path,
    id: &str,
) -> Result<actors::registry::Persisted, store::StoreError> {
    let store = store::Store::open(dir)?;
    let agents = store.load_agents()?;
    let mut runs = Vec::new();
    for a in &agents {
        runs.extend(store.load_runs(&a.id, actors::registry::RUNS_KEPT)?);
    }
    let writer = store::StoreWriter::spawn_for(store, id)?;
    Ok(actors::registry::Persisted {
        agents,
        runs,
        writer,
    })
}
