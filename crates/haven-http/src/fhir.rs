//! The FHIR REST endpoint: one handler for every interaction under `/fhir`.
//!
//! Routing is done by the service's own router (the same one Bundle entries use), so this
//! handler only translates HTTP into a [`FhirRequest`] and the answer back into HTTP, and
//! records metrics and the access log line.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method as HttpMethod, header};
use axum::response::Response;
use haven_domain::Interaction;
use haven_service::{
    FhirRequest, FhirService, Method, RequestBody, RequestContext, Route, ServiceError, route,
    split_url,
};
use std::sync::Arc;

use crate::middleware::RequestLabels;
use crate::negotiate::{self, BodyKind};
use crate::render::{error_response, fhir_response, native_binary};
use crate::{AppState, FHIR_BASE, RequestId};

pub(crate) async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let client_address = req
        .extensions()
        .get::<crate::ClientAddress>()
        .map(|c| c.0.to_string());
    let (parts, body) = req.into_parts();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let path = parts
        .uri
        .path()
        .strip_prefix(FHIR_BASE)
        .unwrap_or("")
        .to_owned();

    let mut labels = Labels::default();
    let pretty_hint = query.contains("_pretty=true");
    // Every FHIR request needs a valid access token, except the capability statement (a
    // client must be able to discover how to authenticate).
    let principal = if path == "/metadata" || path == "metadata" {
        None
    } else {
        match authenticate(&state, &parts.headers).await {
            Ok(p) => Some(p),
            Err(e) => {
                // Read (and drop) the body within the size limit before refusing: a gateway
                // still sending it would otherwise see a reset connection and answer 503
                // instead of this 401.
                let limit = state.service.config().limits.max_body_bytes;
                let _ = to_bytes(body, limit).await;
                return error_response(&e, pretty_hint);
            }
        }
    };
    // Break-glass is the identity module's (a fresh second factor), at a FHIR operation's URL.
    if let Some(p) = &principal
        && let Some(patient) = path
            .trim_start_matches('/')
            .strip_prefix("Patient/")
            .and_then(|rest| rest.strip_suffix("/$break-glass"))
            .filter(|id| !id.contains('/'))
    {
        let ctx = haven_identity::EventContext {
            request_id: Some(request_id.clone()),
            source_ip: client_address.clone(),
        };
        let mut resp = crate::emergency::break_glass(
            &state,
            p,
            patient,
            parts.method == HttpMethod::POST,
            body,
            ctx,
        )
        .await;
        resp.extensions_mut().insert(RequestLabels {
            interaction: "break-glass",
            resource_type: "Patient",
        });
        return resp;
    }
    // Erasure by key destruction: an administrator's operation, audited by the service.
    if let Some(p) = &principal
        && let Some(patient) = path
            .trim_start_matches('/')
            .strip_prefix("Patient/")
            .and_then(|rest| rest.strip_suffix("/$erase"))
            .filter(|id| !id.contains('/'))
    {
        let mut resp = crate::erasure::erase(
            &state,
            p,
            patient,
            parts.method == HttpMethod::POST,
            body,
            request_id.clone(),
            client_address.clone(),
        )
        .await;
        resp.extensions_mut().insert(RequestLabels {
            interaction: "erase",
            resource_type: "Patient",
        });
        return resp;
    }
    let resp = match serve(
        &state.service,
        principal,
        &request_id,
        client_address,
        &parts.method,
        &parts.headers,
        &path,
        &query,
        body,
        &mut labels,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => {
            if e.status() >= 500 {
                tracing::error!(error = %e, "request failed");
            }
            let mut resp = error_response(&e, pretty_hint);
            if e.status() == 405 {
                set_allow(&mut resp, &path);
            }
            resp
        }
    };
    // Metrics and the access log line are written by the outer middleware, which also sees
    // responses of panicking handlers; it reads the labels from this extension.
    let mut resp = resp;
    resp.extensions_mut().insert(RequestLabels {
        interaction: labels.interaction.map_or("unknown", Interaction::as_str),
        resource_type: labels.resource_type.unwrap_or("none"),
    });
    resp
}

/// The caller, from the `Authorization: Bearer` header (RFC 6750 §2.1; never from the query
/// string). Refusals are 401 with the RFC 6750 challenge.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Arc<haven_domain::Principal>, ServiceError> {
    let Some(token) = crate::identity::bearer(headers) else {
        return Err(ServiceError::Unauthenticated {
            error: None,
            message: "this request needs an access token: send Authorization: Bearer <token> \
                      (see /.well-known/smart-configuration for how to get one)"
                .into(),
        });
    };
    match state.identity.validate(token).await {
        Ok((p, _)) => Ok(Arc::new(p)),
        Err(e) if e.status == 503 => Err(ServiceError::Unavailable),
        Err(e) => {
            metrics::counter!("haven_token_rejections_total").increment(1);
            Err(ServiceError::Unauthenticated {
                error: Some("invalid_token"),
                message: e.description,
            })
        }
    }
}

