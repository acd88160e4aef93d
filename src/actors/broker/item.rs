//! What the broker's ring holds: one [`BrokerItem`] per event, shared (`Arc`)
//! by every subscriber and sink, and the subscribers' [`Filter`].

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use bytestring::ByteString;

use crate::protocol::{GatewayEvent, SeqSkip, Text};

/// One event as every subscriber and sink reads it: the typed fields decoded
/// once by the connection, never re-parsed downstream.
#[derive(Debug)]
pub struct BrokerItem {
    /// The bridge's event id (SSE `id:`, NATS `bridge_id`).
    pub id: u64,
    /// Gateway sessions (hello-ok) this broker has seen when it published
    /// this item, counted from the supervisor's link changes (NATS `epoch`).
    pub epoch: u64,
    body: Body,
    /// The item rendered by a transport (SSE), filled by the first
    /// subscriber that sends it and shared by the others: one rendering per
    /// event, whatever the number of subscribers.
    pub rendered: OnceLock<Bytes>,
}

#[derive(Debug)]
enum Body {
    Gateway(Arc<GatewayEvent>),
    /// `bridge.*`: lifecycle and gap messages.
    Bridge {
        name: &'static str,
        payload: ByteString,
    },
}

impl BrokerItem {
    pub fn gateway(id: u64, epoch: u64, event: Arc<GatewayEvent>) -> BrokerItem {
        BrokerItem {
            id,
            epoch,
            body: Body::Gateway(event),
            rendered: OnceLock::new(),
        }
    }

    /// A `bridge.*` message with its payload's JSON text.
    pub fn bridge(id: u64, epoch: u64, name: &'static str, payload: String) -> BrokerItem {
        BrokerItem {
            id,
            epoch,
            body: Body::Bridge {
                name,
                payload: ByteString::from(payload),
            },
            rendered: OnceLock::new(),
        }
    }

    /// The gateway event name, or `bridge.*`.
    pub fn name(&self) -> &str {
        match &self.body {
            Body::Gateway(e) => &e.name,
            Body::Bridge { name, .. } => name,
        }
    }

    /// The name, shareable (a static or the event's own [`Text`]).
    pub fn name_text(&self) -> Text {
        match &self.body {
            Body::Gateway(e) => e.name.clone(),
            Body::Bridge { name, .. } => Text::from_static(name),
        }
    }

    /// Whether this is a `bridge.*` message rather than a gateway event.
    pub fn is_bridge(&self) -> bool {
        matches!(self.body, Body::Bridge { .. })
    }

    /// The gateway's outer `seq` (`None` for `bridge.*` and direct sends).
    pub fn seq(&self) -> Option<u64> {
        self.event().and_then(|e| e.seq)
    }

    /// The payload's JSON text as the gateway sent it.
    pub fn payload(&self) -> &str {
        match &self.body {
            Body::Gateway(e) => e.payload_json(),
            Body::Bridge { payload, .. } => payload,
        }
    }

    pub fn agent_id(&self) -> Option<&str> {
        self.event().and_then(|e| e.agent_id())
    }

    pub fn run_id(&self) -> Option<&str> {
        self.event().and_then(|e| e.run_id())
    }

    /// The payload's own `seq` (`agent`, `chat`), e.g. for dedupe ids.
    pub fn payload_seq(&self) -> Option<u64> {
        self.event().and_then(|e| e.payload_seq())
    }

    /// Outer seqs the gateway skipped just before this event.
    pub fn seq_gap(&self) -> Option<SeqSkip> {
        self.event().and_then(|e| e.gap)
    }

    /// The decoded gateway event (typed view), `None` for `bridge.*`.
    pub fn event(&self) -> Option<&GatewayEvent> {
        match &self.body {
            Body::Gateway(e) => Some(e),
            Body::Bridge { .. } => None,
        }
    }

    /// What the item costs the ring, for `events.buffer_bytes`: the payload
    /// (a gateway event's payload keeps its frame alive, which is little more)
    /// plus a fixed overhead for the item and its name and ids.
    pub(super) fn cost(&self) -> usize {
        self.payload().len() + 160
    }
}

/// What a subscriber wants. Empty means everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub events: Vec<String>,
    pub agent: Option<String>,
    pub run: Option<String>,
}

impl Filter {
    pub fn matches(&self, item: &BrokerItem) -> bool {
        // Bridge lifecycle and gap messages reach every subscriber.
        if item.is_bridge() {
            return true;
        }
        let name = item.name();
        if !self.events.is_empty() && !self.events.iter().any(|e| name == e) {
            return false;
        }
        if let Some(a) = &self.agent {
            if item.agent_id() != Some(a.as_str()) {
                return false;
            }
        }
        if let Some(r) = &self.run {
            if item.run_id() != Some(r.as_str()) {
                return false;
            }
        }
        true
    }
}
