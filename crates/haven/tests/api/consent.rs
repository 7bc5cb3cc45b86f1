//! Consent and break-glass: a patient's active Consent with a deny provision for a practitioner
//! or a purpose of use refuses that access (403 naming the Consent for one record; left out of
//! searches), and a clinician can open emergency access with a reason and a fresh one-time
//! code, which passes the Consent until it expires, with every access flagged in the trail.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{FHIR_JSON, Resp, TestApp, entries, observation, patient};
use crate::identity::flow::{Authenticator, enrol};
use crate::identity::{
    APP_SCOPE, Authorization, Browser, PASSWORD, add_app, approve, bearer, cli, redeem,
    spawn_configured,
};

/// Emergency access lasts 6 s here, so its end can be seen.
const CONFIG: &str = "[authorization]\nbreak_glass_seconds = 6\n";

/// A clinician linked to a Practitioner, signed in through the app with a second factor.
async fn clinician(app: &TestApp, name: &str, practitioner: &str) -> (String, Authenticator) {
    cli(
        app,
        &[
            "user",
            "add",
            name,
            "--role",
            "clinician",
            "--fhir-user",
            &format!("Practitioner/{practitioner}"),
        ],
        Some(PASSWORD),
    )
    .await;
    let authz = Authorization::new(app, APP_SCOPE);
    let mut browser = Browser::new(app);
    let (auth, _, next) = enrol(&mut browser, &authz, name).await;
    let consent = browser.get(&next).await;
    let anyone = app.create(&patient()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let params = approve(app, &mut browser, &consent, &authz, &anyone).await;
    let tokens = redeem(app, &params["code"], &authz.pkce.verifier).await;
    tokens.assert_status(200);
    (
        tokens.json()["access_token"].as_str().unwrap().to_owned(),
        auth,
    )
}

async fn get(app: &TestApp, token: &str, path: &str) -> Resp {
    app.send_with(&bearer(token), app.request(Method::GET, path))
        .await
}

async fn break_glass(app: &TestApp, token: &str, patient: &str, reason: &str, code: &str) -> Resp {
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "reason", "valueString": reason},
        {"name": "code", "valueString": code}
    ]});
    app.send_with(
        &bearer(token),
        app.request(Method::POST, &format!("Patient/{patient}/$break-glass"))
            .header("content-type", FHIR_JSON)
            .body(body.to_string()),
    )
    .await
}

fn consent_denying(patient: &str, provision: Value) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTIN"}]},
        "provision": {"type": "permit", "provision": [provision]}
    })
}

