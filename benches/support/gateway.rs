//! The synthetic gateway: a loopback WebSocket server with the real handshake
//! (`connect.challenge` → `connect` → hello-ok with `policy.tickIntervalMs`)
//! that answers every request at once and, on `bench.flood`, writes its
//! pre-encoded `agent` events as fast as the socket takes them.
//!
//! It runs in its own process (`bridge --child gateway --frames N [--port P]`)
//! so its CPU is never counted against a client. It prints
//! `LISTENING <port> <min> <max> <mean>` once bound, then serves until stdin
//! closes. The line `restart <ms>` on stdin announces a restart to every
//! session (`shutdown` event with `restartExpectedMs`, close 1012) and exits.

use std::borrow::Cow;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_codec::Decoder;
use actix_http::ws::{hash_key, Codec, Frame};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::frames::{encode_frame, OP_CLOSE, OP_PONG, OP_TEXT};

/// The method that starts a flood on the session that sends it.
pub const FLOOD_METHOD: &str = "bench.flood";

#[derive(Deserialize)]
struct Req<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

enum Ctl {
    /// Send `shutdown` + close 1012, then report done.
    Restart(u64, oneshot::Sender<()>),
}

type Sessions = Arc<Mutex<Vec<mpsc::UnboundedSender<Ctl>>>>;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn main(frames: usize, port: u16) {
    let (flood, (min, max, mean)) = super::frames::flood(frames);
    let flood = Bytes::from(flood);
    let boot_id = uuid::Uuid::new_v4().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("synthetic gateway: cannot listen on 127.0.0.1:{port}: {e}");
                std::process::exit(3);
            }
        };
        let port = listener.local_addr().map_or(0, |a| a.port());
        println!("LISTENING {port} {min} {max} {mean}");
        let _ = std::io::stdout().flush();
        let (line_tx, mut line_rx) = mpsc::unbounded_channel::<Option<String>>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line_tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = line_tx.send(None);
        });
        let sessions: Sessions = Arc::default();
        let mut conn_no = 0u64;
        loop {
            tokio::select! {
                acc = listener.accept() => {
                    let Ok((stream, _)) = acc else { continue };
                    let _ = stream.set_nodelay(true);
                    conn_no += 1;
                    let (tx, rx) = mpsc::unbounded_channel();
                    sessions.lock().unwrap().push(tx);
                    tokio::spawn(session(stream, rx, flood.clone(), frames, boot_id.clone(), conn_no));
                }
                line = line_rx.recv() => match line.flatten() {
                    None => std::process::exit(0),
                    Some(l) => {
                        let ms = l.strip_prefix("restart ").and_then(|v| v.trim().parse().ok());
                        if let Some(ms) = ms {
                            let mut waits = Vec::new();
                            for s in sessions.lock().unwrap().drain(..) {
                                let (tx, rx) = oneshot::channel();
                                if s.send(Ctl::Restart(ms, tx)).is_ok() {
                                    waits.push(rx);
                                }
                            }
                            for w in waits {
                                let _ = tokio::time::timeout(Duration::from_millis(500), w).await;
                            }
                            std::process::exit(0);
                        }
                    }
                },
            }
        }
    });
}

fn text_frame(s: &str) -> Bytes {
    let mut out = Vec::with_capacity(s.len() + 10);
    encode_frame(OP_TEXT, s.as_bytes(), &mut out);
    Bytes::from(out)
}

