//! The RPC request body of `POST /v1/rpc`, also the body of RPC over NATS:
//! parsed and checked once, so both transports give the same answers.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ApiError;
use crate::actors::messages::Send;

/// `POST /v1/rpc` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RpcBody {
    /// A gateway method, e.g. `agents.list`, `agent`, `chat.send`.
    #[schema(min_length = 1)]
    method: String,
    /// The method's params object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<Box<RawValue>>,
    /// For `agent`: wait past `accepted` for the final answer.
    #[serde(default)]
    expect_final: bool,
    /// Per-request timeout, 1 to 600000 ms.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 600000)]
    timeout_ms: Option<u64>,
}

/// Parse and check a `POST /v1/rpc` body (`{"method","params"?,
/// "expectFinal"?,"timeoutMs"?}`) into the request for the supervisor. Shared
/// with RPC over NATS so both give the same answers.
pub fn parse_rpc_body(body: &[u8]) -> Result<Send, ApiError> {
    let rpc: RpcBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be JSON {{\"method\": string, \"params\"?: object, \"expectFinal\"?: bool, \"timeoutMs\"?: number}}: {e}"
        ))
    })?;
    if rpc.method.trim().is_empty() {
        return Err(ApiError::BadRequest("method must not be empty".into()));
    }
    let params = match rpc.params {
        Some(p) if p.get().trim() == "null" => None,
        Some(p) if !p.get().trim_start().starts_with('{') => {
            return Err(ApiError::BadRequest("params must be a JSON object".into()))
        }
        other => other,
    };
    let timeout = match rpc.timeout_ms {
        Some(0) | Some(600_001..) => {
            return Err(ApiError::BadRequest(
                "timeoutMs must be from 1 to 600000".into(),
            ))
        }
        Some(ms) => Some(Duration::from_millis(ms)),
        None => None,
    };
    Ok(Send {
        method: rpc.method,
        params,
        timeout,
        expect_final: rpc.expect_final,
        caller: None,
    })
}
