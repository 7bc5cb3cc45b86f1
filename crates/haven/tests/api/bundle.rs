//! Batch and transaction Bundles (R4 http.html#transaction, #trules).

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_outcome, entries, observation, patient, spawn_app, spawn_app_with, with_id,
};

const PATIENT_URN: &str = "urn:uuid:3c7a9f0e-1b2d-4e5f-8a6b-7c8d9e0f1a2b";

fn bundle(kind: &str, entry: Vec<Value>) -> Value {
    json!({ "resourceType": "Bundle", "type": kind, "entry": entry })
}

fn post(resource: Value, full_url: Option<&str>) -> Value {
    let ty = resource["resourceType"].as_str().unwrap().to_owned();
    let mut e = json!({ "resource": resource, "request": { "method": "POST", "url": ty } });
    if let Some(u) = full_url {
        e["fullUrl"] = json!(u);
    }
    e
}

fn put(resource: Value) -> Value {
    let url = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    json!({ "resource": resource, "request": { "method": "PUT", "url": url } })
}

fn request(method: &str, url: &str) -> Value {
    json!({ "request": { "method": method, "url": url } })
}

fn status(entry: &Value) -> &str {
    entry["response"]["status"].as_str().unwrap_or("")
}

/// Number of versions in a type's history (the write count since the server started).
async fn version_count(app: &TestApp, ty: &str) -> usize {
    entries(&app.get(&format!("{ty}/_history")).await.json()).len()
}

#[tokio::test]
async fn transaction_resolves_urn_references_and_answers_in_request_order() {
    let app = spawn_app().await;
    let tx = bundle(
        "transaction",
        vec![
            post(observation(PATIENT_URN), None),
            post(patient(), Some(PATIENT_URN)),
        ],
    );

    let resp = app.post_json("", &tx).await;

    resp.assert_status(200);
    let body = resp.json();
    assert_eq!(body["type"], "transaction-response");
    let list = entries(&body);
    assert_eq!(list.len(), 2);
    for (e, ty) in list.iter().zip(["Observation", "Patient"]) {
        assert!(status(e).starts_with("201"), "{e}");
        let location = e["response"]["location"].as_str().unwrap();
        assert!(location.contains(&format!("{ty}/")), "{location}");
        assert!(location.ends_with("/_history/1"), "{location}");
        assert_eq!(e["resource"]["resourceType"], ty);
    }
    let patient_id = list[1]["resource"]["id"].as_str().unwrap();
    let observation_id = list[0]["resource"]["id"].as_str().unwrap();
    let stored = app.get(&format!("Observation/{observation_id}")).await;
    stored.assert_status(200);
    assert_eq!(
        stored.json()["subject"]["reference"],
        format!("Patient/{patient_id}")
    );
    app.get(&format!("Patient/{patient_id}"))
        .await
        .assert_status(200);
}

#[tokio::test]
async fn failed_transaction_stores_nothing() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "keep")).await;
    app.put(&with_id(patient(), "stale")).await;
    app.put(&with_id(patient(), "stale")).await;
    let before = version_count(&app, "Patient").await;

    // The last entry names a version that is no longer current.
    let mut stale_put = put(with_id(patient(), "stale"));
    stale_put["request"]["ifMatch"] = json!("W/\"1\"");
    let tx = bundle(
        "transaction",
        vec![
            request("DELETE", "Patient/keep"),
            post(patient(), Some(PATIENT_URN)),
            post(observation(PATIENT_URN), None),
            put(with_id(patient(), "brand-new")),
            stale_put,
        ],
    );
    assert_outcome(&app.post_json("", &tx).await, 412, "conflict");

    // An invalid resource anywhere fails the whole transaction, listing every problem.
    let mut bad = observation("Patient/keep");
    bad.as_object_mut().unwrap().remove("status");
    let mut worse = patient();
    worse["birthDate"] = json!("31/12/1999");
    let tx = bundle(
        "transaction",
        vec![
            request("DELETE", "Patient/keep"),
            post(bad, None),
            post(worse, None),
        ],
    );
    let oo = assert_outcome(&app.post_json("", &tx).await, 400, "required");
    let text = oo.to_string();
    assert!(text.contains("Bundle.entry[1].resource.status"), "{text}");
    assert!(
        text.contains("Bundle.entry[2].resource.birthDate"),
        "{text}"
    );

    assert_eq!(version_count(&app, "Patient").await, before);
    assert_eq!(version_count(&app, "Observation").await, 0);
    app.get("Patient/keep").await.assert_status(200);
    assert_outcome(&app.get("Patient/brand-new").await, 404, "not-found");
}

