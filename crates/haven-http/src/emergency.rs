//! `POST [base]/Patient/[id]/$break-glass`: a person opens emergency access to one patient's
//! records (`haven_identity::emergency`). The body is a FHIR `Parameters` with `reason` (why,
//! recorded and reviewed) and `code` (a current one-time code from their authenticator). The
//! answer is a `Parameters` with the patient and when the access ends.

use axum::body::{Body, to_bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use haven_identity::EventContext;
use haven_identity::error::IdentityError;
use serde_json::{Value, json};

use crate::AppState;

/// Largest request body (a reason and a code).
const LIMIT: usize = 16 * 1024;

fn outcome(status: u16, code: &str, message: &str) -> Response {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "error", "code": code, "diagnostics": message }]
    });
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        body.to_string(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    r
}

fn parameter<'a>(params: &'a Value, name: &str) -> Option<&'a str> {
    params
        .get("parameter")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
        .get("valueString")?
        .as_str()
}

pub(crate) async fn break_glass(
    state: &AppState,
    principal: &haven_domain::Principal,
    patient: &str,
    is_post: bool,
    body: Body,
    ctx: EventContext,
) -> Response {
    if !is_post {
        let mut r = outcome(
            405,
            "not-supported",
            "$break-glass takes POST with a Parameters body (reason, code)",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let Ok(bytes) = to_bytes(body, LIMIT).await else {
        return outcome(413, "too-long", "the request body is too large");
    };
    let Ok(params) = serde_json::from_slice::<Value>(&bytes) else {
        return outcome(
            400,
            "structure",
            "the body is not JSON: send a Parameters resource",
        );
    };
    if params.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return outcome(
            400,
            "structure",
            "send a Parameters resource with reason and code",
        );
    }
    let (Some(reason), Some(code)) = (parameter(&params, "reason"), parameter(&params, "code"))
    else {
        return outcome(
            400,
            "required",
            "both parameters are needed: reason (valueString: why) and code (valueString: a \
             current one-time code from your authenticator)",
        );
    };
    match state
        .identity
        .open_break_glass(principal, patient, reason, code, &ctx)
        .await
    {
        Ok(until) => {
            let body = json!({
                "resourceType": "Parameters",
                "parameter": [
                    { "name": "patient", "valueReference": { "reference": format!("Patient/{patient}") } },
                    { "name": "expires", "valueInstant": until.to_instant_string() }
                ]
            });
            let mut r = (StatusCode::OK, body.to_string()).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/fhir+json; charset=utf-8"),
            );
            r
        }
        Err(e) => {
            let status = e.status();
            let (code, message) = match &e {
                IdentityError::InvalidMfaCode => (
                    "security",
                    "the one-time code is wrong or was already used".to_owned(),
                ),
                IdentityError::Throttled(_) => ("throttled", e.to_string()),
                IdentityError::NotAllowed(m) | IdentityError::Invalid(m) => {
                    ("forbidden", m.clone())
                }
                IdentityError::Disabled => ("forbidden", e.to_string()),
                _ if status >= 500 => {
                    tracing::error!(error = %e, "break-glass failed");
                    ("transient", "try again shortly".to_owned())
                }
                _ => ("processing", e.to_string()),
            };
            let code = if status == 400 { "invalid" } else { code };
            let mut r = outcome(status, code, &message);
            if let IdentityError::Throttled(wait) = e
                && let Ok(v) = HeaderValue::from_str(&wait.to_string())
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
    }
}
