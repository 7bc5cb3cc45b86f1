//! Malformed requests and request limits. Every error is an OperationOutcome in FHIR JSON
//! that names the problem without leaking internals ([`TestApp::send`] checks both).

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::json;

use crate::helpers::{
    FHIR_JSON, TestApp, assert_is_outcome, assert_no_leak, assert_outcome, entries, observation,
    patient, raw_http, spawn_app, spawn_app_with,
};

async fn post_raw(app: &TestApp, path: &str, body: &str) -> crate::helpers::Resp {
    app.send(
        app.request(Method::POST, path)
            .header(CONTENT_TYPE, FHIR_JSON)
            .body(body.to_owned()),
    )
    .await
}

#[tokio::test]
async fn malformed_json_is_a_structure_error() {
    let app = spawn_app().await;
    let bodies = [
        r#"{"resourceType":"Patient""#,
        r#"{"resourceType":"Patient",}"#,
        r#"{"resourceType":"Patient"} trailing"#,
        "",
        "[]",
        "\"Patient\"",
    ];
    for body in bodies {
        let resp = post_raw(&app, "Patient", body).await;
        assert_outcome(&resp, 400, "structure");
    }
    let invalid_utf8 = app
        .send(
            app.request(Method::POST, "Patient")
                .header(CONTENT_TYPE, FHIR_JSON)
                .body(b"{\"resourceType\":\"Patient\",\"gender\":\"\xff\"}".to_vec()),
        )
        .await;
    assert_outcome(&invalid_utf8, 400, "structure");
}

#[tokio::test]
async fn duplicate_keys_are_rejected_at_any_depth() {
    let app = spawn_app().await;
    let top = r#"{"resourceType":"Patient","active":true,"active":false}"#;
    let nested = r#"{"resourceType":"Patient","name":[{"family":"A","family":"B"}]}"#;
    for body in [top, nested] {
        let oo = assert_outcome(&post_raw(&app, "Patient", body).await, 400, "structure");
        assert!(oo.to_string().contains("duplicate"), "{oo}");
    }
    assert!(entries(&app.get("_history").await.json()).is_empty());
}

#[tokio::test]
async fn nesting_deeper_than_the_limit_is_rejected() {
    let app = spawn_app_with(&[("HAVEN_LIMITS__MAX_JSON_DEPTH", "8")]).await;
    // Depth 7: Patient > extension[] > {} > extension[] > {} > extension[] > {}.
    let shallow = json!({
        "resourceType": "Patient",
        "extension": [{ "url": "http://e/a", "extension": [{ "url": "http://e/b",
            "extension": [{ "url": "http://e/c", "valueString": "x" }] }] }]
    });
    app.create(&shallow).await;

    let deep = format!(
        r#"{{"resourceType":"Patient","extension":[{}{}]}}"#,
        r#"{"url":"http://e/x","extension":["#.repeat(6),
        "]}".repeat(6)
    );
    let oo = assert_outcome(&post_raw(&app, "Patient", &deep).await, 400, "structure");
    assert!(oo.to_string().contains("deep"), "{oo}");

    let deep_patch = format!(
        "[{{\"op\":\"add\",\"path\":\"/x\",\"value\":{}1{}}}]",
        "[".repeat(10),
        "]".repeat(10)
    );
    let resp = app
        .send(
            app.request(Method::PATCH, "Patient/any")
                .header(CONTENT_TYPE, "application/json-patch+json")
                .body(deep_patch),
        )
        .await;
    assert_outcome(&resp, 400, "structure");
}

