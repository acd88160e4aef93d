//! The actors: `Supervisor` (link lifecycle), `GatewayConnection` (one
//! socket), `AgentRegistry` (agents and runs), `EventBroker` (fan-out), and the
//! messages they share.

pub mod broker;
pub mod gateway;
pub mod messages;
pub mod registry;
mod stack;
pub mod supervisor;

pub use broker::EventBroker;
pub use gateway::GatewayConnection;
pub use messages::{RequestError, Send};
pub use registry::AgentRegistry;
pub use stack::GatewayStack;
pub use supervisor::Supervisor;
