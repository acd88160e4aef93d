//! `GET /`: the status page, one self-contained HTML file compiled into the
//! binary. It loads without a token (it holds no data); its script reads
//! `/readyz` (open) and, once given the API token, `/v1/*` and the live
//! events, keeping the token in a variable of the page only.

use actix_web::http::header;
use actix_web::HttpResponse;

const PAGE: &str = include_str!("status.html");

/// Inline script and style only, talking to this origin only, never framed
/// (clickjacking): the page needs nothing else.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 200, description = "the HTML status page (no token needed to load; it asks for one before it reads /v1/*)", content_type = "text/html", body = String)))]
pub async fn status_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(PAGE)
}
