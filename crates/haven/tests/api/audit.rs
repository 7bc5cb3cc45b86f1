//! The audit trail, end to end: every access recorded (durably, before the answer), sealed into
//! a hash chain with signed checkpoints, shipped as ECS lines, verified by `haven audit verify`
//! (which names the first altered record), reported per patient, and failing closed.

use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, exec, observation, patient, postgres_backend, spawn_app, spawn_app_in,
};

async fn run(mut cmd: tokio::process::Command) -> Output {
    cmd.output().await.expect("run haven")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The accounting of disclosures of `patient` as JSON.
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
    let out = run(cmd).await;
    assert!(out.status.success(), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    v["disclosures"].as_array().expect("disclosures").clone()
}

/// Some clinical traffic about one patient; returns the patient's id.
async fn traffic(app: &TestApp) -> String {
    let mut p = patient();
    p["name"] = json!([{"family": "Zzyzx-Canary", "given": ["Ada"]}]);
    let created = app.create(&p).await;
    let id = created["id"].as_str().unwrap().to_owned();
    app.create(&observation(&format!("Patient/{id}"))).await;
    app.get(&format!("Patient/{id}")).await.assert_status(200);
    app.get(&format!("Observation?subject=Patient/{id}"))
        .await
        .assert_status(200);
    app.get(&format!("Patient/{id}/_history"))
        .await
        .assert_status(200);
    app.get(&format!("Patient/{id}/$everything"))
        .await
        .assert_status(200);
    app.get("Patient/does-not-exist").await.assert_status(404);
    id
}

#[tokio::test]
async fn every_access_to_a_patient_is_in_their_accounting() {
    let app = spawn_app().await;
    let id = traffic(&app).await;
    let rows = report(&app, &id).await;
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for expected in [
        "create",
        "read",
        "search-type",
        "history-instance",
        "everything",
    ] {
        assert!(
            actions.contains(&expected),
            "{expected} missing from {actions:?}"
        );
    }
    // Both creates concern the patient: the Patient itself and the Observation about them.
    assert_eq!(
        actions.iter().filter(|a| **a == "create").count(),
        2,
        "{actions:?}"
    );
    for r in &rows {
        assert!(
            r["request_id"].as_str().is_some_and(|s| !s.is_empty()),
            "{r}"
        );
        assert_eq!(r["source_ip"], "127.0.0.1", "{r}");
    }
    // Identifiers only: no clinical content in the trail.
    let all = serde_json::to_string(&rows).unwrap();
    assert!(
        !all.contains("Zzyzx-Canary"),
        "the report carries PHI: {all}"
    );
    // Another patient's accounting does not list these accesses.
    assert!(report(&app, "someone-else").await.is_empty());
}

#[tokio::test]
async fn sealed_records_go_out_as_ecs_lines_without_phi() {
    let app = spawn_app().await;
    traffic(&app).await;
    // The sealer runs every 200 ms.
    let line = app
        .wait_for_log(|l| l.contains("\"ecs.version\"") || l.contains("\"ecs\":{"))
        .await
        .expect("an ECS line on the audit output");
    let _ = line;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ecs: Vec<Value> = app
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("ecs").is_some() || v.get("ecs.version").is_some())
        .collect();
    assert!(ecs.len() >= 7, "{} ECS lines", ecs.len());
    let schema: Value =
        serde_json::from_str(include_str!("../data/ecs_flat_8.11.json")).expect("ECS fields");
    let fields = schema["fields"].as_object().unwrap();
    let mut seqs = Vec::new();
    for v in &ecs {
        let text = v.to_string();
        assert!(!text.contains("Zzyzx-Canary"), "PHI in an ECS line: {text}");
        for key in v.as_object().unwrap().keys() {
            assert!(
                haven_audit::ECS_TOP_LEVEL_KEYS.contains(&key.as_str()),
                "{key} is not an ECS top-level field Haven documents"
            );
        }
        // Every field is an ECS 8.11 field of the right type with an allowed value, except
        // Haven's own, which live under the custom `haven.` and `labels.` prefixes.
        let mut leaves = Vec::new();
        flatten("", v, &mut leaves);
        for (name, value) in leaves {
            if name.starts_with("haven.") || name.starts_with("labels.") {
                continue;
            }
            let def = fields
                .get(&name)
                .unwrap_or_else(|| panic!("{name} is not an ECS 8.11 field: {text}"));
            let values: Vec<&Value> = match &value {
                Value::Array(items) => {
                    assert!(
                        def["normalize"]
                            .as_array()
                            .is_some_and(|n| n.iter().any(|x| x == "array")),
                        "{name} is an array but ECS does not normalize it to one"
                    );
                    items.iter().collect()
                }
                one => vec![one],
            };
            for item in values {
                let ok = match def["type"].as_str().unwrap() {
                    "keyword" | "constant_keyword" | "wildcard" | "match_only_text" | "text" => {
                        item.is_string()
                    }
                    "long" | "integer" | "short" => item.is_i64() || item.is_u64(),
                    "date" => item
                        .as_str()
                        .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
                    "ip" => item
                        .as_str()
                        .is_some_and(|t| t.parse::<std::net::IpAddr>().is_ok()),
                    "boolean" => item.is_boolean(),
                    other => panic!("{name}: Haven emits no field of ECS type {other}"),
                };
                assert!(ok, "{name} = {item} is not of ECS type {}", def["type"]);
                if let Some(allowed) = def["allowed_values"].as_array() {
                    assert!(
                        allowed.contains(item),
                        "{name} = {item} is not an allowed value"
                    );
                }
            }
        }
        let event = &v["event"];
        for c in event["category"].as_array().expect("event.category") {
            assert!(
                haven_audit::ECS_EVENT_CATEGORIES.contains(&c.as_str().unwrap()),
                "{c}"
            );
        }
        for t in event["type"].as_array().expect("event.type") {
            assert!(
                haven_audit::ECS_EVENT_TYPES.contains(&t.as_str().unwrap()),
                "{t}"
            );
        }
        assert!(matches!(
            event["outcome"].as_str(),
            Some("success" | "failure")
        ));
        assert!(v["@timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        seqs.push(event["sequence"].as_u64().expect("event.sequence"));
    }
    // Every sealed record once, in chain order.
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, seqs);
    assert_eq!(seqs[0], 1);
}

/// Dotted names of a JSON object's leaves (arrays are leaves).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, child, out);
            }
        }
        leaf => out.push((prefix.to_owned(), leaf.clone())),
    }
}

