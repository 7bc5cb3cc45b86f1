//! Turning service results and errors into HTTP responses.

use std::any::Any;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use bytes::Bytes;
use haven_service::{FhirResponse, ServiceError};

use crate::negotiate::{FHIR_JSON, Output};

fn pretty_print(body: &[u8]) -> Option<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    serde_json::to_vec_pretty(&v).ok()
}

/// Renders an error as an OperationOutcome with its status. Never includes internal detail:
/// `ServiceError`'s messages are written for clients.
/// Text safe inside an RFC 6750 quoted string (printable ASCII without `"` and `\\`).
pub(crate) fn quoted(s: &str) -> String {
    s.chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .take(200)
        .collect()
}

pub(crate) fn error_response(e: &ServiceError, pretty: bool) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let oo = e.to_operation_outcome();
    let body = if pretty {
        serde_json::to_vec_pretty(&oo)
    } else {
        serde_json::to_vec(&oo)
    }
    .unwrap_or_default();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    // RFC 6750 §3: the challenge tells a client whether to get a new token or more scope.
    let challenge = match e {
        ServiceError::Unauthenticated { error: None, .. } => {
            Some("Bearer realm=\"haven\"".to_owned())
        }
        ServiceError::Unauthenticated {
            error: Some(code),
            message,
        } => Some(format!(
            "Bearer realm=\"haven\", error=\"{code}\", error_description=\"{}\"",
            quoted(message)
        )),
        ServiceError::InsufficientScope(m) => Some(format!(
            "Bearer realm=\"haven\", error=\"insufficient_scope\", error_description=\"{}\"",
            quoted(m)
        )),
        _ => None,
    };
    if let Some(c) = challenge
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    // A 410 names the deletion's version, so a client can vread what came before it.
    if let ServiceError::Gone {
        version: Some(v),
        last_updated,
        ..
    } = e
    {
        if let Ok(val) = HeaderValue::from_str(&v.etag()) {
            h.insert(header::ETAG, val);
        }
        if let Some(t) = last_updated
            && let Ok(val) = HeaderValue::from_str(&t.to_http_date())
        {
            h.insert(header::LAST_MODIFIED, val);
        }
    }
    resp
}

pub(crate) fn fhir_response(r: FhirResponse, out: Output) -> Response<Body> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let body = match r.body {
        Some(b) if out.pretty => pretty_print(&b).map(Bytes::from).unwrap_or(b),
        Some(b) => b,
        None => Bytes::new(),
    };
    let has_body = !body.is_empty();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if has_body {
        let ct = if out.mime == FHIR_JSON {
            "application/fhir+json; charset=utf-8"
        } else {
            "application/json; charset=utf-8"
        };
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    if let Some(v) = r.version
        && let Ok(val) = HeaderValue::from_str(&v.etag())
    {
        h.insert(header::ETAG, val);
    }
    if let Some(t) = r.last_modified
        && let Ok(val) = HeaderValue::from_str(&t.to_http_date())
    {
        h.insert(header::LAST_MODIFIED, val);
    }
    if let Some(loc) = r.location
        && let Ok(val) = HeaderValue::from_str(&loc)
    {
        h.insert(header::LOCATION, val);
    }
    resp
}

/// Native Binary content. Served inert: a sandboxing CSP and nosniff stop an uploaded HTML or
/// SVG document from running script in the API's origin.
pub(crate) fn native_binary(content_type: &str, data: Vec<u8>, r: &FhirResponse) -> Response<Body> {
    let mut resp = Response::new(Body::from(data));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    if let Some(v) = r.version
        && let Ok(val) = HeaderValue::from_str(&v.etag())
    {
        h.insert(header::ETAG, val);
    }
    if let Some(t) = r.last_modified
        && let Ok(val) = HeaderValue::from_str(&t.to_http_date())
    {
        h.insert(header::LAST_MODIFIED, val);
    }
    resp
}

/// A panic becomes a plain 500 OperationOutcome; the panic message goes to the log only.
pub(crate) fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "request handler panicked");
    error_response(&ServiceError::Internal, false)
}
