//! Chain verification against tampering scenarios, through the public API only.

use haven_audit::{
    AuditRecord, Break, BreakReason, Category, ChainVerifier, Checkpoint, Entity, GENESIS, Report,
    chain_hash,
};
use haven_crypto::SigningKey;
use haven_domain::Timestamp;

/// A stored link, as a store would hand it over.
#[derive(Clone)]
struct Row {
    seq: u64,
    record: Option<Vec<u8>>,
    hash: [u8; 32],
}

fn record(n: u64) -> AuditRecord {
    let mut r = AuditRecord::new(
        Timestamp::from_micros(1_790_000_000_000_000 + i64::try_from(n).unwrap()),
        if n.is_multiple_of(10) {
            Category::Security
        } else {
            Category::Data
        },
        if n.is_multiple_of(10) {
            "login"
        } else {
            "read"
        },
        if n.is_multiple_of(13) { 403 } else { 200 },
    )
    .unwrap();
    r.actor.user = Some(format!("user-{}", n % 17));
    r.request_id = Some(format!("req-{n}"));
    r.entities.push(Entity {
        resource_type: "Observation".into(),
        id: format!("obs-{n}"),
        version: Some(1),
    });
    r.patients = vec![format!("pat-{}", n % 31)];
    r
}

fn build(n: u64) -> Vec<Row> {
    let mut prev = GENESIS;
    (1..=n)
        .map(|seq| {
            let bytes = record(seq).canonical();
            prev = chain_hash(&prev, seq, &bytes);
            Row {
                seq,
                record: Some(bytes),
                hash: prev,
            }
        })
        .collect()
}

fn key(n: u8) -> SigningKey {
    SigningKey::from_pem_or_raw(&[n; 32]).unwrap()
}

fn checkpoint(rows: &[Row], seq: u64, key: &SigningKey) -> Checkpoint {
    let row = &rows[usize::try_from(seq - 1).unwrap()];
    Checkpoint::sign(
        seq,
        row.hash,
        Timestamp::from_micros(1_790_000_001_000_000),
        key,
    )
}

fn verify(rows: &[Row], cps: Vec<Checkpoint>, trusted: &[&SigningKey]) -> Result<Report, Break> {
    let mut v = ChainVerifier::new(trusted.iter().map(|k| k.verifying_key()).collect());
    v.expect_checkpoints(cps);
    for row in rows {
        v.link(row.seq, row.record.as_deref(), &row.hash)?;
    }
    v.finish()
}

fn failure(rows: &[Row], cps: Vec<Checkpoint>, trusted: &[&SigningKey]) -> Break {
    verify(rows, cps, trusted).expect_err("the chain should be reported broken")
}

#[test]
fn intact_chain_of_1000_verifies_with_checkpoints() {
    let rows = build(1000);
    let k = key(1);
    let cps = vec![
        checkpoint(&rows, 1000, &k),
        checkpoint(&rows, 500, &k),
        checkpoint(&rows, 500, &k),
    ];
    let report = verify(&rows, cps, &[&key(9), &k]).unwrap();
    assert_eq!(report.links, 1000);
    assert_eq!(report.checkpoints_checked, 3);
    assert_eq!(report.last_seq, Some(1000));
    assert_eq!(report.sealed_through, Some(1000));
    assert_eq!(report.head, rows[999].hash);
}

#[test]
fn empty_chain_verifies() {
    let report = verify(&[], vec![], &[]).unwrap();
    assert_eq!(report.links, 0);
    assert_eq!(report.last_seq, None);
    assert_eq!(report.head, GENESIS);
}

#[test]
fn altered_record_is_a_hash_mismatch_at_its_seq() {
    let mut rows = build(1000);
    let bytes = rows[420].record.as_mut().unwrap();
    let at = bytes.iter().position(|&b| b == b'u').unwrap();
    bytes[at] = b'U';
    let b = failure(&rows, vec![], &[]);
    assert_eq!(
        b,
        Break {
            seq: 421,
            reason: BreakReason::HashMismatch
        }
    );
    assert_eq!(
        b.to_string(),
        "audit record 421 does not match its hash: it was altered, or rows were reordered"
    );
}

#[test]
fn deleted_middle_link_is_a_gap() {
    let mut rows = build(1000);
    rows.remove(499);
    let b = failure(&rows, vec![], &[]);
    assert_eq!(
        b,
        Break {
            seq: 501,
            reason: BreakReason::Gap { expected: 500 }
        }
    );
    assert!(
        b.to_string().starts_with("audit record 500 is missing"),
        "{b}"
    );

    let mut rows = build(10);
    rows.drain(3..6);
    let b = failure(&rows, vec![], &[]);
    assert_eq!(
        b,
        Break {
            seq: 7,
            reason: BreakReason::Gap { expected: 4 }
        }
    );
    assert!(
        b.to_string()
            .starts_with("audit records 4 to 6 are missing"),
        "{b}"
    );
}

