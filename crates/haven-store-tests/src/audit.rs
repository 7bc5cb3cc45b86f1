//! The audit tables: events commit or roll back with their unit; sealing sees every committed
//! event exactly once, in an order no late commit can get behind; reads for verification and
//! for the accounting of disclosures.

use haven_domain::Timestamp;
use haven_store::{
    AuditEntry, ChainLink, ChangeKind, ResourceStore, StoreError, StoredCheckpoint, WriteTx,
    run_write,
};

use crate::new_version;

fn entry(label: &str, at: i64, patients: &[&str]) -> AuditEntry {
    AuditEntry {
        time: Timestamp::from_micros(at),
        record: label.as_bytes().to_vec(),
        patients: patients.iter().map(|p| (*p).to_owned()).collect(),
    }
}

async fn record(store: &dyn ResourceStore, e: AuditEntry) {
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.audit(e).await?;
            Ok::<_, StoreError>(())
        })
    })
    .await
    .unwrap();
}

/// Every record (as its label) the accounting lists for `patient`, page by page, in id order.
async fn labels_for_patient(store: &dyn ResourceStore, patient: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .audit_for_patient(
                patient,
                Timestamp::from_micros(0),
                Timestamp::from_micros(1_000_000),
                after,
                100,
            )
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.id;
        got.extend(
            page.into_iter()
                .map(|e| String::from_utf8(e.record).unwrap()),
        );
    }
    got
}

/// One sealing round as the service runs it: lock, read the head, seal what is final.
/// Returns the labels sealed. The "hash" is the label, which is all the store needs.
async fn seal_round(store: &dyn ResourceStore) -> Vec<String> {
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.lock_criteria(0x5ea1).await?;
            let head = tx.audit_head().await?;
            let (mut seq, after) = head.map_or((0, None), |h| (h.seq, Some(h.pos)));
            let events = tx.unsealed_audit(after, 100).await?;
            let mut links = Vec::new();
            let mut labels = Vec::new();
            for e in events {
                seq += 1;
                labels.push(String::from_utf8(e.record.clone()).unwrap());
                links.push(ChainLink {
                    seq,
                    event_id: e.pos.id,
                    hash: e.record,
                });
            }
            if !links.is_empty() {
                tx.seal_audit(links).await?;
            }
            Ok::<_, StoreError>(labels)
        })
    })
    .await
    .unwrap()
}

async fn chain(store: &dyn ResourceStore) -> Vec<(i64, String)> {
    store
        .audit_links(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.seq,
                String::from_utf8(l.record.expect("record present")).unwrap(),
            )
        })
        .collect()
}

pub async fn audit_events_commit_and_roll_back_with_their_unit(store: &dyn ResourceStore) {
    // Committed together with a version.
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.append(new_version("Patient", "a", 1, 1, ChangeKind::Create))
                .await?;
            tx.audit(entry("create a", 1, &["a"])).await?;
            Ok::<_, StoreError>(())
        })
    })
    .await
    .unwrap();
    // Rolled back with it.
    #[derive(Debug)]
    struct Refused;
    impl From<StoreError> for Refused {
        fn from(_: StoreError) -> Self {
            Refused
        }
    }
    let r = run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.audit(entry("create b", 2, &["b"])).await?;
            tx.append(new_version("Patient", "b", 1, 2, ChangeKind::Create))
                .await?;
            Err::<(), _>(Refused)
        })
    })
    .await;
    assert!(r.is_err());
    assert_eq!(seal_round(store).await, ["create a"]);
    assert_eq!(chain(store).await, [(1, "create a".to_owned())]);
    assert!(seal_round(store).await.is_empty(), "sealed twice");
}

pub async fn sealing_takes_every_event_once_in_a_gap_free_chain(store: &dyn ResourceStore) {
    for i in 0..250 {
        record(store, entry(&format!("e{i}"), i, &[])).await;
    }
    let mut sealed = Vec::new();
    loop {
        let round = seal_round(store).await;
        if round.is_empty() {
            break;
        }
        sealed.extend(round);
    }
    assert_eq!(sealed.len(), 250);
    let links = chain(store).await;
    assert_eq!(links.len(), 250);
    for (i, (seq, label)) in links.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1);
        assert_eq!(label, &sealed[i]);
    }
    // Chain links are unique per seq and per event.
    let again = run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.seal_audit(vec![ChainLink {
                seq: 1,
                event_id: 999_999,
                hash: b"x".to_vec(),
            }])
            .await
        })
    })
    .await;
    assert!(again.is_err(), "a second link with seq 1 was accepted");
}

