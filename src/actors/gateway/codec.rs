//! The inbound frame bound, checked on the frame *header*.
//!
//! actix-http's parser compares a frame's length with its `max_size` only
//! once the whole frame has arrived, so a peer that declares an 8 GiB frame
//! makes it buffer 8 GiB first. [`BoundedCodec`] reads the declared length
//! from the header and, past the cap, never buffers the payload: it keeps the
//! first [`PREFIX_BYTES`] (enough to name the response id), reports the frame
//! as [`Decoded::Oversized`] at once, and discards the rest as it arrives.
//! Frames within the cap go to the wrapped actix codec unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_codec::{Decoder, Encoder};
use awc::error::WsProtocolError;
use awc::ws::{Codec, Frame, Message};
use bytes::{Buf, Bytes, BytesMut};

/// How much of an oversized frame is kept: a response's `type` and `id`
/// come first in the gateway's frames (`{"type":"res","id":"…",…}`).
pub(super) const PREFIX_BYTES: usize = 512;

/// What the connection's stream yields.
#[derive(Debug)]
pub(super) enum Decoded {
    Frame(Frame),
    Oversized(Oversized),
}

/// A frame over the cap, reported once its first bytes are in; the rest is
/// skipped without being kept.
#[derive(Debug)]
pub(super) struct Oversized {
    /// The length the header declared.
    pub declared: u64,
    /// The first bytes of its payload (at most [`PREFIX_BYTES`]).
    pub prefix: Bytes,
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
    skip: Option<Skip>,
}

struct Skip {
    remaining: u64,
    report: Option<Oversized>,
    prefix: BytesMut,
}

impl BoundedCodec {
    /// Wrap awc's client codec; its own `max_size` is lifted because the
    /// header check here comes first.
    pub(super) fn new(inner: Codec, cap: Arc<AtomicUsize>) -> Self {
        BoundedCodec {
            inner: inner.max_size(usize::MAX),
            cap,
            skip: None,
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
        loop {
            if let Some(skip) = self.skip.as_mut() {
                let take = src
                    .len()
                    .min(usize::try_from(skip.remaining).unwrap_or(usize::MAX));
                if skip.report.is_some() {
                    let keep = take.min(PREFIX_BYTES.saturating_sub(skip.prefix.len()));
                    skip.prefix.extend_from_slice(&src[..keep]);
                }
                src.advance(take);
                skip.remaining -= take as u64;
                let done = skip.remaining == 0;
                let report = if skip.prefix.len() >= PREFIX_BYTES || done {
                    skip.report.take().map(|mut r| {
                        r.prefix = std::mem::take(&mut skip.prefix).freeze();
                        r
                    })
                } else {
                    None
                };
                if done {
                    self.skip = None;
                }
                if let Some(r) = report {
                    return Ok(Some(Decoded::Oversized(r)));
                }
                if done {
                    continue;
                }
                return Ok(None);
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
            self.skip = Some(Skip {
                remaining: declared,
                report: Some(Oversized {
                    declared,
                    prefix: Bytes::new(),
                    starts_message: opcode != 0,
                    fin: first & 0x80 != 0,
                }),
                prefix: BytesMut::new(),
            });
        }
    }
}

impl Encoder<Message> for BoundedCodec {
    type Error = WsProtocolError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), WsProtocolError> {
        self.inner.encode(item, dst)
    }
}

/// The id of a response whose first bytes are `prefix`, when they show one
/// before the payload starts (an id inside a payload is not the frame's).
pub(super) fn response_id(prefix: &[u8]) -> Option<String> {
    let text = match std::str::from_utf8(prefix) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&prefix[..e.valid_up_to()]).ok()?,
    };
    let head_end = ["\"payload\"", "\"error\""]
        .iter()
        .filter_map(|k| text.find(k))
        .min()
        .unwrap_or(text.len());
    let head = &text[..head_end];
    if !head.contains("\"type\":\"res\"") {
        return None;
    }
    let start = head.find("\"id\":\"")? + "\"id\":\"".len();
    let len = head[start..].find('"')?;
    Some(head[start..start + len].to_owned())
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

    #[test]
    fn an_oversized_frame_is_reported_from_its_prefix_and_never_buffered() {
        let mut c = codec(1024);
        let mut src = BytesMut::from(&header(0x81, 8 << 30)[..]);
        let body = br#"{"type":"res","id":"abc","ok":true,"payload":""#;
        src.extend_from_slice(body);
        assert!(c.decode(&mut src).unwrap().is_none());
        assert!(src.is_empty(), "the payload is consumed, not kept");
        src.extend_from_slice(&[b'0'; PREFIX_BYTES]);
        let Some(Decoded::Oversized(o)) = c.decode(&mut src).unwrap() else {
            panic!("expected an oversized report");
        };
        assert_eq!(o.declared, 8 << 30);
        assert!(o.starts_message && o.fin);
        assert_eq!(o.prefix.len(), PREFIX_BYTES);
        assert_eq!(response_id(&o.prefix).as_deref(), Some("abc"));
        // A megabyte more of the same frame: consumed, nothing kept.
        for _ in 0..16 {
            src.extend_from_slice(&[0u8; 64 * 1024]);
            assert!(c.decode(&mut src).unwrap().is_none());
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
        assert!(matches!(
            c.decode(&mut src).unwrap(),
            Some(Decoded::Oversized(Oversized { declared: 20, .. }))
        ));
        match c.decode(&mut src).unwrap() {
            Some(Decoded::Frame(Frame::Text(t))) => assert_eq!(&t[..], b"hi"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_skipped_first_fragment_keeps_the_continuation_state() {
        let mut c = codec(4);
        let mut src = BytesMut::new();
        src.extend_from_slice(&[0x01, 8]); // FirstText, not FIN
        src.extend_from_slice(b"12345678");
        src.extend_from_slice(&[0x80, 1, b'z']); // Last
        assert!(matches!(
            c.decode(&mut src).unwrap(),
            Some(Decoded::Oversized(Oversized {
                starts_message: true,
                fin: false,
                ..
            }))
        ));
        assert!(matches!(
            c.decode(&mut src).unwrap(),
            Some(Decoded::Frame(Frame::Continuation(_)))
        ));
    }

    #[test]
    fn a_huge_control_frame_is_an_error_at_once() {
        let mut c = codec(1024);
        let mut src = BytesMut::from(&header(0x89, 1 << 40)[..]);
        assert!(c.decode(&mut src).is_err());
    }

    #[test]
    fn response_ids_come_only_from_the_head() {
        assert_eq!(
            response_id(br#"{"type":"res","id":"r1","ok":false,"error":{"#).as_deref(),
            Some("r1")
        );
        assert_eq!(
            response_id(br#"{"type":"event","event":"agent","payload":{"id":"x"}"#),
            None
        );
        assert_eq!(
            response_id(br#"{"type":"res","ok":true,"payload":{"id":"inner"}"#),
            None
        );
    }
}
