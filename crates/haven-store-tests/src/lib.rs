//! The storage contract suite.
//!
//! Every behaviour the service layer relies on is written here once, as an async function over
//! `&dyn ResourceStore`, and each store implementation instantiates the whole suite with
//! [`store_contract_tests!`], giving it a fresh, empty store per test. A behaviour that only
//! one backend has is a bug in the other.

mod audit;
mod backup;
mod records;
mod search;

pub use audit::*;
pub use backup::*;
pub use records::*;
pub use search::*;

use bytes::Bytes;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use haven_store::{
    ChangeKind, HistoryCursor, HistoryQuery, HistoryScope, NewVersion, Period, ResourceStore,
    StoreError, WriteTx, run_write,
};

/// Instantiates every contract test for a store. `$make` is an async expression evaluating to
/// `(Arc<dyn ResourceStore>, Guard)`; the guard (e.g. a temp dir) lives until the test ends.
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store_contract_tests!(@each $make;
            reads_what_was_written,
            versions_must_follow_in_order,
            deletion_is_a_version_without_body,
            failed_unit_leaves_no_trace,
            unit_is_atomic_across_resources,
            panicking_unit_is_rolled_back,
            unit_that_ignores_a_failed_statement_is_not_committed,
            racing_writers_have_one_winner,
            racing_creators_of_one_id_have_one_winner,
            concurrent_units_are_all_durable,
            history_is_newest_first_and_scoped,
            history_pages_neither_skip_nor_repeat,
            history_keeps_a_late_commit_ahead_of_every_cursor,
            history_since_and_at,
            history_pages_stop_at_the_byte_budget,
            writes_are_visible_to_new_reads,
            // The search index (`search` module).
            index_rows_match_each_predicate,
            index_follows_updates_deletes_and_reindexing,
            scan_walks_current_resources_in_rid_order,
            none_matches_negation_and_missing,
            composite_values_match_within_one_group,
            boolean_conditions_and_ids,
            chains_follow_references_to_current_targets,
            reverse_chains_find_referenced_resources,
            related_finds_targets_and_sources,
            sorts_by_each_key_kind_with_missing_last,
            keyset_pages_walk_forward_and_back,
            totals_count_every_match,
            paging_while_writing_sees_each_entry_once,
            search_pages_stop_at_the_byte_budget,
            unit_searches_see_their_own_writes,
            conditional_creates_under_one_lock_create_once,
            // The audit tables (`audit` module).
            audit_events_commit_and_roll_back_with_their_unit,
            sealing_takes_every_event_once_in_a_gap_free_chain,
            a_round_of_the_sealers_size_is_sealed_in_one_call,
            sealing_waits_for_an_event_that_commits_late,
            audit_reads_serve_verification_and_accounting,
            audit_many_keeps_each_record_with_its_patients,
            records_of_reads_are_stored_with_their_patients_and_sealed_once,
            audit_events_read_by_id_and_by_time,
            // Records (`records` module).
            records_are_created_once_and_read_back,
            records_compare_and_swap_on_their_version,
            record_delete_says_whether_one_was_there,
            failed_unit_leaves_no_record_behind,
            unit_sees_its_own_record_writes,
            record_conflict_leaves_the_unit_usable,
            single_use_record_is_consumed_once,
            racing_record_writers_have_one_winner,
            a_held_record_stays_until_the_holder_ends,
            records_list_in_key_order_by_kind,
            purge_removes_only_expired_records,
            overlong_record_names_are_refused,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $make.await;
                $crate::$name(store.as_ref()).await;
                store.close().await;
            }
        )*
    };
}

fn ty(name: &str) -> ResourceType {
    ResourceType::parse(name).expect("known type")
}

fn rid(s: &str) -> ResourceId {
    ResourceId::parse(s).expect("valid id")
}

fn body(text: &str) -> Option<Bytes> {
    Some(Bytes::from(format!("{{\"note\":\"{text}\"}}")))
}

