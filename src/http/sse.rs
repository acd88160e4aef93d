//! `GET /v1/events`: Server-Sent Events from the `EventBroker`.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;

use super::{ApiError, ApiState};
use crate::actors::broker::{BrokerItem, Filter, Subscribe};

/// A comment line this often keeps proxies from closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
struct EventsQuery {
    event: Option<String>,
    agent: Option<String>,
    run: Option<String>,
    since: Option<String>,
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// Items already queued are sent together, up to this many per chunk.
const BATCH: usize = 64;

struct StreamState {
    rx: tokio::sync::mpsc::Receiver<Arc<BrokerItem>>,
    keepalive: tokio::time::Interval,
    greeted: bool,
}

/// Whether `s` holds a CR or LF; branch-free over 32-byte blocks so it
/// vectorises (this runs over every event's data).
fn has_line_break(s: &str) -> bool {
    let b = s.as_bytes();
    let mut blocks = b.chunks_exact(32);
    for block in &mut blocks {
        if block
            .iter()
            .fold(false, |a, &c| a | (c == b'\n') | (c == b'\r'))
        {
            return true;
        }
    }
    blocks.remainder().iter().any(|&c| c == b'\n' || c == b'\r')
}

fn push_frame(s: &mut String, item: &BrokerItem) {
    use std::fmt::Write as _;
    let _ = write!(s, "id: {}\nevent: ", item.id);
    // The name comes from the gateway: a line break in it would end the
    // field and let the rest pose as other fields.
    if has_line_break(&item.name) {
        s.push_str(&item.name.replace(['\r', '\n'], " "));
    } else {
        s.push_str(&item.name);
    }
    // The payload is the gateway's JSON text as sent, which may be
    // pretty-printed. Raw line breaks in JSON are only whitespace between
    // tokens (never inside strings), so one `data:` line per line (SSE ends
    // a line at CR, LF or CRLF; empty ones dropped) is the same JSON once the
    // client joins them with "\n", as SSE clients do.
    if !has_line_break(&item.data) {
        // Compact JSON (what the gateway sends): one line as it is.
        s.push_str("\ndata: ");
        s.push_str(&item.data);
        s.push_str("\n\n");
        return;
    }
    let mut lines = item.data.split(['\r', '\n']).filter(|l| !l.is_empty());
    s.push_str("\ndata: ");
    s.push_str(lines.next().unwrap_or_default());
    for line in lines {
        s.push_str("\ndata: ");
        s.push_str(line);
    }
    s.push_str("\n\n");
}

pub async fn events(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, true)?;
    let gateway = state.gateways.resolve(&req)?;
    let q = web::Query::<EventsQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?
        .into_inner();
    let since_raw = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(q.since);
    let since = match since_raw.as_deref().map(str::trim) {
        None | Some("") => None,
        // u64::MAX is refused too: the broker replays from `since + 1`.
        Some(s) => Some(
            s.parse::<u64>()
                .ok()
                .filter(|n| *n < u64::MAX)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                "Last-Event-ID / since must be a bridge event id (a whole number), got {s:?}"
            ))
                })?,
        ),
    };
    let list = |s: Option<String>| -> Vec<String> {
        s.map(|s| {
            s.split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
    };
    let filter = Filter {
        events: list(q.event),
        agent: q.agent.filter(|a| !a.is_empty()),
        run: q.run.filter(|r| !r.is_empty()),
    };
    let label = req
        .peer_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let sub = gateway
        .broker
        .send(Subscribe {
            filter,
            since,
            label,
        })
        .await
        .map_err(|_| ApiError::Internal("the event broker is not running".into()))?;
    let keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let state = StreamState {
        rx: sub.rx,
        keepalive,
        greeted: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if !st.greeted {
            st.greeted = true;
            return Some((Ok(Bytes::from_static(b"retry: 1000\n: connected\n\n")), st));
        }
        tokio::select! {
            item = st.rx.recv() => {
                let item = item?;
                // Send what is already queued in the same chunk.
                let queued = st.rx.len().min(BATCH);
                let mut buf = String::with_capacity((item.data.len() + 64) * (queued + 1));
                push_frame(&mut buf, &item);
                for _ in 0..BATCH {
                    match st.rx.try_recv() {
                        Ok(next) => push_frame(&mut buf, &next),
                        Err(_) => break,
                    }
                }
                let buf = Bytes::from(buf);
                Some((Ok::<_, actix_web::Error>(buf), st))
            }
            _ = st.keepalive.tick() => Some((Ok(Bytes::from_static(b": keepalive\n\n")), st)),
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, data: &str) -> String {
        let mut s = String::new();
        push_frame(
            &mut s,
            &BrokerItem {
                id: 7,
                name: name.into(),
                agent_id: None,
                run_id: None,
                data: data.into(),
            },
        );
        s
    }

    #[test]
    fn compact_data_is_one_line() {
        assert_eq!(
            frame("agent", r#"{"seq":1,"payload":{}}"#),
            "id: 7\nevent: agent\ndata: {\"seq\":1,\"payload\":{}}\n\n"
        );
    }

    #[test]
    fn line_breaks_in_data_and_name_keep_the_framing() {
        let s = frame(
            "a\nid: 9\r",
            "{\"seq\":null,\"payload\":{\r\n \"x\": \"y\\n\"\r}}",
        );
        assert_eq!(
            s,
            "id: 7\nevent: a id: 9 \ndata: {\"seq\":null,\"payload\":{\ndata:  \"x\": \"y\\n\"\ndata: }}\n\n"
        );
        // One message: the only blank line is the terminator.
        assert_eq!(s.matches("\n\n").count(), 1);
        assert!(s.ends_with("\n\n"));
        let joined: Vec<&str> = s.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        let v: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
        assert_eq!(v["payload"]["x"], "y\n");
    }
}