/// `Allow` on a 405: the methods the router accepts at this path (RFC 9110 15.5.6).
fn set_allow(resp: &mut Response, path: &str) {
    let Ok((segments, _)) = split_url(path) else {
        return;
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let allowed: Vec<&str> = haven_service::allowed_methods(&segs)
        .into_iter()
        .map(Method::as_str)
        .collect();
    if let Ok(v) = axum::http::HeaderValue::from_str(&allowed.join(", ")) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
}

#[derive(Default)]
struct Labels {
    interaction: Option<Interaction>,
    resource_type: Option<&'static str>,
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    service: &Arc<FhirService>,
    principal: Option<Arc<haven_domain::Principal>>,
    request_id: &str,
    client_address: Option<String>,
    http_method: &HttpMethod,
    headers: &HeaderMap,
    path: &str,
    query: &str,
    body: Body,
    labels: &mut Labels,
) -> Result<Response, ServiceError> {
    let (segments, mut params) = split_url(&format!("{path}?{query}"))?;
    let mut format = None;
    let mut pretty = false;
    params.retain(|(k, v)| match k.as_str() {
        "_format" => {
            format = Some(v.clone());
            false
        }
        "_pretty" => {
            pretty = v == "true";
            false
        }
        _ => true,
    });
    let method = Method::parse(http_method.as_str()).ok_or_else(|| {
        ServiceError::MethodNotAllowed(format!(
            "{} is not a FHIR interaction method; use GET, HEAD, POST, PUT, PATCH or DELETE",
            http_method.as_str().chars().take(16).collect::<String>()
        ))
    })?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let route = route(method, &segs)?;
    labels.interaction = Some(route.interaction());
    labels.resource_type = route.resource_type().map(|t| t.as_str());

    let accept = header_str(headers, header::ACCEPT);
    let is_binary_read =
        matches!(&route, Route::Read(t, _) | Route::Vread(t, _, _) if t.as_str() == "Binary");
    // A Binary read may ask for its native type (`Accept: application/pdf`); that is decided once
    // the content type is known, so a non-FHIR Accept is not refused here (http.html#binary).
    let out = match negotiate::output(format.as_deref(), accept, pretty) {
        Ok(out) => out,
        Err(_) if is_binary_read && format.is_none() => negotiate::Output {
            mime: negotiate::FHIR_JSON,
            pretty,
            fhir_requested: false,
        },
        Err(e) => return Err(e),
    };

    let body = if route.takes_body() {
        read_body(service, headers, &route, body).await?
    } else {
        if matches!(route, Route::Search(_)) && method == Method::Post {
            // POST _search: the parameters come as a form (http.html#search), in addition to
            // any in the URL.
            params.extend(read_form(service, headers, body).await?);
        }
        RequestBody::None
    };
    if let (Route::Bundle, RequestBody::Resource(b)) = (&route, &body)
        && b.get("type").and_then(|t| t.as_str()) == Some("transaction")
    {
        labels.interaction = Some(Interaction::Transaction);
    }
    let prefer = header_str(headers, header::HeaderName::from_static("prefer"));
    let purpose_of_use =
        match header_str(headers, header::HeaderName::from_static("x-purpose-of-use")) {
            None => None,
            // Emergency purposes are set by break-glass only, never claimed by a header.
            Some("ETREAT" | "BTG") => {
                return Err(ServiceError::BadRequest(
                    "X-Purpose-Of-Use cannot claim emergency treatment (ETREAT, BTG): open \
                     break-glass access instead (POST Patient/[id]/$break-glass)"
                        .into(),
                ));
            }
            // A v3 PurposeOfUse code (TREAT, HPAYMT, HMARKT, HRESCH, PUBHLTH, ...).
            Some(p)
                if (2..=20).contains(&p.len())
                    && p.chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()) =>
            {
                Some(p.to_owned())
            }
            Some(_) => {
                return Err(ServiceError::BadRequest(
                    "X-Purpose-Of-Use must be a PurposeOfUse code such as TREAT, HPAYMT or \
                 HRESCH (v3-ActReason)"
                        .into(),
                ));
            }
        };
    let ctx = RequestContext {
        principal,
        request_id: request_id.to_owned(),
        client_address,
        prefer: negotiate::return_preference(prefer),
        strict_handling: negotiate::strict_handling(prefer),
        purpose_of_use,
    };
    let resp = service
        .handle(
            &ctx,
            FhirRequest {
                route,
                query: params,
                if_match: header_str(headers, header::IF_MATCH).map(str::to_owned),
                if_none_exist: header_str(
                    headers,
                    header::HeaderName::from_static("if-none-exist"),
                )
                .map(str::to_owned),
                conditions: ["If-None-Match"]
                    .into_iter()
                    .filter(|h| headers.contains_key(*h))
                    .collect(),
                body,
            },
        )
        .await?;

    // Binary: native content unless the client asked for a FHIR format (http.html#binary).
    if is_binary_read
        && !out.fhir_requested
        && let Some(bytes) = &resp.body
        && let Some((ct, data)) = haven_service::binary_content(bytes)
    {
        if !negotiate::accepts_native(accept, &ct) {
            return Err(ServiceError::NotAcceptable(format!(
                "this Binary holds {ct}; ask for it (or */*) in Accept, or for application/fhir+json"
            )));
        }
        // HEAD: axum strips the body and keeps its length (RFC 9110 9.3.2).
        return Ok(native_binary(&ct, data, &resp));
    }
    Ok(fhir_response(resp, out))
}