#[tokio::test]
async fn bodies_over_the_size_limit_are_too_large() {
    let app = spawn_app_with(&[("HAVEN_LIMITS__MAX_BODY_BYTES", "2048")]).await;
    let mut big = patient();
    big["name"][0]["family"] = json!("x".repeat(3000));
    let mut small = patient();
    small["name"][0]["family"] = json!("x".repeat(1500));

    assert_outcome(&app.post_json("Patient", &big).await, 413, "too-long");
    app.create(&small).await;
    let binary = app
        .send(
            app.request(Method::POST, "Binary")
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(vec![0_u8; 4096]),
        )
        .await;
    assert_outcome(&binary, 413, "too-long");

    // Without Content-Length (chunked), the limit applies while reading.
    let chunk = "x".repeat(3000);
    let body = format!(r#"{{"resourceType":"Patient","name":[{{"family":"{chunk}"}}]}}"#);
    let request = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: {}\r\nContent-Type: application/fhir+json\r\n\
         Authorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        app.addr,
        app.token,
        body.len()
    );
    let raw = raw_http(&app.addr, request.as_bytes()).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("too-long"), "{raw}");

    assert_eq!(entries(&app.get("Patient/_history").await.json()).len(), 1);
}

#[tokio::test]
async fn resource_type_must_match_the_url() {
    let app = spawn_app().await;
    let resp = app.post_json("Patient", &observation("Patient/1")).await;
    let oo = assert_outcome(&resp, 400, "invalid");
    assert!(oo.to_string().contains("Observation"), "{oo}");

    let untyped = app.post_json("Patient", &json!({ "active": true })).await;
    assert_outcome(&untyped, 400, "invalid");
    let unknown = app
        .post_json("Patient", &json!({ "resourceType": "Patientt" }))
        .await;
    assert_outcome(&unknown, 400, "invalid");
}

#[tokio::test]
async fn unsupported_methods_and_paths_are_refused() {
    let app = spawn_app().await;
    let cases = [
        (Method::OPTIONS, "Patient"),
        (Method::OPTIONS, "Patient/p1"),
        (Method::POST, "Patient/p1"),
        (Method::DELETE, "metadata"),
        (Method::PATCH, "Patient"),
        (Method::DELETE, "Patient/_history"),
        (Method::PUT, ""),
        (Method::from_bytes(b"BREW").unwrap(), "Patient"),
    ];
    for (method, path) in cases {
        let mut request = app.request(method.clone(), path);
        if method == Method::POST {
            request = request
                .header(CONTENT_TYPE, FHIR_JSON)
                .body(patient().to_string());
        }
        let resp = app.send(request).await;
        assert_outcome(&resp, 405, "not-supported");
    }
    assert_outcome(
        &app.get("Patient/p1/_history/1/extra").await,
        404,
        "not-found",
    );
    let outside = app.get_root("/admin").await;
    assert_outcome(&outside, 404, "not-found");
}

#[tokio::test]
async fn unknown_search_parameters_are_refused_under_strict_handling() {
    let app = spawn_app().await;
    let resp = app
        .send(
            app.request(Method::GET, "Patient?nonsense=1")
                .header("Prefer", "handling=strict"),
        )
        .await;
    let oo = assert_outcome(&resp, 400, "not-supported");
    assert!(oo.to_string().contains("nonsense"), "{oo}");
}

