//! Frame decoding and request encoding.
//!
//! [`decode`] reads a text frame in one pass into a borrowed [`Inbound`]: the
//! envelope is typed, `payload` stays a `&RawValue` slice of the input so it can
//! be forwarded without re-serialising and parsed later only by whoever needs it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::GatewayError;

/// A decoded inbound frame, borrowing from the frame text.
#[derive(Debug)]
pub enum Inbound<'a> {
    Event(EventFrame<'a>),
    Response(ResponseFrame<'a>),
    /// A frame with a `type` this client does not know (ignored, counted).
    Unknown {
        kind: Cow<'a, str>,
    },
}

/// `{"type":"event","event":STR,"payload"?,"seq"?}`.
#[derive(Debug)]
pub struct EventFrame<'a> {
    pub event: Cow<'a, str>,
    pub seq: Option<u64>,
    pub payload: Option<&'a RawValue>,
}

/// `{"type":"res","id":STR,"ok":BOOL,"payload"?,"error"?}`.
#[derive(Debug)]
pub struct ResponseFrame<'a> {
    pub id: Cow<'a, str>,
    pub ok: bool,
    pub payload: Option<&'a RawValue>,
    pub error: Option<GatewayError>,
}

/// Why a frame could not be decoded. The frame is dropped and counted; the
/// session goes on (the gateway itself ignores garbage after auth).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("frame is not valid JSON or not an object: {0}")]
    Json(String),
    #[error("frame has no \"type\"")]
    MissingType,
    #[error("{kind} frame is missing \"{field}\"")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },
    #[error("error object does not parse: {0}")]
    BadError(String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// Decode one text frame.
pub fn decode(text: &str) -> Result<Inbound<'_>, DecodeError> {
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let kind = env.kind.ok_or(DecodeError::MissingType)?;
    // `"payload": null` is the same as no payload.
    let payload = env.payload.filter(|p| p.get() != "null");
    match kind.as_ref() {
        "event" => Ok(Inbound::Event(EventFrame {
            event: env.event.ok_or(DecodeError::MissingField {
                kind: "event",
                field: "event",
            })?,
            seq: env.seq,
            payload,
        })),
        "res" => {
            let id = env.id.ok_or(DecodeError::MissingField {
                kind: "res",
                field: "id",
            })?;
            let ok = env.ok.ok_or(DecodeError::MissingField {
                kind: "res",
                field: "ok",
            })?;
            let error = match env.error.filter(|e| e.get() != "null") {
                Some(raw) => Some(
                    serde_json::from_str::<GatewayError>(raw.get())
                        .map_err(|e| DecodeError::BadError(e.to_string()))?,
                ),
                None => None,
            };
            Ok(Inbound::Response(ResponseFrame {
                id,
                ok,
                payload,
                error,
            }))
        }
        _ => Ok(Inbound::Unknown { kind }),
    }
}

#[derive(Serialize)]
struct RequestOut<'a, P: Serialize + ?Sized> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    method: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    params: Option<&'a P>,
}

