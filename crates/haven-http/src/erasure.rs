//! `POST [base]/Patient/[id]/$erase`: an administrator erases a patient by destroying their
//! data key (`haven_service::erase`). The body is a FHIR `Parameters` with `reason`; the answer
//! a `Parameters` with what was done. 409 under a legal hold; 403 (audited) for anyone but a
//! person with the admin role.

use axum::body::{Body, to_bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::AppState;

/// Largest request body (a reason).
const LIMIT: usize = 16 * 1024;

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    r
}

fn outcome(status: u16, code: &str, message: &str) -> Response {
    fhir_json(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        &json!({
            "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": code, "diagnostics": message }]
        }),
    )
}

pub(crate) async fn erase(
    state: &AppState,
    principal: &haven_domain::Principal,
    patient: &str,
    is_post: bool,
    body: Body,
    request_id: String,
    source_ip: Option<String>,
) -> Response {
    if !is_post {
        let mut r = outcome(
            405,
            "not-supported",
            "$erase takes POST with a Parameters body (reason)",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let Ok(bytes) = to_bytes(body, LIMIT).await else {
        return outcome(413, "too-long", "the request body is too large");
    };
    let params: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            return outcome(
                400,
                "structure",
                "the body is not JSON: send a Parameters resource",
            );
        }
    };
    let reason = (params.get("resourceType").and_then(Value::as_str) == Some("Parameters"))
        .then(|| params.get("parameter").and_then(Value::as_array))
        .flatten()
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some("reason"))
        })
        .and_then(|p| p.get("valueString").and_then(Value::as_str));
    let Some(reason) = reason else {
        return outcome(
            400,
            "required",
            "send a Parameters resource with reason (valueString: why, kept in the audit trail)",
        );
    };
    match state
        .service
        .erase_patient_as(principal, patient, reason, Some(request_id), source_ip)
        .await
    {
        Ok(report) => fhir_json(
            StatusCode::OK,
            &json!({
                "resourceType": "Parameters",
                "parameter": [
                    { "name": "tombstoned", "valueInteger": report.tombstoned },
                    { "name": "kept", "valueInteger": report.kept },
                    { "name": "keyDestroyed", "valueBoolean": report.key_destroyed },
                    { "name": "auditName", "valueString": report.pseudonym },
                    { "name": "backups", "valueString": "copies made before this erasure open until the key-encryption key is rotated and retired: run `haven keys rotate` and `haven keys retire`" }
                ]
            }),
        ),
        Err(e) => {
            if e.status() >= 500 {
                tracing::error!(error = %e, "erasure failed");
            }
            fhir_json(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                &e.to_operation_outcome(),
            )
        }
    }
}
