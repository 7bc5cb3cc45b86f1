//! Conditional create, update and delete: writes chosen by search criteria (R4
//! http.html#ccreate, #cond-update, #cdelete).

use std::sync::Arc;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_outcome, entries, spawn_app, with_id, with_json};

const MRN: &str = "http://mrn.example";

fn patient(mrn: &str, family: &str) -> Value {
    json!({ "resourceType": "Patient", "name": [{ "family": family }],
            "identifier": [{ "system": MRN, "value": mrn }] })
}

/// The ids of the current Patients with `family`.
async fn family(app: &TestApp, family: &str) -> Vec<String> {
    let bundle = app
        .get(&format!("Patient?family:exact={family}&_count=200"))
        .await
        .json();
    entries(&bundle)
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn create_if_none_exist(app: &TestApp, body: &Value, criteria: &str) -> reqwest::RequestBuilder {
    with_json(app.request(Method::POST, "Patient"), body).header("if-none-exist", criteria)
}

/// http.html#ccreate: no match creates (201), one match returns it (200) and creates
/// nothing, several matches are a 412.
#[tokio::test]
async fn if_none_exist_creates_only_when_nothing_matches() {
    let app = spawn_app().await;
    let criteria = format!("identifier={MRN}|A-1");

    let first = app
        .send(create_if_none_exist(
            &app,
            &patient("A-1", "Once"),
            &criteria,
        ))
        .await;
    first.assert_status(201);
    let created = first.json();

    let again = app
        .send(create_if_none_exist(
            &app,
            &patient("A-1", "Once"),
            &criteria,
        ))
        .await;
    again.assert_status(200);
    assert_eq!(again.json()["id"], created["id"], "the existing resource");
    assert_eq!(
        again.json()["meta"]["versionId"],
        "1",
        "and it is unchanged"
    );
    assert_eq!(
        family(&app, "Once").await,
        [created["id"].as_str().unwrap()]
    );

    app.create(&patient("B-1", "Twice")).await;
    app.create(&patient("B-2", "Twice")).await;
    let several = app
        .send(create_if_none_exist(
            &app,
            &patient("B-3", "Twice"),
            "family=twice",
        ))
        .await;
    several.assert_status(412);
    assert_eq!(family(&app, "Twice").await.len(), 2, "nothing was created");
}

#[tokio::test]
async fn if_none_exist_refuses_unknown_or_malformed_criteria() {
    let app = spawn_app().await;
    app.create(&patient("A-1", "Known")).await;

    for criteria in [
        "frobnicate=1",
        "family=known&frobnicate=1",
        "birthdate=not-a-date",
        "_count=1",
    ] {
        let resp = app
            .send(create_if_none_exist(
                &app,
                &patient("A-1", "Known"),
                criteria,
            ))
            .await;
        resp.assert_status(400);
    }
    assert_eq!(family(&app, "Known").await.len(), 1, "nothing was created");
}

/// Ten clients racing to create the same patient: exactly one creates it, the others get it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_creates_make_one_resource() {
    let app = Arc::new(spawn_app().await);
    let criteria = format!("identifier={MRN}|RACE-1");

    let results = race(&app, 10, |app, _| {
        create_if_none_exist(app, &patient("RACE-1", "Racer"), &criteria)
    })
    .await;

    let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    let ids = family(&app, "Racer").await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(results.iter().all(|(_, id)| *id == ids[0]), "{results:?}");
}

/// Runs `make(i)` for i in 0..n as concurrent tasks; returns (status, id) of each response.
async fn race(
    app: &Arc<TestApp>,
    n: usize,
    make: impl Fn(&TestApp, usize) -> reqwest::RequestBuilder,
) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let app = app.clone();
            let request = make(&app, i);
            tokio::spawn(async move {
                let resp = app.send(request).await;
                let id = resp.json()["id"].as_str().unwrap_or("").to_owned();
                (resp.status, id)
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("the task completes"));
    }
    results
}

/// Conditional updates racing on criteria that match nothing yet: one creates, the others
/// update what it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_updates_make_one_resource() {
    let app = Arc::new(spawn_app().await);
    let url = format!("Patient?identifier={MRN}|RACE-2");

    let results = race(&app, 10, |app, i| {
        with_json(
            app.request(Method::PUT, &url),
            &patient("RACE-2", &format!("Updater{i}")),
        )
    })
    .await;

    let statuses: Vec<u16> = results.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        9,
        "{statuses:?}"
    );
    let bundle = app
        .get(&format!("Patient?identifier={MRN}|RACE-2"))
        .await
        .json();
    assert_eq!(entries(&bundle).len(), 1, "{bundle}");
    let id = &results[0].1;
    assert!(results.iter().all(|(_, i)| i == id), "{results:?}");
    let current = app.get(&format!("Patient/{id}")).await.json();
    assert_eq!(current["meta"]["versionId"], "10");
}

/// Clients that write the same criteria differently (with or without the system, other
/// parameter order) still race on the same patient: one resource, not several.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_conditional_creates_with_equivalent_criteria_make_one_resource() {
    let app = Arc::new(spawn_app().await);
    let forms = [
        format!("identifier={MRN}|RACE-3"),
        "identifier=RACE-3".to_owned(),
        format!("family=Racer&identifier={MRN}|RACE-3"),
        format!("identifier={MRN}|RACE-3&family=Racer"),
    ];

    let results = race(&app, 12, |app, i| {
        create_if_none_exist(app, &patient("RACE-3", "Racer"), &forms[i % forms.len()])
    })
    .await;

    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let bundle = app
        .get(&format!("Patient?identifier={MRN}|RACE-3"))
        .await
        .json();
    assert_eq!(entries(&bundle).len(), 1, "{created} created: {results:?}");
}

