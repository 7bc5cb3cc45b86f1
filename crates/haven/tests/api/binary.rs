//! Binary resources with native content (R4 http.html#binary, binary.html).

use reqwest::Method;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::helpers::{Resp, TestApp, assert_outcome, spawn_app};

/// Not valid UTF-8, with NUL bytes: must come back byte for byte.
const PDF: &[u8] = b"%PDF-1.4\n\x00\x01\x02\xff\xfe binary \x80\x81 content\n%%EOF";

/// Uploads `PDF` as raw bytes; returns the response and the new id.
async fn upload(app: &TestApp) -> (Resp, String) {
    let resp = app
        .send(
            app.request(Method::POST, "Binary")
                .header(CONTENT_TYPE, "application/pdf")
                .body(PDF.to_vec()),
        )
        .await;
    resp.assert_status(201);
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    (resp, id)
}

#[track_caller]
fn assert_native_pdf(resp: &Resp) {
    resp.assert_status(200);
    assert_eq!(resp.body, PDF);
    assert_eq!(resp.content_type(), "application/pdf");
    let csp = resp.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("sandbox"), "{csp}");
    assert!(resp.header("last-modified").is_some());
    assert_eq!(resp.header("etag"), Some("W/\"1\""));
}

#[tokio::test]
async fn raw_upload_creates_a_binary_resource() {
    let app = spawn_app().await;

    let (resp, id) = upload(&app).await;

    let body = resp.json();
    assert_eq!(body["resourceType"], "Binary");
    assert_eq!(body["contentType"], "application/pdf");
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["data"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(
        resp.header("location"),
        Some(format!("{}/Binary/{id}/_history/1", app.base).as_str())
    );
}

#[tokio::test]
async fn binary_read_without_a_fhir_accept_returns_the_exact_bytes() {
    let app = spawn_app().await;
    let (_, id) = upload(&app).await;

    // reqwest sends `Accept: */*` unless told otherwise.
    let any = app.get(&format!("Binary/{id}")).await;
    assert_native_pdf(&any);
    let vread = app.get(&format!("Binary/{id}/_history/1")).await;
    assert_native_pdf(&vread);
    let wildcard = app
        .send(
            app.request(Method::GET, &format!("Binary/{id}"))
                .header(ACCEPT, "application/*"),
        )
        .await;
    assert_native_pdf(&wildcard);

    let image = app
        .send(
            app.request(Method::GET, &format!("Binary/{id}"))
                .header(ACCEPT, "image/*"),
        )
        .await;
    assert_outcome(&image, 406, "not-supported");
}

#[tokio::test]
async fn binary_read_with_its_own_content_type_in_accept_returns_the_bytes() {
    let app = spawn_app().await;
    let (_, id) = upload(&app).await;

    let resp = app
        .send(
            app.request(Method::GET, &format!("Binary/{id}"))
                .header(ACCEPT, "application/pdf"),
        )
        .await;

    assert_native_pdf(&resp);
}

#[tokio::test]
async fn binary_read_with_a_fhir_accept_returns_the_resource() {
    let app = spawn_app().await;
    let (created, id) = upload(&app).await;

    for ask in [
        app.request(Method::GET, &format!("Binary/{id}"))
            .header(ACCEPT, "application/fhir+json"),
        app.request(Method::GET, &format!("Binary/{id}"))
            .query(&[("_format", "json")]),
    ] {
        let resp = app.send(ask).await;
        resp.assert_status(200);
        assert!(resp.content_type().starts_with("application/fhir+json"));
        assert_eq!(resp.json(), created.json());
        assert!(resp.header("last-modified").is_some());
    }
}

#[tokio::test]
async fn binary_update_replaces_the_content() {
    let app = spawn_app().await;
    let (_, id) = upload(&app).await;

    let resp = app
        .send(
            app.request(Method::PUT, &format!("Binary/{id}"))
                .header(CONTENT_TYPE, "text/plain")
                .body("version two"),
        )
        .await;

    resp.assert_status(200);
    assert_eq!(resp.header("etag"), Some("W/\"2\""));
    let read = app.get(&format!("Binary/{id}")).await;
    assert_eq!(read.text(), "version two");
    assert_eq!(read.content_type(), "text/plain");

    // The security context travels in a header and is stored as a reference.
    let guarded = app
        .send(
            app.request(Method::POST, "Binary")
                .header(CONTENT_TYPE, "image/png")
                .header("x-security-context", "Patient/p1")
                .body(vec![0x89, b'P', b'N', b'G']),
        )
        .await;
    guarded.assert_status(201);
    assert_eq!(guarded.json()["securityContext"]["reference"], "Patient/p1");

    // Only Binary takes non-JSON content.
    let pdf_patient = app
        .send(
            app.request(Method::POST, "Patient")
                .header(CONTENT_TYPE, "application/pdf")
                .body(PDF.to_vec()),
        )
        .await;
    assert_outcome(&pdf_patient, 415, "not-supported");
}