fn new_version(t: &str, id: &str, v: u64, at: i64, change: ChangeKind) -> NewVersion {
    NewVersion {
        resource_type: ty(t),
        id: rid(id),
        version: VersionId::from_u64(v).unwrap(),
        last_updated: Timestamp::from_micros(at),
        change,
        body: if change == ChangeKind::Delete {
            None
        } else {
            body(&format!("{t}/{id}/{v}"))
        },
        index: Vec::new(),
    }
}

#[derive(Debug)]
enum TestError {
    Store(StoreError),
    Refused,
}

impl From<StoreError> for TestError {
    fn from(e: StoreError) -> Self {
        TestError::Store(e)
    }
}

async fn append(store: &dyn ResourceStore, v: NewVersion) -> Result<(), TestError> {
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.append(v).await?;
            Ok::<_, TestError>(())
        })
    })
    .await
}

pub async fn reads_what_was_written(store: &dyn ResourceStore) {
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
    let cur = store
        .read_current(ty("Patient"), &rid("p1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.version.get(), 2);
    assert_eq!(cur.last_updated.micros(), 2_000);
    assert_eq!(cur.change, ChangeKind::Update);
    assert_eq!(cur.body, body("Patient/p1/2"));
    let v1 = store
        .read_version(ty("Patient"), &rid("p1"), VersionId::FIRST)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v1.body, body("Patient/p1/1"));
    assert_eq!(v1.change, ChangeKind::Create);
    assert!(
        store
            .read_current(ty("Patient"), &rid("nope"))
            .await
            .unwrap()
            .is_none()
    );
    // The same id under another type is another resource.
    assert!(
        store
            .read_current(ty("Observation"), &rid("p1"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .read_version(ty("Patient"), &rid("p1"), VersionId::from_u64(3).unwrap())
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn versions_must_follow_in_order(store: &dyn ResourceStore) {
    let err = append(
        store,
        new_version("Patient", "p1", 2, 1, ChangeKind::Create),
    )
    .await;
    assert!(
        matches!(err, Err(TestError::Store(StoreError::VersionConflict(_)))),
        "{err:?}"
    );
    append(
        store,
        new_version("Patient", "p1", 1, 1, ChangeKind::Create),
    )
    .await
    .unwrap();
    let err = append(
        store,
        new_version("Patient", "p1", 1, 2, ChangeKind::Update),
    )
    .await;
    assert!(
        matches!(err, Err(TestError::Store(StoreError::VersionConflict(_)))),
        "{err:?}"
    );
    let err = append(
        store,
        new_version("Patient", "p1", 3, 2, ChangeKind::Update),
    )
    .await;
    assert!(
        matches!(err, Err(TestError::Store(StoreError::VersionConflict(_)))),
        "{err:?}"
    );
    let cur = store
        .read_current(ty("Patient"), &rid("p1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.version.get(), 1);
}

pub async fn deletion_is_a_version_without_body(store: &dyn ResourceStore) {
    append(
        store,
        new_version("Observation", "o1", 1, 10, ChangeKind::Create),
    )
    .await
    .unwrap();
    append(
        store,
        new_version("Observation", "o1", 2, 20, ChangeKind::Delete),
    )
    .await
    .unwrap();
    let cur = store
        .read_current(ty("Observation"), &rid("o1"))
        .await
        .unwrap()
        .unwrap();
    assert!(cur.is_deleted());
    assert!(cur.body.is_none());
    assert_eq!(cur.version.get(), 2);
    let state = run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(
            async move { Ok::<_, TestError>(tx.current(ty("Observation"), &rid("o1")).await?) },
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert!(state.deleted);
    // The old version stays readable (vread of history).
    let v1 = store
        .read_version(ty("Observation"), &rid("o1"), VersionId::FIRST)
        .await
        .unwrap()
        .unwrap();
    assert!(v1.body.is_some());
    // A deleted resource can come back as a new version.
    append(
        store,
        new_version("Observation", "o1", 3, 30, ChangeKind::Update),
    )
    .await
    .unwrap();
    let cur = store
        .read_current(ty("Observation"), &rid("o1"))
        .await
        .unwrap()
        .unwrap();
    assert!(!cur.is_deleted());
}

pub async fn failed_unit_leaves_no_trace(store: &dyn ResourceStore) {
    let r = run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.append(new_version("Patient", "gone", 1, 1, ChangeKind::Create))
                .await?;
            Err::<(), _>(TestError::Refused)
        })
    })
    .await;
    assert!(matches!(r, Err(TestError::Refused)));
    assert!(
        store
            .read_current(ty("Patient"), &rid("gone"))
            .await
            .unwrap()
            .is_none()
    );
    // The store still works, and the id is free.
    append(
        store,
        new_version("Patient", "gone", 1, 2, ChangeKind::Create),
    )
    .await
    .unwrap();
}

pub async fn unit_is_atomic_across_resources(store: &dyn ResourceStore) {
    let r = run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.append(new_version("Patient", "a", 1, 1, ChangeKind::Create))
                .await?;
            tx.append(new_version("Patient", "b", 1, 1, ChangeKind::Create))
                .await?;
            // Reads inside the unit see its own writes.
            assert!(tx.read_current(ty("Patient"), &rid("a")).await?.is_some());
            // Version 5 of a new resource is refused, failing the whole unit.
            tx.append(new_version("Patient", "c", 5, 1, ChangeKind::Create))
                .await?;
            Ok::<_, TestError>(())
        })
    })
    .await;
    assert!(matches!(
        r,
        Err(TestError::Store(StoreError::VersionConflict(_)))
    ));
    for id in ["a", "b", "c"] {
        assert!(
            store
                .read_current(ty("Patient"), &rid(id))
                .await
                .unwrap()
                .is_none(),
            "{id}"
        );
    }
}

