//! The gateway's error object `{code, message, details?, retryable?, retryAfterMs?}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An error as the gateway sent it. Unknown fields are kept so that the object
/// can be handed on intact (HTTP API, CLI stderr).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayError {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    #[serde(
        default,
        rename = "retryAfterMs",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_after_ms: Option<u64>,
    /// Whatever else the gateway put in the object.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GatewayError {
    /// `details.code`, the field to branch on (never `message`).
    pub fn details_code(&self) -> Option<&str> {
        self.details.as_ref()?.get("code")?.as_str()
    }

    /// A string field of `details`, e.g. `recommendedNextStep` or `requestId`.
    pub fn detail_str(&self, key: &str) -> Option<&str> {
        self.details.as_ref()?.get(key)?.as_str()
    }

    /// The gateway's recommended next step, if it gave one.
    pub fn next_step(&self) -> Option<&str> {
        self.detail_str("recommendedNextStep")
    }

    /// An error made up on our side (e.g. a hello-ok we could not parse), in the
    /// same shape so that callers handle one type.
    pub fn local(code: &str, message: impl Into<String>) -> Self {
        GatewayError {
            code: code.to_owned(),
            message: message.into(),
            details: None,
            retryable: None,
            retry_after_ms: None,
            extra: Map::new(),
        }
    }

    /// The whole object as JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::String(self.message.clone()))
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(dc) = self.details_code() {
            write!(f, " ({dc})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_field_of_a_rate_limit_error() {
        let text = r#"{"code":"INVALID_REQUEST","message":"unauthorized: too many failed authentication attempts (retry later)","details":{"code":"AUTH_RATE_LIMITED","recommendedNextStep":"wait_then_retry"},"retryable":true,"retryAfterMs":299870,"traceId":"x1"}"#;
        let err: GatewayError = serde_json::from_str(text).unwrap();
        assert_eq!(err.details_code(), Some("AUTH_RATE_LIMITED"));
        assert_eq!(err.retry_after_ms, Some(299_870));
        assert_eq!(err.next_step(), Some("wait_then_retry"));
        let back = err.to_value();
        assert_eq!(back["traceId"], "x1");
        assert_eq!(back["retryAfterMs"], 299_870);
        assert_eq!(back["details"]["code"], "AUTH_RATE_LIMITED");
    }

    #[test]
    fn message_is_optional_and_code_is_not() {
        let err: GatewayError = serde_json::from_str(r#"{"code":"FORBIDDEN"}"#).unwrap();
        assert_eq!(err.message, "");
        assert!(serde_json::from_str::<GatewayError>(r#"{"message":"x"}"#).is_err());
    }
}
