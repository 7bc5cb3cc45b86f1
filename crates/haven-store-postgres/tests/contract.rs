//! The storage contract suite, run against PostgreSQL (a fresh database per test).

use std::sync::Arc;

use haven_store::ResourceStore;
use haven_store_postgres::testing::TempDatabase;
use haven_store_postgres::{PgOptions, PgStore};

async fn fresh() -> (Arc<dyn ResourceStore>, TempDatabase) {
    let db = TempDatabase::create().await;
    let store = PgStore::connect(&db.url, PgOptions::default())
        .await
        .expect("connect to the test database");
    (Arc::new(store), db)
}

haven_store_tests::store_contract_tests!(fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_round_trip() {
    let (source, _db) = fresh().await;
    haven_store_tests::fill_for_backup(source.as_ref()).await;
    let before = haven_store_tests::export(source.as_ref()).await;
    source.close().await;

    let target = TempDatabase::create().await;
    let mut rows = before.clone();
    PgStore::restore(&target.url, &mut rows)
        .await
        .expect("restore");
    let restored = PgStore::connect(&target.url, PgOptions::default())
        .await
        .unwrap();
    haven_store_tests::backup_round_trip(&before, &restored).await;
    restored.close().await;

    let mut again = before.clone();
    let err = PgStore::restore(&target.url, &mut again)
        .await
        .expect_err("a restore over data is refused");
    assert!(err.to_string().contains("already holds data"), "{err}");

    // A patient row naming an event the backup does not hold is refused.
    let orphaned = TempDatabase::create().await;
    let mut altered = haven_store_tests::with_orphan_patient_row(&before);
    let err = PgStore::restore(&orphaned.url, &mut altered)
        .await
        .expect_err("an orphan audit_patient row is refused");
    assert!(err.to_string().contains("audit_patient"), "{err}");
}
