//! The identity module's settings, with the defaults and the reasons for them.

use std::time::Duration;

use haven_crypto::PasswordParams;
use haven_domain::Role;

use crate::password_policy::PasswordPolicy;
use crate::throttle::ThrottlePolicy;

/// An external OpenID provider whose access tokens Haven accepts (the hospital's Keycloak,
/// Entra ID, Okta).
#[derive(Clone, Debug)]
pub struct TrustedIssuer {
    /// The `iss` value, exactly.
    pub issuer: String,
    /// Where the keys are; default: `jwks_uri` of the issuer's discovery document.
    pub jwks_uri: Option<String>,
    /// The `aud` the tokens must carry (default: Haven's FHIR base URL).
    pub audience: Option<String>,
    /// The claim that carries roles or groups (`roles`, `groups`, `realm_access.roles`).
    pub roles_claim: String,
    /// Claim value -> Haven role. Values not listed give no role.
    pub role_map: Vec<(String, Role)>,
    /// The claim with the username (`preferred_username`, `upn`, `email`).
    pub username_claim: String,
}

#[derive(Clone, Debug)]
pub struct IdentitySettings {
    /// Haven's issuer URL (`iss`), the server root: `https://ehr.example.org`.
    pub issuer: String,
    /// The FHIR base URL: the audience of access tokens (SMART `aud`).
    pub fhir_base: String,
    /// Access-token lifetime. Default 5 min: a stolen token is short-lived, and revocation
    /// reaches every replica within [`IdentitySettings::revocation_cache`] anyway.
    pub access_token_ttl: Duration,
    /// Refresh-token family lifetime without `offline_access` (the session's absolute limit).
    pub refresh_ttl: Duration,
    /// With `offline_access`.
    pub offline_refresh_ttl: Duration,
    /// Browser session idle timeout (default 15 min) and absolute limit (default 12 h).
    pub session_idle: Duration,
    pub session_absolute: Duration,
    /// How long a login page, an authorization request and a code stay usable.
    pub login_ttl: Duration,
    pub code_ttl: Duration,
    /// Roles that must use a second factor (default: every human role).
    pub mfa_required_roles: Vec<Role>,
    pub password_params: PasswordParams,
    pub password_policy: PasswordPolicy,
    pub account_throttle: ThrottlePolicy,
    pub ip_throttle: ThrottlePolicy,
    /// Password hashes computed at once (each takes ~19 MiB and most of a core).
    pub hash_concurrency: usize,
    /// Logins that may wait for a hashing slot; beyond this a login is refused with 503.
    pub hash_queue: usize,
    /// How long a signing key keeps signing before a new one takes over (0: never rotate).
    pub signing_key_rotation: Duration,
    /// How long the resource server trusts a cached "not revoked / not disabled" answer.
    pub revocation_cache: Duration,
    /// Leeway for `exp`/`nbf`/`iat` (at most 60 s).
    pub clock_leeway: Duration,
    pub trusted_issuers: Vec<TrustedIssuer>,
    pub ldap: Option<crate::ldap::LdapConfig>,
    /// Roles that may open emergency access (break-glass); default: clinician.
    pub break_glass_roles: Vec<Role>,
    /// How long an emergency access lasts (default 60 min).
    pub break_glass_duration: Duration,
}

impl IdentitySettings {
    /// Defaults for a server whose root is `issuer` and FHIR base is `fhir_base`.
    #[must_use]
    pub fn new(issuer: impl Into<String>, fhir_base: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            fhir_base: fhir_base.into(),
            access_token_ttl: Duration::from_secs(5 * 60),
            refresh_ttl: Duration::from_secs(12 * 3600),
            offline_refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            session_idle: Duration::from_secs(15 * 60),
            session_absolute: Duration::from_secs(12 * 3600),
            login_ttl: Duration::from_secs(10 * 60),
            code_ttl: Duration::from_secs(60),
            mfa_required_roles: Role::ALL.into_iter().filter(|r| r.is_human()).collect(),
            password_params: PasswordParams::default(),
            password_policy: PasswordPolicy::default(),
            account_throttle: ThrottlePolicy::default(),
            ip_throttle: ThrottlePolicy {
                // An address may be a hospital's NAT: more attempts than an account gets.
                free_attempts: 20,
                lock_after: 100,
                ..ThrottlePolicy::default()
            },
            hash_concurrency: 2,
            hash_queue: 32,
            signing_key_rotation: Duration::from_secs(30 * 24 * 3600),
            revocation_cache: Duration::from_secs(2),
            clock_leeway: Duration::from_secs(30),
            trusted_issuers: Vec::new(),
            ldap: None,
            break_glass_roles: vec![Role::Clinician],
            break_glass_duration: Duration::from_secs(3600),
        }
    }

    #[must_use]
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth/token", self.issuer)
    }

    /// Whether an account with these roles must pass a second factor.
    #[must_use]
    pub fn mfa_required(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.mfa_required_roles.contains(r))
    }
}
