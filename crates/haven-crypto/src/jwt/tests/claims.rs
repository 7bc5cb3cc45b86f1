//! Claims checked against the caller's clock and trust: `exp`, `nbf`, `iat`, `iss`, `aud`, and
//! the `typ` header.

use super::*;

#[test]
fn exp_is_required_and_enforced_with_leeway() {
    let key = ours();
    let no_required = JwtRules {
        required: &[],
        ..rules()
    };
    let token = key.sign(&without(claims(), "exp")).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &no_required),
        JwtError::MissingClaim("exp".into())
    );

    let token = key.sign(&with(claims(), "exp", json!(NOW - 30))).unwrap();
    assert!(
        verify_jwt(&token, &our_keys(), &rules()).is_ok(),
        "now == exp + leeway"
    );
    let token = key.sign(&with(claims(), "exp", json!(NOW - 31))).unwrap();
    assert_eq!(refused(&token, &our_keys(), &rules()), JwtError::Expired);
    let strict = JwtRules {
        leeway_secs: 0,
        ..rules()
    };
    let token = key.sign(&with(claims(), "exp", json!(NOW))).unwrap();
    assert!(verify_jwt(&token, &our_keys(), &strict).is_ok());
    let token = key.sign(&with(claims(), "exp", json!(NOW - 1))).unwrap();
    assert_eq!(refused(&token, &our_keys(), &strict), JwtError::Expired);
    // A fractional `exp` is rounded down.
    let token = key
        .sign(&with(claims(), "exp", json!(NOW as f64 - 0.5)))
        .unwrap();
    assert_eq!(refused(&token, &our_keys(), &strict), JwtError::Expired);

    for bad in [
        json!("tomorrow"),
        json!(-1),
        json!(null),
        json!([NOW + 300]),
        json!({"at": NOW + 300}),
        json!(true),
    ] {
        let token = key.sign(&with(claims(), "exp", bad.clone())).unwrap();
        assert_eq!(
            refused(&token, &our_keys(), &rules()),
            JwtError::InvalidClaim("exp".into()),
            "{bad}"
        );
    }
}

#[test]
fn leeway_is_capped_at_60_seconds() {
    let lax = JwtRules {
        leeway_secs: 3600,
        ..rules()
    };
    let key = ours();
    let token = key.sign(&with(claims(), "exp", json!(NOW - 60))).unwrap();
    assert!(verify_jwt(&token, &our_keys(), &lax).is_ok());
    let token = key.sign(&with(claims(), "exp", json!(NOW - 61))).unwrap();
    assert_eq!(refused(&token, &our_keys(), &lax), JwtError::Expired);
    let token = key.sign(&with(claims(), "nbf", json!(NOW + 61))).unwrap();
    assert_eq!(refused(&token, &our_keys(), &lax), JwtError::NotYetValid);
}

#[test]
fn nbf_in_the_future_beyond_leeway_is_refused() {
    let key = ours();
    let token = key.sign(&with(claims(), "nbf", json!(NOW + 30))).unwrap();
    assert!(verify_jwt(&token, &our_keys(), &rules()).is_ok());
    let token = key.sign(&with(claims(), "nbf", json!(NOW + 31))).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &rules()),
        JwtError::NotYetValid
    );
    // A fractional `nbf` is rounded up.
    let token = key
        .sign(&with(claims(), "nbf", json!(NOW as f64 + 30.2)))
        .unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &rules()),
        JwtError::NotYetValid
    );
    let token = key.sign(&with(claims(), "nbf", json!("now"))).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &rules()),
        JwtError::InvalidClaim("nbf".into())
    );
}

#[test]
fn iat_in_the_future_beyond_leeway_is_refused() {
    let key = ours();
    let token = key.sign(&with(claims(), "iat", json!(NOW + 30))).unwrap();
    assert!(verify_jwt(&token, &our_keys(), &rules()).is_ok());
    let token = key.sign(&with(claims(), "iat", json!(NOW + 31))).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &rules()),
        JwtError::IssuedInFuture
    );
    let token = key.sign(&with(claims(), "iat", json!(-5))).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &rules()),
        JwtError::InvalidClaim("iat".into())
    );
    // `iat` is required only when the rules say so.
    let token = key.sign(&without(claims(), "iat")).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &rules()),
        JwtError::MissingClaim("iat".into())
    );
    let lenient = JwtRules {
        required: &[],
        ..rules()
    };
    assert!(verify_jwt(&token, &our_keys(), &lenient).is_ok());
}

