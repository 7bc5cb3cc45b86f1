//! What the identity module keeps, as typed records over the store's record API
//! (`haven_store::records`): one kind per type, JSON bodies, compare-and-swap on version.
//!
//! Secrets are never keys or bodies in clear: a session id, an authorization code or a refresh
//! token is stored under its SHA-256 digest, so a copy of the database cannot be replayed.

use haven_domain::{Role, Timestamp};
use haven_store::{Expect, StoreError, StoredRecord, WriteTx};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Record kinds.
pub mod kind {
    /// [`super::Account`] by user id.
    pub const ACCOUNT: &str = "account";
    /// [`super::UsernameIndex`] by normalized username.
    pub const USERNAME: &str = "username";
    /// [`super::UsernameIndex`] by digest of a directory entry's DN (lower case): one Haven
    /// account per directory person, whatever name they type.
    pub const DIRECTORY_DN: &str = "directory-dn";
    /// [`super::Client`] by client id.
    pub const CLIENT: &str = "client";
    /// [`super::Session`] by digest of the session cookie.
    pub const SESSION: &str = "session";
    /// [`super::PendingLogin`] by digest of the login cookie.
    pub const LOGIN: &str = "login";
    /// [`super::AuthRequest`] by its id.
    pub const AUTH_REQUEST: &str = "authreq";
    /// [`super::AuthCode`] by digest of the code.
    pub const CODE: &str = "code";
    /// A redeemed authorization code ([`super::UsedCode`]), by digest: a replay revokes
    /// what the first redemption issued.
    pub const CODE_USED: &str = "code-used";
    /// [`super::RefreshFamily`] by family id.
    pub const REFRESH: &str = "refresh";
    /// [`super::SigningKeyRecord`] by key id.
    pub const SIGNING_KEY: &str = "signing-key";
    /// An open emergency access ([`crate::emergency::Grant`]) by `<user id>/<patient id>`,
    /// expiring when it ends.
    pub const BREAK_GLASS: &str = "break-glass";
    /// A revoked access token, by `jti` (expires with the token).
    pub const REVOKED: &str = "revoked";
    /// A client assertion's `jti`, kept until the assertion expires (replay protection).
    pub const ASSERTION: &str = "assertion";
    /// Login throttling (`crate::throttle::Throttle`) by normalized username, kept for names
    /// with and without an account alike, so throttling does not reveal which exist.
    pub const THROTTLE: &str = "throttle";
}

/// Where an account's password is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AccountSource {
    /// Haven's own Argon2id hash.
    Local,
    /// The hospital directory; `dn` as last seen.
    Ldap { dn: String },
}

/// TOTP enrolment. `confirmed` becomes true once the user has entered a valid code.
#[derive(Clone, Serialize, Deserialize)]
pub struct TotpEnrolment {
    /// Base32 secret. (Sealed with the patient-data keys once key management lands.)
    pub secret: String,
    pub confirmed: bool,
    /// The newest time step a code was accepted for: codes are single-use.
    pub last_step: Option<u64>,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotpEnrolment")
            .field("confirmed", &self.confirmed)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    /// Normalized (see [`crate::username`]).
    pub username: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub roles: Vec<Role>,
    pub source: AccountSource,
    /// Argon2id PHC string; `None` for directory accounts.
    pub password_hash: Option<String>,
    pub disabled: bool,
    pub totp: Option<TotpEnrolment>,
    /// SHA-256 digests of unused recovery codes.
    pub recovery_codes: Vec<String>,
    /// `Practitioner/123`, `Patient/abc`: the FHIR resource that is this user.
    pub fhir_user: Option<String>,
    pub created: i64,
    pub updated: i64,
}

