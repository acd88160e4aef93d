//! Integration tests: one binary, files grouped by behaviour.
mod support;

mod browser;
mod cli;
mod events;
mod gateways;
mod handshake;
mod http_api;
mod identity;
mod logs;
mod nats;
mod nats_ha;
mod nats_rpc;
mod notify;
mod real_gateway;
mod real_multi;
mod real_pairing;
mod real_resilience;
mod reconnect;
mod reload;
mod rpc;
mod shutdown;
mod sse;
mod store;
mod tls;
