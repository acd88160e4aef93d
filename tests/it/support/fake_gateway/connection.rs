//! One connection after the accept: HTTP upgrade, `connect.challenge`, the handshake, then
//! requests, events, ticks and the handle's commands until it ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_codec::{Framed, FramedParts};
use actix_http::ws::{self, CloseCode, CloseReason, Frame, Item, Message, ProtocolError};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::options::*;
use super::state::{ConnCmd, SeqMode, Shared};
use super::upgrade::{hang, http_status, read_upgrade};

/// How long a server-initiated close waits for the client's close frame before shutting down.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

type Ws = Framed<TcpStream, ws::Codec>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unregisters the connection however its task ends (also on panic in a responder).
struct ConnGuard {
    shared: Arc<Shared>,
    n: usize,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.lock().conns.remove(&self.n);
    }
}

pub(super) async fn run_conn(
    mut stream: TcpStream,
    n: usize,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<ConnCmd>,
    mut rx: mpsc::UnboundedReceiver<ConnCmd>,
) {
    let _guard = ConnGuard {
        shared: shared.clone(),
        n,
    };

    // ---- HTTP upgrade ----
    let (req, leftover) = match read_upgrade(&mut stream).await {
        Ok(r) => r,
        Err("") => return,
        Err(status) => return http_status(&mut stream, status).await,
    };
    let key = req.header("sec-websocket-key").map(str::to_owned);
    let is_ws = req
        .header("upgrade")
        .is_some_and(|u| u.to_ascii_lowercase().contains("websocket"));
    let (mode, send_challenge, hs_timeout) = {
        let mut st = shared.lock();
        st.last_upgrade = Some(req.clone());
        (
            st.upgrade_mode.clone(),
            st.send_challenge,
            st.handshake_timeout,
        )
    };
    let key = match key {
        Some(k) if is_ws && req.method == "GET" => k,
        _ => return http_status(&mut stream, "400 Bad Request").await,
    };
    match mode {
        UpgradeMode::Accept => {}
        UpgradeMode::Status(code) => {
            return http_status(&mut stream, &format!("{code} Fake")).await;
        }
        UpgradeMode::Hang => return hang(&mut rx, stream).await,
        UpgradeMode::DropTcp => return,
    }
    let accept = ws::hash_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        String::from_utf8_lossy(&accept)
    );
    if stream.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let codec = ws::Codec::new().max_size(PRE_AUTH_MAX_FRAME);
    let mut ws: Ws = Framed::from_parts(FramedParts::with_read_buf(stream, codec, leftover));

    let mut conn = Conn {
        n,
        shared,
        tx,
        phase: Phase::AwaitConnect,
        next_seq: 1,
        frag: None,
    };

    if send_challenge {
        let payload = json!({"nonce": uuid::Uuid::new_v4().to_string(), "ts": now_ms()});
        conn.shared.lock().last_challenge = Some(payload.clone());
        let ev = json!({"type":"event","event":"connect.challenge","payload":payload});
        if !send_json(&mut ws, &ev).await {
            return;
        }
    }

    let hs_timer = tokio::time::sleep(hs_timeout.unwrap_or(Duration::from_secs(86_400)));
    tokio::pin!(hs_timer);
    let mut tick: Option<tokio::time::Interval> = None;

    loop {
        let silent = conn.phase == Phase::Silent;
        let frozen = conn.shared.lock().frozen;
        let awaiting = conn.phase == Phase::AwaitConnect && hs_timeout.is_some();
        let flow = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(c) => conn.on_cmd(&mut ws, &mut tick, c).await,
                None => Flow::End,
            },
            item = ws.next(), if !silent && !frozen => conn.on_frame(&mut ws, &mut tick, item).await,
            _ = next_tick(&mut tick), if !silent => conn.on_tick(&mut ws).await,
            _ = &mut hs_timer, if awaiting => {
                close_graceful(&mut ws, 1000, "").await;
                Flow::End
            }
        };
        if let Flow::End = flow {
            break;
        }
    }
    // `ws` (and the TCP stream) is dropped here: FIN, or RST if unread input is pending.
}

async fn next_tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn send_msg(ws: &mut Ws, m: Message) -> bool {
    ws.send(m).await.is_ok()
}

