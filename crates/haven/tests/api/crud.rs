//! create, read, vread, HEAD, update, conditional update (If-Match) and delete
//! (R4 http.html#create, #read, #vread, #update, #concurrency, #delete).

use futures::future::join_all;
use reqwest::Method;
use reqwest::header::IF_MATCH;
use serde_json::json;

use crate::helpers::{
    assert_outcome, is_instant, observation, patient, spawn_app, with_id, with_json,
};

#[tokio::test]
async fn create_assigns_id_version_and_location() {
    let app = spawn_app().await;
    let mut sent = patient();
    sent["id"] = json!("client-chosen");
    sent["meta"] = json!({ "versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z" });

    let resp = app.post_json("Patient", &sent).await;

    resp.assert_status(201);
    let body = resp.json();
    let id = body["id"].as_str().expect("server id");
    assert_ne!(id, "client-chosen", "the client's id must be ignored");
    assert_eq!(body["meta"]["versionId"], "1");
    let last_updated = body["meta"]["lastUpdated"].as_str().unwrap();
    assert!(is_instant(last_updated), "{last_updated}");
    assert!(!last_updated.starts_with("2001"));
    assert_eq!(body["name"][0]["family"], "Chalmers");
    assert_eq!(
        resp.header("location"),
        Some(format!("{}/Patient/{id}/_history/1", app.base).as_str())
    );
    assert_eq!(resp.header("etag"), Some("W/\"1\""));
    assert!(resp.header("last-modified").unwrap().ends_with("GMT"));
    assert!(resp.content_type().starts_with("application/fhir+json"));
}

#[tokio::test]
async fn create_works_for_several_resource_types() {
    let app = spawn_app().await;
    let patient = app.create(&patient()).await;
    let subject = format!("Patient/{}", patient["id"].as_str().unwrap());
    let resources = [
        observation(&subject),
        json!({ "resourceType": "Encounter", "status": "finished",
                "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
                "subject": { "reference": subject } }),
        json!({ "resourceType": "Organization", "name": "Good Health Clinic" }),
        json!({ "resourceType": "Practitioner", "name": [{ "family": "Careful" }] }),
    ];
    for resource in resources {
        let ty = resource["resourceType"].as_str().unwrap();
        let created = app.create(&resource).await;
        assert_eq!(created["resourceType"], ty);
        let id = created["id"].as_str().unwrap();
        let read = app.get(&format!("{ty}/{id}")).await;
        read.assert_status(200);
        assert_eq!(read.json(), created, "{ty} reads back as created");
    }
}

#[tokio::test]
async fn read_and_vread_return_the_version_with_headers() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();

    let read = app.get(&format!("Patient/{id}")).await;
    read.assert_status(200);
    assert_eq!(read.json(), created);
    assert_eq!(read.header("etag"), Some("W/\"1\""));
    assert!(read.header("last-modified").is_some());

    let mut changed = created.clone();
    changed["active"] = json!(false);
    app.put(&changed).await;

    let v1 = app.get(&format!("Patient/{id}/_history/1")).await;
    v1.assert_status(200);
    assert_eq!(v1.json()["active"], true);
    assert_eq!(v1.header("etag"), Some("W/\"1\""));
    let v2 = app.get(&format!("Patient/{id}/_history/2")).await;
    assert_eq!(v2.json()["active"], false);
    assert_eq!(v2.header("etag"), Some("W/\"2\""));

    let missing = app.get(&format!("Patient/{id}/_history/3")).await;
    assert_outcome(&missing, 404, "not-found");
    let bad_version = app.get(&format!("Patient/{id}/_history/x")).await;
    assert_outcome(&bad_version, 400, "invalid");
}

#[tokio::test]
async fn head_has_the_headers_of_get_and_no_body() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());

    let get = app.get(&path).await;
    let head = app.send(app.request(Method::HEAD, &path)).await;

    head.assert_status(200);
    assert!(head.body.is_empty());
    for name in ["etag", "last-modified", "content-type"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }
    let missing = app.send(app.request(Method::HEAD, "Patient/nope")).await;
    missing.assert_status(404);
}

/// RFC 9110 section 9.3.2: a HEAD response's Content-Length, if sent, must be the GET length.
#[tokio::test]
async fn head_content_length_is_that_of_get() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());

    let get = app.get(&path).await;
    let head = app.send(app.request(Method::HEAD, &path)).await;

    if let Some(length) = head.header("content-length") {
        assert_eq!(
            length,
            get.body.len().to_string(),
            "HEAD announces a Content-Length that differs from the GET body"
        );
    }
}

#[tokio::test]
async fn reads_of_what_does_not_exist_are_explained() {
    let app = spawn_app().await;
    assert_outcome(&app.get("Patient/does-not-exist").await, 404, "not-found");
    assert_outcome(&app.get("Foo/1").await, 404, "not-supported");
    assert_outcome(&app.get("patient/1").await, 404, "not-supported");
    assert_outcome(&app.get("Patient/bad$id").await, 400, "invalid");
    let too_long = "a".repeat(65);
    assert_outcome(
        &app.get(&format!("Patient/{too_long}")).await,
        400,
        "invalid",
    );
}

