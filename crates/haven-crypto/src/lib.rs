//! Haven's cryptography: the only crate that names hash, signature, password-hashing, OTP and
//! JWT crates.
//!
//! Everything else in Haven asks this crate for what it needs (a digest, a signature, a password
//! check, a verified token) and never sees a RustCrypto, `argon2`, `totp-rs` or `jsonwebtoken`
//! type. That keeps the choice of primitives, and the rules around them, in one place that can be
//! reviewed as a whole and changed without touching callers.
//!
//! What it holds:
//! - [`sha256`], and Ed25519 [`SigningKey`] / [`VerifyingKey`] for the audit trail's hash chain
//!   and signed checkpoints;
//! - [`password`]: Argon2id PHC hashes with the OWASP minimum as default, rehash detection and a
//!   dummy hash for unknown users;
//! - [`totp`]: RFC 6238 codes (SHA-1, 6 digits, 30 s) with a one-step window and single use;
//! - [`random`]: bearer tokens, their storage digest, recovery codes, constant-time equality;
//! - [`envelope`]: AES-256-GCM data keys and key-encryption keys (seal, open, wrap) and the
//!   HMAC-SHA256 that pseudonymises searchable identifiers;
//! - [`jwt`]: Haven's Ed25519 token signing key and a strict verifier for tokens signed by keys
//!   from a JWKS (EdDSA, ES256, ES384, RS*/PS*), used for SMART client assertions too.
//!
//! Secrets are zeroized on drop where this crate holds them, never printed (`Debug` shows a key
//! id or `[redacted]`) and never quoted in an error message; neither are tokens or hashes.
//!
//! Architecture invariant: no I/O and no async. Callers read key files and hand the bytes over,
//! pass the current time in, and run the deliberately slow password functions on a blocking pool.

pub mod envelope;
mod error;
mod hash;
pub mod jwt;
pub mod password;
pub mod random;
mod sign;
pub mod totp;

pub use envelope::{AeadKey, MacKey};
pub use error::CryptoError;
pub use hash::sha256;
pub use jwt::{JwtError, JwtRules, TokenSigningKey, VerificationKeys, verify_jwt};
pub use password::{PasswordParams, dummy_hash, hash_password, needs_rehash, verify_password};
pub use random::{
    constant_time_eq, normalize_recovery_code, random_bytes, random_token, recovery_code,
    token_digest,
};
pub use sign::{SIGNATURE_LEN, SigningKey, VerifyingKey};
pub use totp::{TotpSecret, otpauth_uri, totp_code, verify_totp};
