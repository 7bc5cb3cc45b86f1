//! The verifier's rules, one test per rule, with tokens from Haven's own key, from "other
//! parties" (SMART clients with EC and RSA keys) and from attackers. Other parties sign with
//! `jsonwebtoken` directly or, for headers `jsonwebtoken` would not write, by hand.
//!
//! This file holds the fixtures and the tokens that must pass; `header` covers size, shape,
//! algorithm and key selection, `claims` the time, issuer, audience and type rules, `jwks` how a
//! key set is built.

mod claims;
mod header;
mod jwks;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::CryptoError;

const NOW: u64 = 1_700_000_000;
const ISS: &str = "https://haven.example/auth";
const AUD: &str = "https://haven.example/fhir";

const ES256_A: &str = include_str!("../test_keys/es256_a.pem");
const ES256_B: &str = include_str!("../test_keys/es256_b.pem");
const ES384: &str = include_str!("../test_keys/es384.pem");
const RSA2048: &str = include_str!("../test_keys/rsa2048.pem");

fn ours() -> TokenSigningKey {
    TokenSigningKey::from_pkcs8_der("haven-1", &seeded_der(1)).unwrap()
}

/// PKCS#8 v1 DER of an Ed25519 key with a fixed seed, so tests are reproducible.
fn seeded_der(seed: u8) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&[seed; 32]);
    der
}

fn jwks(keys: &[Value]) -> VerificationKeys {
    VerificationKeys::from_jwks(&json!({ "keys": keys })).unwrap()
}

fn our_keys() -> VerificationKeys {
    jwks(&[ours().public_jwk()])
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "user-1", "iat": NOW, "exp": NOW + 300})
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn rules() -> JwtRules<'static> {
    JwtRules {
        issuers: vec![ISS.to_owned()],
        audience: Some(AUD.to_owned()),
        leeway_secs: 30,
        now_unix: NOW,
        max_len: DEFAULT_MAX_JWT_LEN,
        required: &["exp", "iat"],
        typ: None,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with exactly this header and these claims, signed with EdDSA by the Ed25519 key in
/// `der` (whatever the header says).
fn sign_raw_ed(der: &[u8], header: &Value, claims: &Value) -> String {
    let key = ed25519_dalek::SigningKey::from_pkcs8_der(der).unwrap();
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&signature.to_bytes()))
}

/// A token signed by `jsonwebtoken` with `alg`, `kid`, and the key in `key`.
fn sign_with(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// The public JWK of a PEM private key, as a client would register it (without `alg`).
fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg).unwrap();
    let mut value = serde_json::to_value(jwk).unwrap();
    value["kid"] = json!(kid);
    value.as_object_mut().unwrap().remove("alg");
    value
}

fn ec(pem: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA2048.as_bytes()).unwrap()
}

/// Verifies, expecting a refusal, and checks that the error text quotes no part of the token.
fn refused(token: &str, keys: &VerificationKeys, rules: &JwtRules<'_>) -> JwtError {
    let err = verify_jwt(token, keys, rules).expect_err("the token should be refused");
    let text = err.to_string();
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(!text.contains(part), "{text}");
    }
    err
}

#[test]
fn our_own_token_round_trips() {
    let key = ours();
    let token = key.sign(&claims()).unwrap();
    let got = verify_jwt(&token, &our_keys(), &rules()).unwrap();
    assert_eq!(Value::Object(got), claims());

    let access = key.sign_typed("at+jwt", &claims()).unwrap();
    let typed = JwtRules {
        typ: Some("at+jwt"),
        ..rules()
    };
    assert!(verify_jwt(&access, &our_keys(), &typed).is_ok());
    assert!(verify_jwt(&access, &our_keys(), &JwtRules::new(vec![ISS.into()], NOW)).is_ok());
}

#[test]
fn rotation_old_and_new_keys_both_verify() {
    let old = ours();
    let new = TokenSigningKey::from_pkcs8_der("haven-2", &seeded_der(2)).unwrap();
    let keys = jwks(&[new.public_jwk(), old.public_jwk()]);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.kids(), vec![Some("haven-2"), Some("haven-1")]);
    for key in [&old, &new] {
        assert!(verify_jwt(&key.sign(&claims()).unwrap(), &keys, &rules()).is_ok());
    }
}

