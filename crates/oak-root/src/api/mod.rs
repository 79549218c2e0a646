//! The public REST API: routes, and the OpenAPI document generated from the handlers.

mod applications;
mod auth;
mod clusters;
mod json_array;
mod logs;
mod organizations;
mod policy;
mod services;
mod users;

use axum::http::Request;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Oakestra root orchestrator API", description = "Public REST API of the Oakestra root orchestrator. \
        Paths answer with and without a trailing slash. Errors are `{code, message, field?, errors?}`: \
        400 malformed body, path or query; 401 missing, invalid or expired token; 403 a role is missing; \
        404 not found or not visible to the caller; 409 conflict with the current state; 413 body over 64 KiB; \
        422 invalid input (`errors` lists every field); 429 too many failed logins, or a per-user quota \
        (the message names the quota and the root flag that sets it)."),
    paths(
        auth::login, auth::refresh, auth::register,
        users::get_user, users::update_user, users::delete_user, users::change_password, users::permissions,
        users::list_users, users::list_org_users,
        organizations::list, organizations::create, organizations::get, organizations::update, organizations::delete,
        applications::create, applications::list, applications::list_of_user, applications::get,
        applications::update, applications::delete,
        services::create, services::get, services::update, services::delete, services::list_of_app, services::list,
        services::request_instance, services::delete_instance, logs::logs,
        clusters::all, clusters::active, clusters::workers, clusters::create_token, clusters::revoke_token,
        clusters::reset_certificate,
    ),
    modifiers(&BearerAuth),
    tags((name = "auth"), (name = "users"), (name = "organizations"), (name = "applications"),
         (name = "services"), (name = "instances"), (name = "clusters"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearerAuth", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// All routes of the API, without the trailing-slash normalisation (see [`trim_trailing_slash`]).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/health", get(health))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/register", post(auth::register))
        .route(
            "/api/user/{username}",
            get(users::get_user).put(users::update_user).delete(users::delete_user).post(users::change_password),
        )
        .route("/api/permission/{username}", get(users::permissions))
        .route("/api/users", get(users::list_users))
        .route("/api/users/{organization_id}", get(users::list_org_users))
        .route("/api/organization", get(organizations::list).post(organizations::create))
        .route(
            "/api/organization/{id}",
            get(organizations::get).put(organizations::update).delete(organizations::delete),
        )
        .route("/api/application", post(applications::create))
        .route("/api/application/{id}", get(applications::get).put(applications::update).delete(applications::delete))
        .route("/api/applications", get(applications::list))
        .route("/api/applications/{user}", get(applications::list_of_user))
        .route("/api/service", post(services::create))
        .route("/api/service/{id}", get(services::get).put(services::update).delete(services::delete))
        .route("/api/service/{id}/instance", post(services::request_instance))
        .route("/api/service/{id}/instance/{number}", axum::routing::delete(services::delete_instance))
        .route("/api/service/{id}/instance/{number}/logs", get(logs::logs))
        .route("/api/services", get(services::list))
        .route("/api/services/{app_id}", get(services::list_of_app))
        .route("/api/clusters", get(clusters::all))
        .route("/api/clusters/active", get(clusters::active))
        .route("/api/clusters/tokens", post(clusters::create_token))
        .route("/api/clusters/tokens/revoke", post(clusters::revoke_token))
        .route("/api/clusters/{cluster_id}/certificate", axum::routing::delete(clusters::reset_certificate))
        .route("/api/clusters/{cluster_id}/workers", get(clusters::workers))
        .route("/metrics", get(crate::metrics::serve))
        .fallback(not_found)
        // Bodies over the limit are cut off while read (chunked ones too) and answered 413.
        .layer(axum::extract::DefaultBodyLimit::max(crate::body::MAX_BODY))
        .with_state(state.clone());
    let doc = ApiDoc::openapi();
    api.merge(SwaggerUi::new("/api/docs").url("/api/openapi.json", doc.clone()))
        .merge(crate::dashboard::router())
        .route("/docs/openapi.json", get(move || std::future::ready(Json(doc.clone()))))
        // Requests by route template and status: the whole router, 404s included.
        .layer(axum::middleware::from_fn_with_state(state.metrics.http.clone(), oak_metrics::HttpMetrics::track))
        .layer(tower_http::cors::CorsLayer::permissive())
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

async fn not_found(uri: axum::http::Uri) -> crate::error::ApiError {
    crate::error::ApiError::NotFound(format!("no API endpoint at {}", uri.path()))
}

/// Accept the original's trailing-slash URLs (`/api/application/`) on the same routes. The
/// interactive docs keep their slash: their page redirects to `/api/docs/`.
pub fn trim_trailing_slash<B>(mut req: Request<B>) -> Request<B> {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') && !path.starts_with("/api/docs") {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let new = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_string(),
        };
        if let Ok(uri) = new.parse() {
            *req.uri_mut() = uri;
        }
    }
    req
}