#[test]
fn chain_must_start_at_one() {
    let rows = build(5);
    let b = failure(&rows[1..], vec![], &[]);
    assert_eq!(
        b,
        Break {
            seq: 2,
            reason: BreakReason::Gap { expected: 1 }
        }
    );
}

#[test]
fn repeated_link_is_a_gap_going_backwards() {
    let mut rows = build(5);
    rows.insert(3, rows[2].clone());
    let b = failure(&rows, vec![], &[]);
    assert_eq!(
        b,
        Break {
            seq: 3,
            reason: BreakReason::Gap { expected: 4 }
        }
    );
    assert!(b.to_string().contains("repeat or go backwards"), "{b}");
}

#[test]
fn deleted_record_with_link_kept_is_missing_record() {
    let mut rows = build(100);
    rows[49].record = None;
    assert_eq!(
        failure(&rows, vec![], &[]),
        Break {
            seq: 50,
            reason: BreakReason::MissingRecord
        }
    );
}

#[test]
fn swapped_records_mismatch_at_the_first() {
    let mut rows = build(100);
    let (a, b) = (rows[19].record.take(), rows[59].record.take());
    rows[19].record = b;
    rows[59].record = a;
    assert_eq!(
        failure(&rows, vec![], &[]),
        Break {
            seq: 20,
            reason: BreakReason::HashMismatch
        }
    );

    // Swapping whole rows, hashes included, and renumbering them is caught too.
    let mut rows = build(100);
    rows.swap(19, 59);
    rows[19].seq = 20;
    rows[59].seq = 60;
    assert_eq!(
        failure(&rows, vec![], &[]),
        Break {
            seq: 20,
            reason: BreakReason::HashMismatch
        }
    );
}

#[test]
fn rehashed_rewrite_is_caught_by_a_checkpoint() {
    let rows = build(100);
    let k = key(1);
    let cps = vec![checkpoint(&rows, 80, &k)];
    // Rewrite record 30 and recompute every hash after it: the chain is self-consistent.
    let mut forged = rows.clone();
    let mut prev = forged[28].hash;
    for row in &mut forged[29..] {
        let mut r = AuditRecord::from_canonical(row.record.as_deref().unwrap()).unwrap();
        if row.seq == 30 {
            r.actor.user = Some("someone-else".into());
        }
        let bytes = r.canonical();
        prev = chain_hash(&prev, row.seq, &bytes);
        row.record = Some(bytes);
        row.hash = prev;
    }
    assert!(verify(&forged, vec![], &[&k]).is_ok());
    let b = failure(&forged, cps, &[&k]);
    assert_eq!(
        b,
        Break {
            seq: 80,
            reason: BreakReason::CheckpointMismatch
        }
    );
}

#[test]
fn tail_deletion_is_caught_by_a_checkpoint_beyond_the_end() {
    let mut rows = build(1000);
    let k = key(1);
    let cps = vec![checkpoint(&rows, 500, &k), checkpoint(&rows, 1000, &k)];
    rows.truncate(990);
    let b = failure(&rows, cps, &[&k]);
    assert_eq!(
        b,
        Break {
            seq: 1000,
            reason: BreakReason::CheckpointBeyondEnd { last_seq: 990 }
        }
    );
    assert!(
        b.to_string()
            .starts_with("audit records 991 to 1000 are missing"),
        "{b}"
    );

    let rows = build(3);
    let cps = vec![checkpoint(&rows, 3, &k)];
    assert_eq!(
        failure(&[], cps, &[&k]),
        Break {
            seq: 3,
            reason: BreakReason::CheckpointBeyondEnd { last_seq: 0 }
        }
    );
}

#[test]
fn checkpoint_signed_by_an_untrusted_key_is_refused() {
    let rows = build(100);
    let trusted = key(1);
    let intruder = key(2);
    let b = failure(&rows, vec![checkpoint(&rows, 50, &intruder)], &[&trusted]);
    assert_eq!(
        b,
        Break {
            seq: 50,
            reason: BreakReason::UnknownCheckpointKey {
                key_id: intruder.key_id()
            }
        }
    );

    // Claiming the trusted key's id does not help.
    let mut forged = checkpoint(&rows, 50, &intruder);
    forged.key_id = trusted.key_id();
    assert_eq!(
        failure(&rows, vec![forged], &[&trusted]),
        Break {
            seq: 50,
            reason: BreakReason::BadCheckpointSignature
        }
    );

    // Nor does editing a genuine checkpoint.
    let mut edited = checkpoint(&rows, 50, &trusted);
    edited.hash[0] ^= 1;
    assert_eq!(
        failure(&rows, vec![edited], &[&trusted]),
        Break {
            seq: 50,
            reason: BreakReason::BadCheckpointSignature
        }
    );
}

