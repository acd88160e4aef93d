//! Route handlers.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::openapi::{ErrorBody, Health, Readiness, RpcOk};
use super::{ApiError, ApiState, MAX_BODY_BYTES};
use crate::actors::messages::{LinkState, Rpc};
use crate::actors::registry::{AgentDetail, AgentState};
use crate::actors::registry::{GetAgent, GetRun, ListAgents, RunView};
use crate::actors::supervisor::{GetStatus, LookupRun, Status};
use crate::actors::RequestError;
use crate::api::{parse_rpc_body, RpcBody};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Each path is one resource: a known path with another method is a JSON
    // 405 naming the allowed method, not a 404. The routes of one gateway
    // exist twice: under `/v1/gateways/{gw}/` and, for the primary gateway,
    // under `/v1/` (the single-gateway routes).
    cfg.service(get("/").route(web::get().to(super::status_page::status_page)))
        .service(get("/openapi.json").route(web::get().to(super::openapi::openapi_json)))
        .service(get("/healthz").route(web::get().to(healthz)))
        .service(get("/readyz").route(web::get().to(readyz)))
        .service(get("/metrics").route(web::get().to(metrics)))
        .service(get("/v1/gateways").route(web::get().to(gateways)))
        .service(get("/v1/gateways/{gw}").route(web::get().to(gateway)));
    for prefix in ["/v1", "/v1/gateways/{gw}"] {
        cfg.service(get(&format!("{prefix}/agents")).route(web::get().to(agents)))
            .service(get(&format!("{prefix}/agents/{{id}}")).route(web::get().to(agent)))
            .service(get(&format!("{prefix}/runs/{{run_id}}")).route(web::get().to(run)))
            .service(get(&format!("{prefix}/events")).route(web::get().to(super::sse::events)))
            .service(
                web::resource(format!("{prefix}/rpc"))
                    .route(web::post().to(rpc))
                    .default_service(web::to(|| async {
                        Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow: "POST" })
                    })),
            );
    }
    cfg.default_service(web::to(not_found));
}

/// A resource answering GET only.
fn get(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow: "GET" })
    }))
}

#[derive(Deserialize)]
pub struct TokenQuery {
    pub access_token: Option<String>,
}

/// Access log without the query string (it may hold `access_token`).
pub async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().to_string();
    let path = req.path().to_owned();
    if let Some(state) = req.app_data::<web::Data<ApiState>>() {
        if let Err(e) = state.check_browser_origin(&req) {
            tracing::warn!(event = crate::telemetry::events::HTTP_REFUSED, %method, %path, "{e}");
            return Ok(req.error_response(e).map_into_right_body());
        }
    }
    let res = next.call(req).await?.map_into_left_body();
    tracing::debug!(event = crate::telemetry::events::HTTP_REQUEST, %method, %path, status = res.status().as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "http request");
    Ok(res)
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route {} {}",
        req.method(),
        req.path()
    )))
}

#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "the process serves", body = Health), (status = 403, description = "refused browser-borne request (tokenless bridge, foreign Origin or Host)", body = ErrorBody),))]
pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// One gateway's status: the `/readyz` body of a single gateway, plus its
/// id, whether it is required and whether it is ready.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct GatewayStatus {
    #[serde(flatten)]
    status: Status,
    id: String,
    required: bool,
    ready: bool,
}

async fn gateway_status(g: &crate::actors::GatewayStack) -> Result<serde_json::Value, ApiError> {
    let status = g.supervisor.send(GetStatus).await.map_err(|_| {
        ApiError::Internal(format!(
            "the supervisor of gateway {:?} is not running",
            g.id
        ))
    })?;
    let ready = status.state == LinkState::Connected;
    serde_json::to_value(GatewayStatus {
        status,
        id: g.id.to_string(),
        required: g.required,
        ready,
    })
    .map_err(|e| ApiError::Internal(format!("status not serializable: {e}")))
}

/// 200 when every required gateway is connected, else 503. The body keeps
/// the single-gateway fields (`state`, `gateway`, `last_error`,
/// `next_attempt_in_ms`) for the primary gateway (or, without one, the
/// first required gateway that is not ready) and adds `ready` and
/// `gateways`: each gateway's status by id.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "every required gateway is connected", body = Readiness),
        (status = 503, description = "a required gateway is not connected", body = Readiness),
        (status = 403, description = "refused browser-borne request (tokenless bridge, foreign Origin or Host)", body = ErrorBody),
    ))]
