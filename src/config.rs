//! Settings: layered with the `config` crate into one typed [`Settings`], one
//! struct per section, every bad key reported at once.
//!
//! Layers, later wins: `config/default.toml` (compiled in, so the documented
//! defaults are the real ones) → `/etc/openclaw-bridge/config.toml` if present →
//! `--config FILE` → `OPENCLAW_BRIDGE__SECTION__KEY` → `OPENCLAW_GATEWAY_URL` /
//! `OPENCLAW_GATEWAY_TOKEN`.
//!
//! This file: [`Settings`] and its loading; each section's keys live in a
//! submodule (`gateways`, `sections`, `nats`, `cors`), the key names in
//! `keys`, the layers in `sources`.

use std::path::PathBuf;

mod cors;
mod errors;
mod gateways;
mod keys;
mod nats;
mod reader;
mod render;
mod secret;
mod sections;
mod sources;
#[cfg(test)]
mod tests;

pub use errors::{ConfigError, ConfigErrors};
pub use gateways::{gateway_id_ok, url_is_loopback, DeviceIdentityMode, GatewaySettings};
pub use keys::{CLIENT_IDS, CLIENT_MODES, SCOPES};
pub use nats::{NatsSettings, READ_METHODS as NATS_READ_METHODS};
pub use reader::read_token_file;
pub use secret::{redact_url, Secret};
pub use sections::{
    EventsSettings, HttpSettings, LogFormat, LogSettings, ReconnectSettings, StateSettings,
};
pub use sources::Sources;

use gateways::read_gateways;
use keys::unknown_keys;
use nats::read_nats;
use reader::Reader;
use sections::{read_events, read_http, read_log, read_reconnect, read_state};

/// The built-in defaults: the documented file itself.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
/// The system-wide file, read when present.
pub const SYSTEM_CONFIG: &str = "/etc/openclaw-bridge/config.toml";

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// At least one; ids are unique. `[gateway]` alone gives one entry.
    pub gateways: Vec<GatewaySettings>,
    pub reconnect: ReconnectSettings,
    pub http: HttpSettings,
    pub state: StateSettings,
    pub events: EventsSettings,
    pub log: LogSettings,
    /// `None`: NATS publishing is off.
    pub nats: Option<NatsSettings>,
}

impl Settings {
    /// Load and validate from the real process environment.
    pub fn load(file: Option<PathBuf>) -> Result<Settings, ConfigErrors> {
        Settings::load_from(&Sources::from_process(file))
    }

    /// Load and validate from explicit sources.
    pub fn load_from(src: &Sources) -> Result<Settings, ConfigErrors> {
        let cfg = src.layered()?;

        let mut r = Reader {
            cfg,
            errors: Vec::new(),
        };
        unknown_keys(&r.cfg, &mut r.errors);

        // [gateway] or [[gateways]]
        let env_token = src.env.get("OPENCLAW_GATEWAY_TOKEN").map(String::as_str);
        let env_url = src
            .env
            .get("OPENCLAW_GATEWAY_URL")
            .is_some_and(|u| !u.is_empty());
        let gateways = read_gateways(&mut r, env_token, env_url);

        let reconnect = read_reconnect(&mut r);
        let http = read_http(&mut r);
        let state = read_state(&mut r, &src.env);
        let events = read_events(&mut r);
        let log = read_log(&mut r);

        // [nats] (absent: off)
        let nats = read_nats(&mut r);

        match (reconnect, http) {
            (Some(reconnect), Some(http)) if r.errors.is_empty() && !gateways.is_empty() => {
                Ok(Settings {
                    gateways,
                    reconnect,
                    http,
                    state,
                    events,
                    log,
                    nats,
                })
            }
            _ => Err(ConfigErrors(r.errors)),
        }
    }

    /// The gateway the routes without a gateway id serve (`/v1/agents`, …)
    /// and `call` uses by default: the one with id `default`, else the only
    /// one. `None` with several gateways and none called `default`.
    pub fn primary(&self) -> Option<&GatewaySettings> {
        self.gateways
            .iter()
            .find(|g| g.id == DEFAULT_GATEWAY)
            .or(match self.gateways.as_slice() {
                [only] => Some(only),
                _ => None,
            })
    }

    /// A gateway by id.
    pub fn gateway(&self, id: &str) -> Option<&GatewaySettings> {
        self.gateways.iter().find(|g| g.id == id)
    }

    /// Whether several gateways are configured (`[[gateways]]`).
    pub fn multi_gateway(&self) -> bool {
        self.gateways.len() > 1
            || self
                .gateways
                .first()
                .is_some_and(|g| g.id != DEFAULT_GATEWAY)
    }
}

/// The id of a single `[gateway]` unless `gateway.id` names it otherwise.
pub const DEFAULT_GATEWAY: &str = "default";
