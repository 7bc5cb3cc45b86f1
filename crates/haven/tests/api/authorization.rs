//! Authorization: effective permission = role policy ∩ token scopes, for every role, resource
//! type and interaction. The expected outcome of each cell is data
//! (`data/access-matrix.txt`), so the table is what the policy file promises.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{FHIR_JSON, Resp, TestApp};
use crate::identity::{
    APP, REDIRECT_URI, Server, add_service, add_user, bearer, cli, password_flow, spawn_configured,
};

const MATRIX: &str = include_str!("data/access-matrix.txt");
const MATRIX_WITHOUT_SCOPE: &str = include_str!("data/access-matrix-without-scope.txt");
/// A token that reaches no type of the matrix.
const NARROW_SCOPE: &str = "openid fhirUser user/Location.rs";
const INTERACTIONS: [&str; 8] = [
    "create",
    "read",
    "vread",
    "update",
    "delete",
    "search",
    "history",
    "everything",
];
/// No second factor, so the test can sign every role in with a password.
const NO_MFA: &str = "[identity]\nmfa_required_roles = []\n";
const SCOPE_ALL: &str = "openid fhirUser user/*.cruds";

/// A server with a SMART app allowed every user scope, and a token per role.
async fn server_with_roles() -> (Server, BTreeMap<String, String>) {
    let app = spawn_configured(NO_MFA).await;
    register_app(&app).await;
    let mut tokens = BTreeMap::new();
    for role in [
        "clinician",
        "nurse",
        "registrar",
        "patient",
        "auditor",
        "admin",
    ] {
        let user = format!("{role}-user");
        if role == "patient" {
            // A patient is linked to their own Patient record.
            let own = app.create(&body("Patient", "")).await["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let link = format!("Patient/{own}");
            cli(
                &app,
                &[
                    "user",
                    "add",
                    &user,
                    "--role",
                    "patient",
                    "--fhir-user",
                    &link,
                ],
                Some(crate::identity::PASSWORD),
            )
            .await;
        } else {
            add_user(&app, &user, role).await;
        }
        let t = password_flow(&app, &user, SCOPE_ALL, "").await;
        tokens.insert(
            role.to_owned(),
            t["access_token"].as_str().unwrap().to_owned(),
        );
    }
    // The suite's own client is a backend service (system/*.cruds).
    tokens.insert("service".into(), app.token.clone());
    (app, tokens)
}

/// A valid resource of `ty` (as the service client creates them for each cell).
fn body(ty: &str, patient: &str) -> Value {
    let subject = json!({"reference": format!("Patient/{patient}")});
    match ty {
        "Patient" => json!({"resourceType": "Patient", "gender": "other"}),
        "Observation" => json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "pulse"}, "subject": subject}),
        "Condition" => json!({"resourceType": "Condition", "subject": subject,
            "code": {"text": "asthma"}}),
        "MedicationRequest" => json!({"resourceType": "MedicationRequest", "status": "active",
            "intent": "order", "medicationCodeableConcept": {"text": "salbutamol"},
            "subject": subject}),
        "DocumentReference" => json!({"resourceType": "DocumentReference", "status": "current",
            "subject": subject,
            "content": [{"attachment": {"contentType": "text/plain", "data": "bm90ZQ=="}}]}),
        "Practitioner" => json!({"resourceType": "Practitioner", "name": [{"family": "Osler"}]}),
        "Consent" => json!({"resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                  "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": subject,
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                       "code": "OPTIN"}]}}),
        other => json!({"resourceType": other}),
    }
}