/// Reads an `application/x-www-form-urlencoded` body (POST `_search`).
async fn read_form(
    service: &Arc<FhirService>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<(String, String)>, ServiceError> {
    let limit = service.limits().max_body_bytes;
    let bytes = to_bytes(body, limit).await.map_err(|_| {
        ServiceError::TooLarge(format!(
            "the search form exceeds the limit of {limit} bytes"
        ))
    })?;
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let ct = header_str(headers, header::CONTENT_TYPE).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(ServiceError::UnsupportedMedia(
            "POST _search takes its parameters as application/x-www-form-urlencoded".into(),
        ));
    }
    serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| ServiceError::BadRequest("the search form cannot be parsed".into()))
}

/// Bodies above this size are parsed off the async workers.
const OFFLOAD_BYTES: usize = 256 * 1024;

async fn read_body(
    service: &Arc<FhirService>,
    headers: &HeaderMap,
    route: &Route,
    body: Body,
) -> Result<RequestBody, ServiceError> {
    let limit = service.limits().max_body_bytes;
    let too_large = || {
        ServiceError::TooLarge(format!(
            "the request body exceeds the limit of {limit} bytes; split the request (e.g. smaller Bundles)"
        ))
    };
    if let Some(len) =
        header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let bytes = to_bytes(body, limit).await.map_err(|_| too_large())?;
    // `$validate` with mode=delete may come without a body.
    if bytes.is_empty() && matches!(route, Route::Validate(..)) {
        return Ok(RequestBody::None);
    }
    let kind = negotiate::body_kind(header_str(headers, header::CONTENT_TYPE))?;
    let is_binary_write =
        matches!(route, Route::Create(t) | Route::Update(t, _) if t.as_str() == "Binary");
    match kind {
        BodyKind::JsonPatch if matches!(route, Route::Patch(..)) => {
            Ok(RequestBody::JsonPatch(service.parse_json_patch(&bytes)?))
        }
        BodyKind::JsonPatch => Err(ServiceError::UnsupportedMedia(
            "application/json-patch+json is only accepted by PATCH".into(),
        )),
        BodyKind::FhirJson if matches!(route, Route::Patch(..)) => Err(ServiceError::UnsupportedMedia(
            "PATCH takes a JSON Patch document with Content-Type application/json-patch+json; FHIRPath Patch is not supported"
                .into(),
        )),
        // Large bodies are parsed on a blocking thread, so a few megabyte-sized uploads cannot
        // stall the async workers that also answer health checks.
        BodyKind::FhirJson if bytes.len() > OFFLOAD_BYTES => {
            let svc = Arc::clone(service);
            let parsed = tokio::task::spawn_blocking(move || svc.parse_resource(&bytes))
                .await
                .map_err(|_| ServiceError::Internal)??;
            Ok(RequestBody::Resource(parsed))
        }
        BodyKind::FhirJson => Ok(RequestBody::Resource(service.parse_resource(&bytes)?)),
        BodyKind::Other(ct) if is_binary_write => Ok(RequestBody::Raw {
            content_type: ct,
            data: bytes,
            security_context: header_str(headers, header::HeaderName::from_static("x-security-context"))
                .map(str::to_owned),
        }),
        BodyKind::Other(ct) => Err(ServiceError::UnsupportedMedia(format!(
            "Content-Type {} is not supported; send FHIR JSON (application/fhir+json)",
            ct.chars().take(60).collect::<String>()
        ))),
        BodyKind::Missing => Err(ServiceError::UnsupportedMedia(
            "a Content-Type header is required; send FHIR JSON as application/fhir+json".into(),
        )),
    }
}
