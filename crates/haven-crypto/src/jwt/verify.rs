//! [`verify_jwt`]: every check a token must pass, in an order where nothing the token says is
//! trusted before it has been bounded and parsed strictly, and the signature is checked with a
//! key and an algorithm chosen by Haven.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::keys::VerificationKeys;
use super::{JwtError, JwtRules, MAX_LEEWAY_SECS, parse_alg};

/// The base64url header of any token we accept is far below this; larger ones are refused before
/// decoding so a huge header cannot cost JSON parsing time.
const MAX_HEADER_B64_LEN: usize = 2048;

/// Verifies a compact JWS `token` and returns its claims.
///
/// In order, refusing at the first failure:
/// 1. longer than `rules.max_len` ([`JwtError::TooLong`]), before any decoding;
/// 2. not three non-empty base64url (no padding) parts, a header and payload that are JSON
///    objects with no duplicate member ([`JwtError::Malformed`]);
/// 3. header `alg` missing or not exactly `EdDSA`, `ES256`, `ES384`, `RS256`, `RS384`, `RS512`,
///    `PS256`, `PS384` or `PS512` ([`JwtError::Algorithm`]): `none` in any case and `HS*` never
///    pass; a `crit` header ([`JwtError::CriticalHeader`]); `typ` not the expected type
///    ([`JwtError::Type`]);
/// 4. no key in `keys` with exactly the header's `kid` ([`JwtError::UnknownKey`]), or `alg` not
///    the one that key allows ([`JwtError::Algorithm`]); `jwk`, `jku`, `x5u`, `x5c` are ignored;
/// 5. the signature ([`JwtError::Signature`]);
/// 6. claims: `exp` (required) with `now > exp + leeway` ([`JwtError::Expired`]), `nbf` or `iat`
///    later than `now + leeway` ([`JwtError::NotYetValid`], [`JwtError::IssuedInFuture`]), `iss`
///    (required) not one of `rules.issuers` ([`JwtError::Issuer`]), `aud` not containing
///    `rules.audience` when that is set ([`JwtError::Audience`]), any of `rules.required` absent
///    ([`JwtError::MissingClaim`]).
///
/// With `rules.audience` unset the `aud` claim is not looked at: a caller verifying tokens that
/// are addressed to it must set it (RFC 7519 section 4.1.3).
pub fn verify_jwt(
    token: &str,
    keys: &VerificationKeys,
    rules: &JwtRules<'_>,
) -> Result<Map<String, Value>, JwtError> {
    if token.len() > rules.max_len {
        return Err(JwtError::TooLong { max: rules.max_len });
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("a compact JWS has exactly three parts"));
    };
    if header_b64.is_empty() || payload_b64.is_empty() || signature_b64.is_empty() {
        return Err(JwtError::Malformed("a part is empty"));
    }
    if header_b64.len() > MAX_HEADER_B64_LEN {
        return Err(JwtError::Malformed("the header is too long"));
    }

    let header = decode_object(header_b64).ok_or(JwtError::Malformed(
        "the header is not a base64url JSON object with unique members",
    ))?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => parse_alg(name).ok_or(JwtError::Algorithm)?,
        _ => return Err(JwtError::Algorithm),
    };
    // RFC 7515 section 4.1.11: a recipient must refuse extensions it does not understand, and
    // Haven understands none (not even RFC 7797 `b64`).
    if header.contains_key("crit") {
        return Err(JwtError::CriticalHeader);
    }
    if header
        .get("b64")
        .is_some_and(|b64| b64 != &Value::Bool(true))
    {
        return Err(JwtError::Malformed(
            "unencoded payloads (b64) are not supported",
        ));
    }
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.as_str()),
        Some(_) => return Err(JwtError::Malformed("`typ` is not a string")),
    };
    if let Some(expected) = rules.typ
        && !typ.is_some_and(|typ| media_type_eq(typ, expected))
    {
        return Err(JwtError::Type);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.as_str()),
        Some(_) => return Err(JwtError::Malformed("`kid` is not a string")),
    };
    let key = keys.select(kid).ok_or(JwtError::UnknownKey)?;
    if key.alg != alg {
        return Err(JwtError::Algorithm);
    }

    let claims = decode_object(payload_b64).ok_or(JwtError::Malformed(
        "the payload is not a base64url JSON object with unique members",
    ))?;

    super::ensure_provider();
    if let Err(e) = jsonwebtoken::decode::<IgnoredAny>(token, &key.key, &signature_only(alg)) {
        let refusal = map_decode_error(e.kind());
        // `jsonwebtoken` checks the signature before it reads the claims, and its claim reader
        // loses its place on some shapes our parser accepted (an array where it expects a
        // number), failing the whole decode. Such a token is refused either way; naming the
        // claim at fault is more useful than "malformed".
        if matches!(refusal, JwtError::Malformed(_)) {
            check_claims(&claims, rules)?;
        }
        return Err(refusal);
    }

    check_claims(&claims, rules)?;
    Ok(claims)
}

