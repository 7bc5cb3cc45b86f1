//! Validation against the R4 definitions on write, and `$validate`
//! (R4 resource-operation-validate). This server answers invalid resources with 400 and an
//! OperationOutcome listing every issue, each with its `expression`.

use serde_json::{Value, json};

use crate::helpers::{
    assert_is_outcome, assert_outcome, entries, expressions, issues, observation, patient,
    spawn_app, with_id,
};

fn patient_with(field: &str, value: Value) -> Value {
    let mut p = patient();
    p[field] = value;
    p
}

fn observation_with(field: &str, value: Value) -> Value {
    let mut o = observation("Patient/p1");
    o[field] = value;
    o
}

#[tokio::test]
async fn invalid_resources_are_rejected_with_code_and_expression() {
    let app = spawn_app().await;
    let mut no_status_or_code = observation("Patient/p1");
    no_status_or_code.as_object_mut().unwrap().remove("status");
    no_status_or_code.as_object_mut().unwrap().remove("code");
    let mut two_values = observation("Patient/p1");
    two_values["valueString"] = json!("heavy");

    // (resource, issue code, expression of that issue)
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            patient_with("colour", json!("blue")),
            "structure",
            "Patient.colour",
        ),
        (
            patient_with("birthDate", json!("1974-13-45")),
            "value",
            "Patient.birthDate",
        ),
        (
            patient_with("name", json!({ "family": "Chalmers" })),
            "structure",
            "Patient.name",
        ),
        (no_status_or_code.clone(), "required", "Observation.status"),
        (no_status_or_code, "required", "Observation.code"),
        (
            observation_with("valueFoo", json!(1)),
            "structure",
            "Observation.valueFoo",
        ),
        (two_values, "structure", "Observation.valueString"),
        (
            observation_with("subject", json!({ "reference": "not a reference" })),
            "value",
            "Observation.subject.reference",
        ),
        (
            patient_with(
                "contained",
                json!([{ "resourceType": "Organization", "name": "No id" }]),
            ),
            "invariant",
            "Patient.contained[0]",
        ),
        (
            patient_with("extension", json!([{ "valueString": "no url" }])),
            "required",
            "Patient.extension[0].url",
        ),
        (
            patient_with("multipleBirthInteger", json!(3_000_000_000_i64)),
            "value",
            "Patient.multipleBirthInteger",
        ),
        (
            patient_with("active", json!("true")),
            "structure",
            "Patient.active",
        ),
        (
            patient_with("gender", json!("")),
            "invariant",
            "Patient.gender",
        ),
    ];

    for (resource, code, expression) in cases {
        let ty = resource["resourceType"].as_str().unwrap().to_owned();
        let resp = app.post_json(&ty, &resource).await;
        let oo = assert_outcome(&resp, 400, code);
        let found = expressions(&oo);
        let matching = issues(&oo)
            .iter()
            .zip(&found)
            .any(|(issue, expr)| issue["code"] == code && expr == expression);
        assert!(matching, "expected {code} at {expression}, got {oo}");
    }
    assert!(
        entries(&app.get("_history").await.json()).is_empty(),
        "nothing was stored"
    );
}

#[tokio::test]
async fn valid_variants_are_accepted() {
    let app = spawn_app().await;
    let accepted = [
        observation("Patient/p1"),
        observation_with("valueQuantity", json!({ "value": 1.50, "unit": "mmol/L" })),
        observation_with(
            "subject",
            json!({ "reference": "https://other.example/fhir/Patient/9" }),
        ),
        json!({
            "resourceType": "Patient",
            "contained": [{ "resourceType": "Organization", "id": "org", "name": "Acme" }],
            "managingOrganization": { "reference": "#org" }
        }),
        patient_with(
            "extension",
            json!([{ "url": "http://example.org/eye-colour", "valueString": "brown" }]),
        ),
        patient_with("multipleBirthInteger", json!(2_147_483_647)),
    ];
    for resource in accepted {
        let created = app.create(&resource).await;
        assert_eq!(created["resourceType"], resource["resourceType"]);
    }
}

