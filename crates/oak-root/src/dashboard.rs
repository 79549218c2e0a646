//! The web dashboard: static HTML, CSS and ES modules embedded in the binary, served at `/`
//! (the page) and `/dashboard/<asset>`. Everything the page does goes through the public REST
//! API with the user's token; the server only hands out these files, with a strict
//! Content-Security-Policy (no inline script or style, nothing from elsewhere), `nosniff` and no
//! framing.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The assets: path under `/dashboard/`, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../dashboard/index.html")),
    ("icon.svg", "image/svg+xml", include_str!("../dashboard/icon.svg")),
    ("app.css", "text/css; charset=utf-8", include_str!("../dashboard/app.css")),
    ("js/api.js", JS, include_str!("../dashboard/js/api.js")),
    ("js/app.js", JS, include_str!("../dashboard/js/app.js")),
    ("js/ui.js", JS, include_str!("../dashboard/js/ui.js")),
    ("js/pages/login.js", JS, include_str!("../dashboard/js/pages/login.js")),
    ("js/pages/apps.js", JS, include_str!("../dashboard/js/pages/apps.js")),
    ("js/pages/services.js", JS, include_str!("../dashboard/js/pages/services.js")),
    ("js/pages/service.js", JS, include_str!("../dashboard/js/pages/service.js")),
    ("js/pages/clusters.js", JS, include_str!("../dashboard/js/pages/clusters.js")),
    ("js/pages/users.js", JS, include_str!("../dashboard/js/pages/users.js")),
    ("js/pages/account.js", JS, include_str!("../dashboard/js/pages/account.js")),
];

const JS: &str = "text/javascript; charset=utf-8";

/// Only this origin's own files and API; no inline code, no plugins, no framing, forms post
/// nowhere (the page submits through `fetch`).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// `/` and `/dashboard/{*asset}`.
pub fn router() -> Router {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route("/dashboard", get(|| async { asset("index.html") }))
        .route("/dashboard/{*path}", get(|Path(path): Path<String>| async move { asset(&path) }))
}

fn asset(path: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        let mut resp = (StatusCode::NOT_FOUND, format!("no dashboard asset {path:?}\n")).into_response();
        secure(&mut resp, "text/plain; charset=utf-8");
        return resp;
    };
    let mut resp = (StatusCode::OK, *body).into_response();
    secure(&mut resp, content_type);
    resp
}

fn secure(resp: &mut Response, content_type: &'static str) {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // Small and embedded: always current after an upgrade.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}
