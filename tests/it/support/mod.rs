//! Test support: fake gateway (faults on demand), real gateway harness, fake model.
#![allow(dead_code)]
pub mod app;
pub mod cdp;
pub mod child_bridge;
pub mod fake_gateway;
pub mod fake_model;
pub mod nats_server;
pub mod real_gateway;
pub mod sse_client;
pub mod tcp_proxy;