#[tokio::test]
async fn auditevent_is_not_writable_or_readable_through_the_api() {
    let app = spawn_app().await;
    let event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": true}],
        "source": {"observer": {"display": "forged"}}
    });
    let r = app.post_json("AuditEvent", &event).await;
    crate::helpers::assert_outcome(&r, 403, "forbidden");
    app.get("AuditEvent").await.assert_status(403);
    app.get("AuditEvent/x").await.assert_status(403);
    app.delete("AuditEvent/x").await.assert_status(403);
    let tx = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": event, "request": {"method": "POST", "url": "AuditEvent"}}]
    });
    app.post_json("", &tx).await.assert_status(403);
}

/// A record that cannot be stored means no data: a read or write answers 503 and a write
/// leaves nothing behind; once the trail accepts records again, service resumes.
#[tokio::test]
async fn when_the_trail_refuses_records_no_data_is_served_or_changed() {
    let app = spawn_app().await;
    let created = app.create(&patient()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (block, unblock) = if postgres_backend() {
        (
            "CREATE FUNCTION haven_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'audit store down'; END $$; \
             CREATE TRIGGER haven_test_refuse BEFORE INSERT ON audit_event \
             FOR EACH ROW EXECUTE FUNCTION haven_test_refuse();",
            "DROP TRIGGER haven_test_refuse ON audit_event; DROP FUNCTION haven_test_refuse();",
        )
    } else {
        (
            "CREATE TRIGGER haven_test_refuse BEFORE INSERT ON audit_event \
             BEGIN SELECT RAISE(ABORT, 'audit store down'); END;",
            "DROP TRIGGER haven_test_refuse;",
        )
    };
    exec(&app, block).await;
    let read = app.get(&format!("Patient/{id}")).await;
    read.assert_status(503);
    assert!(!read.text().contains(&id) || read.text().contains("OperationOutcome"));
    app.post_json("Patient", &patient())
        .await
        .assert_status(503);
    let mut changed = patient();
    changed["id"] = json!(id);
    changed["active"] = json!(false);
    app.put_json(&format!("Patient/{id}"), &changed)
        .await
        .assert_status(503);
    app.get("Patient?active=true").await.assert_status(503);
    exec(&app, unblock).await;
    let after = app.get(&format!("Patient/{id}")).await;
    after.assert_status(200);
    assert_eq!(
        after.json()["meta"]["versionId"],
        "1",
        "the refused update was stored"
    );
    let all = app.get("Patient?_summary=count").await.json();
    assert_eq!(all["total"], 1, "the refused create was stored");
}

async fn verify(app: &TestApp, extra: &[&str]) -> (bool, String) {
    let mut cmd = app.cli();
    cmd.args(["audit", "verify"]).args(extra);
    let out = run(cmd).await;
    (out.status.success(), text(&out))
}

/// Undoes the append-only protection, as someone with the database's owner rights could.
fn unprotect() -> &'static str {
    if postgres_backend() {
        "ALTER TABLE audit_event DISABLE TRIGGER USER; ALTER TABLE audit_chain DISABLE TRIGGER USER; \
         ALTER TABLE audit_checkpoint DISABLE TRIGGER USER; ALTER TABLE audit_patient DISABLE TRIGGER USER;"
    } else {
        "DROP TRIGGER audit_event_no_update; DROP TRIGGER audit_event_no_delete; \
         DROP TRIGGER audit_chain_no_update; DROP TRIGGER audit_chain_no_delete; \
         DROP TRIGGER audit_checkpoint_no_update; DROP TRIGGER audit_checkpoint_no_delete; \
         DROP TRIGGER audit_patient_no_delete;"
    }
}

