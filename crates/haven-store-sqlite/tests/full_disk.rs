//! A full disk in the middle of group commits: every acknowledged write must survive, and no
//! write that was refused may appear. The disk is "filled" with `PRAGMA max_page_count`.

use bytes::Bytes;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use haven_store::{ChangeKind, NewVersion, ResourceStore, StoreError, WriteTx, run_write};
use haven_store_sqlite::{SqliteOptions, SqliteStore};

#[derive(Debug)]
struct Refused(StoreError);

impl From<StoreError> for Refused {
    fn from(e: StoreError) -> Self {
        Refused(e)
    }
}

async fn write(store: &SqliteStore, i: usize) -> Result<(), Refused> {
    let v = NewVersion {
        resource_type: ResourceType::parse("Observation").unwrap(),
        id: ResourceId::parse(&format!("o{i}")).unwrap(),
        version: VersionId::FIRST,
        last_updated: Timestamp::from_micros(i as i64),
        change: ChangeKind::Create,
        body: Some(Bytes::from(format!(
            "{{\"n\":{i},\"pad\":\"{}\"}}",
            "x".repeat(3000)
        ))),
        index: Vec::new(),
    };
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.append(v).await?;
            Ok::<_, Refused>(())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_no_acknowledged_write_and_keeps_no_refused_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haven.db");
    let capped = SqliteOptions {
        max_pages: Some(200),
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open(&path, capped).await.unwrap();
    let results = futures::future::join_all((0..400).map(|i| write(&store, i))).await;
    let acked: Vec<usize> = (0..400).filter(|i| results[*i].is_ok()).collect();
    let refused: Vec<usize> = (0..400).filter(|i| results[*i].is_err()).collect();
    assert!(
        !acked.is_empty() && !refused.is_empty(),
        "the cap was not reached: {} acked",
        acked.len()
    );
    for i in &refused {
        match &results[*i] {
            Err(Refused(StoreError::Unavailable(_))) => {}
            other => panic!("a full disk must be 'unavailable' (503), got {other:?}"),
        }
    }
    store.close().await;

    let reopened = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    let ty = ResourceType::parse("Observation").unwrap();
    for i in &acked {
        let got = reopened
            .read_current(ty, &ResourceId::parse(&format!("o{i}")).unwrap())
            .await
            .unwrap();
        assert!(got.is_some(), "acknowledged o{i} is missing");
    }
    for i in &refused {
        let got = reopened
            .read_current(ty, &ResourceId::parse(&format!("o{i}")).unwrap())
            .await
            .unwrap();
        assert!(got.is_none(), "refused o{i} was stored anyway");
    }
    // With room again, writes succeed.
    write(&reopened, 10_000).await.unwrap();
    reopened.close().await;
}