#[tokio::test]
async fn every_problem_is_reported_at_once() {
    let app = spawn_app().await;
    let mut resource = patient();
    resource["colour"] = json!("blue");
    resource["birthDate"] = json!("yesterday");
    resource["active"] = json!("yes");
    resource["name"] = json!([{ "family": ["not", "a", "string"] }]);

    let resp = app.post_json("Patient", &resource).await;

    let oo = assert_outcome(&resp, 400, "structure");
    let mut found = expressions(&oo);
    found.sort();
    assert_eq!(
        found,
        [
            "Patient.active",
            "Patient.birthDate",
            "Patient.colour",
            "Patient.name[0].family"
        ]
    );
    for issue in issues(&oo) {
        assert_eq!(issue["severity"], "error");
        assert!(issue["diagnostics"].as_str().is_some_and(|d| !d.is_empty()));
        // Messages describe the rule, never the (possibly sensitive) value sent.
        assert!(!issue["diagnostics"].as_str().unwrap().contains("yesterday"));
    }
}

#[tokio::test]
async fn validate_operation_reports_issues_without_storing() {
    let app = spawn_app().await;

    let invalid = app
        .post_json("Patient/$validate", &patient_with("colour", json!("blue")))
        .await;
    invalid.assert_status(200);
    let oo = assert_is_outcome(&invalid);
    assert_eq!(issues(&oo)[0]["severity"], "error");
    assert_eq!(expressions(&oo), ["Patient.colour"]);

    let valid = app.post_json("Patient/$validate", &patient()).await;
    valid.assert_status(200);
    let oo = valid.json();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(issues(&oo).len(), 1);
    assert_eq!(issues(&oo)[0]["severity"], "information");

    let wrapped = json!({
        "resourceType": "Parameters",
        "parameter": [{ "name": "resource", "resource": patient_with("birthDate", json!("1974-02-30")) }]
    });
    let resp = app.post_json("Patient/$validate", &wrapped).await;
    resp.assert_status(200);
    assert_eq!(expressions(&resp.json()), ["Patient.birthDate"]);

    let wrong_type = app
        .post_json("Patient/$validate", &observation("Patient/1"))
        .await;
    assert_outcome(&wrong_type, 400, "invalid");
    let bad_mode = app
        .post_json("Patient/$validate?mode=destroy", &patient())
        .await;
    assert_outcome(&bad_mode, 400, "invalid");
    assert_outcome(&app.get("Patient/$validate").await, 405, "not-supported");

    assert!(entries(&app.get("_history").await.json()).is_empty());
}

#[tokio::test]
async fn validate_operation_checks_an_instance_for_update_and_delete() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "p1")).await;

    let update = app
        .post_json(
            "Patient/p1/$validate?mode=update",
            &with_id(patient(), "p1"),
        )
        .await;
    update.assert_status(200);
    assert_eq!(issues(&update.json())[0]["severity"], "information");
    let wrong_id = app
        .post_json(
            "Patient/p1/$validate?mode=update",
            &with_id(patient(), "p2"),
        )
        .await;
    assert_outcome(&wrong_id, 400, "invalid");

    let delete = app
        .post_json(
            "Patient/p1/$validate?mode=delete",
            &with_id(patient(), "p1"),
        )
        .await;
    delete.assert_status(200);
    assert_eq!(issues(&delete.json())[0]["severity"], "information");

    let missing = app
        .post_json(
            "Patient/nobody/$validate?mode=delete",
            &with_id(patient(), "nobody"),
        )
        .await;
    assert_outcome(&missing, 404, "not-found");
    app.get("Patient/p1").await.assert_status(200);
}

/// R4 `Resource/$validate`: the `resource` parameter "must be present unless the mode is
/// 'delete'", so a Parameters body carrying only `mode=delete` is a complete request.
#[tokio::test]
async fn validate_delete_needs_no_resource_parameter() {
    let app = spawn_app().await;
    app.put(&with_id(patient(), "p1")).await;
    let params = json!({
        "resourceType": "Parameters",
        "parameter": [{ "name": "mode", "valueCode": "delete" }]
    });

    let resp = app.post_json("Patient/p1/$validate", &params).await;

    resp.assert_status(200);
    assert_eq!(issues(&resp.json())[0]["severity"], "information");
}