#[tokio::test]
async fn error_bodies_never_carry_internal_detail() {
    let app = spawn_app().await;
    // Inputs chosen to reach the parser, the router, the validator and the store.
    let probes = [
        app.request(Method::GET, "Patient/x'%20OR%20'1'='1"),
        app.request(Method::GET, "Patient/..%2F..%2Fetc%2Fpasswd"),
        app.request(Method::GET, "_history?_cursor=b99999999999999999999"),
        app.request(Method::GET, "Patient/p/_history/99999999999999999999"),
        app.request(Method::PUT, "Patient/p1")
            .header(CONTENT_TYPE, FHIR_JSON)
            .body(r#"{"resourceType":"Patient","id":"'; DROP TABLE resource; --"}"#),
        app.request(Method::PUT, "Patient/p1")
            .header(CONTENT_TYPE, FHIR_JSON)
            .body(r#"{"resourceType":"Patient","id":"p1","text":{"div":"<script>"}}"#),
    ];
    for probe in probes {
        let resp = app.send(probe).await;
        assert!(resp.status >= 400, "{}", resp.text());
        assert_no_leak(&resp);
        assert_is_outcome(&resp);
    }
}

/// RFC 9110 section 15.5.6: a 405 response must carry `Allow` with the methods that would work.
#[tokio::test]
async fn method_not_allowed_names_the_allowed_methods() {
    let app = spawn_app().await;
    let cases = [
        (
            Method::POST,
            "Patient/p1",
            &["GET", "PUT", "PATCH", "DELETE"][..],
            "POST",
        ),
        (
            Method::OPTIONS,
            "Patient/p1",
            &["GET", "PUT", "PATCH", "DELETE"][..],
            "POST",
        ),
        (Method::PATCH, "Patient", &["GET", "POST"][..], "PATCH"),
        (Method::DELETE, "metadata", &["GET"][..], "DELETE"),
    ];
    for (method, path, allowed, refused) in cases {
        let mut request = app.request(method.clone(), path);
        if method == Method::POST {
            request = request
                .header(CONTENT_TYPE, FHIR_JSON)
                .body(patient().to_string());
        }
        let resp = app.send(request).await;
        resp.assert_status(405);
        let allow = resp
            .header("allow")
            .unwrap_or_else(|| panic!("{method} {path}: 405 without an Allow header"));
        let listed: Vec<&str> = allow.split(',').map(str::trim).collect();
        for m in allowed {
            assert!(listed.contains(m), "{method} {path}: Allow: {allow}");
        }
        assert!(
            !listed.contains(&refused),
            "{method} {path}: Allow: {allow}"
        );
    }
}

#[tokio::test]
async fn json_patches_cannot_amplify_a_resource() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("Patient/{id}");
    // Copying the whole resource, or a value into itself, is refused outright.
    assert_outcome(
        &app.patch(
            &path,
            &json!([{"op": "copy", "from": "", "path": "/contained"}]),
        )
        .await,
        400,
        "invalid",
    );
    assert_outcome(
        &app.patch(
            &path,
            &json!([{"op": "copy", "from": "/name", "path": "/name/0/x"}]),
        )
        .await,
        400,
        "invalid",
    );
    // Too many operations.
    let many: Vec<_> = (0..101)
        .map(|_| json!({"op": "test", "path": "/resourceType", "value": "Patient"}))
        .collect();
    assert_outcome(&app.patch(&path, &json!(many)).await, 400, "invalid");
    // Doubling through sibling copies stops at the body-size limit: 422, and nothing changed.
    let mut doubling =
        vec![json!({"op": "add", "path": "/name/0/text", "value": "x".repeat(4000)})];
    for i in 0..40 {
        doubling.push(json!({"op": "copy", "from": "/name/0", "path": format!("/name/{}", i + 1)}));
    }
    let small = spawn_app_with(&[("HAVEN_LIMITS__MAX_BODY_BYTES", "65536")]).await;
    let created = small.create(&patient()).await;
    let sid = created["id"].as_str().unwrap();
    assert_outcome(
        &small
            .patch(&format!("Patient/{sid}"), &json!(doubling))
            .await,
        422,
        "business-rule",
    );
    let after = small.get(&format!("Patient/{sid}")).await;
    assert_eq!(
        after.json()["meta"]["versionId"],
        "1",
        "a refused patch changed the resource"
    );
}

#[tokio::test]
async fn conditional_headers_are_refused_not_ignored() {
    let app = spawn_app().await;
    let resp = app
        .send(
            app.request(Method::PUT, "Patient/p1")
                .header(CONTENT_TYPE, FHIR_JSON)
                .header("If-None-Match", "*")
                .body(json!({"resourceType": "Patient", "id": "p1"}).to_string()),
        )
        .await;
    assert_outcome(&resp, 400, "invalid");
    // Nothing was created behind the client's back.
    let history = app.get("Patient/_history").await.json();
    assert!(entries(&history).is_empty());
}

#[tokio::test]
async fn validation_reports_are_capped() {
    let app = spawn_app().await;
    let mut body = serde_json::Map::new();
    body.insert("resourceType".into(), json!("Patient"));
    for i in 0..500 {
        body.insert(format!("unknown{i}"), json!(1));
    }
    let resp = post_raw(
        &app,
        "Patient",
        &serde_json::Value::Object(body).to_string(),
    )
    .await;
    let oo = assert_outcome(&resp, 400, "structure");
    let issues = oo["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 101, "100 issues and one saying how many more");
    assert!(
        issues[100]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("400 more")
    );
}