pub async fn panicking_unit_is_rolled_back(store: &dyn ResourceStore) {
    let r = run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.append(new_version("Patient", "boom", 1, 1, ChangeKind::Create))
                .await?;
            if tx.current(ty("Patient"), &rid("boom")).await?.is_some() {
                panic!("deliberate panic inside a unit of work");
            }
            Ok::<_, TestError>(())
        })
    })
    .await;
    assert!(
        matches!(r, Err(TestError::Store(StoreError::Internal(_)))),
        "{r:?}"
    );
    assert!(
        store
            .read_current(ty("Patient"), &rid("boom"))
            .await
            .unwrap()
            .is_none()
    );
    append(
        store,
        new_version("Patient", "after", 1, 1, ChangeKind::Create),
    )
    .await
    .unwrap();
}

pub async fn unit_that_ignores_a_failed_statement_is_not_committed(store: &dyn ResourceStore) {
    append(
        store,
        new_version("Patient", "dup", 1, 1, ChangeKind::Create),
    )
    .await
    .unwrap();
    let r = run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.append(new_version("Patient", "fresh", 1, 2, ChangeKind::Create))
                .await?;
            // Version 1 of "dup" exists: this fails, and the unit pretends it did not.
            let _ignored = tx
                .append(new_version("Patient", "dup", 1, 2, ChangeKind::Create))
                .await;
            Ok::<_, TestError>(())
        })
    })
    .await;
    assert!(
        matches!(r, Err(TestError::Store(StoreError::Internal(_)))),
        "{r:?}"
    );
    assert!(
        store
            .read_current(ty("Patient"), &rid("fresh"))
            .await
            .unwrap()
            .is_none()
    );
    append(
        store,
        new_version("Patient", "fresh", 1, 3, ChangeKind::Create),
    )
    .await
    .unwrap();
}

pub async fn racing_writers_have_one_winner(store: &dyn ResourceStore) {
    append(
        store,
        new_version("Patient", "race", 1, 1, ChangeKind::Create),
    )
    .await
    .unwrap();
    // Each unit reads the current version and appends the next, as an If-Match update does.
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(async move {
            run_write(store, move |tx: &mut dyn WriteTx| {
                Box::pin(async move {
                    let cur = tx.current(ty("Patient"), &rid("race")).await?.unwrap();
                    if cur.version.get() != 1 {
                        return Err(TestError::Refused);
                    }
                    tx.append(new_version(
                        "Patient",
                        "race",
                        2,
                        10 + i,
                        ChangeKind::Update,
                    ))
                    .await?;
                    Ok(())
                })
            })
            .await
        });
    }
    let results = futures::future::join_all(tasks).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    let cur = store
        .read_current(ty("Patient"), &rid("race"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.version.get(), 2);
}