#[test]
fn smart_client_assertions_es256_es384_rs256_rs384_ps256() {
    // SMART Backend Services requires servers to support ES384 and RS384.
    let cases = [
        (ec(ES256_A), Algorithm::ES256),
        (ec(ES384), Algorithm::ES384),
        (rsa(), Algorithm::RS256),
        (rsa(), Algorithm::RS384),
        (rsa(), Algorithm::RS512),
        (rsa(), Algorithm::PS256),
        (rsa(), Algorithm::PS384),
    ];
    for (key, alg) in cases {
        let mut jwk = public_jwk(&key, alg, "client-key-1");
        jwk["alg"] = serde_json::to_value(alg).unwrap();
        let keys = jwks(&[jwk]);
        let assertion = json!({
            "iss": "client-123", "sub": "client-123", "aud": "https://haven.example/auth/token",
            "jti": "a-unique-id", "exp": NOW + 240,
        });
        let token = sign_with(&key, alg, Some("client-key-1"), &assertion);
        let client_rules = JwtRules {
            issuers: vec!["client-123".into()],
            audience: Some("https://haven.example/auth/token".into()),
            required: &["exp", "jti", "sub"],
            ..rules()
        };
        let got = verify_jwt(&token, &keys, &client_rules);
        assert!(got.is_ok(), "{alg:?}: {got:?}");
    }
}

#[test]
fn key_algorithm_defaults_by_type() {
    // Without `alg` in the JWK: EC P-256 is ES256, P-384 is ES384, RSA is RS256 only.
    let p256 = jwks(&[public_jwk(&ec(ES256_A), Algorithm::ES256, "k")]);
    let token = sign_with(&ec(ES256_A), Algorithm::ES256, Some("k"), &claims());
    assert!(verify_jwt(&token, &p256, &rules()).is_ok());

    let p384 = jwks(&[public_jwk(&ec(ES384), Algorithm::ES384, "k")]);
    let token = sign_with(&ec(ES384), Algorithm::ES384, Some("k"), &claims());
    assert!(verify_jwt(&token, &p384, &rules()).is_ok());

    let rsa_keys = jwks(&[public_jwk(&rsa(), Algorithm::RS256, "k")]);
    let token = sign_with(&rsa(), Algorithm::RS256, Some("k"), &claims());
    assert!(verify_jwt(&token, &rsa_keys, &rules()).is_ok());
    for alg in [Algorithm::RS384, Algorithm::PS256] {
        let token = sign_with(&rsa(), alg, Some("k"), &claims());
        assert_eq!(
            refused(&token, &rsa_keys, &rules()),
            JwtError::Algorithm,
            "{alg:?}"
        );
    }
}

#[test]
fn debug_of_the_key_set_names_kids_and_algorithms_only() {
    let keys = our_keys();
    let shown = format!("{keys:?}");
    assert!(
        shown.contains("haven-1") && shown.contains("EdDSA"),
        "{shown}"
    );
    assert!(
        !shown.contains(ours().public_jwk()["x"].as_str().unwrap()),
        "{shown}"
    );
}

#[test]
fn error_messages_never_quote_the_token() {
    // `refused` checks this for every refusal in these tests; here the texts themselves are
    // pinned to be short and free of anything token-shaped.
    let all = [
        JwtError::TooLong { max: 8192 },
        JwtError::Malformed("x"),
        JwtError::Algorithm,
        JwtError::CriticalHeader,
        JwtError::UnknownKey,
        JwtError::Signature,
        JwtError::Expired,
        JwtError::NotYetValid,
        JwtError::IssuedInFuture,
        JwtError::Issuer,
        JwtError::Audience,
        JwtError::MissingClaim("exp".into()),
        JwtError::InvalidClaim("exp".into()),
        JwtError::Type,
    ];
    for err in all {
        let text = err.to_string();
        assert!(!text.contains("eyJ"), "{text}");
        assert!(text.len() < 120, "{text}");
    }
}
