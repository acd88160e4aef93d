//! `GET /openapi.json`: the OpenAPI 3.1 description of this API, built by
//! `utoipa` from the `#[utoipa::path]` attributes on the handlers and the
//! `ToSchema` types they answer with, so the document follows the code.
//!
//! To add a route: put `#[utoipa::path(…)]` on its handler and name the
//! handler in `paths(…)` below. A route under `/v1/` (other than
//! `/v1/gateways…`) is described once; [`PerGateway`] adds its
//! `/v1/gateways/{gw}/…` twin, as `routes::configure` registers both. To add
//! an error code: one variant in [`BridgeErrorCode`].

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, Required, Type};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{ApiError, ApiState};

/// Every `code` the bridge itself puts in an error object. Errors the
/// gateway sent keep the gateway's own code (`INVALID_REQUEST`,
/// `FORBIDDEN`, `NOT_PAIRED`, `UNAVAILABLE`, …), so `ErrorObject.code` is
/// any string; these are the ones a client can rely on from the bridge.
// Schema only: the codes are written where the errors are made (ApiError,
// RequestError); the test below checks each of those is listed here.
#[allow(non_camel_case_types, clippy::upper_case_acronyms, dead_code)]
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
pub enum BridgeErrorCode {
    /// 400: the request is malformed (body, query, `Last-Event-ID`).
    BRIDGE_BAD_REQUEST,
    /// 401: missing or wrong bearer token.
    BRIDGE_UNAUTHORIZED,
    /// 403: a browser-borne request to a tokenless bridge (foreign `Origin`
    /// or `Host`), or a preflight from an origin not in `http.cors_origins`.
    BRIDGE_FORBIDDEN,
    /// 404: no such route, gateway, agent or run.
    BRIDGE_NOT_FOUND,
    /// 405: the path exists with another method (`Allow` names it).
    BRIDGE_METHOD_NOT_ALLOWED,
    /// 413: request body over 1 MiB.
    BRIDGE_PAYLOAD_TOO_LARGE,
    /// 415: `POST /v1/rpc` without `Content-Type: application/json`.
    BRIDGE_UNSUPPORTED_MEDIA_TYPE,
    /// 503 + `Retry-After`: no gateway session right now.
    BRIDGE_NOT_CONNECTED,
    /// 503: the session dropped while the request was in flight.
    BRIDGE_DISCONNECTED,
    /// 503: the bridge is stopping.
    BRIDGE_SHUTTING_DOWN,
    /// 503 + `Retry-After`: a per-gateway bound was hit.
    BRIDGE_OVERLOADED,
    /// 504: no answer in time (`details.runId` for an accepted run).
    BRIDGE_TIMEOUT,
    /// 502: the gateway no longer knows an accepted run.
    BRIDGE_RUN_OUTCOME_UNKNOWN,
    /// 502: the answer was over the frame cap.
    BRIDGE_FRAME_TOO_LARGE,
    /// 500: a bug or a stopped internal component.
    BRIDGE_INTERNAL,
}

/// The error object: the bridge's (`code` from [`BridgeErrorCode`]) or the
/// gateway's, as the gateway sent it (its other fields kept).
#[derive(Serialize, ToSchema)]
pub struct ErrorObject {
    /// A [`BridgeErrorCode`] or the gateway's own code.
    #[schema(examples("BRIDGE_NOT_CONNECTED", "INVALID_REQUEST"))]
    pub code: String,
    pub message: String,
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// Every error answer: `{"ok":false,"error":{…}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub ok: bool,
    pub error: ErrorObject,
}

