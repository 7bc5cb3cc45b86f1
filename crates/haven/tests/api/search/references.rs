//! reference parameters, chaining and reverse chaining (R4 search.html#reference,
//! #chaining, #has).

use serde_json::{Value, json};

use super::{check, put_all};
use crate::helpers::spawn_app;

const MRN: &str = "http://hospital.example/mrn";

/// Two patients under different organizations (one with a parent), a practitioner, a
/// location, and observations on each kind of subject.
fn fixtures() -> Vec<Value> {
    let obs = |id: &str, code: &str, subject: Option<Value>| {
        let mut o = json!({ "resourceType": "Observation", "id": id, "status": "final",
                            "code": { "coding": [{ "system": "http://loinc.org", "code": code }] } });
        if let Some(s) = subject {
            o["subject"] = s;
        }
        o
    };
    let to = |reference: &str| Some(json!({ "reference": reference }));
    vec![
        json!({ "resourceType": "Organization", "id": "org-parent", "name": "Parent Health" }),
        json!({ "resourceType": "Organization", "id": "org-child", "name": "Child Clinic",
                "partOf": { "reference": "Organization/org-parent" } }),
        json!({ "resourceType": "Organization", "id": "org-other", "name": "Other Org" }),
        json!({ "resourceType": "Practitioner", "id": "dr-who", "name": [{ "family": "Who" }] }),
        json!({ "resourceType": "Location", "id": "loc-alpha", "name": "Alpha Ward" }),
        json!({ "resourceType": "Patient", "id": "pat-a", "name": [{ "family": "Alpha" }],
                "managingOrganization": { "reference": "Organization/org-child" },
                "generalPractitioner": [{ "reference": "Practitioner/dr-who" }] }),
        json!({ "resourceType": "Patient", "id": "pat-b", "name": [{ "family": "Beta" }],
                "managingOrganization": { "reference": "Organization/org-other" } }),
        obs("obs-a1", "29463-7", to("Patient/pat-a")),
        obs("obs-a2", "8302-2", to("Patient/pat-a")),
        obs("obs-b1", "8302-2", to("Patient/pat-b")),
        obs("obs-loc", "8310-5", to("Location/loc-alpha")),
        // A logical reference: an identifier, no literal reference.
        obs(
            "obs-ident",
            "8310-5",
            Some(json!({ "identifier": { "system": MRN, "value": "MRN-9" } })),
        ),
        obs("obs-none", "8310-5", None),
    ]
}

#[tokio::test]
async fn reference_forms() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check(
        &app,
        &[
            ("Observation?subject=Patient/pat-a", &["obs-a1", "obs-a2"]),
            ("Observation?subject=pat-a", &["obs-a1", "obs-a2"]),
            (
                "Observation?subject={base}/Patient/pat-a",
                &["obs-a1", "obs-a2"],
            ),
            ("Observation?subject:Patient=pat-a", &["obs-a1", "obs-a2"]),
            ("Observation?subject:Location=pat-a", &[]),
            ("Observation?subject:Location=loc-alpha", &["obs-loc"]),
            ("Observation?subject=Location/loc-alpha", &["obs-loc"]),
            ("Observation?patient=Patient/pat-b", &["obs-b1"]),
            ("Observation?patient=loc-alpha", &[]),
            (
                "Observation?subject=Patient/pat-a,Patient/pat-b",
                &["obs-a1", "obs-a2", "obs-b1"],
            ),
            (
                "Observation?subject=http://other.example/fhir/Patient/pat-a",
                &[],
            ),
            ("Observation?subject=Patient/nobody", &[]),
            ("Patient?organization=org-child", &["pat-a"]),
            (
                "Patient?general-practitioner=Practitioner/dr-who",
                &["pat-a"],
            ),
            (
                "Organization?partof=Organization/org-parent",
                &["org-child"],
            ),
        ],
    )
    .await;
}

/// `:identifier` matches Reference.identifier (search.html#reference); `:missing` asks
/// whether the element is there at all, whatever form the reference takes.
#[tokio::test]
async fn reference_modifiers_identifier_and_missing() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check(
        &app,
        &[
            (
                "Observation?subject:identifier=http://hospital.example/mrn|MRN-9",
                &["obs-ident"],
            ),
            ("Observation?subject:identifier=MRN-9", &["obs-ident"]),
            (
                "Observation?subject:identifier=http://other.example|MRN-9",
                &[],
            ),
            ("Observation?subject:missing=true", &["obs-none"]),
            (
                "Observation?subject:missing=false",
                &["obs-a1", "obs-a2", "obs-b1", "obs-loc", "obs-ident"],
            ),
            ("Patient?general-practitioner:missing=true", &["pat-b"]),
        ],
    )
    .await;
}