pub async fn racing_creators_of_one_id_have_one_winner(store: &dyn ResourceStore) {
    // Update-as-create from several clients at once: version 1 can be written only once.
    let tasks = (0..6).map(|i| {
        append(
            store,
            new_version("Patient", "newcomer", 1, i, ChangeKind::Update),
        )
    });
    let results = futures::future::join_all(tasks).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(r, Err(TestError::Store(StoreError::VersionConflict(_)))),
            "{r:?}"
        );
    }
    let cur = store
        .read_current(ty("Patient"), &rid("newcomer"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cur.version.get(), 1);
}

pub async fn concurrent_units_are_all_durable(store: &dyn ResourceStore) {
    let tasks = (0..200).map(|i| {
        let id = format!("c{i}");
        async move {
            append(
                store,
                new_version("Observation", &id, 1, i, ChangeKind::Create),
            )
            .await
        }
    });
    for r in futures::future::join_all(tasks).await {
        r.unwrap();
    }
    for i in 0..200 {
        let got = store
            .read_current(ty("Observation"), &rid(&format!("c{i}")))
            .await
            .unwrap();
        assert!(got.is_some(), "c{i} missing");
    }
}

async fn seed_history(store: &dyn ResourceStore) {
    // Patient/a: v1@100, v2@200, deleted v3@300; Patient/b: v1@150; Observation/o: v1@250.
    append(
        store,
        new_version("Patient", "a", 1, 100, ChangeKind::Create),
    )
    .await
    .unwrap();
    append(
        store,
        new_version("Patient", "b", 1, 150, ChangeKind::Create),
    )
    .await
    .unwrap();
    append(
        store,
        new_version("Patient", "a", 2, 200, ChangeKind::Update),
    )
    .await
    .unwrap();
    append(
        store,
        new_version("Observation", "o", 1, 250, ChangeKind::Create),
    )
    .await
    .unwrap();
    append(
        store,
        new_version("Patient", "a", 3, 300, ChangeKind::Delete),
    )
    .await
    .unwrap();
}

fn query(scope: HistoryScope) -> HistoryQuery {
    HistoryQuery {
        scope,
        since: None,
        at: None,
        count: 100,
        cursor: None,
        max_bytes: 1 << 20,
    }
}

fn labels(page: &haven_store::HistoryPage) -> Vec<String> {
    page.entries
        .iter()
        .map(|e| {
            format!(
                "{}/{}/{}",
                e.version.resource_type, e.version.id, e.version.version
            )
        })
        .collect()
}

pub async fn history_is_newest_first_and_scoped(store: &dyn ResourceStore) {
    seed_history(store).await;
    let all = store.history(&query(HistoryScope::System)).await.unwrap();
    assert_eq!(
        labels(&all),
        [
            "Patient/a/3",
            "Observation/o/1",
            "Patient/a/2",
            "Patient/b/1",
            "Patient/a/1"
        ]
    );
    assert!(!all.has_older && !all.has_newer);
    assert!(all.entries[0].version.is_deleted());
    let positions: Vec<_> = all.entries.iter().map(|e| e.pos).collect();
    assert!(positions.windows(2).all(|w| w[0] > w[1]));
    let ty_page = store
        .history(&query(HistoryScope::Type(ty("Patient"))))
        .await
        .unwrap();
    assert_eq!(
        labels(&ty_page),
        ["Patient/a/3", "Patient/a/2", "Patient/b/1", "Patient/a/1"]
    );
    let inst = store
        .history(&query(HistoryScope::Instance(ty("Patient"), rid("a"))))
        .await
        .unwrap();
    assert_eq!(labels(&inst), ["Patient/a/3", "Patient/a/2", "Patient/a/1"]);
    let none = store
        .history(&query(HistoryScope::Instance(ty("Patient"), rid("zz"))))
        .await
        .unwrap();
    assert!(none.entries.is_empty());
}

