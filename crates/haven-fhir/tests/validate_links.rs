//! Rules about embedded resources, references, extensions and overall reporting: a valid
//! base resource, broken in exactly one way, must produce exactly the expected issue.

mod common;

use common::{assert_one, assert_valid, patient, validate, with};
use haven_fhir::IssueCode;
use serde_json::{Value, json};

// ---- embedded resources ----

#[test]
fn contained_resources_are_validated_by_their_own_type() {
    let r =
        with(
            &patient(),
            |p| {
                p["contained"] =
                    json!([{"resourceType": "Organization", "id": "o", "nmae": "typo"}])
            },
        );
    assert_one(&r, IssueCode::Structure, "Patient.contained[0].nmae");
    let r = with(&patient(), |p| {
        p["contained"] = json!([{"resourceType": "Nope", "id": "o"}])
    });
    assert_one(
        &r,
        IssueCode::NotSupported,
        "Patient.contained[0].resourceType",
    );
    let r = with(&patient(), |p| p["contained"] = json!([{"id": "o"}]));
    assert_one(&r, IssueCode::Invalid, "Patient.contained[0].resourceType");
}

#[test]
fn contained_rules_dom2_dom4_and_id() {
    let r = with(&patient(), |p| {
        p["contained"] = json!([{"resourceType": "Organization", "id": "o",
        "contained": [{"resourceType": "Organization", "id": "o2"}]}])
    });
    let issue = assert_one(&r, IssueCode::Invariant, "Patient.contained[0].contained");
    assert!(issue.message.contains("dom-2"));
    let r = with(
        &patient(),
        |p| {
            p["contained"] =
                json!([{"resourceType": "Organization", "id": "o", "meta": {"versionId": "1"}}])
        },
    );
    assert_one(
        &r,
        IssueCode::Invariant,
        "Patient.contained[0].meta.versionId",
    );
    let r = with(
        &patient(),
        |p| p["contained"] = json!([{"resourceType": "Organization", "id": "o", "meta": {"lastUpdated": "2020-01-01T00:00:00Z"}}]),
    );
    assert_one(
        &r,
        IssueCode::Invariant,
        "Patient.contained[0].meta.lastUpdated",
    );
    let r = with(&patient(), |p| {
        p["contained"] = json!([{"resourceType": "Organization", "name": "o"}])
    });
    assert_one(&r, IssueCode::Invariant, "Patient.contained[0]");
}

#[test]
fn bundle_entries_are_full_resources() {
    let bundle = |resource: Value| json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": resource}]});
    // Entries may carry versionId and their own contained resources.
    assert_valid(&bundle(
        json!({"resourceType": "Patient", "id": "a", "meta": {"versionId": "3"},
        "contained": [{"resourceType": "Organization", "id": "o"}], "managingOrganization": {"reference": "#o"}}),
    ));
    assert_one(
        &bundle(json!({"resourceType": "Patient", "active": "yes"})),
        IssueCode::Structure,
        "Bundle.entry[0].resource.active",
    );
    assert_one(
        &bundle(json!("Patient/1")),
        IssueCode::Structure,
        "Bundle.entry[0].resource",
    );
    let r = json!({"resourceType": "Bundle", "type": "batch-response",
        "entry": [{"response": {"status": "200", "outcome": {"resourceType": "Patient"}}}]});
    assert_one(
        &r,
        IssueCode::Structure,
        "Bundle.entry[0].response.outcome.resourceType",
    );
}

// ---- references ----

#[test]
fn reference_syntax_is_value() {
    for bad in [
        "Patient",
        "Organization/",
        "Foo/1",
        "Organization/1/2",
        "organization/1",
        "urn:uuid:nope",
        "Organization?",
    ] {
        let r = with(&patient(), |p| {
            p["managingOrganization"]["reference"] = json!(bad)
        });
        let issue = assert_one(
            &r,
            IssueCode::Value,
            "Patient.managingOrganization.reference",
        );
        assert!(issue.message.contains("allowed forms"), "{}", issue.message);
    }
    for good in [
        "Organization/1/_history/2",
        "http://example.org/fhir/Organization/1",
        "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
        "urn:oid:1.2.3",
    ] {
        assert_valid(&with(&patient(), |p| {
            p["managingOrganization"]["reference"] = json!(good)
        }));
    }
}

