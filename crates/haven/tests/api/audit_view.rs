//! The audit trail as FHIR: `AuditEvent` read and search and `Patient/[id]/$disclosures`, for
//! the auditor role only; never written; reading the trail is itself recorded.

use reqwest::Method;
use serde_json::{Value, json};

use crate::authorization::register_app;
use crate::helpers::{FHIR_JSON, Resp, TestApp, entries, link, observation, patient};
use crate::identity::{add_user, bearer, password_flow, spawn_configured};

const NO_MFA: &str = "[identity]\nmfa_required_roles = []\n";
const SCOPE_ALL: &str = "openid fhirUser user/*.cruds";

async fn token(app: &TestApp, user: &str, scope: &str) -> String {
    password_flow(app, user, scope, "").await["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

async fn get(app: &TestApp, token: &str, path: &str) -> Resp {
    app.send_with(&bearer(token), app.request(Method::GET, path))
        .await
}

fn resources(bundle: &Value) -> Vec<Value> {
    entries(bundle)
        .iter()
        .map(|e| e["resource"].clone())
        .collect()
}

/// Every page of a search, following `next` links (at most 200 pages).
async fn all_pages(app: &TestApp, token: &str, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let first = get(app, token, path).await;
    first.assert_status(200);
    let mut bundle = first.json();
    for _ in 0..200 {
        out.extend(resources(&bundle));
        let Some(next) = link(&bundle, "next") else {
            return out;
        };
        let r = app.send_with(&bearer(token), app.client.get(&next)).await;
        r.assert_status(200);
        bundle = r.json();
    }
    panic!("more than 200 pages");
}

fn agent_values(ev: &Value) -> Vec<String> {
    ev["agent"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["who"]["identifier"]["value"].as_str().map(str::to_owned))
        .collect()
}

fn refers_to(ev: &Value, reference: &str) -> bool {
    ev["entity"].as_array().is_some_and(|es| {
        es.iter().any(|e| {
            e["what"]["reference"]
                .as_str()
                .is_some_and(|r| r == reference || r.starts_with(&format!("{reference}/_history/")))
        })
    })
}

#[tokio::test]
async fn the_auditor_reads_and_searches_the_trail_and_nobody_else_does() {
    let app = spawn_configured(NO_MFA).await;
    register_app(&app).await;
    add_user(&app, "clinician-user", "clinician").await;
    add_user(&app, "auditor-user", "auditor").await;
    let clinician = token(&app, "clinician-user", SCOPE_ALL).await;
    let auditor = token(&app, "auditor-user", SCOPE_ALL).await;

    // Some clinical work to audit.
    let created = app
        .send_with(
            &bearer(&clinician),
            app.request(Method::POST, "Patient")
                .header("content-type", FHIR_JSON)
                .body(patient().to_string()),
        )
        .await;
    created.assert_status(201);
    let pid = created.json()["id"].as_str().unwrap().to_owned();
    let pref = format!("Patient/{pid}");
    get(&app, &clinician, &pref).await.assert_status(200);
    app.send_with(
        &bearer(&clinician),
        app.request(Method::POST, "Observation")
            .header("content-type", FHIR_JSON)
            .body(observation(&pref).to_string()),
    )
    .await
    .assert_status(201);
    get(&app, &clinician, &format!("Observation?subject={pref}"))
        .await
        .assert_status(200);

    // By patient: the clinician's create, read, observation create and search, as BALP events.
    let by_patient = get(&app, &auditor, &format!("AuditEvent?patient={pid}")).await;
    by_patient.assert_status(200);
    let events = resources(&by_patient.json());
    assert!(events.len() >= 4, "{events:#?}");
    for ev in &events {
        assert_eq!(ev["resourceType"], "AuditEvent");
        assert_eq!(ev["type"]["code"], "rest");
        assert!(refers_to(ev, &pref), "{ev}");
        assert!(
            agent_values(ev).contains(&"clinician-user".to_owned()),
            "{ev}"
        );
    }
    let subtypes: Vec<&str> = events
        .iter()
        .map(|e| e["subtype"][0]["code"].as_str().unwrap())
        .collect();
    for s in ["create", "read", "search-type"] {
        assert!(subtypes.contains(&s), "{s} in {subtypes:?}");
    }

    // Each parameter narrows as it says.
    let creates = resources(
        &get(&app, &auditor, "AuditEvent?agent=clinician-user&action=C")
            .await
            .json(),
    );
    assert_eq!(creates.len(), 2, "{creates:#?}");
    assert!(creates.iter().all(|e| e["action"] == "C"));
    let reads = resources(
        &get(
            &app,
            &auditor,
            &format!("AuditEvent?entity={pref}&subtype=read"),
        )
        .await
        .json(),
    );
    assert_eq!(reads.len(), 1);
    let today = &reads[0]["recorded"].as_str().unwrap()[..10];
    let dated = get(
        &app,
        &auditor,
        &format!("AuditEvent?date=ge{today}&outcome=0"),
    )
    .await;
    assert!(!resources(&dated.json()).is_empty());
    let none = get(&app, &auditor, "AuditEvent?date=lt2000-01-01")
        .await
        .json();
    assert_eq!(none["total"], 0);
    assert!(resources(&none).is_empty());
    let refused = get(&app, &auditor, "AuditEvent?agent=nobody").await.json();
    assert!(resources(&refused).is_empty());

    // Paging neither skips nor repeats.
    let whole = resources(&get(&app, &auditor, "AuditEvent?_count=1000").await.json());
    let paged = all_pages(&app, &auditor, "AuditEvent?_count=2").await;
    let ids = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (w, p) = (ids(&whole), ids(&paged));
    assert!(
        p.len() >= w.len(),
        "{} pages' worth vs {}",
        p.len(),
        w.len()
    );
    assert_eq!(
        &p[..w.len()],
        &w[..],
        "pages hold the same records in order"
    );

    // Read and vread one record; it has one version.
    let id = reads[0]["id"].as_str().unwrap();
    let one = get(&app, &auditor, &format!("AuditEvent/{id}")).await;
    one.assert_status(200);
    assert_eq!(one.json(), reads[0]);
    assert_eq!(one.header("etag"), Some("W/\"1\""));
    get(&app, &auditor, &format!("AuditEvent/{id}/_history/1"))
        .await
        .assert_status(200);
    get(&app, &auditor, &format!("AuditEvent/{id}/_history/2"))
        .await
        .assert_status(404);
    get(&app, &auditor, "AuditEvent/999999999")
        .await
        .assert_status(404);
    get(&app, &auditor, "AuditEvent/abc")
        .await
        .assert_status(404);

    // Unknown parameters are named, not ignored.
    let bad = get(&app, &auditor, "AuditEvent?name=x").await;
    bad.assert_status(400);
    assert!(bad.text().contains("supported"), "{}", bad.text());

    // Nobody writes it, the auditor included; it has no history.
    let forged = json!({"resourceType": "AuditEvent", "recorded": "2026-01-01T00:00:00Z",
        "type": {"code": "rest"}, "agent": [{"requestor": true}],
        "source": {"observer": {"display": "x"}}});
    let posted = app
        .send_with(
            &bearer(&auditor),
            app.request(Method::POST, "AuditEvent")
                .header("content-type", FHIR_JSON)
                .body(forged.to_string()),
        )
        .await;
    posted.assert_status(403);
    app.send_with(
        &bearer(&auditor),
        app.request(Method::DELETE, &format!("AuditEvent/{id}")),
    )
    .await
    .assert_status(403);
    get(&app, &auditor, &format!("AuditEvent/{id}/_history"))
        .await
        .assert_status(403);
    // Not through a Bundle either.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "AuditEvent"}}]});
    let b = app
        .send_with(
            &bearer(&auditor),
            app.request(Method::POST, "")
                .header("content-type", FHIR_JSON)
                .body(batch.to_string()),
        )
        .await;
    if b.status == 200 {
        assert_eq!(
            b.json()["entry"][0]["response"]["status"]
                .as_str()
                .map(|s| &s[..3]),
            Some("403")
        );
    } else {
        b.assert_status(403);
    }

    // Only the auditor: not a clinician, not a backend client with system/*.cruds, not an
    // auditor whose token lacks an AuditEvent scope.
    get(&app, &clinician, "AuditEvent").await.assert_status(403);
    get(&app, &clinician, &format!("AuditEvent/{id}"))
        .await
        .assert_status(403);
    app.get("AuditEvent").await.assert_status(403);
    let narrow = token(&app, "auditor-user", "openid fhirUser user/Patient.rs").await;
    let r = get(&app, &narrow, "AuditEvent").await;
    r.assert_status(403);
    assert!(r.text().contains("user/AuditEvent"), "{}", r.text());

    // Reading the trail is recorded too.
    let own = resources(
        &get(
            &app,
            &auditor,
            "AuditEvent?agent=auditor-user&subtype=search-type",
        )
        .await
        .json(),
    );
    assert!(!own.is_empty());

    // The capability statement says what is offered.
    let meta = app.get("metadata").await.json();
    let ae = meta["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "AuditEvent")
        .expect("AuditEvent is listed")
        .clone();
    let codes: Vec<&str> = ae["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["read", "vread", "search-type"]);
}

#[tokio::test]
async fn the_accounting_of_disclosures_is_a_fhir_operation() {
    let app = spawn_configured(NO_MFA).await;
    register_app(&app).await;
    add_user(&app, "clinician-user", "clinician").await;
    add_user(&app, "auditor-user", "auditor").await;
    let clinician = token(&app, "clinician-user", SCOPE_ALL).await;
    let auditor = token(&app, "auditor-user", SCOPE_ALL).await;
    let p = app.create(&patient()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = app.create(&patient()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    get(&app, &clinician, &format!("Patient/{p}"))
        .await
        .assert_status(200);
    get(&app, &clinician, &format!("Patient/{other}"))
        .await
        .assert_status(200);
    get(&app, &clinician, &format!("Patient/{p}/$everything"))
        .await
        .assert_status(200);

    let path = format!("Patient/{p}/$disclosures");
    let r = get(&app, &auditor, &path).await;
    r.assert_status(200);
    let events = resources(&r.json());
    // The suite client's create, the clinician's read and $everything; never the other patient.
    assert!(events.len() >= 3, "{events:#?}");
    for ev in &events {
        assert!(refers_to(ev, &format!("Patient/{p}")), "{ev}");
        assert!(!refers_to(ev, &format!("Patient/{other}")), "{ev}");
        assert_eq!(ev["type"]["code"], "rest", "data accesses only: {ev}");
    }
    let by_clinician: Vec<&Value> = events
        .iter()
        .filter(|e| agent_values(e).contains(&"clinician-user".to_owned()))
        .collect();
    assert_eq!(by_clinician.len(), 2, "{by_clinician:#?}");

    // A period: nothing before today; at most six years back.
    let empty = get(&app, &auditor, &format!("{path}?until=2001-01-01")).await;
    empty.assert_status(200);
    assert!(resources(&empty.json()).is_empty());
    let future = get(&app, &auditor, &format!("{path}?since=2100-01-01")).await;
    future.assert_status(200);
    assert!(resources(&future.json()).is_empty());
    let too_old = get(&app, &auditor, &format!("{path}?since=2001-01-01")).await;
    too_old.assert_status(400);
    assert!(too_old.text().contains("six years"), "{}", too_old.text());

    // Only the auditor.
    get(&app, &clinician, &path).await.assert_status(403);
    app.get(&path).await.assert_status(403);
}
