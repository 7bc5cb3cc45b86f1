//! Access tokens from a trusted external OpenID provider (the hospital's Keycloak, Entra ID,
//! Okta): keys from the provider's JWKS (found through its discovery document unless
//! configured), claims mapped to Haven roles by configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_crypto::{JwtRules, VerificationKeys, verify_jwt};
use haven_domain::{Principal, PrincipalKind, Role};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::core::now;
use crate::error::OAuthError;
use crate::settings::{IdentitySettings, TrustedIssuer};

/// How long fetched keys are used before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(600);
/// Least time between fetches caused by an unknown `kid`.
const REFETCH_ON_MISS: Duration = Duration::from_secs(30);

/// Fetches a JSON document over HTTPS (the binary supplies it; this crate has no HTTP client).
/// Implementations bound time and size and follow no redirects.
#[async_trait::async_trait]
pub trait JsonFetcher: Send + Sync {
    /// The document at `url`, or why it could not be fetched.
    async fn get_json(&self, url: &str) -> Result<Value, String>;
}

pub(crate) struct External {
    pub(crate) config: TrustedIssuer,
    keys: Mutex<Option<(Arc<VerificationKeys>, Instant)>>,
    http: Arc<dyn JsonFetcher>,
}

pub(crate) struct ExternalIssuers(Vec<External>);

impl ExternalIssuers {
    pub(crate) fn new(settings: &IdentitySettings, http: Arc<dyn JsonFetcher>) -> Self {
        Self(
            settings
                .trusted_issuers
                .iter()
                .map(|c| External {
                    config: c.clone(),
                    keys: Mutex::new(None),
                    http: http.clone(),
                })
                .collect(),
        )
    }

    pub(crate) fn find(&self, issuer: &str) -> Option<&External> {
        if issuer.is_empty() {
            return None;
        }
        self.0.iter().find(|e| e.config.issuer == issuer)
    }
}

fn unavailable(why: &str) -> OAuthError {
    tracing::warn!(reason = why, "cannot fetch a trusted issuer's keys");
    OAuthError::new(
        "temporarily_unavailable",
        "the token issuer's keys cannot be fetched now; try again shortly",
    )
}

/// A claim by dotted path (`realm_access.roles`).
fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    Some(v)
}

impl External {
    async fn fetch_json(&self, url: &str) -> Result<Value, OAuthError> {
        self.http.get_json(url).await.map_err(|e| unavailable(&e))
    }

    async fn fetch_keys(&self) -> Result<Arc<VerificationKeys>, OAuthError> {
        let jwks_uri = match &self.config.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.config.issuer.trim_end_matches('/')
                );
                let doc = self.fetch_json(&url).await?;
                if doc.get("issuer").and_then(Value::as_str) != Some(self.config.issuer.as_str()) {
                    return Err(unavailable("the discovery document names another issuer"));
                }
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| unavailable("the discovery document has no jwks_uri"))?
                    .to_owned()
            }
        };
        let jwks = self.fetch_json(&jwks_uri).await?;
        let keys = VerificationKeys::from_jwks(&jwks).map_err(|e| unavailable(&e.to_string()))?;
        Ok(Arc::new(keys))
    }

    async fn keys(&self, force: bool) -> Result<Arc<VerificationKeys>, OAuthError> {
        let mut slot = self.keys.lock().await;
        if let Some((k, at)) = slot.as_ref() {
            let fresh = at.elapsed() < KEYS_TTL;
            let may_refetch = at.elapsed() >= REFETCH_ON_MISS;
            if fresh && !(force && may_refetch) {
                return Ok(k.clone());
            }
        }
        match self.fetch_keys().await {
            Ok(k) => {
                *slot = Some((k.clone(), Instant::now()));
                Ok(k)
            }
            // Keys fetched before stay usable while the issuer is unreachable.
            Err(e) => slot.as_ref().map(|(k, _)| k.clone()).ok_or(e),
        }
    }

    pub(crate) async fn validate(
        &self,
        token: &str,
        settings: &IdentitySettings,
    ) -> Result<(Principal, Map<String, Value>), OAuthError> {
        let audience = self
            .config
            .audience
            .clone()
            .unwrap_or_else(|| settings.fhir_base.clone());
        let rules = JwtRules {
            issuers: vec![self.config.issuer.clone()],
            audience: Some(audience),
            leeway_secs: settings.clock_leeway.as_secs().min(60),
            now_unix: u64::try_from(now()).unwrap_or(0),
            max_len: crate::resource::MAX_TOKEN_LEN,
            required: &["exp", "sub"],
            typ: None,
        };
        let keys = self.keys(false).await?;
        let claims = match verify_jwt(token, &keys, &rules) {
            Err(haven_crypto::JwtError::UnknownKey) => {
                verify_jwt(token, self.keys(true).await?.as_ref(), &rules)
            }
            r => r,
        }
        .map_err(|e| {
            tracing::debug!(reason = %e, issuer = %self.config.issuer, "external token refused");
            OAuthError::new("invalid_token", "the access token is invalid")
        })?;
        let mut roles: Vec<Role> = Vec::new();
        let values: Vec<String> = match claim(&claims, &self.config.roles_claim) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        for v in &values {
            for (name, role) in &self.config.role_map {
                if name == v && !roles.contains(role) {
                    roles.push(*role);
                }
            }
        }
        roles.sort();
        let scope = claims
            .get("scope")
            .or_else(|| claims.get("scp"))
            .map(|v| match v {
                Value::Array(a) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" "),
                Value::String(s) => s.clone(),
                _ => String::new(),
            })
            .unwrap_or_default();
        let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
        let principal = Principal {
            kind: PrincipalKind::User,
            subject: s("sub").unwrap_or_default(),
            username: claim(&claims, &self.config.username_claim)
                .and_then(Value::as_str)
                .map(str::to_owned),
            roles,
            client_id: s("azp").or_else(|| s("client_id")).unwrap_or_default(),
            scopes: crate::core::scopes_of(&scope),
            patient: s("patient"),
            fhir_user: s("fhirUser"),
            token_id: s("jti").unwrap_or_default(),
            issuer: self.config.issuer.clone(),
            // Break-glass needs Haven's own second factor; people from another issuer have none.
            emergency: Vec::new(),
        };
        Ok((principal, claims))
    }
}
