//! One gateway's actors as the rest of the program holds them: addresses only.
//! Started by `app`; used by `http`, the signal handlers and shutdown.

use std::sync::Arc;

use actix::Addr;

use super::{AgentRegistry, EventBroker, Supervisor};

/// One gateway's actors: its link (`Supervisor` + `GatewayConnection`), its
/// registry and its event broker.
#[derive(Clone)]
pub struct GatewayStack {
    pub id: Arc<str>,
    pub required: bool,
    pub supervisor: Addr<Supervisor>,
    pub registry: Addr<AgentRegistry>,
    pub broker: Addr<EventBroker>,
    /// The thread the stack's actors run on (stopped last by `app::Stopper`).
    pub arbiter: actix::dev::ArbiterHandle,
}
