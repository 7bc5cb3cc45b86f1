//! Access tokens an attacker made or changed (RFC 8725 §2-3), and tokens that must stop working.
//!
//! Haven's own tokens cannot be signed by a test, so they are tampered with, re-signed with
//! other keys and stripped of their signature. To test the claim checks themselves (expiry,
//! `nbf`, `iat`, audience, issuer) the test plays a trusted external issuer: it holds the key
//! Haven fetches from a JWKS endpoint the test serves, so it can sign any claims. Each refusal
//! is paired with a token that differs only in what is being tested and is accepted, so a
//! refusal for some unrelated reason cannot make a test pass.

use serde_json::{Value, json};

use super::{
    Forger, KeyServer, NO_CLINICIAN_MFA, add_app, add_service, add_user, anonymous,
    assert_invalid_token, assert_oauth_error, b64, client_key, decode_jwt, fhir_get, hs256, now,
    password_flow, post_form, refresh, service_token, spawn_configured, wait_for_status,
    with_assertion,
};
use crate::helpers::spawn_app;

/// The casings of `none` an implementation comparing case-insensitively might accept.
const NONE_ALGS: [&str; 4] = ["none", "None", "NONE", "nOnE"];
/// `kid` values that would do harm if a key lookup used them as a path or in SQL.
const KID_INJECTIONS: [&str; 4] = ["../../etc/passwd", "' OR 1=1 --", "k1' --", "/dev/null"];

#[tokio::test]
async fn tampered_and_forged_haven_tokens_are_refused() {
    let app = spawn_app().await;
    let token = app.token.clone();
    let (header, claims) = decode_jwt(&token);
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["typ"], "at+jwt");
    let kid = header["kid"].as_str().unwrap().to_owned();
    let signature = token.rsplit('.').next().unwrap().to_owned();
    let attacker = Forger::new();
    let mut refused = Vec::<(String, String)>::new();

    // `alg: none` in every casing, with no signature and with the real one.
    for alg in NONE_ALGS {
        let h = json!({ "alg": alg, "typ": "at+jwt", "kid": kid });
        let input = super::signing_input(&h, &claims);
        refused.push((format!("alg {alg}, no signature"), format!("{input}.")));
        refused.push((
            format!("alg {alg}, real signature"),
            format!("{input}.{signature}"),
        ));
    }
    // Claims changed under the real signature.
    let mut longer = claims.clone();
    longer["exp"] = json!(now() + 86_400);
    let mut other_sub = claims.clone();
    other_sub["sub"] = json!("someone-else");
    for (what, c) in [("exp extended", &longer), ("sub changed", &other_sub)] {
        refused.push((
            what.into(),
            format!("{}.{signature}", super::signing_input(&header, c)),
        ));
    }
    // Re-signed with another key under Haven's kid; an expired copy the same way.
    refused.push((
        "another key, Haven's kid".into(),
        attacker.sign(&header, &claims),
    ));
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 120);
    refused.push((
        "expired, re-signed".into(),
        attacker.sign(&header, &expired),
    ));
    // The attacker's key offered by the token itself: embedded, or by URL (never fetched).
    let jwks_server = KeyServer::start(vec![(
        "/attacker-jwks",
        json!({ "keys": [attacker.jwk("attacker")] }),
    )])
    .await;
    let jku = format!("{}/attacker-jwks", jwks_server.url);
    for (name, value) in [
        ("jwk", attacker.jwk("attacker")),
        ("jku", json!(jku)),
        ("x5u", json!(jku)),
    ] {
        for k in ["attacker", kid.as_str()] {
            let mut h = json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": k });
            h[name] = value.clone();
            refused.push((
                format!("{name} header, kid {k}"),
                attacker.sign(&h, &claims),
            ));
        }
    }
    // HS256 keyed with Haven's public key, in the forms an attacker would try.
    let jwks: Value = anonymous()
        .get(format!("{}/.well-known/jwks.json", app.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the signing key is published")
        .clone();
    let x = jwk["x"].as_str().unwrap().to_owned();
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &x).unwrap();
    let h = json!({ "alg": "HS256", "typ": "at+jwt", "kid": kid });
    for (what, secret) in [
        ("raw public key", raw.clone()),
        ("base64url public key", x.clone().into_bytes()),
        ("JWK text", jwk.to_string().into_bytes()),
    ] {
        refused.push((
            format!("HS256 with the {what}"),
            hs256(&secret, &h, &claims),
        ));
    }
    // Key ids meant to reach a file or a query.
    for k in KID_INJECTIONS {
        let h = json!({ "alg": "EdDSA", "typ": "at+jwt", "kid": k });
        refused.push((format!("kid {k:?}"), attacker.sign(&h, &claims)));
    }
    // Too large to be looked at (10 KB).
    let mut big = claims.clone();
    big["pad"] = json!("A".repeat(10 * 1024));
    refused.push(("10 KB".into(), attacker.sign(&header, &big)));
    // Truncated and extended.
    refused.push((
        "no signature part".into(),
        token.rsplit_once('.').unwrap().0.to_owned(),
    ));
    refused.push(("four parts".into(), format!("{token}.{signature}")));

    for (what, forged) in &refused {
        assert_invalid_token(&fhir_get(&app, forged, "Patient").await, what);
    }
    // No token's header made Haven fetch anything.
    assert!(
        jwks_server.requested().is_empty(),
        "fetched {:?}",
        jwks_server.requested()
    );
    // The real token still works: the refusals were about the changes.
    fhir_get(&app, &token, "Patient").await.assert_status(200);
}

