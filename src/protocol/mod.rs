//! The gateway's wire protocol (OpenClaw protocol 4): frames, the error object,
//! the handshake and typed events. Serde types and pure functions only: no
//! actors, no I/O. The README's "How it works" and "Running a real gateway
//! locally" describe the gateway this was verified against (openclaw 2026.9.x).
//!
//! Inbound text is decoded once into a borrowed [`Inbound`] frame; payloads stay
//! raw JSON (`RawValue`) until a consumer that knows the event parses them, so
//! unknown events and fields pass through untouched.

mod error;
mod events;
mod frames;
mod handshake;
mod text;

pub use error::GatewayError;
pub use events::{
    AgentEvent, ChatEvent, EventKind, GatewayEvent, HealthEvent, RunPhase, SeqSkip, ShutdownEvent,
};
pub use frames::{decode, encode_request, DecodeError, EventFrame, Inbound, ResponseFrame};
pub use handshake::{
    missing_scopes, Challenge, ClientInfo, ConnectAuth, ConnectParams, DeviceProof, HelloOk,
    HelloPolicy, HelloServer, PROTOCOL_VERSION, ROLE,
};
pub use text::Text;
