//! The publishes in flight and their JetStream acknowledgements, as a plain
//! type: no NATS client, no clock of its own (the caller passes `now`).
//!
//! The publisher sends each message with the reply subject
//! `<inbox>.<token>` and reads every acknowledgement from one subscription
//! on `<inbox>.*`. Before, each publish was an async-nats request: its own
//! inbox, a oneshot, a boxed future with two timers and an untagged JSON
//! parse, about half the publisher's CPU per event.
//!
//! Tokens count up from 1, one per publish. Answers may come in any order;
//! outcomes are handed back in publish order (so the published counter and
//! the loss ranges follow the events' order), and the oldest publish that
//! is still unanswered past its deadline counts as failed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// What JetStream answered for one publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Stored,
    Failed(String),
}

#[derive(Debug)]
struct Slot {
    /// The event's bridge id; `None` for a marker.
    id: Option<u64>,
    sent: Instant,
    answer: Option<Outcome>,
}

/// Publishes awaiting an acknowledgement, oldest first.
#[derive(Debug)]
pub struct AckWindow {
    /// The token of `slots[0]`.
    base: u64,
    slots: VecDeque<Slot>,
}

impl AckWindow {
    pub fn new() -> Self {
        AckWindow {
            base: 1,
            slots: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// A publish of event `id` (a marker: `None`) sent at `now`; its token.
    pub fn push(&mut self, id: Option<u64>, now: Instant) -> u64 {
        let token = self.base + self.slots.len() as u64;
        self.slots.push_back(Slot {
            id,
            sent: now,
            answer: None,
        });
        token
    }

    /// Record the answer for `token`; false when no publish in flight has it
    /// (already settled or expired, or not ours): the answer is ignored.
    pub fn answer(&mut self, token: u64, outcome: Outcome) -> bool {
        let Some(i) = token.checked_sub(self.base) else {
            return false;
        };
        match usize::try_from(i).ok().and_then(|i| self.slots.get_mut(i)) {
            Some(slot) if slot.answer.is_none() => {
                slot.answer = Some(outcome);
                true
            }
            _ => false,
        }
    }

    /// The oldest publish, once it is answered, or once it has waited
    /// `timeout` (then `Failed`): its id and outcome.
    pub fn pop(&mut self, now: Instant, timeout: Duration) -> Option<(Option<u64>, Outcome)> {
        let front = self.slots.front()?;
        let outcome = match &front.answer {
            Some(o) => o.clone(),
            None if now.saturating_duration_since(front.sent) >= timeout => {
                Outcome::Failed(format!("no JetStream ack within {timeout:?}"))
            }
            None => return None,
        };
        let slot = self.slots.pop_front()?;
        self.base += 1;
        Some((slot.id, outcome))
    }

    /// When the oldest publish times out, if it is still unanswered then.
    pub fn deadline(&self, timeout: Duration) -> Option<Instant> {
        self.slots.front().map(|s| s.sent + timeout)
    }
}

/// The reply subject of publish `token`.
pub fn reply_subject(inbox: &str, token: u64) -> String {
    format!("{inbox}.{token}")
}

/// The token of an acknowledgement's subject (`<inbox>.<token>`).
pub fn token_of(subject: &str) -> Option<u64> {
    subject.rsplit_once('.')?.1.parse().ok()
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

/// A publish acknowledgement: `{"stream":…,"seq":…}` or `{"error":{…}}`.
#[derive(Deserialize)]
struct PubAck<'a> {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default, borrow)]
    stream: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
}

/// What an acknowledgement message says. `no_responders`: the server had
/// no stream for the subject (status 503, empty body).
pub fn outcome(no_responders: bool, payload: &[u8]) -> Outcome {
    if no_responders {
        return Outcome::Failed("no JetStream stream captures the subject (no responders)".into());
    }
    match serde_json::from_slice::<PubAck>(payload) {
        Ok(PubAck { error: Some(e), .. }) => Outcome::Failed(format!(
            "JetStream refused the message: {} (code {}, err_code {})",
            e.description, e.code, e.err_code
        )),
        Ok(PubAck {
            stream: Some(_),
            seq: Some(_),
            ..
        }) => Outcome::Stored,
        Ok(_) | Err(_) => Outcome::Failed(format!(
            "unreadable JetStream ack: {}",
            String::from_utf8_lossy(&payload[..payload.len().min(200)])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(3);

    #[test]
    fn outcomes_come_back_in_publish_order_whatever_order_the_answers_take() {
        let t0 = Instant::now();
        let mut w = AckWindow::new();
        let a = w.push(Some(10), t0);
        let b = w.push(None, t0);
        let c = w.push(Some(11), t0);
        assert_eq!((a, b, c), (1, 2, 3));
        assert!(w.answer(c, Outcome::Stored));
        assert!(w.answer(b, Outcome::Stored));
        // The oldest is unanswered: nothing is handed back yet.
        assert_eq!(w.pop(t0, T), None);
        assert!(w.answer(a, Outcome::Failed("full".into())));
        assert_eq!(
            w.pop(t0, T),
            Some((Some(10), Outcome::Failed("full".into())))
        );
        assert_eq!(w.pop(t0, T), Some((None, Outcome::Stored)));
        assert_eq!(w.pop(t0, T), Some((Some(11), Outcome::Stored)));
        assert!(w.is_empty());
        // Tokens go on counting from where they were.
        assert_eq!(w.push(None, t0), 4);
    }

    #[test]
    fn an_unanswered_publish_fails_at_its_deadline_and_a_late_answer_is_ignored() {
        let t0 = Instant::now();
        let mut w = AckWindow::new();
        let a = w.push(Some(1), t0);
        let b = w.push(Some(2), t0 + Duration::from_secs(1));
        assert_eq!(w.deadline(T), Some(t0 + T));
        assert_eq!(w.pop(t0 + T - Duration::from_millis(1), T), None);
        let (id, out) = w.pop(t0 + T, T).expect("the oldest expires");
        assert_eq!(id, Some(1));
        assert!(matches!(out, Outcome::Failed(m) if m.contains("no JetStream ack")));
        // Its answer arrives after all: not ours any more.
        assert!(!w.answer(a, Outcome::Stored));
        // Twice, or a token never issued: ignored too.
        assert!(w.answer(b, Outcome::Stored));
        assert!(!w.answer(b, Outcome::Stored));
        assert!(!w.answer(99, Outcome::Stored));
        assert!(!w.answer(0, Outcome::Stored));
        assert_eq!(w.pop(t0, T), Some((Some(2), Outcome::Stored)));
        assert_eq!(w.deadline(T), None);
    }

    #[test]
    fn acknowledgements_are_read_as_jetstream_writes_them() {
        assert_eq!(
            outcome(false, br#"{"stream":"OPENCLAW","seq":42}"#),
            Outcome::Stored
        );
        assert_eq!(
            outcome(false, br#"{"stream":"OPENCLAW","seq":42,"duplicate":true}"#),
            Outcome::Stored
        );
        let refused = outcome(
            false,
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        );
        assert!(
            matches!(&refused, Outcome::Failed(m) if m.contains("maximum messages exceeded") && m.contains("10077")),
            "{refused:?}"
        );
        assert!(matches!(outcome(true, b""), Outcome::Failed(m) if m.contains("no responders")));
        assert!(
            matches!(outcome(false, b"garbage"), Outcome::Failed(m) if m.contains("unreadable"))
        );
        assert!(matches!(outcome(false, b"{}"), Outcome::Failed(_)));
        // Not an acknowledgement, though it has a `seq` (an envelope, say).
        assert!(matches!(
            outcome(false, br#"{"gateway":"default","seq":7}"#),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn tokens_round_trip_through_the_reply_subject() {
        let s = reply_subject("_INBOX.abc", 77);
        assert_eq!(s, "_INBOX.abc.77");
        assert_eq!(token_of(&s), Some(77));
        assert_eq!(token_of("_INBOX.abc.x"), None);
        assert_eq!(token_of("nodots"), None);
    }
}
