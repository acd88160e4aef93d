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

fn push_frame(s: &mut String, item: &BrokerItem) {
    s.push_str("id: ");
    s.push_str(&item.id.to_string());
    s.push_str("\nevent: ");
    s.push_str(&item.name);
    s.push_str("\ndata: ");
    // `data` is compact JSON: it has no raw newlines.
    s.push_str(&item.data);
    s.push_str("\n\n");
}

pub async fn events(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, true)?;
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
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::BadRequest(format!(
                "Last-Event-ID / since must be a bridge event id (a whole number), got {s:?}"
            ))
        })?),
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
    let sub = state
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
                let mut buf = String::with_capacity(item.data.len() + 64);
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
