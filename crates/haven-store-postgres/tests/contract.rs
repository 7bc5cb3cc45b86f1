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

/// Units that hold one record (`record_hold`, `FOR SHARE`) run side by side: every writer of a
/// key scope holds its data key, and all writes of a type outside any patient share one scope
/// (`type/Organization`), so an exclusive lock there would queue them one behind another.
/// Each unit waits, holding the record, until the other holds it too; with a lock that only
/// one unit can have, neither gets past its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_of_one_record_do_not_wait_for_each_other() {
    use haven_store::{Expect, StoreError, WriteTx, run_write};
    let (store, _db) = fresh().await;
    let created: Result<i64, StoreError> = run_write(store.as_ref(), |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.record_put(
                "dek",
                "type/Organization",
                b"k".to_vec(),
                None,
                Expect::Absent,
            )
            .await
        })
    })
    .await;
    assert_eq!(created.unwrap(), 1);
    let both = Arc::new(tokio::sync::Barrier::new(2));
    let hold = |both: Arc<tokio::sync::Barrier>| {
        run_write(store.as_ref(), move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                let held = tx.record_hold("dek", "type/Organization").await?;
                tokio::time::timeout(std::time::Duration::from_secs(5), both.wait())
                    .await
                    .map_err(|_| StoreError::Unavailable("the other holder never came".into()))?;
                Ok::<_, StoreError>(held.map(|r| r.body))
            })
        })
    };
    let (a, b) = futures::join!(hold(both.clone()), hold(both.clone()));
    assert_eq!(a.unwrap(), Some(b"k".to_vec()));
    assert_eq!(b.unwrap(), Some(b"k".to_vec()));
}

/// Holders cannot starve an exclusive reader: a unit that asks to hold the record after an
/// exclusive reader (an erasure, a re-wrap) began to wait gets it only after that reader. Row
/// locks alone would let it in at once (`FOR SHARE` is granted while only sharers hold the
/// row), so a steady stream of writers could keep the erasure waiting until it timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_exclusive_reader_goes_before_later_holders() {
    use haven_store::{Expect, StoreError, WriteTx, run_write};
    use std::time::{Duration, Instant};
    let (store, _db) = fresh().await;
    let created: Result<i64, StoreError> = run_write(store.as_ref(), |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.record_put("dek", "Patient/p1", b"k".to_vec(), None, Expect::Absent)
                .await
        })
    })
    .await;
    assert_eq!(created.unwrap(), 1);
    let start = Instant::now();
    // Holds the record from the start for `keep`, after waiting `after`; returns when it got it.
    let unit = |after: Duration, keep: Duration, exclusive: bool| {
        run_write(store.as_ref(), move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                tokio::time::sleep(after).await;
                let r = if exclusive {
                    tx.record_get("dek", "Patient/p1").await?
                } else {
                    tx.record_hold("dek", "Patient/p1").await?
                };
                let got = start.elapsed();
                assert!(r.is_some());
                tokio::time::sleep(keep).await;
                Ok::<_, StoreError>(got)
            })
        })
    };
    let ms = Duration::from_millis;
    let (first, exclusive, later) = futures::join!(
        unit(ms(0), ms(400), false),
        unit(ms(100), ms(0), true),
        unit(ms(200), ms(0), false),
    );
    let (first, exclusive, later) = (first.unwrap(), exclusive.unwrap(), later.unwrap());
    assert!(first < ms(100), "the first holder got it at {first:?}");
    assert!(
        exclusive >= ms(400) && exclusive < later,
        "exclusive reader at {exclusive:?}, later holder at {later:?}"
    );
}