/// A `Validation` that checks the signature with exactly `alg` and nothing else: `jsonwebtoken`
/// reads the system clock for `exp`/`nbf` and has its own `iss`/`aud` semantics (see the module
/// docs), so every claim is checked by [`check_claims`] instead.
fn signature_only(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation
}

fn map_decode_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => JwtError::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm => JwtError::Algorithm,
        _ => JwtError::Malformed("the JWS decoder refused it"),
    }
}

fn check_claims(claims: &Map<String, Value>, rules: &JwtRules<'_>) -> Result<(), JwtError> {
    let leeway = rules.leeway_secs.min(MAX_LEEWAY_SECS);
    let now = rules.now_unix;
    let audience_required = rules.audience.as_ref().map(|_| "aud");
    for name in ["exp", "iss"]
        .into_iter()
        .chain(rules.required.iter().copied())
        .chain(audience_required)
    {
        if !claims.contains_key(name) {
            return Err(JwtError::MissingClaim(name.to_owned()));
        }
    }

    // Rounding always goes against the token: a fractional `exp` down, `nbf`/`iat` up.
    let exp = claims.get("exp").and_then(|v| numeric_date(v, false));
    let exp = exp.ok_or_else(|| JwtError::InvalidClaim("exp".to_owned()))?;
    if now > exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    let latest_start = now.saturating_add(leeway);
    if let Some(nbf) = claims.get("nbf") {
        let nbf =
            numeric_date(nbf, true).ok_or_else(|| JwtError::InvalidClaim("nbf".to_owned()))?;
        if nbf > latest_start {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = claims.get("iat") {
        let iat =
            numeric_date(iat, true).ok_or_else(|| JwtError::InvalidClaim("iat".to_owned()))?;
        if iat > latest_start {
            return Err(JwtError::IssuedInFuture);
        }
    }

    match claims.get("iss") {
        Some(Value::String(iss)) if rules.issuers.iter().any(|trusted| trusted == iss) => {}
        Some(Value::String(_)) => return Err(JwtError::Issuer),
        _ => return Err(JwtError::InvalidClaim("iss".to_owned())),
    }

    if let Some(expected) = &rules.audience {
        let matches = match claims.get("aud") {
            Some(Value::String(aud)) => aud == expected,
            Some(Value::Array(items)) => {
                let mut found = false;
                for item in items {
                    match item {
                        Value::String(aud) => found |= aud == expected,
                        _ => return Err(JwtError::InvalidClaim("aud".to_owned())),
                    }
                }
                found
            }
            _ => return Err(JwtError::InvalidClaim("aud".to_owned())),
        };
        if !matches {
            return Err(JwtError::Audience);
        }
    }
    Ok(())
}

/// A NumericDate (RFC 7519 section 2): a non-negative JSON number of seconds, possibly
/// fractional, rounded up or down to whole seconds. Strings, negatives, and values past `u64`
/// are `None`.
fn numeric_date(value: &Value, round_up: bool) -> Option<u64> {
    if let Some(secs) = value.as_u64() {
        return Some(secs);
    }
    if !value.is_number() {
        return None;
    }
    let secs = value.as_f64()?;
    // Up to 2^64 (exclusive): anything at or above it does not fit. NaN is in no range.
    if !(0.0..18_446_744_073_709_551_616.0).contains(&secs) {
        return None;
    }
    let whole = if round_up { secs.ceil() } else { secs.floor() };
    // In range by the check above; `as` saturates at u64::MAX for the one value ceil can reach.
    Some(whole as u64)
}

/// Media-type comparison for `typ` (RFC 7515 section 4.1.9): case-insensitive, with the
/// `application/` prefix optional on either side.
fn media_type_eq(actual: &str, expected: &str) -> bool {
    fn short(t: &str) -> &str {
        match t.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &t[12..],
            _ => t,
        }
    }
    short(actual).eq_ignore_ascii_case(short(expected))
}

/// Base64url (no padding) JSON object whose members are all distinct: with duplicates, two
/// parsers could disagree on which `alg`, `kid` or `exp` counts (RFC 7515 section 5.2 allows
/// refusing them).
fn decode_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice::<UniqueObject>(&bytes)
        .ok()
        .map(|object| object.0)
}

struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object with unique member names")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
                let mut object = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    let value: Value = access.next_value()?;
                    if object.insert(name, value).is_some() {
                        return Err(de::Error::custom("duplicate member"));
                    }
                }
                Ok(UniqueObject(object))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(value: &str) -> String {
        URL_SAFE_NO_PAD.encode(value)
    }

    #[test]
    fn objects_must_be_unique_objects() {
        assert!(decode_object(&b64(r#"{"a":1,"b":{"a":2}}"#)).is_some());
        assert!(decode_object(&b64(r#"{"a":1,"a":1}"#)).is_none());
        assert!(decode_object(&b64(r#"{"alg":"EdDSA","alg":"none"}"#)).is_none());
        assert!(decode_object(&b64("[1]")).is_none());
        assert!(decode_object(&b64("1")).is_none());
        assert!(decode_object(&b64(r#"{"a":1} x"#)).is_none());
        assert!(decode_object(&b64("")).is_none());
        assert!(decode_object("e30=").is_none(), "padding is refused");
        assert!(decode_object("e30").is_some());
        assert!(decode_object("e3+").is_none());
    }

    #[test]
    fn numeric_dates() {
        assert_eq!(numeric_date(&json!(5), false), Some(5));
        assert_eq!(numeric_date(&json!(5.5), false), Some(5));
        assert_eq!(numeric_date(&json!(5.5), true), Some(6));
        assert_eq!(numeric_date(&json!(u64::MAX), false), Some(u64::MAX));
        let parsed: Value = serde_json::from_str("1e3").unwrap();
        assert_eq!(numeric_date(&parsed, false), Some(1000));
        let huge: Value = serde_json::from_str("1e400").unwrap_or(json!(null));
        assert_eq!(numeric_date(&huge, false), None);
        assert_eq!(numeric_date(&json!(-1), false), None);
        assert_eq!(numeric_date(&json!(-0.5), true), None);
        assert_eq!(numeric_date(&json!("5"), false), None);
        assert_eq!(numeric_date(&json!(null), false), None);
        assert_eq!(numeric_date(&json!(true), false), None);
        assert_eq!(numeric_date(&json!([5]), false), None);
    }

    #[test]
    fn media_types() {
        assert!(media_type_eq("at+jwt", "at+jwt"));
        assert!(media_type_eq("application/at+jwt", "at+jwt"));
        assert!(media_type_eq("AT+JWT", "application/at+JWT"));
        assert!(media_type_eq("JWT", "jwt"));
        assert!(!media_type_eq("jwt", "at+jwt"));
        assert!(!media_type_eq("application/", "at+jwt"));
        assert!(!media_type_eq("text/at+jwt", "at+jwt"));
        assert!(!media_type_eq("é", "at+jwt"));
    }
}
