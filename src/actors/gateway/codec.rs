//! The inbound frame bound, checked on the frame *header*.
//!
//! actix-http's parser compares a frame's length with its `max_size` only
//! once the whole frame has arrived, so a peer that declares an 8 GiB frame
//! makes it buffer 8 GiB first. [`BoundedCodec`] reads the declared length
//! from the header and, past the cap, never buffers the payload: it reports
//! the frame as [`Decoded::Oversized`] at once, then hands its payload up as
//! [`Decoded::Skipped`] pieces of what has arrived, each dropped once
//! [`HeadScan`] has read it for the response's `type` and `id` (wherever
//! they stand in the frame, before or after a huge payload). Frames within
//! the cap go to the wrapped actix codec unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_codec::{Decoder, Encoder};
use awc::error::WsProtocolError;
use awc::ws::{Codec, Frame, Message};
use bytes::{Buf, Bytes, BytesMut};

/// What the connection's stream yields.
#[derive(Debug)]
pub(super) enum Decoded {
    Frame(Frame),
    /// A frame over the cap, reported from its header; its payload follows
    /// as [`Decoded::Skipped`] pieces.
    Oversized(Oversized),
    /// A piece of an oversized frame's payload, as it arrived; `last`: the
    /// frame's payload ends with it.
    Skipped {
        chunk: Bytes,
        last: bool,
    },
}

/// A frame over the cap, seen from its header.
#[derive(Debug)]
pub(super) struct Oversized {
    /// The length the header declared.
    pub declared: u64,
    /// It starts a message (text frame or first fragment), rather than
    /// continuing one.
    pub starts_message: bool,
    /// It is the last frame of its message (FIN set).
    pub fin: bool,
}

pub(super) struct BoundedCodec {
    inner: Codec,
    /// Shared with the connection: it moves to the hello-ok bound.
    cap: Arc<AtomicUsize>,
    /// Payload bytes of the oversized frame under way not yet handed up.
    skip_remaining: u64,
}

impl BoundedCodec {
    /// Wrap awc's client codec; its own `max_size` is lifted because the
    /// header check here comes first.
    pub(super) fn new(inner: Codec, cap: Arc<AtomicUsize>) -> Self {
        BoundedCodec {
            inner: inner.max_size(usize::MAX),
            cap,
            skip_remaining: 0,
        }
    }
}

