//! What can go wrong in the identity module, and how it reaches a client.

use haven_store::StoreError;

use crate::hasher::HashError;

/// An OAuth 2.0 error response (RFC 6749 §5.2, RFC 6750 §3.1): the code, a description for the
/// developer (never a secret, never which part of a credential was wrong), and the status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    pub code: &'static str,
    pub description: String,
    pub status: u16,
}

impl OAuthError {
    pub fn new(code: &'static str, description: impl Into<String>) -> Self {
        let status = match code {
            "invalid_client" => 401,
            "invalid_token" => 401,
            "insufficient_scope" | "access_denied" => 403,
            "temporarily_unavailable" => 503,
            "server_error" => 500,
            "slow_down" => 429,
            _ => 400,
        };
        Self {
            code,
            description: description.into(),
            status,
        }
    }

    pub fn invalid_request(d: impl Into<String>) -> Self {
        Self::new("invalid_request", d)
    }
    pub fn invalid_client(d: impl Into<String>) -> Self {
        Self::new("invalid_client", d)
    }
    pub fn invalid_grant(d: impl Into<String>) -> Self {
        Self::new("invalid_grant", d)
    }
    pub fn invalid_scope(d: impl Into<String>) -> Self {
        Self::new("invalid_scope", d)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Wrong username or password, or an unknown user: deliberately indistinguishable.
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("the code is wrong or was already used")]
    InvalidMfaCode,
    /// Too many failures; try again after this many seconds.
    #[error("too many failed attempts; try again in {0} s")]
    Throttled(u64),
    #[error("this account is disabled; ask an administrator")]
    Disabled,
    #[error("this account has no role in Haven; ask an administrator to grant one")]
    NoRole,
    /// The login page or form is too old, or its CSRF token does not match.
    #[error("this login form has expired or was not sent by this browser; start again")]
    LoginExpired,
    #[error("{0}")]
    OAuth(#[from] OAuthError),
    #[error("{0}")]
    Invalid(String),
    /// The caller may not do this (403).
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} was not found")]
    NotFound(String),
    #[error("too many logins at once; try again in a few seconds")]
    Busy,
    #[error("the directory cannot be reached; try again later")]
    DirectoryUnavailable,
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<HashError> for IdentityError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => IdentityError::Busy,
            HashError::Failed(m) => IdentityError::Internal(m),
        }
    }
}

impl IdentityError {
    /// The HTTP status for this error.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            IdentityError::InvalidCredentials | IdentityError::InvalidMfaCode => 401,
            IdentityError::Throttled(_) => 429,
            IdentityError::Disabled | IdentityError::NoRole | IdentityError::NotAllowed(_) => 403,
            // Two requests changed the same record at once (a double submit): retry.
            IdentityError::Store(StoreError::VersionConflict(_)) => 409,
            IdentityError::LoginExpired | IdentityError::Invalid(_) => 400,
            IdentityError::OAuth(e) => e.status,
            IdentityError::Exists(_) => 409,
            IdentityError::NotFound(_) => 404,
            IdentityError::Busy | IdentityError::DirectoryUnavailable => 503,
            IdentityError::Store(StoreError::Unavailable(_)) => 503,
            IdentityError::Store(_) | IdentityError::Internal(_) => 500,
        }
    }
}
