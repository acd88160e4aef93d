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
    let params = serde_json::value::to_raw_value(&json!({})).unwrap();
    let text = encode_request("id-1", "agents.list", Some(&params));
    assert_eq!(
        text,
        r#"{"type":"req","id":"id-1","method":"agents.list","params":{}}"#
    );
    let text = encode_request("id-2", "health", None);
    assert_eq!(text, r#"{"type":"req","id":"id-2","method":"health"}"#);
}

#[test]
fn a_request_frame_fills_its_buffer_exactly() {
    // `Bytes::from` keeps a full buffer as it is; one with spare capacity
    // costs another allocation per request.
    let params = serde_json::value::to_raw_value(&json!({"i": 7})).unwrap();
    for text in [
        encode_request("0b1c-uuid", "agents.list", Some(&params)),
        encode_request("0b1c-uuid", "health", None),
    ] {
        assert_eq!(text.len(), text.capacity(), "{text}");
    }
    // An escape grows it; the text is still the wire's.
    let text = encode_request("id", "a\"b", None);
    assert_eq!(text, r#"{"type":"req","id":"id","method":"a\"b"}"#);
}