#[tokio::test]
async fn update_creates_a_new_version() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    let mut changed = created.clone();
    changed["gender"] = json!("female");

    let resp = app.put_json(&format!("Patient/{id}"), &changed).await;

    resp.assert_status(200);
    let body = resp.json();
    assert_eq!(body["meta"]["versionId"], "2");
    assert_eq!(body["gender"], "female");
    assert_eq!(resp.header("etag"), Some("W/\"2\""));
    assert!(
        body["meta"]["lastUpdated"].as_str() > created["meta"]["lastUpdated"].as_str(),
        "lastUpdated must move forward"
    );
    assert_eq!(app.get(&format!("Patient/{id}")).await.json(), body);
}

#[tokio::test]
async fn update_as_create_uses_the_client_id() {
    let app = spawn_app().await;

    let resp = app
        .put_json("Patient/pat-42", &with_id(patient(), "pat-42"))
        .await;

    resp.assert_status(201);
    assert_eq!(resp.json()["id"], "pat-42");
    assert_eq!(resp.json()["meta"]["versionId"], "1");
    assert_eq!(
        resp.header("location"),
        Some(format!("{}/Patient/pat-42/_history/1", app.base).as_str())
    );
    app.get("Patient/pat-42").await.assert_status(200);
}

#[tokio::test]
async fn update_rejects_bodies_that_do_not_match_the_url() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "p1")).await;

    let mismatch = app.put_json("Patient/p1", &with_id(patient(), "p2")).await;
    assert_outcome(&mismatch, 400, "invalid");
    let missing_id = app.put_json("Patient/p1", &patient()).await;
    assert_outcome(&missing_id, 400, "invalid");
    let wrong_type = app
        .put_json("Patient/p1", &with_id(observation("Patient/p1"), "p1"))
        .await;
    assert_outcome(&wrong_type, 400, "invalid");

    let current = app.get("Patient/p1").await;
    assert_eq!(
        current.json()["meta"]["versionId"],
        "1",
        "nothing was written"
    );
}

#[tokio::test]
async fn if_match_guards_updates() {
    let app = spawn_app().await;
    let created = app.put(&with_id(patient(), "p1")).await;
    let put_if = |etag: &str| {
        with_json(app.request(Method::PUT, "Patient/p1"), &created).header(IF_MATCH, etag)
    };

    let ok = app.send(put_if("W/\"1\"")).await;
    ok.assert_status(200);
    assert_eq!(ok.header("etag"), Some("W/\"2\""));

    let stale = app.send(put_if("W/\"1\"")).await;
    assert_outcome(&stale, 412, "conflict");

    let malformed = app.send(put_if("yesterday")).await;
    assert_outcome(&malformed, 400, "invalid");

    let absent = app
        .send(
            with_json(
                app.request(Method::PUT, "Patient/nobody"),
                &with_id(patient(), "nobody"),
            )
            .header(IF_MATCH, "W/\"1\""),
        )
        .await;
    assert_outcome(&absent, 412, "conflict");
    assert_outcome(&app.get("Patient/nobody").await, 404, "not-found");
}

