//! Harness for the real OpenClaw gateway (`openclaw@2026.9.6`, protocol 4),
//! run offline on loopback (PROTOCOL.md §8).
//!
//! ```ignore
//! if !RealGateway::available() { return; }
//! let gw = real_gateway::shared();            // one started, ready instance
//! let url = gw.url();                          // ws://127.0.0.1:PORT/
//! // or a private one that a test may disturb:
//! let gw = RealGateway::start(GatewayOptions::default());
//! let hello = gw.wait_ready(Duration::from_secs(120));
//! gw.signal("USR2");
//! ```
//!
//! Every instance has its own temp dir (HOME, config, logs, TMPDIR), its own
//! fake model server, a free loopback port and a random token. The gateway
//! runs in its own process group with the offline guard preloaded
//! (`guard.mjs`); the guard also ends the gateway when the test process is
//! gone, because the [`shared`] instance lives in a static and is never
//! dropped. Leftover instance dirs of dead test processes are removed the next
//! time the harness is used.
//!
//! A gateway that must see a non-loopback peer (device identity, pairing,
//! empty scopes; PROTOCOL.md §8) runs inside a [`NetnsPair`] (root only):
//! `GatewayOptions { netns: Some(net.gw.clone()), bind_custom_host:
//! Some(NETNS_GW_ADDR.into()), .. }`; its readiness probe and `cli` then run
//! inside that namespace too (`tests/it/real_pairing.rs`).
//!
//! Env:
//! - `OPENCLAW_BRIDGE_SKIP_REAL=1`: [`RealGateway::available`] returns false.
//! - `OPENCLAW_CACHE_DIR`: install location (default `<repo>/.cache/openclaw`).
//! - `KEEP_GATEWAY=1`: keep instance dirs after drop (paths are printed).
//!
//! Files: `install` (the cached install), `options` ([`GatewayOptions`] and the shared
//! constants), `instance` ([`RealGateway`] and [`shared`]), `hello` (the harness's own
//! handshake), `netns` ([`NetnsPair`]), `process` (bounded commands, ports, process
//! environments) and `self_tests`.

mod hello;
mod install;
mod instance;
mod netns;
mod options;
mod process;

#[cfg(test)]
mod self_tests;

#[allow(unused_imports)] // the public surface of the former single file
pub use hello::{connect_frame, try_hello};
#[allow(unused_imports)] // the public surface of the former single file
pub use install::{install, Install};
#[allow(unused_imports)] // the public surface of the former single file
pub use instance::{shared, RealGateway};
#[allow(unused_imports)] // the public surface of the former single file
pub use netns::{netns_pids, nsenter_prefix, NetnsPair, NETNS_CL_ADDR, NETNS_GW_ADDR};
#[allow(unused_imports)] // the public surface of the former single file
pub use options::{merge_json, GatewayOptions, INSTANCE_ENV, READY_TIMEOUT};
#[allow(unused_imports)] // the public surface of the former single file
pub use process::{free_port, process_env, run_bounded};
