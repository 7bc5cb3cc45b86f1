//! Building a key set from a JWKS document: what is skipped, what is an error.

use super::*;

#[test]
fn jwks_entries_for_other_uses_are_skipped() {
    let mut enc = public_jwk(&rsa(), Algorithm::RS256, "enc-1");
    enc["use"] = json!("enc");
    let mut oaep = public_jwk(&rsa(), Algorithm::RS256, "oaep-1");
    oaep["alg"] = json!("RSA-OAEP");
    let mut hs = public_jwk(&rsa(), Algorithm::RS256, "hs-1");
    hs["alg"] = json!("HS256");
    let mut wrap_only = public_jwk(&ec(ES256_A), Algorithm::ES256, "wrap-1");
    wrap_only["key_ops"] = json!(["wrapKey"]);
    let p521 = json!({"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"});
    let ed448 = json!({"kty": "OKP", "crv": "Ed448", "kid": "ed448", "x": "AA"});
    let x25519 = json!({"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": "AA"});
    let es512 =
        json!({"kty": "EC", "crv": "P-256", "kid": "es512", "alg": "ES512", "x": "AA", "y": "AA"});
    let unknown_kty = json!({"kty": "XYZ", "kid": "xyz"});
    let keys = jwks(&[
        enc,
        oaep,
        hs,
        wrap_only,
        p521,
        ed448,
        x25519,
        es512,
        unknown_kty,
        ours().public_jwk(),
    ]);
    assert_eq!(keys.kids(), vec![Some("haven-1")]);
    assert!(!keys.is_empty());
    let token = ours().sign(&claims()).unwrap();
    assert!(verify_jwt(&token, &keys, &rules()).is_ok());
}

#[test]
fn jwks_documents_that_are_unusable_are_errors() {
    let err = |doc: Value| VerificationKeys::from_jwks(&doc).unwrap_err();
    assert!(matches!(err(json!([])), CryptoError::Jwks(_)));
    assert!(matches!(err(json!({"keys": {}})), CryptoError::Jwks(_)));
    assert!(matches!(err(json!({"keys": []})), CryptoError::Jwks(_)));
    let only_enc = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "use": "enc", "x": "AA"}]});
    assert!(matches!(err(only_enc), CryptoError::Jwks(_)));
    let many: Vec<Value> = (0..65)
        .map(|i| json!({"kty": "XYZ", "kid": i.to_string()}))
        .collect();
    assert!(matches!(err(json!({ "keys": many })), CryptoError::Jwks(_)));

    // Two kid-less keys, or a kid-less key beside another.
    let kidless = without(ours().public_jwk(), "kid");
    let other = TokenSigningKey::from_pkcs8_der("haven-2", &seeded_der(2))
        .unwrap()
        .public_jwk();
    assert!(matches!(
        err(json!({"keys": [kidless.clone(), other]})),
        CryptoError::Jwks(_)
    ));
    assert!(matches!(
        err(json!({"keys": [kidless.clone(), kidless]})),
        CryptoError::Jwks(_)
    ));
    // Duplicate kids.
    let same_kid = TokenSigningKey::from_pkcs8_der("haven-1", &seeded_der(3))
        .unwrap()
        .public_jwk();
    assert!(matches!(
        err(json!({"keys": [ours().public_jwk(), same_kid]})),
        CryptoError::Jwks(_)
    ));
}