#[test]
fn reference_to_wrong_type_is_value() {
    let r = with(&patient(), |p| {
        p["managingOrganization"]["reference"] = json!("Practitioner/1")
    });
    let issue = assert_one(
        &r,
        IssueCode::Value,
        "Patient.managingOrganization.reference",
    );
    assert!(
        issue.message.contains("allowed: Organization"),
        "{}",
        issue.message
    );
    let r = with(&patient(), |p| {
        p["managingOrganization"]["reference"] = json!("https://x.org/Practitioner/1")
    });
    assert_one(
        &r,
        IssueCode::Value,
        "Patient.managingOrganization.reference",
    );
    // Any type where the target is Resource (Provenance.target).
    assert_valid(
        &json!({"resourceType": "Provenance", "recorded": "2020-01-01T00:00:00Z",
        "target": [{"reference": "Basic/1"}], "agent": [{"who": {"display": "x"}}]}),
    );
}

#[test]
fn local_references_must_resolve() {
    let r = with(&patient(), |p| {
        p["managingOrganization"]["reference"] = json!("#missing")
    });
    let issue = assert_one(
        &r,
        IssueCode::Invariant,
        "Patient.managingOrganization.reference",
    );
    assert!(issue.message.contains("ref-1"));
    let r = with(&patient(), |p| {
        p["contained"] = json!([{"resourceType": "Practitioner", "id": "pr"}]);
        p["managingOrganization"]["reference"] = json!("#pr");
    });
    assert_one(
        &r,
        IssueCode::Value,
        "Patient.managingOrganization.reference",
    );
    let r = with(&patient(), |p| {
        p["managingOrganization"]["reference"] = json!("#")
    });
    assert_one(
        &r,
        IssueCode::Invariant,
        "Patient.managingOrganization.reference",
    );
    // Inside a contained resource, '#' and sibling ids resolve against the container.
    let r = with(&patient(), |p| {
        p["contained"] = json!([
            {"resourceType": "Organization", "id": "o", "partOf": {"reference": "#o2"}},
            {"resourceType": "Organization", "id": "o2"},
            {"resourceType": "Provenance", "id": "pv", "target": [{"reference": "#"}], "recorded": "2020-01-01T00:00:00Z", "agent": [{"who": {"reference": "#o"}}]}
        ]);
        p["managingOrganization"]["reference"] = json!("#o");
    });
    assert_valid(&r);
}

// ---- extensions ----

#[test]
fn extension_needs_url() {
    let r = with(&patient(), |p| {
        p["extension"] = json!([{"valueString": "x"}])
    });
    assert_one(&r, IssueCode::Required, "Patient.extension[0].url");
}

#[test]
fn extension_ext1_value_xor_children() {
    let r = with(&patient(), |p| {
        p["extension"] = json!([{"url": "http://x"}])
    });
    let issue = assert_one(&r, IssueCode::Invariant, "Patient.extension[0]");
    assert!(issue.message.contains("ext-1"));
    let r = with(&patient(), |p| {
        p["modifierExtension"] = json!([{"url": "http://x", "valueBoolean": true,
        "extension": [{"url": "a", "valueString": "b"}]}])
    });
    assert_one(&r, IssueCode::Invariant, "Patient.modifierExtension[0]");
    // An unknown value type is one problem, reported once (not again as ext-1).
    let r = with(&patient(), |p| {
        p["extension"] = json!([{"url": "http://x", "valueFoo": 1}])
    });
    let issue = assert_one(&r, IssueCode::Structure, "Patient.extension[0].valueFoo");
    assert!(issue.message.contains("valueBoolean"), "{}", issue.message);
}

// ---- reporting ----

#[test]
fn every_problem_is_reported() {
    let r = json!({
        "resourceType": "Patient",
        "id": "bad id",
        "active": "yes",
        "name": {"family": "x"},
        "foo": 1,
        "birthDate": "2023-02-30",
        "link": [{}]
    });
    let issues = validate(&r);
    let got: Vec<(IssueCode, &str)> = issues
        .iter()
        .map(|i| (i.code, i.location.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (IssueCode::Value, "Patient.id"),
            (IssueCode::Structure, "Patient.active"),
            (IssueCode::Structure, "Patient.name"),
            (IssueCode::Structure, "Patient.foo"),
            (IssueCode::Value, "Patient.birthDate"),
            (IssueCode::Invariant, "Patient.link[0]"),
        ]
    );
}

#[test]
fn messages_do_not_echo_values() {
    let r = with(&patient(), |p| {
        p["birthDate"] = json!("1974-02-30");
        p["id"] = json!("secret value");
    });
    for issue in validate(&r) {
        assert!(!issue.message.contains("1974"), "{}", issue.message);
        assert!(!issue.message.contains("secret"), "{}", issue.message);
    }
}
