//! `haven backup`, `haven backup verify` and `haven restore`, on the suite's backend: a backup
//! taken while the server writes restores into a fresh instance that serves the same data
//! (reads, history, search through the rebuilt index) with an intact audit trail; a flipped
//! byte, a forged manifest or an untrusted key make verify and restore refuse, and a refused
//! restore writes nothing.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_store_postgres::testing::TempDatabase;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, database_for, haven, observation, patient, postgres_backend, spawn_app, spawn_app_in,
    suite_key_path,
};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn backup(app: &TestApp, out: &Path) -> Output {
    let mut cmd = app.cli();
    cmd.arg("backup").arg("--out").arg(out);
    cmd.output().await.expect("run haven backup")
}

/// A fresh instance to restore into: a data directory holding the source's audit signing key,
/// its keyring
/// and the suite client's key (as an operator restores keys from their secret store), and on
/// PostgreSQL its own empty database.
fn copy_owner_only(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::copy(from, to).expect("the source has a keyring");
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
}

struct Target {
    dir: tempfile::TempDir,
    db: Option<Arc<TempDatabase>>,
}

impl Target {
    async fn new(source: &TestApp) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::copy(
            source.data_dir.join("audit-signing.key"),
            data.join("audit-signing.key"),
        )
        .expect("the source has an audit signing key");
        // A backup holds data keys wrapped by the key-encryption keys, never those: the
        // restored instance needs the source's keyring, as an operator restores it from
        // their secret store.
        copy_owner_only(
            &source.data_dir.join("keyring.toml"),
            &data.join("keyring.toml"),
        );
        std::fs::copy(suite_key_path(&source.data_dir), suite_key_path(&data)).unwrap();
        let db = if postgres_backend() {
            Some(database_for(&data).await)
        } else {
            None
        };
        Self { dir, db }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cli(&self) -> tokio::process::Command {
        let mut cmd = haven();
        cmd.arg("--data-dir").arg(self.data());
        if let Some(db) = &self.db {
            cmd.env("HAVEN_DATABASE_URL", &db.url);
        }
        cmd
    }

    async fn restore(&self, backup: &Path) -> Output {
        let mut cmd = self.cli();
        cmd.arg("restore").arg(backup);
        cmd.output().await.expect("run haven restore")
    }

    /// Whether the target holds anything a restore would have written.
    async fn is_empty(&self) -> bool {
        match &self.db {
            Some(db) => {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                let tables: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name = 'resource_version'",
                )
                .fetch_one(&mut c)
                .await
                .unwrap();
                if tables == 0 {
                    return true;
                }
                let rows: i64 = sqlx::query_scalar(
                    "SELECT (SELECT count(*) FROM resource_version) + (SELECT count(*) FROM audit_event)",
                )
                .fetch_one(&mut c)
                .await
                .unwrap();
                rows == 0
            }
            None => !self.data().join("haven.db").exists(),
        }
    }
}

async fn verify(app: &TestApp, dir: &Path) -> Output {
    let mut cmd = app.cli();
    cmd.args(["backup", "verify"]).arg(dir);
    cmd.output().await.expect("run haven backup verify")
}

