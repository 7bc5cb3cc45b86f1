//! SQLite has no server-side statement timeout; the store enforces one with a progress handler
//! on reads whose cost depends on the data (search, history, scan). A read that runs past it
//! is interrupted and answers `Unavailable` (503), and the connection stays usable.

use bytes::Bytes;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use haven_store::{
    ChangeKind, HistoryQuery, HistoryScope, NewVersion, Period, ResourceStore, StoreError, WriteTx,
    run_write,
};
use haven_store_sqlite::{SqliteOptions, SqliteStore};
use std::time::Duration;

const VERSIONS: usize = 20_000;

async fn seed(store: &SqliteStore) {
    for batch in 0..VERSIONS / 2_000 {
        run_write(store, move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                for i in batch * 2_000..(batch + 1) * 2_000 {
                    tx.append(NewVersion {
                        resource_type: ResourceType::parse("Observation").unwrap(),
                        id: ResourceId::parse(&format!("o{i}")).unwrap(),
                        version: VersionId::FIRST,
                        last_updated: Timestamp::from_micros(1_000_000 + i as i64),
                        change: ChangeKind::Create,
                        body: Some(Bytes::from(format!("{{\"n\":{i}}}"))),
                        index: Vec::new(),
                    })
                    .await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .await
        .unwrap();
    }
}

/// Versions current at a time before any was written: none, but finding that out walks every
/// version of the type.
fn walk_everything() -> HistoryQuery {
    HistoryQuery {
        scope: HistoryScope::Type(ResourceType::parse("Observation").unwrap()),
        since: None,
        at: Some(Period {
            start: Timestamp::from_micros(0),
            end: Timestamp::from_micros(1),
        }),
        count: 10,
        cursor: None,
        max_bytes: 1 << 20,
    }
}

async fn open(path: &std::path::Path, timeout: Duration) -> SqliteStore {
    let options = SqliteOptions {
        read_connections: 1,
        statement_timeout: timeout,
        ..SqliteOptions::default()
    };
    SqliteStore::open(path, options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_past_the_statement_timeout_is_interrupted_and_the_connection_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haven.db");
    let store = open(&path, Duration::from_secs(30)).await;
    seed(&store).await;
    // With room to finish, the walk completes and finds nothing.
    let started = std::time::Instant::now();
    let page = store.history(&walk_everything()).await.unwrap();
    assert!(page.entries.is_empty());
    let full = started.elapsed();
    store.close().await;

    // With a deadline far shorter than the walk, SQLite stops it.
    let store = open(&path, Duration::from_millis(1)).await;
    let started = std::time::Instant::now();
    match store.history(&walk_everything()).await {
        Err(StoreError::Unavailable(msg)) => assert_eq!(msg, "statement timeout"),
        other => panic!(
            "a {full:?} walk under a 1 ms statement timeout must be interrupted, got {other:?}"
        ),
    }
    assert!(started.elapsed() < full + Duration::from_secs(1));
    // The only read connection went back to the pool disarmed: reads by key on it work, and
    // the next timed read gets its own deadline.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let one = store
        .read_current(
            ResourceType::parse("Observation").unwrap(),
            &ResourceId::parse("o7").unwrap(),
        )
        .await
        .unwrap();
    assert!(one.is_some());
    let mut newest = walk_everything();
    newest.at = None;
    let page = store.history(&newest).await.unwrap();
    assert_eq!(page.entries.len(), 10);
    store.close().await;
}
