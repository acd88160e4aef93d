//! `GET /v1/events`: Server-Sent Events from the `EventBroker`.

use std::any::Any;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Extensions;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::{ApiError, ApiState};
use crate::actors::broker::{BrokerItem, Filter, Subscribe, Subscription};
use crate::telemetry::events as ev;

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

/// Items already in the ring are sent together, up to this many per chunk.
const BATCH: usize = 64;

/// How long a client refused for `http.max_sse_subscribers` is asked to wait.
const OVERLOADED_RETRY_S: u64 = 1;

/// A second handle on a connection's socket (`on_connect`), so an event
/// stream can tell when its client went away. actix-web drops a response
/// stream only when a write fails, so a stream with nothing to send (a
/// filter that matches nothing) would otherwise outlive its client until the
/// next keepalive, holding a subscriber place (actix/actix-web#1313).
pub(super) struct PeerSocket(Cell<Option<socket2::Socket>>);

/// `on_connect`: keep a duplicate of the connection's socket.
pub(super) fn remember_peer(conn: &dyn Any, ext: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Ok(dup) = socket2::SockRef::from(tcp).try_clone() {
            ext.insert(PeerSocket(Cell::new(Some(dup))));
        }
    }
}

/// A handle on this request's client socket for [`peer_closed`], leaving
/// the connection's own for the next request on it (keep-alive).
pub(super) fn peer_socket(req: &actix_web::HttpRequest) -> Option<socket2::Socket> {
    let cell = req.conn_data::<PeerSocket>()?;
    let sock = cell.0.take()?;
    let copy = sock.try_clone().ok();
    cell.0.set(Some(sock));
    copy
}

/// Resolves once the client has closed the connection; never when that
/// cannot be told (no socket, or the client sent more bytes).
pub(super) async fn peer_closed(sock: Option<socket2::Socket>) {
    let watch = async move {
        let std: std::net::TcpStream = sock?.into();
        std.set_nonblocking(true).ok()?;
        let tcp = tokio::net::TcpStream::from_std(std).ok()?;
        let mut b = [0u8; 1];
        // EOF (or a reset) means gone; bytes mean a pipelined request, which
        // says nothing about the stream: stop watching.
        match tcp.peek(&mut b).await {
            Ok(0) | Err(_) => Some(()),
            Ok(_) => None,
        }
    };
    if watch.await.is_none() {
        std::future::pending::<()>().await;
    }
}

struct StreamState {
    sub: Subscription,
    closed: Pin<Box<dyn Future<Output = ()>>>,
    batch: Vec<Arc<BrokerItem>>,
    /// [`chunk`]'s scratch space.
    fresh: Vec<(usize, usize)>,
    keepalive: tokio::time::Interval,
    greeted: bool,
}

/// Whether `s` holds a CR or LF; branch-free over 32-byte blocks so it
/// vectorises (this runs over every event's payload).
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

/// The SSE messages of `items` (drained), as one chunk. An item nobody has
/// rendered yet is rendered straight into the chunk; the other subscribers
/// sending it copy that rendering. When every item of the chunk was new,
/// each keeps a slice of the chunk (no allocation of its own): the chunk
/// then holds only those items' messages and lives until the newest of them
/// leaves the ring. When the chunk also copies items rendered before, a
/// slice would keep those copies alive too (a subscriber catching up could
/// pin a whole batch for one new item), so each new item gets a copy of its
/// own. `fresh` is scratch space.
fn chunk(items: &mut Vec<Arc<BrokerItem>>, fresh: &mut Vec<(usize, usize)>) -> Bytes {
    let len: usize = items
        .iter()
        .map(|i| i.rendered.get().map_or(i.payload().len() + 80, Bytes::len))
        .sum();
    let mut buf = BytesMut::with_capacity(len);
    fresh.clear();
    for item in items.iter() {
        let start = buf.len();
        match item.rendered.get() {
            Some(done) => {
                buf.extend_from_slice(done);
                fresh.push((start, start));
            }
            None => {
                push_frame(&mut buf, item);
                fresh.push((start, buf.len()));
            }
        }
    }
    let buf = buf.freeze();
    let all_new = fresh.iter().all(|&(from, to)| from < to);
    for (item, &(from, to)) in items.drain(..).zip(fresh.iter()) {
        if from < to {
            let own = if all_new {
                buf.slice(from..to)
            } else {
                Bytes::copy_from_slice(&buf[from..to])
            };
            // Another subscriber may have rendered it meanwhile: either
            // rendering is the same bytes.
            let _ = item.rendered.set(own);
        }
    }
    buf
}