/// A server with a sealed trail of some dozens of records, stopped cleanly (the last round
/// signs a checkpoint), with its audit output in a file.
async fn sealed_trail() -> (tempfile::TempDir, TestApp, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("audit.jsonl");
    let out_s = out.to_str().unwrap().to_owned();
    let mut app = spawn_app_in(
        &dir.path().join("data"),
        &[
            ("HAVEN_AUDIT__OUTPUT", out_s.as_str()),
            ("HAVEN_AUDIT__CHECKPOINT_EVERY", "10"),
        ],
    )
    .await;
    for _ in 0..4 {
        traffic(&app).await;
    }
    app.sigterm();
    assert!(app.wait_exit(Duration::from_secs(20)).await.success());
    (dir, app, out)
}

fn broken_at(output: &str) -> u64 {
    let rest = output
        .split("BROKEN at record ")
        .nth(1)
        .unwrap_or_else(|| panic!("no broken record named: {output}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    use sqlx::Connection as _;
    match app.database_url() {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
        None => {
            let path = app.data_dir.join("haven.db");
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    }
}

/// A fresh sealed trail, tampered with by `sql` (after lifting the append-only protection);
/// returns what `haven audit verify` says, with and without the shipped checkpoint copies.
async fn tampered(sql: impl Fn(i64) -> String) -> (bool, String, bool, String) {
    let (_dir, app, out) = sealed_trail().await;
    let total = scalar(&app, "SELECT count(*) FROM audit_chain").await;
    assert!(total >= 25, "only {total} records");
    exec(&app, unprotect()).await;
    exec(&app, &sql(total)).await;
    let (db_ok, db_out) = verify(&app, &[]).await;
    let (log_ok, log_out) = verify(&app, &["--checkpoints-from", out.to_str().unwrap()]).await;
    (db_ok, db_out, log_ok, log_out)
}

const EVENT_AT: &str = "(SELECT event_id FROM audit_chain WHERE seq = {})";

fn event_at(seq: i64) -> String {
    EVENT_AT.replace("{}", &seq.to_string())
}

#[tokio::test]
async fn an_intact_trail_verifies_with_its_shipped_checkpoints() {
    let (_dir, app, out) = sealed_trail().await;
    let (ok, output) = verify(&app, &["--checkpoints-from", out.to_str().unwrap()]).await;
    assert!(ok, "{output}");
    assert!(output.contains("audit trail intact"), "{output}");
    assert!(
        !output.contains(", 0 from logs"),
        "no checkpoint copies were read: {output}"
    );
    // The verification itself is a security event in the trail.
    let n = scalar(&app, "SELECT count(*) FROM audit_event").await;
    let chained = scalar(&app, "SELECT count(*) FROM audit_chain").await;
    assert_eq!(n, chained + 1, "the verify run recorded itself");
}

#[tokio::test]
async fn an_altered_record_is_named() {
    let (ok, out, _, _) = tampered(|_| {
        format!(
            "UPDATE audit_event SET record = record || 'x' WHERE id = {}",
            event_at(7)
        )
    })
    .await;
    assert!(!ok);
    assert_eq!(broken_at(&out), 7, "{out}");
}

#[tokio::test]
async fn reordered_records_are_named() {
    let (ok, out, _, _) = tampered(|_| {
        format!(
            "CREATE TABLE keep AS SELECT id, record FROM audit_event; \
             UPDATE audit_event SET record = (SELECT record FROM keep WHERE keep.id = {b}) WHERE id = {a}; \
             UPDATE audit_event SET record = (SELECT record FROM keep WHERE keep.id = {a}) WHERE id = {b};",
            a = event_at(11),
            b = event_at(12)
        )
    })
    .await;
    assert!(!ok);
    assert_eq!(broken_at(&out), 11, "{out}");
}

#[tokio::test]
async fn a_link_deleted_in_the_middle_is_named() {
    let (ok, out, _, _) = tampered(|_| "DELETE FROM audit_chain WHERE seq = 20".into()).await;
    assert!(!ok);
    assert_eq!(broken_at(&out), 20, "{out}");
}

#[tokio::test]
async fn a_record_deleted_in_the_middle_is_named() {
    let (ok, out, _, _) = tampered(|_| {
        format!(
            "DELETE FROM audit_patient WHERE event_id = {e}; DELETE FROM audit_event WHERE id = {e};",
            e = event_at(21)
        )
    })
    .await;
    assert!(!ok);
    assert_eq!(broken_at(&out), 21, "{out}");
}

#[tokio::test]
async fn records_deleted_at_the_end_are_caught_by_the_checkpoints() {
    // The newest records and their links removed (removing links alone changes nothing: the
    // records are still there, and sealing them again rebuilds the very same chain).
    let cut = |total: i64| {
        format!(
            "DELETE FROM audit_patient WHERE event_id IN (SELECT event_id FROM audit_chain WHERE seq > {n}); \
             DELETE FROM audit_event WHERE id IN (SELECT event_id FROM audit_chain WHERE seq > {n}); \
             DELETE FROM audit_chain WHERE seq > {n};",
            n = total - 3
        )
    };
    let (ok, out, _, _) = tampered(&cut).await;
    assert!(!ok, "{out}");
    assert!(out.contains("BROKEN"), "{out}");
    // And the checkpoints that covered them removed too: the database alone cannot tell, the
    // copies shipped in the audit output can.
    let (db_ok, db_out, log_ok, log_out) = tampered(|total| {
        format!(
            "{} DELETE FROM audit_checkpoint WHERE seq > {};",
            cut(total),
            total - 3
        )
    })
    .await;
    assert!(db_ok, "the database alone holds no evidence left: {db_out}");
    assert!(!log_ok, "{log_out}");
    assert!(log_out.contains("BROKEN"), "{log_out}");
}

#[tokio::test]
async fn forged_checkpoints_are_caught() {
    // A checkpoint's hash rewritten (e.g. to cover a rewritten chain). The newest checkpoint,
    // at the end of the chain: the first one may seal record 1, whose hash this would not change.
    let (ok, out, _, _) = tampered(|_| {
        "UPDATE audit_checkpoint SET hash = (SELECT hash FROM audit_chain WHERE seq = 1) \
         WHERE seq = (SELECT max(seq) FROM audit_checkpoint)"
            .into()
    })
    .await;
    assert!(!ok, "{out}");
    // A checkpoint signed with another key.
    let (ok, out, _, _) = tampered(|_| {
        "UPDATE audit_checkpoint SET key_id = '0000000000000000' \
         WHERE seq = (SELECT max(seq) FROM audit_checkpoint)"
            .into()
    })
    .await;
    assert!(!ok, "{out}");
}

/// Several replicas record and seal at once: one chain, gap-free, every record sealed once,
/// checkpoints from either verify.
#[tokio::test]
async fn two_replicas_seal_one_gap_free_chain() {
    if !postgres_backend() {
        eprintln!(
            "two_replicas_seal_one_gap_free_chain: replicas need PostgreSQL; see HAVEN_TEST_BACKEND=postgres"
        );
        return;
    }
    let mut a = spawn_app().await;
    let url = a.database_url().unwrap();
    let key = a.data_dir.join("audit-signing.key");
    let key_s = key.to_str().unwrap().to_owned();
    // Replicas share the keyring as they share the signing key.
    let ring = a.data_dir.join("keyring.toml");
    let ring_s = ring.to_str().unwrap().to_owned();
    let mut b = crate::helpers::spawn_app_with(&[
        ("HAVEN_DATABASE_URL", url.as_str()),
        ("HAVEN_ENCRYPTION__KEYRING_PATH", ring_s.as_str()),
        ("HAVEN_AUDIT__SIGNING_KEY_FILE", key_s.as_str()),
        ("HAVEN_AUDIT__CHECKPOINT_EVERY", "25"),
    ])
    .await;
    let writes = (0..60).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move {
            app.post_json("Patient", &patient())
                .await
                .assert_status(201)
                .status
        }
    });
    futures::future::join_all(writes).await;
    let reads = (0..60).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        async move { app.get("Patient?_count=5").await.assert_status(200).status }
    });
    futures::future::join_all(reads).await;
    a.sigterm();
    b.sigterm();
    assert!(a.wait_exit(Duration::from_secs(20)).await.success());
    assert!(b.wait_exit(Duration::from_secs(20)).await.success());
    let records = scalar(&a, "SELECT count(*) FROM audit_event").await;
    // The 120 interactions, besides the security events of setting up (the suite client's
    // registration and tokens, the signing key, the role policy).
    let data = scalar(
        &a,
        "SELECT count(*) FROM audit_event WHERE convert_from(record, 'UTF8') LIKE '%\"category\":\"data\"%'",
    )
    .await;
    let chain = scalar(&a, "SELECT count(*) FROM audit_chain").await;
    let max = scalar(&a, "SELECT max(seq) FROM audit_chain").await;
    assert_eq!(data, 120);
    assert_eq!(chain, records, "every record sealed once");
    assert_eq!(max, records, "no gaps");
    let (ok, output) = verify(&a, &[]).await;
    assert!(ok, "{output}");
}

