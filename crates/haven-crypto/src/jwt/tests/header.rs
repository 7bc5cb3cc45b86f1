//! Size, shape, algorithm and key selection: everything decided before the signature is checked,
//! and the signature itself.

use super::*;

#[test]
fn too_long_is_refused_before_decoding() {
    let garbage = "!".repeat(DEFAULT_MAX_JWT_LEN + 1);
    assert_eq!(
        refused(&garbage, &our_keys(), &rules()),
        JwtError::TooLong {
            max: DEFAULT_MAX_JWT_LEN
        }
    );
    let token = ours().sign(&claims()).unwrap();
    let tight = JwtRules {
        max_len: token.len() - 1,
        ..rules()
    };
    assert_eq!(
        refused(&token, &our_keys(), &tight),
        JwtError::TooLong {
            max: token.len() - 1
        }
    );
    let exact = JwtRules {
        max_len: token.len(),
        ..rules()
    };
    assert!(verify_jwt(&token, &our_keys(), &exact).is_ok());
}

#[test]
fn malformed_structure_is_refused() {
    let token = ours().sign(&claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let header = json!({"alg": "EdDSA", "kid": "haven-1"});
    let enc = |v: &str| b64(v.as_bytes());
    // The first group is refused for its structure alone, whatever the signature.
    let structural = [
        String::new(),
        "abc".to_owned(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}.{p}.{s}."),
        "..".to_owned(),
        format!(".{p}.{s}"),
        format!("{h}..{s}"),
        format!("{h}.{p}."),
        format!("{h}=.{p}.{s}"),
        format!("{h}.{p}=.{s}"),
        format!(" {token}"),
        format!("{token}\n"),
        format!("{}+.{p}.{s}", &h[..h.len() - 1]),
        format!("{}.{p}.{s}", enc("not json")),
        format!("{}.{p}.{s}", enc("[\"alg\",\"EdDSA\"]")),
        format!(
            "{}.{p}.{s}",
            enc(r#"{"alg":"EdDSA","kid":"haven-1","kid":"haven-1"}"#)
        ),
        format!(
            "{}.{p}.{s}",
            enc(r#"{"alg":"EdDSA","kid":"haven-1"} trailing"#)
        ),
        format!("{}.{p}.{s}", enc(r#"{"alg":"EdDSA","kid":7}"#)),
        format!(
            "{}.{p}.{s}",
            enc(r#"{"alg":"EdDSA","kid":"haven-1","typ":1}"#)
        ),
        format!("{}.{}.{s}", enc(&header.to_string()), enc("[1,2]")),
        format!("{}.{}.{s}", enc(&header.to_string()), enc("null")),
        format!(
            "{}.{}.{s}",
            enc(&header.to_string()),
            enc(r#"{"exp":1,"exp":9999999999}"#)
        ),
        format!("{}.{p}.{s}", "A".repeat(3000)),
    ];
    for token in &structural {
        let err = refused(token, &our_keys(), &rules());
        assert!(matches!(err, JwtError::Malformed(_)), "{token:?}: {err:?}");
    }
    // A signature that is not base64url never verifies.
    for token in [
        format!("{h}.{p}.{}/", &s[..s.len() - 1]),
        format!("{h}.{p}.***"),
    ] {
        let err = refused(&token, &our_keys(), &rules());
        assert!(
            matches!(err, JwtError::Malformed(_) | JwtError::Signature),
            "{token:?}: {err:?}"
        );
    }
}

#[test]
fn alg_none_in_any_spelling_is_refused() {
    let key = ours();
    let real = key.sign(&claims()).unwrap();
    let real_sig = real.rsplit('.').next().unwrap();
    let payload = b64(claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = b64(json!({"alg": alg, "kid": "haven-1", "typ": "JWT"})
            .to_string()
            .as_bytes());
        for sig in ["", real_sig, "AA"] {
            let token = format!("{header}.{payload}.{sig}");
            let err = refused(&token, &our_keys(), &rules());
            // Without a signature the token is already malformed; with one, `alg` refuses it.
            let expected = if sig.is_empty() {
                matches!(err, JwtError::Malformed(_))
            } else {
                err == JwtError::Algorithm
            };
            assert!(expected, "{alg} / {sig:?}: {err:?}");
        }
    }
}

#[test]
fn missing_or_unknown_alg_is_refused() {
    let der = seeded_der(1);
    for header in [
        json!({"kid": "haven-1"}),
        json!({"alg": null, "kid": "haven-1"}),
        json!({"alg": 1, "kid": "haven-1"}),
        json!({"alg": ["EdDSA"], "kid": "haven-1"}),
        json!({"alg": "eddsa", "kid": "haven-1"}),
        json!({"alg": "EDDSA", "kid": "haven-1"}),
        json!({"alg": "Ed25519", "kid": "haven-1"}),
        json!({"alg": "EdDSA ", "kid": "haven-1"}),
        json!({"alg": "ES512", "kid": "haven-1"}),
        json!({"alg": "ES256K", "kid": "haven-1"}),
    ] {
        let token = sign_raw_ed(&der, &header, &claims());
        assert_eq!(
            refused(&token, &our_keys(), &rules()),
            JwtError::Algorithm,
            "{header}"
        );
    }
}

#[test]
fn hmac_signed_with_the_public_key_is_refused() {
    // The classic key-confusion attack: the public key, in every form an attacker might guess
    // the verifier uses, as an HMAC secret.
    let key = ours();
    let jwk = key.public_jwk();
    let x = jwk["x"].as_str().unwrap().to_owned();
    let x_raw = URL_SAFE_NO_PAD.decode(&x).unwrap();
    let secrets: [Vec<u8>; 3] = [x_raw, x.into_bytes(), jwk.to_string().into_bytes()];
    for secret in &secrets {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = sign_with(
                &EncodingKey::from_secret(secret).unwrap(),
                alg,
                Some("haven-1"),
                &claims(),
            );
            assert_eq!(refused(&token, &our_keys(), &rules()), JwtError::Algorithm);
        }
    }
    // The same against an RSA client key, with the modulus as the secret.
    let rsa_jwk = public_jwk(&rsa(), Algorithm::RS256, "rsa-1");
    let n = URL_SAFE_NO_PAD
        .decode(rsa_jwk["n"].as_str().unwrap())
        .unwrap();
    let token = sign_with(
        &EncodingKey::from_secret(&n).unwrap(),
        Algorithm::HS256,
        Some("rsa-1"),
        &claims(),
    );
    assert_eq!(
        refused(&token, &jwks(&[rsa_jwk]), &rules()),
        JwtError::Algorithm
    );
}

#[test]
fn alg_must_be_the_one_the_key_allows() {
    // Our Ed25519 key, a header that claims ES256: refused before any signature check.
    let token = sign_raw_ed(
        &seeded_der(1),
        &json!({"alg": "ES256", "kid": "haven-1"}),
        &claims(),
    );
    assert_eq!(refused(&token, &our_keys(), &rules()), JwtError::Algorithm);

    // A P-256 key, a token that claims ES384 (signed by a P-384 key under the same kid).
    let p256 = jwks(&[public_jwk(&ec(ES256_A), Algorithm::ES256, "ec")]);
    let token = sign_with(&ec(ES384), Algorithm::ES384, Some("ec"), &claims());
    assert_eq!(refused(&token, &p256, &rules()), JwtError::Algorithm);

    // An RSA key registered for RS384 only.
    let mut jwk = public_jwk(&rsa(), Algorithm::RS384, "rsa");
    jwk["alg"] = json!("RS384");
    let rs384_only = jwks(&[jwk]);
    for alg in [Algorithm::RS256, Algorithm::RS512, Algorithm::PS384] {
        let token = sign_with(&rsa(), alg, Some("rsa"), &claims());
        assert_eq!(
            refused(&token, &rs384_only, &rules()),
            JwtError::Algorithm,
            "{alg:?}"
        );
    }
    let token = sign_with(&rsa(), Algorithm::RS384, Some("rsa"), &claims());
    assert!(verify_jwt(&token, &rs384_only, &rules()).is_ok());
}

#[test]
fn embedded_jwk_jku_x5u_x5c_are_never_used() {
    let attacker_der = seeded_der(66);
    let attacker = TokenSigningKey::from_pkcs8_der("evil", &attacker_der).unwrap();
    let attacker_jwk = attacker.public_jwk();
    let headers = [
        // Our kid, the attacker's key embedded or linked: the signature is checked with *our*
        // key, and fails.
        (
            json!({"alg": "EdDSA", "kid": "haven-1", "jwk": attacker_jwk}),
            JwtError::Signature,
        ),
        (
            json!({"alg": "EdDSA", "kid": "haven-1", "jku": "https://evil.example/jwks"}),
            JwtError::Signature,
        ),
        (
            json!({"alg": "EdDSA", "kid": "haven-1", "x5u": "https://evil.example/cert.pem"}),
            JwtError::Signature,
        ),
        (
            json!({"alg": "EdDSA", "kid": "haven-1", "x5c": ["MIIBszCCAVmgAwIBAgIU"]}),
            JwtError::Signature,
        ),
        // The attacker's own kid, with its key embedded or linked: no such key in the set.
        (
            json!({"alg": "EdDSA", "kid": "evil", "jwk": attacker_jwk}),
            JwtError::UnknownKey,
        ),
        (
            json!({"alg": "EdDSA", "kid": "evil", "jku": "https://evil.example/jwks"}),
            JwtError::UnknownKey,
        ),
    ];
    for (header, expected) in headers {
        let token = sign_raw_ed(&attacker_der, &header, &claims());
        assert_eq!(refused(&token, &our_keys(), &rules()), expected, "{header}");
    }
    // Two keys in the set, no kid, the attacker's key embedded: no key is chosen at all.
    let two = jwks(&[
        ours().public_jwk(),
        TokenSigningKey::from_pkcs8_der("haven-2", &seeded_der(2))
            .unwrap()
            .public_jwk(),
    ]);
    let token = sign_raw_ed(
        &attacker_der,
        &json!({"alg": "EdDSA", "jwk": attacker_jwk}),
        &claims(),
    );
    assert_eq!(refused(&token, &two, &rules()), JwtError::UnknownKey);
}

#[test]
fn critical_headers_are_refused() {
    let der = seeded_der(1);
    for header in [
        json!({"alg": "EdDSA", "kid": "haven-1", "crit": ["exp"], "exp": NOW + 300}),
        json!({"alg": "EdDSA", "kid": "haven-1", "crit": ["b64"], "b64": false}),
        json!({"alg": "EdDSA", "kid": "haven-1", "crit": ["b64"], "b64": true}),
        json!({"alg": "EdDSA", "kid": "haven-1", "crit": []}),
        json!({"alg": "EdDSA", "kid": "haven-1", "crit": "x"}),
    ] {
        let token = sign_raw_ed(&der, &header, &claims());
        assert_eq!(
            refused(&token, &our_keys(), &rules()),
            JwtError::CriticalHeader,
            "{header}"
        );
    }
    // `b64: false` without `crit` would change what is signed (RFC 7797): refused as well.
    let token = sign_raw_ed(
        &der,
        &json!({"alg": "EdDSA", "kid": "haven-1", "b64": false}),
        &claims(),
    );
    assert!(matches!(
        refused(&token, &our_keys(), &rules()),
        JwtError::Malformed(_)
    ));
    // Unknown non-critical headers are just ignored.
    let token = sign_raw_ed(
        &der,
        &json!({"alg": "EdDSA", "kid": "haven-1", "x-custom": {"a": 1}}),
        &claims(),
    );
    assert!(verify_jwt(&token, &our_keys(), &rules()).is_ok());
}

#[test]
fn kid_is_matched_exactly_and_only_in_the_set() {
    let der = seeded_der(1);
    for kid in [
        "../../etc/passwd",
        "' OR 1=1 --",
        "haven-1 ",
        " haven-1",
        "HAVEN-1",
        "haven-1\0",
        "haven",
        "",
        "https://evil.example/jwks#haven-1",
    ] {
        let token = sign_raw_ed(&der, &json!({"alg": "EdDSA", "kid": kid}), &claims());
        assert_eq!(
            refused(&token, &our_keys(), &rules()),
            JwtError::UnknownKey,
            "{kid:?}"
        );
    }
}

#[test]
fn token_without_kid_needs_a_single_key_set() {
    let der = seeded_der(1);
    let token = sign_raw_ed(&der, &json!({"alg": "EdDSA"}), &claims());
    assert!(verify_jwt(&token, &our_keys(), &rules()).is_ok());
    let two = jwks(&[
        ours().public_jwk(),
        TokenSigningKey::from_pkcs8_der("haven-2", &seeded_der(2))
            .unwrap()
            .public_jwk(),
    ]);
    assert_eq!(refused(&token, &two, &rules()), JwtError::UnknownKey);

    // A single kid-less key is only chosen by kid-less tokens.
    let kidless = jwks(&[without(ours().public_jwk(), "kid")]);
    assert_eq!(kidless.kids(), vec![None]);
    assert!(verify_jwt(&token, &kidless, &rules()).is_ok());
    let with_kid = ours().sign(&claims()).unwrap();
    assert_eq!(refused(&with_kid, &kidless, &rules()), JwtError::UnknownKey);
}

#[test]
fn another_key_with_the_same_kid_fails_the_signature() {
    let impostor = TokenSigningKey::from_pkcs8_der("haven-1", &seeded_der(99)).unwrap();
    let token = impostor.sign(&claims()).unwrap();
    assert_eq!(refused(&token, &our_keys(), &rules()), JwtError::Signature);

    // The same for EC: two P-256 keys, one kid.
    let registered = jwks(&[public_jwk(&ec(ES256_A), Algorithm::ES256, "ec-1")]);
    let token = sign_with(&ec(ES256_B), Algorithm::ES256, Some("ec-1"), &claims());
    assert_eq!(refused(&token, &registered, &rules()), JwtError::Signature);
}

#[test]
fn any_change_to_a_signed_token_fails_the_signature() {
    let token = ours().sign(&claims()).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    let (header, _) = input.split_once('.').unwrap();

    // Another payload under the original signature.
    let forged_claims = with(claims(), "sub", json!("admin"));
    let forged = format!(
        "{header}.{}.{sig}",
        b64(forged_claims.to_string().as_bytes())
    );
    assert_eq!(refused(&forged, &our_keys(), &rules()), JwtError::Signature);

    // A flipped signature bit.
    let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
    raw[10] ^= 1;
    let flipped = format!("{input}.{}", b64(&raw));
    assert_eq!(
        refused(&flipped, &our_keys(), &rules()),
        JwtError::Signature
    );

    // A truncated signature.
    let short = format!("{input}.{}", b64(&raw[..32]));
    assert_eq!(refused(&short, &our_keys(), &rules()), JwtError::Signature);
}
