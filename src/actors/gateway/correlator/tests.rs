use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::oneshot;

use super::*;
use crate::protocol::{decode, GatewayError, Inbound};

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

fn req(timeout_ms: u64) -> Request {
    Request {
        is_agent: false,
        expect_final: false,
        caller: None,
        timeout: Duration::from_millis(timeout_ms),
        metered: None,
    }
}

fn agent(expect_final: bool) -> Request {
    Request {
        is_agent: true,
        expect_final,
        caller: None,
        timeout: Duration::from_secs(60),
        metered: None,
    }
}

/// Register `id`; the receiver gets its one answer.
fn add(c: &mut Correlator, id: &str, r: Request, now: Instant) -> oneshot::Receiver<Reply> {
    let (tx, rx) = oneshot::channel();
    c.insert(id.into(), r, tx, now);
    rx
}

/// Feed the response frame `text` to the correlator (held answers are
/// released, as at the end of a read pass).
fn respond(c: &mut Correlator, text: &str) -> &'static str {
    let what = respond_held(c, text);
    c.release();
    what
}

/// Feed the response frame `text`, as within a read pass.
fn respond_held(c: &mut Correlator, text: &str) -> &'static str {
    let Ok(Inbound::Response(res)) = decode(text) else {
        panic!("not a response: {text}");
    };
    match c.answer(res) {
        Delivered::Answered => "answered",
        Delivered::KeptOpen => "kept_open",
        Delivered::Late => "late",
        Delivered::Unknown(_) => "unknown",
    }
}

fn payload(rx: &mut oneshot::Receiver<Reply>) -> Value {
    match rx.try_recv() {
        Ok(Ok(p)) => serde_json::from_str(p.get()).unwrap(),
        other => panic!("expected a payload, got {other:?}"),
    }
}