/// The Elasticsearch index template in deploy/logging maps every field Haven emits, with the
/// type ECS 8.11 gives it (strict mapping: a field it lacked would be refused at ingest).
#[test]
fn the_index_template_maps_every_emitted_field_with_its_ecs_type() {
    let template: Value = serde_json::from_str(include_str!(
        "../../../../deploy/logging/haven-audit-template.json"
    ))
    .expect("template JSON");
    let schema: Value =
        serde_json::from_str(include_str!("../data/ecs_flat_8.11.json")).expect("ECS fields");
    let mut mapped = std::collections::HashMap::new();
    fn walk(prefix: &str, props: &Value, out: &mut std::collections::HashMap<String, String>) {
        for (k, v) in props.as_object().unwrap() {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if let Some(children) = v.get("properties") {
                walk(&name, children, out);
            } else if let Some(t) = v["type"].as_str() {
                out.insert(name, t.to_owned());
            }
        }
    }
    walk(
        "",
        &template["template"]["mappings"]["properties"],
        &mut mapped,
    );
    assert_eq!(template["template"]["mappings"]["dynamic"], "strict");
    for field in haven_audit::ECS_FIELDS {
        let t = mapped
            .get(*field)
            .unwrap_or_else(|| panic!("{field} is not mapped in the index template"));
        if let Some(def) = schema["fields"].get(*field) {
            assert_eq!(t, def["type"].as_str().unwrap(), "{field}");
        } else {
            assert!(
                field.starts_with("haven.") || field.starts_with("labels."),
                "{field} is neither ECS nor a custom Haven field"
            );
        }
    }
}