async fn read_upgrade(stream: &mut TcpStream) -> Option<(String, BytesMut)> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            let text = String::from_utf8_lossy(&head);
            let key = text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })?;
            return Some((key, buf));
        }
        if buf.len() > 16 * 1024 {
            return None;
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn session(
    mut stream: TcpStream,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    flood: Bytes,
    frames: usize,
    boot_id: String,
    conn_no: u64,
) {
    let Some((key, mut rbuf)) = read_upgrade(&mut stream).await else {
        return;
    };
    let accept = hash_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        String::from_utf8_lossy(&accept)
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (mut rd, mut wr) = stream.into_split();
    // One writer per socket: responses and floods keep their order.
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(Bytes, Option<oneshot::Sender<()>>)>();
    tokio::spawn(async move {
        while let Some((bytes, done)) = out_rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
            if let Some(done) = done {
                let _ = wr.shutdown().await;
                let _ = done.send(());
                return;
            }
        }
    });
    let send = |b: Bytes| out_tx.send((b, None)).is_ok();
    let challenge = format!(
        r#"{{"type":"event","event":"connect.challenge","payload":{{"nonce":"{}","ts":{},"capabilities":[]}}}}"#,
        uuid::Uuid::new_v4(),
        now_ms()
    );
    send(text_frame(&challenge));
    let mut codec = Codec::new().max_size(1 << 20);
    let mut next_seq = 1u64;
    let mut hello_done = false;
    loop {
        tokio::select! {
            c = ctl.recv() => {
                if let Some(Ctl::Restart(ms, done)) = c {
                    let ev = format!(
                        r#"{{"type":"event","event":"shutdown","payload":{{"reason":"gateway restarting","restartExpectedMs":{ms}}},"seq":{next_seq}}}"#
                    );
                    let mut out = Vec::new();
                    encode_frame(OP_TEXT, ev.as_bytes(), &mut out);
                    let mut close = 1012u16.to_be_bytes().to_vec();
                    close.extend_from_slice(b"service restart");
                    encode_frame(OP_CLOSE, &close, &mut out);
                    let _ = out_tx.send((Bytes::from(out), Some(done)));
                }
                return;
            }
            r = rd.read_buf(&mut rbuf) => {
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let mut out: Vec<u8> = Vec::new();
                // Frames of the flood to send: all, or `params.frames`.
                let mut flood_now: Option<usize> = None;
                loop {
                    match codec.decode(&mut rbuf) {
                        Ok(Some(Frame::Text(t))) => {
                            let Ok(req) = serde_json::from_slice::<Req<'_>>(&t) else { continue };
                            let id = serde_json::to_string(&req.id).unwrap_or_default();
                            let payload: Cow<'_, str> = match req.method.as_ref() {
                                "connect" => {
                                    hello_done = true;
                                    format!(
                                        r#"{{"type":"hello-ok","protocol":4,"server":{{"version":"bench-synthetic","bootId":"{boot_id}","connId":"conn-{conn_no}"}},"features":{{"methods":["health","agents.list","{FLOOD_METHOD}"],"events":["agent","tick","health","shutdown"]}},"snapshot":{{"presence":[],"health":{{"ok":true,"agents":[{{"agentId":"main","isDefault":true}}]}},"stateVersion":{{"presence":1,"health":1}}}},"auth":{{"method":"token","role":"operator","scopes":["operator.read","operator.write"]}},"policy":{{"maxPayload":26214400,"maxBufferedBytes":52428800,"tickIntervalMs":30000}}}}"#
                                    ).into()
                                }
                                "agents.list" => r#"{"defaultId":"main","mainKey":"main","scope":"per-sender","agents":[{"id":"main","name":"Main"}]}"#.into(),
                                FLOOD_METHOD => {
                                    let m = req
                                        .params
                                        .and_then(|p| serde_json::from_str::<serde_json::Value>(p.get()).ok())
                                        .and_then(|v| v["frames"].as_u64())
                                        .map_or(frames, |m| (m as usize).min(frames));
                                    flood_now = Some(m);
                                    format!(r#"{{"events":{m}}}"#).into()
                                }
                                _ => match req.params {
                                    Some(p) => format!(r#"{{"ok":true,"params":{}}}"#, p.get()).into(),
                                    None => r#"{"ok":true}"#.into(),
                                },
                            };
                            let res = format!(r#"{{"type":"res","id":{id},"ok":true,"payload":{payload}}}"#);
                            encode_frame(OP_TEXT, res.as_bytes(), &mut out);
                        }
                        Ok(Some(Frame::Ping(p))) => encode_frame(OP_PONG, &p, &mut out),
                        Ok(Some(Frame::Close(_))) => {
                            encode_frame(OP_CLOSE, &1000u16.to_be_bytes(), &mut out);
                            send(Bytes::from(out));
                            return;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
                if !out.is_empty() && !send(Bytes::from(out)) {
                    return;
                }
                if let (Some(m), true) = (flood_now, hello_done) {
                    next_seq += m as u64;
                    let part = if m == frames {
                        flood.clone()
                    } else {
                        flood.slice(..super::frames::prefix_len(&flood, m))
                    };
                    if !send(part) {
                        return;
                    }
                }
            }
        }
    }
}
