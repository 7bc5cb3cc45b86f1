//! The resource server's side: turning a bearer token into a [`Principal`].
//!
//! Checks, in order: size; the JWS header and signature with keys only from Haven's own key
//! ring or a configured issuer's JWKS (`jku`, `x5u`, `x5c` and embedded `jwk` are never
//! followed; `alg` must be the key's own algorithm, so `none` and HS/RS confusion fail);
//! `typ` `at+jwt` for Haven's tokens (an ID token is not an access token); issuer; audience
//! (this FHIR base); `exp`/`nbf`/`iat` with the configured leeway (at most 60 s); then that the
//! token was not revoked, its client is not revoked and its user is not disabled. Those last
//! answers are cached for a short time ([`crate::IdentitySettings::revocation_cache`]) so a
//! request costs no database read in the common case.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use haven_crypto::{JwtError, JwtRules, verify_jwt};
use haven_domain::{EmergencyAccess, Principal, PrincipalKind, Role};
use serde_json::{Map, Value};

use crate::core::{Identity, now};
use crate::error::OAuthError;
use crate::records::{Account, Client, kind};

/// Longest bearer token accepted.
pub const MAX_TOKEN_LEN: usize = 8192;
/// Entries per cache before it is cleared (bounded memory under a flood of distinct tokens).
const CACHE_LIMIT: usize = 50_000;

/// Short-lived answers to "is this still allowed?".
pub(crate) struct Caches {
    ttl: Duration,
    users: Mutex<HashMap<String, (bool, Instant)>>,
    clients: Mutex<HashMap<String, (bool, Instant)>>,
    tokens: Mutex<HashMap<String, (bool, Instant)>>,
    /// Open emergency accesses per user id.
    grants: Mutex<HashMap<String, (Vec<EmergencyAccess>, Instant)>>,
}

fn cached<T: Clone>(
    map: &Mutex<HashMap<String, (T, Instant)>>,
    key: &str,
    ttl: Duration,
) -> Option<T> {
    let m = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    m.get(key)
        .filter(|(_, at)| at.elapsed() < ttl)
        .map(|(ok, _)| ok.clone())
}

fn remember<T>(map: &Mutex<HashMap<String, (T, Instant)>>, key: &str, ok: T) {
    let mut m = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if m.len() >= CACHE_LIMIT {
        m.clear();
    }
    m.insert(key.to_owned(), (ok, Instant::now()));
}

impl Caches {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            users: Mutex::default(),
            clients: Mutex::default(),
            tokens: Mutex::default(),
            grants: Mutex::default(),
        }
    }
    pub(crate) fn grants(&self, user: &str) -> Option<Vec<EmergencyAccess>> {
        cached(&self.grants, user, self.ttl)
    }
    pub(crate) fn remember_grants(&self, user: &str, grants: Vec<EmergencyAccess>) {
        remember(&self.grants, user, grants);
    }
    pub(crate) fn forget_grants(&self, user: &str) {
        self.grants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(user);
    }
    pub(crate) fn forget_user(&self, id: &str) {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
    pub(crate) fn forget_client(&self, id: &str) {
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }
    pub(crate) fn forget_token(&self, jti: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(jti);
    }
}

fn invalid(why: &str) -> OAuthError {
    OAuthError::new("invalid_token", why)
}

fn describe(e: &JwtError) -> &'static str {
    match e {
        JwtError::Expired => "the access token has expired",
        JwtError::NotYetValid | JwtError::IssuedInFuture => "the access token is not valid yet",
        _ => "the access token is invalid",
    }
}

