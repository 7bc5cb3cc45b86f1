//! Backups (`haven_store::backup`): an export read back into a fresh store gives the same
//! tables, the audit chain continues where it stopped, and a restore refuses a database that
//! already holds data. The restore itself is per store, so each store's test file runs
//! [`backup_round_trip`] with its own restore function.

use std::collections::HashMap;

use haven_domain::Timestamp;
use haven_store::backup::{BackupSink, RestoreSource, TableSpec};
use haven_store::sql::SqlArg;
use haven_store::{
    AuditEntry, ChainLink, ChangeKind, Expect, ResourceStore, StoreError, StoredCheckpoint,
    WriteTx, run_write,
};

use crate::{append, new_version, rid, ty};

/// A backup held in memory: tables in export order with their rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryBackup {
    pub tables: Vec<(&'static str, Vec<Vec<SqlArg>>)>,
    cursor: HashMap<&'static str, usize>,
}

impl MemoryBackup {
    #[must_use]
    pub fn rows(&self, table: &str) -> &[Vec<SqlArg>] {
        self.tables
            .iter()
            .find(|(n, _)| *n == table)
            .map_or(&[], |(_, r)| r.as_slice())
    }
}

impl BackupSink for MemoryBackup {
    fn begin(&mut self, table: &'static TableSpec) -> Result<(), StoreError> {
        self.tables.push((table.name, Vec::new()));
        Ok(())
    }
    fn row(&mut self, row: Vec<SqlArg>) -> Result<(), StoreError> {
        self.tables
            .last_mut()
            .expect("begin before rows")
            .1
            .push(row);
        Ok(())
    }
    fn end(&mut self, _table: &'static TableSpec) -> Result<(), StoreError> {
        Ok(())
    }
}

impl RestoreSource for MemoryBackup {
    fn next_row(&mut self, table: &'static TableSpec) -> Result<Option<Vec<SqlArg>>, StoreError> {
        let at = self.cursor.entry(table.name).or_insert(0);
        let row = self
            .tables
            .iter()
            .find(|(n, _)| *n == table.name)
            .and_then(|(_, rows)| rows.get(*at))
            .cloned();
        *at += 1;
        Ok(row)
    }
}

fn entry(label: &str, at: i64, patients: &[&str]) -> AuditEntry {
    AuditEntry {
        time: Timestamp::from_micros(at),
        record: label.as_bytes().to_vec(),
        patients: patients.iter().map(|p| (*p).to_owned()).collect(),
    }
}

/// Writes some of everything a backup holds: versions (a deletion among them), audit events
/// (two sealed with a checkpoint, one not), records, and settings (one of the search index's).
pub async fn fill_for_backup(store: &dyn ResourceStore) {
    append(
        store,
        new_version("Patient", "p1", 1, 1_000, ChangeKind::Create),
    )
    .await
    .unwrap();
    append(
        store,
        new_version("Patient", "p1", 2, 2_000, ChangeKind::Update),
    )
    .await
    .unwrap();
    append(
        store,
        new_version("Observation", "o1", 1, 3_000, ChangeKind::Create),
    )
    .await
    .unwrap();
    append(
        store,
        new_version("Observation", "o1", 2, 4_000, ChangeKind::Delete),
    )
    .await
    .unwrap();
    run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.audit(entry("first", 10, &["p1"])).await?;
            tx.audit(entry("second", 11, &["p1", "p2"])).await
        })
    })
    .await
    .unwrap();
    // Sealed in a unit of its own, as the sealer does: on PostgreSQL only committed events
    // are final.
    run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            let events = tx.unsealed_audit(None, 10).await?;
            let links: Vec<ChainLink> = events
                .iter()
                .enumerate()
                .map(|(i, e)| ChainLink {
                    seq: i as i64 + 1,
                    event_id: e.pos.id,
                    hash: vec![i as u8 + 1; 32],
                })
                .collect();
            tx.seal_audit(links).await?;
            tx.audit_checkpoint(StoredCheckpoint {
                seq: 2,
                hash: vec![2; 32],
                time: Timestamp::from_micros(12),
                key_id: "k1".into(),
                signature: vec![9; 64],
            })
            .await?;
            tx.record_put("account", "alice", b"{}".to_vec(), None, Expect::Absent)
                .await?;
            tx.record_put(
                "session",
                "s1",
                b"{\"x\":1}".to_vec(),
                Some(Timestamp::from_micros(99)),
                Expect::Absent,
            )
            .await?;
            tx.set_meta("policy_sha256", Some("abc")).await?;
            tx.set_meta("search.index", Some("fingerprint")).await?;
            Ok::<_, StoreError>(())
        })
    })
    .await
    .unwrap();
    // Written after the sealing: stays unsealed.
    run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move { tx.audit(entry("third", 13, &["p3"])).await })
    })
    .await
    .unwrap();
}

