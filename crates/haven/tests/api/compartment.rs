//! Patient compartment search and `Patient/[id]/$everything` (R4 compartmentdefinition.html,
//! CompartmentDefinition-patient, patient-operation-everything.html).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_outcome, entries, link, spawn_app, with_id};

fn observation(id: &str, code: &str, subject: &str) -> Value {
    json!({ "resourceType": "Observation", "id": id, "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": code }] },
            "subject": { "reference": subject } })
}

/// Two patients and what belongs to each. `obs-b-perf-a` is about pat-b but performed by
/// pat-a, so it is in both compartments (Observation is in the Patient compartment through
/// `subject` and `performer`).
fn fixtures() -> Vec<Value> {
    let mut performed = observation("obs-b-perf-a", "8867-4", "Patient/pat-b");
    performed["performer"] = json!([{ "reference": "Patient/pat-a" }]);
    vec![
        json!({ "resourceType": "Patient", "id": "pat-a", "name": [{ "family": "Alpha" }] }),
        json!({ "resourceType": "Patient", "id": "pat-b", "name": [{ "family": "Beta" }] }),
        json!({ "resourceType": "Organization", "id": "org-1", "name": "Unrelated" }),
        json!({ "resourceType": "Practitioner", "id": "dr-1" }),
        observation("obs-a-weight", "29463-7", "Patient/pat-a"),
        observation("obs-a-height", "8302-2", "Patient/pat-a"),
        observation("obs-b-weight", "29463-7", "Patient/pat-b"),
        performed,
        json!({ "resourceType": "Encounter", "id": "enc-a", "status": "finished",
                "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
                "subject": { "reference": "Patient/pat-a" } }),
        json!({ "resourceType": "MedicationRequest", "id": "mr-a", "status": "active",
                "intent": "order", "medicationCodeableConcept": { "text": "Aspirin" },
                "subject": { "reference": "Patient/pat-a" } }),
    ]
}

async fn app_with_fixtures() -> TestApp {
    let app = spawn_app().await;
    for f in fixtures() {
        app.put(&f).await;
    }
    app
}