/// The service's sealer takes up to 2,000 records a round and hands them to `seal_audit` in one
/// call: a store must take that many links at once (PostgreSQL binds them as arrays, SQLite
/// splits its `VALUES` lists) and keep them in order.
pub async fn a_round_of_the_sealers_size_is_sealed_in_one_call(store: &dyn ResourceStore) {
    const N: usize = 2_500;
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            for i in 0..N {
                tx.audit(entry(&format!("r{i}"), i as i64, &[])).await?;
            }
            Ok::<_, StoreError>(())
        })
    })
    .await
    .unwrap();
    let sealed = run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            let events = tx.unsealed_audit(None, N as u32).await?;
            let links: Vec<ChainLink> = (1i64..)
                .zip(events)
                .map(|(seq, e)| ChainLink {
                    seq,
                    event_id: e.pos.id,
                    hash: e.record,
                })
                .collect();
            let n = links.len();
            tx.seal_audit(links).await?;
            Ok::<_, StoreError>(n)
        })
    })
    .await
    .unwrap();
    assert_eq!(sealed, N);
    let mut links = Vec::new();
    loop {
        let after = links.last().map_or(0, |(seq, _)| *seq);
        let page = store.audit_links(after, 1_000).await.unwrap();
        if page.is_empty() {
            break;
        }
        links.extend(page.into_iter().map(|l| {
            (
                l.seq,
                String::from_utf8(l.record.expect("record present")).unwrap(),
            )
        }));
    }
    assert_eq!(links.len(), N);
    for (i, (seq, label)) in links.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1);
        assert_eq!(label, &format!("r{i}"), "link {seq} seals the wrong record");
    }
}

