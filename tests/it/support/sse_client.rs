//! A small SSE client for `GET /v1/events`: accumulate bytes, split on blank lines, parse
//! fields.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::app::TestApp;

/// How long [`open`] waits for the stream head and [`SseClient::next`] for an event.
pub const SSE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<u64>,
    /// `message` when the block has no `event:` line (SSE default).
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data of {self:?} is not JSON: {e}"))
    }

    pub fn payload(&self) -> Value {
        self.json()["payload"].clone()
    }

    pub fn is_bridge(&self) -> bool {
        self.event.starts_with("bridge.")
    }
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, awc::error::PayloadError>>>>;

pub struct SseClient {
    body: Body,
    buf: Vec<u8>,
    ended: bool,
}

/// How a read ended when it did not give an event.
#[derive(Debug, PartialEq)]
pub enum SseEnd {
    /// The stream ended cleanly.
    Closed,
    /// Nothing within the timeout.
    Timeout,
    /// The stream broke.
    Error(String),
}

pub fn no_timeout_client() -> awc::Client {
    awc::Client::builder().disable_timeout().finish()
}

/// Open `path` as an event stream; panics unless the answer is a 200 stream.
pub async fn open(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> SseClient {
    let mut req = no_timeout_client().get(app.url(path));
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let res = tokio::time::timeout(SSE_TIMEOUT, req.send())
        .await
        .expect("stream head within the timeout")
        .expect("GET /v1/events reaches the bridge");
    assert_eq!(res.status().as_u16(), 200, "GET {path}");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert_eq!(ct, "text/event-stream", "GET {path}");
    SseClient {
        body: Box::pin(res),
        buf: Vec::new(),
        ended: false,
    }
}

/// Parse one block (the text between blank lines); `None` for comment-only
/// or field-less blocks (nothing is dispatched for them).
fn parse_block(block: &str) -> Option<SseEvent> {
    let mut id = None;
    let mut event = None;
    let mut data: Option<String> = None;
    for line in block.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => id = Some(value.parse::<u64>().expect("id: is a whole number")),
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "retry" => {}
            other => panic!("unexpected SSE field {other:?} in block {block:?}"),
        }
    }
    let data = data?;
    Some(SseEvent {
        id,
        event: event.unwrap_or_else(|| "message".into()),
        data,
    })
}

impl SseClient {
    /// The next event, or how the stream ended / that it was quiet.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<SseEvent, SseEnd> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let text = String::from_utf8(block).expect("SSE is UTF-8");
                if let Some(ev) = parse_block(&text) {
                    return Ok(ev);
                }
                continue;
            }
            if self.ended {
                return Err(SseEnd::Closed);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(SseEnd::Timeout),
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => return Err(SseEnd::Error(e.to_string())),
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
            }
        }
    }

    pub async fn next(&mut self) -> SseEvent {
        match self.next_within(SSE_TIMEOUT).await {
            Ok(e) => e,
            Err(end) => panic!("no SSE event: {end:?}"),
        }
    }

    /// The next event that is not a `bridge.*` lifecycle message (a gap fails).
    pub async fn next_gateway_event(&mut self) -> SseEvent {
        loop {
            let e = self.next().await;
            assert_ne!(e.event, "bridge.gap", "unexpected gap: {e:?}");
            if !e.is_bridge() {
                return e;
            }
        }
    }
}