#[tokio::test]
async fn transaction_runs_deletes_then_creates_then_updates_then_reads() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "doomed")).await;
    let mut changed = with_id(patient(), "p1");
    changed["gender"] = json!("female");

    let tx = bundle(
        "transaction",
        vec![
            request("GET", "Patient/p1"),
            put(changed),
            post(patient(), None),
            request("DELETE", "Patient/doomed"),
        ],
    );
    let resp = app.post_json("", &tx).await;

    resp.assert_status(200);
    let body = resp.json();
    let list = entries(&body);
    let statuses: Vec<&str> = list.iter().map(status).collect();
    assert_eq!(
        statuses,
        ["200 OK", "201 Created", "201 Created", "204 No Content"]
    );
    // The GET listed first ran after the PUT listed second, and saw its result.
    assert_eq!(list[0]["resource"]["gender"], "female");
    assert_eq!(list[0]["resource"]["meta"]["versionId"], "1");
    // History (newest first) shows the order the entries were applied in.
    let history = app.get("Patient/_history").await.json();
    let methods: Vec<&str> = entries(&history)
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["PUT", "POST", "DELETE", "PUT"]);
}

#[tokio::test]
async fn transaction_read_listed_before_a_delete_sees_the_deletion() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "doomed")).await;
    let tx = bundle(
        "transaction",
        vec![
            request("GET", "Patient/doomed"),
            request("DELETE", "Patient/doomed"),
        ],
    );

    let resp = app.post_json("", &tx).await;

    // The read ran after the delete, failed with 410, and so undid the delete.
    assert_outcome(&resp, 410, "deleted");
    app.get("Patient/doomed").await.assert_status(200);
}

#[tokio::test]
async fn transaction_touching_a_resource_twice_is_rejected() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "p1")).await;
    let twice = bundle(
        "transaction",
        vec![put(with_id(patient(), "p1")), put(with_id(patient(), "p1"))],
    );
    assert_outcome(&app.post_json("", &twice).await, 400, "invalid");
    let delete_and_put = bundle(
        "transaction",
        vec![
            request("DELETE", "Patient/p1"),
            put(with_id(patient(), "p1")),
        ],
    );
    assert_outcome(&app.post_json("", &delete_and_put).await, 400, "invalid");
    assert_eq!(version_count(&app, "Patient").await, 1);
}

#[tokio::test]
async fn transaction_with_an_unresolved_urn_is_rejected() {
    let app = spawn_app().await;
    let tx = bundle(
        "transaction",
        vec![
            post(patient(), None),
            post(
                observation("urn:uuid:00000000-0000-4000-8000-000000000000"),
                None,
            ),
        ],
    );

    let oo = assert_outcome(&app.post_json("", &tx).await, 400, "invalid");

    assert!(oo.to_string().contains("Bundle.entry[1]"), "{oo}");
    assert_eq!(version_count(&app, "Patient").await, 0);
}

#[tokio::test]
async fn transaction_can_patch_with_a_json_patch_binary() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "p1")).await;
    // base64 of [{"op":"replace","path":"/active","value":false}]
    let data = "W3sib3AiOiJyZXBsYWNlIiwicGF0aCI6Ii9hY3RpdmUiLCJ2YWx1ZSI6ZmFsc2V9XQ==";
    let tx = bundle(
        "transaction",
        vec![json!({
            "resource": { "resourceType": "Binary", "contentType": "application/json-patch+json", "data": data },
            "request": { "method": "PATCH", "url": "Patient/p1", "ifMatch": "W/\"1\"" }
        })],
    );

    let resp = app.post_json("", &tx).await;

    resp.assert_status(200);
    let body = resp.json();
    assert!(status(&entries(&body)[0]).starts_with("200"));
    assert_eq!(entries(&body)[0]["response"]["etag"], "W/\"2\"");
    let stored = app.get("Patient/p1").await.json();
    assert_eq!(stored["active"], false);
    assert_eq!(stored["meta"]["versionId"], "2");

    let history = app.get("Patient/p1/_history").await.json();
    assert_eq!(entries(&history)[0]["request"]["method"], "PATCH");

    let not_a_patch = bundle(
        "transaction",
        vec![json!({
            "resource": { "resourceType": "Binary", "contentType": "text/plain", "data": data },
            "request": { "method": "PATCH", "url": "Patient/p1" }
        })],
    );
    assert_outcome(&app.post_json("", &not_a_patch).await, 415, "not-supported");
}