async fn send_json(ws: &mut Ws, v: &Value) -> bool {
    send_msg(ws, Message::Text(v.to_string().into())).await
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// Close frame, then read (discarding) until the client's close frame, EOF or 2 s, then shut
/// the write side down. Reading first avoids an RST that could destroy the close frame.
async fn close_graceful(ws: &mut Ws, code: u16, reason: &str) {
    let reason = truncate(reason, 123);
    let msg = Message::Close(Some(CloseReason {
        code: CloseCode::from(code),
        description: (!reason.is_empty()).then(|| reason.to_owned()),
    }));
    if !send_msg(ws, msg).await {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(item) = ws.next().await {
            if matches!(item, Ok(Frame::Close(_)) | Err(_)) {
                break;
            }
        }
    })
    .await;
    let _ = ws.io_mut().shutdown().await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Waiting for the `connect` request.
    AwaitConnect,
    /// `connect` received, answer pending (or never).
    Connecting,
    /// hello-ok sent.
    Ready,
    /// Half-open: neither reading nor writing.
    Silent,
}

enum Flow {
    Continue,
    End,
}

struct Conn {
    n: usize,
    shared: Arc<Shared>,
    /// Sender to this connection's own command channel (delayed replies).
    tx: mpsc::UnboundedSender<ConnCmd>,
    phase: Phase,
    next_seq: u64,
    /// Client continuation frames being reassembled.
    frag: Option<BytesMut>,
}