/// Claims the test's external issuer signs for server `base`, accepted as they are.
fn external_claims(issuer: &str, base: &str) -> Value {
    let t = now();
    json!({
        "iss": issuer, "sub": "ext-user-1", "aud": base, "iat": t, "nbf": t, "exp": t + 300,
        "jti": haven_crypto::random_token(), "scope": "user/*.rs", "roles": ["physician"],
        "preferred_username": "ext.user",
    })
}

#[tokio::test]
async fn tokens_of_a_trusted_external_issuer_are_checked_claim_by_claim() {
    let issuer_key = Forger::new();
    let attacker = Forger::new();
    let keys = KeyServer::start(vec![
        ("/jwks", json!({ "keys": [issuer_key.jwk("k1")] })),
        (
            "/attacker-jwks",
            json!({ "keys": [attacker.jwk("k1"), attacker.jwk("attacker")] }),
        ),
    ])
    .await;
    let iss = keys.url.clone();
    let app = spawn_configured(&format!(
        "[[identity.trusted_issuers]]\nissuer = \"{iss}\"\njwks_uri = \"{iss}/jwks\"\n\
         roles_claim = \"roles\"\n[identity.trusted_issuers.role_map]\nphysician = \"clinician\"\n"
    ))
    .await;
    let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": "k1" });
    let good = external_claims(&iss, &app.base);
    let sign = |h: &Value, c: &Value| issuer_key.sign(h, c);

    // The baseline: a token of the issuer with these claims is accepted.
    fhir_get(&app, &sign(&header, &good), "Patient")
        .await
        .assert_status(200);
    // And its scopes still bound it.
    let resp = super::fhir_post(
        &app,
        &sign(&header, &good),
        "Patient",
        &crate::helpers::patient(),
    )
    .await;
    crate::helpers::assert_outcome(&resp, 403, "forbidden");

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v;
        }
        c
    };
    let t = now();
    let mut refused: Vec<(String, String)> = vec![
        // Times, beyond the 30 s leeway.
        (
            "expired".into(),
            sign(&header, &with("exp", json!(t - 120))),
        ),
        (
            "nbf in the future".into(),
            sign(&header, &with("nbf", json!(t + 300))),
        ),
        (
            "iat in the future".into(),
            sign(&header, &with("iat", json!(t + 300))),
        ),
        ("no exp".into(), sign(&header, &with("exp", Value::Null))),
        (
            "exp as text".into(),
            sign(&header, &with("exp", json!((t + 300).to_string()))),
        ),
        // Audience and issuer.
        (
            "another audience".into(),
            sign(&header, &with("aud", json!("https://other.example/fhir"))),
        ),
        (
            "audience missing".into(),
            sign(&header, &with("aud", Value::Null)),
        ),
        (
            "issuer not configured".into(),
            sign(&header, &with("iss", json!("http://127.0.0.1:1"))),
        ),
        (
            "issuer with a trailing slash".into(),
            sign(&header, &with("iss", json!(format!("{iss}/")))),
        ),
        // Another key under the issuer's kid.
        ("another key, kid k1".into(), attacker.sign(&header, &good)),
    ];
    for alg in NONE_ALGS {
        let h = json!({ "alg": alg, "typ": "JWT", "kid": "k1" });
        refused.push((
            format!("alg {alg}"),
            format!("{}.", super::signing_input(&h, &good)),
        ));
    }
    let hs = json!({ "alg": "HS256", "typ": "JWT", "kid": "k1" });
    refused.push((
        "HS256 keyed with the public key".into(),
        hs256(&issuer_key.public(), &hs, &good),
    ));
    refused.push((
        "HS256 keyed with the base64url public key".into(),
        hs256(b64(&issuer_key.public()).as_bytes(), &hs, &good),
    ));
    let attacker_jwks = format!("{iss}/attacker-jwks");
    for (name, value) in [
        ("jwk", attacker.jwk("k1")),
        ("jku", json!(attacker_jwks)),
        ("x5u", json!(attacker_jwks)),
    ] {
        for kid in ["k1", "attacker"] {
            let mut h = json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid });
            h[name] = value.clone();
            refused.push((
                format!("{name} header, kid {kid}"),
                attacker.sign(&h, &good),
            ));
        }
    }
    for kid in KID_INJECTIONS {
        let h = json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid });
        refused.push((format!("kid {kid:?}"), sign(&h, &good)));
    }
    // Size: the same valid token padded to 10 KB is refused; a little padding is not.
    fhir_get(
        &app,
        &sign(&header, &with("pad", json!("A".repeat(1024)))),
        "Patient",
    )
    .await
    .assert_status(200);
    refused.push((
        "10 KB".into(),
        sign(&header, &with("pad", json!("A".repeat(10 * 1024)))),
    ));

    for (what, token) in &refused {
        assert_invalid_token(&fhir_get(&app, token, "Patient").await, what);
    }
    // The issuer's JWKS was fetched; the attacker's never was.
    let fetched = keys.requested();
    assert!(fetched.iter().any(|p| p == "/jwks"), "{fetched:?}");
    assert!(
        !fetched.iter().any(|p| p.contains("attacker")),
        "{fetched:?}"
    );
    // The baseline still holds after all that.
    fhir_get(
        &app,
        &sign(&header, &external_claims(&iss, &app.base)),
        "Patient",
    )
    .await
    .assert_status(200);
}