pub async fn history_pages_neither_skip_nor_repeat(store: &dyn ResourceStore) {
    for i in 0..23 {
        append(
            store,
            new_version("Patient", &format!("p{i}"), 1, i, ChangeKind::Create),
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let mut q = query(HistoryScope::Type(ty("Patient")));
        q.count = 5;
        q.cursor = cursor;
        let page = store.history(&q).await.unwrap();
        pages += 1;
        // New writes while paging must not disturb the pages still to come.
        append(
            store,
            new_version(
                "Patient",
                &format!("late{pages}"),
                1,
                1000 + pages,
                ChangeKind::Create,
            ),
        )
        .await
        .unwrap();
        seen.extend(page.entries.iter().map(|e| e.version.id.to_string()));
        if !page.has_older {
            break;
        }
        cursor = Some(HistoryCursor::Before(page.entries.last().unwrap().pos));
    }
    assert_eq!(pages, 5);
    let expected: Vec<String> = (0..23).rev().map(|i| format!("p{i}")).collect();
    assert_eq!(seen, expected);

    // Walking back: the page after the first page's newest entry holds the late writes.
    let mut q = query(HistoryScope::Type(ty("Patient")));
    q.count = 3;
    let first = store.history(&q).await.unwrap();
    let mut q2 = query(HistoryScope::Type(ty("Patient")));
    q2.count = 3;
    q2.cursor = Some(HistoryCursor::Before(first.entries.last().unwrap().pos));
    let second = store.history(&q2).await.unwrap();
    assert!(second.has_newer);
    let mut q3 = query(HistoryScope::Type(ty("Patient")));
    q3.count = 3;
    q3.cursor = Some(HistoryCursor::After(second.entries[0].pos));
    let back = store.history(&q3).await.unwrap();
    assert_eq!(labels(&back), labels(&first));
    assert!(back.has_older);
    assert!(!back.has_newer);
}

/// A unit that began writing first but commits last must not fall behind a cursor that a
/// reader took in between. With parallel writers (PostgreSQL) the slow unit holds the smaller
/// sequence number; a reader paging by seq alone would have passed it before it committed and
/// never see it. On SQLite the second writer waits for the first, which proves nothing about
/// ordering but must pass the same checks.
pub async fn history_keeps_a_late_commit_ahead_of_every_cursor(store: &dyn ResourceStore) {
    use std::sync::atomic::{AtomicBool, Ordering};
    append(
        store,
        new_version("Patient", "early", 1, 1, ChangeKind::Create),
    )
    .await
    .unwrap();
    let (written_tx, written_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let quick_done = tokio::sync::Notify::new();
    let released = AtomicBool::new(false);
    let slow = async {
        run_write(store, move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                tx.append(new_version("Patient", "slow", 1, 2, ChangeKind::Create))
                    .await?;
                let _ = written_tx.send(());
                let _ = release_rx.await;
                Ok::<_, TestError>(())
            })
        })
        .await
    };
    let quick = async {
        written_rx.await.expect("slow unit wrote");
        let r = append(
            store,
            new_version("Patient", "quick", 1, 3, ChangeKind::Create),
        )
        .await;
        quick_done.notify_one();
        r
    };
    let reader = async {
        // Read once the quick unit has committed (or, on a one-writer store, after a while).
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), quick_done.notified())
            .await;
        let mut q = query(HistoryScope::Type(ty("Patient")));
        q.count = 10;
        let page = store.history(&q).await.unwrap();
        // Before the slow unit may commit, the reader cannot show it.
        if !released.load(Ordering::SeqCst) {
            assert!(
                !labels(&page).iter().any(|l| l.starts_with("slow")),
                "{:?}",
                labels(&page)
            );
        }
        page
    };
    // Held longer than a PostgreSQL history read waits for running transactions (1 s), so the
    // reader answers while the slow unit is still open.
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        released.store(true, Ordering::SeqCst);
        let _ = release_tx.send(());
    };
    let (slow_r, quick_r, page, ()) = futures::join!(slow, quick, reader, release);
    slow_r.unwrap();
    quick_r.unwrap();

    // Everything has committed. What the reader saw, plus what lies newer and older than it,
    // is every version exactly once.
    let mut seen = labels(&page);
    if let Some(first) = page.entries.first() {
        let mut q = query(HistoryScope::Type(ty("Patient")));
        q.cursor = Some(HistoryCursor::After(first.pos));
        seen.extend(labels(&store.history(&q).await.unwrap()));
        let mut q = query(HistoryScope::Type(ty("Patient")));
        q.cursor = Some(HistoryCursor::Before(page.entries.last().unwrap().pos));
        seen.extend(labels(&store.history(&q).await.unwrap()));
    } else {
        seen.extend(labels(
            &store
                .history(&query(HistoryScope::Type(ty("Patient"))))
                .await
                .unwrap(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        ["Patient/early/1", "Patient/quick/1", "Patient/slow/1"]
    );
    // And the newest page, read now, orders them as they became visible: positions only grow.
    let all = store.history(&query(HistoryScope::System)).await.unwrap();
    let positions: Vec<_> = all.entries.iter().map(|e| e.pos).collect();
    let mut sorted = positions.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(positions, sorted);
}

pub async fn history_since_and_at(store: &dyn ResourceStore) {
    seed_history(store).await;
    let mut q = query(HistoryScope::System);
    q.since = Some(Timestamp::from_micros(200));
    let page = store.history(&q).await.unwrap();
    assert_eq!(
        labels(&page),
        ["Patient/a/3", "Observation/o/1", "Patient/a/2"]
    );

    // At instant 220: Patient/a v2 (current 200..300), Patient/b v1, not Observation (250).
    let mut q = query(HistoryScope::System);
    q.at = Some(Period {
        start: Timestamp::from_micros(220),
        end: Timestamp::from_micros(221),
    });
    assert_eq!(
        labels(&store.history(&q).await.unwrap()),
        ["Patient/a/2", "Patient/b/1"]
    );

    // A period spanning 150..260 catches every version current at some point in it.
    q.at = Some(Period {
        start: Timestamp::from_micros(150),
        end: Timestamp::from_micros(260),
    });
    assert_eq!(
        labels(&store.history(&q).await.unwrap()),
        [
            "Observation/o/1",
            "Patient/a/2",
            "Patient/b/1",
            "Patient/a/1"
        ]
    );
    // After the deletion, only the deletion marker of Patient/a was "current".
    q.at = Some(Period {
        start: Timestamp::from_micros(400),
        end: Timestamp::from_micros(401),
    });
    assert_eq!(
        labels(&store.history(&q).await.unwrap()),
        ["Patient/a/3", "Observation/o/1", "Patient/b/1"]
    );
}

pub async fn history_pages_stop_at_the_byte_budget(store: &dyn ResourceStore) {
    // Ten versions of ~1 KB each; a 2.5 KB budget gives pages of three, the last one smaller.
    for v in 1..=10u64 {
        let mut nv = new_version(
            "Binary",
            "big",
            v,
            v as i64,
            if v == 1 {
                ChangeKind::Create
            } else {
                ChangeKind::Update
            },
        );
        nv.body = Some(Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(1000))));
        append(store, nv).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let mut q = query(HistoryScope::Instance(ty("Binary"), rid("big")));
        q.max_bytes = 2500;
        q.cursor = cursor;
        let page = store.history(&q).await.unwrap();
        pages += 1;
        assert!(
            !page.entries.is_empty() && page.entries.len() <= 3,
            "{}",
            page.entries.len()
        );
        seen.extend(page.entries.iter().map(|e| e.version.version.get()));
        if !page.has_older {
            break;
        }
        cursor = Some(HistoryCursor::Before(page.entries.last().unwrap().pos));
    }
    assert_eq!(seen, (1..=10).rev().collect::<Vec<u64>>());
    assert_eq!(pages, 4);
}

pub async fn writes_are_visible_to_new_reads(store: &dyn ResourceStore) {
    for i in 1..=20u64 {
        append(
            store,
            new_version(
                "Patient",
                "rw",
                i,
                i as i64,
                if i == 1 {
                    ChangeKind::Create
                } else {
                    ChangeKind::Update
                },
            ),
        )
        .await
        .unwrap();
        let cur = store
            .read_current(ty("Patient"), &rid("rw"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            cur.version.get(),
            i,
            "acknowledged write not visible to the next read"
        );
    }
    store.ping().await.unwrap();
}