#[test]
fn required_claims_are_enforced() {
    let key = ours();
    let needs_jti = JwtRules {
        required: &["exp", "jti"],
        ..rules()
    };
    let token = key.sign(&claims()).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &needs_jti),
        JwtError::MissingClaim("jti".into())
    );
    let token = key.sign(&with(claims(), "jti", json!("id-1"))).unwrap();
    assert!(verify_jwt(&token, &our_keys(), &needs_jti).is_ok());
}

#[test]
fn issuer_must_be_trusted() {
    let key = ours();
    for iss in [
        "https://evil.example".to_owned(),
        ISS.to_uppercase(),
        format!("{ISS}/"),
    ] {
        let token = key.sign(&with(claims(), "iss", json!(iss))).unwrap();
        assert_eq!(
            refused(&token, &our_keys(), &rules()),
            JwtError::Issuer,
            "{iss}"
        );
    }
    let token = key.sign(&without(claims(), "iss")).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &rules()),
        JwtError::MissingClaim("iss".into())
    );
    let token = key.sign(&with(claims(), "iss", json!([ISS]))).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &rules()),
        JwtError::InvalidClaim("iss".into())
    );

    let token = key.sign(&claims()).unwrap();
    let nobody = JwtRules {
        issuers: vec![],
        ..rules()
    };
    assert_eq!(refused(&token, &our_keys(), &nobody), JwtError::Issuer);
    let several = JwtRules {
        issuers: vec!["https://other.example".into(), ISS.into()],
        ..rules()
    };
    assert!(verify_jwt(&token, &our_keys(), &several).is_ok());
}

#[test]
fn audience_is_checked_when_set() {
    let key = ours();
    let verify_with_aud = |aud: Value| {
        let token = key.sign(&with(claims(), "aud", aud)).unwrap();
        verify_jwt(&token, &our_keys(), &rules())
    };
    assert!(verify_with_aud(json!(AUD)).is_ok());
    assert!(verify_with_aud(json!(["https://other.example", AUD])).is_ok());
    for refused_aud in [
        json!("https://other.example"),
        json!(["https://other.example"]),
        json!([]),
        json!(format!("{AUD}/")),
    ] {
        assert_eq!(
            verify_with_aud(refused_aud.clone()).unwrap_err(),
            JwtError::Audience,
            "{refused_aud}"
        );
    }
    for invalid in [json!(5), json!([AUD, 5]), json!(null)] {
        assert_eq!(
            verify_with_aud(invalid.clone()).unwrap_err(),
            JwtError::InvalidClaim("aud".into()),
            "{invalid}"
        );
    }

    let token = key.sign(&without(claims(), "aud")).unwrap();
    assert_eq!(
        refused(&token, &our_keys(), &rules()),
        JwtError::MissingClaim("aud".into())
    );
    // Without an expected audience the claim is not consulted.
    let any = JwtRules {
        audience: None,
        ..rules()
    };
    assert!(verify_jwt(&token, &our_keys(), &any).is_ok());
    let token = key
        .sign(&with(claims(), "aud", json!("https://other.example")))
        .unwrap();
    assert!(verify_jwt(&token, &our_keys(), &any).is_ok());
}

#[test]
fn typ_is_checked_when_set() {
    let key = ours();
    let access = JwtRules {
        typ: Some("at+jwt"),
        ..rules()
    };
    for typ in [
        "at+jwt",
        "application/at+jwt",
        "AT+JWT",
        "Application/At+Jwt",
    ] {
        let token = key.sign_typed(typ, &claims()).unwrap();
        assert!(verify_jwt(&token, &our_keys(), &access).is_ok(), "{typ}");
    }
    // An ID token (typ JWT) cannot be used as an access token, nor a token without typ.
    let id_token = key.sign(&claims()).unwrap();
    assert_eq!(refused(&id_token, &our_keys(), &access), JwtError::Type);
    let untyped = sign_raw_ed(
        &seeded_der(1),
        &json!({"alg": "EdDSA", "kid": "haven-1"}),
        &claims(),
    );
    assert_eq!(refused(&untyped, &our_keys(), &access), JwtError::Type);
    assert!(verify_jwt(&untyped, &our_keys(), &rules()).is_ok());
}
