//! Frame decoding and request encoding.
//!
//! [`decode`] reads a text frame in one pass into a borrowed [`Inbound`]: the
//! envelope is typed, `payload` stays a `&RawValue` slice of the input so it can
//! be forwarded without re-serialising and parsed later only by whoever needs it.

use std::borrow::Cow;

use serde::Deserialize;
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
    pub payload: Option<RawJson<'a>>,
    /// The fields of an `agent` payload, found in the same pass as the
    /// envelope (`None` when that pass could not tell them apart).
    pub(crate) agent: Option<AgentFields<'a>>,
}

/// A JSON value's text, borrowed from the frame.
#[derive(Debug, Clone, Copy)]
pub struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    pub fn get(&self) -> &'a str {
        self.0
    }
}

/// The raw values of the payload keys an `agent` event is read from.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AgentFields<'a> {
    pub(crate) run_id: Option<&'a RawValue>,
    pub(crate) stream: Option<&'a RawValue>,
    pub(crate) agent_id: Option<&'a RawValue>,
    pub(crate) session_key: Option<&'a RawValue>,
    pub(crate) ts: Option<&'a RawValue>,
    pub(crate) seq: Option<&'a RawValue>,
    pub(crate) data: Option<&'a RawValue>,
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

/// A string borrowed from the input when it has no escapes, owned otherwise.
/// (`#[serde(borrow)]` on `Option<Cow<str>>` always copies; this does not.)
pub(crate) struct Str<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A frame's envelope. `P` is how the payload is read: [`Captured`] on the
/// first, one-pass try (its keys noted instead of being scanned again by the
/// typed view), `&RawValue` on the plain fallback. Both read every field the
/// same way, so the same frames are accepted and refused.
#[derive(Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>"))]
struct Envelope<'a, P> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    event: Option<Str<'a>>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    payload: Option<P>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// A payload object walked key by key (values kept raw). Its text is found
/// from where its first key and last value are in the frame; anything else
/// (not an object, empty, an escaped first key) is read again the plain way.
struct Captured<'a> {
    first_key: Option<&'a str>,
    last_value: Option<&'a str>,
    /// `None` when a key of [`AgentFields`] came twice.
    agent: Option<AgentFields<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Captured<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Captured<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Captured<'de>, A::Error> {
                let mut f = AgentFields::default();
                let (mut dup, mut first, mut first_key, mut last_value) = (false, true, None, None);
                while let Some(k) = map.next_key::<Str<'de>>()? {
                    if first {
                        first = false;
                        if let Cow::Borrowed(b) = k.0 {
                            first_key = Some(b);
                        }
                    }
                    let v: &'de RawValue = map.next_value()?;
                    last_value = Some(v.get());
                    let slot = match k.0.as_ref() {
                        "runId" => &mut f.run_id,
                        "stream" => &mut f.stream,
                        "agentId" => &mut f.agent_id,
                        "sessionKey" => &mut f.session_key,
                        "ts" => &mut f.ts,
                        "seq" => &mut f.seq,
                        "data" => &mut f.data,
                        _ => continue,
                    };
                    dup |= slot.is_some();
                    *slot = Some(v);
                }
                Ok(Captured {
                    first_key,
                    last_value,
                    agent: (!dup).then_some(f),
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Captured<'de>, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Captured::other())
            }
            fn visit_bool<E>(self, _: bool) -> Result<Captured<'de>, E> {
                Ok(Captured::other())
            }
            fn visit_i64<E>(self, _: i64) -> Result<Captured<'de>, E> {
                Ok(Captured::other())
            }
            fn visit_u64<E>(self, _: u64) -> Result<Captured<'de>, E> {
                Ok(Captured::other())
            }
            fn visit_f64<E>(self, _: f64) -> Result<Captured<'de>, E> {
                Ok(Captured::other())
            }
            fn visit_str<E>(self, _: &str) -> Result<Captured<'de>, E> {
                Ok(Captured::other())
            }
            fn visit_unit<E>(self) -> Result<Captured<'de>, E> {
                Ok(Captured::other())
            }
        }
        d.deserialize_any(V)
    }
}