impl Account {
    /// Whether MFA is set up and usable.
    #[must_use]
    pub fn has_mfa(&self) -> bool {
        self.totp.as_ref().is_some_and(|t| t.confirmed)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsernameIndex {
    pub user_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// A browser or native app: no secret, PKCE only.
    Public,
    /// Authenticates with `private_key_jwt` (a key pair; the public JWKS is registered).
    Confidential,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub kind: ClientKind,
    pub redirect_uris: Vec<String>,
    /// The client's public keys (JWKS) for `private_key_jwt`.
    pub jwks: Option<serde_json::Value>,
    /// The most this client may be granted (space-separated scopes).
    pub scope: String,
    /// `authorization_code`, `refresh_token`, `client_credentials`.
    pub grant_types: Vec<String>,
    /// For client-credentials clients: the role their tokens carry.
    pub role: Option<Role>,
    pub revoked: bool,
    pub created: i64,
}

/// A browser session, created after password and MFA succeeded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub user_id: String,
    pub created: i64,
    pub last_seen: i64,
    /// When the user last authenticated (OIDC `auth_time`).
    pub auth_time: i64,
    /// `pwd`, `otp`, `ldap`: how (OIDC `amr`).
    pub amr: Vec<String>,
    /// The CSRF token of forms shown in this session.
    pub csrf: String,
}

/// A login in progress (before the session exists): which authorization request it serves,
/// its CSRF token, and, once the password was right, whose MFA is pending.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingLogin {
    pub auth_request: Option<String>,
    pub csrf: String,
    pub user_id: Option<String>,
    pub amr: Vec<String>,
    pub created: i64,
    /// A TOTP secret offered for enrolment but not yet confirmed.
    pub enrolling: Option<String>,
}

/// A validated authorization request waiting for login and consent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: String,
    pub nonce: Option<String>,
    pub code_challenge: String,
    /// The FHIR base the client named (`aud`).
    pub aud: String,
    pub created: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub user_id: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub patient: Option<String>,
    pub auth_time: i64,
    pub amr: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsedCode {
    pub client_id: String,
    /// The refresh family the redemption started, if any.
    pub family: Option<String>,
}

/// A refresh-token family: every rotation replaces `current`; presenting an older token of the
/// family means it was stolen, and the whole family is revoked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefreshFamily {
    pub client_id: String,
    pub user_id: String,
    pub scope: String,
    pub patient: Option<String>,
    pub auth_time: i64,
    pub amr: Vec<String>,
    /// Digest of the one valid secret.
    pub current: String,
    /// Digests of the secrets it replaced (the newest 32): presenting one of these, and only
    /// these, is reuse. A made-up secret is just invalid, so knowing a family id is not
    /// enough to revoke someone's tokens.
    #[serde(default)]
    pub previous: Vec<String>,
    pub generation: u32,
    pub revoked: bool,
    pub created: i64,
    /// Absolute end of the family (no rotation extends it).
    pub expires: i64,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// PKCS#8 DER, base64. (Wrapped by the key-encryption key once key management lands.)
    pub pkcs8: String,
    pub public_jwk: serde_json::Value,
    pub created: i64,
    /// Signs new tokens from this time.
    pub active_from: i64,
    /// Stops signing at this time (a newer key took over); still published until `expires`.
    pub retired: Option<i64>,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .field("retired", &self.retired)
            .finish_non_exhaustive()
    }
}

/// An empty body for marker records (revoked tokens, used assertions).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Marker {
    pub at: i64,
}

/// A typed record with its version.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub version: i64,
    pub value: T,
    pub expires: Option<Timestamp>,
}

pub(crate) fn decode<T: DeserializeOwned>(
    kind: &str,
    r: StoredRecord,
) -> Result<Versioned<T>, StoreError> {
    let value = serde_json::from_slice(&r.body)
        .map_err(|e| StoreError::Corrupt(format!("identity record of kind {kind}: {e}")))?;
    Ok(Versioned {
        version: r.version,
        value,
        expires: r.expires,
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Typed reads and writes inside a unit of work.
pub(crate) async fn tx_get<T: DeserializeOwned>(
    tx: &mut dyn WriteTx,
    kind: &str,
    key: &str,
) -> Result<Option<Versioned<T>>, StoreError> {
    match tx.record_get(kind, key).await? {
        Some(r) => Ok(Some(decode(kind, r)?)),
        None => Ok(None),
    }
}

pub(crate) async fn tx_put<T: Serialize>(
    tx: &mut dyn WriteTx,
    kind: &str,
    key: &str,
    value: &T,
    expires: Option<Timestamp>,
    expect: Expect,
) -> Result<i64, StoreError> {
    tx.record_put(kind, key, encode(value), expires, expect)
        .await
}
