//! Reads' audit records are numbered inside the write transaction that stores them, so another
//! writer on the same database file (a `haven user add` while the server runs) cannot make
//! them collide: two stores on one file (each with its own writer connection, as two processes
//! would have; SQLite locks the file the same way), recording at once, lose nothing.

use haven_domain::Timestamp;
use haven_store::{AuditEntry, ResourceStore, StoreError, WriteTx, run_write};
use haven_store_sqlite::{SqliteOptions, SqliteStore};

fn entry(label: &str, patient: &str) -> AuditEntry {
    AuditEntry {
        time: Timestamp::from_micros(1_000),
        record: label.as_bytes().to_vec(),
        patients: vec![patient.to_owned()],
    }
}

#[tokio::test]
async fn two_stores_on_one_file_record_without_colliding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haven.db");
    let server = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    let command = SqliteStore::open(&path, SqliteOptions::default())
        .await
        .unwrap();
    for round in 0..20 {
        // The other "process" records in a unit of its own between and during reads' batches.
        let other = run_write(&command, move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                tx.audit(entry(&format!("cli-{round:02}"), "c")).await?;
                Ok::<_, StoreError>(())
            })
        });
        let reads = futures::future::join_all(
            (0..5).map(|i| server.record_audit(entry(&format!("read-{round:02}-{i}"), "s"))),
        );
        let (other, reads) = futures::join!(other, reads);
        other.unwrap();
        for r in reads {
            r.unwrap();
        }
    }
    for (patient, count) in [("s", 100), ("c", 20)] {
        let rows = server
            .audit_for_patient(
                patient,
                Timestamp::from_micros(0),
                Timestamp::from_micros(2_000),
                0,
                1_000,
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), count, "records of {patient}");
        let mut labels: Vec<_> = rows.iter().map(|r| r.record.clone()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), count, "each record once for {patient}");
    }
    command.close().await;
    server.close().await;
}