/// http.html#cond-update: no match creates, one match updates it, several are a 412; a body
/// id that is not the matched resource's is a 400.
#[tokio::test]
async fn conditional_update_by_identifier() {
    let app = spawn_app().await;
    let url = format!("Patient?identifier={MRN}|U-1");

    let created = app.put_json(&url, &patient("U-1", "Fresh")).await;
    created.assert_status(201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    assert!(
        created
            .header("location")
            .unwrap()
            .contains(&format!("Patient/{id}/_history/1"))
    );

    let updated = app.put_json(&url, &patient("U-1", "Updated")).await;
    updated.assert_status(200);
    assert_eq!(updated.json()["id"], id.as_str());
    assert_eq!(updated.json()["meta"]["versionId"], "2");
    assert_eq!(
        app.get(&format!("Patient/{id}")).await.json()["name"][0]["family"],
        "Updated"
    );

    let with_own_id = app
        .put_json(&url, &with_id(patient("U-1", "Same"), &id))
        .await;
    with_own_id.assert_status(200);
    assert_eq!(with_own_id.json()["meta"]["versionId"], "3");

    let other_id = app
        .put_json(&url, &with_id(patient("U-1", "Other"), "someone-else"))
        .await;
    assert_outcome(&other_id, 400, "invalid");
    assert_eq!(
        app.get(&format!("Patient/{id}")).await.json()["meta"]["versionId"],
        "3"
    );

    // No match and an id in the body: an update-as-create at that id (http.html#cond-update).
    let chosen = app
        .put_json(
            &format!("Patient?identifier={MRN}|U-5"),
            &with_id(patient("U-5", "Chosen"), "chosen-id"),
        )
        .await;
    chosen.assert_status(201);
    assert_eq!(chosen.json()["id"], "chosen-id");
    app.get("Patient/chosen-id").await.assert_status(200);

    app.create(&patient("U-2", "Dup")).await;
    app.create(&patient("U-3", "Dup")).await;
    let several = app
        .put_json("Patient?family=dup", &patient("U-4", "Dup"))
        .await;
    several.assert_status(412);
    assert_eq!(family(&app, "Dup").await.len(), 2);
    assert_eq!(family(&app, "Fresh").await.len(), 0);
}

#[tokio::test]
async fn conditional_update_refuses_unknown_criteria() {
    let app = spawn_app().await;
    app.create(&patient("U-1", "Known")).await;

    let unknown = app
        .put_json("Patient?frobnicate=1", &patient("U-1", "Changed"))
        .await;
    unknown.assert_status(400);
    let none = app.put_json("Patient", &patient("U-1", "Changed")).await;
    assert!(
        none.status >= 400,
        "a PUT without criteria or id is refused: {}",
        none.status
    );
    assert_eq!(family(&app, "Known").await.len(), 1);
    assert_eq!(family(&app, "Changed").await.len(), 0);
}

/// http.html#cdelete: one match is deleted; several are all deleted (Haven declares
/// `conditionalDelete: multiple`); no match deletes nothing.
#[tokio::test]
async fn conditional_delete_one_several_or_none() {
    let app = spawn_app().await;
    let one = app.create(&patient("D-1", "Single")).await;
    for mrn in ["D-2", "D-3", "D-4"] {
        app.create(&patient(mrn, "Many")).await;
    }
    let bystander = app.create(&patient("D-9", "Bystander")).await;

    let single = app.delete(&format!("Patient?identifier={MRN}|D-1")).await;
    assert!(matches!(single.status, 200 | 204), "{}", single.status);
    assert_outcome(
        &app.get(&format!("Patient/{}", one["id"].as_str().unwrap()))
            .await,
        410,
        "deleted",
    );

    let many = app.delete("Patient?family=many").await;
    assert!(matches!(many.status, 200 | 204), "{}", many.status);
    assert!(family(&app, "Many").await.is_empty());

    let nothing = app.delete("Patient?family=nobody").await;
    assert!(
        matches!(nothing.status, 200 | 204 | 404),
        "{}",
        nothing.status
    );
    assert_eq!(
        family(&app, "Bystander").await,
        [bystander["id"].as_str().unwrap()]
    );
}

#[tokio::test]
async fn conditional_delete_refuses_unknown_criteria() {
    let app = spawn_app().await;
    app.create(&patient("D-1", "Kept")).await;

    app.delete("Patient?frobnicate=1").await.assert_status(400);
    app.delete("Patient?family=kept&frobnicate=1")
        .await
        .assert_status(400);
    assert_eq!(family(&app, "Kept").await.len(), 1);
}

/// More matches than the server deletes at once (100) is a 412, and nothing is deleted.
#[tokio::test]
async fn conditional_delete_beyond_the_limit_deletes_nothing() {
    let app = spawn_app().await;
    let entry: Vec<Value> = (0..101)
        .map(|i| {
            json!({ "resource": patient(&format!("L-{i}"), "Crowd"),
                    "request": { "method": "POST", "url": "Patient" } })
        })
        .collect();
    app.post_json(
        "",
        &json!({ "resourceType": "Bundle", "type": "transaction", "entry": entry }),
    )
    .await
    .assert_status(200);

    let resp = app.delete("Patient?family=crowd").await;

    resp.assert_status(412);
    assert_eq!(family(&app, "Crowd").await.len(), 101);
}
