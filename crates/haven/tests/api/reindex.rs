//! `haven reindex`: a stale index is detected at start, rebuilt, and the rebuild resumes after
//! the process is killed.

use std::process::Stdio;
use std::time::Duration;

use haven_domain::ResourceType;
use haven_store::{ResourceStore, WriteTx, run_write};
use haven_store_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{haven, postgres_backend, send_signal, spawn_app_in};

const PATIENTS: usize = 1000;

async fn count(app: &crate::helpers::TestApp, query: &str) -> u64 {
    let bundle = app
        .get(&format!("Patient?{query}&_summary=count"))
        .await
        .json();
    bundle["total"].as_u64().expect("a total")
}

/// Empties every resource's index rows and marks the index as built with other definitions:
/// what a database upgraded from an older Haven looks like.
async fn age_the_index(db: &std::path::Path) {
    let store = SqliteStore::open(db, SqliteOptions::default())
        .await
        .unwrap();
    let mut after = 0;
    loop {
        let found = store.scan(after, 200).await.unwrap();
        let Some(last) = found.last().map(|f| f.rid) else {
            break;
        };
        let ids: Vec<(ResourceType, haven_domain::ResourceId)> = found
            .iter()
            .map(|f| (f.version.resource_type, f.version.id.clone()))
            .collect();
        run_write(&store, move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                for (ty, id) in ids {
                    assert!(tx.replace_index(ty, &id, Vec::new()).await?);
                }
                Ok::<_, haven_store::StoreError>(())
            })
        })
        .await
        .unwrap();
        after = last;
    }
    run_write(&store, |tx: &mut dyn WriteTx| {
        Box::pin(async move { tx.set_meta("search.index", Some("older")).await })
    })
    .await
    .unwrap();
    store.close().await;
}

#[tokio::test]
async fn reindex_rebuilds_a_stale_index_and_resumes_after_a_kill() {
    if postgres_backend() {
        // The rebuild is store-agnostic (scan, replace_index and meta are in the store
        // contract suite); this test ages an embedded database file directly.
        eprintln!("reindex test runs on the embedded store only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = spawn_app_in(&data, &[]).await;
    for chunk in 0..PATIENTS / 100 {
        let entries: Vec<Value> = (0..100)
            .map(|i| {
                json!({
                    "resource": {"resourceType": "Patient",
                                 "name": [{"family": format!("Reindex{}", chunk * 100 + i)}]},
                    "request": {"method": "POST", "url": "Patient"}
                })
            })
            .collect();
        app.post_json(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await
        .assert_status(200);
    }
    assert_eq!(count(&app, "family=reindex").await, PATIENTS as u64);
    let mut app = app;
    app.sigterm();
    assert!(app.wait_exit(Duration::from_secs(10)).await.success());

    age_the_index(&data.join("haven.db")).await;
    let app = spawn_app_in(&data, &[]).await;
    assert!(
        app.wait_for_log(|l| l.contains("haven reindex"))
            .await
            .is_some(),
        "no stale-index warning: {:?}",
        app.logs()
    );
    assert_eq!(
        count(&app, "family=reindex").await,
        0,
        "the index was not aged"
    );
    let mut app = app;
    app.sigterm();
    assert!(app.wait_exit(Duration::from_secs(10)).await.success());

    // A first run, killed after its first batches.
    let mut first = haven()
        .args(["reindex", "--batch", "5", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    let progress = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("progress within 30 s")
        .unwrap()
        .expect("a progress line");
    assert!(progress.starts_with("reindex: "), "{progress}");
    send_signal(first.id().unwrap(), "KILL");
    let status = first.wait().await.unwrap();
    assert!(
        !status.success(),
        "the first run finished before it was killed"
    );

    // The second run resumes and completes.
    let second = haven()
        .args(["reindex", "--batch", "50", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("resumed"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&second.stdout).contains(&format!("{PATIENTS} resources")),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );

    let app = spawn_app_in(&data, &[]).await;
    assert_eq!(count(&app, "family=reindex").await, PATIENTS as u64);
    assert_eq!(count(&app, "family:exact=Reindex7").await, 1);
    assert!(
        !app.logs().iter().any(|l| l.contains("haven reindex")),
        "still stale: {:?}",
        app.logs()
    );
}
