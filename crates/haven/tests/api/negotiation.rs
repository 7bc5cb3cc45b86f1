//! Content negotiation (`_format`, `Accept`, `Content-Type`, `_pretty`) and `Prefer: return=`
//! (R4 http.html#mime-type, #ops).

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::json;

use crate::helpers::{FHIR_JSON, assert_outcome, patient, spawn_app, with_id, with_json};

#[tokio::test]
async fn asking_for_xml_is_not_acceptable() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "p1")).await;

    for format in ["xml", "application/fhir+xml", "ttl", "text/html"] {
        let resp = app
            .send(
                app.request(Method::GET, "Patient/p1")
                    .query(&[("_format", format)]),
            )
            .await;
        assert_outcome(&resp, 406, "not-supported");
    }
    for accept in [
        "application/fhir+xml",
        "application/xml",
        "application/fhir+json; fhirVersion=5.0",
        "application/fhir+json;q=0",
    ] {
        let resp = app
            .send(
                app.request(Method::GET, "Patient/p1")
                    .header(ACCEPT, accept),
            )
            .await;
        assert_outcome(&resp, 406, "not-supported");
    }
}

#[tokio::test]
async fn json_flavours_are_served_with_the_asked_content_type() {
    let app = spawn_app().await;
    let stored = app.put(&with_id(patient(), "p1")).await;
    let get = |accept: &'static str| {
        app.send(
            app.request(Method::GET, "Patient/p1")
                .header(ACCEPT, accept),
        )
    };

    let plain = get("application/json").await;
    plain.assert_status(200);
    assert!(
        plain.content_type().starts_with("application/json"),
        "{}",
        plain.content_type()
    );
    assert_eq!(plain.json(), stored);

    for accept in [
        FHIR_JSON,
        "application/fhir+json; fhirVersion=4.0",
        "*/*",
        "text/html, */*;q=0.8",
    ] {
        let resp = get(accept).await;
        resp.assert_status(200);
        assert!(
            resp.content_type().starts_with(FHIR_JSON),
            "{accept}: {}",
            resp.content_type()
        );
    }

    // _format wins over Accept.
    let resp = app
        .send(
            app.request(Method::GET, "Patient/p1")
                .query(&[("_format", "json")])
                .header(ACCEPT, "application/fhir+xml"),
        )
        .await;
    resp.assert_status(200);
    assert!(resp.content_type().starts_with(FHIR_JSON));
    assert_eq!(resp.json(), stored);
}

#[tokio::test]
async fn request_bodies_must_be_fhir_json() {
    let app = spawn_app().await;
    let body = patient().to_string();

    let xml = app
        .send(
            app.request(Method::POST, "Patient")
                .header(CONTENT_TYPE, "application/xml")
                .body("<Patient xmlns=\"http://hl7.org/fhir\"/>"),
        )
        .await;
    assert_outcome(&xml, 415, "not-supported");

    let missing = app
        .send(app.request(Method::POST, "Patient").body(body.clone()))
        .await;
    assert_outcome(&missing, 415, "not-supported");

    let latin1 = app
        .send(
            app.request(Method::POST, "Patient")
                .header(CONTENT_TYPE, "application/fhir+json; charset=latin1")
                .body(body.clone()),
        )
        .await;
    assert_outcome(&latin1, 415, "not-supported");

    let patch_type = app
        .send(
            app.request(Method::POST, "Patient")
                .header(CONTENT_TYPE, "application/json-patch+json")
                .body(body.clone()),
        )
        .await;
    assert_outcome(&patch_type, 415, "not-supported");

    for accepted in ["application/json", "application/fhir+json; charset=utf-8"] {
        let resp = app
            .send(
                app.request(Method::POST, "Patient")
                    .header(CONTENT_TYPE, accepted)
                    .body(body.clone()),
            )
            .await;
        resp.assert_status(201);
    }
}

#[tokio::test]
async fn pretty_output_is_indented_on_request() {
    let app = spawn_app().await;
    let stored = app.put(&with_id(patient(), "p1")).await;

    let pretty = app.get("Patient/p1?_pretty=true").await;
    pretty.assert_status(200);
    assert!(pretty.text().contains("\n  "), "{}", pretty.text());
    assert_eq!(pretty.json(), stored);

    let compact = app.get("Patient/p1").await;
    assert!(!compact.text().contains('\n'));

    let pretty_error = app.get("Patient/nobody?_pretty=true").await;
    pretty_error.assert_status(404);
    assert!(pretty_error.text().contains("\n  "));
}

#[tokio::test]
async fn prefer_return_shapes_write_responses() {
    let app = spawn_app().await;
    let prefer = |method: Method, path: &str, body: &serde_json::Value, value: &str| {
        with_json(app.request(method, path), body).header("prefer", format!("return={value}"))
    };

    let minimal = app
        .send(prefer(Method::POST, "Patient", &patient(), "minimal"))
        .await;
    minimal.assert_status(201);
    assert!(minimal.body.is_empty(), "{}", minimal.text());
    assert_eq!(minimal.header("etag"), Some("W/\"1\""));
    let location = minimal.header("location").expect("Location").to_owned();
    let id = location.split('/').rev().nth(2).unwrap().to_owned();
    let path = format!("Patient/{id}");

    let stored = app.get(&path).await.json();
    let updated = app
        .send(prefer(Method::PUT, &path, &stored, "minimal"))
        .await;
    updated.assert_status(200);
    assert!(updated.body.is_empty());
    assert_eq!(updated.header("etag"), Some("W/\"2\""));

    let outcome = app
        .send(prefer(Method::PUT, &path, &stored, "OperationOutcome"))
        .await;
    outcome.assert_status(200);
    let oo = outcome.json();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["severity"], "information");
    assert_eq!(outcome.header("etag"), Some("W/\"3\""));

    for value in ["representation", "bogus"] {
        let full = app.send(prefer(Method::PUT, &path, &stored, value)).await;
        full.assert_status(200);
        assert_eq!(full.json()["resourceType"], "Patient", "return={value}");
    }
    // A read is never shortened.
    let read = app
        .send(
            app.request(Method::GET, &path)
                .header("prefer", "return=minimal"),
        )
        .await;
    assert_eq!(read.json()["meta"]["versionId"], "5");

    let created = app
        .send(prefer(
            Method::POST,
            "Patient",
            &json!({ "resourceType": "Patient" }),
            "OperationOutcome",
        ))
        .await;
    created.assert_status(201);
    assert_eq!(created.json()["resourceType"], "OperationOutcome");
    assert!(created.header("location").is_some());
}