/// search.html#chaining: typed (`subject:Patient.name`), untyped (`subject.name`: every
/// target type with a `name`), and two or three links deep.
#[tokio::test]
async fn chained_parameters() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check(
        &app,
        &[
            (
                "Observation?subject:Patient.name=alpha",
                &["obs-a1", "obs-a2"],
            ),
            (
                "Observation?subject.name=alpha",
                &["obs-a1", "obs-a2", "obs-loc"],
            ),
            ("Observation?subject:Location.name=alpha", &["obs-loc"]),
            ("Observation?patient.name=beta", &["obs-b1"]),
            (
                "Observation?subject:Patient.name=alpha,beta",
                &["obs-a1", "obs-a2", "obs-b1"],
            ),
            (
                "Observation?subject:Patient.name=alpha&subject:Patient.name=beta",
                &[],
            ),
            (
                "Observation?subject:Patient.name=alpha&code=8302-2",
                &["obs-a2"],
            ),
            (
                "Observation?subject:Patient.organization.name=child",
                &["obs-a1", "obs-a2"],
            ),
            (
                "Observation?subject:Patient.organization.name=other",
                &["obs-b1"],
            ),
            (
                "Observation?subject:Patient.organization.partof.name=parent",
                &["obs-a1", "obs-a2"],
            ),
            (
                "Observation?subject:Patient.organization.partof.name=other",
                &[],
            ),
            (
                "Observation?subject:Patient.general-practitioner:Practitioner.family=who",
                &["obs-a1", "obs-a2"],
            ),
            (
                "Observation?subject:Patient.general-practitioner:missing=true",
                &["obs-b1"],
            ),
            ("Patient?organization.name=child", &["pat-a"]),
            ("Patient?organization.partof.name=parent", &["pat-a"]),
            (
                "Patient?organization:Organization.name:exact=Other Org",
                &["pat-b"],
            ),
        ],
    )
    .await;
}

/// search.html#has: `_has:Type:reference:param=value` selects the resources that some
/// `Type` resource points at (through `reference`) and matches `param`.
#[tokio::test]
async fn reverse_chaining_with_has() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;

    check(
        &app,
        &[
            ("Patient?_has:Observation:patient:code=29463-7", &["pat-a"]),
            (
                "Patient?_has:Observation:subject:code=8302-2",
                &["pat-a", "pat-b"],
            ),
            (
                "Patient?_has:Observation:patient:code=29463-7,8302-2",
                &["pat-a", "pat-b"],
            ),
            (
                "Patient?_has:Observation:patient:code=29463-7&_has:Observation:patient:code=8302-2",
                &["pat-a"],
            ),
            ("Patient?_has:Observation:patient:code=8310-5", &[]),
            ("Patient?_has:Observation:subject:code=8310-5", &[]),
            ("Patient?_has:Observation:patient:_id=obs-a1", &["pat-a"]),
            (
                "Patient?name=alpha&_has:Observation:patient:code=8302-2",
                &["pat-a"],
            ),
            ("Location?_has:Observation:subject:code=8310-5", &["loc-alpha"]),
            ("Organization?_has:Patient:organization:name=alpha", &["org-child"]),
            (
                "Organization?_has:Patient:organization:_has:Observation:patient:code=29463-7",
                &["org-child"],
            ),
            (
                "Practitioner?_has:Patient:general-practitioner:name=alpha",
                &["dr-who"],
            ),
        ],
    )
    .await;
}

/// A relative reference is relative to the server's base (R4 references.html#literal), so a
/// stored absolute reference on this server's base names the same resource.
#[tokio::test]
async fn absolute_references_on_this_server_are_local_ones() {
    let app = spawn_app().await;
    put_all(&app, &fixtures()).await;
    app.put(
        &json!({ "resourceType": "Observation", "id": "obs-abs", "status": "final",
                     "code": { "coding": [{ "system": "http://loinc.org", "code": "1234-5" }] },
                     "subject": { "reference": format!("{}/Patient/pat-b", app.base) } }),
    )
    .await;

    check(
        &app,
        &[
            ("Observation?subject=Patient/pat-b", &["obs-b1", "obs-abs"]),
            ("Observation?subject=pat-b", &["obs-b1", "obs-abs"]),
            (
                "Observation?subject={base}/Patient/pat-b",
                &["obs-b1", "obs-abs"],
            ),
            (
                "Observation?subject:Patient.name=beta",
                &["obs-b1", "obs-abs"],
            ),
            ("Patient?_has:Observation:subject:code=1234-5", &["pat-b"]),
        ],
    )
    .await;
}
