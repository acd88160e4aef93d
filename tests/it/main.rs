//! Integration tests: one binary, files grouped by behaviour.
mod support;

mod events;
mod handshake;
mod real_gateway;
mod rpc;
mod shutdown;