/// `POST /v1/rpc` success: the gateway's payload as sent.
#[derive(Serialize, ToSchema)]
pub struct RpcOk {
    /// Always `true`.
    pub ok: bool,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Present (true) when a lost `agent` run's outcome came from
    /// `agent.wait` after a reconnect.
    pub reattached: Option<bool>,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz`: the primary gateway's fields at the top, every gateway
/// by id under `gateways`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub state: Option<crate::actors::messages::LinkState>,
    pub gateway: Option<crate::actors::supervisor::GatewayInfo>,
    pub last_error: Option<crate::actors::supervisor::LastError>,
    pub next_attempt_in_ms: Option<u64>,
    pub attempt: Option<u32>,
    /// Every required gateway is connected.
    pub ready: bool,
    pub gateways: std::collections::BTreeMap<String, super::routes::GatewayStatus>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "openclaw-bridge",
        description = "Control Center's view of an OpenClaw gateway: agents, live events (SSE), RPC, health and metrics. With http.token set, /v1/*, /metrics and /openapi.json need `Authorization: Bearer TOKEN` (`GET /v1/events` also takes `?access_token=`). Any path answers 405 BRIDGE_METHOD_NOT_ALLOWED (with `Allow`) for a method it does not serve; an unknown path answers 404 BRIDGE_NOT_FOUND."
    ),
    paths(
        super::status_page::status_page,
        openapi_json,
        super::routes::healthz,
        super::routes::readyz,
        super::routes::metrics,
        super::routes::gateways,
        super::routes::gateway,
        super::routes::agents,
        super::routes::agent,
        super::routes::run,
        events_doc,
        super::routes::rpc,
    ),
    components(schemas(BridgeErrorCode, ErrorBody, ErrorObject)),
    modifiers(&Security, &PerGateway),
)]
pub struct ApiDoc;

/// The document, built once per call (cheap: a few kB, rarely read).
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The bearer token and, for EventSource, `?access_token=`.
struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("access_token"))),
        );
    }
}

/// Adds `/v1/gateways/{gw}/X` for every single-gateway route `/v1/X`.
struct PerGateway;

impl Modify for PerGateway {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let twins: Vec<_> = api
            .paths
            .paths
            .iter()
            .filter(|(p, _)| p.starts_with("/v1/") && !p.starts_with("/v1/gateways"))
            .map(|(p, item)| {
                let mut item = item.clone();
                for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                    op.operation_id = op.operation_id.take().map(|id| format!("{id}_gw"));
                    let params = op.parameters.get_or_insert_with(Vec::new);
                    params.insert(0, gateway_param().into());
                }
                (format!("/v1/gateways/{{gw}}{}", &p[3..]), item)
            })
            .collect();
        api.paths.paths.extend(twins);
    }
}

fn gateway_param() -> Parameter {
    ParameterBuilder::new()
        .name("gw")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some("a configured gateway id (gateway.id)"))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z0-9_-]+$")),
        ))
        .build()
}

/// `GET /v1/events` (the handler lives in `sse.rs`).
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "agents",
    params(
        ("event" = Option<String>, Query, description = "comma-separated gateway event names, e.g. agent,chat"),
        ("agent" = Option<String>, Query, description = "only this agent's events"),
        ("run" = Option<String>, Query, description = "only this run's events"),
        ("since" = Option<u64>, Query, description = "resume after this bridge event id (as Last-Event-ID)"),
        ("access_token" = Option<String>, Query, description = "the API token, for EventSource (it cannot set headers)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this bridge event id"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `id:` bridge event id, `event:` gateway event name (or bridge.gap, bridge.connected, bridge.disconnected), `data:` {\"seq\", \"payload\"}", content_type = "text/event-stream", body = String),
        (status = 400, description = "bad filter or Last-Event-ID", body = ErrorBody),
        (status = 401, description = "missing or wrong token", body = ErrorBody),
        (status = 403, description = "refused browser-borne request", body = ErrorBody),
        (status = 404, description = "no such gateway", body = ErrorBody),
        (status = 503, description = "too many subscribers", body = ErrorBody),
    ),
    security((), ("bearer" = []), ("access_token" = [])),
)]
#[allow(dead_code)]
fn events_doc() {}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses(
        (status = 200, description = "this document (OpenAPI 3.1)", content_type = "application/json", body = Object),
        (status = 401, description = "missing or wrong token", body = ErrorBody),
        (status = 403, description = "refused browser-borne request", body = ErrorBody),
    ),
    security((), ("bearer" = [])),
)]
pub async fn openapi_json(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    Ok(HttpResponse::Ok().json(document()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_with_its_gateway_twin() {
        let v = serde_json::to_value(document()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        let paths = v["paths"].as_object().unwrap();
        for (path, method) in [
            ("/", "get"),
            ("/openapi.json", "get"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/v1/gateways", "get"),
            ("/v1/gateways/{gw}", "get"),
            ("/v1/agents", "get"),
            ("/v1/agents/{id}", "get"),
            ("/v1/events", "get"),
            ("/v1/rpc", "post"),
            ("/v1/runs/{run_id}", "get"),
            ("/v1/gateways/{gw}/runs/{run_id}", "get"),
            ("/v1/gateways/{gw}/agents", "get"),
            ("/v1/gateways/{gw}/agents/{id}", "get"),
            ("/v1/gateways/{gw}/events", "get"),
            ("/v1/gateways/{gw}/rpc", "post"),
        ] {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path}"
            );
        }
        let twin = &paths["/v1/gateways/{gw}/rpc"]["post"];
        assert_eq!(twin["operationId"], "rpc_gw");
        assert_eq!(twin["parameters"][0]["name"], "gw");
    }

    #[test]
    fn the_error_code_enum_names_every_bridge_code() {
        let v = serde_json::to_value(document()).unwrap();
        let codes = v["components"]["schemas"]["BridgeErrorCode"]["enum"].clone();
        let codes: Vec<String> = serde_json::from_value(codes).unwrap();
        for code in [
            "BRIDGE_OVERLOADED",
            "BRIDGE_RUN_OUTCOME_UNKNOWN",
            "BRIDGE_FRAME_TOO_LARGE",
            "BRIDGE_TIMEOUT",
        ] {
            assert!(codes.iter().any(|c| c == code), "{code}");
        }
        // Every error the API can produce today carries a listed code.
        use crate::actors::RequestError;
        use actix_web::ResponseError;
        let errors = [
            ApiError::BadRequest("x".into()),
            ApiError::Unauthorized,
            ApiError::NotFound("x".into()),
            ApiError::TooLarge { limit: 1 },
            ApiError::MethodNotAllowed { allow: "GET" },
            ApiError::Forbidden("x".into()),
            ApiError::UnsupportedMediaType,
            ApiError::Internal("x".into()),
            RequestError::Timeout { after_ms: 1 }.into(),
            RequestError::ShuttingDown.into(),
            RequestError::BadRequest("x".into()).into(),
            RequestError::NotConnected {
                state: "backoff".into(),
                next_attempt_in_ms: None,
            }
            .into(),
        ];
        for e in errors {
            let code = e.rpc_reply()["error"]["code"].as_str().unwrap().to_owned();
            assert!(codes.contains(&code), "{code} missing from BridgeErrorCode");
            let status = e.status_code().as_u16().to_string();
            assert!(!status.is_empty());
        }
    }
}
