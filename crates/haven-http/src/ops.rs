//! Operational endpoints: liveness, readiness, metrics, and the 404 for everything else.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::render::error_response;

/// Liveness: the process is up and serving HTTP. Deliberately does not touch the database, so
/// an unreachable database makes the pod unready, not restarted.
pub(crate) async fn healthz() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"ok\"}",
    )
        .into_response()
}

/// Readiness: the database answers.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    match state.service.ready().await {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{\"status\":\"ready\"}",
        )
            .into_response(),
        // Every error is an OperationOutcome, with Retry-After, like any 503 of the API.
        Err(e) => error_response(&e, false),
    }
}

pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
                "metrics require the configured bearer token\n",
            )
                .into_response();
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        (state.metrics)(),
    )
        .into_response()
}

pub(crate) async fn not_found() -> Response {
    error_response(
        &haven_service::ServiceError::NotFound(format!(
            "nothing is served here; the FHIR API is under {}/ (see {}/metadata)",
            crate::FHIR_BASE,
            crate::FHIR_BASE
        )),
        false,
    )
}
