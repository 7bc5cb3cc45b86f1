//! The crypto layer's error. Messages say what was expected and what was found (a length, a
//! format), never any byte of the key itself.

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
    #[error("an Ed25519 public key must be 32 bytes of base64; got {got} bytes")]
    VerifyingKeyLength { got: usize },
    #[error("the Ed25519 public key is not valid base64")]
    VerifyingKeyBase64,
    #[error("the 32 bytes are not a usable Ed25519 public key (invalid or weak point)")]
    InvalidVerifyingKey,
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}
