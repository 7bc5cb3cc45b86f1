//! Envelope encryption: AES-256-GCM keys that seal stored bodies (data keys, DEKs) and the keys
//! that wrap them (key-encryption keys, KEKs), and the keyed hash that pseudonymises searchable
//! identifiers.
//!
//! One type, [`AeadKey`], serves both levels: a DEK seals resource bodies, a KEK version seals
//! ("wraps") the 32 bytes of DEKs. Every seal draws a fresh 96-bit nonce from the operating
//! system; a DEK belongs to one patient (or one resource type), so no key comes anywhere near
//! the 2^32 random-nonce limit NIST SP 800-38D sets for GCM.
//!
//! The associated data is the caller's: Haven binds a body to its resource type, id, version and
//! key id, and a wrapped DEK to the scope it belongs to, so a ciphertext copied into another row
//! does not open.
//!
//! Key bytes are zeroized on drop (`Zeroizing`; aws-lc clears its own key schedule when the
//! `LessSafeKey` is dropped), `Debug` prints `[redacted]`, and no error names a byte of a key
//! or of the data.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hmac;
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::random::try_fill;

/// Length of an AES-256 key in bytes.
pub const KEY_LEN: usize = 32;
/// Bytes a seal adds to its plaintext: the nonce in front, the GCM tag behind.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

/// An AES-256-GCM key (a DEK or one KEK version).
pub struct AeadKey {
    raw: Zeroizing<[u8; KEY_LEN]>,
    key: LessSafeKey,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey([redacted])")
    }
}

impl AeadKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        try_fill(raw.as_mut())?;
        Self::from_array(raw)
    }

    /// A key from exactly 32 bytes (a keyring entry, a key a KMS generated or unwrapped).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::AeadKeyLength { got: bytes.len() })?;
        Self::from_array(Zeroizing::new(arr))
    }

    fn from_array(raw: Zeroizing<[u8; KEY_LEN]>) -> Result<Self, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, raw.as_ref())
            .map_err(|_| CryptoError::AeadKeyLength { got: KEY_LEN })?;
        Ok(Self {
            raw,
            key: LessSafeKey::new(unbound),
        })
    }

    /// The key's bytes, for handing to a key service that wraps it (Vault Transit). Callers
    /// must not log, store or keep them.
    #[must_use]
    pub fn secret_bytes(&self) -> &[u8] {
        self.raw.as_ref()
    }

    /// Seals `plaintext` bound to `aad`: `nonce || ciphertext || tag`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        try_fill(&mut nonce)?;
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(NONCE_LEN);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| CryptoError::Sealing)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens what [`AeadKey::seal`] made with the same `aad`. Fails when the key is another,
    /// or a byte of the data or of its context differs.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::Opening);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Opening)?;
        let mut buf = rest.to_vec();
        let n = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| CryptoError::Opening)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    /// Wraps another key (a DEK under this KEK), bound to `aad`.
    pub fn wrap(&self, aad: &[u8], key: &AeadKey) -> Result<Vec<u8>, CryptoError> {
        self.seal(aad, key.raw.as_ref())
    }

    /// Unwraps what [`AeadKey::wrap`] made.
    pub fn unwrap_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<AeadKey, CryptoError> {
        let bytes = Zeroizing::new(self.open(aad, wrapped)?);
        AeadKey::from_bytes(&bytes)
    }
}

/// HMAC-SHA256 under a secret key: pseudonyms for identifier values (national ids, MRNs) that
/// stay searchable by exact match only, and pseudonymous names in audit records of erasures.
pub struct MacKey {
    key: hmac::Key,
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey([redacted])")
    }
}

impl MacKey {
    /// A MAC key from a 32-byte secret (in Haven, a data key kept wrapped like the others).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::AeadKeyLength { got: bytes.len() });
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// The MAC of `parts`, each length-prefixed so that ("ab", "c") and ("a", "bc") differ.
    #[must_use]
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        for p in parts {
            ctx.update(&(p.len() as u64).to_be_bytes());
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_with_fresh_nonces() {
        let k = AeadKey::generate().unwrap();
        let a = k
            .seal(b"Patient/1/1", b"{\"resourceType\":\"Patient\"}")
            .unwrap();
        let b = k
            .seal(b"Patient/1/1", b"{\"resourceType\":\"Patient\"}")
            .unwrap();
        assert_ne!(a, b, "two seals of one plaintext must differ (fresh nonce)");
        assert_eq!(a.len(), 26 + SEAL_OVERHEAD);
        assert_eq!(
            k.open(b"Patient/1/1", &a).unwrap(),
            b"{\"resourceType\":\"Patient\"}"
        );
    }

    #[test]
    fn wrong_context_key_or_byte_does_not_open() {
        let k = AeadKey::generate().unwrap();
        let other = AeadKey::generate().unwrap();
        let s = k.seal(b"Patient/1/1", b"secret").unwrap();
        assert_eq!(k.open(b"Patient/2/1", &s), Err(CryptoError::Opening));
        assert_eq!(other.open(b"Patient/1/1", &s), Err(CryptoError::Opening));
        for i in 0..s.len() {
            let mut t = s.clone();
            t[i] ^= 1;
            assert_eq!(
                k.open(b"Patient/1/1", &t),
                Err(CryptoError::Opening),
                "byte {i}"
            );
        }
        assert_eq!(k.open(b"", &s[..10]), Err(CryptoError::Opening));
    }

    #[test]
    fn wrapped_keys_are_bound_to_their_scope() {
        let kek = AeadKey::generate().unwrap();
        let dek = AeadKey::generate().unwrap();
        let w = kek.wrap(b"Patient/7", &dek).unwrap();
        let back = kek.unwrap_key(b"Patient/7", &w).unwrap();
        assert_eq!(back.secret_bytes(), dek.secret_bytes());
        assert!(kek.unwrap_key(b"Patient/8", &w).is_err());
        assert_eq!(format!("{dek:?}"), "AeadKey([redacted])");
    }

    #[test]
    fn key_length_is_checked() {
        assert_eq!(
            AeadKey::from_bytes(&[0u8; 16]).unwrap_err(),
            CryptoError::AeadKeyLength { got: 16 }
        );
        assert!(MacKey::from_bytes(&[1u8; 31]).is_err());
    }

    #[test]
    fn macs_are_keyed_and_unambiguous() {
        let a = MacKey::from_bytes(&[1u8; 32]).unwrap();
        let b = MacKey::from_bytes(&[2u8; 32]).unwrap();
        assert_eq!(a.mac(&[b"x", b"y"]), a.mac(&[b"x", b"y"]));
        assert_ne!(a.mac(&[b"x", b"y"]), b.mac(&[b"x", b"y"]));
        assert_ne!(a.mac(&[b"ab", b"c"]), a.mac(&[b"a", b"bc"]));
    }
}