#[test]
fn checkpoint_with_the_right_key_but_wrong_hash_mismatches() {
    let rows = build(100);
    let k = key(1);
    let wrong = Checkpoint::sign(50, rows[48].hash, Timestamp::from_micros(0), &k);
    assert_eq!(
        failure(&rows, vec![wrong], &[&k]),
        Break {
            seq: 50,
            reason: BreakReason::CheckpointMismatch
        }
    );
}

#[test]
fn checkpoints_from_log_lines_verify_after_rotation() {
    let rows = build(200);
    let (old, new) = (key(1), key(2));
    let log = [
        "2026-01-01T00:00:00Z INFO server started".to_owned(),
        checkpoint(&rows, 100, &old).to_log_line(),
        format!("pod/haven-0 {}", checkpoint(&rows, 200, &new).to_log_line()),
    ];
    let cps: Vec<Checkpoint> = log
        .iter()
        .filter_map(|l| Checkpoint::from_log_line(l))
        .collect();
    assert_eq!(cps.len(), 2);
    assert_eq!(
        verify(&rows, cps.clone(), &[&old, &new])
            .unwrap()
            .checkpoints_checked,
        2
    );
    assert_eq!(
        failure(&rows, cps, &[&new]),
        Break {
            seq: 100,
            reason: BreakReason::UnknownCheckpointKey {
                key_id: old.key_id()
            }
        }
    );
}

#[test]
fn sealed_but_malformed_record_is_undecodable() {
    let mut rows = build(3);
    let bytes = b"{\"not\":\"a record\"}".to_vec();
    rows[1].hash = chain_hash(&rows[0].hash, 2, &bytes);
    rows[1].record = Some(bytes);
    rows[2].hash = chain_hash(&rows[1].hash, 3, rows[2].record.as_deref().unwrap());
    assert_eq!(
        failure(&rows, vec![], &[]),
        Break {
            seq: 2,
            reason: BreakReason::UndecodableRecord
        }
    );
}

#[test]
fn a_break_is_sticky_and_stale_checkpoints_are_not_ignored() {
    let rows = build(5);
    let mut v = ChainVerifier::new(vec![]);
    v.link(1, rows[0].record.as_deref(), &rows[0].hash).unwrap();
    let b = v
        .link(3, rows[2].record.as_deref(), &rows[2].hash)
        .unwrap_err();
    assert_eq!(
        v.link(2, rows[1].record.as_deref(), &rows[1].hash),
        Err(b.clone())
    );
    assert_eq!(v.finish(), Err(b));

    let k = key(1);
    let mut v = ChainVerifier::new(vec![k.verifying_key()]);
    v.link(1, rows[0].record.as_deref(), &rows[0].hash).unwrap();
    v.expect_checkpoints(vec![checkpoint(&rows, 1, &k)]);
    assert_eq!(
        v.finish(),
        Err(Break {
            seq: 1,
            reason: BreakReason::CheckpointMismatch
        })
    );
}

/// Throughput check over 1,000,000 links; too slow for the debug-build test run.
/// Run with `cargo test --release -p haven-audit -- --ignored --nocapture`.
#[test]
#[ignore = "performance check: run in release mode with --ignored"]
fn verifies_a_million_links_quickly() {
    const N: u64 = 1_000_000;
    let k = key(1);
    let mut prev = GENESIS;
    let mut rows = Vec::with_capacity(usize::try_from(N).unwrap());
    for seq in 1..=N {
        let bytes = record(seq).canonical();
        prev = chain_hash(&prev, seq, &bytes);
        rows.push((bytes, prev));
    }
    let cp = Checkpoint::sign(N, prev, Timestamp::from_micros(0), &k);
    let start = std::time::Instant::now();
    let mut v = ChainVerifier::new(vec![k.verifying_key()]);
    v.expect_checkpoints(vec![cp]);
    for (i, (bytes, hash)) in rows.iter().enumerate() {
        v.link(i as u64 + 1, Some(bytes), hash).unwrap();
    }
    let report = v.finish().unwrap();
    let elapsed = start.elapsed();
    println!("verified {} links in {elapsed:?}", report.links);
    assert_eq!(report.links, N);
    assert!(elapsed.as_secs() < 10, "{elapsed:?}");
}