#[tokio::test]
async fn an_id_token_is_not_an_access_token() {
    let app = spawn_configured(NO_CLINICIAN_MFA).await;
    add_user(&app, "grace", "clinician").await;
    add_app(&app).await;
    let tokens = password_flow(&app, "grace", "openid fhirUser user/*.rs", "").await;
    let access = tokens["access_token"].as_str().unwrap();
    let id = tokens["id_token"]
        .as_str()
        .expect("an ID token with openid");
    let (h, c) = decode_jwt(id);
    assert_eq!(h["typ"], "JWT");
    assert_eq!(c["aud"], super::APP);

    fhir_get(&app, access, "Patient").await.assert_status(200);
    assert_invalid_token(
        &fhir_get(&app, id, "Patient").await,
        "ID token at the FHIR API",
    );
    // Nor at userinfo, which takes access tokens.
    let resp = anonymous()
        .get(format!("{}/oauth/userinfo", app.root))
        .bearer_auth(id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // The ID token re-typed as an access token fails on its signature (and would on audience).
    let (mut h2, _) = decode_jwt(id);
    h2["typ"] = json!("at+jwt");
    let retyped = format!(
        "{}.{}",
        super::signing_input(&h2, &c),
        id.rsplit('.').next().unwrap()
    );
    assert_invalid_token(
        &fhir_get(&app, &retyped, "Patient").await,
        "re-typed ID token",
    );
}

#[tokio::test]
async fn a_disabled_users_tokens_stop_working_within_seconds() {
    let app = spawn_configured(NO_CLINICIAN_MFA).await;
    add_user(&app, "heidi", "clinician").await;
    add_app(&app).await;
    let tokens = password_flow(&app, "heidi", "openid offline_access user/*.rs", "").await;
    let access = tokens["access_token"].as_str().unwrap();
    let refresh_token = tokens["refresh_token"].as_str().expect("a refresh token");
    fhir_get(&app, access, "Patient").await.assert_status(200);

    super::cli(&app, &["user", "disable", "heidi"], None).await;
    let resp = wait_for_status(&app, access, "Patient", 401).await;
    assert_invalid_token(&resp, "a disabled user's token");
    assert_oauth_error(
        &refresh(&app, refresh_token).await,
        400,
        "invalid_grant",
        "refresh after disable",
    );

    // Enabled again, the same (unexpired) token works again: the refusal was the account's.
    super::cli(&app, &["user", "enable", "heidi"], None).await;
    wait_for_status(&app, access, "Patient", 200).await;
}

#[tokio::test]
async fn a_revoked_access_token_is_refused_and_only_its_client_may_revoke_it() {
    let app = spawn_app().await;
    add_app(&app).await;
    let key = super::suite_key(&app);
    let token = service_token(&app, crate::helpers::SUITE_CLIENT, &key).await;
    fhir_get(&app, &token, "Patient").await.assert_status(200);

    // Another client "revokes" it: RFC 7009 §2.2 answers 200 all the same, but nothing happens.
    let resp = post_form(
        &app,
        "/oauth/revoke",
        &[("token", &token), ("client_id", super::APP)],
    )
    .await;
    resp.assert_status(200);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await; // past the revocation cache
    fhir_get(&app, &token, "Patient").await.assert_status(200);

    // Without client authentication: refused.
    assert_oauth_error(
        &post_form(&app, "/oauth/revoke", &[("token", &token)]).await,
        401,
        "invalid_client",
        "anonymous revoke",
    );

    // Its own client revokes it: refused from then on; the client's other tokens still work.
    let assertion = key
        .sign(&super::assertion_claims(&app, crate::helpers::SUITE_CLIENT))
        .unwrap();
    post_form(
        &app,
        "/oauth/revoke",
        &with_assertion(&[("token", &token)], &assertion),
    )
    .await
    .assert_status(200);
    let resp = wait_for_status(&app, &token, "Patient", 401).await;
    assert_invalid_token(&resp, "a revoked token");
    fhir_get(&app, &app.token, "Patient")
        .await
        .assert_status(200);
}

#[tokio::test]
async fn a_revoked_clients_tokens_are_refused() {
    let app = spawn_app().await;
    let path = add_service(&app, "doomed", "system/*.rs").await;
    let key = client_key(&path, "doomed");
    let token = service_token(&app, "doomed", &key).await;
    fhir_get(&app, &token, "Patient").await.assert_status(200);

    super::cli(&app, &["client", "revoke", "doomed"], None).await;
    let resp = wait_for_status(&app, &token, "Patient", 401).await;
    assert_invalid_token(&resp, "a revoked client's token");
    // And it gets no new ones.
    let assertion = key.sign(&super::assertion_claims(&app, "doomed")).unwrap();
    let resp = post_form(
        &app,
        "/oauth/token",
        &with_assertion(&[("grant_type", "client_credentials")], &assertion),
    )
    .await;
    assert_oauth_error(&resp, 401, "invalid_client", "token for a revoked client");
    // Other clients are unaffected.
    fhir_get(&app, &app.token, "Patient")
        .await
        .assert_status(200);
}
