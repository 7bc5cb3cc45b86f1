//! The storage contract suite, run against the embedded SQLite store.

use std::sync::Arc;

use haven_store::ResourceStore;
use haven_store_sqlite::{SqliteOptions, SqliteStore};

async fn fresh() -> (Arc<dyn ResourceStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("haven.db"), SqliteOptions::default())
        .await
        .expect("open store");
    (Arc::new(store), dir)
}

haven_store_tests::store_contract_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_round_trip() {
    let (source, _dir) = fresh().await;
    haven_store_tests::fill_for_backup(source.as_ref()).await;
    let before = haven_store_tests::export(source.as_ref()).await;
    source.close().await;

    let target = tempfile::tempdir().unwrap();
    let path = target.path().join("haven.db");
    let mut rows = before.clone();
    haven_store_sqlite::backup::restore(&path, &mut rows)
        .await
        .expect("restore");
    assert!(
        !target.path().join("haven.db.restoring").exists(),
        "the partial file is renamed into place"
    );
    let restored = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    haven_store_tests::backup_round_trip(&before, &restored).await;
    restored.close().await;

    // Not over data: the file stays as it was.
    let mut again = before.clone();
    let err = haven_store_sqlite::backup::restore(&path, &mut again)
        .await
        .expect_err("a restore over data is refused");
    assert!(err.to_string().contains("already holds data"), "{err}");

    // A patient row naming an event the backup does not hold is refused (here by the foreign
    // key, before the restore's own check), and no database is left in place.
    let orphaned = tempfile::tempdir().unwrap();
    let path = orphaned.path().join("haven.db");
    let mut altered = haven_store_tests::with_orphan_patient_row(&before);
    haven_store_sqlite::backup::restore(&path, &mut altered)
        .await
        .expect_err("an orphan audit_patient row is refused");
    assert!(!path.exists(), "a refused restore leaves no database");
}