async fn as_role(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Resp {
    let mut req = app.request(method, path);
    if let Some(b) = body {
        req = req.header("content-type", FHIR_JSON).body(b.to_string());
    }
    app.send_with(&bearer(token), req).await
}

/// Creates a resource with the service token; for AuditEvent (never creatable) the first
/// audit record, which every server writes at start.
async fn fixture(app: &TestApp, ty: &str, patient: &str) -> Option<String> {
    if ty == "AuditEvent" {
        return Some("1".into());
    }
    let created = app.create(&body(ty, patient)).await;
    Some(created["id"].as_str().unwrap().to_owned())
}

/// Runs one interaction as a role and returns the status.
async fn run(
    app: &TestApp,
    token: &str,
    ty: &str,
    id: &str,
    patient: &str,
    interaction: &str,
) -> (u16, String) {
    let resp = match interaction {
        "create" => as_role(app, token, Method::POST, ty, Some(&body(ty, patient))).await,
        "read" => as_role(app, token, Method::GET, &format!("{ty}/{id}"), None).await,
        "vread" => {
            as_role(
                app,
                token,
                Method::GET,
                &format!("{ty}/{id}/_history/1"),
                None,
            )
            .await
        }
        "update" => {
            let mut b = body(ty, patient);
            b["id"] = json!(id);
            as_role(app, token, Method::PUT, &format!("{ty}/{id}"), Some(&b)).await
        }
        "delete" => as_role(app, token, Method::DELETE, &format!("{ty}/{id}"), None).await,
        "search" => as_role(app, token, Method::GET, &format!("{ty}?_count=1"), None).await,
        "history" => {
            as_role(
                app,
                token,
                Method::GET,
                &format!("{ty}/{id}/_history"),
                None,
            )
            .await
        }
        "everything" => {
            as_role(
                app,
                token,
                Method::GET,
                &format!("{ty}/{id}/$everything"),
                None,
            )
            .await
        }
        other => panic!("unknown interaction {other}"),
    };
    let why = if resp.status >= 400 {
        resp.json()["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    } else {
        String::new()
    };
    (resp.status, why)
}

fn matches(expected: &str, status: u16) -> bool {
    match expected {
        "ok" => (200..300).contains(&status),
        n => n.parse::<u16>().is_ok_and(|e| e == status),
    }
}

/// Runs every cell of a matrix (see `data/access-matrix.txt`) with the role's token from
/// `tokens`; returns how many cells ran and the ones that differ.
async fn run_matrix(
    app: &TestApp,
    tokens: &BTreeMap<String, String>,
    patient: &str,
    matrix: &str,
) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let mut cells = 0;
    for line in matrix
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cols.len(),
            2 + INTERACTIONS.len(),
            "malformed matrix row: {line}"
        );
        let (role, ty) = (cols[0], cols[1]);
        let token = &tokens[role];
        // A fresh resource per row; `delete` runs last so the others find it.
        let id = fixture(app, ty, patient)
            .await
            .unwrap_or_else(|| "x1".into());
        let mut order: Vec<usize> = (0..INTERACTIONS.len()).collect();
        order.sort_by_key(|i| INTERACTIONS[*i] == "delete");
        for i in order {
            let expected = cols[2 + i];
            if expected == "-" {
                continue;
            }
            cells += 1;
            let (status, why) = run(app, token, ty, &id, patient, INTERACTIONS[i]).await;
            if !matches(expected, status) {
                failures.push(format!(
                    "{role} {} {ty}: expected {expected}, got {status} ({why})",
                    INTERACTIONS[i]
                ));
            }
        }
    }
    (cells, failures)
}

