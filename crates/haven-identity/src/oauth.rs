//! The OAuth 2.0 / OpenID Connect / SMART flows: authorization requests with PKCE (S256 only),
//! consent, the token endpoint (authorization code, refresh token with rotation and reuse
//! detection, client credentials with `private_key_jwt`), revocation (RFC 7009),
//! introspection (RFC 7662) and userinfo.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use haven_crypto::{JwtRules, constant_time_eq, sha256, token_digest, verify_jwt};
use haven_domain::{Role, scope::Scopes};
use haven_store::{Expect, StoreError, run_write};
use serde_json::{Map, Value, json};

use crate::core::{Identity, expiry_in, new_secret, now, secs};
use crate::error::{IdentityError, OAuthError};
use crate::events::{EventContext, client_actor, security_entry, user_actor};
use crate::records::{
    Account, AuthCode, AuthRequest, Client, ClientKind, Marker, RefreshFamily, UsedCode, kind,
    tx_get, tx_put,
};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest a client assertion may live (SMART Backend Services: at most five minutes).
const MAX_ASSERTION_LIFETIME: i64 = 300;
/// Longest parameter value accepted anywhere in these flows.
const MAX_PARAM: usize = 2048;

/// Parameters of `/oauth/authorize`.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub aud: Option<String>,
    pub launch: Option<String>,
    pub prompt: Option<String>,
}

/// Parameters of `/oauth/token` (and client authentication of revoke / introspect).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct TokenParams {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub token: Option<String>,
    pub token_type_hint: Option<String>,
}

/// A refused authorization request: shown on a page (the client or its redirect URI could
/// not be trusted, so nothing is sent there) or sent back to the client's redirect URI.
#[derive(Debug)]
pub enum AuthorizeError {
    Page(String),
    Redirect(String),
}

fn too_long(p: &Option<String>) -> bool {
    p.as_ref().is_some_and(|s| s.len() > MAX_PARAM)
}

/// Appends query parameters to a redirect URI.
#[must_use]
pub fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let q = serde_urlencoded::to_string(params).unwrap_or_default();
    if uri.contains('?') {
        format!("{uri}&{q}")
    } else {
        format!("{uri}?{q}")
    }
}

/// PKCE S256: BASE64URL(SHA256(verifier)) == challenge. The verifier must have the RFC 7636
/// form (43-128 characters of the unreserved set).
fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    let form = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    form && constant_time_eq(
        URL_SAFE_NO_PAD
            .encode(sha256(&[verifier.as_bytes()]))
            .as_bytes(),
        challenge.as_bytes(),
    )
}

/// The claims of a JWT read *without* checking it, only to find which client's keys to check
/// it with.
fn peek_claims(jwt: &str) -> Option<Map<String, Value>> {
    if jwt.len() > 8192 {
        return None;
    }
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// What a token is issued for.
struct Grant<'a> {
    client: &'a Client,
    account: Option<&'a Account>,
    scope: Scopes,
    patient: Option<String>,
    auth_time: Option<i64>,
    amr: Vec<String>,
    nonce: Option<String>,
}

