//! The keys a verifier trusts, built from a JWKS document (RFC 7517 section 5): a SMART client's
//! registered key set, a trusted external issuer's published keys, or Haven's own.
//!
//! Each key is bound to exactly one algorithm when the set is built (its `alg` member, or the one
//! its type implies), so a token can never choose how its signature is checked. Entries Haven
//! cannot use for signatures (another `use`, `key_ops` without `verify`, a curve or algorithm it
//! does not support) are skipped; entries that claim to be usable but are broken or weak are an
//! error, so a client registering a bad key set hears about it at once rather than at its first
//! failed login.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::{Map, Value};

use super::parse_alg;
use crate::CryptoError;

/// At most this many entries in one JWKS document.
const MAX_KEYS: usize = 64;
/// At most this many characters in a `kid`.
const MAX_KID_LEN: usize = 256;
const MIN_RSA_BITS: usize = 2048;
/// aws-lc-rs verifies RSA signatures for moduli of 2048 to 8192 bits only.
const MAX_RSA_BITS: usize = 8192;
/// JWK members that only a private (or symmetric) key has (RFC 7518 section 6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A set of public keys trusted to verify JWTs, each bound to one algorithm.
#[derive(Clone)]
pub struct VerificationKeys {
    keys: Vec<TrustedKey>,
}

#[derive(Clone)]
pub(super) struct TrustedKey {
    pub(super) kid: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
}

impl VerificationKeys {
    /// Builds the set from a JWKS document (`{"keys":[...]}`).
    ///
    /// Supported: `OKP`/`Ed25519` (`EdDSA`), `EC` `P-256` (`ES256`) and `P-384` (`ES384`), and
    /// `RSA` of 2048 to 8192 bits (`RS256`/`RS384`/`RS512`/`PS256`/`PS384`/`PS512`). A key's
    /// algorithm is its `alg` member when present, else `EdDSA`, `ES256`, `ES384` or `RS256` by
    /// type. A key without `kid` is allowed only when it is the set's single usable key, and two
    /// keys may not share a `kid`. A key that carries private members (`d`, `p`, `k`, ...) is
    /// refused: the owner has published its secret. The set must end up with at least one key.
    pub fn from_jwks(jwks: &Value) -> Result<Self, CryptoError> {
        let entries = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(CryptoError::Jwks("it is not an object with a `keys` array"))?;
        if entries.len() > MAX_KEYS {
            return Err(CryptoError::Jwks("it holds more than 64 keys"));
        }
        let mut keys: Vec<TrustedKey> = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let Some(key) = parse_jwk(index, entry)? else {
                continue;
            };
            if key.kid.is_some() && keys.iter().any(|k| k.kid == key.kid) {
                return Err(CryptoError::Jwks("two keys share a `kid`"));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(CryptoError::Jwks("it holds no usable signature key"));
        }
        if keys.len() > 1 && keys.iter().any(|k| k.kid.is_none()) {
            return Err(CryptoError::Jwks(
                "a key without `kid` is only allowed when it is the only key",
            ));
        }
        Ok(Self { keys })
    }

    /// Number of usable keys.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false for a built set; present for the `len` convention.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `kid` of each usable key, in document order (`None` for a single kid-less key).
    #[must_use]
    pub fn kids(&self) -> Vec<Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref()).collect()
    }

    /// The key a token names. A token with a `kid` gets the key with exactly that `kid` (byte for
    /// byte, no normalisation, no lookup anywhere else); a token without one gets the set's key
    /// only when the set has exactly one.
    pub(super) fn select(&self, kid: Option<&str>) -> Option<&TrustedKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

impl fmt::Debug for VerificationKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (k.kid.as_deref(), k.alg)))
            .finish()
    }
}

fn bad(index: usize, reason: &'static str) -> CryptoError {
    CryptoError::Jwk { index, reason }
}

/// `Ok(None)` for an entry to skip, `Err` for an entry that should be usable but is not.
fn parse_jwk(index: usize, entry: &Value) -> Result<Option<TrustedKey>, CryptoError> {
    let jwk = entry
        .as_object()
        .ok_or_else(|| bad(index, "not a JSON object"))?;
    match optional_str(jwk, "use").map_err(|r| bad(index, r))? {
        Some("sig") | None => {}
        Some(_) => return Ok(None),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops
            .as_array()
            .ok_or_else(|| bad(index, "`key_ops` is not an array"))?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(bad(index, "it contains private key material"));
    }
    let kid = match optional_str(jwk, "kid").map_err(|r| bad(index, r))? {
        Some(kid) if kid.is_empty() || kid.len() > MAX_KID_LEN => {
            return Err(bad(index, "`kid` is empty or longer than 256 characters"));
        }
        kid => kid.map(str::to_owned),
    };
    let alg = match optional_str(jwk, "alg").map_err(|r| bad(index, r))? {
        // An algorithm we do not verify (HS256, RSA-OAEP, ES512, ...): not a key for us.
        Some(name) => match parse_alg(name) {
            Some(alg) => Some(alg),
            None => return Ok(None),
        },
        None => None,
    };
    let kty = optional_str(jwk, "kty")
        .map_err(|r| bad(index, r))?
        .ok_or_else(|| bad(index, "`kty` is missing"))?;
    let parsed = match kty {
        "OKP" => okp_key(index, jwk)?,
        "EC" => ec_key(index, jwk)?,
        "RSA" => Some(rsa_key(index, jwk)?),
        _ => None,
    };
    let Some((default_alg, key)) = parsed else {
        return Ok(None);
    };
    let alg = match alg {
        None => default_alg,
        Some(alg) if compatible(alg, default_alg) => alg,
        Some(_) => return Err(bad(index, "`alg` does not fit the key type or curve")),
    };
    Ok(Some(TrustedKey { kid, alg, key }))
}

