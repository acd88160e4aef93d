//! The HTTP API on `http.listen` (CONTRACT.md, "HTTP API"): thin
//! adapters that turn requests into actor messages and answers into JSON.

mod cors;
mod error;
mod openapi;
mod routes;
mod sse;
mod status_page;

use std::net::SocketAddr;

use actix_web::dev::Server;
use actix_web::{web, App, HttpRequest, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;

pub use crate::api::parse_rpc_body;
pub use error::ApiError;
pub use openapi::document as openapi_document;

use crate::actors::GatewayStack;
use crate::config::Secret;

/// Request bodies larger than this get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    pub gateways: std::sync::Arc<Gateways>,
    pub token: ApiToken,
    pub metrics: Option<PrometheusHandle>,
    /// `http.cors_origins`: origins granted CORS on `/v1/*`.
    pub cors_origins: std::sync::Arc<[String]>,
}

/// `http.token`, replaced at run time by a SIGHUP reload: after it, the old
/// token is refused. Read on every request (an uncontended read lock).
#[derive(Clone, Default)]
pub struct ApiToken(std::sync::Arc<std::sync::RwLock<Option<Secret>>>);

impl ApiToken {
    pub fn new(token: Option<Secret>) -> Self {
        ApiToken(std::sync::Arc::new(std::sync::RwLock::new(token)))
    }

    pub fn set(&self, token: Option<Secret>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    fn with<R>(&self, f: impl FnOnce(Option<&Secret>) -> R) -> R {
        f(self.0.read().unwrap_or_else(|e| e.into_inner()).as_ref())
    }

    fn is_set(&self) -> bool {
        self.with(|t| t.is_some())
    }
}

/// The configured gateways, in configuration order, and which one the
/// routes without a gateway id serve.
pub struct Gateways {
    list: Vec<GatewayStack>,
    primary: Option<String>,
}

impl Gateways {
    pub fn new(list: Vec<GatewayStack>, primary: Option<String>) -> Self {
        Gateways { list, primary }
    }

    pub fn list(&self) -> &[GatewayStack] {
        &self.list
    }

    /// The id the routes without a gateway id serve, if any.
    pub fn primary(&self) -> Option<&str> {
        self.primary.as_deref()
    }

    /// The gateway a request is for: `{gw}` in `/v1/gateways/{gw}/…`, else
    /// the primary one.
    pub fn resolve(&self, req: &HttpRequest) -> Result<&GatewayStack, ApiError> {
        match req.match_info().get("gw") {
            Some(id) => self.by_id(id),
            None => match &self.primary {
                Some(id) => self.by_id(id),
                None => Err(ApiError::NotFound(format!(
                    "several gateways are configured and none has id \"default\": use /v1/gateways/{{id}}{} (ids: {})",
                    req.path().strip_prefix("/v1").unwrap_or(req.path()),
                    self.ids()
                ))),
            },
        }
    }

    pub fn by_id(&self, id: &str) -> Result<&GatewayStack, ApiError> {
        self.list.iter().find(|g| &*g.id == id).ok_or_else(|| {
            ApiError::NotFound(format!(
                "no gateway {id:?}; configured gateways: {}",
                self.ids()
            ))
        })
    }

    fn ids(&self) -> String {
        self.list
            .iter()
            .map(|g| g.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ApiState {
    /// Check `Authorization: Bearer`, or `?access_token=` where allowed (SSE:
    /// browsers' EventSource cannot set headers).
    fn authorize(&self, req: &HttpRequest, allow_query: bool) -> Result<(), ApiError> {
        if !self.token.is_set() {
            return Ok(());
        }
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let query = if allow_query {
            web::Query::<routes::TokenQuery>::from_query(req.query_string())
                .ok()
                .and_then(|q| q.into_inner().access_token)
        } else {
            None
        };
        let given = header.map(str::to_owned).or(query);
        let ok = self.token.with(|want| match (want, given) {
            (None, _) => true,
            (Some(want), Some(g)) => constant_time_eq(g.as_bytes(), want.expose().as_bytes()),
            (Some(_), None) => false,
        });
        if ok {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Whether a host name (from `Host` or `Origin`) names this machine.
fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let lower = name.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl ApiState {
    /// Without an API token the API is reachable only from this machine,
    /// but a web page on this machine's browser could still reach it: refuse
    /// requests naming another `Host` (DNS rebinding) or carrying a foreign
    /// `Origin` (cross-site requests). With a token, the bearer check covers
    /// both (a page cannot know the token).
    pub fn check_browser_origin(
        &self,
        req: &actix_web::dev::ServiceRequest,
    ) -> Result<(), ApiError> {
        if self.token.is_set() {
            return Ok(());
        }
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        if let Some(host) = header(actix_web::http::header::HOST) {
            if !is_local_host(host) {
                return Err(ApiError::Forbidden(format!(
                    "Host {host:?} is not this machine; without http.token the API answers only to localhost/loopback names (set http.token to serve other names)"
                )));
            }
        }
        if let Some(origin) = header(actix_web::http::header::ORIGIN) {
            // The operator named this origin in http.cors_origins.
            if self.cors_allows(origin) {
                return Ok(());
            }
            let host = origin.split_once("://").map_or(origin, |(_, h)| h);
            if origin != "null" && !is_local_host(host.trim_end_matches('/')) {
                return Err(ApiError::Forbidden(format!(
                    "cross-origin request from {origin:?} refused; set http.token to allow other origins"
                )));
            }
            if origin == "null" {
                return Err(ApiError::Forbidden(
                    "cross-origin request from an opaque origin refused".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Compare without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Bind and build the server (not yet running). Port 0 picks a free port;
/// the bound address is returned.
pub fn server(state: ApiState, listen: SocketAddr) -> std::io::Result<(Server, SocketAddr)> {
    let data = web::Data::new(state);
    let srv = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .wrap(actix_web::middleware::from_fn(routes::access_log))
            .wrap(actix_web::middleware::from_fn(cors::cors))
            .configure(routes::configure)
    })
    .on_connect(sse::remember_peer)
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(listen)?;
    let addr = srv
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| std::io::Error::other("HTTP server bound no address"))?;
    Ok((srv.run(), addr))
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_hosts() {
        for h in [
            "localhost",
            "localhost:18800",
            "127.0.0.1:18800",
            "127.3.4.5",
            "[::1]:18800",
            "app.localhost",
        ] {
            assert!(super::is_local_host(h), "{h}");
        }
        for h in [
            "evil.example",
            "evil.example:18800",
            "10.0.0.7:18800",
            "localhost.evil.example",
            "[2001:db8::1]:80",
        ] {
            assert!(!super::is_local_host(h), "{h}");
        }
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
        assert!(super::constant_time_eq(b"", b""));
    }
}
