//! The audit tables refuse UPDATE and DELETE at the database, whoever asks.

use haven_domain::Timestamp;
use haven_store::{
    AuditEntry, ChainLink, ResourceStore, StoreError, StoredCheckpoint, WriteTx, run_write,
};
use haven_store_sqlite::{SqliteOptions, SqliteStore};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_cannot_be_changed_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haven.db");
    let store = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    run_write(&store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.audit(AuditEntry {
                time: Timestamp::from_micros(1),
                record: b"r".to_vec(),
                patients: vec!["p".into()],
            })
            .await?;
            tx.seal_audit(vec![ChainLink {
                seq: 1,
                event_id: 1,
                hash: vec![1; 32],
            }])
            .await?;
            tx.audit_checkpoint(StoredCheckpoint {
                seq: 1,
                hash: vec![1; 32],
                time: Timestamp::from_micros(2),
                key_id: "k".into(),
                signature: vec![2; 64],
            })
            .await?;
            Ok::<_, StoreError>(())
        })
    })
    .await
    .unwrap();
    store.close().await;

    let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_event SET record = x'00'",
        "DELETE FROM audit_event",
        "UPDATE audit_patient SET patient = 'q'",
        "DELETE FROM audit_patient",
        "UPDATE audit_chain SET hash = x'00'",
        "DELETE FROM audit_chain",
        "UPDATE audit_checkpoint SET key_id = 'forged'",
        "DELETE FROM audit_checkpoint",
    ] {
        let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
}