fn str_claim(claims: &Map<String, Value>, k: &str) -> Option<String> {
    claims.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// The unverified `iss` of a token, to pick whose keys check it.
fn peek_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

impl Identity {
    /// Verifies one of Haven's own access tokens (signature, type, issuer, audience, times).
    ///
    /// Always against the real clock, revocation included: checking "as of the token's own
    /// lifetime" with a clock of 0 made every `iat` lie in the future, so no access token could
    /// ever be revoked. An expired token fails here, which costs nothing: it is refused anyway.
    pub(crate) async fn verify_own(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
        self.keys.refresh_if_stale().await;
        let leeway = self.settings.clock_leeway.as_secs().min(60);
        let t = u64::try_from(now()).unwrap_or(0);
        let rules = JwtRules {
            issuers: vec![self.settings.issuer.clone()],
            audience: Some(self.settings.fhir_base.clone()),
            leeway_secs: leeway,
            now_unix: t,
            max_len: MAX_TOKEN_LEN,
            required: &["exp", "iat", "jti", "sub", "client_id"],
            typ: Some("at+jwt"),
        };
        let keys = self.keys.verification_keys();
        match verify_jwt(token, &keys, &rules) {
            Err(JwtError::UnknownKey) if self.keys.refresh_on_miss().await => {
                verify_jwt(token, &self.keys.verification_keys(), &rules)
            }
            r => r,
        }
    }

    /// Validates a bearer token and returns who it stands for.
    ///
    /// # Errors
    /// `invalid_token` (401) with a short reason; `temporarily_unavailable` (503) when the
    /// revocation state cannot be read.
    pub async fn validate(
        &self,
        token: &str,
    ) -> Result<(Principal, Map<String, Value>), OAuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(invalid("the access token is invalid"));
        }
        let issuer = peek_issuer(token).unwrap_or_default();
        if issuer != self.settings.issuer {
            return match self.external.find(&issuer) {
                Some(ext) => ext.validate(token, &self.settings).await,
                None => Err(invalid("the access token is invalid")),
            };
        }
        let claims = self.verify_own(token).await.map_err(|e| {
            tracing::debug!(reason = %e, "access token refused");
            invalid(describe(&e))
        })?;
        let jti = str_claim(&claims, "jti").unwrap_or_default();
        let sub = str_claim(&claims, "sub").unwrap_or_default();
        let client_id = str_claim(&claims, "client_id").unwrap_or_default();
        let roles: Vec<Role> = claims
            .get("roles")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(Role::parse)
                    .collect()
            })
            .unwrap_or_default();
        let kind = if sub == client_id && claims.get("preferred_username").is_none() {
            PrincipalKind::Client
        } else {
            PrincipalKind::User
        };
        self.still_allowed(
            &jti,
            &client_id,
            (kind == PrincipalKind::User).then_some(sub.as_str()),
        )
        .await?;
        let scopes = crate::core::scopes_of(&str_claim(&claims, "scope").unwrap_or_default());
        let fhir_user = str_claim(&claims, "fhirUser").map(|f| {
            f.strip_prefix(&format!("{}/", self.settings.fhir_base))
                .map_or(f.clone(), str::to_owned)
        });
        let emergency = if kind == PrincipalKind::User {
            self.emergency_grants(&sub)
                .await
                .map_err(|_| OAuthError::new("temporarily_unavailable", "try again shortly"))?
        } else {
            Vec::new()
        };
        let principal = Principal {
            kind,
            emergency,
            subject: sub,
            username: str_claim(&claims, "preferred_username"),
            roles,
            client_id,
            scopes,
            patient: str_claim(&claims, "patient"),
            fhir_user,
            token_id: jti,
            issuer: self.settings.issuer.clone(),
        };
        Ok((principal, claims))
    }

    /// Revoked token? Revoked client? Disabled user? (Cached briefly.)
    async fn still_allowed(
        &self,
        jti: &str,
        client: &str,
        user: Option<&str>,
    ) -> Result<(), OAuthError> {
        let ttl = self.caches.ttl;
        let down = |_| OAuthError::new("temporarily_unavailable", "try again shortly");
        let token_ok = match cached(&self.caches.tokens, jti, ttl) {
            Some(ok) => ok,
            None => {
                let ok = self
                    .store
                    .record_get(kind::REVOKED, jti)
                    .await
                    .map_err(down)?
                    .is_none();
                remember(&self.caches.tokens, jti, ok);
                ok
            }
        };
        if !token_ok {
            return Err(invalid("the access token was revoked"));
        }
        let client_ok = match cached(&self.caches.clients, client, ttl) {
            Some(ok) => ok,
            None => {
                let ok = self
                    .get::<Client>(kind::CLIENT, client)
                    .await
                    .map_err(down)?
                    .is_some_and(|c| !c.value.revoked);
                remember(&self.caches.clients, client, ok);
                ok
            }
        };
        if !client_ok {
            return Err(invalid("the access token's client was revoked"));
        }
        if let Some(user) = user {
            let user_ok = match cached(&self.caches.users, user, ttl) {
                Some(ok) => ok,
                None => {
                    let ok = self
                        .get::<Account>(kind::ACCOUNT, user)
                        .await
                        .map_err(down)?
                        .is_some_and(|a| !a.value.disabled);
                    remember(&self.caches.users, user, ok);
                    ok
                }
            };
            if !user_ok {
                return Err(invalid("the access token's user is disabled"));
            }
        }
        Ok(())
    }
}