/// The item's SSE message: `id:`, `event:` and the data line
/// `{"seq":N|null,"payload":…}`.
fn push_frame(s: &mut BytesMut, item: &BrokerItem) {
    use std::fmt::Write as _;
    let _ = write!(s, "id: {}\nevent: ", item.id);
    // The name comes from the gateway: a line break in it would end the
    // field and let the rest pose as other fields.
    let name = item.name();
    if has_line_break(name) {
        s.extend_from_slice(name.replace(['\r', '\n'], " ").as_bytes());
    } else {
        s.extend_from_slice(name.as_bytes());
    }
    s.extend_from_slice(b"\ndata: {\"seq\":");
    match item.seq() {
        Some(n) => {
            let _ = write!(s, "{n}");
        }
        None => s.extend_from_slice(b"null"),
    }
    s.extend_from_slice(b",\"payload\":");
    // The payload is the gateway's JSON text as sent, which may be
    // pretty-printed. Raw line breaks in JSON are only whitespace between
    // tokens (never inside strings), so one `data:` line per line (SSE ends
    // a line at CR, LF or CRLF; empty ones dropped) is the same JSON once the
    // client joins them with "\n", as SSE clients do.
    let payload = item.payload();
    if !has_line_break(payload) {
        // Compact JSON (what the gateway sends): one line as it is.
        s.extend_from_slice(payload.as_bytes());
        s.extend_from_slice(b"}\n\n");
        return;
    }
    let mut lines = payload.split(['\r', '\n']).filter(|l| !l.is_empty());
    s.extend_from_slice(lines.next().unwrap_or_default().as_bytes());
    for line in lines {
        s.extend_from_slice(b"\ndata: ");
        s.extend_from_slice(line.as_bytes());
    }
    s.extend_from_slice(b"}\n\n");
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
            label: label.clone(),
        })
        .await
        .map_err(|_| ApiError::Internal("the event broker is not running".into()))?
        .map_err(|e| {
            tracing::warn!(gateway = %gateway.id, event = ev::HTTP_OVERLOADED, peer = %label, max = e.max, "event stream refused: http.max_sse_subscribers reached");
            ApiError::Overloaded {
                message: format!("{e}; retry later"),
                retry_after_s: OVERLOADED_RETRY_S,
            }
        })?;
    let keepalive = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let peer = req.conn_data::<PeerSocket>().and_then(|p| p.0.take());
    let state = StreamState {
        sub,
        closed: Box::pin(peer_closed(peer)),
        batch: Vec::with_capacity(BATCH),
        fresh: Vec::with_capacity(BATCH),
        keepalive,
        greeted: false,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if !st.greeted {
            st.greeted = true;
            return Some((Ok(Bytes::from_static(b"retry: 1000\n: connected\n\n")), st));
        }
        tokio::select! {
            more = st.sub.recv_many(&mut st.batch, BATCH) => {
                if !more {
                    return None;
                }
                // What is already in the ring goes out in the same chunk.
                let buf = chunk(&mut st.batch, &mut st.fresh);
                Some((Ok::<_, actix_web::Error>(buf), st))
            }
            _ = st.keepalive.tick() => Some((Ok(Bytes::from_static(b": keepalive\n\n")), st)),
            // Ending the stream drops the subscription at once.
            () = &mut st.closed => None,
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
    use crate::protocol::{decode, GatewayEvent, Inbound};

    /// The SSE message of a gateway event `name` with seq 7 and `payload`.
    fn frame(name: &str, payload: &str) -> String {
        let text = format!(
            r#"{{"type":"event","event":{},"seq":7,"payload":{payload}}}"#,
            serde_json::to_string(name).unwrap()
        );
        let event = match decode(&text).unwrap() {
            Inbound::Event(f) => GatewayEvent::from_frame(&f).0,
            other => panic!("{other:?}"),
        };
        let item = BrokerItem::gateway(7, 1, Arc::new(event));
        let chunk = chunk(&mut vec![Arc::new(item)], &mut Vec::new());
        String::from_utf8(chunk.to_vec()).unwrap()
    }

    #[test]
    fn compact_data_is_one_line() {
        assert_eq!(
            frame("agent", r#"{}"#),
            "id: 7\nevent: agent\ndata: {\"seq\":7,\"payload\":{}}\n\n"
        );
    }

    #[test]
    fn bridge_items_have_a_null_seq() {
        let item = BrokerItem::bridge(3, 0, "bridge.gap", r#"{"from":1}"#.into());
        assert_eq!(
            chunk(&mut vec![Arc::new(item)], &mut Vec::new()).as_ref(),
            b"id: 3\nevent: bridge.gap\ndata: {\"seq\":null,\"payload\":{\"from\":1}}\n\n"
        );
    }

    #[test]
    fn line_breaks_in_data_and_name_keep_the_framing() {
        let s = frame("a\nid: 9\r", "{\r\n \"x\": \"y\\n\"\r}");
        assert_eq!(
            s,
            "id: 7\nevent: a id: 9 \ndata: {\"seq\":7,\"payload\":{\ndata:  \"x\": \"y\\n\"\ndata: }}\n\n"
        );
        // One message: the only blank line is the terminator.
        assert_eq!(s.matches("\n\n").count(), 1);
        assert!(s.ends_with("\n\n"));
        let joined: Vec<&str> = s.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        let v: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
        assert_eq!(v["payload"]["x"], "y\n");
    }

    /// A `bridge.gap` item with id `id`, not rendered yet.
    fn gap(id: u64) -> Arc<BrokerItem> {
        Arc::new(BrokerItem::bridge(
            id,
            0,
            "bridge.gap",
            format!(r#"{{"from":{id}}}"#),
        ))
    }

    #[test]
    fn a_chunk_renders_each_item_once_and_shares_it() {
        let msg = |id: u64| {
            format!("id: {id}\nevent: bridge.gap\ndata: {{\"seq\":null,\"payload\":{{\"from\":{id}}}}}\n\n")
        };
        let (a, b, c) = (gap(1), gap(2), gap(3));
        // `b` was sent by another subscriber already.
        let mut scratch = Vec::new();
        let first = chunk(&mut vec![b.clone()], &mut scratch);
        assert_eq!(first.as_ref(), msg(2).as_bytes());
        let mut batch = vec![a.clone(), b.clone(), c.clone()];
        let whole = chunk(&mut batch, &mut scratch);
        assert!(batch.is_empty(), "the batch is drained");
        assert_eq!(
            whole.as_ref(),
            format!("{}{}{}", msg(1), msg(2), msg(3)).as_bytes()
        );
        // Each item keeps exactly its own message, and a later subscriber
        // gets the same bytes from it.
        for (item, id) in [(&a, 1), (&b, 2), (&c, 3)] {
            assert_eq!(
                item.rendered.get().map(|r| r.to_vec()),
                Some(msg(id).into_bytes())
            );
        }
        let again = chunk(&mut vec![c.clone(), a.clone()], &mut scratch);
        assert_eq!(again.as_ref(), format!("{}{}", msg(3), msg(1)).as_bytes());
    }

    /// A rendering that is a slice of a chunk keeps the whole chunk alive.
    #[test]
    fn only_a_chunk_of_new_items_lends_them_its_memory() {
        let inside = |chunk: &Bytes, item: &BrokerItem| {
            let r = item.rendered.get().expect("rendered").as_ptr_range();
            let c = chunk.as_ptr_range();
            c.start <= r.start && r.end <= c.end
        };
        let (a, b, c, d) = (gap(1), gap(2), gap(3), gap(4));
        let mut scratch = Vec::new();
        let new = chunk(&mut vec![a.clone(), b.clone()], &mut scratch);
        assert!(inside(&new, &a) && inside(&new, &b), "all new: slices");
        // `b` is copied in: `c` and `d` get their own bytes, so the chunk
        // (with its copy of `b`) is freed once sent.
        let mixed = chunk(&mut vec![b.clone(), c.clone(), d.clone()], &mut scratch);
        assert!(!inside(&mixed, &c) && !inside(&mixed, &d), "mixed: copies");
        assert!(inside(&new, &b), "b keeps its first rendering");
    }
}