pub(super) async fn readyz(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let list = state.gateways.list();
    let mut all = serde_json::Map::new();
    let mut statuses = Vec::with_capacity(list.len());
    for g in list {
        let v = gateway_status(g).await?;
        all.insert(g.id.to_string(), v.clone());
        statuses.push((g, v));
    }
    let is_ready = |v: &serde_json::Value| v["ready"].as_bool().unwrap_or(false);
    let ready = statuses.iter().all(|(g, v)| !g.required || is_ready(v));
    let top = state
        .gateways
        .primary()
        .and_then(|p| statuses.iter().find(|(g, _)| g.id.as_ref() == p))
        .or_else(|| statuses.iter().find(|(g, v)| g.required && !is_ready(v)))
        .or(statuses.first())
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| json!({}));
    let mut body = serde_json::Map::new();
    for key in [
        "state",
        "gateway",
        "last_error",
        "next_attempt_in_ms",
        "attempt",
    ] {
        body.insert(
            key.into(),
            top.get(key).cloned().unwrap_or(serde_json::Value::Null),
        );
    }
    body.insert("ready".into(), json!(ready));
    body.insert("gateways".into(), serde_json::Value::Object(all));
    let mut res = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    Ok(res.json(body))
}

/// `GET /v1/gateways`: every gateway's status, in configuration order.
#[utoipa::path(get, path = "/v1/gateways", tag = "gateways",
    responses((status = 200, description = "every gateway, in configuration order", body = Vec<GatewayStatus>), (status = 401, description = "missing or wrong token", body = ErrorBody), (status = 403, description = "refused browser-borne request (tokenless bridge, foreign Origin or Host)", body = ErrorBody),),
    security((), ("bearer" = [])))]
pub(super) async fn gateways(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let mut out = Vec::new();
    for g in state.gateways.list() {
        out.push(gateway_status(g).await?);
    }
    Ok(HttpResponse::Ok().json(out))
}

/// `GET /v1/gateways/{gw}`: one gateway's status (200 whether or not it is
/// connected; `ready` says).
#[utoipa::path(get, path = "/v1/gateways/{gw}", tag = "gateways",
    params(("gw" = String, Path, description = "a configured gateway id")),
    responses(
        (status = 200, description = "the gateway's status, connected or not", body = GatewayStatus),
        (status = 401, description = "missing or wrong token", body = ErrorBody), (status = 403, description = "refused browser-borne request (tokenless bridge, foreign Origin or Host)", body = ErrorBody),
        (status = 404, description = "no such gateway", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub(super) async fn gateway(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let g = state.gateways.resolve(&req)?;
    Ok(HttpResponse::Ok().json(gateway_status(g).await?))
}

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String), (status = 401, description = "missing or wrong token", body = ErrorBody), (status = 403, description = "refused browser-borne request (tokenless bridge, foreign Origin or Host)", body = ErrorBody),),
    security((), ("bearer" = [])))]