fn error(rx: &mut oneshot::Receiver<Reply>) -> RequestError {
    match rx.try_recv() {
        Ok(Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn answers_in_any_order_reach_their_own_caller_once() {
    let mut c = Correlator::default();
    let now = Instant::now();
    let mut a = add(&mut c, "a", req(1000), now);
    let mut b = add(&mut c, "b", req(1000), now);
    assert_eq!(c.len(), 2);
    assert_eq!(
        respond(
            &mut c,
            r#"{"type":"res","id":"b","ok":true,"payload":{"n":2}}"#
        ),
        "answered"
    );
    assert_eq!(
        respond(
            &mut c,
            r#"{"type":"res","id":"a","ok":true,"payload":{"n":1}}"#
        ),
        "answered"
    );
    assert_eq!(payload(&mut a)["n"], 1);
    assert_eq!(payload(&mut b)["n"], 2);
    assert!(c.is_empty());
    assert_eq!(c.next_deadline(), None);
    // A second answer with the same id is for nobody.
    assert_eq!(
        respond(&mut c, r#"{"type":"res","id":"a","ok":true}"#),
        "unknown"
    );
}

#[test]
fn a_refusal_keeps_the_gateway_error_object_and_no_payload_is_null() {
    let mut c = Correlator::default();
    let now = Instant::now();
    let mut a = add(&mut c, "a", req(1000), now);
    let mut b = add(&mut c, "b", req(1000), now);
    let mut d = add(&mut c, "d", req(1000), now);
    respond(
        &mut c,
        r#"{"type":"res","id":"a","ok":false,"error":{"code":"FORBIDDEN","message":"missing scope: operator.write","details":{"code":"MISSING_SCOPE"}}}"#,
    );
    respond(&mut c, r#"{"type":"res","id":"b","ok":true}"#);
    respond(&mut c, r#"{"type":"res","id":"d","ok":false}"#);
    match error(&mut a) {
        RequestError::Rejected(g) => {
            assert_eq!(g.code, "FORBIDDEN");
            assert_eq!(g.details_code(), Some("MISSING_SCOPE"));
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(payload(&mut b), Value::Null);
    assert!(matches!(error(&mut d), RequestError::Rejected(g) if g.code == "UNKNOWN"));
}

#[test]
fn an_awaited_agent_run_is_kept_open_past_accepted_and_its_failure_is_its_outcome() {
    let mut c = Correlator::default();
    let mut rx = add(&mut c, "r", agent(true), Instant::now());
    assert_eq!(
        respond(
            &mut c,
            r#"{"type":"res","id":"r","ok":true,"payload":{"runId":"run-1","status":"accepted"}}"#
        ),
        "kept_open"
    );
    assert!(rx.try_recv().is_err(), "not answered yet");
    assert_eq!(c.len(), 1);
    assert_eq!(
        respond(
            &mut c,
            r#"{"type":"res","id":"r","ok":false,"payload":{"runId":"run-1","status":"error","summary":"boom"},"error":{"code":"UNAVAILABLE","message":"boom"}}"#
        ),
        "answered"
    );
    let out = payload(&mut rx);
    assert_eq!(out["status"], "error");
    assert_eq!(out["error"]["code"], "UNAVAILABLE");
}

#[test]
fn without_expect_final_accepted_answers_and_the_final_one_is_late() {
    let mut c = Correlator::default();
    let mut rx = add(&mut c, "r", agent(false), Instant::now());
    respond(
        &mut c,
        r#"{"type":"res","id":"r","ok":true,"payload":{"runId":"run-1","status":"accepted"}}"#,
    );
    assert_eq!(payload(&mut rx)["status"], "accepted");
    assert_eq!(
        respond(
            &mut c,
            r#"{"type":"res","id":"r","ok":true,"payload":{"runId":"run-1","status":"ok"}}"#
        ),
        "late"
    );
}

#[test]
fn expiry_times_out_in_deadline_order_and_hands_back_an_accepted_run_id() {
    let mut c = Correlator::default();
    let t0 = Instant::now();
    let mut slow = add(&mut c, "slow", req(5000), t0);
    let mut fast = add(&mut c, "fast", req(100), t0);
    let mut run = add(
        &mut c,
        "run",
        Request {
            timeout: Duration::from_millis(200),
            ..agent(true)
        },
        t0,
    );
    respond(
        &mut c,
        r#"{"type":"res","id":"run","ok":true,"payload":{"runId":"run-9","status":"accepted"}}"#,
    );
    assert_eq!(c.next_deadline(), Some(t0 + Duration::from_millis(100)));
    assert_eq!(c.expire(t0 + Duration::from_millis(99)), 0);
    assert_eq!(c.expire(t0 + Duration::from_millis(250)), 2);
    assert!(matches!(
        error(&mut fast),
        RequestError::Timeout { after_ms: 100 }
    ));
    match error(&mut run) {
        RequestError::Run {
            run_id,
            failure: RunFailure::Timeout { after_ms: 200 },
        } => {
            assert_eq!(run_id, "run-9")
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(c.next_deadline(), Some(t0 + Duration::from_millis(5000)));
    assert!(slow.try_recv().is_err());
    // The timed-out request's answer, if it comes, is dropped quietly.
    assert_eq!(
        respond(&mut c, r#"{"type":"res","id":"fast","ok":true}"#),
        "late"
    );
}

#[test]
fn losing_the_link_fails_everyone_and_accepted_runs_keep_their_id() {
    let mut c = Correlator::default();
    let now = Instant::now();
    let mut plain = add(&mut c, "p", req(1000), now);
    let mut run = add(&mut c, "r", agent(true), now);
    respond(
        &mut c,
        r#"{"type":"res","id":"r","ok":true,"payload":{"runId":"run-3","status":"accepted"}}"#,
    );
    let n = c.fail_all(&RequestError::Disconnected {
        reason: "lost".into(),
    });
    assert_eq!(n, 2);
    assert!(matches!(
        error(&mut plain),
        RequestError::Disconnected { .. }
    ));
    assert!(matches!(
        error(&mut run),
        RequestError::Run { ref run_id, failure: RunFailure::Disconnected { .. } } if run_id == "run-3"
    ));
    assert!(c.is_empty());
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn shutdown_tells_an_accepted_run_apart() {
    let mut c = Correlator::default();
    let mut run = add(&mut c, "r", agent(true), Instant::now());
    respond(
        &mut c,
        r#"{"type":"res","id":"r","ok":true,"payload":{"runId":"run-4","status":"accepted"}}"#,
    );
    c.fail_all(&RequestError::ShuttingDown);
    assert!(matches!(
        error(&mut run),
        RequestError::Run {
            failure: RunFailure::ShuttingDown,
            ..
        }
    ));
}

#[test]
fn fail_one_answers_it_and_its_late_answer_is_dropped() {
    let mut c = Correlator::default();
    let mut rx = add(&mut c, "x", req(1000), Instant::now());
    assert!(c.fail("x", RequestError::BadRequest("too big".into())));
    assert!(!c.fail("x", RequestError::BadRequest("again".into())));
    assert!(matches!(error(&mut rx), RequestError::BadRequest(_)));
    assert_eq!(
        respond(&mut c, r#"{"type":"res","id":"x","ok":true}"#),
        "late"
    );
}

#[test]
fn a_request_past_its_deadline_or_without_a_caller_is_not_written() {
    let mut c = Correlator::default();
    let t0 = Instant::now();
    let (tx, mut rx) = oneshot::channel();
    let d = c.insert("a".into(), req(100), tx, t0);
    assert!(c.still_wanted("a", d, t0));
    assert!(!c.still_wanted("a", d, d));
    assert!(matches!(
        error(&mut rx),
        RequestError::Timeout { after_ms: 100 }
    ));
    assert!(c.is_empty());
    // A caller that went away (its token dropped).
    let token = Arc::new(());
    let (tx, _rx) = oneshot::channel();
    let r = Request {
        caller: Some(Arc::downgrade(&token)),
        ..req(1000)
    };
    let d = c.insert("b".into(), r, tx, t0);
    drop(token);
    assert!(!c.still_wanted("b", d, t0));
    // A receiver that was dropped counts as gone too.
    let (tx, rx) = oneshot::channel();
    let d = c.insert("c".into(), req(1000), tx, t0);
    drop(rx);
    assert!(!c.still_wanted("c", d, t0));
    assert!(c.is_empty());
}

#[test]
fn abandoned_callers_are_released_and_the_rest_kept() {
    let mut c = Correlator::default();
    let now = Instant::now();
    let token = Arc::new(());
    let (tx, _gone_rx) = oneshot::channel();
    c.insert(
        "gone".into(),
        Request {
            caller: Some(Arc::downgrade(&token)),
            ..req(1000)
        },
        tx,
        now,
    );
    let mut kept = add(&mut c, "kept", req(1000), now);
    assert_eq!(c.release_abandoned(), 0);
    drop(token);
    assert_eq!(c.release_abandoned(), 1);
    assert_eq!(c.len(), 1);
    assert_eq!(
        respond(&mut c, r#"{"type":"res","id":"gone","ok":true}"#),
        "late"
    );
    respond(
        &mut c,
        r#"{"type":"res","id":"kept","ok":true,"payload":1}"#,
    );
    assert_eq!(payload(&mut kept), 1);
}

#[test]
fn equal_deadlines_are_both_kept() {
    let mut c = Correlator::default();
    let now = Instant::now();
    let mut a = add(&mut c, "a", req(10), now);
    let mut b = add(&mut c, "b", req(10), now);
    assert_eq!(c.expire(now + Duration::from_millis(10)), 2);
    assert!(matches!(error(&mut a), RequestError::Timeout { .. }));
    assert!(matches!(error(&mut b), RequestError::Timeout { .. }));
}

#[test]
fn accepted_detection() {
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
    let p = raw(r#"{"runId":"r","status":"error","summary":"LLM request failed"}"#);
    let err: GatewayError = serde_json::from_str(
        r#"{"code":"UNAVAILABLE","message":"LLM request failed","retryable":true}"#,
    )
    .unwrap();
    let out: Value = serde_json::from_str(run_outcome(&p, Some(&err)).unwrap().get()).unwrap();
    assert_eq!(out["status"], "error");
    assert_eq!(out["error"]["code"], "UNAVAILABLE");
    assert!(run_outcome(&raw("[1]"), None).is_none());
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

#[test]
fn request_ids_are_uuids_and_distinct() {
    let a = request_id();
    let b = request_id();
    assert_ne!(a, b);
    assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
}

#[test]
fn the_observer_sees_each_callers_request_end_once_and_never_the_bridges_own() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let seen: Rc<RefCell<Vec<(String, String)>>> = Rc::default();
    let log = seen.clone();
    let mut c = Correlator::observed(Box::new(move |method, _elapsed, reply| {
        let outcome = match reply {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code().to_owned(),
        };
        log.borrow_mut().push((method.to_owned(), outcome));
    }));
    let t0 = Instant::now();
    let metered = |method: &str| {
        Some(Metered {
            method: method.to_owned(),
            started: t0,
        })
    };
    let mut a = add(
        &mut c,
        "a",
        Request {
            metered: metered("health"),
            ..req(1000)
        },
        t0,
    );
    let _b = add(
        &mut c,
        "b",
        Request {
            metered: metered("status"),
            ..req(10)
        },
        t0,
    );
    let _own = add(&mut c, "own", req(10), t0);
    let (tx, mut refused) = oneshot::channel();
    c.refuse(metered("agents.list"), tx, RequestError::ShuttingDown);
    respond(&mut c, r#"{"type":"res","id":"a","ok":true,"payload":{}}"#);
    assert_eq!(c.expire(t0 + Duration::from_millis(20)), 2);
    // A second answer for `a` is late: not observed again.
    respond(&mut c, r#"{"type":"res","id":"a","ok":true,"payload":{}}"#);
    assert_eq!(payload(&mut a), serde_json::json!({}));
    assert!(matches!(error(&mut refused), RequestError::ShuttingDown));
    assert_eq!(
        *seen.borrow(),
        vec![
            ("agents.list".to_owned(), "BRIDGE_SHUTTING_DOWN".to_owned()),
            ("health".to_owned(), "ok".to_owned()),
            ("status".to_owned(), "BRIDGE_TIMEOUT".to_owned()),
        ]
    );
}

#[test]
fn an_rpc_responder_gets_an_answer_or_the_same_error() {
    let mut c = Correlator::default();
    let t0 = Instant::now();
    let (tx, mut ok_rx) = oneshot::channel();
    c.insert("a".into(), req(1000), Responder::Rpc(tx), t0);
    let (tx, mut err_rx) = oneshot::channel();
    c.insert("b".into(), req(1000), Responder::Rpc(tx), t0);
    assert_eq!(
        respond(
            &mut c,
            r#"{"type":"res","id":"a","ok":true,"payload":{"n":1}}"#
        ),
        "answered"
    );
    match ok_rx.try_recv() {
        Ok(Ok(answer)) => {
            assert_eq!(answer.payload.get(), r#"{"n":1}"#);
            assert!(!answer.reattached);
        }
        other => panic!("expected an answer, got {other:?}"),
    }
    assert!(c.fail("b", RequestError::ShuttingDown));
    assert!(matches!(
        err_rx.try_recv(),
        Ok(Err(RequestError::ShuttingDown))
    ));
    assert!(c.is_empty());
}

#[test]
fn answers_within_a_pass_reach_their_callers_together_at_its_release() {
    let now = Instant::now();
    let mut c = Correlator::default();
    let mut a = add(&mut c, "a", req(1000), now);
    let mut b = add(&mut c, "b", req(1000), now);
    assert_eq!(
        respond_held(
            &mut c,
            r#"{"type":"res","id":"a","ok":true,"payload":{"n":1}}"#
        ),
        "answered"
    );
    assert_eq!(
        respond_held(
            &mut c,
            r#"{"type":"res","id":"b","ok":false,"error":{"code":"NOPE","message":"no"}}"#
        ),
        "answered"
    );
    // Not pending any more (a second answer is late), but not yet sent.
    assert_eq!(c.len(), 0);
    assert!(matches!(
        a.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert!(matches!(
        b.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    c.release();
    assert_eq!(payload(&mut a), serde_json::json!({"n": 1}));
    match b.try_recv() {
        Ok(Err(RequestError::Rejected(e))) => assert_eq!(e.code, "NOPE"),
        other => panic!("expected the gateway's error, got {other:?}"),
    }
}

#[test]
fn a_correlator_dropped_with_held_answers_still_sends_them() {
    let now = Instant::now();
    let mut c = Correlator::default();
    let mut a = add(&mut c, "a", req(1000), now);
    respond_held(
        &mut c,
        r#"{"type":"res","id":"a","ok":true,"payload":{"n":2}}"#,
    );
    drop(c);
    assert_eq!(payload(&mut a), serde_json::json!({"n": 2}));
}