/// Encode `{"type":"req","id","method","params"?}`.
pub fn encode_request<P: Serialize + ?Sized>(
    id: &str,
    method: &str,
    params: Option<&P>,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&RequestOut {
        kind: "req",
        id,
        method,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn event(text: &str) -> EventFrame<'_> {
        match decode(text).unwrap() {
            Inbound::Event(e) => e,
            other => panic!("expected event, got {other:?}"),
        }
    }

    fn response(text: &str) -> ResponseFrame<'_> {
        match decode(text).unwrap() {
            Inbound::Response(r) => r,
            other => panic!("expected res, got {other:?}"),
        }
    }

    #[test]
    fn challenge_event_has_no_seq() {
        let e = event(
            r#"{"type":"event","event":"connect.challenge","payload":{"nonce":"83cff322-c90d-4859-9372-c9a65693420e","ts":1795576145344,"capabilities":["model-catalog-snapshot"]}}"#,
        );
        assert_eq!(e.event, "connect.challenge");
        assert_eq!(e.seq, None);
        let p: Value = serde_json::from_str(e.payload.unwrap().get()).unwrap();
        assert_eq!(p["nonce"], "83cff322-c90d-4859-9372-c9a65693420e");
    }

    #[test]
    fn event_with_seq_state_version_and_unknown_fields() {
        let e = event(
            r#"{"type":"event","event":"presence","payload":{"presence":[]},"seq":7,"stateVersion":{"presence":3,"health":2},"recipientProfileId":"p","future":1}"#,
        );
        assert_eq!(e.seq, Some(7));
        assert_eq!(e.payload.unwrap().get(), r#"{"presence":[]}"#);
    }

    #[test]
    fn event_without_payload_and_with_null_payload() {
        assert!(event(r#"{"type":"event","event":"tick"}"#)
            .payload
            .is_none());
        assert!(event(r#"{"type":"event","event":"tick","payload":null}"#)
            .payload
            .is_none());
    }

    #[test]
    fn escaped_event_name_is_unescaped() {
        let e = event(r#"{"type":"event","event":"a\u002eb"}"#);
        assert_eq!(e.event, "a.b");
    }

    #[test]
    fn ok_response_keeps_payload_raw() {
        let r = response(
            r#"{"type":"res","id":"r1","ok":true,"payload":{"runId":"x","status":"accepted"}}"#,
        );
        assert_eq!(r.id, "r1");
        assert!(r.ok);
        assert_eq!(
            r.payload.unwrap().get(),
            r#"{"runId":"x","status":"accepted"}"#
        );
        assert!(r.error.is_none());
    }

    #[test]
    fn error_response_keeps_the_error_object() {
        let r = response(
            r#"{"type":"res","id":"invalid","ok":false,"error":{"code":"INVALID_REQUEST","message":"invalid request frame: must have required property 'id'"}}"#,
        );
        assert!(!r.ok);
        let err = r.error.unwrap();
        assert_eq!(err.code, "INVALID_REQUEST");
        assert!(err.message.contains("required property 'id'"));
    }

    #[test]
    fn forbidden_error_details() {
        let r = response(
            r#"{"type":"res","id":"a","ok":false,"error":{"code":"FORBIDDEN","message":"missing scope: operator.write","details":{"code":"MISSING_SCOPE","missingScope":"operator.write","requiredScopes":["operator.write"]}}}"#,
        );
        let err = r.error.unwrap();
        assert_eq!(err.details_code(), Some("MISSING_SCOPE"));
        assert_eq!(err.detail_str("missingScope"), Some("operator.write"));
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "not json",
            "[1,2]",
            "42",
            "\"res\"",
            "{\"type\":1}",
        ] {
            assert!(
                matches!(decode(bad), Err(DecodeError::Json(_))),
                "{bad:?} should be a JSON error"
            );
        }
    }

    #[test]
    fn wrong_types_and_missing_fields() {
        assert_eq!(decode("{}").unwrap_err(), DecodeError::MissingType);
        assert!(matches!(
            decode(r#"{"type":"res","ok":true}"#),
            Err(DecodeError::MissingField { field: "id", .. })
        ));
        assert!(matches!(
            decode(r#"{"type":"res","id":"x"}"#),
            Err(DecodeError::MissingField { field: "ok", .. })
        ));
        assert!(matches!(
            decode(r#"{"type":"event"}"#),
            Err(DecodeError::MissingField { field: "event", .. })
        ));
        assert!(matches!(
            decode(r#"{"type":"event","event":"x","seq":"7"}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode(r#"{"type":"event","event":"x","seq":-1}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode(r#"{"type":"res","id":"x","ok":false,"error":{"message":"no code"}}"#),
            Err(DecodeError::BadError(_))
        ));
    }

    #[test]
    fn unknown_frame_type_passes() {
        match decode(r#"{"type":"hello-ok","protocol":4}"#).unwrap() {
            Inbound::Unknown { kind } => assert_eq!(kind, "hello-ok"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_encoding_matches_the_wire_shape() {
        let text = encode_request("id-1", "agents.list", Some(&json!({}))).unwrap();
        assert_eq!(
            text,
            r#"{"type":"req","id":"id-1","method":"agents.list","params":{}}"#
        );
        let text = encode_request::<Value>("id-2", "health", None).unwrap();
        assert_eq!(text, r#"{"type":"req","id":"id-2","method":"health"}"#);
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: arbitrary bytes and mutated valid frames never panic,
    //! through every decoding step the connection applies.
    use super::*;
    use crate::protocol::{GatewayEvent, HelloOk};
    use proptest::prelude::*;

    const SEEDS: &[&str] = &[
        r#"{"type":"event","event":"agent","seq":3,"payload":{"runId":"r","stream":"lifecycle","agentId":"main","data":{"phase":"end"}}}"#,
        r#"{"type":"res","id":"a","ok":false,"error":{"code":"FORBIDDEN","message":"m","details":{"code":"MISSING_SCOPE"},"retryAfterMs":5}}"#,
        r#"{"type":"res","id":"b","ok":true,"payload":{"type":"hello-ok","protocol":4,"server":{"version":"v"},"policy":{"tickIntervalMs":30000},"auth":{"scopes":["operator.read"]}}}"#,
        r#"{"type":"event","event":"shutdown","payload":{"reason":"x","restartExpectedMs":1500}}"#,
        r#"{"type":"event","event":"health","payload":{"agents":[{"agentId":"main"}]}}"#,
        r#"{"type":"event","event":"chat","payload":{"runId":"r","state":"delta"}}"#,
    ];

    /// Everything the connection does with a text frame.
    fn exercise(text: &str) {
        match decode(text) {
            Ok(Inbound::Event(f)) => {
                let (e, _) = GatewayEvent::from_frame(&f);
                let _ = (e.agent_id(), e.run_id(), e.payload_json());
            }
            Ok(Inbound::Response(r)) => {
                if let Some(p) = r.payload {
                    let _ = HelloOk::parse(p.get());
                }
                if let Some(e) = r.error {
                    let _ = (e.details_code(), e.next_step(), e.to_value(), e.to_string());
                }
            }
            Ok(Inbound::Unknown { .. }) | Err(_) => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                exercise(text);
            }
            exercise(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn mutated_frames_never_panic(
            seed in 0..SEEDS.len(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
        ) {
            let mut bytes = SEEDS[seed].as_bytes().to_vec();
            for (pos, byte, op) in edits {
                let i = if bytes.is_empty() { 0 } else { pos % bytes.len() };
                match op {
                    0 if !bytes.is_empty() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ if !bytes.is_empty() => { bytes.remove(i); }
                    _ => {}
                }
            }
            exercise(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn any_json_shape_never_panics(v in arb_json(3)) {
            let text = v.to_string();
            exercise(&text);
            exercise(&format!(r#"{{"type":"event","event":"agent","payload":{text}}}"#));
            exercise(&format!(r#"{{"type":"res","id":"x","ok":false,"error":{text}}}"#));
        }
    }

    fn arb_json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-zA-Z\"\\\\é ]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(depth, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("type".to_string()),
                        Just("event".to_string()),
                        Just("payload".to_string()),
                        Just("runId".to_string()),
                        Just("code".to_string()),
                        Just("seq".to_string()),
                        "[a-z]{1,4}"
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