pub(super) async fn metrics(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let body = match &state.metrics {
        Some(h) => h.render(),
        None => String::new(),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body))
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses(
        (status = 200, description = "known agents, from the store while disconnected (stale: true)", body = Vec<AgentState>),
        (status = 401, description = "missing or wrong token", body = ErrorBody), (status = 403, description = "refused browser-borne request (tokenless bridge, foreign Origin or Host)", body = ErrorBody),
        (status = 404, description = "several gateways and none is the default: use /v1/gateways/{gw}/agents", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub(super) async fn agents(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let list = state
        .gateways
        .resolve(&req)?
        .registry
        .send(ListAgents)
        .await
        .map_err(|_| ApiError::Internal("the registry is not running".into()))?;
    Ok(HttpResponse::Ok().json(list.agents))
}

/// `{id}` of `…/agents/{id}`, percent-decoded (an agent id may hold `/`).
#[derive(Deserialize)]
pub(super) struct AgentPath {
    id: String,
}

#[utoipa::path(get, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "the agent id (percent-encoded)")),
    responses(
        (status = 200, description = "the agent and its recent runs", body = AgentDetail),
        (status = 401, description = "missing or wrong token", body = ErrorBody), (status = 403, description = "refused browser-borne request (tokenless bridge, foreign Origin or Host)", body = ErrorBody),
        (status = 404, description = "no such agent (or gateway)", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub(super) async fn agent(
    req: HttpRequest,
    path: web::Path<AgentPath>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let id = path.into_inner().id;
    let detail = state
        .gateways
        .resolve(&req)?
        .registry
        .send(GetAgent(id.clone()))
        .await
        .map_err(|_| ApiError::Internal("the registry is not running".into()))?;
    match detail {
        Some(d) => Ok(HttpResponse::Ok().json(d)),
        None => Err(ApiError::NotFound(format!("no agent {id:?}"))),
    }
}

#[derive(Deserialize)]
pub(super) struct RunPath {
    run_id: String,
}

#[utoipa::path(get, path = "/v1/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path, description = "the run id (an accepted `agent` answer's `runId`)")),
    responses(
        (status = 200, description = "what the bridge (or, failing that, the gateway) knows of the run", body = RunView),
        (status = 401, description = "missing or wrong token", body = ErrorBody), (status = 403, description = "refused browser-borne request (tokenless bridge, foreign Origin or Host)", body = ErrorBody),
        (status = 404, description = "neither the bridge nor the gateway knows the run (or no such gateway)", body = ErrorBody),
        (status = 502, description = "the gateway refused the lookup", body = ErrorBody),
        (status = 503, description = "not connected, and the registry does not hold the run", body = ErrorBody),
        (status = 504, description = "the gateway did not answer the lookup in time", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
/// `GET …/runs/{runId}`: the registry's record of a run, else what the
/// gateway knows (`agent.wait {timeoutMs: 0}`, then `activeRunIds`). A run
/// neither knows is 404: for the gateway an unknown run and a lost one look
/// the same (`timeout`, not active).
pub(super) async fn run(
    req: HttpRequest,
    path: web::Path<RunPath>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let run_id = path.into_inner().run_id;
    let g = state.gateways.resolve(&req)?;
    let held = g
        .registry
        .send(GetRun(run_id.clone()))
        .await
        .map_err(|_| ApiError::Internal("the registry is not running".into()))?;
    if let Some(view) = held {
        return Ok(HttpResponse::Ok().json(view));
    }
    let asked = g
        .supervisor
        .send(LookupRun(run_id.clone()))
        .await
        .map_err(|_| ApiError::Internal("the supervisor is not running".into()))?
        .map_err(|e| match e {
            // The lookup is the bridge's request, not the client's: a gateway
            // that refuses it (e.g. one without `agent.wait`) is a 502.
            RequestError::Rejected(_) => ApiError::GatewayRefused(Box::new(e)),
            other => ApiError::from(other),
        })?;
    match asked {
        Some(view) => Ok(HttpResponse::Ok().json(view)),
        None => Err(ApiError::NotFound(format!(
            "run {run_id:?} is not known to the bridge nor to gateway {:?} (agent.wait answers timeout and no session lists it as active: it never started here, or was lost in a gateway restart)",
            g.id
        ))),
    }
}

/// Read the body up to [`MAX_BODY_BYTES`]; over that is 413.
async fn read_body(mut payload: web::Payload) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ApiError::TooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How long `POST /v1/rpc` waits for its answer before it starts watching
/// the client's socket for a hang-up (see [`rpc`]). A client that hangs up
/// sooner is noticed then; its pending entry is released by the
/// connection's sweep, which runs every second anyway.
const WATCH_CLIENT_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

#[utoipa::path(post, path = "/v1/rpc", tag = "rpc",
    request_body(content = RpcBody, content_type = "application/json"),
    responses(
        (status = 200, description = "the gateway's answer", body = RpcOk),
        (status = 400, description = "bad body (BRIDGE_BAD_REQUEST) or the gateway's INVALID_REQUEST", body = ErrorBody),
        (status = 401, description = "missing or wrong token", body = ErrorBody),
        (status = 403, description = "the gateway's FORBIDDEN, or a refused browser-borne request", body = ErrorBody),
        (status = 404, description = "no such gateway", body = ErrorBody),
        (status = 413, description = "body over 1 MiB", body = ErrorBody),
        (status = 415, description = "not Content-Type: application/json", body = ErrorBody),
        (status = 502, description = "another gateway error (its object kept), BRIDGE_RUN_OUTCOME_UNKNOWN, BRIDGE_FRAME_TOO_LARGE", body = ErrorBody),
        (status = 503, description = "BRIDGE_NOT_CONNECTED / BRIDGE_DISCONNECTED / BRIDGE_SHUTTING_DOWN / BRIDGE_OVERLOADED, NOT_PAIRED, UNAVAILABLE; Retry-After when known", body = ErrorBody,
            headers(("Retry-After" = Option<u64>, description = "seconds"))),
        (status = 504, description = "BRIDGE_TIMEOUT", body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub(super) async fn rpc(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let gateway = state.gateways.resolve(&req)?;
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > MAX_BODY_BYTES {
            return Err(ApiError::TooLarge {
                limit: MAX_BODY_BYTES,
            });
        }
    }
    let body = read_body(payload).await?;
    // JSON only: a browser cannot send `application/json` cross-site without
    // a CORS preflight, which this API never grants.
    let json_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if !json_type {
        return Err(ApiError::UnsupportedMediaType);
    }
    // Held while this handler waits. actix-web does not drop a handler whose
    // client hung up (actix/actix-web#1313), so the socket is watched: when
    // the client is gone, `waiting` is dropped and the connection releases
    // the request's place (a queued one is never written; an accepted run
    // goes on in the gateway).
    let waiting = std::sync::Arc::new(());
    let msg = parse_rpc_body(&body)?.caller(&waiting);
    let send = gateway.supervisor.send(Rpc(msg));
    // The socket is watched only once the answer is late: most come well
    // before, and watching costs five system calls per request (a dup of
    // the socket, setting it non-blocking, its epoll registration and
    // removal, a close).
    let hung_up = async {
        tokio::time::sleep(WATCH_CLIENT_AFTER).await;
        super::sse::peer_closed(super::sse::peer_socket(&req)).await;
    };
    let answer = tokio::select! {
        answer = send => answer
            .map_err(|_| ApiError::Internal("the supervisor is not running".into()))??,
        () = hung_up => {
            drop(waiting);
            return Err(ApiError::BadRequest("the client closed the connection".into()));
        }
    };
    drop(waiting);
    let body = answer.to_body();
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}
