//! In-repo fake OpenClaw gateway (protocol 4; see the gateway protocol, PROTOCOL.md in the project's shared docs) for integration
//! tests, able to inject the faults the real gateway cannot be made to produce on demand.
//!
//! The WebSocket server is written by hand on a `tokio::net::TcpListener` (HTTP upgrade parsed
//! here, frames through `actix_http::ws::Codec`), so a test controls every byte: garbage text,
//! fragmented messages, oversized frames, half-open sockets (`go_silent`), abrupt TCP drops
//! (`drop_tcp`, FIN) and resets (`reset_tcp`, RST).
//!
//! The server runs on its own OS thread with its own current-thread tokio runtime, so it does not
//! depend on the test's runtime. [`FakeGateway`] is the `Send + Sync` handle; dropping it shuts
//! the server down (every live socket is dropped without a close frame).
//!
//! Per-connection actions (`send_event`, `close`, `drop_tcp`, …) go to the **latest live
//! connection** (the most recently accepted TCP connection that is still open), through one
//! command channel per connection, so they keep their order on the wire.
//!
//! Default behaviour per connection, like the real gateway:
//! 1. `connect.challenge` event (no `seq`), unless `send_challenge` is false;
//! 2. the first frame must be a `connect` request (else `INVALID_REQUEST` + close 1008, or close
//!    1000 for non-JSON; no connect within `handshake_timeout` closes 1000);
//! 3. the answer depends on [`ConnectMode`]; with `Hello`: protocol range check (1002), token check
//!    (1008, exact token-mismatch error), then hello-ok;
//! 4. after hello-ok, requests go to the responder ([`Reply`]), events carry an outer `seq`
//!    starting at 1, pings are answered, optional `tick` events.
//!
//! Frame limits as on the real gateway: 64 KiB before hello-ok, 25 MiB after; a bigger frame
//! closes 1009 with an empty reason.
//!
//! Files: `options` (what a test configures: [`FakeOptions`], [`ConnectMode`], [`Reply`], …),
//! `handle` (the [`FakeGateway`] handle a test drives), `state` (what the handle and the
//! connections share), `server` (accept loop), `upgrade` (HTTP upgrade), `connection` (one
//! connection: handshake, requests, commands), `runs` ([`FakeRuns`], accepted runs kept like the
//! real gateway) and `self_tests`.

mod connection;
mod handle;
mod options;
mod runs;
mod server;
mod state;
mod upgrade;

#[cfg(test)]
mod self_tests;

#[allow(unused_imports)] // the public surface of the former single file
pub use handle::FakeGateway;
#[allow(unused_imports)] // the public surface of the former single file
pub use options::{
    default_reply, gateway_error, ConnectMode, FakeOptions, Reply, Request, UpgradeMode,
    MAX_BUFFERED_BYTES, MAX_PAYLOAD, PRE_AUTH_MAX_FRAME, TOKEN_MISMATCH_MESSAGE,
};
#[allow(unused_imports)] // the public surface of the former single file
pub use runs::FakeRuns;
#[allow(unused_imports)] // the public surface of the former single file
pub use upgrade::UpgradeRequest;
