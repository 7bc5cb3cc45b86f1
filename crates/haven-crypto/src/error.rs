//! The crypto layer's error. Messages say what was expected and what was found (a length, a
//! format, a position in a list), never any byte of a key, a password, a hash or a token.
//!
//! JWT *verification* failures have their own enum, [`crate::JwtError`]: they are an expected
//! outcome of handling untrusted input, not a fault in Haven's own keys or configuration.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "an Ed25519 signing key file must hold 32 bytes, raw or base64, or a PKCS#8 PEM; got {got} bytes"
    )]
    SigningKeyLength { got: usize },
    #[error(
        "only unencrypted PKCS#8 PEM keys ('-----BEGIN PRIVATE KEY-----') are supported; convert with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    UnsupportedPem,
    #[error("the PKCS#8 PEM key is malformed or does not hold an Ed25519 private key")]
    InvalidPem,
    #[error("the PKCS#8 DER key is malformed or does not hold an Ed25519 private key")]
    InvalidPkcs8,
    #[error("an Ed25519 public key must be 32 bytes of base64; got {got} bytes")]
    VerifyingKeyLength { got: usize },
    #[error("the Ed25519 public key is not valid base64")]
    VerifyingKeyBase64,
    #[error("the 32 bytes are not a usable Ed25519 public key (invalid or weak point)")]
    InvalidVerifyingKey,
    #[error("an AES-256 key must be 32 bytes; got {got} bytes")]
    AeadKeyLength { got: usize },
    #[error("sealing failed")]
    Sealing,
    #[error(
        "decryption failed: the key is not the one this was sealed with, or the data or its context (type, id, version) was altered"
    )]
    Opening,
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),

    #[error("invalid Argon2id parameters: {0}")]
    PasswordParams(String),
    #[error("the stored password hash is not a usable Argon2 PHC string ({0})")]
    PasswordHashFormat(&'static str),
    #[error("password hashing failed: {0}")]
    PasswordHashing(String),

    #[error(
        "a TOTP secret must be {expected} base32 characters (A-Z, 2-7; 20 bytes); got {got} characters"
    )]
    TotpSecretLength { expected: usize, got: usize },
    #[error("a TOTP secret must be base32 (A-Z and 2-7, case-insensitive)")]
    TotpSecretBase32,

    #[error("a key id must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'")]
    InvalidKeyId,
    #[error("a JWT `typ` must be 1 to 64 printable ASCII characters")]
    InvalidTokenType,
    #[error("JWT claims must be a JSON object")]
    ClaimsNotObject,
    #[error("signing the JWT failed")]
    TokenSigning,

    #[error("the JWKS document is unusable: {0}")]
    Jwks(&'static str),
    #[error("JWKS key #{index} is unusable: {reason}")]
    Jwk { index: usize, reason: &'static str },
    #[error("JWKS key #{index} is an RSA key of {bits} bits; at least 2048 bits are required")]
    WeakRsaKey { index: usize, bits: usize },
}