/// Every (role, type, interaction) cell, with a token whose scopes allow everything (the role
/// decides) and with one whose scopes reach none of the types (the scope decides).
#[tokio::test]
async fn the_role_matrix_holds() {
    let (app, tokens) = server_with_roles().await;
    let patient = app.create(&body("Patient", "")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (cells, failures) = run_matrix(&app, &tokens, &patient, MATRIX).await;
    assert!(cells >= 399, "only {cells} cells ran");
    assert!(
        failures.is_empty(),
        "{} of {cells} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The same roles, with tokens for Location only.
    let mut narrow = BTreeMap::new();
    for role in [
        "clinician",
        "nurse",
        "registrar",
        "patient",
        "auditor",
        "admin",
    ] {
        let t = password_flow(&app, &format!("{role}-user"), NARROW_SCOPE, "").await;
        narrow.insert(
            role.to_owned(),
            t["access_token"].as_str().unwrap().to_owned(),
        );
    }
    let key = add_service(&app, "narrow-service", "system/Location.rs").await;
    let token = cli(
        &app,
        &[
            "token",
            "--client",
            "narrow-service",
            "--key",
            key.to_str().unwrap(),
            "--url",
            &app.root,
        ],
        None,
    )
    .await;
    narrow.insert("service".into(), token.trim().to_owned());
    let (cells, failures) = run_matrix(&app, &narrow, &patient, MATRIX_WITHOUT_SCOPE).await;
    assert!(cells >= 399, "only {cells} cells ran");
    assert!(
        failures.is_empty(),
        "without a matching scope, {} of {cells} cells differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The scopes of the token narrow what the role allows: a clinician whose app asked only for
/// reading gets 403 on writes, and a role's refusal is not widened by a broad scope.
#[tokio::test]
async fn effective_permission_is_role_and_scope() {
    let (app, tokens) = server_with_roles().await;
    let read_only = password_flow(&app, "clinician-user", "openid user/*.rs", "").await;
    let read_only = read_only["access_token"].as_str().unwrap();
    let patient = app.create(&body("Patient", "")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let read = as_role(
        &app,
        read_only,
        Method::GET,
        &format!("Patient/{patient}"),
        None,
    )
    .await;
    read.assert_status(200);
    let write = as_role(
        &app,
        read_only,
        Method::POST,
        "Observation",
        Some(&body("Observation", &patient)),
    )
    .await;
    write.assert_status(403);
    assert!(
        write
            .header("www-authenticate")
            .is_some_and(|h| h.contains("insufficient_scope")),
        "a scope refusal says so: {:?}",
        write.header("www-authenticate")
    );
    // The registrar's token has user/*.cruds, but the role does not reach clinical data: a
    // role refusal is 403 `forbidden`, not a scope problem.
    let registrar = as_role(&app, &tokens["registrar"], Method::GET, "Observation", None).await;
    registrar.assert_status(403);
    assert!(registrar.header("www-authenticate").is_none());
    assert!(
        registrar.text().contains("registrar"),
        "{}",
        registrar.text()
    );
    // Inside a transaction, one entry beyond the role refuses the whole Bundle.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body("Patient", ""), "request": {"method": "POST", "url": "Patient"}},
        {"resource": body("Observation", &patient), "request": {"method": "POST", "url": "Observation"}},
    ]});
    let tx = as_role(&app, &tokens["registrar"], Method::POST, "", Some(&bundle)).await;
    tx.assert_status(403);
    let patients = app.get("Patient?_summary=count").await.json();
    // The patient user's own record, and the one created above.
    assert_eq!(
        patients["total"], 2,
        "the refused transaction stored nothing"
    );
}

/// Two patients, each with an Observation; returns (x, y, x's observation, y's observation).
async fn two_patients(app: &TestApp) -> (String, String, String, String) {
    let id = |v: Value| v["id"].as_str().unwrap().to_owned();
    let x = id(app.create(&body("Patient", "")).await);
    let y = id(app.create(&body("Patient", "")).await);
    let ox = id(app.create(&body("Observation", &x)).await);
    let oy = id(app.create(&body("Observation", &y)).await);
    (x, y, ox, oy)
}

/// Checks that `token` reaches patient `x`'s record and nothing of patient `y`'s, through
/// every door: reads (404 outside, as if absent), searches (compartment only, totals
/// included), history, `$everything`, and the parameters and interactions that could reach
/// further (403).
async fn assert_confined_to(app: &TestApp, token: &str, (x, y, ox, oy): (&str, &str, &str, &str)) {
    let get = |p: String| async move { as_role(app, token, Method::GET, &p, None).await };
    get(format!("Patient/{x}")).await.assert_status(200);
    get(format!("Observation/{ox}")).await.assert_status(200);
    get(format!("Observation/{ox}/_history/1"))
        .await
        .assert_status(200);
    get(format!("Patient/{x}/$everything"))
        .await
        .assert_status(200);
    for path in [
        format!("Patient/{y}"),
        format!("Observation/{oy}"),
        format!("Observation/{oy}/_history/1"),
        format!("Observation/{oy}/_history"),
        format!("Patient/{y}/$everything"),
        format!("Patient/{y}/Observation"),
        "Observation/does-not-exist".to_owned(),
    ] {
        let r = get(path.clone()).await;
        // The same answer as for an id that does not exist.
        r.assert_status(404);
    }
    // Searches see the compartment only, and count only it.
    let all = get("Observation?_total=accurate".into()).await.json();
    assert_eq!(all["total"], 1, "{all}");
    assert_eq!(all["entry"][0]["resource"]["id"], ox);
    let by_subject = get(format!("Observation?subject=Patient/{y}&_total=accurate"))
        .await
        .json();
    assert_eq!(by_subject["total"], 0, "{by_subject}");
    let patients = get("Patient?_total=accurate".into()).await.json();
    assert_eq!(patients["total"], 1);
    assert_eq!(patients["entry"][0]["resource"]["id"], x);
    for r in [
        get("Observation?_include=Observation:subject".to_owned()).await,
        get("Patient?_revinclude=Observation:subject".into()).await,
        get("Patient?_has:Observation:subject:status=final".into()).await,
        get("Observation?subject.gender=other".into()).await,
        get("Practitioner".into()).await,
        get("?_type=Observation".into()).await,
        get("Observation/_history".into()).await,
        get("_history".into()).await,
    ] {
        r.assert_status(403);
    }
    // Writes and Bundles are refused.
    as_role(
        app,
        token,
        Method::POST,
        "Observation",
        Some(&body("Observation", x)),
    )
    .await
    .assert_status(403);
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Observation/{oy}")}}]});
    // A batch answers, but each entry is refused; nothing of the other patient comes back.
    let batch = as_role(app, token, Method::POST, "", Some(&bundle)).await;
    batch.assert_status(200);
    assert_eq!(batch.json()["entry"][0]["response"]["status"], "403");
    assert!(!batch.text().contains("\"Observation\",\"id\""));
}

/// A patient signed in sees their own record and nothing of anyone else's.
#[tokio::test]
async fn a_patient_reaches_only_their_own_compartment() {
    let app = spawn_configured(NO_MFA).await;
    register_app(&app).await;
    let (x, y, ox, oy) = two_patients(&app).await;
    cli(
        &app,
        &[
            "user",
            "add",
            "pat",
            "--role",
            "patient",
            "--fhir-user",
            &format!("Patient/{x}"),
        ],
        Some(crate::identity::PASSWORD),
    )
    .await;
    let token = password_flow(&app, "pat", SCOPE_ALL, "").await;
    let token = token["access_token"].as_str().unwrap();
    assert_confined_to(&app, token, (&x, &y, &ox, &oy)).await;
    // A record moved to this patient from another keeps the other patient's versions out of
    // reach: the current version reads, the old one and the history do not.
    let moved = app.create(&body("Observation", &y)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut now_x = body("Observation", &x);
    now_x["id"] = json!(moved);
    app.put(&now_x).await;
    as_role(
        &app,
        token,
        Method::GET,
        &format!("Observation/{moved}"),
        None,
    )
    .await
    .assert_status(200);
    as_role(
        &app,
        token,
        Method::GET,
        &format!("Observation/{moved}/_history/1"),
        None,
    )
    .await
    .assert_status(404);
    as_role(
        &app,
        token,
        Method::GET,
        &format!("Observation/{moved}/_history/2"),
        None,
    )
    .await
    .assert_status(200);
    as_role(
        &app,
        token,
        Method::GET,
        &format!("Observation/{moved}/_history"),
        None,
    )
    .await
    .assert_status(404);
    // A patient not linked to a record reaches nothing.
    add_user(&app, "unlinked", "patient").await;
    let t = password_flow(&app, "unlinked", SCOPE_ALL, "").await;
    as_role(
        &app,
        t["access_token"].as_str().unwrap(),
        Method::GET,
        "Observation",
        None,
    )
    .await
    .assert_status(403);
}

/// A clinician launching an app for one patient (`launch/patient` + `patient/` scopes) is
/// confined to that patient by the token, although the role could see everyone.
#[tokio::test]
async fn a_patient_launch_confines_a_clinicians_token_to_that_patient() {
    let app = spawn_configured(NO_MFA).await;
    register_app(&app).await;
    let (x, y, ox, oy) = two_patients(&app).await;
    add_user(&app, "doc", "clinician").await;
    let t = password_flow(&app, "doc", "openid launch/patient patient/*.rs", &x).await;
    assert_eq!(t["patient"], x.as_str());
    assert_confined_to(
        &app,
        t["access_token"].as_str().unwrap(),
        (&x, &y, &ox, &oy),
    )
    .await;
    // The same clinician with user/ scopes is not confined.
    let broad = password_flow(&app, "doc", SCOPE_ALL, "").await;
    as_role(
        &app,
        broad["access_token"].as_str().unwrap(),
        Method::GET,
        &format!("Observation/{oy}"),
        None,
    )
    .await
    .assert_status(200);
}

pub(crate) async fn register_app(app: &TestApp) {
    cli(
        app,
        &[
            "client",
            "add",
            APP,
            "--public",
            "--redirect-uri",
            REDIRECT_URI,
            "--scope",
            "openid fhirUser user/*.cruds patient/*.rs launch/patient offline_access",
            "--refresh",
        ],
        None,
    )
    .await;
}

/// The policy is data: `haven policy check` validates a file; a server started with another
/// policy applies it and records the change in the audit trail.
#[tokio::test]
async fn the_policy_file_is_checked_applied_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "version = 1\n[roles.registrar]\nObservations = \"rs\"\n",
    )
    .unwrap();
    let out = crate::helpers::haven()
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Observations"));
    let out = crate::helpers::haven()
        .args(["policy", "check"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("registrar:"));

    // A hospital lets registrars read (not write) observations.
    let custom = haven_domain::policy::DEFAULT_POLICY.replace(
        "\"@scheduling\" = \"cruds\"",
        "\"@scheduling\" = \"cruds\"\nObservation = \"rs\"",
    );
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, custom).unwrap();
    let config = format!(
        "{NO_MFA}[authorization]\npolicy_file = \"{}\"\n",
        file.display()
    );
    let app = spawn_configured(&config).await;
    cli(
        &app,
        &[
            "client",
            "add",
            APP,
            "--public",
            "--redirect-uri",
            REDIRECT_URI,
            "--scope",
            "openid user/*.cruds",
            "--refresh",
        ],
        None,
    )
    .await;
    add_user(&app, "reggie", "registrar").await;
    let token = password_flow(&app, "reggie", "openid user/*.cruds", "").await;
    let token = token["access_token"].as_str().unwrap();
    as_role(&app, token, Method::GET, "Observation", None)
        .await
        .assert_status(200);
    let patient = app.create(&body("Patient", "")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    as_role(
        &app,
        token,
        Method::POST,
        "Observation",
        Some(&body("Observation", &patient)),
    )
    .await
    .assert_status(403);
    assert!(
        app.wait_for_log(|l| l.contains("\"policy-change\""))
            .await
            .is_some(),
        "the policy change is not in the audit trail"
    );
}

/// Side doors of roles that are not confined: a registrar may search Patients but not reach
/// Observations. `_include` and `_revinclude` are filtered (the Patients come back, the
/// Observations do not); `_has` and chained criteria over Observations are refused (their
/// matches would tell what the Observations hold), in a Bundle entry too.
#[tokio::test]
async fn side_doors_do_not_widen_a_role() {
    let (app, tokens) = server_with_roles().await;
    let patient = app.create(&body("Patient", "")).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.create(&body("Observation", &patient)).await;
    let reg = tokens["registrar"].clone();
    let app_ref: &TestApp = &app;
    let get = |p: &str| {
        let p = p.to_owned();
        let reg = reg.clone();
        async move { as_role(app_ref, &reg, Method::GET, &p, None).await }
    };
    get("Patient").await.assert_status(200);
    // Filtered: the searched resources, without what the role may not read.
    let enc = app
        .create(&json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{patient}")}}))
        .await;
    assert!(enc["id"].is_string());
    for path in [
        "Patient?_revinclude=Observation:subject",
        "Patient?_revinclude=Observation:subject&_revinclude=Encounter:subject",
        "Observation?_include=Observation:subject",
    ] {
        let r = get(path).await;
        if path.starts_with("Observation") {
            // The front door itself is closed.
            r.assert_status(403);
            continue;
        }
        r.assert_status(200);
        let text = r.text();
        assert!(
            !text.contains("\"resourceType\":\"Observation\""),
            "{path}: {text}"
        );
        assert!(
            text.contains("\"resourceType\":\"Patient\""),
            "{path}: {text}"
        );
        if path.contains("Encounter") {
            assert!(
                text.contains("\"resourceType\":\"Encounter\""),
                "{path}: {text}"
            );
        }
    }
    // Refused: criteria over what the role may not read.
    for path in [
        "Patient?_has:Observation:subject:status=final",
        "Encounter?subject.gender=other",
        "Patient?_has:AuditEvent:entity:type=rest",
        // Deeper doors: a chain inside _has, _has inside a chain, two hops.
        "Patient?_has:Encounter:subject:diagnosis.code=B20",
        "Encounter?subject:Patient._has:Condition:subject:code=B20",
        "Encounter?subject:Patient.general-practitioner.name=x",
    ] {
        let r = get(path).await;
        r.assert_status(403);
        assert!(
            !r.text().contains("\"resourceType\":\"Observation\""),
            "{path}"
        );
    }
    // Naming a target type the role may read is fine, and so is an untyped include.
    get("Encounter?_include=Encounter:subject:Patient")
        .await
        .assert_status(200);
    get("Encounter?_include=Encounter:subject")
        .await
        .assert_status(200);
    get("Encounter?subject:Patient.gender=other")
        .await
        .assert_status(200);
    // The same refused door inside a batch entry is refused there.
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?_has:Observation:subject:status=final"}}]});
    let batch = as_role(&app, &reg, Method::POST, "", Some(&bundle)).await;
    batch.assert_status(200);
    assert_eq!(batch.json()["entry"][0]["response"]["status"], "403");
    // ... and a filtered one is filtered there.
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient?_revinclude=Observation:subject"}}]});
    let batch = as_role(&app, &reg, Method::POST, "", Some(&bundle)).await;
    batch.assert_status(200);
    let entry = &batch.json()["entry"][0];
    assert_eq!(entry["response"]["status"], "200 OK", "{entry}");
    assert!(
        !entry
            .to_string()
            .contains("\"resourceType\":\"Observation\""),
        "{entry}"
    );
    // A conditional create runs its criteria as a search: the same doors apply.
    let conditional = |criteria: &str| {
        app_ref
            .request(Method::POST, "Patient")
            .header("content-type", FHIR_JSON)
            .header("if-none-exist", criteria.to_owned())
            .body(body("Patient", "").to_string())
    };
    app.send_with(
        &bearer(&reg),
        conditional("_has:Condition:subject:code=B20"),
    )
    .await
    .assert_status(403);
    app.send_with(&bearer(&reg), conditional("identifier=urn:mrn|77"))
        .await
        .assert_status(201);
    // `$validate` of a stored resource reads it: not for a role that may not read the type.
    let obs = app.create(&body("Observation", &patient)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    as_role(
        &app,
        &reg,
        Method::POST,
        &format!("Observation/{obs}/$validate?mode=delete"),
        None,
    )
    .await
    .assert_status(403);
    // A clinician may.
    as_role(
        &app,
        &tokens["clinician"],
        Method::GET,
        "Patient?_revinclude=Observation:subject",
        None,
    )
    .await
    .assert_status(200);
}

/// A patient may change the elements the policy lists (`own_patient_fields`: telecom, address,
/// contact, communication) on their own Patient record, nothing else, and no one else's.
#[tokio::test]
async fn a_patient_updates_only_the_allowed_fields_of_their_own_record() {
    let (app, tokens) = server_with_roles().await;
    let me = &tokens["patient"];
    let own = as_role(&app, me, Method::GET, "Patient", None).await.json();
    let record = own["entry"][0]["resource"].clone();
    let id = record["id"].as_str().unwrap().to_owned();
    let path = format!("Patient/{id}");

    // Telecom: allowed.
    let mut changed = record.clone();
    changed["telecom"] = json!([{"system": "phone", "value": "+44 20 7946 0000"}]);
    let r = as_role(&app, me, Method::PUT, &path, Some(&changed)).await;
    r.assert_status(200);
    assert_eq!(r.json()["meta"]["versionId"], "2");
    // Identifiers, names, meta.security: refused, naming the element.
    for (element, value) in [
        (
            "identifier",
            json!([{"system": "urn:mrn", "value": "forged"}]),
        ),
        ("birthDate", json!("1900-01-01")),
        ("gender", json!("male")),
    ] {
        let mut bad = r.json();
        bad[element] = value;
        let refused = as_role(&app, me, Method::PUT, &path, Some(&bad)).await;
        refused.assert_status(403);
        assert!(refused.text().contains(element), "{}", refused.text());
    }
    let mut labelled = r.json();
    labelled["meta"]["security"] = json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}]);
    let refused = as_role(&app, me, Method::PUT, &path, Some(&labelled)).await;
    refused.assert_status(403);
    assert!(
        refused.text().contains("meta.security"),
        "{}",
        refused.text()
    );

    // PATCH: the same rule on the patched result.
    let patch = |ops: Value| {
        app.request(Method::PATCH, &path)
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string())
    };
    let ok = app
        .send_with(
            &bearer(me),
            patch(json!([{"op": "add", "path": "/address", "value": [{"city": "Leeds"}]}])),
        )
        .await;
    ok.assert_status(200);
    let bad = app
        .send_with(
            &bearer(me),
            patch(json!([{"op": "replace", "path": "/gender", "value": "unknown"}])),
        )
        .await;
    bad.assert_status(403);

    // Not another patient's record; not with a read-only token; the stored record shows only
    // the allowed changes.
    let other = app.create(&body("Patient", "")).await;
    let other_path = format!("Patient/{}", other["id"].as_str().unwrap());
    let mut theirs = other.clone();
    theirs["telecom"] = json!([{"system": "phone", "value": "1"}]);
    let r = as_role(&app, me, Method::PUT, &other_path, Some(&theirs)).await;
    assert!(matches!(r.status, 403 | 404), "{}", r.status);
    let read_only = password_flow(&app, "patient-user", "openid fhirUser user/*.rs", "").await;
    let read_only = read_only["access_token"].as_str().unwrap();
    let mut again = app.get(&path).await.json();
    again["telecom"] = json!([{"system": "email", "value": "me@example.org"}]);
    as_role(&app, read_only, Method::PUT, &path, Some(&again))
        .await
        .assert_status(403);
    let stored = app.get(&path).await.json();
    assert_eq!(stored["meta"]["versionId"], "3");
    assert_eq!(stored["gender"], record["gender"]);
    assert_eq!(stored["address"][0]["city"], "Leeds");
}