impl Captured<'_> {
    fn other() -> Self {
        Captured {
            first_key: None,
            last_value: None,
            agent: None,
        }
    }
}

/// The text of a captured payload object inside `text`: from the `{` before
/// its first key to the `}` after its last value.
fn object_span<'a>(text: &'a str, c: &Captured<'_>) -> Option<&'a str> {
    let (key, value) = (c.first_key?, c.last_value?);
    let base = text.as_ptr() as usize;
    let k = (key.as_ptr() as usize).checked_sub(base)?;
    let end = (value.as_ptr() as usize).checked_sub(base)? + value.len();
    let bytes = text.as_bytes();
    if k == 0 || end > bytes.len() || bytes[k - 1] != b'"' {
        return None;
    }
    let mut start = k - 1;
    loop {
        start = start.checked_sub(1)?;
        match bytes[start] {
            b' ' | b'\n' | b'\r' | b'\t' => {}
            b'{' => break,
            _ => return None,
        }
    }
    let mut close = end;
    loop {
        match *bytes.get(close)? {
            b' ' | b'\n' | b'\r' | b'\t' => close += 1,
            b'}' => break,
            _ => return None,
        }
    }
    text.get(start..=close)
}

/// Decode one text frame.
pub fn decode(text: &str) -> Result<Inbound<'_>, DecodeError> {
    // One pass over the payload for the common case: an event whose payload
    // is an object. Anything else (and any error) is decoded the plain way;
    // responses as the gateway writes them go there at once.
    if text.starts_with(r#"{"type":"res""#) {
        return decode_plain(text);
    }
    if let Ok(env) = serde_json::from_str::<Envelope<'_, Captured<'_>>>(text) {
        if let (Some(kind), Some(event), Some(p)) = (&env.kind, env.event, env.payload) {
            if kind.0 == "event" {
                if let Some(span) = object_span(text, &p) {
                    return Ok(Inbound::Event(EventFrame {
                        event: event.0,
                        seq: env.seq,
                        payload: Some(RawJson(span)),
                        agent: p.agent,
                    }));
                }
            }
        }
    }
    decode_plain(text)
}

