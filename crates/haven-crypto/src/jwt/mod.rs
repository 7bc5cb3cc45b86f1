//! JSON Web Tokens (RFC 7519) signed as compact JWS (RFC 7515): Haven's own ID and access tokens
//! ([`TokenSigningKey`], Ed25519), and tokens from others that Haven must check, such as SMART
//! Backend Services client assertions (`private_key_jwt`, RFC 7523) verified against the client's
//! registered JWKS ([`VerificationKeys`], [`verify_jwt`]).
//!
//! Signatures are computed and checked by `jsonwebtoken` (aws-lc-rs backend), but nothing about
//! a token decides *how* it is checked before Haven has looked at it itself. [`verify_jwt`]
//! bounds the token's size, parses the header with its own strict parser, picks the key only by
//! exact `kid` from a set built from a JWKS Haven trusts, requires the header's `alg` to be the
//! one algorithm that key is allowed, and only then hands `jsonwebtoken` a `Validation` restricted
//! to that algorithm and a key built from the JWK's components. Claims (`exp`, `nbf`, `iat`,
//! `iss`, `aud`) are checked here against the caller's clock, not by `jsonwebtoken`: its time
//! checks read the system clock, it refuses any `aud` when no audience is configured, accepts an
//! `iss` array, and checks `nbf` only when asked. One rule set, written once, is easier to review
//! than two that must agree.
//!
//! What is deliberately absent (RFC 8725, JWT Best Current Practices):
//! - no `none` and no HMAC algorithm: a public key can never be used as an HMAC secret;
//! - no key from the token: `jwk`, `jku`, `x5u`, `x5c` headers are never read;
//! - no `crit` extension is understood, so any token that lists one is refused;
//! - no RSA key under 2048 bits, no JWKS entry whose `use` is not `sig`.

mod keys;
mod signing;
mod verify;

#[cfg(test)]
mod tests;

use jsonwebtoken::Algorithm;

pub use keys::VerificationKeys;
pub use signing::TokenSigningKey;
pub use verify::verify_jwt;

/// Largest token [`JwtRules::new`] accepts, in bytes. Haven's own tokens are under 1 KiB; client
/// assertions with an `x5c` chain would need more, but `x5c` is never used anyway.
pub const DEFAULT_MAX_JWT_LEN: usize = 8192;
/// Largest clock skew a caller may allow, in seconds; larger values are treated as this.
pub const MAX_LEEWAY_SECS: u64 = 60;
/// Clock skew [`JwtRules::new`] allows, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;

/// Why a token was refused. The text names the rule that failed, never any part of the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is longer than the {max} bytes allowed")]
    TooLong { max: usize },
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signing algorithm is missing, unsupported, or not the one its key allows")]
    Algorithm,
    #[error("the token lists critical header extensions, and none are supported")]
    CriticalHeader,
    #[error("the token's key id does not name a trusted key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("the token's issuer is not trusted")]
    Issuer,
    #[error("the token is not intended for this audience")]
    Audience,
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(String),
    #[error("the token's claim `{0}` has the wrong type or range")]
    InvalidClaim(String),
    #[error("the token's type (typ header) is not the expected one")]
    Type,
}

/// What [`verify_jwt`] requires of a token besides a valid signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRules<'a> {
    /// `iss` must be present, a string, and equal to one of these. Empty refuses every token.
    pub issuers: Vec<String>,
    /// When set, `aud` must be present and be this string or an array containing it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`; at most [`MAX_LEEWAY_SECS`].
    pub leeway_secs: u64,
    /// The verifier's current time, seconds since the Unix epoch.
    pub now_unix: u64,
    /// Tokens longer than this are refused before any decoding.
    pub max_len: usize,
    /// Claims that must be present (`exp` and `iss` always are; an `audience` makes `aud` so).
    pub required: &'a [&'a str],
    /// When set, the `typ` header must name this type, compared as a media type (RFC 7515
    /// section 4.1.9): case-insensitive, `application/` prefix optional; e.g. `at+jwt` accepts
    /// `at+jwt` and `application/at+jwt` (RFC 9068 section 4).
    pub typ: Option<&'a str>,
}

impl JwtRules<'_> {
    /// Rules for tokens from `issuers` at `now_unix`: no audience, [`DEFAULT_LEEWAY_SECS`],
    /// [`DEFAULT_MAX_JWT_LEN`], only `exp` and `iss` required, any `typ`.
    #[must_use]
    pub fn new(issuers: Vec<String>, now_unix: u64) -> Self {
        Self {
            issuers,
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            now_unix,
            max_len: DEFAULT_MAX_JWT_LEN,
            required: &[],
            typ: None,
        }
    }
}

/// Makes sure `jsonwebtoken` has its aws-lc-rs backend. With only the `aws_lc_rs` feature it
/// picks it by itself; should another crate ever turn on `rust_crypto` too, `jsonwebtoken` would
/// panic on first use instead, so the backend is installed explicitly when none is.
fn ensure_provider() {
    if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
        // Losing a race to another installer is fine: some provider is then in place.
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    }
}

/// The algorithms a token may name, spelled exactly as RFC 7518 section 3.1 does. HMAC and
/// `none` are absent on purpose, and so is any other spelling (`none`, `NONE`, `eddsa`).
fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "EdDSA" => Algorithm::EdDSA,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        _ => return None,
    })
}