impl Conn {
    fn later(&self, delay: Duration, cmd: ConnCmd) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(cmd);
        });
    }

    async fn send_res(&self, ws: &mut Ws, id: &str, ok: bool, body: Value) -> Flow {
        let frame = if ok {
            json!({"type":"res","id":id,"ok":true,"payload":body})
        } else {
            json!({"type":"res","id":id,"ok":false,"error":body})
        };
        if send_json(ws, &frame).await {
            Flow::Continue
        } else {
            Flow::End
        }
    }

    async fn on_cmd(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        cmd: ConnCmd,
    ) -> Flow {
        let silent = self.phase == Phase::Silent;
        match cmd {
            ConnCmd::DropTcp => Flow::End,
            ConnCmd::Reset => {
                let _ = ws.io_ref().set_zero_linger();
                Flow::End
            }
            ConnCmd::Close(code, reason) => {
                close_graceful(ws, code, &reason).await;
                Flow::End
            }
            _ if silent => Flow::Continue,
            ConnCmd::Silent => {
                self.phase = Phase::Silent;
                Flow::Continue
            }
            ConnCmd::Event {
                event,
                payload,
                seq,
            } => {
                let seq = match seq {
                    SeqMode::Auto if self.phase == Phase::Ready => {
                        self.next_seq += 1;
                        Some(self.next_seq - 1)
                    }
                    SeqMode::Auto | SeqMode::None => None,
                    SeqMode::Explicit(n) => {
                        self.next_seq = n + 1;
                        Some(n)
                    }
                };
                let mut frame = json!({"type":"event","event":event,"payload":payload});
                if let Some(s) = seq {
                    frame["seq"] = json!(s);
                }
                if send_json(ws, &frame).await {
                    Flow::Continue
                } else {
                    Flow::End
                }
            }
            ConnCmd::Messages(msgs) => {
                for m in msgs {
                    if ws.feed(m).await.is_err() {
                        return Flow::End;
                    }
                }
                match SinkExt::<Message>::flush(ws).await {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::End,
                }
            }
            ConnCmd::Nudge => Flow::Continue,
            ConnCmd::Giant { head, zeros } => {
                if SinkExt::<Message>::flush(ws).await.is_err() {
                    return Flow::End;
                }
                let io = ws.io_mut();
                if io.write_all(&head).await.is_err() {
                    return Flow::End;
                }
                let chunk = vec![0u8; 64 * 1024];
                let mut left = zeros;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if io.write_all(&chunk[..n]).await.is_err() {
                        return Flow::End;
                    }
                    left -= n as u64;
                }
                Flow::Continue
            }
            ConnCmd::Raw(bytes) => {
                if SinkExt::<Message>::flush(ws).await.is_err() {
                    return Flow::End;
                }
                let io = ws.io_mut();
                match io.write_all(&bytes).await {
                    Ok(()) => {
                        let _ = io.flush().await;
                        Flow::Continue
                    }
                    Err(_) => Flow::End,
                }
            }
            ConnCmd::Respond { id, ok, body } => self.send_res(ws, &id, ok, body).await,
            ConnCmd::Execute { req, reply } => self.execute(ws, req, reply).await,
            ConnCmd::Hello { id, params } => {
                if self.phase == Phase::Connecting {
                    self.send_hello(ws, tick, &id, &params).await
                } else {
                    Flow::Continue
                }
            }
        }
    }

    async fn on_tick(&mut self, ws: &mut Ws) -> Flow {
        let on = self.shared.lock().send_ticks;
        if !on || self.phase != Phase::Ready {
            return Flow::Continue;
        }
        self.on_cmd(
            ws,
            &mut None,
            ConnCmd::Event {
                event: "tick".into(),
                payload: json!({"ts": now_ms()}),
                seq: SeqMode::Auto,
            },
        )
        .await
    }

    async fn on_frame(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        item: Option<Result<Frame, ProtocolError>>,
    ) -> Flow {
        let frame = match item {
            None => return Flow::End,
            Some(Err(ProtocolError::Overflow)) => {
                // The real gateway closes 1009 with an empty reason.
                close_graceful(ws, 1009, "").await;
                return Flow::End;
            }
            Some(Err(ProtocolError::Io(_))) => return Flow::End,
            Some(Err(_)) => {
                close_graceful(ws, 1002, "").await;
                return Flow::End;
            }
            Some(Ok(f)) => f,
        };
        match frame {
            Frame::Ping(b) => {
                if send_msg(ws, Message::Pong(b)).await {
                    Flow::Continue
                } else {
                    Flow::End
                }
            }
            Frame::Pong(_) => {
                self.shared.lock().pongs_received += 1;
                Flow::Continue
            }
            Frame::Close(reason) => {
                let rec = reason
                    .as_ref()
                    .map(|r| (u16::from(r.code), r.description.clone().unwrap_or_default()));
                self.shared.lock().client_closes.push(rec);
                let echo = reason.map(|r| CloseReason {
                    code: r.code,
                    description: None,
                });
                let _ = send_msg(ws, Message::Close(echo)).await;
                let _ = ws.io_mut().shutdown().await;
                Flow::End
            }
            Frame::Binary(_) => Flow::Continue,
            Frame::Text(b) => self.on_text(ws, tick, &b).await,
            Frame::Continuation(item) => {
                let (first, data, last) = match item {
                    Item::FirstText(d) | Item::FirstBinary(d) => (true, d, false),
                    Item::Continue(d) => (false, d, false),
                    Item::Last(d) => (false, d, true),
                };
                if first {
                    self.frag = Some(BytesMut::new());
                }
                let Some(buf) = self.frag.as_mut() else {
                    return Flow::Continue;
                };
                buf.extend_from_slice(&data);
                if buf.len() > MAX_PAYLOAD {
                    self.frag = None;
                    close_graceful(ws, 1009, "").await;
                    return Flow::End;
                }
                if last {
                    let whole = self.frag.take().unwrap_or_default().freeze();
                    return self.on_text(ws, tick, &whole).await;
                }
                Flow::Continue
            }
        }
    }

    async fn on_text(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        text: &[u8],
    ) -> Flow {
        let v: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(_) => {
                return if self.phase == Phase::AwaitConnect {
                    // Invalid JSON before connect: close 1000.
                    close_graceful(ws, 1000, "").await;
                    Flow::End
                } else {
                    // Non-JSON after auth is silently ignored.
                    Flow::Continue
                };
            }
        };
        let is_req = v.get("type").and_then(Value::as_str) == Some("req");
        let id = v.get("id").and_then(Value::as_str).map(str::to_owned);
        let method = v.get("method").and_then(Value::as_str).map(str::to_owned);
        let params = v.get("params").cloned().unwrap_or(Value::Null);
        match self.phase {
            Phase::AwaitConnect => match (is_req, id, method.as_deref()) {
                (true, Some(id), Some("connect")) => self.on_connect(ws, tick, &id, params).await,
                (_, id, _) => {
                    let msg = "invalid handshake: first request must be connect";
                    let id = id.unwrap_or_else(|| "invalid".into());
                    let _ = self
                        .send_res(ws, &id, false, gateway_error("INVALID_REQUEST", msg))
                        .await;
                    close_graceful(ws, 1008, msg).await;
                    Flow::End
                }
            },
            Phase::Connecting | Phase::Silent => Flow::Continue,
            Phase::Ready => match (is_req, id, method) {
                (true, Some(id), Some(method)) => {
                    let req = Request {
                        id,
                        method,
                        params,
                        conn: self.n,
                        frame: v,
                    };
                    let responder = {
                        let mut st = self.shared.lock();
                        st.requests_total += 1;
                        st.request_conn.insert(req.id.clone(), self.n);
                        st.responder.clone()
                    };
                    let reply = responder(&req);
                    let _ = self.shared.req_tx.send(req.clone());
                    self.execute(ws, req, reply).await
                }
                (_, id, _) => {
                    let id = id.unwrap_or_else(|| "invalid".into());
                    let err = gateway_error(
                        "INVALID_REQUEST",
                        "invalid request frame: must have required property 'id'",
                    );
                    self.send_res(ws, &id, false, err).await
                }
            },
        }
    }

    async fn execute(&mut self, ws: &mut Ws, req: Request, reply: Reply) -> Flow {
        let reply = match reply {
            Reply::Default => {
                let agents = self.shared.lock().agents.clone();
                default_reply(&req, &agents)
            }
            r => r,
        };
        match reply {
            Reply::Default => unreachable!("default_reply never returns Default"),
            Reply::Ok(v) => self.send_res(ws, &req.id, true, v).await,
            Reply::Err(e) => self.send_res(ws, &req.id, false, e).await,
            Reply::Never | Reply::Manual => Flow::Continue,
            Reply::Twice(first, second, delay) => {
                let id = req.id.clone();
                self.later(
                    delay,
                    ConnCmd::Respond {
                        id: id.clone(),
                        ok: true,
                        body: second,
                    },
                );
                self.send_res(ws, &id, true, first).await
            }
            Reply::Delayed(delay, inner) => {
                self.later(delay, ConnCmd::Execute { req, reply: *inner });
                Flow::Continue
            }
            Reply::CloseConnection(code, reason) => {
                close_graceful(ws, code, &reason).await;
                Flow::End
            }
            Reply::DropTcp => Flow::End,
            Reply::Silent => {
                self.phase = Phase::Silent;
                Flow::Continue
            }
        }
    }

    async fn on_connect(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        id: &str,
        params: Value,
    ) -> Flow {
        let (mode, token) = {
            let mut st = self.shared.lock();
            st.connects_total += 1;
            st.last_connect_params = Some(params.clone());
            (st.connect_mode.clone(), st.token.clone())
        };
        let issued_device_token = self.shared.lock().device_token.clone();
        self.phase = Phase::Connecting;
        match mode {
            ConnectMode::Never => Flow::Continue,
            ConnectMode::DropTcp => Flow::End,
            ConnectMode::Reject {
                error,
                close_code,
                reason,
            } => {
                let _ = self.send_res(ws, id, false, error).await;
                close_graceful(ws, close_code, &reason).await;
                Flow::End
            }
            ConnectMode::Hello | ConnectMode::HelloAfter(_) => {
                // Protocol range must contain 4 (PROTOCOL.md §2.3).
                let minp = params.get("minProtocol").and_then(Value::as_u64);
                let maxp = params.get("maxProtocol").and_then(Value::as_u64);
                if let (Some(a), Some(b)) = (minp, maxp) {
                    if a > 4 || b < 4 {
                        let err = json!({"code":"INVALID_REQUEST","message":"protocol mismatch",
                            "details":{"code":"PROTOCOL_MISMATCH","clientMinProtocol":a,
                            "clientMaxProtocol":b,"expectedProtocol":4,"minimumProbeProtocol":3}});
                        let _ = self.send_res(ws, id, false, err).await;
                        close_graceful(ws, 1002, "protocol mismatch").await;
                        return Flow::End;
                    }
                }
                if let Some(tok) = token {
                    let auth = params.get("auth");
                    let given = auth.and_then(|a| a.get("token")).and_then(Value::as_str);
                    let given_device = auth
                        .and_then(|a| a.get("deviceToken"))
                        .and_then(Value::as_str);
                    // A device token this fake issued stands in for the shared token.
                    let device_ok = given.is_none()
                        && given_device.is_some()
                        && given_device == issued_device_token.as_deref();
                    if given.is_none() && given_device.is_some() && !device_ok {
                        let msg =
                            "unauthorized: device token mismatch (rotate/reissue device token)";
                        let err = json!({"code":"INVALID_REQUEST","message":msg,
                            "details":{"code":"AUTH_DEVICE_TOKEN_MISMATCH","recommendedNextStep":"update_auth_credentials"}});
                        let _ = self.send_res(ws, id, false, err).await;
                        close_graceful(ws, 1008, msg).await;
                        return Flow::End;
                    }
                    if given != Some(tok.as_str()) && !device_ok {
                        // Exact token-mismatch error of PROTOCOL.md §3.2 (also used for a
                        // missing token, which the real gateway reports differently).
                        let with_device = params.get("device").is_some();
                        let err = json!({"code":"INVALID_REQUEST","message":TOKEN_MISMATCH_MESSAGE,
                            "details":{"code":"AUTH_TOKEN_MISMATCH","authReason":"token_mismatch",
                            "canRetryWithDeviceToken":with_device,
                            "recommendedNextStep": if with_device {"retry_with_device_token"} else {"update_auth_credentials"}}});
                        let _ = self.send_res(ws, id, false, err).await;
                        close_graceful(ws, 1008, TOKEN_MISMATCH_MESSAGE).await;
                        return Flow::End;
                    }
                }
                match mode {
                    ConnectMode::HelloAfter(d) => {
                        self.later(
                            d,
                            ConnCmd::Hello {
                                id: id.into(),
                                params,
                            },
                        );
                        Flow::Continue
                    }
                    _ => self.send_hello(ws, tick, id, &params).await,
                }
            }
        }
    }

    async fn send_hello(
        &mut self,
        ws: &mut Ws,
        tick: &mut Option<tokio::time::Interval>,
        id: &str,
        params: &Value,
    ) -> Flow {
        let (boot_id, tick_ms, scopes) = {
            let st = self.shared.lock();
            let scopes = match &st.granted_scopes {
                Some(s) => json!(s),
                None => params.get("scopes").cloned().unwrap_or_else(|| json!([])),
            };
            (st.boot_id.clone(), st.tick_interval_ms, scopes)
        };
        let auth = {
            let device_token = self.shared.lock().device_token.clone();
            let mut a = json!({"method":"token","role":"operator","scopes":scopes});
            if let Some(t) = device_token {
                if params.get("device").is_some() {
                    a["deviceToken"] = json!(t);
                    a["issuedAtMs"] = json!(1);
                    let by_device = params.get("auth").and_then(|x| x.get("token")).is_none();
                    if by_device {
                        a["method"] = json!("device-token");
                    }
                }
            }
            a
        };
        let hello = json!({
            "type":"hello-ok","protocol":4,
            "server":{"version":"fake-1.0","connId":uuid::Uuid::new_v4().to_string(),"bootId":boot_id},
            "features":{"methods":[],"events":[]},
            "snapshot":{},
            "auth":auth,
            "policy":{"maxPayload":MAX_PAYLOAD,"maxBufferedBytes":MAX_BUFFERED_BYTES,"tickIntervalMs":tick_ms}
        });
        if let Flow::End = self.send_res(ws, id, true, hello).await {
            return Flow::End;
        }
        self.shared.lock().handshakes_total += 1;
        self.phase = Phase::Ready;
        let codec = ws.codec_ref().clone().max_size(MAX_PAYLOAD);
        *ws.codec_mut() = codec;
        let period = Duration::from_millis(tick_ms.max(1));
        let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        *tick = Some(iv);
        Flow::Continue
    }
}