fn decode_plain(text: &str) -> Result<Inbound<'_>, DecodeError> {
    let env: Envelope<'_, &RawValue> =
        serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    let kind = env.kind.ok_or(DecodeError::MissingType)?.0;
    // `"payload": null` is the same as no payload.
    let payload = env.payload.filter(|p| p.get() != "null");
    match kind.as_ref() {
        "event" => Ok(Inbound::Event(EventFrame {
            event: env
                .event
                .ok_or(DecodeError::MissingField {
                    kind: "event",
                    field: "event",
                })?
                .0,
            seq: env.seq,
            payload: payload.map(|p| RawJson(p.get())),
            agent: None,
        })),
        "res" => {
            let id = env
                .id
                .ok_or(DecodeError::MissingField {
                    kind: "res",
                    field: "id",
                })?
                .0;
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

/// Encode `{"type":"req","id","method","params"?}`: the bytes serde would
/// write for those fields, written directly (params are already JSON text).
pub fn encode_request(id: &str, method: &str, params: Option<&RawValue>) -> String {
    // Exactly the length when neither needs an escape: `Bytes::from` then
    // takes the buffer as it is (with spare capacity it allocates again).
    let params_len = params.map_or(0, |p| p.get().len() + r#","params":"#.len());
    let mut out = String::with_capacity(
        r#"{"type":"req","id":"","method":""}"#.len() + id.len() + method.len() + params_len,
    );
    out.push_str(r#"{"type":"req","id":"#);
    push_json_str(&mut out, id);
    out.push_str(r#","method":"#);
    push_json_str(&mut out, method);
    if let Some(p) = params {
        out.push_str(r#","params":"#);
        out.push_str(p.get());
    }
    out.push('}');
    out
}

/// `s` as a JSON string, as serde_json writes it: quoted as it is when
/// nothing in it needs an escape (ids and method names), else by serde.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // A `str` always serialises.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
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

    /// The one-pass decode gives what the plain decode gives.
    fn same_as_plain(text: &str) {
        match (decode(text), decode_plain(text)) {
            (Ok(Inbound::Event(a)), Ok(Inbound::Event(b))) => {
                assert_eq!((&a.event, a.seq), (&b.event, b.seq), "{text}");
                assert_eq!(
                    a.payload.map(|p| p.get()),
                    b.payload.map(|p| p.get()),
                    "{text}"
                );
                let (ea, wa) = GatewayEvent::from_frame(&a);
                let (eb, wb) = GatewayEvent::from_frame(&b);
                assert_eq!((&ea.kind, wa), (&eb.kind, wb), "{text}");
                assert_eq!(ea.payload_json(), eb.payload_json(), "{text}");
            }
            (a, b) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text}"),
        }
    }

    #[test]
    fn one_pass_decode_edge_cases() {
        for text in [
            r#"{"type":"event","event":"agent","payload":{"runId":"r","stream":"lifecycle","agentId":"main","data":{"phase":"end"}}}"#,
            r#"{"type":"event","event":"agent","payload":{ "runId" : "r" , "data" : null }  ,"seq":3}"#,
            r#"{"type":"event","event":"agent","payload":{"run\u0049d":"r","stream":"x"}}"#,
            r#"{"type":"event","event":"agent","payload":{"runId":"r","runId":"s"}}"#,
            r#"{"type":"event","event":"agent","payload":{"runId":null}}"#,
            r#"{"type":"event","event":"agent","payload":{"runId":"r","ts":1.5}}"#,
            r#"{"type":"event","event":"agent","payload":{"runId":"r\"q","agentId":"a\u00e9","sessionKey":"agent:b:main"}}"#,
            r#"{"type":"event","event":"agent","payload":{}}"#,
            r#"{"type":"event","event":"agent","payload":[1,{"runId":"r"}]}"#,
            r#"{"type":"event","event":"agent","payload":"x"}"#,
            r#"{"type":"event","event":"agent","payload":1e999}"#,
            r#"{"type":"event","event":"agent","payload":{"runId":"r"},"payload":{"runId":"s"}}"#,
            r#"{"type":"event","event":"agent","ok":"no","payload":{"runId":"r"}}"#,
            r#"{"type":"res","id":"x","ok":true,"payload":{"runId":"r"}}"#,
        ] {
            same_as_plain(text);
        }
    }

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

        /// The direct writer gives serde's bytes exactly.
        #[test]
        fn raw_request_encoding_matches_serde(
            id in any::<String>(),
            method in any::<String>(),
            params in proptest::option::of(any::<i64>()),
            plain in "[a-z.]{1,20}",
        ) {
            let params = params.map(|n| {
                serde_json::value::to_raw_value(&serde_json::json!({"n": n, "s": method}))
                    .unwrap()
            });
            #[derive(serde::Serialize)]
            struct RequestOut<'a> {
                #[serde(rename = "type")]
                kind: &'static str,
                id: &'a str,
                method: &'a str,
                #[serde(skip_serializing_if = "Option::is_none")]
                params: Option<&'a RawValue>,
            }
            for m in [method.as_str(), plain.as_str()] {
                let want = serde_json::to_string(&RequestOut {
                    kind: "req",
                    id: &id,
                    method: m,
                    params: params.as_deref(),
                })
                .unwrap();
                prop_assert_eq!(encode_request(&id, m, params.as_deref()), want);
            }
        }

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
        fn one_pass_decode_matches_the_plain_one(v in arb_json(3), ws in "[ \n]{0,2}") {
            for text in [
                format!(r#"{{"type":"event","event":"agent","seq":1,"payload":{ws}{v}{ws}}}"#),
                format!(r#"{{"type":"event","event":"agent","payload":{{{ws}"runId":"r","x":{v},"stream":"lifecycle","data":{v}{ws}}},"seq":2}}"#),
                format!(r#"{{"payload":{{"agentId":{v},"runId":"r\u0031","ts":{v}}},"event":"chat","type":"event"}}"#),
            ] {
                same_as_plain(&text);
            }
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

#[cfg(test)]
mod tests;
