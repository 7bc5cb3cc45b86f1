//! `_include` and `_revinclude`, with `:iterate`, target types and wildcards (R4
//! search.html#include, #revinclude).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::{put_all, refs, search, search_url};
use crate::helpers::{TestApp, entries, link, spawn_app};

fn fixtures() -> Vec<Value> {
    let mr = |id: &str, patient: &str, requester: &str| {
        json!({ "resourceType": "MedicationRequest", "id": id, "status": "active",
                "intent": "order", "medicationCodeableConcept": { "text": "Aspirin" },
                "subject": { "reference": patient },
                "requester": { "reference": requester } })
    };
    let doctor = |id: &str| json!({ "resourceType": "Practitioner", "id": id });
    vec![
        doctor("dr-who"),
        doctor("dr-no"),
        doctor("dr-gp"),
        json!({ "resourceType": "Organization", "id": "org-1", "name": "Clinic" }),
        json!({ "resourceType": "Patient", "id": "pat-a",
                "generalPractitioner": [{ "reference": "Practitioner/dr-gp" }],
                "link": [{ "other": { "reference": "Patient/pat-b" }, "type": "seealso" }],
                "managingOrganization": { "reference": "Organization/org-1" } }),
        json!({ "resourceType": "Patient", "id": "pat-b",
                "link": [{ "other": { "reference": "Patient/pat-a" }, "type": "seealso" }] }),
        mr("mr-a", "Patient/pat-a", "Practitioner/dr-who"),
        mr("mr-b", "Patient/pat-b", "Practitioner/dr-no"),
        json!({ "resourceType": "Observation", "id": "obs-a", "status": "final",
                "code": { "text": "Weight" }, "subject": { "reference": "Patient/pat-a" },
                "performer": [{ "reference": "Practitioner/dr-who" }] }),
    ]
}