#[tokio::test]
async fn concurrent_if_match_updates_let_exactly_one_win() {
    let app = spawn_app().await;
    let created = app.put(&with_id(patient(), "contended")).await;

    let attempts = (0..10).map(|i| {
        let mut body = created.clone();
        body["name"][0]["family"] = json!(format!("Writer{i}"));
        let request = with_json(app.request(Method::PUT, "Patient/contended"), &body)
            .header(IF_MATCH, "W/\"1\"");
        app.send(request)
    });
    let statuses: Vec<u16> = join_all(attempts).await.iter().map(|r| r.status).collect();

    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        9,
        "{statuses:?}"
    );
    let history = app.get("Patient/contended/_history").await.json();
    assert_eq!(history["entry"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn delete_then_read_is_gone_but_history_remains() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("Patient/{id}");

    let deleted = app.delete(&path).await;
    deleted.assert_status(204);
    assert!(deleted.body.is_empty());

    assert_outcome(&app.get(&path).await, 410, "deleted");
    let old = app.get(&format!("{path}/_history/1")).await;
    old.assert_status(200);
    assert_eq!(old.json(), created);
    assert_outcome(
        &app.get(&format!("{path}/_history/2")).await,
        410,
        "deleted",
    );

    app.delete(&path).await.assert_status(204);
    app.delete("Patient/never-existed").await.assert_status(204);

    let recreated = app.put_json(&path, &created).await;
    recreated.assert_status(201);
    assert_eq!(recreated.json()["meta"]["versionId"], "3");
    assert_eq!(recreated.header("etag"), Some("W/\"3\""));
    assert!(recreated.header("location").is_some());
    app.get(&path).await.assert_status(200);
}

#[tokio::test]
async fn patch_applies_a_json_patch_as_a_new_version() {
    let app = spawn_app().await;
    let created = app.put(&with_id(patient(), "p1")).await;

    let resp = app
        .patch(
            "Patient/p1",
            &json!([
                { "op": "replace", "path": "/active", "value": false },
                { "op": "add", "path": "/name/0/given/-", "value": "Jim" },
                { "op": "add", "path": "/meta/versionId", "value": "77" }
            ]),
        )
        .await;

    resp.assert_status(200);
    assert_eq!(resp.header("etag"), Some("W/\"2\""));
    let body = resp.json();
    assert_eq!(body["active"], false);
    assert_eq!(body["name"][0]["given"], json!(["Peter", "James", "Jim"]));
    assert_eq!(body["meta"]["versionId"], "2", "versionId is the server's");
    assert_eq!(body["birthDate"], created["birthDate"]);
    assert_eq!(app.get("Patient/p1").await.json(), body);
}

#[tokio::test]
async fn patch_failures_are_explained_and_change_nothing() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "p1")).await;

    let invalid = app
        .patch(
            "Patient/p1",
            &json!([{ "op": "add", "path": "/colour", "value": "blue" }]),
        )
        .await;
    let oo = assert_outcome(&invalid, 400, "structure");
    assert_eq!(oo["issue"][0]["expression"][0], "Patient.colour");

    let change_id = app
        .patch(
            "Patient/p1",
            &json!([{ "op": "replace", "path": "/id", "value": "p2" }]),
        )
        .await;
    assert_outcome(&change_id, 422, "business-rule");

    let failed_test = app
        .patch(
            "Patient/p1",
            &json!([
                { "op": "test", "path": "/active", "value": false },
                { "op": "replace", "path": "/active", "value": false }
            ]),
        )
        .await;
    assert_outcome(&failed_test, 422, "business-rule");

    let not_a_patch = app.patch("Patient/p1", &json!({ "op": "replace" })).await;
    assert_outcome(&not_a_patch, 400, "invalid");

    let fhir_json = app
        .send(with_json(
            app.request(Method::PATCH, "Patient/p1"),
            &patient(),
        ))
        .await;
    assert_outcome(&fhir_json, 415, "not-supported");

    let missing = app
        .patch(
            "Patient/nobody",
            &json!([{ "op": "replace", "path": "/active", "value": false }]),
        )
        .await;
    assert_outcome(&missing, 404, "not-found");

    let stale = app
        .send(
            app.request(Method::PATCH, "Patient/p1")
                .header("content-type", "application/json-patch+json")
                .header(IF_MATCH, "W/\"7\"")
                .body(r#"[{"op":"replace","path":"/active","value":false}]"#),
        )
        .await;
    assert_outcome(&stale, 412, "conflict");

    let current = app.get("Patient/p1").await.json();
    assert_eq!(current["meta"]["versionId"], "1");
    assert_eq!(current["active"], true);

    let matching = app
        .send(
            app.request(Method::PATCH, "Patient/p1")
                .header("content-type", "application/json-patch+json")
                .header(IF_MATCH, "W/\"1\"")
                .body(r#"[{"op":"replace","path":"/active","value":false}]"#),
        )
        .await;
    matching.assert_status(200);
}

#[tokio::test]
async fn patch_of_a_deleted_resource_is_gone() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "p1")).await;
    app.delete("Patient/p1").await.assert_status(204);

    let resp = app
        .patch(
            "Patient/p1",
            &json!([{ "op": "replace", "path": "/active", "value": false }]),
        )
        .await;

    assert_outcome(&resp, 410, "deleted");
}

/// RFC 9110 section 13.1.1: a server that receives If-Match must evaluate it before performing
/// the method; a stale delete must not remove a version the client has not seen.
#[tokio::test]
async fn if_match_guards_deletes() {
    let app = spawn_app().await;
    let v1 = app.put(&with_id(patient(), "p1")).await;
    app.put(&v1).await;

    let stale = app
        .send(
            app.request(Method::DELETE, "Patient/p1")
                .header(IF_MATCH, "W/\"1\""),
        )
        .await;

    assert_outcome(&stale, 412, "conflict");
    app.get("Patient/p1").await.assert_status(200);
    let current = app
        .send(
            app.request(Method::DELETE, "Patient/p1")
                .header(IF_MATCH, "W/\"2\""),
        )
        .await;
    current.assert_status(204);
}

#[tokio::test]
async fn decimals_and_unicode_round_trip_exactly() {
    let app = spawn_app().await;
    // FHIR decimals keep their precision (datatypes.html#decimal): 72.50 is not 72.5.
    let body = r#"{"resourceType":"Observation","status":"final","code":{"text":"Gewicht – ½ kg ✓"},"valueQuantity":{"value":72.50,"unit":"kg"},"note":[{"text":"Zoë 日本語 👍"}]}"#;

    let resp = app
        .send(
            app.request(Method::POST, "Observation")
                .header("content-type", "application/fhir+json")
                .body(body),
        )
        .await;

    resp.assert_status(201);
    let id = resp.json()["id"].as_str().unwrap().to_owned();
    let read = app.get(&format!("Observation/{id}")).await.text();
    assert!(read.contains(r#""value":72.50"#), "{read}");
    assert!(
        read.contains("Gewicht – ½ kg ✓") && read.contains("Zoë 日本語 👍"),
        "{read}"
    );
}