impl Identity {
    /// Validates an authorization request and keeps it for the login and consent pages.
    /// Returns the request id.
    ///
    /// # Errors
    /// `Page` when the client or redirect URI is unknown (RFC 6749 §4.1.2.1: never redirect
    /// to an unverified URI), otherwise `Redirect` with the OAuth error.
    pub async fn authorize(&self, p: AuthorizeParams) -> Result<String, AuthorizeError> {
        let page = |m: &str| AuthorizeError::Page(m.to_owned());
        if [
            &p.client_id,
            &p.redirect_uri,
            &p.scope,
            &p.state,
            &p.nonce,
            &p.code_challenge,
            &p.aud,
        ]
        .into_iter()
        .any(too_long)
        {
            return Err(page("a parameter of this request is too long"));
        }
        let Some(client_id) = p.client_id.as_deref() else {
            return Err(page("the request names no client (client_id is missing)"));
        };
        let client = match self.client(client_id).await {
            Ok(Some(c)) if !c.revoked => c,
            Ok(_) => return Err(page("this application is not registered with Haven")),
            Err(_) => return Err(page("the server cannot check this request now; try again")),
        };
        let Some(redirect_uri) = p.redirect_uri.clone() else {
            return Err(page("the request has no redirect_uri"));
        };
        // Exact string comparison with a registered URI (no prefix or pattern matching).
        if !client.redirect_uris.iter().any(|u| u == &redirect_uri) {
            return Err(page(
                "the redirect_uri is not registered for this application",
            ));
        }
        let state = p.state.clone().unwrap_or_default();
        let back = |code: &str, desc: &str| {
            let mut params = vec![("error", code), ("error_description", desc)];
            if !state.is_empty() {
                params.push(("state", state.as_str()));
            }
            params.push(("iss", self.settings.issuer.as_str()));
            AuthorizeError::Redirect(with_query(&redirect_uri, &params))
        };
        if p.response_type.as_deref() != Some("code") {
            return Err(back(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        if !client.grant_types.iter().any(|g| g == "authorization_code") {
            return Err(back(
                "unauthorized_client",
                "this client may not use the authorization code flow",
            ));
        }
        if state.is_empty() {
            return Err(back(
                "invalid_request",
                "state is required (CSRF protection for the client)",
            ));
        }
        match (
            p.code_challenge.as_deref(),
            p.code_challenge_method.as_deref(),
        ) {
            (Some(c), Some("S256"))
                if c.len() == 43
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {}
            (None, _) => {
                return Err(back(
                    "invalid_request",
                    "PKCE is required: send code_challenge with code_challenge_method=S256",
                ));
            }
            (Some(_), Some("S256")) => {
                return Err(back(
                    "invalid_request",
                    "code_challenge must be 43 characters of base64url (SHA-256)",
                ));
            }
            _ => {
                return Err(back(
                    "invalid_request",
                    "only code_challenge_method=S256 is supported",
                ));
            }
        }
        let requested = crate::core::scopes_of(p.scope.as_deref().unwrap_or(""));
        let allowed = crate::core::scopes_of(&client.scope);
        let granted = requested.intersect(&allowed);
        if granted.is_empty() {
            return Err(back(
                "invalid_scope",
                "none of the requested scopes is allowed for this client",
            ));
        }
        let has_resource_scopes = !granted.contexts().is_empty();
        let aud = p.aud.clone().unwrap_or_default();
        if has_resource_scopes
            && aud.trim_end_matches('/') != self.settings.fhir_base.trim_end_matches('/')
        {
            return Err(back(
                "invalid_request",
                "aud must be this server's FHIR base URL",
            ));
        }
        let req = AuthRequest {
            client_id: client.id.clone(),
            redirect_uri: redirect_uri.clone(),
            scope: granted.to_string(),
            state: state.clone(),
            nonce: p.nonce.clone(),
            code_challenge: p.code_challenge.clone().unwrap_or_default(),
            aud,
            created: now(),
        };
        let (id, _) = new_secret();
        let key = id.clone();
        let expires = expiry_in(self.settings.login_ttl);
        run_write::<i64, StoreError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                tx_put(
                    tx,
                    kind::AUTH_REQUEST,
                    &key,
                    &req,
                    Some(expires),
                    Expect::Absent,
                )
                .await
            })
        })
        .await
        .map_err(|_| back("temporarily_unavailable", "try again shortly"))?;
        Ok(id)
    }

    /// A pending authorization request (for the consent page).
    ///
    /// # Errors
    /// Store failures.
    pub async fn auth_request(
        &self,
        id: &str,
    ) -> Result<Option<(AuthRequest, Client)>, IdentityError> {
        if id.is_empty() || id.len() > 128 {
            return Ok(None);
        }
        let Some(r) = self.get::<AuthRequest>(kind::AUTH_REQUEST, id).await? else {
            return Ok(None);
        };
        if now() - r.value.created > secs(self.settings.login_ttl) {
            return Ok(None);
        }
        let Some(c) = self.client(&r.value.client_id).await? else {
            return Ok(None);
        };
        Ok(Some((r.value, c)))
    }

    /// The user approved (or denied) an authorization request: returns where to send the
    /// browser (the client's redirect URI with a code, or with `access_denied`).
    ///
    /// # Errors
    /// Expired request or session, wrong CSRF token, a launch/patient request without a
    /// patient.
    pub async fn consent(
        &self,
        session_cookie: &str,
        csrf: &str,
        request_id: &str,
        approve: bool,
        patient: Option<String>,
        ctx: &EventContext,
    ) -> Result<String, IdentityError> {
        let Some((session, account)) = self.session(session_cookie).await? else {
            return Err(IdentityError::LoginExpired);
        };
        if !constant_time_eq(session.csrf.as_bytes(), csrf.as_bytes()) {
            return Err(IdentityError::LoginExpired);
        }
        let Some((req, client)) = self.auth_request(request_id).await? else {
            return Err(IdentityError::LoginExpired);
        };
        let actor = user_actor(&account.username, &account.roles, Some(&client.id));
        if !approve {
            let rid = request_id.to_owned();
            run_write::<bool, StoreError, _>(self.store.as_ref(), move |tx| {
                Box::pin(async move { tx.record_delete(kind::AUTH_REQUEST, &rid).await })
            })
            .await?;
            self.record(security_entry(
                ctx,
                "consent-denied",
                403,
                actor,
                Some(format!("client={}", client.id)),
            ))
            .await?;
            return Ok(with_query(
                &req.redirect_uri,
                &[
                    ("error", "access_denied"),
                    ("error_description", "the user denied the request"),
                    ("state", &req.state),
                    ("iss", &self.settings.issuer),
                ],
            ));
        }
        let scope = crate::core::scopes_of(&req.scope);
        let patient = if scope.has("launch/patient") {
            let own = account
                .fhir_user
                .as_deref()
                .and_then(|f| f.strip_prefix("Patient/"))
                .map(str::to_owned);
            match (own, patient.filter(|p| !p.is_empty())) {
                // A patient's launch context is always themselves; an unlinked patient has none.
                (Some(own), _) if account.roles.contains(&Role::Patient) => Some(own),
                (None, _) if account.roles.contains(&Role::Patient) => {
                    return Err(IdentityError::Invalid(
                        "this patient account is not linked to a patient record; ask an \
                         administrator to link it"
                            .into(),
                    ));
                }
                (_, Some(p)) => {
                    let id = haven_domain::ResourceId::parse(&p).map_err(|_| {
                        IdentityError::Invalid("choose a patient by their FHIR id".into())
                    })?;
                    Some(id.as_str().to_owned())
                }
                (Some(own), None) => Some(own),
                (None, None) => {
                    return Err(IdentityError::Invalid(
                        "this application needs a patient: choose one".into(),
                    ));
                }
            }
        } else {
            None
        };
        let (code, digest) = new_secret();
        let record = AuthCode {
            client_id: client.id.clone(),
            redirect_uri: req.redirect_uri.clone(),
            user_id: account.id.clone(),
            scope: req.scope.clone(),
            nonce: req.nonce.clone(),
            code_challenge: req.code_challenge.clone(),
            patient,
            auth_time: session.auth_time,
            amr: session.amr.clone(),
        };
        let expires = expiry_in(self.settings.code_ttl);
        let entry = security_entry(
            ctx,
            "consent",
            200,
            actor,
            Some(format!("client={} scope={}", client.id, req.scope)),
        );
        let rid = request_id.to_owned();
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                if !tx.record_delete(kind::AUTH_REQUEST, &rid).await? {
                    return Err(IdentityError::LoginExpired);
                }
                tx_put(
                    tx,
                    kind::CODE,
                    &digest,
                    &record,
                    Some(expires),
                    Expect::Absent,
                )
                .await?;
                tx.audit(entry).await?;
                Ok(())
            })
        })
        .await?;
        Ok(with_query(
            &req.redirect_uri,
            &[
                ("code", &code),
                ("state", &req.state),
                ("iss", &self.settings.issuer),
            ],
        ))
    }

    /// Authenticates the client of a token, revocation or introspection request.
    async fn authenticate_client(
        &self,
        p: &TokenParams,
        ctx: &EventContext,
    ) -> Result<Client, OAuthError> {
        let unavailable =
            |_: IdentityError| OAuthError::new("temporarily_unavailable", "try again shortly");
        let store_down =
            |_: StoreError| OAuthError::new("temporarily_unavailable", "try again shortly");
        if p.client_secret.is_some() {
            return Err(OAuthError::invalid_client(
                "client secrets are not accepted; use private_key_jwt (confidential) or PKCE (public)",
            ));
        }
        if let Some(assertion) = &p.client_assertion {
            if p.client_assertion_type.as_deref() != Some(JWT_BEARER) {
                return Err(OAuthError::invalid_client(format!(
                    "client_assertion_type must be {JWT_BEARER}"
                )));
            }
            let claims = peek_claims(assertion)
                .ok_or_else(|| OAuthError::invalid_client("the client assertion is not a JWT"))?;
            let Some(id) = claims.get("iss").and_then(Value::as_str) else {
                return Err(OAuthError::invalid_client(
                    "the client assertion has no iss",
                ));
            };
            if p.client_id.as_deref().is_some_and(|c| c != id) {
                return Err(OAuthError::invalid_client(
                    "client_id and the assertion's iss differ",
                ));
            }
            let client = match self.client(id).await.map_err(unavailable)? {
                Some(c) if !c.revoked && c.kind == ClientKind::Confidential => c,
                _ => {
                    return Err(self
                        .client_refused(id, "unknown or revoked client", ctx)
                        .await);
                }
            };
            let Some(jwks) = &client.jwks else {
                return Err(OAuthError::invalid_client(
                    "the client has no registered keys",
                ));
            };
            let keys = haven_crypto::VerificationKeys::from_jwks(jwks).map_err(|_| {
                OAuthError::invalid_client("the client's registered keys are unusable")
            })?;
            let t = now();
            let rules = JwtRules {
                issuers: vec![client.id.clone()],
                audience: Some(self.settings.token_endpoint()),
                leeway_secs: self.settings.clock_leeway.as_secs(),
                now_unix: u64::try_from(t).unwrap_or(0),
                max_len: 8192,
                required: &["exp", "jti", "sub"],
                typ: None,
            };
            let verified = match verify_jwt(assertion, &keys, &rules) {
                Ok(c) => c,
                Err(e) => {
                    return Err(self
                        .client_refused(&client.id, &format!("client assertion refused: {e}"), ctx)
                        .await);
                }
            };
            if verified.get("sub").and_then(Value::as_str) != Some(client.id.as_str()) {
                return Err(OAuthError::invalid_client(
                    "the assertion's sub must be the client id",
                ));
            }
            let exp = verified.get("exp").and_then(Value::as_i64).unwrap_or(0);
            if exp - t > MAX_ASSERTION_LIFETIME + secs(self.settings.clock_leeway) {
                return Err(OAuthError::invalid_client(
                    "the assertion may live at most five minutes",
                ));
            }
            let jti = verified.get("jti").and_then(Value::as_str).unwrap_or("");
            if jti.is_empty() || jti.len() > 256 {
                return Err(OAuthError::invalid_client(
                    "the assertion needs a jti of at most 256 characters",
                ));
            }
            // Each assertion is single-use: its jti is kept until it expires.
            let key = format!("{}:{}", client.id, token_digest(jti));
            let expires = haven_domain::Timestamp::from_micros(
                (exp + secs(self.settings.clock_leeway)) * 1_000_000,
            );
            let fresh = run_write::<bool, StoreError, _>(self.store.as_ref(), move |tx| {
                Box::pin(async move {
                    match tx
                        .record_put(
                            kind::ASSERTION,
                            &key,
                            b"{}".to_vec(),
                            Some(expires),
                            Expect::Absent,
                        )
                        .await
                    {
                        Ok(_) => Ok(true),
                        Err(StoreError::VersionConflict(_)) => Ok(false),
                        Err(e) => Err(e),
                    }
                })
            })
            .await
            .map_err(store_down)?;
            if !fresh {
                return Err(self
                    .client_refused(&client.id, "client assertion replayed", ctx)
                    .await);
            }
            return Ok(client);
        }
        let Some(id) = p.client_id.as_deref() else {
            return Err(OAuthError::invalid_client(
                "identify the client (client_id or client_assertion)",
            ));
        };
        match self.client(id).await.map_err(unavailable)? {
            Some(c) if !c.revoked && c.kind == ClientKind::Public => Ok(c),
            Some(c) if !c.revoked => Err(OAuthError::invalid_client(
                "this client must authenticate with private_key_jwt",
            )),
            _ => Err(self
                .client_refused(id, "unknown or revoked client", ctx)
                .await),
        }
    }

    async fn client_refused(&self, id: &str, why: &str, ctx: &EventContext) -> OAuthError {
        let id: String = id.chars().take(64).collect();
        if let Err(e) = self
            .record(security_entry(
                ctx,
                "client-auth-failed",
                401,
                client_actor(&id),
                None,
            ))
            .await
        {
            tracing::error!(error = %e, "cannot record a failed client authentication");
            return OAuthError::new("temporarily_unavailable", "try again shortly");
        }
        tracing::info!(client = %id, reason = why, "client authentication failed");
        OAuthError::invalid_client("client authentication failed")
    }

    /// The token endpoint.
    ///
    /// # Errors
    /// OAuth errors (RFC 6749 §5.2).
    pub async fn token(&self, p: TokenParams, ctx: &EventContext) -> Result<Value, OAuthError> {
        if [
            &p.code,
            &p.redirect_uri,
            &p.code_verifier,
            &p.client_id,
            &p.refresh_token,
            &p.scope,
        ]
        .into_iter()
        .any(too_long)
        {
            return Err(OAuthError::invalid_request("a parameter is too long"));
        }
        let client = self.authenticate_client(&p, ctx).await?;
        let grant = p.grant_type.as_deref().unwrap_or("");
        if !client.grant_types.iter().any(|g| g == grant) {
            return Err(OAuthError::new(
                if matches!(
                    grant,
                    "authorization_code" | "refresh_token" | "client_credentials"
                ) {
                    "unauthorized_client"
                } else {
                    "unsupported_grant_type"
                },
                "this client may not use this grant type",
            ));
        }
        match grant {
            "authorization_code" => self.code_grant(&client, &p, ctx).await,
            "refresh_token" => self.refresh_grant(&client, &p, ctx).await,
            "client_credentials" => self.client_grant(&client, &p, ctx).await,
            _ => Err(OAuthError::new(
                "unsupported_grant_type",
                "unsupported grant type",
            )),
        }
    }

    async fn code_grant(
        &self,
        client: &Client,
        p: &TokenParams,
        ctx: &EventContext,
    ) -> Result<Value, OAuthError> {
        let unavailable = |_| OAuthError::new("temporarily_unavailable", "try again shortly");
        let Some(code) = p.code.as_deref() else {
            return Err(OAuthError::invalid_request("code is required"));
        };
        let digest = token_digest(code);
        let d = digest.clone();
        let ttl = self.settings.code_ttl;
        let now_ts = haven_domain::Timestamp::now();
        // Redeem: the code is deleted, and remembered as used so a replay can be detected.
        let redeemed =
            run_write::<Option<AuthCode>, StoreError, _>(self.store.as_ref(), move |tx| {
                Box::pin(async move {
                    let Some(c) = tx_get::<AuthCode>(tx, kind::CODE, &d).await? else {
                        return Ok(None);
                    };
                    tx.record_delete(kind::CODE, &d).await?;
                    if c.expires.is_some_and(|e| e <= now_ts) {
                        return Ok(None);
                    }
                    let used = UsedCode {
                        client_id: c.value.client_id.clone(),
                        family: None,
                    };
                    tx_put(
                        tx,
                        kind::CODE_USED,
                        &d,
                        &used,
                        Some(expiry_in(ttl * 10)),
                        Expect::Any,
                    )
                    .await?;
                    Ok(Some(c.value))
                })
            })
            .await
            .map_err(unavailable)?;
        let Some(record) = redeemed else {
            self.code_replayed(&digest, ctx).await;
            return Err(OAuthError::invalid_grant(
                "the code is invalid, expired or already used",
            ));
        };
        if record.client_id != client.id {
            return Err(OAuthError::invalid_grant(
                "the code was issued to another client",
            ));
        }
        if p.redirect_uri.as_deref() != Some(record.redirect_uri.as_str()) {
            return Err(OAuthError::invalid_grant(
                "redirect_uri differs from the authorization request",
            ));
        }
        let Some(verifier) = p.code_verifier.as_deref() else {
            return Err(OAuthError::invalid_grant(
                "code_verifier is required (PKCE)",
            ));
        };
        if !pkce_ok(verifier, &record.code_challenge) {
            return Err(OAuthError::invalid_grant(
                "code_verifier does not match the code_challenge",
            ));
        }
        let account = match self
            .get::<Account>(kind::ACCOUNT, &record.user_id)
            .await
            .map_err(unavailable)?
        {
            Some(a) if !a.value.disabled => a.value,
            _ => return Err(OAuthError::invalid_grant("the user can no longer sign in")),
        };
        let grant = Grant {
            client,
            account: Some(&account),
            scope: crate::core::scopes_of(&record.scope),
            patient: record.patient.clone(),
            auth_time: Some(record.auth_time),
            amr: record.amr.clone(),
            nonce: record.nonce.clone(),
        };
        let (body, family) = self.issue(&grant, None, ctx).await?;
        if let Some(f) = family {
            let used = UsedCode {
                client_id: client.id.clone(),
                family: Some(f),
            };
            let _ = run_write::<i64, StoreError, _>(self.store.as_ref(), move |tx| {
                Box::pin(async move {
                    tx_put(
                        tx,
                        kind::CODE_USED,
                        &digest,
                        &used,
                        Some(expiry_in(ttl * 10)),
                        Expect::Any,
                    )
                    .await
                })
            })
            .await;
        }
        Ok(body)
    }

    /// A redeemed code came back: revoke what its first redemption issued (RFC 6749 §4.1.2).
    async fn code_replayed(&self, digest: &str, ctx: &EventContext) {
        let Ok(Some(used)) = self.get::<UsedCode>(kind::CODE_USED, digest).await else {
            return;
        };
        if let Some(f) = &used.value.family {
            let _ = self.revoke_family(f, "code-replay", ctx).await;
        } else {
            let _ = self
                .record(security_entry(
                    ctx,
                    "code-replay",
                    400,
                    client_actor(&used.value.client_id),
                    None,
                ))
                .await;
        }
    }

    async fn refresh_grant(
        &self,
        client: &Client,
        p: &TokenParams,
        ctx: &EventContext,
    ) -> Result<Value, OAuthError> {
        let unavailable = |_| OAuthError::new("temporarily_unavailable", "try again shortly");
        let invalid =
            || OAuthError::invalid_grant("the refresh token is invalid, expired or revoked");
        let Some((family, secret)) = p.refresh_token.as_deref().and_then(|t| t.split_once('.'))
        else {
            return Err(invalid());
        };
        if family.is_empty() || family.len() > 64 {
            return Err(invalid());
        }
        let Some(fam) = self
            .get::<RefreshFamily>(kind::REFRESH, family)
            .await
            .map_err(unavailable)?
        else {
            return Err(invalid());
        };
        if fam.value.client_id != client.id {
            return Err(invalid());
        }
        if fam.value.revoked || fam.value.expires <= now() {
            return Err(invalid());
        }
        let presented = token_digest(secret);
        if !constant_time_eq(presented.as_bytes(), fam.value.current.as_bytes()) {
            // A secret this family never issued is just invalid: knowing a family id must not
            // be enough to revoke someone's tokens.
            let reused = fam
                .value
                .previous
                .iter()
                .any(|d| constant_time_eq(d.as_bytes(), presented.as_bytes()));
            if !reused {
                return Err(invalid());
            }
            // An older token of this family: it was copied. Revoke the family (RFC 9700
            // §4.14.2): the thief and the client both lose it; the user signs in again.
            self.revoke_family(family, "refresh-reuse", ctx)
                .await
                .map_err(|_| invalid())?;
            return Err(invalid());
        }
        let account = match self
            .get::<Account>(kind::ACCOUNT, &fam.value.user_id)
            .await
            .map_err(unavailable)?
        {
            Some(a) if !a.value.disabled => a.value,
            _ => return Err(invalid()),
        };
        let mut scope = crate::core::scopes_of(&fam.value.scope);
        if let Some(narrow) = p.scope.as_deref() {
            let asked = crate::core::scopes_of(narrow);
            scope = asked.intersect(&scope);
            if scope.is_empty() {
                return Err(OAuthError::invalid_scope(
                    "the requested scope was not granted before",
                ));
            }
        }
        let grant = Grant {
            client,
            account: Some(&account),
            scope,
            patient: fam.value.patient.clone(),
            auth_time: Some(fam.value.auth_time),
            amr: fam.value.amr.clone(),
            nonce: None,
        };
        let (body, _) = self
            .issue(
                &grant,
                Some((family.to_owned(), fam.version, fam.value.clone())),
                ctx,
            )
            .await?;
        Ok(body)
    }

    async fn client_grant(
        &self,
        client: &Client,
        p: &TokenParams,
        ctx: &EventContext,
    ) -> Result<Value, OAuthError> {
        let allowed = crate::core::scopes_of(&client.scope);
        let asked = crate::core::scopes_of(p.scope.as_deref().unwrap_or(""));
        let scope = if p.scope.is_none() {
            allowed
        } else {
            asked.intersect(&allowed)
        };
        if scope.is_empty() {
            return Err(OAuthError::invalid_scope(
                "none of the requested scopes is allowed for this client",
            ));
        }
        let grant = Grant {
            client,
            account: None,
            scope,
            patient: None,
            auth_time: None,
            amr: Vec::new(),
            nonce: None,
        };
        Ok(self.issue(&grant, None, ctx).await?.0)
    }

    /// Revokes a refresh family and records why.
    async fn revoke_family(
        &self,
        family: &str,
        action: &'static str,
        ctx: &EventContext,
    ) -> Result<(), IdentityError> {
        let family = family.to_owned();
        let ctx = ctx.clone();
        run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                if let Some(mut f) = tx_get::<RefreshFamily>(tx, kind::REFRESH, &family).await? {
                    f.value.revoked = true;
                    let exp = f.expires;
                    tx_put(
                        tx,
                        kind::REFRESH,
                        &family,
                        &f.value,
                        exp,
                        Expect::Version(f.version),
                    )
                    .await?;
                    tx.audit(security_entry(
                        &ctx,
                        action,
                        if action == "token-revoke" { 200 } else { 400 },
                        client_actor(&f.value.client_id),
                        Some(format!("family={family}")),
                    ))
                    .await?;
                }
                Ok(())
            })
        })
        .await?;
        if action != "token-revoke" {
            metrics::counter!("haven_refresh_reuse_total").increment(1);
        }
        Ok(())
    }

    /// Signs the tokens of a grant and, when allowed, starts or rotates a refresh family.
    /// Returns the token response and the refresh family id.
    async fn issue(
        &self,
        g: &Grant<'_>,
        rotate: Option<(String, i64, RefreshFamily)>,
        ctx: &EventContext,
    ) -> Result<(Value, Option<String>), OAuthError> {
        let unavailable = |_| OAuthError::new("temporarily_unavailable", "try again shortly");
        self.keys.refresh_if_stale().await;
        let signer = self.keys.signer();
        let t = now();
        let exp = t + secs(self.settings.access_token_ttl);
        let (jti, _) = new_secret();
        let scope = g.scope.to_string();
        let (sub, roles, username) = match g.account {
            Some(a) => (a.id.clone(), a.roles.clone(), Some(a.username.clone())),
            None => (
                g.client.id.clone(),
                vec![g.client.role.unwrap_or(Role::Service)],
                None,
            ),
        };
        let mut claims = json!({
            "iss": self.settings.issuer,
            "sub": sub,
            "aud": self.settings.fhir_base,
            "client_id": g.client.id,
            "scope": scope,
            "iat": t,
            "nbf": t,
            "exp": exp,
            "jti": jti,
            "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        });
        if let Some(u) = &username {
            claims["preferred_username"] = json!(u);
        }
        if let Some(p) = &g.patient {
            claims["patient"] = json!(p);
        }
        if let Some(f) = g.account.and_then(|a| a.fhir_user.as_ref()) {
            claims["fhirUser"] = json!(format!("{}/{f}", self.settings.fhir_base));
        }
        if let Some(at) = g.auth_time {
            claims["auth_time"] = json!(at);
        }
        if !g.amr.is_empty() {
            claims["amr"] = json!(g.amr);
        }
        let access = signer
            .sign_typed("at+jwt", &claims)
            .map_err(|_| OAuthError::new("server_error", "cannot sign the token"))?;
        let mut body = json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": exp - t,
            "scope": scope,
        });
        if let Some(p) = &g.patient {
            body["patient"] = json!(p);
            body["need_patient_banner"] = json!(true);
        }
        if let (Some(a), true) = (g.account, g.scope.has("openid")) {
            let mut id = json!({
                "iss": self.settings.issuer,
                "sub": a.id,
                "aud": g.client.id,
                "iat": t,
                "exp": exp,
                "preferred_username": a.username,
            });
            if let Some(at) = g.auth_time {
                id["auth_time"] = json!(at);
            }
            if let Some(n) = &g.nonce {
                id["nonce"] = json!(n);
            }
            if !g.amr.is_empty() {
                id["amr"] = json!(g.amr);
            }
            if let Some(n) = &a.display_name {
                id["name"] = json!(n);
            }
            if g.scope.has("fhirUser")
                && let Some(f) = &a.fhir_user
            {
                id["fhirUser"] = json!(format!("{}/{f}", self.settings.fhir_base));
            }
            body["id_token"] = json!(
                signer
                    .sign_typed("JWT", &id)
                    .map_err(|_| OAuthError::new("server_error", "cannot sign the token"))?
            );
        }
        let wants_refresh = g.account.is_some()
            && g.client.grant_types.iter().any(|gt| gt == "refresh_token")
            && (g.scope.has("offline_access") || g.scope.has("online_access"));
        let actor = match g.account {
            Some(a) => user_actor(&a.username, &a.roles, Some(&g.client.id)),
            None => client_actor(&g.client.id),
        };
        let mut family_id = None;
        let entry_detail = format!(
            "grant={} scope={scope}",
            if rotate.is_some() {
                "refresh"
            } else if g.account.is_some() {
                "code"
            } else {
                "client"
            }
        );
        if wants_refresh || rotate.is_some() {
            let (secret, digest) = new_secret();
            let (fid, family, expect) = match rotate {
                Some((fid, version, mut fam)) => {
                    fam.previous
                        .push(std::mem::replace(&mut fam.current, digest));
                    if fam.previous.len() > 32 {
                        fam.previous.remove(0);
                    }
                    fam.generation += 1;
                    (fid, fam, Expect::Version(version))
                }
                None => {
                    let (fid, _) = new_secret();
                    let fid: String = fid
                        .chars()
                        .filter(char::is_ascii_alphanumeric)
                        .take(32)
                        .collect();
                    let ttl = if g.scope.has("offline_access") {
                        self.settings.offline_refresh_ttl
                    } else {
                        self.settings.refresh_ttl
                    };
                    let a = g.account.map(|a| a.id.clone()).unwrap_or_default();
                    (
                        fid,
                        RefreshFamily {
                            client_id: g.client.id.clone(),
                            user_id: a,
                            scope: scope.clone(),
                            patient: g.patient.clone(),
                            auth_time: g.auth_time.unwrap_or(t),
                            amr: g.amr.clone(),
                            current: digest,
                            previous: Vec::new(),
                            generation: 1,
                            revoked: false,
                            created: t,
                            expires: t + secs(ttl),
                        },
                        Expect::Absent,
                    )
                }
            };
            let expires = haven_domain::Timestamp::from_micros(family.expires * 1_000_000);
            let entry = security_entry(
                ctx,
                if expect == Expect::Absent {
                    "token-issue"
                } else {
                    "token-refresh"
                },
                200,
                actor,
                Some(entry_detail),
            );
            let f = fid.clone();
            let stored = run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
                Box::pin(async move {
                    tx_put(tx, kind::REFRESH, &f, &family, Some(expires), expect).await?;
                    tx.audit(entry).await?;
                    Ok(())
                })
            })
            .await;
            match stored {
                Ok(()) => {}
                // Two refreshes with the same token raced: only one rotates.
                Err(IdentityError::Store(StoreError::VersionConflict(_))) => {
                    return Err(OAuthError::invalid_grant(
                        "the refresh token is invalid, expired or revoked",
                    ));
                }
                Err(_) => {
                    return Err(OAuthError::new(
                        "temporarily_unavailable",
                        "try again shortly",
                    ));
                }
            }
            body["refresh_token"] = json!(format!("{fid}.{secret}"));
            family_id = Some(fid);
        } else {
            self.record(security_entry(
                ctx,
                "token-issue",
                200,
                actor,
                Some(entry_detail),
            ))
            .await
            .map_err(unavailable)?;
        }
        metrics::counter!("haven_tokens_issued_total").increment(1);
        Ok((body, family_id))
    }

    /// Token revocation (RFC 7009). Answers success for unknown tokens too (§2.2).
    ///
    /// # Errors
    /// Client authentication failures.
    pub async fn revoke(&self, p: TokenParams, ctx: &EventContext) -> Result<(), OAuthError> {
        let client = self.authenticate_client(&p, ctx).await?;
        let Some(token) = p.token.as_deref().filter(|t| t.len() <= 8192) else {
            return Err(OAuthError::invalid_request("token is required"));
        };
        if let Some((family, _)) = token
            .split_once('.')
            .filter(|(f, s)| !f.is_empty() && f.len() <= 64 && !s.contains('.'))
        {
            if let Ok(Some(f)) = self.get::<RefreshFamily>(kind::REFRESH, family).await
                && f.value.client_id == client.id
            {
                self.revoke_family(family, "token-revoke", ctx)
                    .await
                    .map_err(|_| OAuthError::new("temporarily_unavailable", "try again shortly"))?;
            }
            return Ok(());
        }
        // An access token of ours (and still valid: an expired one is refused anyway):
        // remember its jti until it would have expired.
        if let Ok(claims) = self.verify_own(token).await
            && claims.get("client_id").and_then(Value::as_str) == Some(client.id.as_str())
            && let (Some(jti), Some(exp)) = (
                claims.get("jti").and_then(Value::as_str).map(str::to_owned),
                claims.get("exp").and_then(Value::as_i64),
            )
        {
            let expires = haven_domain::Timestamp::from_micros((exp + 120) * 1_000_000);
            let entry = security_entry(
                ctx,
                "token-revoke",
                200,
                client_actor(&client.id),
                Some("type=access".into()),
            );
            let j = jti.clone();
            run_write::<(), IdentityError, _>(self.store.as_ref(), move |tx| {
                Box::pin(async move {
                    tx_put(
                        tx,
                        kind::REVOKED,
                        &j,
                        &Marker { at: now() },
                        Some(expires),
                        Expect::Any,
                    )
                    .await?;
                    tx.audit(entry).await?;
                    Ok(())
                })
            })
            .await
            .map_err(|_| OAuthError::new("temporarily_unavailable", "try again shortly"))?;
            self.caches.forget_token(&jti);
        }
        Ok(())
    }

    /// Token introspection (RFC 7662), for confidential clients.
    ///
    /// # Errors
    /// Client authentication failures.
    pub async fn introspect(
        &self,
        p: TokenParams,
        ctx: &EventContext,
    ) -> Result<Value, OAuthError> {
        let client = self.authenticate_client(&p, ctx).await?;
        if client.kind != ClientKind::Confidential {
            return Err(OAuthError::invalid_client(
                "introspection is for confidential clients",
            ));
        }
        let Some(token) = p.token.as_deref().filter(|t| t.len() <= 8192) else {
            return Err(OAuthError::invalid_request("token is required"));
        };
        if let Some((family, secret)) = token.split_once('.').filter(|(_, s)| !s.contains('.')) {
            if let Ok(Some(f)) = self.get::<RefreshFamily>(kind::REFRESH, family).await
                && !f.value.revoked
                && f.value.expires > now()
                && constant_time_eq(token_digest(secret).as_bytes(), f.value.current.as_bytes())
            {
                return Ok(json!({
                    "active": true,
                    "token_type": "refresh_token",
                    "client_id": f.value.client_id,
                    "scope": f.value.scope,
                    "exp": f.value.expires,
                }));
            }
            return Ok(json!({ "active": false }));
        }
        match self.validate(token).await {
            Ok((_, claims)) => {
                let mut out = Map::new();
                out.insert("active".into(), json!(true));
                out.insert("token_type".into(), json!("Bearer"));
                for k in [
                    "iss",
                    "sub",
                    "aud",
                    "client_id",
                    "scope",
                    "exp",
                    "iat",
                    "nbf",
                    "jti",
                    "patient",
                    "fhirUser",
                    "preferred_username",
                ] {
                    if let Some(v) = claims.get(k) {
                        out.insert(k.to_owned(), v.clone());
                    }
                }
                if let Some(u) = claims.get("preferred_username") {
                    out.insert("username".into(), u.clone());
                }
                Ok(Value::Object(out))
            }
            Err(_) => Ok(json!({ "active": false })),
        }
    }

    /// OIDC userinfo for a valid access token with the `openid` scope.
    ///
    /// # Errors
    /// `invalid_token`, `insufficient_scope`.
    pub async fn userinfo(&self, bearer: &str) -> Result<Value, OAuthError> {
        let (principal, _) = self.validate(bearer).await?;
        if !principal.scopes.has("openid") {
            return Err(OAuthError::new(
                "insufficient_scope",
                "the token was not granted the openid scope",
            ));
        }
        let Ok(Some(a)) = self.get::<Account>(kind::ACCOUNT, &principal.subject).await else {
            return Err(OAuthError::new(
                "invalid_token",
                "the token's user is unknown",
            ));
        };
        let a = a.value;
        let mut out = json!({ "sub": a.id, "preferred_username": a.username });
        if let Some(n) = a.display_name {
            out["name"] = json!(n);
        }
        if let Some(e) = a.email {
            out["email"] = json!(e);
        }
        if let Some(f) = a.fhir_user {
            out["fhirUser"] = json!(format!("{}/{f}", self.settings.fhir_base));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_the_rfc_7636_example() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_ok(verifier, challenge));
        assert!(!pkce_ok(challenge, challenge));
        assert!(!pkce_ok("short", challenge));
        assert!(!pkce_ok(&format!("{verifier}!"), challenge));
    }

    #[test]
    fn redirects_keep_existing_query_parameters() {
        assert_eq!(
            with_query("https://a/cb", &[("code", "x y")]),
            "https://a/cb?code=x+y"
        );
        assert_eq!(
            with_query("https://a/cb?k=1", &[("state", "s")]),
            "https://a/cb?k=1&state=s"
        );
    }
}