fn categorised(patient: &str, category: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": category}]}],
        "code": {"text": "a measurement"},
        "subject": {"reference": format!("Patient/{patient}")}})
}

/// Granular SMART v2 scopes (`Observation.rs?category=vital-signs`) allow reads and searches
/// of what matches their filter, and nothing else of that type.
#[tokio::test]
async fn granular_scopes_filter_what_is_returned() {
    let app = spawn_configured(NO_MFA).await;
    register_app(&app).await;
    add_user(&app, "clinician-user", "clinician").await;
    let id = |v: Value| v["id"].as_str().unwrap().to_owned();
    let x = id(app.create(&body("Patient", "")).await);
    let y = id(app.create(&body("Patient", "")).await);
    let vital_x = id(app.create(&categorised(&x, "vital-signs")).await);
    let lab_x = id(app.create(&categorised(&x, "laboratory")).await);
    let vital_y = id(app.create(&categorised(&y, "vital-signs")).await);

    let search_ids = |r: Resp| -> Vec<String> {
        r.assert_status(200);
        r.json()["entry"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };

    // A patient launch with vital signs only.
    let t = password_flow(
        &app,
        "clinician-user",
        "openid fhirUser launch/patient patient/Observation.rs?category=vital-signs",
        &x,
    )
    .await;
    assert!(
        t["scope"]
            .as_str()
            .unwrap()
            .contains("patient/Observation.rs?category=vital-signs"),
        "{t}"
    );
    let token = t["access_token"].as_str().unwrap().to_owned();
    let get = |path: String| {
        let token = token.clone();
        let app = &app;
        async move { as_role(app, &token, Method::GET, &path, None).await }
    };
    assert_eq!(
        search_ids(get("Observation".into()).await),
        vec![vital_x.clone()]
    );
    assert!(search_ids(get("Observation?category=laboratory".into()).await).is_empty());
    get(format!("Observation/{vital_x}"))
        .await
        .assert_status(200);
    get(format!("Observation/{vital_x}/_history/1"))
        .await
        .assert_status(200);
    get(format!("Observation/{lab_x}")).await.assert_status(404);
    get(format!("Observation/{vital_y}"))
        .await
        .assert_status(404);
    // Nothing else: other types, history, writes, Bundles.
    get(format!("Patient/{x}")).await.assert_status(403);
    get(format!("Observation/{vital_x}/_history"))
        .await
        .assert_status(403);
    as_role(
        &app,
        &token,
        Method::POST,
        "Observation",
        Some(&categorised(&x, "vital-signs")),
    )
    .await
    .assert_status(403);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation"}}]});
    let b = as_role(&app, &token, Method::POST, "", Some(&batch)).await;
    b.assert_status(200);
    assert_eq!(b.json()["entry"][0]["response"]["status"], "403");

    // A user-level scope for laboratory results, and two filters on one parameter (OR).
    let lab = password_flow(
        &app,
        "clinician-user",
        "openid fhirUser user/Observation.rs?category=laboratory",
        "",
    )
    .await;
    let lab = lab["access_token"].as_str().unwrap().to_owned();
    let found = search_ids(as_role(&app, &lab, Method::GET, "Observation", None).await);
    assert_eq!(found, vec![lab_x.clone()]);
    as_role(
        &app,
        &lab,
        Method::GET,
        &format!("Observation/{vital_y}"),
        None,
    )
    .await
    .assert_status(404);
    let both = password_flow(
        &app,
        "clinician-user",
        "openid fhirUser user/Observation.rs?category=laboratory user/Observation.rs?category=vital-signs",
        "",
    )
    .await;
    let both = both["access_token"].as_str().unwrap().to_owned();
    let mut found = search_ids(as_role(&app, &both, Method::GET, "Observation", None).await);
    found.sort();
    let mut expected = vec![vital_x, lab_x, vital_y];
    expected.sort();
    assert_eq!(found, expected);
}
