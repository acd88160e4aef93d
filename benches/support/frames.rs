//! Frames of the synthetic gateway: `agent` events with the real payload shape
//! (PROTOCOL.md §6), pre-generated and pre-encoded as WebSocket frames before
//! any timing starts.

use serde_json::json;

/// Pieces of streamed assistant text: quotes, line breaks, non-ASCII.
const WORDS: &[&str] = &[
    "The ",
    "gateway ",
    "said \"ok\" ",
    "then\n",
    "stream ",
    "héllo ",
    "naïve ",
    "café ",
    "日本語 ",
    "テキスト ",
    "— ",
    "✓ ",
    "🚀 ",
    "tab\tand ",
    "back\\slash ",
    "{json} ",
    "[1, 2] ",
    "Ünïcödé ",
    "ok.\n\n",
    "Σ ",
];

/// Longest cumulative `text` kept (a sliding window of the run's output),
/// which keeps every frame within 300–600 bytes.
const TEXT_WINDOW: usize = 220;

/// Text patterns the flood cycles through, and events per run. Every run
/// of the flood has its own `runId` (as a real gateway's runs do): the
/// `(runId, stream, seq)` of an event is then unique, which two bridges'
/// NATS dedupe relies on (`nats::dedupe`). With the run ids cycling too,
/// JetStream's duplicate window stored only the first 3200 events.
const RUNS: usize = 8;
const EVENTS_PER_RUN: usize = 400;

fn uuid_like(n: usize, salt: u32) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        0x5eed_0000u32 ^ salt,
        n & 0xffff,
        (n >> 4) & 0xfff,
        (n * 7) & 0xfff,
        n * 2_654_435_761 % 0xffff_ffff_ffff
    )
}

/// The text of flood event `i` (1-based outer `seq` = `i + 1`).
pub fn agent_event(i: usize) -> String {
    let run_no = i / EVENTS_PER_RUN;
    let run = run_no % RUNS;
    let k = i % EVENTS_PER_RUN;
    let delta = WORDS[(i * 7 + run) % WORDS.len()];
    // Cumulative text: the run's words so far, the last TEXT_WINDOW bytes.
    let mut text = String::new();
    let start = k.saturating_sub(40);
    for j in start..=k {
        text.push_str(WORDS[((i - k + j) * 7 + run) % WORDS.len()]);
    }
    if text.len() > TEXT_WINDOW {
        let mut cut = text.len() - TEXT_WINDOW;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
    let frame = json!({
        "type": "event",
        "event": "agent",
        "payload": {
            "runId": uuid_like(run_no, 1),
            "seq": k + 1,
            "stream": "assistant",
            "ts": 1_795_576_145_344u64 + i as u64,
            "data": {"text": text, "delta": delta, "itemId": format!("msg_{run:02}_{:04}", k / 50)},
            "sessionKey": "agent:main:main",
            "sessionId": uuid_like(run, 2),
            "agentId": "main",
            "lane": "main",
        },
        "seq": i + 1,
    });
    frame.to_string()
}

/// Append one unmasked (server → client) WebSocket frame.
pub fn encode_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PONG: u8 = 0xA;

/// `n` flood events, pre-encoded as consecutive WebSocket text frames, with
/// (min, max, mean) frame text sizes.
pub fn flood(n: usize) -> (Vec<u8>, (usize, usize, usize)) {
    let mut out = Vec::with_capacity(n * 520);
    let (mut min, mut max, mut sum) = (usize::MAX, 0, 0);
    for i in 0..n {
        let t = agent_event(i);
        min = min.min(t.len());
        max = max.max(t.len());
        sum += t.len();
        encode_frame(OP_TEXT, t.as_bytes(), &mut out);
    }
    (out, (min, max, sum / n.max(1)))
}

/// Bytes of the first `m` frames of `buf` (unmasked frames as [`encode_frame`]
/// writes them).
pub fn prefix_len(buf: &[u8], m: usize) -> usize {
    let mut at = 0;
    for _ in 0..m {
        if at + 2 > buf.len() {
            break;
        }
        let (len, head) = match buf[at + 1] & 0x7f {
            126 => (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[at + 2..at + 10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            n => (n as usize, 2),
        };
        at = (at + head + len).min(buf.len());
    }
    at
}
