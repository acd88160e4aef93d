//! The harness's own handshake: the `connect` frame, and one attempt at hello-ok.

use std::time::Duration;

use serde_json::{json, Value};

/// Largest frame the harness's own WebSocket client accepts (hello-ok is
/// ~16 KB; the gateway may send up to `policy.maxPayload` = 25 MiB).
const MAX_FRAME: usize = 32 * 1024 * 1024;

/// Node script for [`RealGateway::netns_hello`]. Args: path of the `ws`
/// package, url, connect frame (JSON), timeout in ms. Prints one JSON line:
/// `{"ok":true,"hello":{…}}` or `{"ok":false,"error":"…"}`.
pub(super) const NODE_HELLO_SCRIPT: &str = r#"
const [wsPath, url, frame, ms] = process.argv.slice(1);
const WebSocket = require(wsPath);
let finished = false;
const done = (r) => {
  if (finished) return;
  finished = true;
  process.stdout.write(JSON.stringify(r) + "\n", () => process.exit(0));
};
setTimeout(() => done({ ok: false, error: `handshake timed out after ${ms} ms` }), Number(ms));
let sent = false;
let ws;
try {
  ws = new WebSocket(url, { maxPayload: 32 * 1024 * 1024, handshakeTimeout: Number(ms) });
} catch (e) {
  done({ ok: false, error: `connect ${url}: ${e.message}` });
}
if (ws) {
  ws.on("error", (e) => done({ ok: false, error: `connect ${url}: ${e.message}` }));
  ws.on("close", (code, reason) =>
    done({ ok: false, error: `closed ${code} ${JSON.stringify(String(reason))}` }));
  ws.on("message", (data) => {
    let v;
    try {
      v = JSON.parse(String(data));
    } catch (e) {
      return done({ ok: false, error: `non-JSON frame (${e.message}): ${String(data)}` });
    }
    if (v.type === "event" && v.event === "connect.challenge" && !sent) {
      sent = true;
      ws.send(frame);
    } else if (v.type === "res" && v.id === "harness-connect") {
      if (v.ok) done({ ok: true, hello: v.payload ?? null });
      else done({ ok: false, error: `connect refused: ${JSON.stringify(v.error ?? v)}` });
    }
  });
}
"#;

/// The `connect` request the harness (and a bridge on the gateway host) sends.
pub fn connect_frame(id: &str, token: &str) -> Value {
    json!({
        "type": "req", "id": id, "method": "connect",
        "params": {
            "minProtocol": 4, "maxProtocol": 4,
            "client": {"id": "gateway-client", "version": "0.1.0", "platform": "linux",
                       "mode": "backend", "displayName": "openclaw-bridge-test-harness"},
            "role": "operator",
            "scopes": ["operator.read", "operator.write"],
            "auth": {"token": token}
        }
    })
}

/// One handshake attempt against `url`; returns the hello-ok payload, or a
/// description of what happened (refused, error frame, close code…).
/// Runs on its own thread with its own `actix_rt::System`, so it can be
/// called from anywhere, including inside `#[actix_rt::test]`.
pub fn try_hello(url: &str, token: &str, timeout: Duration) -> Result<Value, String> {
    let url = url.to_owned();
    let token = token.to_owned();
    std::thread::Builder::new()
        .name("real-gateway-hello".into())
        .spawn(move || {
            let system = actix_rt::System::new();
            system.block_on(async move {
                match actix_rt::time::timeout(timeout, hello_once(&url, &token)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("handshake timed out after {timeout:?}")),
                }
            })
        })
        .expect("real_gateway: cannot spawn handshake thread")
        .join()
        .unwrap_or_else(|_| Err("handshake thread panicked".into()))
}

async fn hello_once(url: &str, token: &str) -> Result<Value, String> {
    use awc::ws::{Frame, Message};
    use futures_util::{SinkExt, StreamExt};

    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let (_resp, mut framed) = client
        .ws(url)
        .max_frame_size(MAX_FRAME)
        .connect()
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    let mut partial: Option<Vec<u8>> = None;
    let mut sent = false;
    while let Some(item) = framed.next().await {
        let frame = item.map_err(|e| format!("websocket error: {e}"))?;
        let text: Vec<u8> = match frame {
            Frame::Text(b) => b.to_vec(),
            Frame::Binary(b) => b.to_vec(),
            Frame::Continuation(c) => {
                use actix_http::ws::Item;
                match c {
                    Item::FirstText(b) | Item::FirstBinary(b) => {
                        partial = Some(b.to_vec());
                        continue;
                    }
                    Item::Continue(b) => {
                        if let Some(p) = partial.as_mut() {
                            p.extend_from_slice(&b);
                        }
                        continue;
                    }
                    Item::Last(b) => {
                        let mut p = partial.take().unwrap_or_default();
                        p.extend_from_slice(&b);
                        p
                    }
                }
            }
            Frame::Ping(b) => {
                let _ = framed.send(Message::Pong(b)).await;
                continue;
            }
            Frame::Pong(_) => continue,
            Frame::Close(reason) => {
                return Err(match reason {
                    Some(r) => format!(
                        "closed {} {:?}",
                        u16::from(r.code),
                        r.description.unwrap_or_default()
                    ),
                    None => "closed without a code".into(),
                });
            }
        };
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("non-JSON frame ({e}): {}", String::from_utf8_lossy(&text)))?;
        match v.get("type").and_then(Value::as_str) {
            Some("event")
                if v.get("event").and_then(Value::as_str) == Some("connect.challenge") && !sent =>
            {
                sent = true;
                framed
                    .send(Message::Text(
                        connect_frame("harness-connect", token).to_string().into(),
                    ))
                    .await
                    .map_err(|e| format!("send connect: {e}"))?;
            }
            Some("res") if v.get("id").and_then(Value::as_str) == Some("harness-connect") => {
                let ok = v.get("ok").and_then(Value::as_bool).unwrap_or(false);
                let _ = framed.send(Message::Close(None)).await;
                return if ok {
                    Ok(v.get("payload").cloned().unwrap_or(Value::Null))
                } else {
                    Err(format!("connect refused: {}", v.get("error").unwrap_or(&v)))
                };
            }
            _ => {}
        }
    }
    Err("connection ended before hello-ok".into())
}