#[test]
fn broken_or_weak_jwks_entries_are_errors() {
    let err = |jwk: Value| VerificationKeys::from_jwks(&json!({ "keys": [jwk] })).unwrap_err();
    let ed = ours().public_jwk();
    let es = public_jwk(&ec(ES256_A), Algorithm::ES256, "ec");
    let rs = public_jwk(&rsa(), Algorithm::RS256, "rsa");
    let padded_x = format!("{}=", ed["x"].as_str().unwrap());
    // The Ed25519 identity point: a small-order (weak) key.
    let mut identity = [0u8; 32];
    identity[0] = 1;

    let cases: Vec<(Value, &str)> = vec![
        (json!("not an object"), "not a JSON object"),
        (with(ed.clone(), "d", json!("AAAA")), "private"),
        (with(rs.clone(), "p", json!("AAAA")), "private"),
        (
            json!({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}),
            "private",
        ),
        (without(ed.clone(), "kty"), "kty"),
        (with(ed.clone(), "kid", json!(5)), "kid"),
        (with(ed.clone(), "kid", json!("")), "kid"),
        (with(ed.clone(), "use", json!(true)), "use"),
        (with(ed.clone(), "key_ops", json!("verify")), "key_ops"),
        (with(ed.clone(), "alg", json!(["EdDSA"])), "alg"),
        (with(ed.clone(), "alg", json!("ES256")), "alg"),
        (with(es.clone(), "alg", json!("ES384")), "alg"),
        (with(es.clone(), "alg", json!("RS256")), "alg"),
        (with(rs.clone(), "alg", json!("EdDSA")), "alg"),
        (without(ed.clone(), "x"), "missing"),
        (with(ed.clone(), "x", json!("AAAA")), "32 bytes"),
        (with(ed.clone(), "x", json!("not base64!")), "base64url"),
        (with(ed.clone(), "x", json!(padded_x)), "base64url"),
        (with(ed.clone(), "x", json!(b64(&identity))), "usable"),
        (with(es.clone(), "x", json!(b64(&[1u8; 31]))), "length"),
        (without(es.clone(), "y"), "missing"),
        (with(rs.clone(), "e", json!(b64(&[2]))), "exponent"),
        (with(rs.clone(), "e", json!(b64(&[1]))), "exponent"),
        (with(rs.clone(), "e", json!(b64(&[1u8; 9]))), "exponent"),
        (with(rs.clone(), "n", json!(b64(&[0xff; 1025]))), "8192"),
    ];
    for (jwk, needle) in cases {
        let e = err(jwk.clone());
        assert!(matches!(e, CryptoError::Jwk { .. }), "{jwk}: {e:?}");
        assert!(e.to_string().contains(needle), "{jwk}: {e}");
    }
}

#[test]
fn rsa_keys_under_2048_bits_are_refused() {
    let rs = public_jwk(&rsa(), Algorithm::RS256, "rsa");
    let n = URL_SAFE_NO_PAD.decode(rs["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256);
    let with_n = |n: &[u8]| {
        VerificationKeys::from_jwks(&json!({"keys": [with(rs.clone(), "n", json!(b64(n)))]}))
    };

    assert_eq!(
        with_n(&n[..128]).unwrap_err(),
        CryptoError::WeakRsaKey {
            index: 0,
            bits: 1024
        }
    );
    // 2047 bits: a top byte of 0x7f.
    let mut short = n.clone();
    short[0] = 0x7f;
    assert_eq!(
        with_n(&short).unwrap_err(),
        CryptoError::WeakRsaKey {
            index: 0,
            bits: 2047
        }
    );
    // Leading zero octets do not count: 256 bytes of which the first is zero is 2040 bits.
    let mut padded = vec![0u8];
    padded.extend_from_slice(&n[..255]);
    assert_eq!(
        with_n(&padded).unwrap_err(),
        CryptoError::WeakRsaKey {
            index: 0,
            bits: 2040
        }
    );
    // The real 2048-bit key, even with a redundant leading zero, is accepted and verifies.
    let mut zero_led = vec![0u8];
    zero_led.extend_from_slice(&n);
    let keys = with_n(&zero_led).unwrap();
    let token = sign_with(&rsa(), Algorithm::RS256, Some("rsa"), &claims());
    assert!(verify_jwt(&token, &keys, &rules()).is_ok());
    assert!(with_n(&n).is_ok());
    let message = CryptoError::WeakRsaKey {
        index: 0,
        bits: 1024,
    }
    .to_string();
    assert!(message.contains("2048"), "{message}");
}
