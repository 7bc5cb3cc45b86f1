//! The parameters every resource has (`_id`, `_lastUpdated`, `_tag`, `_profile`,
//! `_security`, `_source`; R4 search.html#all) and system-level search with `_type`
//! (http.html#search).

use std::time::Duration;

use serde_json::{Value, json};

use super::{check, ids, put_all, search};
use crate::helpers::{TestApp, spawn_app};

const TAGS: &str = "http://tags.example";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const PROFILE: &str = "http://example.org/StructureDefinition/special-patient";

fn fixtures() -> Vec<Value> {
    vec![
        json!({ "resourceType": "Patient", "id": "t1", "name": [{ "family": "Tagged" }],
                "meta": { "tag": [{ "system": TAGS, "code": "vip" }],
                          "profile": [PROFILE],
                          "security": [{ "system": CONFIDENTIALITY, "code": "R" }],
                          "source": "http://source.example/app-a#req-1" } }),
        json!({ "resourceType": "Patient", "id": "t2",
                "meta": { "tag": [{ "system": TAGS, "code": "test" },
                                  { "system": "http://other-tags.example", "code": "vip" }],
                          "security": [{ "system": CONFIDENTIALITY, "code": "N" }],
                          "source": "http://source.example/app-b" } }),
        json!({ "resourceType": "Patient", "id": "t3" }),
        json!({ "resourceType": "Organization", "id": "o1", "name": "Acme Clinic",
                "meta": { "tag": [{ "system": TAGS, "code": "vip" }] } }),
        json!({ "resourceType": "Practitioner", "id": "pr1", "name": [{ "family": "Acmeson" }] }),
    ]
}

#[tokio::test]
async fn tag_profile_security_source_and_id() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check(
        &app,
        &[
            ("Patient?_tag=vip", &["t1", "t2"]),
            ("Patient?_tag=http://tags.example|vip", &["t1"]),
            ("Patient?_tag=http://tags.example|", &["t1", "t2"]),
            ("Patient?_tag:not=http://tags.example|vip", &["t2", "t3"]),
            (
                "Patient?_profile=http://example.org/StructureDefinition/special-patient",
                &["t1"],
            ),
            (
                "Patient?_profile=http://example.org/StructureDefinition/other",
                &[],
            ),
            (
                "Patient?_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R",
                &["t1"],
            ),
            ("Patient?_security=N", &["t2"]),
            ("Patient?_source=http://source.example/app-b", &["t2"]),
            ("Patient?_source=http://source.example/app-a#req-1", &["t1"]),
            ("Patient?_source=http://source.example/app-a", &[]),
            ("Patient?_id=t1,t3", &["t1", "t3"]),
            ("Patient?_id=o1", &[]),
        ],
    )
    .await;
}

#[tokio::test]
async fn system_level_search_with_and_without_type() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check(
        &app,
        &[
            (
                "?_tag=http://tags.example|vip",
                &["Patient/t1", "Organization/o1"],
            ),
            ("?_type=Organization&_tag=vip", &["Organization/o1"]),
            ("?_type=Organization", &["Organization/o1"]),
            ("?_id=o1", &["Organization/o1"]),
            (
                "?_type=Patient,Organization&_id=t1,o1,pr1",
                &["Patient/t1", "Organization/o1"],
            ),
            // A parameter the listed types share.
            (
                "?_type=Organization,Practitioner&name=acme",
                &["Organization/o1", "Practitioner/pr1"],
            ),
            // With one type, all of its parameters.
            ("?_type=Patient&family=tagged", &["Patient/t1"]),
        ],
    )
    .await;
}

/// Creates `resource` and returns its `meta.lastUpdated`, after a pause so that the next
/// write gets a later instant.
async fn stamped(app: &TestApp, resource: Value) -> String {
    let stored = app.put(&resource).await;
    tokio::time::sleep(Duration::from_millis(15)).await;
    stored["meta"]["lastUpdated"].as_str().unwrap().to_owned()
}

/// `_lastUpdated` is a date parameter on `meta.lastUpdated`: an instant is its own precise
/// range. Organizations written in between give boundaries no patient shares.
#[tokio::test]
async fn last_updated_with_prefixes() {
    let app = spawn_app().await;
    let org = |id: &str| json!({ "resourceType": "Organization", "id": id });
    let patient = |id: &str| json!({ "resourceType": "Patient", "id": id });
    stamped(&app, patient("l1")).await;
    let m1 = stamped(&app, org("m1")).await;
    let l2 = stamped(&app, patient("l2")).await;
    let m2 = stamped(&app, org("m2")).await;
    stamped(&app, patient("l3")).await;
    let q = |prefix: &str, at: &str| format!("Patient?_lastUpdated={prefix}{at}");
    let rows = [
        (q("gt", &m1), vec!["l2", "l3"]),
        (q("lt", &m1), vec!["l1"]),
        (q("eb", &m1), vec!["l1"]),
        (q("sa", &m2), vec!["l3"]),
        (
            format!("Patient?_lastUpdated=ge{m1}&_lastUpdated=le{m2}"),
            vec!["l2"],
        ),
        (q("", &l2), vec!["l2"]),
        (q("eq", &l2), vec!["l2"]),
        (q("ne", &l2), vec!["l1", "l3"]),
        (q("gt", "2000-01-01"), vec!["l1", "l2", "l3"]),
        (q("lt", "2000-01-01"), vec![]),
        (q("", "2000"), vec![]),
        (
            format!("?_type=Patient,Organization&_lastUpdated=gt{m1}"),
            vec!["Patient/l2", "Organization/m2", "Patient/l3"],
        ),
    ];
    let rows: Vec<(&str, &[&str])> = rows
        .iter()
        .map(|(q, e)| (q.as_str(), e.as_slice()))
        .collect();

    check(&app, &rows).await;
    let newest_first = ids(&search(&app, "Patient?_sort=-_lastUpdated").await);
    assert_eq!(newest_first, ["l3", "l2", "l1"]);
}
