//! CORS for the origins in `http.cors_origins` (Control Center's page).
//!
//! A listed origin gets `Access-Control-Allow-Origin` on `/v1/*` and
//! `/openapi.json`, and its preflights (`Authorization`, `Content-Type:
//! application/json`, `Last-Event-ID`) are answered. Every other origin gets
//! no grant at all, so its page cannot read an answer, and its preflight is
//! refused with 403: nothing changes for it. The bearer token is still
//! required from a listed origin: CORS decides which pages may *read*, the
//! token who may *ask*. No cookies are involved, so no
//! `Access-Control-Allow-Credentials`.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::{ApiError, ApiState};

/// Request headers a listed origin may send. `Last-Event-ID` and
/// `Cache-Control` are what `EventSource` adds when it reconnects.
const ALLOW_HEADERS: &str = "Authorization, Content-Type, Last-Event-ID, Cache-Control";
const ALLOW_METHODS: &str = "GET, POST";
/// Headers a page needs to act on an error (when to retry, how to auth).
const EXPOSE_HEADERS: &str = "Retry-After, WWW-Authenticate";
/// Browsers cap this anyway (Chromium: 2 h); 10 min keeps a changed list
/// from lingering.
const MAX_AGE_SECS: &str = "600";

/// Paths a listed origin may read.
fn cors_path(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/openapi.json"
}

impl ApiState {
    /// Whether `origin` is one of `http.cors_origins` (exact match).
    pub(super) fn cors_allows(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == origin)
    }
}

/// The middleware: answers preflights, adds the grant to answers for a
/// listed origin. Outermost, so a preflight (which carries no token) never
/// reaches the auth checks.
pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<ApiState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    if state.cors_origins.is_empty() || !cors_path(req.path()) {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let granted = origin.as_deref().filter(|o| state.cors_allows(o));
    let preflight = req.method() == Method::OPTIONS
        && origin.is_some()
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let res = match granted {
            Some(o) => HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, o))
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, MAX_AGE_SECS))
                .insert_header((header::VARY, "Origin"))
                .finish(),
            None => {
                let o = origin.as_deref().unwrap_or("");
                let e = ApiError::Forbidden(format!(
                    "origin {o:?} is not in http.cors_origins; add it there to let its pages read the API"
                ));
                tracing::warn!(event = crate::telemetry::events::HTTP_REFUSED, method = "OPTIONS", path = %req.path(), "{e}");
                actix_web::ResponseError::error_response(&e)
            }
        };
        return Ok(req.into_response(res).map_into_right_body());
    }
    let granted = granted.map(str::to_owned);
    let mut res = next.call(req).await?;
    let headers = res.headers_mut();
    // Caches must not hand one origin's answer (with its grant) to another.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(o) = granted.and_then(|o| HeaderValue::from_str(&o).ok()) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    Ok(res.map_into_left_body())
}
