//! Ed25519 signing and verification keys.
//!
//! A key is named by its *key id*: the first 8 bytes of SHA-256 over the 32 public-key bytes, in
//! lowercase hex. The id is public, stable across restarts and identical for a signing key and its
//! verifying key, so a signature can say which key made it and a verifier holding several keys
//! (old ones kept after a rotation) can pick the right one.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use ed25519_dalek::{Signature, Signer as _};
use zeroize::Zeroizing;

use crate::{CryptoError, sha256};

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

const PEM_PKCS8_LABEL: &str = "-----BEGIN PRIVATE KEY-----";

/// An Ed25519 signing key. The secret is zeroized when the value is dropped, is not `Clone`, and
/// `Debug` prints only the key id.
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut_slice()).map_err(|e| CryptoError::Random(e.to_string()))?;
        Ok(Self {
            inner: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// Parses the content of a key file: a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the
    /// standard base64 of the 32-byte seed (whitespace anywhere is ignored, so a trailing newline
    /// is fine), or exactly 32 raw bytes.
    pub fn from_pem_or_raw(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            return Self::from_pem(bytes);
        }
        // Base64 first: 32 raw bytes can never be base64 text of 32 bytes (that takes 44 chars),
        // so the two forms cannot be confused.
        let text: Zeroizing<Vec<u8>> = Zeroizing::new(
            bytes
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect(),
        );
        let decoded = STANDARD.decode(text.as_slice()).map(Zeroizing::new);
        if let Ok(seed) = &decoded
            && let Ok(seed) = <&[u8; 32]>::try_from(seed.as_slice())
        {
            return Ok(Self {
                inner: ed25519_dalek::SigningKey::from_bytes(seed),
            });
        }
        if let Ok(seed) = <&[u8; 32]>::try_from(bytes) {
            return Ok(Self {
                inner: ed25519_dalek::SigningKey::from_bytes(seed),
            });
        }
        let got = decoded.map_or(bytes.len(), |d| d.len());
        Err(CryptoError::SigningKeyLength { got })
    }

    fn from_pem(bytes: &[u8]) -> Result<Self, CryptoError> {
        let text = std::str::from_utf8(bytes).map_err(|_| CryptoError::InvalidPem)?;
        if !text.trim_start().starts_with(PEM_PKCS8_LABEL) {
            return Err(CryptoError::UnsupportedPem);
        }
        let inner = ed25519_dalek::SigningKey::from_pkcs8_pem(text.trim())
            .map_err(|_| CryptoError::InvalidPem)?;
        Ok(Self { inner })
    }

    /// The standard base64 of the 32-byte seed, for writing a new key file. The returned string
    /// is wiped when dropped.
    #[must_use]
    pub fn to_base64(&self) -> Zeroizing<String> {
        let seed = Zeroizing::new(self.inner.to_bytes());
        Zeroizing::new(STANDARD.encode(seed.as_slice()))
    }

    #[must_use]
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            inner: self.inner.verifying_key(),
        }
    }

    /// The public key id (16 lowercase hex characters); see the module docs.
    #[must_use]
    pub fn key_id(&self) -> String {
        self.verifying_key().key_id()
    }

    #[must_use]
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.inner.sign(msg).to_bytes()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key, trusted to check signatures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey {
    inner: ed25519_dalek::VerifyingKey,
}

