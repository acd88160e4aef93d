//! Route handlers.

use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{ApiError, ApiState, MAX_BODY_BYTES};
use crate::actors::messages::{LinkState, Rpc, Send};
use crate::actors::registry::{GetAgent, GetRun, ListAgents};
use crate::actors::supervisor::{GetStatus, LookupRun};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Each path is one resource: a known path with another method is a JSON
    // 405 naming the allowed method, not a 404. The routes of one gateway
    // exist twice: under `/v1/gateways/{gw}/` and, for the primary gateway,
    // under `/v1/` (the single-gateway routes).
    cfg.service(get("/healthz").route(web::get().to(healthz)))
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

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// One gateway's status as JSON: the `/readyz` body of a single gateway,
/// plus its id, whether it is required and whether it is ready.
async fn gateway_status(g: &crate::GatewayStack) -> Result<serde_json::Value, ApiError> {
    let status = g.supervisor.send(GetStatus).await.map_err(|_| {
        ApiError::Internal(format!(
            "the supervisor of gateway {:?} is not running",
            g.id
        ))
    })?;
    let ready = status.state == LinkState::Connected;
    let mut v = serde_json::to_value(status)
        .map_err(|e| ApiError::Internal(format!("status not serializable: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(g.id));
        o.insert("required".into(), json!(g.required));
        o.insert("ready".into(), json!(ready));
    }
    Ok(v)
}

/// 200 when every required gateway is connected, else 503. The body keeps
/// the single-gateway fields (`state`, `gateway`, `last_error`,
/// `next_attempt_in_ms`) for the primary gateway (or, without one, the
/// first required gateway that is not ready) and adds `ready` and
/// `gateways`: each gateway's status by id.
async fn readyz(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
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
async fn gateways(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let mut out = Vec::new();
    for g in state.gateways.list() {
        out.push(gateway_status(g).await?);
    }
    Ok(HttpResponse::Ok().json(out))
}

/// `GET /v1/gateways/{gw}`: one gateway's status (200 whether or not it is
/// connected; `ready` says).
async fn gateway(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let g = state.gateways.resolve(&req)?;
    Ok(HttpResponse::Ok().json(gateway_status(g).await?))
}

async fn metrics(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    state.authorize(&req, false)?;
    let body = match &state.metrics {
        Some(h) => h.render(),
        None => String::new(),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body))
}

async fn agents(req: HttpRequest, state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
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
struct AgentPath {
    id: String,
}

async fn agent(
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
struct RunPath {
    run_id: String,
}

/// `GET …/runs/{runId}`: the registry's record of a run, else what the
/// gateway knows (`agent.wait {timeoutMs: 0}`, then `activeRunIds`). A run
/// neither knows is 404: for the gateway an unknown run and a lost one look
/// the same (`timeout`, not active).
async fn run(
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
        .map_err(|_| ApiError::Internal("the supervisor is not running".into()))??;
    match asked {
        Some(view) => Ok(HttpResponse::Ok().json(view)),
        None => Err(ApiError::NotFound(format!(
            "run {run_id:?} is not known to the bridge nor to gateway {:?} (agent.wait answers timeout and no session lists it as active: it never started here, or was lost in a gateway restart)",
            g.id
        ))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RpcBody {
    method: String,
    #[serde(default)]
    params: Option<Box<RawValue>>,
    #[serde(default)]
    expect_final: bool,
    #[serde(default)]
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

async fn rpc(
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
    // Held while this handler waits: if the client goes away, actix-web
    // drops the handler and the connection releases the request.
    let waiting = std::sync::Arc::new(());
    let msg = parse_rpc_body(&body)?.caller(&waiting);
    let answer = gateway
        .supervisor
        .send(Rpc(msg))
        .await
        .map_err(|_| ApiError::Internal("the supervisor is not running".into()))??;
    drop(waiting);
    let body = answer.to_body();
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}
