//! A tiny OpenAI-compatible model server for the real gateway (PROTOCOL.md §8).
//!
//! `POST /v1/chat/completions` answers deterministically; markers in the last
//! user message (its user text, see [`user_text`]: the gateway wraps it in a
//! timestamp and a `Runtime:` line and adds internal-context user messages)
//! pick the behaviour:
//!
//! | marker     | behaviour                                                         |
//! |------------|-------------------------------------------------------------------|
//! | (none)     | reply `pong: <first 40 chars of the user text>` (`hi` → `pong: hi`)|
//! | `FAIL500`  | HTTP 500 (the gateway retries it 8 times)                         |
//! | `FAIL400`  | HTTP 400 (the run fails at once)                                  |
//! | `SLOWLONG` | stream 150 chunks 200 ms apart (~30 s)                            |
//! | `SLOW`     | stream 15 chunks 200 ms apart (~3 s)                              |
//! | `TOOL`     | first call: a `tool_calls` delta for `ls`; after the tool result: |
//! |            | `tool done: <first 40 chars of the tool result>`                 |
//!
//! Streaming follows the OpenAI SSE shape: `chat.completion.chunk` deltas, a
//! chunk with `finish_reason`, a usage chunk, then `data: [DONE]`. With
//! `"stream": false` a plain `chat.completion` object is returned.
//! Every other path answers 404, so the server can double as the local
//! `OPENCLAW_CLAWHUB_URL` / `CLAWHUB_URL` target.
//!
//! The server runs on its own thread with its own `actix_rt::System`, so it
//! can be used from any test (sync or `#[actix_rt::test]`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use bytes::Bytes;
use serde_json::{json, Value};

/// The model id the gateway is configured with (`fake/fake-model`).
pub const MODEL_ID: &str = "fake-model";
/// The provider id used in the gateway config.
pub const PROVIDER_ID: &str = "fake";

#[derive(Default)]
struct State {
    /// `POST /v1/chat/completions` calls.
    completions: AtomicUsize,
    /// Every other request (404s, e.g. clawhub look-ups).
    other: AtomicUsize,
    /// Request bodies of the completion calls (parsed JSON, or a string).
    bodies: Mutex<Vec<Value>>,
    /// Method and path of the other requests.
    other_paths: Mutex<Vec<String>>,
}