impl VerifyingKey {
    /// Refuses bytes that are not a point on the curve and weak (small-order) keys, which would
    /// accept signatures on many messages.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, CryptoError> {
        let inner = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map_err(|_| CryptoError::InvalidVerifyingKey)?;
        if inner.is_weak() {
            return Err(CryptoError::InvalidVerifyingKey);
        }
        Ok(Self { inner })
    }

    /// Standard base64 of the 32 public-key bytes; surrounding and embedded whitespace is ignored.
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let bytes = STANDARD
            .decode(compact)
            .map_err(|_| CryptoError::VerifyingKeyBase64)?;
        let got = bytes.len();
        let bytes =
            <[u8; 32]>::try_from(bytes).map_err(|_| CryptoError::VerifyingKeyLength { got })?;
        Self::from_bytes(bytes)
    }

    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        self.inner.to_bytes()
    }

    #[must_use]
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.inner.as_bytes())
    }

    /// First 8 bytes of SHA-256 over the public key, lowercase hex (16 characters).
    #[must_use]
    pub fn key_id(&self) -> String {
        let digest = sha256(&[self.inner.as_bytes()]);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Strict verification (RFC 8032 with the checks of `verify_strict`: no small-order
    /// components, canonical `S`), so one message has one valid signature per key.
    #[must_use]
    pub fn verify(&self, msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
        self.inner
            .verify_strict(msg, &Signature::from_bytes(sig))
            .is_ok()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8410 section 10.3 (private key) and 10.1 (its public key).
    const RFC8410_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
        -----END PRIVATE KEY-----\n";
    const RFC8410_PUBLIC: &str = "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=";

    #[test]
    fn sign_verify_round_trip() {
        let key = SigningKey::generate().unwrap();
        let sig = key.sign(b"checkpoint 42");
        assert!(key.verifying_key().verify(b"checkpoint 42", &sig));
    }

    #[test]
    fn wrong_key_and_tampered_message_fail() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let sig = key.sign(b"checkpoint 42");
        assert!(!other.verifying_key().verify(b"checkpoint 42", &sig));
        assert!(!key.verifying_key().verify(b"checkpoint 43", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!key.verifying_key().verify(b"checkpoint 42", &bad));
    }

    #[test]
    fn key_id_is_stable_16_hex_and_shared_by_both_halves() {
        let key = SigningKey::from_pem_or_raw(&[7u8; 32]).unwrap();
        let id = key.key_id();
        assert_eq!(id.len(), 16);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(id, key.verifying_key().key_id());
        assert_eq!(
            id,
            SigningKey::from_pem_or_raw(&[7u8; 32]).unwrap().key_id()
        );
        let digest = sha256(&[&key.verifying_key().to_bytes()]);
        let expected: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id, expected);
        assert_ne!(id, SigningKey::generate().unwrap().key_id());
    }

    #[test]
    fn base64_round_trips_for_both_keys() {
        let key = SigningKey::generate().unwrap();
        let text = key.to_base64();
        let again =
            SigningKey::from_pem_or_raw(format!("  {}\n", text.as_str()).as_bytes()).unwrap();
        assert_eq!(again.verifying_key(), key.verifying_key());
        let public = key.verifying_key().to_base64();
        assert_eq!(
            VerifyingKey::from_base64(&public).unwrap(),
            key.verifying_key()
        );
        assert_eq!(
            VerifyingKey::from_bytes(key.verifying_key().to_bytes()).unwrap(),
            key.verifying_key()
        );
    }

    #[test]
    fn accepts_raw_and_pkcs8_pem() {
        let seed = [42u8; 32];
        let raw = SigningKey::from_pem_or_raw(&seed).unwrap();
        let b64 = SigningKey::from_pem_or_raw(STANDARD.encode(seed).as_bytes()).unwrap();
        assert_eq!(raw.verifying_key(), b64.verifying_key());

        let pem = SigningKey::from_pem_or_raw(RFC8410_PEM.as_bytes()).unwrap();
        assert_eq!(pem.verifying_key().to_base64(), RFC8410_PUBLIC);
    }

    #[test]
    fn rejects_bad_key_files_with_lengths_only() {
        let err = SigningKey::from_pem_or_raw(&[1u8; 31]).unwrap_err();
        assert_eq!(err, CryptoError::SigningKeyLength { got: 31 });
        assert!(err.to_string().contains("got 31 bytes"), "{err}");
        let err = SigningKey::from_pem_or_raw(STANDARD.encode([1u8; 16]).as_bytes()).unwrap_err();
        assert_eq!(err, CryptoError::SigningKeyLength { got: 16 });
        let err =
            SigningKey::from_pem_or_raw(b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n").unwrap_err();
        assert_eq!(err, CryptoError::UnsupportedPem);
        let err = SigningKey::from_pem_or_raw(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert_eq!(err, CryptoError::InvalidPem);
        assert_eq!(
            VerifyingKey::from_base64("AAAA").unwrap_err(),
            CryptoError::VerifyingKeyLength { got: 3 }
        );
        assert_eq!(
            VerifyingKey::from_base64("not base64!").unwrap_err(),
            CryptoError::VerifyingKeyBase64
        );
        // The identity point is a small-order (weak) key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            VerifyingKey::from_bytes(identity).unwrap_err(),
            CryptoError::InvalidVerifyingKey
        );
    }

    #[test]
    fn debug_shows_only_the_key_id() {
        let key = SigningKey::from_pem_or_raw(&[9u8; 32]).unwrap();
        let shown = format!("{key:?} {:?}", key.verifying_key());
        assert!(shown.contains(&key.key_id()), "{shown}");
        let secret_b64 = key.to_base64();
        assert!(!shown.contains(secret_b64.as_str()));
        assert!(!shown.contains("[9, 9"));
        assert!(!shown.contains("0909"));
        assert!(!shown.contains(&key.verifying_key().to_base64()));
    }
}
