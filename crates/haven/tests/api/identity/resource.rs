//! The FHIR API as a resource server: a bearer token in the `Authorization` header and nowhere
//! else (RFC 6750 §2.1), the RFC 6750 §3 challenges, discovery without a token, and SMART
//! scopes deciding which interactions a token may perform.

use reqwest::header;
use serde_json::json;

use super::{
    add_service, anonymous, assert_invalid_token, client_key, fhir_get, fhir_post, service_token,
};
use crate::helpers::{assert_outcome, entries, observation, patient, spawn_app};

#[tokio::test]
async fn fhir_requests_need_a_bearer_token_in_the_authorization_header() {
    let app = spawn_app().await;
    let none = anonymous();

    // No token: 401, a challenge without an error code (RFC 6750 §3.1: the client sent no
    // credentials), and an OperationOutcome saying so.
    let resp = app.send_with(&none, none.get(app.url("Patient"))).await;
    assert_outcome(&resp, 401, "login");
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Bearer realm=\"haven\"")
    );

    // A valid token in the query string or a form body is not a token (§2.2, §2.3 are not
    // supported: URLs end up in logs and histories).
    let in_query = format!("{}?access_token={}", app.url("Patient"), app.token);
    let resp = app.send_with(&none, none.get(&in_query)).await;
    assert_outcome(&resp, 401, "login");
    assert_eq!(
        resp.header("www-authenticate"),
        Some("Bearer realm=\"haven\"")
    );
    let resp = app
        .send_with(
            &none,
            none.post(app.url("Patient/_search"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(format!("access_token={}", app.token)),
        )
        .await;
    assert_outcome(&resp, 401, "login");

    // Another scheme is not a bearer token.
    let resp = app
        .send_with(
            &none,
            none.get(app.url("Patient"))
                .header(header::AUTHORIZATION, "Basic dGVzdDp0ZXN0"),
        )
        .await;
    assert_outcome(&resp, 401, "login");

    // A token that is not one of ours: 401 invalid_token.
    for garbage in ["garbage", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30.AAAA"] {
        assert_invalid_token(&fhir_get(&app, garbage, "Patient").await, garbage);
    }

    // The suite's token, in the header: allowed.
    fhir_get(&app, &app.token, "Patient")
        .await
        .assert_status(200);

    // Discovery needs no token: the capability statement and the SMART configuration.
    let meta = app.send_with(&none, none.get(app.url("metadata"))).await;
    meta.assert_status(200);
    assert_eq!(meta.json()["resourceType"], "CapabilityStatement");
    for url in [
        format!("{}/.well-known/smart-configuration", app.base),
        format!("{}/.well-known/smart-configuration", app.root),
    ] {
        let smart = app.send_with(&none, none.get(&url)).await;
        smart.assert_status(200);
        let smart = smart.json();
        assert_eq!(
            smart["token_endpoint"],
            format!("{}/oauth/token", app.root),
            "{url}"
        );
        assert_eq!(
            smart["code_challenge_methods_supported"],
            json!(["S256"]),
            "{url}"
        );
    }
    let oidc = app
        .send_with(
            &none,
            none.get(format!("{}/.well-known/openid-configuration", app.root)),
        )
        .await;
    oidc.assert_status(200);
    assert_eq!(oidc.json()["issuer"], app.root.as_str());
    let jwks = app
        .send_with(
            &none,
            none.get(format!("{}/.well-known/jwks.json", app.root)),
        )
        .await;
    jwks.assert_status(200);
    let keys = jwks.json()["keys"].as_array().expect("keys").clone();
    assert!(!keys.is_empty());
    for k in keys {
        assert!(k.get("d").is_none(), "a private key is published: {k}");
        assert_eq!(k["alg"], "EdDSA");
    }
}

#[tokio::test]
async fn a_token_may_do_only_what_its_scopes_allow() {
    let app = spawn_app().await;
    let key = add_service(&app, "reader", "system/Patient.rs").await;
    let token = service_token(&app, "reader", &client_key(&key, "reader")).await;
    let subject = app.create(&patient()).await;
    let subject = format!("Patient/{}", subject["id"].as_str().unwrap());

    // What the scope grants works...
    fhir_get(&app, &token, "Patient").await.assert_status(200);
    fhir_get(&app, &token, &subject).await.assert_status(200);
    // ...and nothing else: 403 with the insufficient_scope challenge (RFC 6750 §3.1).
    for (what, resp) in [
        (
            "create an Observation",
            fhir_post(&app, &token, "Observation", &observation(&subject)).await,
        ),
        (
            "create a Patient",
            fhir_post(&app, &token, "Patient", &patient()).await,
        ),
        (
            "read an Observation",
            fhir_get(&app, &token, "Observation").await,
        ),
    ] {
        assert_outcome(&resp, 403, "forbidden");
        let challenge = resp.header("www-authenticate").unwrap_or("");
        assert!(
            challenge.starts_with("Bearer realm=\"haven\"")
                && challenge.contains("error=\"insufficient_scope\""),
            "{what}: {challenge:?}"
        );
    }
    // Nothing was stored by the refused creations.
    let observations = app.get("Observation").await;
    assert!(
        entries(&observations.json()).is_empty(),
        "{}",
        observations.text()
    );

    // Asking for more than the client may have yields only what it may have.
    let assertion = client_key(&key, "reader")
        .sign(&super::assertion_claims(&app, "reader"))
        .unwrap();
    let resp = super::post_form(
        &app,
        "/oauth/token",
        &super::with_assertion(
            &[
                ("grant_type", "client_credentials"),
                ("scope", "system/*.cruds system/Patient.rs"),
            ],
            &assertion,
        ),
    )
    .await;
    resp.assert_status(200);
    assert_eq!(resp.json()["scope"], "system/Patient.rs");
    let wider = resp.json()["access_token"].as_str().unwrap().to_owned();
    assert_outcome(
        &fhir_post(&app, &wider, "Patient", &patient()).await,
        403,
        "forbidden",
    );
}

#[tokio::test]
async fn a_transaction_with_one_entry_outside_the_scopes_is_refused_whole() {
    let app = spawn_app().await;
    let key = add_service(&app, "registrar", "system/Patient.cruds").await;
    let token = service_token(&app, "registrar", &client_key(&key, "registrar")).await;
    let urn = "urn:uuid:6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    let mut marked = patient();
    marked["name"] = json!([{ "family": "Outofscope-Canary" }]);
    let entry = |resource: serde_json::Value, full_url: Option<&str>| {
        let ty = resource["resourceType"].as_str().unwrap().to_owned();
        let mut e = json!({ "resource": resource, "request": { "method": "POST", "url": ty } });
        if let Some(u) = full_url {
            e["fullUrl"] = json!(u);
        }
        e
    };
    let tx = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [entry(marked.clone(), Some(urn)), entry(observation(urn), None)],
    });
    let resp = fhir_post(&app, &token, "", &tx).await;
    assert_outcome(&resp, 403, "forbidden");
    assert!(
        resp.header("www-authenticate")
            .is_some_and(|c| c.contains("insufficient_scope")),
        "{:?}",
        resp.header("www-authenticate")
    );
    // Not even the entry the token allows was stored.
    let found = app.get("Patient?family=Outofscope-Canary").await;
    found.assert_status(200);
    assert!(entries(&found.json()).is_empty(), "{}", found.text());
    assert!(entries(&app.get("Observation").await.json()).is_empty());

    // The same transaction without the Observation goes through: the refusal was the scope's.
    let tx =
        json!({ "resourceType": "Bundle", "type": "transaction", "entry": [entry(marked, None)] });
    fhir_post(&app, &token, "", &tx).await.assert_status(200);
    assert_eq!(
        entries(&app.get("Patient?family=Outofscope-Canary").await.json()).len(),
        1
    );
}