/// Rows of (query, matches, included), all written `Type/id`.
async fn check_includes(app: &TestApp, rows: &[(&str, &[&str], &[&str])]) {
    let set = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| (*s).to_owned()).collect() };
    let mut failures = Vec::new();
    for (query, matches, included) in rows {
        let resp = app.get_url(&search_url(app, query)).await;
        if resp.status != 200 {
            failures.push(format!(
                "{query}\n    status {}: {}",
                resp.status,
                resp.text()
            ));
            continue;
        }
        let bundle = resp.json();
        let got_matches: Vec<String> = refs(&bundle, "match");
        let got_included: Vec<String> = refs(&bundle, "include");
        let all: Vec<&String> = got_matches.iter().chain(&got_included).collect();
        let unique: BTreeSet<&&String> = all.iter().collect();
        if unique.len() != all.len() {
            failures.push(format!("{query}\n    a resource appears twice: {all:?}"));
        }
        let (got_m, got_i) = (
            got_matches.into_iter().collect::<BTreeSet<_>>(),
            got_included.into_iter().collect::<BTreeSet<_>>(),
        );
        if got_m != set(matches) || got_i != set(included) {
            failures.push(format!(
                "{query}\n    expected {:?} + included {:?}\n    got      {got_m:?} + included {got_i:?}",
                set(matches),
                set(included)
            ));
        }
        for e in entries(&bundle) {
            let expected_url = format!(
                "{}/{}/{}",
                app.base,
                e["resource"]["resourceType"].as_str().unwrap_or("?"),
                e["resource"]["id"].as_str().unwrap_or("?")
            );
            if e["search"]["mode"] != "outcome" && e["fullUrl"] != expected_url.as_str() {
                failures.push(format!("{query}\n    bad fullUrl in {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn include_follows_references_of_the_matches() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check_includes(
        &app,
        &[
            (
                "MedicationRequest?_id=mr-a&_include=MedicationRequest:patient",
                &["MedicationRequest/mr-a"],
                &["Patient/pat-a"],
            ),
            (
                "MedicationRequest?_include=MedicationRequest:patient&_include=MedicationRequest:requester",
                &["MedicationRequest/mr-a", "MedicationRequest/mr-b"],
                &[
                    "Patient/pat-a",
                    "Patient/pat-b",
                    "Practitioner/dr-who",
                    "Practitioner/dr-no",
                ],
            ),
            (
                "MedicationRequest?_id=mr-a&_include=MedicationRequest:subject:Patient",
                &["MedicationRequest/mr-a"],
                &["Patient/pat-a"],
            ),
            (
                "MedicationRequest?_id=mr-a&_include=MedicationRequest:subject:Group",
                &["MedicationRequest/mr-a"],
                &[],
            ),
            // A match is not repeated as an include.
            (
                "Patient?_include=Patient:link",
                &["Patient/pat-a", "Patient/pat-b"],
                &[],
            ),
            (
                "Patient?_id=pat-b&_include=Patient:link",
                &["Patient/pat-b"],
                &["Patient/pat-a"],
            ),
        ],
    )
    .await;
}

/// Without `:iterate` an include applies to the matches only; with it, to what was included
/// too (MedicationRequest -> Patient -> Practitioner).
#[tokio::test]
async fn include_iterate_follows_included_resources() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check_includes(
        &app,
        &[
            (
                "MedicationRequest?_id=mr-a&_include=MedicationRequest:subject&_include=Patient:general-practitioner",
                &["MedicationRequest/mr-a"],
                &["Patient/pat-a"],
            ),
            (
                "MedicationRequest?_id=mr-a&_include=MedicationRequest:subject&_include:iterate=Patient:general-practitioner",
                &["MedicationRequest/mr-a"],
                &["Patient/pat-a", "Practitioner/dr-gp"],
            ),
            (
                "MedicationRequest?_id=mr-a&_include=MedicationRequest:subject&_include:iterate=Patient:general-practitioner&_include:iterate=Patient:organization",
                &["MedicationRequest/mr-a"],
                &["Patient/pat-a", "Practitioner/dr-gp", "Organization/org-1"],
            ),
            // pat-a and pat-b link to each other: iterating ends.
            (
                "Patient?_id=pat-a&_include:iterate=Patient:link",
                &["Patient/pat-a"],
                &["Patient/pat-b"],
            ),
            (
                "Practitioner?_id=dr-gp&_revinclude=Patient:general-practitioner&_revinclude:iterate=MedicationRequest:subject",
                &["Practitioner/dr-gp"],
                &["Patient/pat-a", "MedicationRequest/mr-a"],
            ),
            (
                "Patient?_id=pat-a&_revinclude=MedicationRequest:subject&_include:iterate=MedicationRequest:requester",
                &["Patient/pat-a"],
                &["MedicationRequest/mr-a", "Practitioner/dr-who"],
            ),
        ],
    )
    .await;
}

/// `*` includes the targets of every reference parameter of the source type.
#[tokio::test]
async fn include_wildcard() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check_includes(
        &app,
        &[
            (
                "MedicationRequest?_id=mr-a&_include=MedicationRequest:*",
                &["MedicationRequest/mr-a"],
                &["Patient/pat-a", "Practitioner/dr-who"],
            ),
            (
                "MedicationRequest?_id=mr-a&_include=*",
                &["MedicationRequest/mr-a"],
                &["Patient/pat-a", "Practitioner/dr-who"],
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn revinclude_adds_the_resources_that_point_at_the_matches() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check_includes(
        &app,
        &[
            (
                "Patient?_id=pat-a&_revinclude=MedicationRequest:subject",
                &["Patient/pat-a"],
                &["MedicationRequest/mr-a"],
            ),
            (
                "Patient?_revinclude=MedicationRequest:subject",
                &["Patient/pat-a", "Patient/pat-b"],
                &["MedicationRequest/mr-a", "MedicationRequest/mr-b"],
            ),
            (
                "Patient?_id=pat-a&_revinclude=Observation:subject&_revinclude=MedicationRequest:patient",
                &["Patient/pat-a"],
                &["Observation/obs-a", "MedicationRequest/mr-a"],
            ),
            (
                "Practitioner?_id=dr-who&_revinclude=MedicationRequest:requester",
                &["Practitioner/dr-who"],
                &["MedicationRequest/mr-a"],
            ),
            (
                "Practitioner?_id=dr-who&_revinclude=Observation:performer&_revinclude=MedicationRequest:requester",
                &["Practitioner/dr-who"],
                &["MedicationRequest/mr-a", "Observation/obs-a"],
            ),
            (
                "Patient?_id=pat-b&_revinclude=Observation:subject",
                &["Patient/pat-b"],
                &[],
            ),
        ],
    )
    .await;
}

/// Included resources are context: they do not count in `total` (search.html#total) nor
/// against `_count`.
#[tokio::test]
async fn included_resources_do_not_count() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    let bundle = search(
        &app,
        "MedicationRequest?_include=MedicationRequest:patient&_include=MedicationRequest:requester&_total=accurate&_count=1",
    )
    .await;

    assert_eq!(bundle["total"], 2, "{bundle}");
    assert_eq!(refs(&bundle, "match").len(), 1, "{bundle}");
    assert_eq!(refs(&bundle, "include").len(), 2, "{bundle}");
}

/// Each page carries the includes of its own matches.
#[tokio::test]
async fn every_page_has_the_includes_of_its_matches() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;
    let patient_of = |mr: &str| match mr {
        "MedicationRequest/mr-a" => "Patient/pat-a",
        _ => "Patient/pat-b",
    };

    let mut url = Some(search_url(
        &app,
        "MedicationRequest?_include=MedicationRequest:patient&_count=1",
    ));
    let mut matched = Vec::new();
    while let Some(u) = url {
        let bundle = app.get_url(&u).await.json();
        let page = refs(&bundle, "match");
        assert_eq!(page.len(), 1, "{bundle}");
        assert_eq!(refs(&bundle, "include"), [patient_of(&page[0])], "{bundle}");
        matched.extend(page);
        url = link(&bundle, "next");
        assert!(matched.len() <= 2, "paging does not end");
    }
    matched.sort();
    assert_eq!(
        matched,
        ["MedicationRequest/mr-a", "MedicationRequest/mr-b"]
    );
}
