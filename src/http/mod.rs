//! The HTTP API on `http.listen` (`../shared/CONTRACT.md`, "HTTP API"): thin
//! adapters that turn requests into actor messages and answers into JSON.

mod error;
mod routes;
mod sse;

use std::net::SocketAddr;

use actix::Addr;
use actix_web::dev::Server;
use actix_web::{web, App, HttpRequest, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::ApiError;

use crate::actors::{AgentRegistry, EventBroker, Supervisor};
use crate::config::Secret;

/// Request bodies larger than this get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Shared, read-only state of the handlers.
#[derive(Clone)]
pub struct ApiState {
    pub supervisor: Addr<Supervisor>,
    pub registry: Addr<AgentRegistry>,
    pub broker: Addr<EventBroker>,
    pub token: Option<Secret>,
    pub metrics: Option<PrometheusHandle>,
}

impl ApiState {
    /// Check `Authorization: Bearer`, or `?access_token=` where allowed (SSE:
    /// browsers' EventSource cannot set headers).
    fn authorize(&self, req: &HttpRequest, allow_query: bool) -> Result<(), ApiError> {
        let Some(want) = &self.token else {
            return Ok(());
        };
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
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), want.expose().as_bytes()) => Ok(()),
            _ => Err(ApiError::Unauthorized),
        }
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
            .configure(routes::configure)
    })
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
    fn constant_time_eq_works() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"abcd"));
        assert!(super::constant_time_eq(b"", b""));
    }
}