/// `Type/id` of every resource entry (not outcomes) of a Bundle.
fn resources(bundle: &Value) -> Vec<String> {
    entries(bundle)
        .iter()
        .filter(|e| e["search"]["mode"] != "outcome")
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or("?"),
                e["resource"]["id"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Pages through a searchset from `path` (`$everything` or a search), returning every
/// resource seen, in order.
async fn everything(app: &TestApp, path: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut next = Some(app.url(path));
    let mut pages = 0;
    while let Some(url) = next {
        let resp = app.get_url(&url).await;
        resp.assert_status(200);
        let bundle = resp.json();
        assert_eq!(bundle["type"], "searchset", "{bundle}");
        seen.extend(resources(&bundle));
        next = link(&bundle, "next");
        pages += 1;
        assert!(pages < 50, "paging does not end");
    }
    seen
}

#[tokio::test]
async fn compartment_search_returns_only_the_patients_resources() {
    let app = app_with_fixtures().await;
    let rows: &[(&str, &[&str])] = &[
        (
            "Patient/pat-a/Observation",
            &["obs-a-weight", "obs-a-height", "obs-b-perf-a"],
        ),
        ("Patient/pat-a/Observation?code=29463-7", &["obs-a-weight"]),
        ("Patient/pat-a/Observation?code=8867-4", &["obs-b-perf-a"]),
        ("Patient/pat-b/Observation?code=29463-7", &["obs-b-weight"]),
        (
            "Patient/pat-b/Observation",
            &["obs-b-weight", "obs-b-perf-a"],
        ),
        (
            "Patient/pat-a/Observation?subject:Patient.name=beta",
            &["obs-b-perf-a"],
        ),
        ("Patient/pat-a/Encounter", &["enc-a"]),
        ("Patient/pat-b/Encounter", &[]),
        ("Patient/pat-a/MedicationRequest", &["mr-a"]),
        ("Patient/pat-a/Patient", &["pat-a"]),
    ];
    let mut failures = Vec::new();
    for (path, expected) in rows {
        let resp = app.get(path).await;
        if resp.status != 200 {
            failures.push(format!("{path}: status {} {}", resp.status, resp.text()));
            continue;
        }
        let got: BTreeSet<String> = entries(&resp.json())
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap_or("?").to_owned())
            .collect();
        if got != set(expected) {
            failures.push(format!("{path}: expected {:?}, got {got:?}", set(expected)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn compartment_search_pages() {
    let app = app_with_fixtures().await;

    let paged = everything(&app, "Patient/pat-a/Observation?_count=1").await;

    let mut sorted = paged.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "Observation/obs-a-height",
            "Observation/obs-a-weight",
            "Observation/obs-b-perf-a"
        ],
        "{paged:?}"
    );
}

/// A type that cannot be in the Patient compartment is a client error, not an empty result.
#[tokio::test]
async fn types_outside_the_compartment_are_refused() {
    let app = app_with_fixtures().await;

    for path in ["Patient/pat-a/Organization", "Patient/pat-a/Practitioner"] {
        let resp = app.get(path).await;
        assert_eq!(resp.status, 400, "{path}: {}", resp.text());
    }
}

/// patient-operation-everything: the patient and everything in its compartment (plus, at the
/// server's choice, resources those refer to); nothing of the other patient's own and
/// nothing unrelated.
#[tokio::test]
async fn everything_returns_the_patient_and_its_compartment() {
    let app = app_with_fixtures().await;

    let seen = everything(&app, "Patient/pat-a/$everything").await;

    let got: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(got.len(), seen.len(), "an entry is repeated: {seen:?}");
    let must = set(&[
        "Patient/pat-a",
        "Observation/obs-a-weight",
        "Observation/obs-a-height",
        "Observation/obs-b-perf-a",
        "Encounter/enc-a",
        "MedicationRequest/mr-a",
    ]);
    assert!(
        got.is_superset(&must),
        "missing {:?}",
        must.difference(&got)
    );
    for never in [
        "Observation/obs-b-weight",
        "Organization/org-1",
        "Practitioner/dr-1",
    ] {
        assert!(!got.contains(never), "{never} in {got:?}");
    }
}

#[tokio::test]
async fn everything_with_type_and_count() {
    let app = app_with_fixtures().await;

    let typed = everything(
        &app,
        "Patient/pat-a/$everything?_type=Observation,Encounter",
    )
    .await;
    let typed: BTreeSet<String> = typed.into_iter().collect();
    assert_eq!(
        typed,
        set(&[
            "Observation/obs-a-weight",
            "Observation/obs-a-height",
            "Observation/obs-b-perf-a",
            "Encounter/enc-a",
        ])
    );

    let whole = everything(&app, "Patient/pat-a/$everything").await;
    let first = app.get("Patient/pat-a/$everything?_count=2").await.json();
    assert_eq!(
        entries(&first)
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .count(),
        2,
        "{first}"
    );
    let paged = everything(&app, "Patient/pat-a/$everything?_count=2").await;
    assert_eq!(
        paged.iter().collect::<BTreeSet<_>>().len(),
        paged.len(),
        "an entry is repeated across pages: {paged:?}"
    );
    assert_eq!(
        paged.into_iter().collect::<BTreeSet<_>>(),
        whole.into_iter().collect::<BTreeSet<_>>()
    );
}

/// `_since`: only what changed after the instant.
#[tokio::test]
async fn everything_since() {
    let app = app_with_fixtures().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let marker = app
        .put(&json!({ "resourceType": "Organization", "id": "marker" }))
        .await;
    let since = marker["meta"]["lastUpdated"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.put(&observation("obs-a-late", "8310-5", "Patient/pat-a"))
        .await;
    let mut enc = app.get("Encounter/enc-a").await.json();
    enc["status"] = json!("cancelled");
    app.put(&with_id(enc, "enc-a")).await;

    let url = format!(
        "Patient/pat-a/$everything?_since={}",
        since.replace('+', "%2B")
    );
    let got: BTreeSet<String> = everything(&app, &url).await.into_iter().collect();

    assert!(
        got.is_superset(&set(&["Observation/obs-a-late", "Encounter/enc-a"])),
        "{got:?}"
    );
    for unchanged in [
        "Observation/obs-a-weight",
        "Observation/obs-a-height",
        "MedicationRequest/mr-a",
    ] {
        assert!(!got.contains(unchanged), "{unchanged} in {got:?}");
    }
}

#[tokio::test]
async fn everything_of_an_unknown_patient_is_not_found() {
    let app = app_with_fixtures().await;

    assert_outcome(
        &app.get("Patient/nobody/$everything").await,
        404,
        "not-found",
    );
}