/// On PostgreSQL, Haven runs as an application role that may only SELECT and INSERT the audit
/// tables: with its credentials, no record can be changed or removed, and the append-only
/// triggers cannot be switched off.
#[tokio::test]
async fn the_application_role_cannot_change_or_remove_audit_records() {
    if !postgres_backend() {
        eprintln!(
            "the_application_role_...: roles exist on PostgreSQL only; see HAVEN_TEST_BACKEND=postgres"
        );
        return;
    }
    use sqlx::Connection as _;
    let owner = spawn_app().await;
    let owner_url = owner.database_url().unwrap();
    let role = format!("haven_app_{}", std::process::id());
    exec(
        &owner,
        &format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"),
    )
    .await;
    let mut grant = owner.cli();
    grant.args(["db", "grant", "--app-role", &role]);
    let out = run(grant).await;
    assert!(out.status.success(), "{}", text(&out));

    // Haven itself runs fine as that role: reads, writes, auditing and sealing.
    let app_url = owner_url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(
        app_url, owner_url,
        "cannot derive the role's URL from {owner_url}"
    );
    let mut app = crate::helpers::spawn_app_with(&[("HAVEN_DATABASE_URL", app_url.as_str())]).await;
    let p = app.create(&patient()).await;
    app.get(&format!("Patient/{}", p["id"].as_str().unwrap()))
        .await
        .assert_status(200);
    app.sigterm();
    assert!(app.wait_exit(Duration::from_secs(20)).await.success());

    let mut c = sqlx::PgConnection::connect(&app_url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_chain")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(n >= 2, "the role's server sealed its records ({n})");
    for sql in [
        "UPDATE audit_event SET record = 'x'",
        "DELETE FROM audit_event",
        "DELETE FROM audit_chain",
        "TRUNCATE audit_checkpoint",
        "ALTER TABLE audit_event DISABLE TRIGGER USER",
        "DROP TRIGGER audit_chain_append_only ON audit_chain",
        "DELETE FROM _sqlx_migrations",
    ] {
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .expect_err(sql);
        let msg = err.to_string();
        assert!(
            msg.contains("permission denied") || msg.contains("must be owner"),
            "{sql}: {msg}"
        );
    }
    let _ = c.close().await;
    exec(&owner, &format!("DROP OWNED BY {role}")).await;
    drop(owner);
    exec_admin(&format!("DROP ROLE IF EXISTS {role}")).await;
}

async fn exec_admin(sql: &str) {
    use sqlx::Connection as _;
    let admin = std::env::var("HAVEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut c)
        .await;
}

/// Accesses that do not show the patient in what they return still count for that patient:
/// a search whose results `_elements` trimmed, a deletion (no body is stored), and a
/// conditional delete of several resources (each one is in the record).
#[tokio::test]
async fn trimmed_results_and_deletions_are_in_the_patients_accounting() {
    let app = spawn_app().await;
    let p = app.create(&patient()).await;
    let id = p["id"].as_str().unwrap().to_owned();
    let mut obs = Vec::new();
    for _ in 0..3 {
        let mut o = observation(&format!("Patient/{id}"));
        o["code"] = json!({"coding": [{"system": "http://loinc.org", "code": "29463-7"}]});
        obs.push(app.create(&o).await["id"].as_str().unwrap().to_owned());
    }
    app.get(&format!(
        "Observation?subject=Patient/{id}&_elements=status"
    ))
    .await
    .assert_status(200);
    app.delete(&format!("Observation/{}", obs[0]))
        .await
        .assert_status(204);
    app.delete("Observation?code=http://loinc.org|29463-7")
        .await
        .assert_status(204);
    app.delete(&format!("Patient/{id}"))
        .await
        .assert_status(204);

    let rows = report(&app, &id).await;
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"search-type"), "{actions:?}");
    let deletes: Vec<&Value> = rows.iter().filter(|r| r["action"] == "delete").collect();
    assert_eq!(deletes.len(), 3, "{rows:?}");
    let records: Vec<&str> = deletes
        .iter()
        .map(|r| r["records"].as_str().unwrap())
        .collect();
    assert!(records[0].contains(&obs[0]), "{records:?}");
    // The conditional delete removed the two that were left, both in its one record.
    assert!(
        records[1].contains(&obs[1]) && records[1].contains(&obs[2]),
        "{records:?}"
    );
    assert!(records[2].contains(&format!("Patient/{id}")), "{records:?}");
}
