use super::correlator::{is_accepted, run_outcome, FinishedIds, FINISHED_IDS_KEPT};
use crate::protocol::GatewayError;
use serde_json::value::RawValue;

#[test]
fn accepted_detection() {
    let raw = |s: &str| RawValue::from_string(s.to_owned()).unwrap();
    assert!(is_accepted(&raw(
        r#"{"runId":"r","status":"accepted","acceptedAt":1}"#
    )));
    assert!(!is_accepted(&raw(r#"{"runId":"r","status":"ok"}"#)));
    assert!(!is_accepted(&raw(r#"{"runId":"r","status":"in_flight"}"#)));
    assert!(!is_accepted(&raw("[1]")));
    assert!(!is_accepted(&raw("null")));
}

#[test]
fn failed_run_outcome_keeps_payload_and_error() {
    let raw = RawValue::from_string(
        r#"{"runId":"r","status":"error","summary":"LLM request failed"}"#.to_owned(),
    )
    .unwrap();
    let err: GatewayError = serde_json::from_str(
        r#"{"code":"UNAVAILABLE","message":"LLM request failed","retryable":true}"#,
    )
    .unwrap();
    let out: serde_json::Value =
        serde_json::from_str(run_outcome(&raw, Some(&err)).unwrap().get()).unwrap();
    assert_eq!(out["status"], "error");
    assert_eq!(out["error"]["code"], "UNAVAILABLE");
    assert!(run_outcome(&RawValue::from_string("[1]".into()).unwrap(), None).is_none());
}

#[test]
fn finished_ids_are_bounded() {
    let mut f = FinishedIds::default();
    for i in 0..(FINISHED_IDS_KEPT + 10) {
        f.insert(i.to_string());
    }
    assert!(f.set.len() <= FINISHED_IDS_KEPT);
    assert!(!f.remove("0"));
    assert!(f.remove(&(FINISHED_IDS_KEPT + 9).to_string()));
}
