//! The identity provider's HTTP face: discovery, JWKS, SMART configuration, the authorization
//! endpoint with its login / MFA / consent pages, and the token, revocation, introspection,
//! userinfo and logout endpoints. The flows themselves are `haven_identity::Identity`.
//!
//! Cookies: `__Host-haven-login` (a login in progress; `SameSite=Strict`) and
//! `__Host-haven-session` (after every factor passed, a new id; `SameSite=Lax` so a client's
//! redirect to `/oauth/authorize` finds it). Both `Secure; HttpOnly; Path=/`. Every form
//! carries a CSRF token bound to its login or session, and a cross-origin `Origin` on a form
//! post is refused.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use haven_identity::login::AfterPassword;
use haven_identity::oauth::{AuthorizeError, AuthorizeParams, TokenParams};
use haven_identity::{EventContext, IdentityError, OAuthError};
use serde_json::{Value, json};

use crate::pages;
use crate::{AppState, ClientAddress, RequestId};

const LOGIN_COOKIE: &str = "__Host-haven-login";
const SESSION_COOKIE: &str = "__Host-haven-session";
/// Largest form body the identity endpoints read.
const MAX_FORM: usize = 16 * 1024;

fn ctx_of(req: &Request) -> EventContext {
    EventContext {
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        source_ip: req
            .extensions()
            .get::<ClientAddress>()
            .map(|c| c.0.to_string()),
    }
}

/// 429 for an address over its budget of unauthenticated identity requests.
fn too_many() -> Response {
    let mut resp = html(
        StatusCode::TOO_MANY_REQUESTS,
        pages::message(
            "Too many requests",
            "Too many sign-in requests from this address; wait a minute.",
        ),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    resp
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(resp: &mut Response, name: &str, value: &str, same_site: &str, max_age: Option<u64>) {
    let age = max_age.map_or(String::new(), |a| format!("; Max-Age={a}"));
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}{age}"
    )) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn clear_cookie(resp: &mut Response, name: &str) {
    set_cookie(resp, name, "", "Strict", Some(0));
}

/// An HTML page with a strict content security policy (no script at all).
fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    resp
}

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An OAuth error as JSON (RFC 6749 §5.2), with the RFC 6750 challenge on 401s.
fn oauth_error(e: &OAuthError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = json_response(
        status,
        &json!({ "error": e.code, "error_description": e.description }),
    );
    if status == StatusCode::UNAUTHORIZED {
        let v = format!(
            "Bearer realm=\"haven\", error=\"{}\", error_description=\"{}\"",
            e.code,
            crate::render::quoted(&e.description)
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

/// A login-page error as a page, with `Retry-After` when throttled.
fn identity_error_page(e: &IdentityError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %e, "identity request failed");
    }
    let text = match e {
        IdentityError::Store(_) if e.status() == 409 => {
            "This sign-in was completed or changed in another window at the same time; start again."
                .to_owned()
        }
        IdentityError::Store(_) | IdentityError::Internal(_) => {
            "Something went wrong on the server; it has been logged. Try again.".to_owned()
        }
        other => other.to_string(),
    };
    let mut resp = html(status, pages::message("Sign-in problem", &text));
    match e {
        IdentityError::Throttled(secs) => {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        IdentityError::Busy | IdentityError::DirectoryUnavailable => {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        _ => {}
    }
    resp
}

/// Reads a URL-encoded form body (bounded).
async fn form<T: serde::de::DeserializeOwned + Default>(body: Body) -> Result<T, Response> {
    let bytes = to_bytes(body, MAX_FORM).await.map_err(|_| {
        oauth_error(&OAuthError::invalid_request(
            "the form is larger than 16 KiB",
        ))
    })?;
    serde_urlencoded::from_bytes(&bytes).map_err(|_| {
        oauth_error(&OAuthError::invalid_request(
            "the body must be a URL-encoded form",
        ))
    })
}

/// The answer to a form posted from another site.
fn refused_origin() -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::message("Refused", "This form was sent from another site."),
    )
}

/// A form post must come from our own pages: no `Origin`, or our issuer's origin.
fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => state.identity.settings().issuer.trim_end_matches('/') == o,
    }
}