/// Like history: an event whose unit began first but commits last must still be sealed, so a
/// sealer may not move past it while it is in flight.
pub async fn sealing_waits_for_an_event_that_commits_late(store: &dyn ResourceStore) {
    record(store, entry("early", 1, &[])).await;
    let held = |label: &'static str| {
        let (written_tx, written_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let unit = run_write(store, move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                tx.audit(entry(label, 2, &[])).await?;
                let _ = written_tx.send(());
                let _ = release_rx.await;
                Ok::<_, StoreError>(())
            })
        });
        (unit, written_rx, release_tx)
    };
    // 1. A unit that writes and stays open, and a later one that commits: the later one must
    //    not be sealed ahead of the open one.
    let (slow, slow_written, slow_release) = held("slow");
    let rest = async {
        slow_written.await.expect("slow unit wrote");
        // On a one-writer store this waits for the slow unit; elsewhere it commits first.
        let quick = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            record(store, entry("quick", 3, &[])),
        )
        .await;
        let first = if quick.is_ok() {
            seal_round(store).await
        } else {
            Vec::new()
        };
        let _ = slow_release.send(());
        first
    };
    let (slow_r, first) = futures::join!(slow, rest);
    slow_r.unwrap();
    assert!(!first.contains(&"slow".to_owned()));
    assert!(!first.contains(&"quick".to_owned()), "{first:?}");
    let mut all = first;
    for _ in 0..100 {
        all.extend(seal_round(store).await);
        if all.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    all.sort();
    assert_eq!(all, ["early", "quick", "slow"]);

    // 2. Two units open at once, both newer than anything committed (on PostgreSQL their
    //    transaction ids are at and above the snapshot's xmax, which the horizon must not
    //    mistake for another epoch): what committed before them is still sealed.
    record(store, entry("before", 4, &[])).await;
    let (a, a_written, a_release) = held("open-a");
    let (b, b_written, b_release) = held("open-b");
    let rest = async {
        a_written.await.expect("first open unit wrote");
        let parallel = tokio::time::timeout(std::time::Duration::from_millis(300), b_written)
            .await
            .is_ok();
        if parallel {
            assert_eq!(
                seal_round(store).await,
                ["before"],
                "sealed while two units were open"
            );
        }
        let _ = a_release.send(());
        let _ = b_release.send(());
    };
    let (a_r, b_r, ()) = futures::join!(a, b, rest);
    a_r.unwrap();
    b_r.unwrap();
    for _ in 0..100 {
        seal_round(store).await;
        if chain(store).await.len() == 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let links = chain(store).await;
    let positions: Vec<i64> = links.iter().map(|l| l.0).collect();
    assert_eq!(positions, [1, 2, 3, 4, 5, 6]);
    let mut labels: Vec<String> = links.into_iter().map(|l| l.1).collect();
    labels.sort();
    assert_eq!(
        labels,
        ["before", "early", "open-a", "open-b", "quick", "slow"]
    );
}

pub async fn audit_reads_serve_verification_and_accounting(store: &dyn ResourceStore) {
    record(store, entry("p1 read", 1_000, &["p1"])).await;
    record(store, entry("p1 p2 search", 2_000, &["p1", "p2"])).await;
    record(store, entry("p2 read", 3_000, &["p2"])).await;
    record(store, entry("login", 4_000, &[])).await;
    assert_eq!(
        store
            .audit_unsealed_before(Timestamp::from_micros(3_500))
            .await
            .unwrap(),
        3
    );
    while !seal_round(store).await.is_empty() {}
    assert_eq!(
        store
            .audit_unsealed_before(Timestamp::from_micros(10_000))
            .await
            .unwrap(),
        0
    );

    let labels = |events: Vec<haven_store::PatientEvent>| {
        events
            .into_iter()
            .map(|e| String::from_utf8(e.record).unwrap())
            .collect::<Vec<_>>()
    };
    let all_p2 = store
        .audit_for_patient(
            "p2",
            Timestamp::from_micros(0),
            Timestamp::from_micros(10_000),
            0,
            10,
        )
        .await
        .unwrap();
    let first_id = all_p2[0].id;
    assert_eq!(labels(all_p2), ["p1 p2 search", "p2 read"]);
    let in_period = store
        .audit_for_patient(
            "p1",
            Timestamp::from_micros(1_500),
            Timestamp::from_micros(2_500),
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(labels(in_period), ["p1 p2 search"]);
    let paged = store
        .audit_for_patient(
            "p2",
            Timestamp::from_micros(0),
            Timestamp::from_micros(10_000),
            first_id,
            10,
        )
        .await
        .unwrap();
    assert_eq!(labels(paged), ["p2 read"]);

    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.audit_checkpoint(StoredCheckpoint {
                seq: 4,
                hash: vec![7; 32],
                time: Timestamp::from_micros(5_000),
                key_id: "0123456789abcdef".into(),
                signature: vec![9; 64],
            })
            .await
        })
    })
    .await
    .unwrap();
    let cps = store.audit_checkpoints().await.unwrap();
    assert_eq!(cps.len(), 1);
    assert_eq!(cps[0].seq, 4);
    assert_eq!(cps[0].hash, vec![7; 32]);
    assert_eq!(cps[0].signature, vec![9; 64]);
    let links = store.audit_links(2, 10).await.unwrap();
    assert_eq!(links.iter().map(|l| l.seq).collect::<Vec<_>>(), [3, 4]);
}

/// Records written many at a time (concurrent reads' records in one unit) each keep their own
/// patients, also when two such units write at once (on PostgreSQL their ids interleave).
pub async fn audit_many_keeps_each_record_with_its_patients(store: &dyn ResourceStore) {
    let unit = |prefix: &'static str| {
        let entries: Vec<AuditEntry> = (0..1_200)
            .map(|i| {
                let patient = format!("{prefix}{}", i % 7);
                entry(&format!("{prefix}-{i:04}"), 1_000 + i, &[patient.as_str()])
            })
            .collect();
        run_write(store, move |tx: &mut dyn WriteTx| {
            Box::pin(async move { tx.audit_many(entries).await })
        })
    };
    let (a, b) = futures::join!(unit("a"), unit("b"));
    a.unwrap();
    b.unwrap();
    for prefix in ["a", "b"] {
        for k in 0..7 {
            let got = labels_for_patient(store, &format!("{prefix}{k}")).await;
            let expected: Vec<String> = (0..1_200)
                .filter(|i| i % 7 == k)
                .map(|i| format!("{prefix}-{i:04}"))
                .collect();
            assert_eq!(got, expected, "patient {prefix}{k}");
        }
    }
}