#[tokio::test]
async fn batch_entries_succeed_or_fail_on_their_own() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "p1")).await;
    let mut invalid = patient();
    invalid["colour"] = json!("blue");
    let mut stale = put(with_id(patient(), "p1"));
    stale["request"]["ifMatch"] = json!("W/\"9\"");

    let batch = bundle(
        "batch",
        vec![
            request("GET", "Patient/p1"),
            request("GET", "Patient/missing"),
            post(invalid, None),
            post(patient(), None),
            stale,
            request("GET", "Patient/p1/_history"),
            json!({ "request": { "method": "TRACE", "url": "Patient" } }),
            request("GET", &format!("{}/Patient/p1", app.base)),
            request("GET", "https://elsewhere.example/fhir/Patient/p1"),
        ],
    );
    let resp = app.post_json("", &batch).await;

    resp.assert_status(200);
    let body = resp.json();
    assert_eq!(body["type"], "batch-response");
    let list = entries(&body);
    let statuses: Vec<&str> = list.iter().map(|e| &status(e)[..3]).collect();
    assert_eq!(
        statuses,
        [
            "200", "404", "400", "201", "412", "200", "400", "200", "400"
        ]
    );
    for failed in [1, 2, 4, 6, 8] {
        let outcome = &list[failed]["response"]["outcome"];
        assert_eq!(
            outcome["resourceType"], "OperationOutcome",
            "{}",
            list[failed]
        );
        assert!(list[failed].get("resource").is_none());
    }
    assert_eq!(
        list[2]["response"]["outcome"]["issue"][0]["expression"][0],
        "Patient.colour"
    );
    assert_eq!(list[5]["resource"]["type"], "history");
    let created = list[3]["resource"]["id"].as_str().unwrap();
    app.get(&format!("Patient/{created}"))
        .await
        .assert_status(200);
    assert_eq!(version_count(&app, "Patient").await, 2);
}

#[tokio::test]
async fn bundles_over_the_entry_limit_are_too_large() {
    let app = spawn_app_with(&[("HAVEN_LIMITS__MAX_BUNDLE_ENTRIES", "3")]).await;
    let creates = |n: usize| (0..n).map(|_| post(patient(), None)).collect::<Vec<_>>();

    for kind in ["transaction", "batch"] {
        let resp = app.post_json("", &bundle(kind, creates(4))).await;
        assert_outcome(&resp, 413, "too-long");
    }
    assert_eq!(version_count(&app, "Patient").await, 0);
    app.post_json("", &bundle("transaction", creates(3)))
        .await
        .assert_status(200);
}

#[tokio::test]
async fn only_batch_and_transaction_bundles_are_processed() {
    let app = spawn_app().await;
    for kind in ["collection", "searchset", "history", "document"] {
        let resp = app.post_json("", &bundle(kind, vec![])).await;
        assert_outcome(&resp, 400, "invalid");
    }
    let untyped = json!({ "resourceType": "Bundle" });
    assert_outcome(&app.post_json("", &untyped).await, 400, "invalid");
    assert_outcome(&app.post_json("", &patient()).await, 400, "invalid");
    let no_entries = json!({ "resourceType": "Bundle", "type": "transaction" });
    let empty = app.post_json("", &no_entries).await;
    empty.assert_status(200);
    assert_eq!(empty.json()["type"], "transaction-response");
}

/// An entry's `request.ifMatch` is a precondition like the If-Match header, for deletes too.
#[tokio::test]
async fn transaction_delete_honours_if_match() {
    let app = spawn_app().await;
    let v1 = app.put(&with_id(patient(), "p1")).await;
    app.put(&v1).await;
    let mut delete = request("DELETE", "Patient/p1");
    delete["request"]["ifMatch"] = json!("W/\"1\"");

    let resp = app
        .post_json("", &bundle("transaction", vec![delete]))
        .await;

    assert_outcome(&resp, 412, "conflict");
    app.get("Patient/p1").await.assert_status(200);
}

#[tokio::test]
async fn batch_entries_that_depend_on_each_other_are_refused() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap();
    let put = |active: bool| {
        let mut p = with_id(patient(), id);
        p["active"] = json!(active);
        json!({"resource": p, "request": {"method": "PUT", "url": format!("Patient/{id}")}})
    };
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [put(true), put(false)]
    });
    let resp = app.post_json("", &bundle).await;
    resp.assert_status(200);
    let out = resp.json();
    let statuses: Vec<&str> = entries(&out)
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["200 OK", "400 Bad Request"]);
    // The first entry won, deterministically.
    let now = app.get(&format!("Patient/{id}")).await.json();
    assert_eq!(now["active"], true);
    assert_eq!(now["meta"]["versionId"], "2");
}