/// Whether a key whose type implies `default` may be used with `alg`: the RSA family shares
/// keys between its six algorithms; EdDSA and each ECDSA curve have exactly one.
fn compatible(alg: Algorithm, default: Algorithm) -> bool {
    alg == default
        || (alg.family() == AlgorithmFamily::Rsa && default.family() == AlgorithmFamily::Rsa)
}

fn optional_str<'a>(
    jwk: &'a Map<String, Value>,
    member: &'static str,
) -> Result<Option<&'a str>, &'static str> {
    match jwk.get(member) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(match member {
            "use" => "`use` is not a string",
            "kid" => "`kid` is not a string",
            "alg" => "`alg` is not a string",
            "kty" => "`kty` is not a string",
            "crv" => "`crv` is not a string",
            _ => "a member is not a string",
        }),
    }
}

/// A base64url (no padding) member: its text and its bytes.
fn component<'a>(
    index: usize,
    jwk: &'a Map<String, Value>,
    member: &'static str,
) -> Result<(&'a str, Vec<u8>), CryptoError> {
    let text = optional_str(jwk, member)
        .map_err(|r| bad(index, r))?
        .ok_or_else(|| bad(index, "a required key component is missing"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad(index, "a key component is not base64url without padding"))?;
    Ok((text, bytes))
}

fn decoding_key_error(index: usize) -> impl FnOnce(jsonwebtoken::errors::Error) -> CryptoError {
    move |_| bad(index, "a key component is not base64url without padding")
}

fn okp_key(
    index: usize,
    jwk: &Map<String, Value>,
) -> Result<Option<(Algorithm, DecodingKey)>, CryptoError> {
    // Ed448 and the X25519/X448 key-agreement curves are not signature keys we support.
    if optional_str(jwk, "crv").map_err(|r| bad(index, r))? != Some("Ed25519") {
        return Ok(None);
    }
    let (x_text, x) = component(index, jwk, "x")?;
    let x: [u8; 32] = x
        .try_into()
        .map_err(|_| bad(index, "an Ed25519 `x` must be 32 bytes"))?;
    // A point off the curve or of small order would accept forged signatures on some messages.
    match ed25519_dalek::VerifyingKey::from_bytes(&x) {
        Ok(point) if !point.is_weak() => {}
        _ => return Err(bad(index, "`x` is not a usable Ed25519 public key")),
    }
    let key = DecodingKey::from_ed_components(x_text).map_err(decoding_key_error(index))?;
    Ok(Some((Algorithm::EdDSA, key)))
}

fn ec_key(
    index: usize,
    jwk: &Map<String, Value>,
) -> Result<Option<(Algorithm, DecodingKey)>, CryptoError> {
    let (alg, len) = match optional_str(jwk, "crv").map_err(|r| bad(index, r))? {
        Some("P-256") => (Algorithm::ES256, 32),
        Some("P-384") => (Algorithm::ES384, 48),
        // P-521 (ES512) and secp256k1 (ES256K) are not supported by our verifier.
        _ => return Ok(None),
    };
    let (x_text, x) = component(index, jwk, "x")?;
    let (y_text, y) = component(index, jwk, "y")?;
    if x.len() != len || y.len() != len {
        return Err(bad(index, "EC coordinates do not have the curve's length"));
    }
    // Whether the point is on the curve is checked by aws-lc-rs when it parses the key at
    // verification: a point that is not never verifies anything.
    let key = DecodingKey::from_ec_components(x_text, y_text).map_err(decoding_key_error(index))?;
    Ok(Some((alg, key)))
}

fn rsa_key(
    index: usize,
    jwk: &Map<String, Value>,
) -> Result<(Algorithm, DecodingKey), CryptoError> {
    let (_, n) = component(index, jwk, "n")?;
    let (_, e) = component(index, jwk, "e")?;
    // Leading zero octets are not allowed by RFC 7518 section 6.3.1.1 but are common; they would
    // also inflate the length check, so they are dropped before measuring and before handing the
    // bytes to `from_rsa_raw_components` (the decoded form of `from_rsa_components`).
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    let bits = bit_length(n);
    if bits < MIN_RSA_BITS {
        return Err(CryptoError::WeakRsaKey { index, bits });
    }
    if bits > MAX_RSA_BITS {
        return Err(bad(index, "RSA modulus is longer than 8192 bits"));
    }
    // aws-lc-rs accepts odd exponents from 3 up to 33 bits.
    let exponent = if e.len() <= 8 {
        e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        0
    };
    if exponent < 3 || exponent % 2 == 0 || exponent >= 1 << 33 {
        return Err(bad(
            index,
            "RSA public exponent is not an odd number from 3 to 2^33",
        ));
    }
    Ok((Algorithm::RS256, DecodingKey::from_rsa_raw_components(n, e)))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn bit_length(unsigned_be: &[u8]) -> usize {
    match unsigned_be.first() {
        None => 0,
        Some(&top) => unsigned_be.len() * 8 - top.leading_zeros() as usize,
    }
}