/// A frame header: (header length, first byte, masked, declared length).
fn peek_header(src: &[u8]) -> Option<(usize, u8, bool, u64)> {
    if src.len() < 2 {
        return None;
    }
    let masked = src[1] & 0x80 != 0;
    let (len, mut idx) = match src[1] & 0x7F {
        126 => {
            let b = src.get(2..4)?;
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let b: [u8; 8] = src.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if masked {
        idx += 4;
    }
    if src.len() < idx {
        return None;
    }
    Some((idx, src[0], masked, len))
}

impl Decoder for BoundedCodec {
    type Item = Decoded;
    type Error = WsProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Decoded>, WsProtocolError> {
        if self.skip_remaining > 0 {
            if src.is_empty() {
                return Ok(None);
            }
            let take = src
                .len()
                .min(usize::try_from(self.skip_remaining).unwrap_or(usize::MAX));
            // `split_to` shares the read buffer without copying; the piece
            // is dropped as soon as the connection has scanned it.
            let chunk = src.split_to(take).freeze();
            self.skip_remaining -= take as u64;
            let last = self.skip_remaining == 0;
            return Ok(Some(Decoded::Skipped { chunk, last }));
        }
        let Some((header_len, first, masked, declared)) = peek_header(src) else {
            return Ok(None);
        };
        let cap = self.cap.load(Ordering::Relaxed) as u64;
        // A masked frame is a protocol error the inner codec reports.
        if declared <= cap || masked {
            return Ok(self.inner.decode(src)?.map(Decoded::Frame));
        }
        let opcode = first & 0x0F;
        if opcode & 0x08 != 0 {
            // Control frames carry at most 125 bytes (RFC 6455 §5.5).
            return Err(WsProtocolError::InvalidLength(
                usize::try_from(declared).unwrap_or(usize::MAX),
            ));
        }
        // Keep the inner codec's fragment state in step: hand it the same
        // header with an empty payload (its frame is discarded).
        let mut empty = BytesMut::from(&[first, 0][..]);
        self.inner.decode(&mut empty)?;
        src.advance(header_len);
        self.skip_remaining = declared;
        Ok(Some(Decoded::Oversized(Oversized {
            declared,
            starts_message: opcode != 0,
            fin: first & 0x80 != 0,
        })))
    }
}

impl Encoder<Message> for BoundedCodec {
    type Error = WsProtocolError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), WsProtocolError> {
        self.inner.encode(item, dst)
    }
}

/// Reads the top-level `type` and `id` of a JSON object fed to it in pieces,
/// keeping nothing but those two short strings: how a response too large to
/// keep still names the request it answers. Keys are matched only in the
/// outermost object, so an `id` inside the payload is not taken for the
/// frame's.
#[derive(Debug, Default)]
pub(super) struct HeadScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// At depth 1, the next string is a key (after `{` or `,`).
    expect_key: bool,
    /// The depth-1 string being read is a key.
    string_is_key: bool,
    /// The depth-1 string being read, when it is a key or the value of
    /// `type` / `id`; `None` past [`HeadScan::MAX_STRING`] bytes or on an
    /// escape (no id of ours needs one).
    captured: Option<Vec<u8>>,
    key: Key,
    kind: Option<String>,
    id: Option<String>,
    /// The outer object closed, or the text is no JSON object.
    ended: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum Key {
    #[default]
    Other,
    Type,
    Id,
}

impl HeadScan {
    /// Longest `type` / `id` value kept (request ids are 36 bytes).
    pub const MAX_STRING: usize = 256;

    /// Read the next piece. Whether the scan is decided: the frame is not a
    /// response, or its id is known, or the object ended.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.decided() {
                return true;
            }
            self.byte(b);
        }
        self.decided()
    }

    pub fn decided(&self) -> bool {
        self.ended
            || match self.kind.as_deref() {
                Some("res") => self.id.is_some(),
                Some(_) => true,
                None => false,
            }
    }

    /// The id, when the object is a response (`"type":"res"`).
    pub fn response_id(&self) -> Option<&str> {
        match self.kind.as_deref() {
            Some("res") => self.id.as_deref(),
            _ => None,
        }
    }

    fn byte(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
                self.captured = None;
                return;
            } else if b == b'"' {
                self.in_string = false;
                self.string_done();
                return;
            }
            if let Some(buf) = self.captured.as_mut() {
                if buf.len() < Self::MAX_STRING {
                    buf.push(b);
                } else {
                    self.captured = None;
                }
            }
            return;
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => {
                self.in_string = true;
                self.escaped = false;
                self.string_is_key = self.depth == 1 && self.expect_key;
                let wanted = self.string_is_key || (self.depth == 1 && self.key != Key::Other);
                self.captured = wanted.then(Vec::new);
            }
            b'{' | b'[' => {
                if self.depth == 0 && b != b'{' {
                    self.ended = true;
                    return;
                }
                self.depth += 1;
                if self.depth == 1 {
                    self.expect_key = true;
                }
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    self.ended = true;
                }
            }
            b':' if self.depth == 1 => self.expect_key = false,
            b',' if self.depth == 1 => {
                self.expect_key = true;
                self.key = Key::Other;
            }
            _ if self.depth == 0 => self.ended = true,
            _ => {}
        }
    }

    /// A string ended (at the depth it began: brackets inside a string do
    /// not count).
    fn string_done(&mut self) {
        if self.depth != 1 {
            return;
        }
        let captured = self.captured.take();
        if self.string_is_key {
            self.key = match captured.as_deref() {
                Some(b"type") => Key::Type,
                Some(b"id") => Key::Id,
                _ => Key::Other,
            };
            return;
        }
        let value = captured.and_then(|v| String::from_utf8(v).ok());
        match self.key {
            Key::Type => self.kind = value,
            Key::Id => self.id = value,
            Key::Other => {}
        }
        self.key = Key::Other;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(cap: usize) -> BoundedCodec {
        BoundedCodec::new(Codec::new().client_mode(), Arc::new(AtomicUsize::new(cap)))
    }

    /// An unmasked server frame header declaring `len` bytes.
    fn header(first: u8, len: u64) -> Vec<u8> {
        let mut h = vec![first, 127];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    /// Every piece the codec hands up for what is in `src` now.
    fn drain(c: &mut BoundedCodec, src: &mut BytesMut) -> Vec<Decoded> {
        let mut out = Vec::new();
        while let Some(d) = c.decode(src).unwrap() {
            out.push(d);
        }
        out
    }

    #[test]
    fn an_oversized_frame_is_reported_from_its_header_and_never_buffered() {
        let mut c = codec(1024);
        let mut src = BytesMut::from(&header(0x81, 8 << 30)[..]);
        let Some(Decoded::Oversized(o)) = c.decode(&mut src).unwrap() else {
            panic!("expected an oversized report at the header");
        };
        assert_eq!(o.declared, 8 << 30);
        assert!(o.starts_message && o.fin);
        let mut scan = HeadScan::default();
        src.extend_from_slice(br#"{"type":"res","id":"abc","ok":true,"payload":""#);
        for d in drain(&mut c, &mut src) {
            let Decoded::Skipped { chunk, last } = d else {
                panic!("expected payload pieces");
            };
            assert!(!last);
            scan.feed(&chunk);
        }
        assert!(src.is_empty(), "the payload is handed up, not kept");
        assert_eq!(scan.response_id(), Some("abc"));
        // A megabyte more of the same frame: handed up piece by piece.
        for _ in 0..16 {
            src.extend_from_slice(&[0u8; 64 * 1024]);
            let pieces = drain(&mut c, &mut src);
            assert_eq!(pieces.len(), 1);
            assert!(src.is_empty());
        }
    }

    #[test]
    fn frames_after_a_skipped_one_decode_normally() {
        let mut c = codec(16);
        let mut src = BytesMut::new();
        src.extend_from_slice(&[0x81, 20]);
        src.extend_from_slice(&[b'x'; 20]);
        src.extend_from_slice(&[0x81, 2]);
        src.extend_from_slice(b"hi");
        let got = drain(&mut c, &mut src);
        assert!(matches!(
            got[0],
            Decoded::Oversized(Oversized { declared: 20, .. })
        ));
        assert!(matches!(&got[1], Decoded::Skipped { chunk, last: true } if chunk.len() == 20));
        match &got[2] {
            Decoded::Frame(Frame::Text(t)) => assert_eq!(&t[..], b"hi"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn a_skipped_first_fragment_keeps_the_continuation_state() {
        let mut c = codec(4);
        let mut src = BytesMut::new();
        src.extend_from_slice(&[0x01, 8]); // FirstText, not FIN
        src.extend_from_slice(b"12345678");
        src.extend_from_slice(&[0x80, 1, b'z']); // Last
        let got = drain(&mut c, &mut src);
        assert!(matches!(
            got[0],
            Decoded::Oversized(Oversized {
                starts_message: true,
                fin: false,
                ..
            })
        ));
        assert!(matches!(got[1], Decoded::Skipped { last: true, .. }));
        assert!(matches!(got[2], Decoded::Frame(Frame::Continuation(_))));
    }

    #[test]
    fn a_huge_control_frame_is_an_error_at_once() {
        let mut c = codec(1024);
        let mut src = BytesMut::from(&header(0x89, 1 << 40)[..]);
        assert!(c.decode(&mut src).is_err());
    }

    fn scan(pieces: &[&[u8]]) -> HeadScan {
        let mut s = HeadScan::default();
        for p in pieces {
            s.feed(p);
        }
        s
    }

    #[test]
    fn the_response_id_is_found_wherever_it_stands_at_the_top_level() {
        let big = "x".repeat(100_000);
        let after = format!(
            r#"{{"type":"res","ok":true,"payload":{{"text":"{big}","id":"inner"}},"id":"r9"}}"#
        );
        assert_eq!(scan(&[after.as_bytes()]).response_id(), Some("r9"));
        // Type last, split anywhere, escapes and nesting in the payload.
        let tricky = br#"{ "ok" : true, "payload" : ["a\"}", {"type":"event","id":"no"}], "id" : "r1", "type" : "res" }"#;
        for cut in 0..tricky.len() {
            let s = scan(&[&tricky[..cut], &tricky[cut..]]);
            assert_eq!(s.response_id(), Some("r1"), "cut at {cut}");
        }
        assert_eq!(
            scan(&[br#"{"type":"res","id":"r1","ok":false,"error":{"#]).response_id(),
            Some("r1")
        );
    }

    #[test]
    fn only_responses_name_a_request() {
        assert_eq!(
            scan(&[br#"{"type":"event","event":"agent","payload":{"id":"x"}"#]).response_id(),
            None
        );
        assert_eq!(
            scan(&[br#"{"type":"res","ok":true,"payload":{"id":"inner"}"#]).response_id(),
            None
        );
        assert_eq!(scan(&[b"[1,2,3]"]).response_id(), None);
        // An event is decided at its type: the rest need not be read.
        assert!(scan(&[br#"{"type":"event","#]).decided());
        assert!(!scan(&[br#"{"type":"res","ok":true,"payload":"#]).decided());
        // An over-long or escaped id is not taken.
        let long = format!(
            r#"{{"type":"res","id":"{}"}}"#,
            "a".repeat(HeadScan::MAX_STRING + 1)
        );
        assert_eq!(scan(&[long.as_bytes()]).response_id(), None);
        assert_eq!(
            scan(&[br#"{"type":"res","id":"a\"b"}"#]).response_id(),
            None
        );
    }
}