/// Some of everything: patients with observations, an update, a deletion.
async fn clinical_data(app: &TestApp, patients: usize) -> Vec<String> {
    let mut refs = Vec::new();
    for i in 0..patients {
        let mut p = patient();
        p["name"][0]["family"] = json!(format!("Restorable{i}"));
        let p = app.create(&p).await;
        let pid = format!("Patient/{}", p["id"].as_str().unwrap());
        let o = app.create(&observation(&pid)).await;
        refs.push(pid);
        refs.push(format!("Observation/{}", o["id"].as_str().unwrap()));
    }
    // An update (two versions) and a deletion.
    let first = app.get(&refs[0]).await.json();
    let mut updated = first.clone();
    updated["gender"] = json!("other");
    app.put_json(&refs[0], &updated).await.assert_status(200);
    app.delete(&refs[1]).await.assert_status(204);
    refs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_into_a_fresh_instance() {
    let app = spawn_app().await;
    let refs = clinical_data(&app, 10).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("backup");

    // Writes keep coming while the backup reads its snapshot.
    let writer = {
        let client = app.client.clone();
        let url = app.url("Patient");
        tokio::spawn(async move {
            let mut ok = 0u32;
            for _ in 0..40 {
                let r = client.post(&url).json(&patient()).send().await.unwrap();
                if r.status() == 201 {
                    ok += 1;
                }
            }
            ok
        })
    };
    let made = backup(&app, &out).await;
    let written = writer.await.unwrap();
    assert!(made.status.success(), "{}", text(&made));
    assert_eq!(written, 40, "writes went on during the backup");
    assert!(text(&made).contains("verified"), "{}", text(&made));
    assert!(!work.path().join("backup.partial").exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("resource_version.ndjson.gz"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "backup files are owner-only: {mode:o}");

    let checked = verify(&app, &out).await;
    assert!(checked.status.success(), "{}", text(&checked));

    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let in_backup = manifest["resources"]["Patient"].as_u64().unwrap();
    assert!(
        (10..=50).contains(&in_backup),
        "a snapshot holds the 10 patients and some of the 40 written meanwhile: {in_backup}"
    );
    assert!(
        manifest["audit"]["head_seq"]
            .as_u64()
            .is_some_and(|s| s > 0)
    );

    // Restore into a fresh instance, timed.
    let target = Target::new(&app).await;
    let started = Instant::now();
    let restored = target.restore(&out).await;
    let took = started.elapsed();
    assert!(restored.status.success(), "{}", text(&restored));
    eprintln!(
        "restore of {} resource versions took {:.2} s ({})",
        manifest["tables"][0]["rows"],
        took.as_secs_f64(),
        if postgres_backend() {
            "postgres"
        } else {
            "sqlite"
        }
    );

    let copy = spawn_app_in(&target.data(), &[]).await;
    // Every resource reads the same, version and time included; the deleted one is gone.
    for r in refs.iter().skip(2) {
        let a = app.get(r).await.json();
        let b = copy.get(r).await.json();
        assert_eq!(a, b, "{r}");
    }
    assert_eq!(copy.get(&refs[0]).await.json()["meta"]["versionId"], "2");
    copy.get(&refs[1]).await.assert_status(410);
    let history = copy.get(&format!("{}/_history", refs[0])).await.json();
    assert_eq!(
        history["entry"].as_array().map(Vec::len),
        Some(2),
        "history is restored: {history}"
    );
    // Search runs on the rebuilt index.
    let found = copy.get("Patient?family=Restorable3").await.json();
    assert_eq!(found["total"], 1, "{found}");
    let all = copy.get("Patient?_summary=count").await.json();
    assert_eq!(all["total"].as_u64(), Some(in_backup));
    // The restored instance takes new writes.
    copy.create(&patient()).await;

    // The audit trail came along and continues intact in the restored instance.
    let mut audit = target.cli();
    audit.args(["audit", "verify"]);
    let audited = audit.output().await.unwrap();
    assert!(audited.status.success(), "{}", text(&audited));

    // The source's gauge shows the backup (refreshed every 10 s).
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let metrics = app.get_root("/metrics").await.text();
        let value = metrics
            .lines()
            .find(|l| l.starts_with("haven_backup_last_success_timestamp_seconds "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if value > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backup gauge never showed the backup"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Flips one byte in the middle of a file.
fn flip(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_backup_is_refused_and_nothing_is_restored() {
    let app = spawn_app().await;
    clinical_data(&app, 30).await;
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good");
    let made = backup(&app, &good).await;
    assert!(made.status.success(), "{}", text(&made));

    // One flipped byte in a data file.
    let flipped = work.path().join("flipped");
    copy_dir(&good, &flipped);
    flip(&flipped.join("resource_version.ndjson.gz"));
    let checked = verify(&app, &flipped).await;
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
    assert!(
        text(&checked).contains("resource_version"),
        "names the file: {}",
        text(&checked)
    );
    let target = Target::new(&app).await;
    let refused = target.restore(&flipped).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("nothing was written"),
        "{}",
        text(&refused)
    );
    assert!(
        target.is_empty().await,
        "a refused restore leaves nothing behind"
    );

    // A flipped byte in the audit trail's file.
    let audit = work.path().join("audit");
    copy_dir(&good, &audit);
    flip(&audit.join("audit_sealed.ndjson.gz"));
    let refused = target.restore(&audit).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(target.is_empty().await);

    // A manifest changed to match an edited file fails its signature.
    let forged = work.path().join("forged");
    copy_dir(&good, &forged);
    let path = forged.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["resources"]["Patient"] = json!(1000);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let checked = verify(&app, &forged).await;
    assert_eq!(checked.status.code(), Some(1));
    assert!(text(&checked).contains("signature"), "{}", text(&checked));
    assert!(!target.restore(&forged).await.status.success());
    assert!(target.is_empty().await);

    // A truncated file (rows removed from the end).
    let truncated = work.path().join("truncated");
    copy_dir(&good, &truncated);
    let f = truncated.join("resource.ndjson.gz");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 12]).unwrap();
    assert_eq!(verify(&app, &truncated).await.status.code(), Some(1));

    // Signed by a key this instance does not trust.
    let stranger = tempfile::tempdir().unwrap();
    let mut cmd = app.cli();
    cmd.env("HAVEN_DATA_DIR", stranger.path());
    let mut untrusted = haven();
    untrusted
        .args(["backup", "verify"])
        .arg(&good)
        .arg("--data-dir")
        .arg(stranger.path());
    if let Some(url) = app.database_url() {
        untrusted.env("HAVEN_DATABASE_URL", url);
    }
    let out = untrusted.output().await.unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("key"), "{}", text(&out));

    // The untouched backup still restores.
    let restored = target.restore(&good).await;
    assert!(restored.status.success(), "{}", text(&restored));
    assert!(!target.is_empty().await);
    // ... but not twice: a restore goes into a fresh instance only.
    let again = target.restore(&good).await;
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already holds data"),
        "{}",
        text(&again)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_never_overwrites_and_an_interrupted_one_is_redone() {
    let app = spawn_app().await;
    clinical_data(&app, 2).await;
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("b");
    // What an interrupted run leaves.
    let partial = work.path().join("b.partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("resource_version.ndjson.gz"), b"half").unwrap();
    let made = backup(&app, &out).await;
    assert!(made.status.success(), "{}", text(&made));
    assert!(!partial.exists());
    assert!(verify(&app, &out).await.status.success());

    let again = backup(&app, &out).await;
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
}