/// A running fake model server. Stopped on drop.
pub struct FakeModel {
    port: u16,
    state: Arc<State>,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl FakeModel {
    /// Starts the server on 127.0.0.1 with an OS-chosen port.
    pub fn start() -> FakeModel {
        let state = Arc::new(State::default());
        let (tx, rx) = mpsc::channel::<std::io::Result<(u16, ServerHandle)>>();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("fake-model".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let data = web::Data::from(thread_state);
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                            .route("/v1/chat/completions", web::post().to(chat_completions))
                            .default_service(web::to(not_found))
                    })
                    .workers(1)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .bind(("127.0.0.1", 0));
                    let server = match server {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let port = server.addrs().first().map(|a| a.port()).unwrap_or(0);
                    let server = server.run();
                    let _ = tx.send(Ok((port, server.handle())));
                    let _ = server.await;
                });
            })
            .expect("fake model: cannot spawn server thread");
        let (port, handle) = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("fake model: server thread did not report its port")
            .expect("fake model: cannot bind 127.0.0.1:0");
        assert_ne!(port, 0, "fake model: no bound address");
        FakeModel {
            port,
            state,
            handle,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/v1`, the provider `baseUrl`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// `http://127.0.0.1:PORT`, for `OPENCLAW_CLAWHUB_URL` and the like.
    pub fn root_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Number of `POST /v1/chat/completions` requests so far.
    pub fn request_count(&self) -> usize {
        self.state.completions.load(Ordering::SeqCst)
    }

    /// Number of requests to any other path (answered 404).
    pub fn other_request_count(&self) -> usize {
        self.state.other.load(Ordering::SeqCst)
    }

    /// Bodies of all completion requests so far.
    pub fn requests(&self) -> Vec<Value> {
        self.state
            .bodies
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    /// "METHOD /path" of all other requests so far.
    pub fn other_paths(&self) -> Vec<String> {
        self.state
            .other_paths
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }

    /// The `models` section of `openclaw.json` that points the gateway at this
    /// server (provider `fake`, model `fake-model`).
    pub fn models_config(&self) -> Value {
        json!({
            "mode": "replace",
            "catalogRefresh": {"enabled": false},
            "providers": {
                PROVIDER_ID: {
                    "baseUrl": self.base_url(),
                    "apiKey": "sk-local-fake",
                    "api": "openai-completions",
                    "timeoutSeconds": 60,
                    "models": [{
                        "id": MODEL_ID,
                        "name": "Fake Model",
                        "reasoning": false,
                        "input": ["text"],
                        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
                        "contextWindow": 128000,
                        "maxTokens": 4096
                    }]
                }
            }
        })
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        // `stop` sends the command at once; the returned future only awaits it.
        drop(self.handle.stop(false));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Text of a message's `content` (a string or an array of parts).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| {
                p.get("text")
                    .and_then(Value::as_str)
                    .or_else(|| p.as_str())
                    .map(str::to_owned)
            })
            .collect::<Vec<_>>()
            .join(""),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The user's own words in a user message as the gateway sends it: without
/// `<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>…<<<END_…>>>` blocks, the leading
/// `[Fri 2026-11-27 15:25 UTC] ` timestamp and the trailing `\n\nRuntime: …`
/// line. Empty for messages that are only internal context.
pub fn user_text(raw: &str) -> String {
    const BEGIN: &str = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>";
    const END: &str = "<<<END_OPENCLAW_INTERNAL_CONTEXT>>>";
    let mut s = raw.to_owned();
    while let Some(b) = s.find(BEGIN) {
        match s[b..].find(END) {
            Some(e) => s.replace_range(b..b + e + END.len(), ""),
            None => s.truncate(b),
        }
    }
    if let Some(r) = s.find("\n\nRuntime: ") {
        s.truncate(r);
    }
    let mut t = s.trim();
    if t.starts_with('[') {
        if let Some(end) = t.find("] ") {
            if end < 64 {
                t = &t[end + 2..];
            }
        }
    }
    t.trim().to_owned()
}

fn first_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

enum Plan {
    Fail(u16, &'static str, &'static str),
    Text {
        text: String,
        chunks: usize,
        delay: Duration,
    },
    ToolCall,
}

fn plan(body: &Value) -> Plan {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // The user's own words: the last user message that is not only internal
    // context (the gateway appends such a message after tool results too).
    let real_user_idx = messages.iter().rposition(|m| {
        m.get("role").and_then(Value::as_str) == Some("user")
            && !user_text(&content_text(m.get("content").unwrap_or(&Value::Null))).is_empty()
    });
    let last_user = real_user_idx
        .map(|i| {
            user_text(&content_text(
                messages[i].get("content").unwrap_or(&Value::Null),
            ))
        })
        .unwrap_or_default();
    // The latest tool result after that message, if any.
    let tool_result = messages
        .iter()
        .skip(real_user_idx.map(|i| i + 1).unwrap_or(0))
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("tool"))
        .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)));

    if last_user.contains("FAIL500") {
        return Plan::Fail(500, "server_error", "fake model: FAIL500 requested");
    }
    if last_user.contains("FAIL400") {
        return Plan::Fail(
            400,
            "invalid_request_error",
            "fake model: FAIL400 requested",
        );
    }
    if last_user.contains("TOOL") {
        if let Some(result) = tool_result {
            return Plan::Text {
                text: format!("tool done: {}", first_chars(&result, 40)),
                chunks: 3,
                delay: Duration::ZERO,
            };
        }
        return Plan::ToolCall;
    }
    let text = format!("pong: {}", first_chars(&last_user, 40));
    if last_user.contains("SLOWLONG") {
        return Plan::Text {
            text,
            chunks: 150,
            delay: Duration::from_millis(200),
        };
    }
    if last_user.contains("SLOW") {
        return Plan::Text {
            text,
            chunks: 15,
            delay: Duration::from_millis(200),
        };
    }
    Plan::Text {
        text,
        chunks: 3,
        delay: Duration::ZERO,
    }
}