/// `before` with one more `audit_patient` row, naming an event the backup does not hold: a
/// restore must refuse it.
#[must_use]
pub fn with_orphan_patient_row(before: &MemoryBackup) -> MemoryBackup {
    let mut altered = before.clone();
    let (_, rows) = altered
        .tables
        .iter_mut()
        .find(|(n, _)| *n == "audit_patient")
        .expect("the backup has audit_patient");
    rows.push(vec![
        SqlArg::Text("p-orphan".into()),
        SqlArg::Int(999_999),
        SqlArg::Int(1),
    ]);
    altered
}

pub async fn export(store: &dyn ResourceStore) -> MemoryBackup {
    let mut m = MemoryBackup::default();
    store.backup(&mut m).await.unwrap();
    m
}

/// `source` was filled with [`fill_for_backup`] and exported into `before`; `restored` was
/// opened on what `before` restored into. Everything must be there, the unsealed event under
/// a fresh id after the sealed ones (with its patient rows following it).
pub async fn backup_round_trip(before: &MemoryBackup, restored: &dyn ResourceStore) {
    let names: Vec<&str> = before.tables.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        haven_store::backup::TABLES
            .iter()
            .map(|t| t.name)
            .collect::<Vec<_>>()
    );
    assert_eq!(before.rows("resource_version").len(), 4);
    assert_eq!(before.rows("resource").len(), 2);
    assert_eq!(before.rows("audit_sealed").len(), 2);
    assert_eq!(before.rows("audit_unsealed").len(), 1);
    assert_eq!(before.rows("audit_patient").len(), 4);
    assert_eq!(before.rows("identity_record").len(), 2);
    assert_eq!(
        before.rows("store_meta"),
        &[vec![
            SqlArg::Text("policy_sha256".into()),
            SqlArg::Text("abc".into())
        ]],
        "the search index's settings stay out of a backup"
    );

    let after = export(restored).await;
    for t in [
        "resource_version",
        "resource",
        "audit_checkpoint",
        "audit_sealed",
        "identity_record",
        "store_meta",
    ] {
        assert_eq!(before.rows(t), after.rows(t), "table {t}");
    }
    // The unsealed event: same time and record, an id after every sealed event.
    let max_sealed = after
        .rows("audit_sealed")
        .iter()
        .map(|r| match &r[1] {
            SqlArg::Int(i) => *i,
            other => panic!("event id {other:?}"),
        })
        .max()
        .unwrap();
    let unsealed = after.rows("audit_unsealed");
    assert_eq!(unsealed.len(), 1);
    let SqlArg::Int(new_id) = unsealed[0][0] else {
        panic!("id")
    };
    assert!(new_id > max_sealed, "{new_id} > {max_sealed}");
    assert_eq!(unsealed[0][1..], before.rows("audit_unsealed")[0][1..]);
    let p3: Vec<_> = after
        .rows("audit_patient")
        .iter()
        .filter(|r| r[0] == SqlArg::Text("p3".into()))
        .collect();
    assert_eq!(p3.len(), 1);
    assert_eq!(p3[0][1], SqlArg::Int(new_id));
    assert_eq!(after.rows("audit_patient").len(), 4);

    // Reads through the store see the restored data.
    let cur = restored
        .read_current(ty("Patient"), &rid("p1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.version.get(), 2);
    let gone = restored
        .read_current(ty("Observation"), &rid("o1"))
        .await
        .unwrap()
        .unwrap();
    assert!(gone.is_deleted());
    assert_eq!(restored.audit_links(0, 10).await.unwrap().len(), 2);
    let events = restored
        .audit_for_patient(
            "p3",
            Timestamp::from_micros(0),
            Timestamp::from_micros(1_000),
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].record, b"third");

    // The store goes on: new versions and events get ids after the restored ones, and the
    // unsealed event is sealed next, after the chain's head.
    append(
        restored,
        new_version("Patient", "p1", 3, 5_000, ChangeKind::Update),
    )
    .await
    .unwrap();
    let next = run_write(restored, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.audit(entry("fourth", 14, &[])).await?;
            let head = tx.audit_head().await?.expect("restored chain head");
            assert_eq!(head.seq, 2);
            tx.unsealed_audit(Some(head.pos), 10).await
        })
    })
    .await
    .unwrap();
    let labels: Vec<String> = next
        .iter()
        .map(|e| String::from_utf8(e.record.clone()).unwrap())
        .collect();
    assert!(
        labels.starts_with(&["third".to_owned()]),
        "sealing continues with the restored unsealed event: {labels:?}"
    );
    let versions = export(restored).await;
    let seqs: Vec<&SqlArg> = versions
        .rows("resource_version")
        .iter()
        .map(|r| &r[0])
        .collect();
    assert_eq!(seqs.len(), 5);
    let mut sorted = seqs.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "new seq after the restored ones");
}
