//! Searches see the current version only: deleted resources never match, and an update
//! replaces the values a resource is found by (R4 http.html#delete, search.html).

use serde_json::{Value, json};

use super::{check, put_all, refs, search};
use crate::helpers::spawn_app;

fn fixtures() -> Vec<Value> {
    vec![
        json!({ "resourceType": "Organization", "id": "org", "name": "Clinic" }),
        json!({ "resourceType": "Patient", "id": "keep", "name": [{ "family": "Keeper" }],
                "birthDate": "1970-01-01", "managingOrganization": { "reference": "Organization/org" },
                "identifier": [{ "system": "http://mrn.example", "value": "K-1" }] }),
        json!({ "resourceType": "Patient", "id": "gone", "name": [{ "family": "Keeper" }],
                "birthDate": "1970-01-01", "managingOrganization": { "reference": "Organization/org" },
                "identifier": [{ "system": "http://mrn.example", "value": "G-1" }] }),
        json!({ "resourceType": "Observation", "id": "obs-keep", "status": "final",
                "code": { "text": "Weight" }, "subject": { "reference": "Patient/keep" } }),
        json!({ "resourceType": "Observation", "id": "obs-keep-2", "status": "final",
                "code": { "text": "Height" }, "subject": { "reference": "Patient/keep" } }),
        json!({ "resourceType": "Observation", "id": "obs-gone", "status": "final",
                "code": { "text": "Weight" }, "subject": { "reference": "Patient/gone" } }),
    ]
}

#[tokio::test]
async fn deleted_resources_never_match() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;
    app.delete("Patient/gone").await.assert_status(204);
    app.delete("Observation/obs-gone").await.assert_status(204);
    app.delete("Observation/obs-keep-2")
        .await
        .assert_status(204);

    check(
        &app,
        &[
            ("Patient", &["keep"]),
            ("Patient?family=keeper", &["keep"]),
            ("Patient?_id=gone", &[]),
            ("Patient?identifier=G-1", &[]),
            ("Patient?birthdate=1970-01-01", &["keep"]),
            ("Patient?organization=Organization/org", &["keep"]),
            ("Patient?name:missing=false", &["keep"]),
            ("Observation?subject=Patient/gone", &[]),
            ("Observation?subject:Patient.name=keeper", &["obs-keep"]),
            (
                "Patient?_has:Observation:subject:code:text=weight",
                &["keep"],
            ),
            ("?_id=gone,obs-gone,keep", &["Patient/keep"]),
            ("Patient/keep/Observation", &["obs-keep"]),
        ],
    )
    .await;

    let counted = search(&app, "Patient?_summary=count").await;
    assert_eq!(counted["total"], 1, "{counted}");
    let included = search(
        &app,
        "Organization?_id=org&_revinclude=Patient:organization",
    )
    .await;
    assert_eq!(refs(&included, "include"), ["Patient/keep"]);
    let revincluded = search(&app, "Patient?_id=keep&_revinclude=Observation:subject").await;
    assert_eq!(refs(&revincluded, "include"), ["Observation/obs-keep"]);
}

/// A deleted target stops matching through chains even while the pointing resource stays.
#[tokio::test]
async fn a_deleted_reference_target_no_longer_matches_chains() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;
    app.delete("Patient/gone").await.assert_status(204);

    check(
        &app,
        &[
            (
                "Observation?subject:Patient.name=keeper",
                &["obs-keep", "obs-keep-2"],
            ),
            ("Observation?subject=Patient/gone", &["obs-gone"]),
        ],
    )
    .await;
    let included = search(
        &app,
        "Observation?_id=obs-gone&_include=Observation:subject",
    )
    .await;
    assert!(refs(&included, "include").is_empty(), "{included}");
}

#[tokio::test]
async fn updates_replace_the_values_searched() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;
    let mut changed = app.get("Patient/keep").await.json();
    changed["name"] = json!([{ "family": "Renamed" }]);
    changed["birthDate"] = json!("1980-02-02");
    changed["identifier"] = json!([{ "system": "http://mrn.example", "value": "K-2" }]);
    changed
        .as_object_mut()
        .unwrap()
        .remove("managingOrganization");
    app.put(&changed).await;

    check(
        &app,
        &[
            ("Patient?family=keeper", &["gone"]),
            ("Patient?family=renamed", &["keep"]),
            ("Patient?birthdate=1970-01-01", &["gone"]),
            ("Patient?birthdate=1980-02-02", &["keep"]),
            ("Patient?identifier=K-1", &[]),
            ("Patient?identifier=http://mrn.example|K-2", &["keep"]),
            ("Patient?organization=org", &["gone"]),
            ("Patient?organization:missing=true", &["keep"]),
            (
                "Observation?subject:Patient.name=renamed",
                &["obs-keep", "obs-keep-2"],
            ),
            ("Observation?subject:Patient.name=keeper", &["obs-gone"]),
        ],
    )
    .await;

    // Re-created after a delete, a resource is found again.
    app.delete("Patient/gone").await.assert_status(204);
    check(&app, &[("Patient?family=keeper", &[])]).await;
    app.put(&fixtures()[2]).await;
    check(&app, &[("Patient?family=keeper", &["gone"])]).await;
}
