//! Client credentials with `private_key_jwt` (SMART Backend Services; RFC 7523 §3): an
//! assertion is signed by the client's registered key, addressed to the token endpoint,
//! short-lived and usable once; client secrets are not accepted at all.

use serde_json::{Value, json};

use super::{add_app, assert_oauth_error, assertion_claims, post_form, suite_key, with_assertion};
use crate::helpers::{SUITE_CLIENT, spawn_app};

#[tokio::test]
async fn client_assertions_are_single_use_short_lived_and_addressed_to_the_token_endpoint() {
    let app = spawn_app().await;
    add_app(&app).await;
    let key = suite_key(&app);
    let grant = [("grant_type", "client_credentials")];
    let ask = async |assertion: &str| {
        post_form(&app, "/oauth/token", &with_assertion(&grant, assertion)).await
    };
    let claims = || assertion_claims(&app, SUITE_CLIENT);
    let changed = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        key.sign(&c).unwrap()
    };

    // The baseline is accepted, once.
    let first = key.sign(&claims()).unwrap();
    let resp = ask(&first).await;
    resp.assert_status(200);
    assert_eq!(resp.json()["token_type"], "Bearer");
    assert_oauth_error(
        &ask(&first).await,
        401,
        "invalid_client",
        "the same assertion again",
    );

    let t = super::now();
    let impostor = haven_crypto::TokenSigningKey::generate(format!("{SUITE_CLIENT}-1")).unwrap();
    let refused: Vec<(&str, String)> = vec![
        (
            "aud: the introspection endpoint",
            changed(&|c| c["aud"] = json!(format!("{}/oauth/introspect", app.root))),
        ),
        (
            "aud: the FHIR base",
            changed(&|c| c["aud"] = json!(app.base)),
        ),
        ("aud: the issuer", changed(&|c| c["aud"] = json!(app.root))),
        (
            "expired",
            changed(&|c| {
                c["iat"] = json!(t - 400);
                c["exp"] = json!(t - 120);
            }),
        ),
        ("living an hour", changed(&|c| c["exp"] = json!(t + 3600))),
        (
            "no jti",
            changed(&|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        (
            "sub is not the client",
            changed(&|c| c["sub"] = json!("someone-else")),
        ),
        (
            "iss is another (public) client",
            changed(&|c| {
                c["iss"] = json!(super::APP);
                c["sub"] = json!(super::APP);
            }),
        ),
        (
            "signed by another key with the client's kid",
            impostor.sign(&claims()).unwrap(),
        ),
        ("alg none", {
            let h = json!({ "alg": "none", "typ": "JWT", "kid": format!("{SUITE_CLIENT}-1") });
            format!("{}.", super::signing_input(&h, &claims()))
        }),
    ];
    for (what, assertion) in &refused {
        assert_oauth_error(&ask(assertion).await, 401, "invalid_client", what);
    }

    // A client secret is no way in, alone or next to a valid assertion.
    let resp = post_form(
        &app,
        "/oauth/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", SUITE_CLIENT),
            ("client_secret", "s3cret"),
        ],
    )
    .await;
    assert_oauth_error(&resp, 401, "invalid_client", "client_secret");
    let fresh = key.sign(&claims()).unwrap();
    let mut form = with_assertion(&grant, &fresh);
    form.push(("client_secret", "s3cret"));
    assert_oauth_error(
        &post_form(&app, "/oauth/token", &form).await,
        401,
        "invalid_client",
        "assertion and client_secret",
    );
    // An assertion of another type is not read.
    let form = [
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        ),
        ("client_assertion", fresh.as_str()),
    ];
    assert_oauth_error(
        &post_form(&app, "/oauth/token", &form).await,
        401,
        "invalid_client",
        "assertion type",
    );
    // A confidential client may not pass as a public one by naming itself.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", SUITE_CLIENT),
    ];
    assert_oauth_error(
        &post_form(&app, "/oauth/token", &form).await,
        401,
        "invalid_client",
        "client_id only",
    );
    // A public client may not use client credentials.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", super::APP),
    ];
    assert_oauth_error(
        &post_form(&app, "/oauth/token", &form).await,
        400,
        "unauthorized_client",
        "public client",
    );

    // The client itself is unharmed by all that: a new assertion works.
    let resp = ask(&key.sign(&claims()).unwrap()).await;
    resp.assert_status(200);
}
