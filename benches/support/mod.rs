pub mod clients;
pub mod footprint;
pub mod frames;
pub mod gateway;
pub mod jetstream;
pub mod jetstream_limit;
// The integration tests' `nats-server -js` harness, shared rather than copied.
#[allow(dead_code)]
#[path = "../../tests/it/support/nats_server.rs"]
pub mod nats_server;
pub mod procfs;
pub mod report;
pub mod sse;
