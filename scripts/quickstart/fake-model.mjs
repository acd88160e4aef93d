// A tiny OpenAI-compatible model for the quickstart (no network, no keys):
// POST /v1/chat/completions answers "pong: <your words>", streamed or not,
// in the shape the gateway's openai-completions provider reads. The same
// behaviour as tests/it/support/fake_model.rs without its fault markers.
// Prints "fake-model listening on PORT" once bound (127.0.0.1, port 0 or
// $FAKE_MODEL_PORT). Every other path is 404.
import http from "node:http";

const BEGIN = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>";
const END = "<<<END_OPENCLAW_INTERNAL_CONTEXT>>>";

// The user's own words: the gateway wraps them in a timestamp, a Runtime:
// line and internal-context blocks.
function userText(raw) {
  let s = String(raw);
  for (;;) {
    const b = s.indexOf(BEGIN);
    if (b < 0) break;
    const e = s.indexOf(END, b);
    s = e < 0 ? s.slice(0, b) : s.slice(0, b) + s.slice(e + END.length);
  }
  const r = s.indexOf("\n\nRuntime: ");
  if (r >= 0) s = s.slice(0, r);
  let t = s.trim();
  if (t.startsWith("[")) { const end = t.indexOf("] "); if (end >= 0 && end < 64) t = t.slice(end + 2); }
  return t.trim();
}

function contentText(c) {
  if (typeof c === "string") return c;
  if (Array.isArray(c)) return c.filter((p) => p && p.type === "text").map((p) => p.text).join("\n");
  return "";
}

function lastUserWords(messages) {
  for (let i = (messages || []).length - 1; i >= 0; i--) {
    const m = messages[i];
    if (m && m.role === "user") {
      const t = userText(contentText(m.content));
      if (t) return t;
    }
  }
  return "";
}

const server = http.createServer((req, res) => {
  if (req.method !== "POST" || !req.url.startsWith("/v1/chat/completions")) {
    res.writeHead(404, { "content-type": "application/json" });
    res.end('{"error":{"message":"not found"}}');
    return;
  }
  let body = "";
  req.on("data", (c) => { body += c; if (body.length > 8 << 20) req.destroy(); });
  req.on("end", () => {
    let j = {};
    try { j = JSON.parse(body); } catch { /* empty request */ }
    const text = "pong: " + [...lastUserWords(j.messages)].slice(0, 40).join("");
    const id = "chatcmpl-quickstart-" + Date.now();
    const created = Math.floor(Date.now() / 1000);
    const model = j.model || "fake-model";
    const n = text.split(/\s+/).filter(Boolean).length || 1;
    const usage = { prompt_tokens: 10, completion_tokens: n, total_tokens: 10 + n };
    if (!j.stream) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ id, object: "chat.completion", created, model,
        choices: [{ index: 0, message: { role: "assistant", content: text }, finish_reason: "stop" }], usage }));
      return;
    }
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    const chunk = (delta, finish) => ({ id, object: "chat.completion.chunk", created, model,
      choices: [{ index: 0, delta, finish_reason: finish }] });
    const send = (v) => res.write("data: " + JSON.stringify(v) + "\n\n");
    send(chunk({ role: "assistant", content: "" }, null));
    for (const piece of text.match(/.{1,8}/gs) || []) send(chunk({ content: piece }, null));
    send(chunk({}, "stop"));
    send({ id, object: "chat.completion.chunk", created, model, choices: [], usage });
    res.end("data: [DONE]\n\n");
  });
});

server.listen(Number(process.env.FAKE_MODEL_PORT || 0), "127.0.0.1", () => {
  console.log("fake-model listening on " + server.address().port);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