fn ids(bundle: &Value) -> Vec<String> {
    entries(bundle)
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

/// The accounting of disclosures of a patient, as the CLI gives it.
async fn report(app: &TestApp, patient: &str) -> Vec<Value> {
    let mut cmd = app.cli();
    cmd.args([
        "audit",
        "report",
        "--patient",
        patient,
        "--since",
        "2000-01-01",
        "--format",
        "json",
    ]);
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["disclosures"]
        .as_array()
        .or_else(|| v.as_array())
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_consent_refuses_the_practitioner_it_names_until_break_glass() {
    let app = spawn_configured(CONFIG).await;
    add_app(&app).await;
    let dr_no = app
        .create(&json!({"resourceType": "Practitioner", "name": [{"family": "No"}]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dr_yes = app
        .create(&json!({"resourceType": "Practitioner", "name": [{"family": "Yes"}]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = app.create(&patient()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let q = app.create(&patient()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let op = app.create(&observation(&format!("Patient/{p}"))).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let oq = app.create(&observation(&format!("Patient/{q}"))).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let consent = app
        .create(&consent_denying(
            &p,
            json!({"type": "deny", "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP"}]},
                "reference": {"reference": format!("Practitioner/{dr_no}")}
            }]}),
        ))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (nina, mut nina_auth) = clinician(&app, "nina", &dr_no).await;
    let (yann, _) = clinician(&app, "yann", &dr_yes).await;

    // The named practitioner: each of P's records is refused, naming the Consent.
    for path in [format!("Patient/{p}"), format!("Observation/{op}")] {
        let r = get(&app, &nina, &path).await;
        r.assert_status(403);
        assert!(
            r.text().contains(&format!("Consent/{consent}")),
            "{}",
            r.text()
        );
        assert!(r.text().contains("break-glass"), "{}", r.text());
    }
    get(&app, &nina, &format!("Patient/{p}/Observation"))
        .await
        .assert_status(403);
    get(&app, &nina, &format!("Patient/{p}/$everything"))
        .await
        .assert_status(403);
    // Other patients are unaffected; searches leave P's records out and give no count.
    get(&app, &nina, &format!("Patient/{q}"))
        .await
        .assert_status(200);
    let found = get(&app, &nina, "Observation?_count=100").await.json();
    let found_ids = ids(&found);
    assert!(found_ids.contains(&oq), "{found}");
    assert!(!found_ids.contains(&op), "withheld: {found}");
    assert!(found.get("total").is_none(), "{found}");
    // Inside a transaction too, and then nothing of the transaction is written (the app's
    // scope allows reads only, so the suite's own client shows a write that did not happen).
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{p}")}}]});
    let r = app
        .send_with(
            &bearer(&nina),
            app.request(Method::POST, "")
                .header("content-type", FHIR_JSON)
                .body(tx.to_string()),
        )
        .await;
    r.assert_status(403);
    assert!(
        r.text().contains(&format!("Consent/{consent}")),
        "{}",
        r.text()
    );
    // A batch entry is refused on its own.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{p}")}},
        {"request": {"method": "GET", "url": format!("Patient/{q}")}}]});
    let b = app
        .send_with(
            &bearer(&nina),
            app.request(Method::POST, "")
                .header("content-type", FHIR_JSON)
                .body(batch.to_string()),
        )
        .await;
    b.assert_status(200);
    let statuses: Vec<String> = b.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or_default()[..3].to_owned())
        .collect();
    assert_eq!(statuses, ["403", "200"]);
    // Anyone else reads P as before.
    get(&app, &yann, &format!("Patient/{p}"))
        .await
        .assert_status(200);
    let all = ids(&get(&app, &yann, "Observation?_count=100").await.json());
    assert!(all.contains(&op));

    // Break-glass: a reason and a fresh one-time code are both required.
    let short = break_glass(&app, &nina, &p, "urgent", &nina_auth.next_code().await).await;
    short.assert_status(400);
    let wrong = break_glass(
        &app,
        &nina,
        &p,
        "unconscious in the ED",
        &nina_auth.wrong_code(),
    )
    .await;
    wrong.assert_status(401);
    // A backend client cannot break the glass.
    let service = break_glass(&app, &app.token, &p, "unconscious in the ED", "000000").await;
    service.assert_status(403);
    let opened = break_glass(
        &app,
        &nina,
        &p,
        "unconscious in the ED, no relatives reachable",
        &nina_auth.next_code().await,
    )
    .await;
    opened.assert_status(200);
    let expires = opened.json()["parameter"][1]["valueInstant"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(expires.starts_with("20"), "{expires}");

    // Now the Consent is passed, and every access is flagged.
    get(&app, &nina, &format!("Patient/{p}"))
        .await
        .assert_status(200);
    get(&app, &nina, &format!("Observation/{op}"))
        .await
        .assert_status(200);
    let found = ids(&get(&app, &nina, "Observation?_count=100").await.json());
    assert!(found.contains(&op));
    let metrics = app.get_root("/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l == "haven_break_glass_total 1"),
        "the metric counts it"
    );
    let trail = report(&app, &p).await;
    let flagged: Vec<&Value> = trail
        .iter()
        .filter(|r| r["purpose_of_use"] == "ETREAT")
        .collect();
    assert!(flagged.len() >= 3, "open + reads flagged: {trail:#?}");
    assert!(
        trail.iter().any(|r| r["action"] == "break-glass-open"),
        "{trail:#?}"
    );

    // It ends by itself.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let after = get(&app, &nina, &format!("Patient/{p}")).await;
    after.assert_status(403);
}

#[tokio::test]
async fn a_consent_refuses_a_purpose_of_use() {
    let app = spawn_configured(CONFIG).await;
    let p = app.create(&patient()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.create(&consent_denying(
        &p,
        json!({"type": "deny", "purpose": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HMARKT"}
        ]}),
    ))
    .await;
    let with = |purpose: &str| {
        app.request(Method::GET, &format!("Patient/{p}"))
            .header("x-purpose-of-use", purpose)
    };
    let r = app.send(with("HMARKT")).await;
    r.assert_status(403);
    assert!(r.text().contains("Consent/"), "{}", r.text());
    app.send(with("TREAT")).await.assert_status(200);
    app.get(&format!("Patient/{p}")).await.assert_status(200);
    app.send(with("not a code")).await.assert_status(400);
    // A conditional create that finds the patient's record does not return it.
    let found = app
        .send(
            app.request(Method::POST, "Patient")
                .header("content-type", FHIR_JSON)
                .header("if-none-exist", format!("_id={p}"))
                .header("x-purpose-of-use", "HMARKT")
                .body(patient().to_string()),
        )
        .await;
    found.assert_status(200);
    assert!(found.text().is_empty(), "{}", found.text());
}

/// More active Consents than Haven evaluates for one patient: it cannot tell that none
/// refuses, so reads by people are refused until they are consolidated.
#[tokio::test]
async fn too_many_consents_fail_closed() {
    let app = spawn_configured(CONFIG).await;
    add_app(&app).await;
    let dr = app
        .create(&json!({"resourceType": "Practitioner", "name": [{"family": "A"}]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = app.create(&patient()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entries: Vec<Value> = (0..101)
        .map(|_| {
            json!({"resource": consent_denying(&p, json!({"type": "deny", "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HMARKT"}]})),
                "request": {"method": "POST", "url": "Consent"}})
        })
        .collect();
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    app.post_json("", &tx).await.assert_status(200);
    let (token, _) = clinician(&app, "cara", &dr).await;
    let r = get(&app, &token, &format!("Patient/{p}")).await;
    r.assert_status(403);
    assert!(
        r.text().contains("more than 100 active Consents"),
        "{}",
        r.text()
    );
}
