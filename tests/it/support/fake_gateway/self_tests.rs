//! Self-tests of the fake gateway, with awc as the client.

use std::time::{Duration, Instant};

use actix_codec::Framed;
use actix_http::ws::{self, CloseCode, CloseReason, Frame, Item, Message, ProtocolError};
use awc::BoxedSocket;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use super::*;

type Client = Framed<BoxedSocket, ws::Codec>;

const T: Duration = Duration::from_secs(5);

async fn client(url: &str) -> Client {
    let (_resp, framed) = awc::Client::new()
        .ws(url)
        .max_frame_size(32 << 20)
        .connect()
        .await
        .expect("ws connect");
    framed
}

/// Next frame, with a timeout. `None` = timeout.
async fn next_frame(c: &mut Client, t: Duration) -> Option<Option<Result<Frame, ProtocolError>>> {
    tokio::time::timeout(t, c.next()).await.ok()
}

/// Next whole JSON message; answers pings, reassembles continuations.
async fn next_json(c: &mut Client) -> Value {
    let mut frag: Option<Vec<u8>> = None;
    loop {
        let f = next_frame(c, T)
            .await
            .expect("timeout waiting for a frame")
            .expect("stream ended")
            .expect("protocol error");
        match f {
            Frame::Text(b) => return serde_json::from_slice(&b).expect("json"),
            Frame::Ping(b) => c.send(Message::Pong(b)).await.unwrap(),
            Frame::Continuation(Item::FirstText(b)) => frag = Some(b.to_vec()),
            Frame::Continuation(Item::Continue(b)) => frag.as_mut().unwrap().extend(&b),
            Frame::Continuation(Item::Last(b)) => {
                let mut all = frag.take().unwrap();
                all.extend(&b);
                return serde_json::from_slice(&all).expect("json");
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn send_req(c: &mut Client, id: &str, method: &str, params: Value) {
    let f = json!({"type":"req","id":id,"method":method,"params":params});
    c.send(Message::Text(f.to_string().into())).await.unwrap();
}

fn connect_params(token: Option<&str>) -> Value {
    let mut p = json!({"minProtocol":4,"maxProtocol":4,
        "client":{"id":"gateway-client","version":"0.1.0","platform":"linux","mode":"backend"},
        "role":"operator","scopes":["operator.read","operator.write"]});
    if let Some(t) = token {
        p["auth"] = json!({"token": t});
    }
    p
}

/// Connect, read the challenge, send connect; returns (client, challenge, connect answer).
async fn handshake(g: &FakeGateway, token: Option<&str>) -> (Client, Value, Value) {
    let mut c = client(&g.url()).await;
    let ch = next_json(&mut c).await;
    send_req(&mut c, "connect-1", "connect", connect_params(token)).await;
    let res = next_json(&mut c).await;
    (c, ch, res)
}

/// Reads until the stream ends; returns the close frame seen, if any.
async fn read_to_end(c: &mut Client) -> (Option<Option<CloseReason>>, Option<String>) {
    let mut close = None;
    loop {
        match next_frame(c, T).await.expect("timeout waiting for end") {
            None => return (close, None),
            Some(Err(e)) => return (close, Some(format!("{e:?}"))),
            Some(Ok(Frame::Close(r))) => {
                close = Some(r.clone());
                let _ = c.send(Message::Close(r)).await;
            }
            Some(Ok(_)) => {}
        }
    }
}

#[actix_rt::test]
async fn fake_gateway_handshake_seq_and_responder() {
    let g = FakeGateway::start(FakeOptions::with_token("tok"));
    let (mut c, ch, res) = handshake(&g, Some("tok")).await;
    assert_eq!(ch["type"], "event");
    assert_eq!(ch["event"], "connect.challenge");
    assert!(ch.get("seq").is_none());
    assert!(uuid::Uuid::parse_str(ch["payload"]["nonce"].as_str().unwrap()).is_ok());
    assert!(ch["payload"]["ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(g.last_challenge().unwrap(), ch["payload"]);

    assert_eq!(res["type"], "res");
    assert_eq!(res["id"], "connect-1");
    assert_eq!(res["ok"], true);
    let h = &res["payload"];
    assert_eq!(h["type"], "hello-ok");
    assert_eq!(h["protocol"], 4);
    assert_eq!(h["server"]["bootId"], g.boot_id());
    assert_eq!(
        h["auth"]["scopes"],
        json!(["operator.read", "operator.write"])
    );
    assert_eq!(h["policy"]["tickIntervalMs"], 30000);
    assert_eq!(h["policy"]["maxPayload"], 26214400);
    assert!(g.wait_handshakes(1, T).await);
    assert_eq!(g.last_connect_params().unwrap()["auth"]["token"], "tok");
    assert!(g.last_upgrade_request().unwrap().header("origin").is_none());
    assert_eq!(g.last_upgrade_request().unwrap().path, "/");

    // seq: auto 1,2; explicit 10; auto 11; none.
    g.send_event("presence", json!({"a":1}));
    g.send_event("health", json!({}));
    g.send_event_with_seq("x", json!({}), Some(10));
    g.send_event("y", json!({}));
    g.send_event_with_seq("z", json!({}), None);
    let seqs: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(next_json(&mut c).await["seq"].clone());
        }
        v
    };
    assert_eq!(
        seqs,
        vec![json!(1), json!(2), json!(10), json!(11), Value::Null]
    );

    // Default responder.
    send_req(&mut c, "r1", "health", json!({})).await;
    let r = next_json(&mut c).await;
    assert_eq!(
        r,
        json!({"type":"res","id":"r1","ok":true,"payload":{"ok":true}})
    );
    send_req(&mut c, "r2", "echo", json!({"x":[1,2]})).await;
    assert_eq!(next_json(&mut c).await["payload"], json!({"x":[1,2]}));
    send_req(&mut c, "r3", "nope", json!({})).await;
    let r = next_json(&mut c).await;
    assert_eq!(r["ok"], false);
    assert_eq!(
        r["error"],
        json!({"code":"INVALID_REQUEST","message":"unknown method: nope"})
    );
    send_req(&mut c, "r4", "agents.list", json!({})).await;
    let r = next_json(&mut c).await;
    assert_eq!(r["payload"]["agents"][0]["id"], "main");
    assert_eq!(r["payload"]["defaultId"], "main");
    let q = g.next_request(T).await.unwrap();
    assert_eq!(
        (q.id.as_str(), q.method.as_str(), q.conn),
        ("r1", "health", 1)
    );
    assert_eq!(g.drain_requests().len(), 3);

    // Garbage after auth is ignored; invalid frame gets "invalid".
    c.send(Message::Text("not json".into())).await.unwrap();
    c.send(Message::Text("{\"type\":\"req\"}".into()))
        .await
        .unwrap();
    let r = next_json(&mut c).await;
    assert_eq!(r["id"], "invalid");
    assert_eq!(r["error"]["code"], "INVALID_REQUEST");

    // Custom responder: Twice, Manual, Delayed, Default fallback.
    g.set_responder(|r| match r.method.as_str() {
        "agent" => Reply::Twice(
            json!({"status":"accepted"}),
            json!({"status":"ok"}),
            Duration::from_millis(50),
        ),
        "manual" => Reply::Manual,
        "slow" => Reply::Delayed(
            Duration::from_millis(50),
            Box::new(Reply::Ok(json!("late"))),
        ),
        _ => Reply::Default,
    });
    send_req(&mut c, "a1", "agent", json!({})).await;
    let r1 = next_json(&mut c).await;
    let r2 = next_json(&mut c).await;
    assert_eq!(
        (r1["id"].clone(), r2["id"].clone()),
        (json!("a1"), json!("a1"))
    );
    assert_eq!(r1["payload"]["status"], "accepted");
    assert_eq!(r2["payload"]["status"], "ok");
    send_req(&mut c, "m1", "manual", json!({})).await;
    send_req(&mut c, "s1", "slow", json!({})).await;
    send_req(&mut c, "h1", "health", json!({})).await;
    assert_eq!(next_json(&mut c).await["id"], "h1");
    assert_eq!(next_json(&mut c).await["payload"], "late");
    g.respond("m1", false, gateway_error("UNAVAILABLE", "busy"));
    let r = next_json(&mut c).await;
    assert_eq!(
        (r["id"].clone(), r["ok"].clone()),
        (json!("m1"), json!(false))
    );

    // Pings both ways.
    g.send_ping();
    let f = next_frame(&mut c, T).await.unwrap().unwrap().unwrap();
    assert!(matches!(f, Frame::Ping(_)));
    if let Frame::Ping(b) = f {
        c.send(Message::Pong(b)).await.unwrap();
    }
    assert!(g.wait_for(T, |g| g.pongs_received() == 1).await);
    c.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    let f = next_frame(&mut c, T).await.unwrap().unwrap().unwrap();
    assert_eq!(f, Frame::Pong(Bytes::from_static(b"p")));

    // Ticks switchable.
    g.set_tick_interval_ms(50);
    g.set_ticks(true);
    let (mut c2, _, res) = handshake(&g, Some("tok")).await;
    assert_eq!(res["payload"]["policy"]["tickIntervalMs"], 50);
    let t1 = next_json(&mut c2).await;
    assert_eq!(
        (t1["event"].clone(), t1["seq"].clone()),
        (json!("tick"), json!(1))
    );
    assert_eq!(next_json(&mut c2).await["seq"], 2);
    g.set_ticks(false);

    // Client close is recorded and echoed.
    c.send(Message::Close(Some(CloseReason {
        code: CloseCode::Normal,
        description: Some("bye".into()),
    })))
    .await
    .unwrap();
    let (close, _) = read_to_end(&mut c).await;
    assert_eq!(u16::from(close.unwrap().unwrap().code), 1000);
    assert_eq!(g.client_closes(), vec![Some((1000, "bye".to_string()))]);
    drop(c2);
    assert!(g.wait_for(T, |g| g.live_connections() == 0).await);
}

#[actix_rt::test]
async fn fake_gateway_token_mismatch() {
    let g = FakeGateway::start(FakeOptions::with_token("right"));
    let (mut c, _, res) = handshake(&g, Some("wrong")).await;
    assert_eq!(res["ok"], false);
    assert_eq!(
        res["error"],
        json!({"code":"INVALID_REQUEST",
            "message":"unauthorized: gateway token mismatch (provide gateway auth token)",
            "details":{"code":"AUTH_TOKEN_MISMATCH","authReason":"token_mismatch",
                "canRetryWithDeviceToken":false,"recommendedNextStep":"update_auth_credentials"}})
    );
    let (close, err) = read_to_end(&mut c).await;
    let close = close.expect("close frame").expect("close reason");
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.description.as_deref(), Some(TOKEN_MISMATCH_MESSAGE));
    assert!(err.is_none(), "{err:?}");
    assert_eq!(g.handshakes_total(), 0);
    assert_eq!(g.connects_total(), 1);
}

#[actix_rt::test]
async fn fake_gateway_connect_modes() {
    let g = FakeGateway::start(FakeOptions {
        send_challenge: false,
        answer_connect: ConnectMode::starting(),
        ..Default::default()
    });
    // No challenge: the first thing we read is the answer to connect.
    let mut c = client(&g.url()).await;
    send_req(&mut c, "c", "connect", connect_params(None)).await;
    let r = next_json(&mut c).await;
    assert_eq!(r["error"]["code"], "UNAVAILABLE");
    let (close, _) = read_to_end(&mut c).await;
    assert_eq!(u16::from(close.unwrap().unwrap().code), 1013);

    // Protocol mismatch.
    g.set_connect_mode(ConnectMode::Hello);
    let mut c = client(&g.url()).await;
    let mut p = connect_params(None);
    p["minProtocol"] = json!(3);
    p["maxProtocol"] = json!(3);
    send_req(&mut c, "c", "connect", p).await;
    let r = next_json(&mut c).await;
    assert_eq!(r["error"]["details"]["code"], "PROTOCOL_MISMATCH");
    let (close, _) = read_to_end(&mut c).await;
    let close = close.unwrap().unwrap();
    assert_eq!(u16::from(close.code), 1002);

    // First request not connect.
    let mut c = client(&g.url()).await;
    send_req(&mut c, "x", "health", json!({})).await;
    let r = next_json(&mut c).await;
    assert_eq!(
        r["error"]["message"],
        "invalid handshake: first request must be connect"
    );
    let (close, _) = read_to_end(&mut c).await;
    assert_eq!(u16::from(close.unwrap().unwrap().code), 1008);

    // Pre-auth oversize frame: 1009, empty reason.
    let mut c = client(&g.url()).await;
    c.send(Message::Text("x".repeat(70 * 1024).into()))
        .await
        .unwrap();
    let (close, _) = read_to_end(&mut c).await;
    let close = close.unwrap().unwrap();
    assert_eq!(u16::from(close.code), 1009);
    assert_eq!(close.description, None);

    // HelloAfter + empty granted scopes + restart_boot.
    let boot1 = g.boot_id();
    g.restart_boot();
    assert_ne!(boot1, g.boot_id());
    g.set_granted_scopes(Some(vec![]));
    g.set_send_challenge(true);
    g.set_connect_mode(ConnectMode::HelloAfter(Duration::from_millis(200)));
    let start = Instant::now();
    let (_c, _, res) = handshake(&g, None).await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(res["payload"]["auth"]["scopes"], json!([]));
    assert_eq!(res["payload"]["server"]["bootId"], g.boot_id());

    // Handshake timeout closes 1000.
    let g2 = FakeGateway::start(FakeOptions {
        handshake_timeout: Some(Duration::from_millis(100)),
        ..Default::default()
    });
    let mut c = client(&g2.url()).await;
    let (close, _) = read_to_end(&mut c).await;
    assert_eq!(u16::from(close.unwrap().unwrap().code), 1000);
}

#[actix_rt::test]
async fn fake_gateway_fragmented_arrives_as_continuations() {
    let g = FakeGateway::start(FakeOptions::default());
    let (mut c, _, _) = handshake(&g, None).await;
    // "é" is two bytes: splitting into 1-byte-ish pieces cuts inside it.
    let text = json!({"type":"event","event":"big","payload":{"s":"héllo wörld"}}).to_string();
    g.send_fragmented(text.clone(), 3);
    let mut kinds = Vec::new();
    let mut all: Vec<u8> = Vec::new();
    loop {
        match next_frame(&mut c, T).await.unwrap().unwrap().unwrap() {
            Frame::Continuation(Item::FirstText(b)) => {
                kinds.push("first");
                all.extend(&b);
            }
            Frame::Continuation(Item::Continue(b)) => {
                kinds.push("continue");
                all.extend(&b);
            }
            Frame::Continuation(Item::Last(b)) => {
                kinds.push("last");
                all.extend(&b);
                break;
            }
            f => panic!("unexpected {f:?}"),
        }
    }
    assert_eq!(kinds, vec!["first", "continue", "last"]);
    assert_eq!(all, text.as_bytes());

    // Every byte its own fragment (cuts inside UTF-8) with pings in between.
    g.send_fragmented_with_pings(text.clone(), text.len());
    let v = next_json(&mut c).await;
    assert_eq!(v.to_string(), text);

    // Oversize for the client: max_frame_size 1 KiB client gets Overflow, then continues.
    let (_resp, mut small) = awc::Client::new()
        .ws(g.url())
        .max_frame_size(1024)
        .connect()
        .await
        .unwrap();
    let _challenge = next_frame(&mut small, T).await.unwrap().unwrap().unwrap();
    send_req(&mut small, "c", "connect", connect_params(None)).await;
    // hello-ok is < 1 KiB here.
    let _hello = next_frame(&mut small, T).await.unwrap().unwrap().unwrap();
    g.send_text("y".repeat(4096));
    g.send_text("\"after\"");
    let e = next_frame(&mut small, T).await.unwrap().unwrap();
    assert!(matches!(e, Err(ProtocolError::Overflow)), "{e:?}");
    let f = next_frame(&mut small, T).await.unwrap().unwrap().unwrap();
    assert_eq!(f, Frame::Text(Bytes::from_static(b"\"after\"")));
}

#[actix_rt::test]
async fn fake_gateway_close_code_arrives() {
    let g = FakeGateway::start(FakeOptions::default());
    let (mut c, _, _) = handshake(&g, None).await;
    g.close(4000, "connect timeout");
    let (close, err) = read_to_end(&mut c).await;
    let close = close.expect("close frame").expect("reason");
    assert_eq!(u16::from(close.code), 4000);
    assert_eq!(close.description.as_deref(), Some("connect timeout"));
    assert!(err.is_none());

    // restart(): 1012 + new bootId.
    let boot = g.boot_id();
    let (mut c, _, _) = handshake(&g, None).await;
    g.restart();
    let (close, _) = read_to_end(&mut c).await;
    assert_eq!(u16::from(close.unwrap().unwrap().code), 1012);
    let (_c, _, res) = handshake(&g, None).await;
    assert_ne!(res["payload"]["server"]["bootId"], json!(boot));

    // A responder can close instead of answering.
    g.set_responder(|_| Reply::CloseConnection(1011, "boom".into()));
    let (mut c, _, _) = handshake(&g, None).await;
    send_req(&mut c, "x", "health", json!({})).await;
    let (close, _) = read_to_end(&mut c).await;
    assert_eq!(u16::from(close.unwrap().unwrap().code), 1011);
}

#[actix_rt::test]
async fn fake_gateway_drop_reset_silent() {
    let g = FakeGateway::start(FakeOptions::default());
    let (mut c, _, _) = handshake(&g, None).await;
    g.send_event("before", json!({}));
    g.drop_tcp();
    assert_eq!(next_json(&mut c).await["event"], "before");
    let (close, err) = read_to_end(&mut c).await;
    assert!(close.is_none(), "drop_tcp must not send a close frame");
    eprintln!("drop_tcp -> client saw end with error {err:?}");

    let (mut c, _, _) = handshake(&g, None).await;
    g.reset_tcp();
    let (close, err) = read_to_end(&mut c).await;
    assert!(close.is_none());
    eprintln!("reset_tcp -> client saw end with error {err:?}");

    // Half-open: nothing comes back, but the socket stays open.
    let (mut c, _, _) = handshake(&g, None).await;
    g.go_silent();
    // go_silent travels over the command channel while our ping travels
    // over TCP: let the command land first so the ping is not answered.
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    g.send_event("lost", json!({}));
    c.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    send_req(&mut c, "h", "health", json!({})).await;
    assert!(
        next_frame(&mut c, Duration::from_millis(300))
            .await
            .is_none(),
        "silent connection must send nothing and stay open"
    );
    assert_eq!(g.live_connections(), 1);
    g.drop_tcp();
    let (close, _) = read_to_end(&mut c).await;
    assert!(close.is_none());
    assert!(g.wait_for(T, |g| g.live_connections() == 0).await);
}

#[actix_rt::test]
async fn fake_gateway_listening_and_upgrade_modes() {
    let g = FakeGateway::start(FakeOptions::default());
    g.stop_listening();
    let e = awc::Client::new().ws(g.url()).connect().await;
    assert!(e.is_err());
    g.resume_listening().unwrap();
    let (_c, _, res) = handshake(&g, None).await;
    assert_eq!(res["ok"], true);

    g.set_upgrade_mode(UpgradeMode::Status(503));
    match awc::Client::new().ws(g.url()).connect().await {
        Err(awc::error::WsClientError::InvalidResponseStatus(s)) => {
            assert_eq!(s.as_u16(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    g.set_upgrade_mode(UpgradeMode::Accept);
    // The refused attempt never reached the fake: 1 handshake + 1 rejected upgrade.
    assert_eq!(g.connections_total(), 2);
    drop(g);
}

#[actix_rt::test]
async fn fake_gateway_big_frames_and_raw_bytes() {
    let g = FakeGateway::start(FakeOptions::default());
    let (mut c, _, _) = handshake(&g, None).await;
    // 26 MiB in one frame reaches a client with max_frame_size 32 MiB.
    let big = format!("\"{}\"", "z".repeat(26 << 20));
    g.send_text(big.clone());
    let f = next_frame(&mut c, T).await.unwrap().unwrap().unwrap();
    assert!(matches!(&f, Frame::Text(b) if b.len() == big.len()));
    // After hello-ok the fake accepts frames up to maxPayload (here 1 MiB echo).
    let p = json!({"s": "q".repeat(1 << 20)});
    send_req(&mut c, "e", "echo", p.clone()).await;
    assert_eq!(next_json(&mut c).await["payload"], p);
    // Raw bytes below the ws layer: a masked server frame is a client protocol error.
    g.send_raw(vec![0x81, 0x81, 1, 2, 3, 4, b'x' ^ 1]);
    let e = next_frame(&mut c, T).await.unwrap().unwrap();
    assert!(matches!(e, Err(ProtocolError::MaskedFrame)), "{e:?}");
    // The bad header is not consumed: the same error comes back on every poll (sticky),
    // so a client must treat it as fatal. Overflow, by contrast, skips the frame.
    let e = next_frame(&mut c, T).await.unwrap().unwrap();
    assert!(matches!(e, Err(ProtocolError::MaskedFrame)), "{e:?}");

    // Binary frames pass through.
    let (mut c, _, _) = handshake(&g, None).await;
    g.send_binary(vec![1, 2, 3]);
    let f = next_frame(&mut c, T).await.unwrap().unwrap().unwrap();
    assert_eq!(f, Frame::Binary(Bytes::from_static(&[1, 2, 3])));
}