/// Reads' records stored outside any unit (`record_audit`), concurrently with units that record
/// their own, one that fails, and one that reads the audit tables after recording: every
/// acknowledged record is stored once with its patients, the failed unit's is not, and sealing
/// chains them all exactly once.
pub async fn records_of_reads_are_stored_with_their_patients_and_sealed_once(
    store: &dyn ResourceStore,
) {
    let reads = (0..300).map(|i| {
        let patient = format!("r{}", i % 5);
        store.record_audit(entry(
            &format!("read-{i:03}"),
            10_000 + i,
            &[patient.as_str()],
        ))
    });
    let units = (0..20).map(|i| {
        run_write(store, move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                tx.append(new_version(
                    "Patient",
                    &format!("u{i}"),
                    1,
                    20_000 + i,
                    ChangeKind::Create,
                ))
                .await?;
                tx.audit(entry(&format!("write-{i:02}"), 20_000 + i, &["w"]))
                    .await?;
                if i == 7 {
                    // Fails after recording: its record must go with its data.
                    return Err(StoreError::VersionConflict("refused on purpose".into()));
                }
                if i == 11 {
                    // Reads the audit tables after recording (on SQLite its record is then
                    // inserted at once, outside the writer's count of ids).
                    tx.unsealed_audit(None, 100_000).await?;
                }
                Ok::<_, StoreError>(())
            })
        })
    });
    let (reads, units) = futures::join!(
        futures::future::join_all(reads),
        futures::future::join_all(units)
    );
    for r in reads {
        r.unwrap();
    }
    for (i, r) in units.into_iter().enumerate() {
        assert_eq!(r.is_err(), i == 7, "unit {i}: {r:?}");
    }
    // After a unit inserted records itself, reads' records still go in; a patient named twice
    // in one record is stored once (and does not fail the commit it shares with others).
    store
        .record_audit(entry("read-last", 30_000, &["r0", "w", "r0"]))
        .await
        .unwrap();

    let for_patient = |p: &'static str| async move {
        let mut got = labels_for_patient(store, p).await;
        got.sort();
        got
    };
    let mut expected: Vec<String> = (0..300)
        .filter(|i| i % 5 == 0)
        .map(|i| format!("read-{i:03}"))
        .chain(["read-last".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(for_patient("r0").await, expected);
    let mut writes: Vec<String> = (0..20)
        .filter(|i| *i != 7)
        .map(|i| format!("write-{i:02}"))
        .chain(["read-last".to_owned()])
        .collect();
    writes.sort();
    assert_eq!(for_patient("w").await, writes);

    let mut sealed = Vec::new();
    loop {
        let round = seal_round(store).await;
        if round.is_empty() {
            break;
        }
        sealed.extend(round);
    }
    assert_eq!(sealed.len(), 300 + 19 + 1, "every record sealed once");
    sealed.sort();
    sealed.dedup();
    assert_eq!(sealed.len(), 320, "no record sealed twice");
}

pub async fn audit_events_read_by_id_and_by_time(store: &dyn ResourceStore) {
    for (label, at) in [("a", 100), ("b", 200), ("c", 300), ("d", 400)] {
        record(store, entry(label, at, &[])).await;
    }
    let all = store
        .audit_events(
            Timestamp::from_micros(0),
            Timestamp::from_micros(1_000),
            0,
            10,
        )
        .await
        .unwrap();
    let labels: Vec<&[u8]> = all.iter().map(|e| e.record.as_slice()).collect();
    assert_eq!(labels, [b"a", b"b", b"c", b"d"]);
    // A time window, [since, until), and paging after an id.
    let window = store
        .audit_events(
            Timestamp::from_micros(200),
            Timestamp::from_micros(400),
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(window.len(), 2);
    assert_eq!(window[0].record, b"b");
    let after = store
        .audit_events(
            Timestamp::from_micros(0),
            Timestamp::from_micros(1_000),
            all[1].id,
            1,
        )
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].record, b"c");
    let one = store.audit_event(all[3].id).await.unwrap().unwrap();
    assert_eq!(one.record, b"d");
    assert_eq!(one.time.micros(), 400);
    assert!(store.audit_event(all[3].id + 100).await.unwrap().is_none());
}
