//! Haven's own token signing key: Ed25519 (`EdDSA`, RFC 8037), named by a `kid` that is
//! published in the JWKS and written in every token header, so verifiers can pick it out of a set
//! that also holds the keys it replaced.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::random::try_fill;

/// The fixed DER prefix of an RFC 8410 section 7 (PKCS#8 v1) Ed25519 private key:
/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32) } }`;
/// the 32-byte seed follows.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 key that signs Haven's JWTs. The secret lives in zeroize-on-drop types, the value is
/// not `Clone`, and `Debug` prints only the `kid`.
pub struct TokenSigningKey {
    kid: String,
    inner: ed25519_dalek::SigningKey,
    /// The same key as `jsonwebtoken` wants it (PKCS#8 DER); wiped on drop by `jsonwebtoken`.
    encoding: EncodingKey,
}

impl TokenSigningKey {
    /// A fresh key named `kid` (1 to 64 characters of `A-Z a-z 0-9 . _ -`).
    pub fn generate(kid: impl Into<String>) -> Result<Self, CryptoError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        try_fill(seed.as_mut_slice())?;
        Self::from_seed(kid.into(), &seed)
    }

    /// A key from its PKCS#8 DER encoding (v1 as written by [`Self::to_pkcs8_der`] and
    /// `openssl genpkey -algorithm ed25519`, or v2 with the public key).
    pub fn from_pkcs8_der(kid: impl Into<String>, der: &[u8]) -> Result<Self, CryptoError> {
        let inner = ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|_| CryptoError::InvalidPkcs8)?;
        let seed = Zeroizing::new(inner.to_bytes());
        Self::from_seed(kid.into(), &seed)
    }

    fn from_seed(kid: String, seed: &[u8; 32]) -> Result<Self, CryptoError> {
        if !valid_kid(&kid) {
            return Err(CryptoError::InvalidKeyId);
        }
        let inner = ed25519_dalek::SigningKey::from_bytes(seed);
        let encoding = EncodingKey::from_ed_der(&pkcs8_v1(seed));
        Ok(Self {
            kid,
            inner,
            encoding,
        })
    }

    /// The key's PKCS#8 v1 DER encoding (48 bytes), for sealing and storing. Wiped when dropped.
    #[must_use]
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        let seed = Zeroizing::new(self.inner.to_bytes());
        pkcs8_v1(&seed)
    }

    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK (RFC 8037 section 2), for the JWKS document:
    /// `{"kty":"OKP","crv":"Ed25519","x":...,"kid":...,"alg":"EdDSA","use":"sig"}`.
    #[must_use]
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.inner.verifying_key().as_bytes()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// Signs `claims` (a JSON object) with header `{"typ":"JWT","alg":"EdDSA","kid":...}`.
    pub fn sign(&self, claims: &Value) -> Result<String, CryptoError> {
        self.sign_typed("JWT", claims)
    }

    /// Signs with an explicit `typ` header, such as `at+jwt` for access tokens (RFC 9068), so a
    /// token of one kind cannot be passed off as another (RFC 8725 section 3.11).
    pub fn sign_typed(&self, typ: &str, claims: &Value) -> Result<String, CryptoError> {
        if typ.is_empty() || typ.len() > 64 || !typ.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CryptoError::InvalidTokenType);
        }
        if !claims.is_object() {
            return Err(CryptoError::ClaimsNotObject);
        }
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        super::ensure_provider();
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|_| CryptoError::TokenSigning)
    }
}

impl fmt::Debug for TokenSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn pkcs8_v1(seed: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut der = Zeroizing::new(Vec::with_capacity(PKCS8_V1_PREFIX.len() + seed.len()));
    der.extend_from_slice(&PKCS8_V1_PREFIX);
    der.extend_from_slice(seed);
    der
}

/// Key ids Haven mints: short, and safe in URLs, headers, file names and log lines as they are.
fn valid_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8410 section 10.3: a PKCS#8 v1 Ed25519 key, and its public key (base64url).
    const RFC8410_DER_B64: &str =
        "MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC";
    const RFC8410_X: &str = "Gb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE";

    fn rfc_der() -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(RFC8410_DER_B64)
            .unwrap()
    }

    #[test]
    fn pkcs8_round_trip_matches_rfc8410() {
        let key = TokenSigningKey::from_pkcs8_der("k1", &rfc_der()).unwrap();
        assert_eq!(key.public_jwk()["x"], RFC8410_X);
        // Our v1 encoding is byte-for-byte the RFC's.
        assert_eq!(key.to_pkcs8_der().as_slice(), rfc_der().as_slice());
        let again = TokenSigningKey::from_pkcs8_der("k1", &key.to_pkcs8_der()).unwrap();
        assert_eq!(again.public_jwk(), key.public_jwk());

        let fresh = TokenSigningKey::generate("k2").unwrap();
        let der = fresh.to_pkcs8_der();
        assert_eq!(der.len(), 48);
        let again = TokenSigningKey::from_pkcs8_der("k2", &der).unwrap();
        assert_eq!(again.public_jwk(), fresh.public_jwk());
        assert_ne!(
            fresh.public_jwk(),
            TokenSigningKey::generate("k2").unwrap().public_jwk()
        );
    }

    #[test]
    fn accepts_pkcs8_v2_from_dalek() {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let dalek = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
        let v2 = dalek.to_pkcs8_der().unwrap();
        let key = TokenSigningKey::from_pkcs8_der("v2", v2.as_bytes()).unwrap();
        assert_eq!(
            key.public_jwk()["x"],
            URL_SAFE_NO_PAD.encode(dalek.verifying_key().as_bytes())
        );
        assert!(key.sign(&json!({"sub": "x"})).is_ok());
    }

    #[test]
    fn rejects_bad_der_and_bad_kids() {
        assert_eq!(
            TokenSigningKey::from_pkcs8_der("k", &[0u8; 48]).unwrap_err(),
            CryptoError::InvalidPkcs8
        );
        assert_eq!(
            TokenSigningKey::from_pkcs8_der("k", &[]).unwrap_err(),
            CryptoError::InvalidPkcs8
        );
        let long = "a".repeat(65);
        for kid in ["", "has space", "../etc", "ké", "a/b", long.as_str()] {
            assert_eq!(
                TokenSigningKey::generate(kid).unwrap_err(),
                CryptoError::InvalidKeyId,
                "{kid:?}"
            );
        }
        assert!(TokenSigningKey::generate("2025-01.key_A").is_ok());
        assert!(TokenSigningKey::generate("a".repeat(64)).is_ok());
    }

    #[test]
    fn public_jwk_has_exactly_the_public_members() {
        let key = TokenSigningKey::from_pkcs8_der("main-1", &rfc_der()).unwrap();
        assert_eq!(
            key.public_jwk(),
            json!({"kty":"OKP","crv":"Ed25519","x":RFC8410_X,"kid":"main-1","alg":"EdDSA","use":"sig"})
        );
        assert!(key.public_jwk().get("d").is_none());
    }

    #[test]
    fn header_carries_alg_typ_and_kid() {
        let key = TokenSigningKey::generate("main-1").unwrap();
        let header_of = |token: &str| -> Value {
            let first = token.split('.').next().unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(first).unwrap()).unwrap()
        };
        let token = key
            .sign(&json!({"sub": "u1", "exp": 2_000_000_000u64}))
            .unwrap();
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(
            header_of(&token),
            json!({"typ":"JWT","alg":"EdDSA","kid":"main-1"})
        );
        let token = key.sign_typed("at+jwt", &json!({"sub": "u1"})).unwrap();
        assert_eq!(
            header_of(&token),
            json!({"typ":"at+jwt","alg":"EdDSA","kid":"main-1"})
        );
    }

    #[test]
    fn refuses_non_object_claims_and_bad_typ() {
        let key = TokenSigningKey::generate("k").unwrap();
        for claims in [json!([1, 2]), json!("sub"), json!(null), json!(5)] {
            assert_eq!(key.sign(&claims).unwrap_err(), CryptoError::ClaimsNotObject);
        }
        for typ in ["", "a b", "é", &"t".repeat(65)] {
            assert_eq!(
                key.sign_typed(typ, &json!({})).unwrap_err(),
                CryptoError::InvalidTokenType
            );
        }
    }

    #[test]
    fn debug_shows_only_the_kid() {
        let key = TokenSigningKey::from_pkcs8_der("main-1", &rfc_der()).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("main-1"), "{shown}");
        assert!(!shown.contains("MC4CAQ"), "{shown}");
        assert!(!shown.contains(RFC8410_X), "{shown}");
        assert!(!shown.contains("212, 238"), "{shown}"); // 0xd4, 0xee: the seed's first bytes
    }
}