/// Splits `text` into `n` pieces (some may be empty for short texts).
fn split_chunks(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let n = n.max(1);
    let per = chars.len().div_ceil(n).max(1);
    let mut out: Vec<String> = chars.chunks(per).map(|c| c.iter().collect()).collect();
    while out.len() < n {
        out.push(String::new());
    }
    out
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

async fn chat_completions(state: web::Data<State>, body: Bytes) -> HttpResponse {
    let n = state.completions.fetch_add(1, Ordering::SeqCst) + 1;
    let parsed: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    if let Ok(mut b) = state.bodies.lock() {
        b.push(parsed.clone());
    }
    if std::env::var_os("FAKE_MODEL_DEBUG").is_some() {
        eprintln!("fake model: request {n}: {parsed}");
    }
    let stream = parsed
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let model = parsed
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(MODEL_ID)
        .to_owned();
    let id = format!("chatcmpl-fake-{n}");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    let (text, chunks, delay, tool) = match plan(&parsed) {
        Plan::Fail(status, kind, msg) => {
            let code = actix_web::http::StatusCode::from_u16(status)
                .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
            return HttpResponse::build(code)
                .json(json!({"error": {"message": msg, "type": kind, "code": null}}));
        }
        Plan::Text {
            text,
            chunks,
            delay,
        } => (text, chunks, delay, false),
        Plan::ToolCall => (String::new(), 0, Duration::ZERO, true),
    };
    let completion_tokens = text.split_whitespace().count().max(1);
    let usage = json!({"prompt_tokens": 10, "completion_tokens": completion_tokens,
                       "total_tokens": 10 + completion_tokens});
    let tool_call_id = format!("call_fake_{n}");
    let tool_args = json!({"path": "."}).to_string();

    if !stream {
        let message = if tool {
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": tool_call_id, "type": "function",
                "function": {"name": "ls", "arguments": tool_args}}]})
        } else {
            json!({"role": "assistant", "content": text})
        };
        return HttpResponse::Ok().json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": if tool { "tool_calls" } else { "stop" }}],
            "usage": usage
        }));
    }

    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    // Frames to send, each preceded by `delay`.
    let mut frames: Vec<Bytes> = Vec::new();
    if tool {
        frames.push(sse(&chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "index": 0, "id": tool_call_id, "type": "function",
                "function": {"name": "ls", "arguments": tool_args}}]}),
            Value::Null,
        )));
        frames.push(sse(&chunk(json!({}), json!("tool_calls"))));
    } else {
        frames.push(sse(&chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )));
        for piece in split_chunks(&text, chunks) {
            frames.push(sse(&chunk(json!({"content": piece}), Value::Null)));
        }
        frames.push(sse(&chunk(json!({}), json!("stop"))));
    }
    frames.push(sse(
        &json!({"id": id, "object": "chat.completion.chunk", "created": created,
                             "model": model, "choices": [], "usage": usage}),
    ));
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));

    let body = futures_util::stream::unfold(
        (frames.into_iter(), true),
        move |(mut it, first)| async move {
            let frame = it.next()?;
            if !first && !delay.is_zero() {
                actix_rt::time::sleep(delay).await;
            }
            Some((Ok::<Bytes, actix_web::Error>(frame), (it, false)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

async fn not_found(state: web::Data<State>, req: HttpRequest) -> HttpResponse {
    state.other.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut p) = state.other_paths.lock() {
        p.push(format!("{} {}", req.method(), req.path()));
    }
    HttpResponse::NotFound().json(json!({"error": {"message": "not found", "type": "not_found"}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_model_user_text_strips_gateway_wrapping() {
        let raw = "[Fri 2026-11-27 15:25 UTC] hi SLOW\n\nRuntime: agent=main | session=x";
        assert_eq!(user_text(raw), "hi SLOW");
        let ctx = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nConversation data\n<<<END_OPENCLAW_INTERNAL_CONTEXT>>>";
        assert_eq!(user_text(ctx), "");
        assert_eq!(user_text("plain"), "plain");
    }

    fn post(port: u16, body: Value) -> (u16, String) {
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let mut resp = awc::Client::new()
                    .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                    .send_json(&body)
                    .await
                    .expect("fake model: request");
                let bytes = resp.body().await.expect("fake model: body");
                (
                    resp.status().as_u16(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            })
        })
        .join()
        .expect("fake model: client thread")
    }

    fn msgs(user: &str) -> Value {
        json!([{"role": "system", "content": "sys"},
               {"role": "user", "content": format!("[Fri 2026-11-27 15:25 UTC] {user}\n\nRuntime: x")},
               {"role": "user", "content": [{"type": "text",
                 "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>x<<<END_OPENCLAW_INTERNAL_CONTEXT>>>"}]}])
    }

    #[test]
    fn fake_model_streams_and_fails_on_request() {
        let model = FakeModel::start();
        let (status, body) = post(
            model.port(),
            json!({"model": "fake-model", "stream": true, "messages": msgs("hi")}),
        );
        assert_eq!(status, 200);
        let text: String = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|l| *l != "[DONE]")
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, "pong: hi");
        assert!(body.contains("\"finish_reason\":\"stop\""), "{body}");
        assert!(body.contains("\"usage\""), "{body}");
        assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");

        let (status, _) = post(
            model.port(),
            json!({"model": "fake-model", "stream": true, "messages": msgs("x FAIL500")}),
        );
        assert_eq!(status, 500);
        let (status, _) = post(
            model.port(),
            json!({"model": "fake-model", "stream": false, "messages": msgs("x FAIL400")}),
        );
        assert_eq!(status, 400);
        let (status, body) = post(
            model.port(),
            json!({"model": "fake-model", "stream": false, "messages": msgs("TOOL please")}),
        );
        assert_eq!(status, 200);
        assert!(body.contains("\"tool_calls\""), "{body}");
        // After the tool result (followed by an internal-context message, as
        // the gateway sends it) the model answers with text.
        let mut m = msgs("TOOL please");
        let arr = m.as_array_mut().expect("messages array");
        let ctx = arr.pop().expect("context message");
        arr.push(
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1",
            "type": "function", "function": {"name": "ls", "arguments": "{}"}}]}),
        );
        arr.push(json!({"role": "tool", "tool_call_id": "c1", "content": "AGENTS.md"}));
        arr.push(ctx);
        let (status, body) = post(
            model.port(),
            json!({"model": "fake-model", "stream": false, "messages": m}),
        );
        assert_eq!(status, 200);
        assert!(body.contains("tool done: AGENTS.md"), "{body}");
        assert_eq!(model.request_count(), 5);
    }
}