pub(crate) async fn openid_configuration(State(state): State<AppState>) -> Response {
    let s = state.identity.settings();
    let iss = &s.issuer;
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": iss,
            "authorization_endpoint": format!("{iss}/oauth/authorize"),
            "token_endpoint": s.token_endpoint(),
            "userinfo_endpoint": format!("{iss}/oauth/userinfo"),
            "jwks_uri": format!("{iss}/.well-known/jwks.json"),
            "revocation_endpoint": format!("{iss}/oauth/revoke"),
            "introspection_endpoint": format!("{iss}/oauth/introspect"),
            "end_session_endpoint": format!("{iss}/oauth/logout"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA", "ES256", "ES384", "RS256", "RS384"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "fhirUser", "profile", "launch/patient", "offline_access", "online_access", "patient/*.rs", "user/*.cruds", "system/*.cruds"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "name", "preferred_username", "email", "fhirUser"],
            "authorization_response_iss_parameter_supported": true,
        }),
    )
}

pub(crate) async fn smart_configuration(State(state): State<AppState>) -> Response {
    let s = state.identity.settings();
    let iss = &s.issuer;
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": iss,
            "jwks_uri": format!("{iss}/.well-known/jwks.json"),
            "authorization_endpoint": format!("{iss}/oauth/authorize"),
            "token_endpoint": s.token_endpoint(),
            "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA", "ES256", "ES384", "RS384"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "revocation_endpoint": format!("{iss}/oauth/revoke"),
            "introspection_endpoint": format!("{iss}/oauth/introspect"),
            "userinfo_endpoint": format!("{iss}/oauth/userinfo"),
            "scopes_supported": ["openid", "fhirUser", "launch/patient", "offline_access", "online_access", "patient/*.rs", "user/*.cruds", "system/*.cruds"],
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "capabilities": [
                "launch-standalone", "client-public", "client-confidential-asymmetric",
                "context-standalone-patient", "sso-openid-connect", "permission-offline",
                "permission-online", "permission-user", "permission-v1", "permission-v2",
            ],
        }),
    )
}

pub(crate) async fn jwks(State(state): State<AppState>) -> Response {
    state.identity.keys().refresh_if_stale().await;
    let mut resp = json_response(StatusCode::OK, &state.identity.keys().jwks());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    resp
}

/// `GET /oauth/authorize`: checks the request, then shows the login page (or, with a live
/// session, the consent page).
pub(crate) async fn authorize(State(state): State<AppState>, req: Request) -> Response {
    if !state
        .identity
        .allow_unauthenticated(ctx_of(&req).source_ip.as_deref())
    {
        return too_many();
    }
    let query = req.uri().query().unwrap_or("");
    let Ok(params) = serde_urlencoded::from_str::<AuthorizeParams>(query) else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::message("Bad request", "The authorization request is malformed."),
        );
    };
    let id = match state.identity.authorize(params).await {
        Ok(id) => id,
        Err(AuthorizeError::Page(m)) => {
            return html(
                StatusCode::BAD_REQUEST,
                pages::message("This request cannot be served", &m),
            );
        }
        Err(AuthorizeError::Redirect(to)) => return redirect(&to),
    };
    if let Some(c) = cookie(req.headers(), SESSION_COOKIE)
        && let Ok(Some((session, account))) = state.identity.session(c).await
    {
        return consent_page(&state, &session.csrf, &id, &account.username, None).await;
    }
    start_login(&state, Some(id)).await
}

async fn start_login(state: &AppState, auth_request: Option<String>) -> Response {
    let client = match &auth_request {
        Some(id) => match state.identity.auth_request(id).await {
            Ok(Some((_, c))) => Some(c.name),
            _ => None,
        },
        None => None,
    };
    match state.identity.begin_login(auth_request).await {
        Ok(start) => {
            let mut resp = html(
                StatusCode::OK,
                pages::login(&start.csrf, client.as_deref(), None),
            );
            set_cookie(&mut resp, LOGIN_COOKIE, &start.cookie, "Strict", None);
            resp
        }
        Err(e) => identity_error_page(&e),
    }
}

/// `GET /oauth/login`: a login without an application (to manage one's own account later).
pub(crate) async fn login_page(State(state): State<AppState>, req: Request) -> Response {
    if !state
        .identity
        .allow_unauthenticated(ctx_of(&req).source_ip.as_deref())
    {
        return too_many();
    }
    start_login(&state, None).await
}

async fn consent_page(
    state: &AppState,
    csrf: &str,
    request: &str,
    user: &str,
    error: Option<&str>,
) -> Response {
    let Ok(Some((req, client))) = state.identity.auth_request(request).await else {
        return html(
            StatusCode::BAD_REQUEST,
            pages::message(
                "Request expired",
                "The application's request has expired; start again from the application.",
            ),
        );
    };
    let scopes: Vec<String> = req
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let needs_patient = scopes.iter().any(|s| s == "launch/patient");
    html(
        StatusCode::OK,
        pages::consent(&pages::Consent {
            csrf,
            request,
            client: &client.name,
            user,
            scopes,
            needs_patient,
            error,
        }),
    )
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct LoginForm {
    csrf: String,
    username: String,
    password: String,
    code: String,
}

/// After the last factor: the session cookie, and on to consent (or a plain confirmation).
async fn after_session(
    state: &AppState,
    start: haven_identity::login::SessionStart,
    user: &str,
    codes: Option<Vec<String>>,
) -> Response {
    let mut resp = match (&start.auth_request, codes) {
        (Some(id), Some(codes)) => html(
            StatusCode::OK,
            pages::recovery_codes(&codes, &format!("/oauth/consent?request={id}")),
        ),
        (None, Some(codes)) => html(
            StatusCode::OK,
            pages::recovery_codes(&codes, "/oauth/login"),
        ),
        (Some(id), None) => consent_page(state, &start.csrf, id, user, None).await,
        (None, None) => html(
            StatusCode::OK,
            pages::message("Signed in", "You are signed in."),
        ),
    };
    clear_cookie(&mut resp, LOGIN_COOKIE);
    set_cookie(&mut resp, SESSION_COOKIE, &start.cookie, "Lax", None);
    resp
}

pub(crate) async fn login_submit(State(state): State<AppState>, req: Request) -> Response {
    if !same_origin(&state, req.headers()) {
        return refused_origin();
    }
    let ctx = ctx_of(&req);
    let login = cookie(req.headers(), LOGIN_COOKIE).unwrap_or("").to_owned();
    let f: LoginForm = match form(req.into_body()).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match state
        .identity
        .login_password(&login, &f.csrf, &f.username, &f.password, &ctx)
        .await
    {
        Ok(AfterPassword::Mfa) => html(StatusCode::OK, pages::mfa(&f.csrf, None)),
        Ok(AfterPassword::Enrol {
            secret,
            uri,
            qr_svg,
        }) => html(
            StatusCode::OK,
            pages::enrol(&f.csrf, &secret, &uri, &qr_svg, None),
        ),
        Ok(AfterPassword::Session(start)) => after_session(&state, start, &f.username, None).await,
        Err(
            e @ (IdentityError::InvalidCredentials
            | IdentityError::Disabled
            | IdentityError::NoRole),
        ) => {
            // Same page, status and body for an unknown user and a wrong password.
            html(
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
                pages::login(&f.csrf, None, Some(&e.to_string())),
            )
        }
        Err(e) => identity_error_page(&e),
    }
}

pub(crate) async fn mfa_submit(State(state): State<AppState>, req: Request) -> Response {
    if !same_origin(&state, req.headers()) {
        return refused_origin();
    }
    let ctx = ctx_of(&req);
    let login = cookie(req.headers(), LOGIN_COOKIE).unwrap_or("").to_owned();
    let f: LoginForm = match form(req.into_body()).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match state
        .identity
        .login_mfa(&login, &f.csrf, &f.code, &ctx)
        .await
    {
        Ok(start) => after_session(&state, start, "", None).await,
        Err(e @ IdentityError::InvalidMfaCode) => html(
            StatusCode::UNAUTHORIZED,
            pages::mfa(&f.csrf, Some(&e.to_string())),
        ),
        Err(e) => identity_error_page(&e),
    }
}

pub(crate) async fn enrol_submit(State(state): State<AppState>, req: Request) -> Response {
    if !same_origin(&state, req.headers()) {
        return refused_origin();
    }
    let ctx = ctx_of(&req);
    let login = cookie(req.headers(), LOGIN_COOKIE).unwrap_or("").to_owned();
    let f: LoginForm = match form(req.into_body()).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    match state
        .identity
        .login_enrol(&login, &f.csrf, &f.code, &ctx)
        .await
    {
        Ok((start, codes)) => after_session(&state, start, "", Some(codes)).await,
        Err(e @ IdentityError::InvalidMfaCode) => {
            // Show the same key again: the user may simply have typed a code too late.
            match state.identity.pending_enrolment(&login, &f.csrf).await {
                Ok(Some((secret, uri, qr))) => html(
                    StatusCode::UNAUTHORIZED,
                    pages::enrol(&f.csrf, &secret, &uri, &qr, Some(&e.to_string())),
                ),
                _ => html(
                    StatusCode::UNAUTHORIZED,
                    pages::message("Wrong code", &format!("{e}; sign in again to retry.")),
                ),
            }
        }
        Err(e) => identity_error_page(&e),
    }
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct ConsentForm {
    csrf: String,
    request: String,
    decision: String,
    patient: Option<String>,
}

/// `GET /oauth/consent?request=ID`: the consent page for a signed-in user.
pub(crate) async fn consent_get(State(state): State<AppState>, req: Request) -> Response {
    #[derive(Default, serde::Deserialize)]
    #[serde(default)]
    struct Q {
        request: String,
    }
    let q: Q = serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    let Some(c) = cookie(req.headers(), SESSION_COOKIE) else {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::message(
                "Signed out",
                "Your session has ended; start again from the application.",
            ),
        );
    };
    match state.identity.session(c).await {
        Ok(Some((session, account))) => {
            consent_page(&state, &session.csrf, &q.request, &account.username, None).await
        }
        Ok(None) => html(
            StatusCode::UNAUTHORIZED,
            pages::message(
                "Signed out",
                "Your session has ended; start again from the application.",
            ),
        ),
        Err(e) => identity_error_page(&e),
    }
}

pub(crate) async fn consent_submit(State(state): State<AppState>, req: Request) -> Response {
    if !same_origin(&state, req.headers()) {
        return refused_origin();
    }
    let ctx = ctx_of(&req);
    let session = cookie(req.headers(), SESSION_COOKIE)
        .unwrap_or("")
        .to_owned();
    let f: ConsentForm = match form(req.into_body()).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let approve = f.decision == "approve";
    match state
        .identity
        .consent(
            &session,
            &f.csrf,
            &f.request,
            approve,
            f.patient.clone(),
            &ctx,
        )
        .await
    {
        Ok(to) => redirect(&to),
        Err(IdentityError::Invalid(m)) => {
            let user = match state.identity.session(&session).await {
                Ok(Some((_, a))) => a.username,
                _ => String::new(),
            };
            consent_page(&state, &f.csrf, &f.request, &user, Some(&m)).await
        }
        Err(e) => identity_error_page(&e),
    }
}

pub(crate) async fn token(State(state): State<AppState>, req: Request) -> Response {
    let ctx = ctx_of(&req);
    if !state
        .identity
        .allow_unauthenticated(ctx.source_ip.as_deref())
    {
        let mut resp = oauth_error(&OAuthError::new(
            "slow_down",
            "too many requests from this address; wait a minute",
        ));
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return resp;
    }
    let p: TokenParams = match form(req.into_body()).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match state.identity.token(p, &ctx).await {
        Ok(body) => {
            let mut resp = json_response(StatusCode::OK, &body);
            resp.headers_mut()
                .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            resp
        }
        Err(e) => oauth_error(&e),
    }
}

pub(crate) async fn revoke(State(state): State<AppState>, req: Request) -> Response {
    let ctx = ctx_of(&req);
    let p: TokenParams = match form(req.into_body()).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match state.identity.revoke(p, &ctx).await {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => oauth_error(&e),
    }
}

pub(crate) async fn introspect(State(state): State<AppState>, req: Request) -> Response {
    let ctx = ctx_of(&req);
    let p: TokenParams = match form(req.into_body()).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match state.identity.introspect(p, &ctx).await {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => oauth_error(&e),
    }
}

/// The bearer token of a request: only from the `Authorization` header (never the query
/// string or a form, RFC 6750 §2.1 only).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(crate) async fn userinfo(State(state): State<AppState>, req: Request) -> Response {
    let Some(token) = bearer(req.headers()) else {
        let mut resp = StatusCode::UNAUTHORIZED.into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"haven\""),
        );
        return resp;
    };
    match state.identity.userinfo(token).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => oauth_error(&e),
    }
}

/// `GET|POST /oauth/logout`: ends the browser session; returns to `post_logout_redirect_uri`
/// only if it is registered for the client named by `client_id`.
pub(crate) async fn logout(State(state): State<AppState>, req: Request) -> Response {
    #[derive(Default, serde::Deserialize)]
    #[serde(default)]
    struct Q {
        client_id: Option<String>,
        post_logout_redirect_uri: Option<String>,
        state: Option<String>,
    }
    let ctx = ctx_of(&req);
    let q: Q = serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    if let Some(c) = cookie(req.headers(), SESSION_COOKIE)
        && let Err(e) = state.identity.end_session(c, &ctx).await
    {
        return identity_error_page(&e);
    }
    let mut target = None;
    if let (Some(cid), Some(uri)) = (&q.client_id, &q.post_logout_redirect_uri)
        && let Ok(Some(client)) = state.identity.client(cid).await
        && client.redirect_uris.iter().any(|u| u == uri)
    {
        target = Some(match &q.state {
            Some(s) => haven_identity::oauth::with_query(uri, &[("state", s)]),
            None => uri.clone(),
        });
    }
    let mut resp = match target {
        Some(t) => redirect(&t),
        None => html(
            StatusCode::OK,
            pages::message("Signed out", "You are signed out."),
        ),
    };
    clear_cookie(&mut resp, SESSION_COOKIE);
    resp
}
