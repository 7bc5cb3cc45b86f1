//! Records (`haven_store::records`): versions from 1, compare-and-swap that one statement decides,
//! single-use records that exactly one unit consumes, key-ordered listing and purging by expiry.

use haven_domain::Timestamp;
use haven_store::records::{MAX_KEY_LEN, MAX_KIND_LEN};
use haven_store::{Expect, ResourceStore, StoreError, StoredRecord, WriteTx, run_write};

use crate::TestError;

/// An expiry in microseconds, as the identity module would set it.
const SOON: i64 = 1_700_000_000_000_000;

async fn put(
    store: &dyn ResourceStore,
    kind: &str,
    key: &str,
    body: &str,
    expires: Option<i64>,
    expect: Expect,
) -> Result<i64, StoreError> {
    let (kind, key, body) = (kind.to_owned(), key.to_owned(), body.as_bytes().to_vec());
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.record_put(
                &kind,
                &key,
                body,
                expires.map(Timestamp::from_micros),
                expect,
            )
            .await
        })
    })
    .await
}

async fn delete(store: &dyn ResourceStore, kind: &str, key: &str) -> Result<bool, StoreError> {
    let (kind, key) = (kind.to_owned(), key.to_owned());
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move { tx.record_delete(&kind, &key).await })
    })
    .await
}

async fn purge(store: &dyn ResourceStore, now: i64, limit: u32) -> u64 {
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.record_purge_expired(Timestamp::from_micros(now), limit)
                .await
        })
    })
    .await
    .unwrap()
}

async fn get(store: &dyn ResourceStore, kind: &str, key: &str) -> Option<StoredRecord> {
    store.record_get(kind, key).await.unwrap()
}

fn record(version: i64, body: &str, expires: Option<i64>) -> StoredRecord {
    StoredRecord {
        version,
        body: body.as_bytes().to_vec(),
        expires: expires.map(Timestamp::from_micros),
    }
}

fn is_conflict<T: std::fmt::Debug>(r: &Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::VersionConflict(_)))
}

pub async fn records_are_created_once_and_read_back(store: &dyn ResourceStore) {
    assert_eq!(get(store, "code", "h1").await, None);
    let v = put(store, "code", "h1", "first", Some(SOON), Expect::Absent).await;
    assert_eq!(v.unwrap(), 1);
    assert_eq!(
        get(store, "code", "h1").await,
        Some(record(1, "first", Some(SOON)))
    );
    // Create-only: a second create conflicts, names the kind but not the key, changes nothing.
    let again = put(store, "code", "h1", "second", None, Expect::Absent).await;
    assert!(is_conflict(&again), "{again:?}");
    let message = again.unwrap_err().to_string();
    assert!(
        message.contains("code") && !message.contains("h1"),
        "{message}"
    );
    assert_eq!(
        get(store, "code", "h1").await,
        Some(record(1, "first", Some(SOON)))
    );
    // The same key under another kind is another record; no expiry reads back as none.
    assert_eq!(
        put(store, "session", "h1", "s", None, Expect::Absent)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        get(store, "session", "h1").await,
        Some(record(1, "s", None))
    );
    // Bodies are bytes, not text.
    let (kind, key) = ("blob".to_owned(), "k".to_owned());
    let bytes = vec![0u8, 255, 10, 0];
    let stored = bytes.clone();
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.record_put(&kind, &key, stored, None, Expect::Absent)
                .await
        })
    })
    .await
    .unwrap();
    assert_eq!(get(store, "blob", "k").await.unwrap().body, bytes);
}

pub async fn records_compare_and_swap_on_their_version(store: &dyn ResourceStore) {
    put(store, "account", "alice", "v1", None, Expect::Absent)
        .await
        .unwrap();
    let v = put(
        store,
        "account",
        "alice",
        "v2",
        Some(SOON),
        Expect::Version(1),
    )
    .await;
    assert_eq!(v.unwrap(), 2);
    // A stale version conflicts and leaves the record as it was.
    let stale = put(store, "account", "alice", "lost", None, Expect::Version(1)).await;
    assert!(is_conflict(&stale), "{stale:?}");
    assert_eq!(
        get(store, "account", "alice").await,
        Some(record(2, "v2", Some(SOON)))
    );
    // A version of a record that does not exist conflicts and creates nothing.
    let missing = put(store, "account", "bob", "b", None, Expect::Version(1)).await;
    assert!(is_conflict(&missing), "{missing:?}");
    assert_eq!(get(store, "account", "bob").await, None);
    // Any: creates at 1, then replaces body and expiry at the next version.
    let v = put(store, "account", "bob", "b1", Some(SOON), Expect::Any).await;
    assert_eq!(v.unwrap(), 1);
    let v = put(store, "account", "bob", "b2", None, Expect::Any).await;
    assert_eq!(v.unwrap(), 2);
    assert_eq!(
        get(store, "account", "bob").await,
        Some(record(2, "b2", None))
    );
    let v = put(store, "account", "alice", "v3", None, Expect::Any).await;
    assert_eq!(v.unwrap(), 3);
    let v = put(store, "account", "alice", "v4", None, Expect::Version(3)).await;
    assert_eq!(v.unwrap(), 4);
}

pub async fn record_delete_says_whether_one_was_there(store: &dyn ResourceStore) {
    put(store, "code", "c", "x", None, Expect::Absent)
        .await
        .unwrap();
    assert!(delete(store, "code", "c").await.unwrap());
    assert_eq!(get(store, "code", "c").await, None);
    assert!(!delete(store, "code", "c").await.unwrap());
    // A deleted key can be created again, from version 1.
    let v = put(store, "code", "c", "y", None, Expect::Absent).await;
    assert_eq!(v.unwrap(), 1);
}

pub async fn failed_unit_leaves_no_record_behind(store: &dyn ResourceStore) {
    put(store, "session", "kept", "old", None, Expect::Absent)
        .await
        .unwrap();
    put(store, "session", "doomed", "d", None, Expect::Absent)
        .await
        .unwrap();
    let r = run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            tx.record_put("session", "new", b"n".to_vec(), None, Expect::Absent)
                .await?;
            tx.record_put("session", "kept", b"changed".to_vec(), None, Expect::Any)
                .await?;
            assert!(tx.record_delete("session", "doomed").await?);
            Err::<(), _>(TestError::Refused)
        })
    })
    .await;
    assert!(matches!(r, Err(TestError::Refused)), "{r:?}");
    assert_eq!(get(store, "session", "new").await, None);
    assert_eq!(
        get(store, "session", "kept").await,
        Some(record(1, "old", None))
    );
    assert_eq!(
        get(store, "session", "doomed").await,
        Some(record(1, "d", None))
    );
}

pub async fn unit_sees_its_own_record_writes(store: &dyn ResourceStore) {
    let seen = run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            let mut seen = Vec::new();
            tx.record_put(
                "family",
                "f",
                b"a".to_vec(),
                Some(Timestamp::from_micros(5)),
                Expect::Absent,
            )
            .await?;
            seen.push(tx.record_get("family", "f").await?);
            tx.record_put("family", "f", b"b".to_vec(), None, Expect::Version(1))
                .await?;
            seen.push(tx.record_get("family", "f").await?);
            tx.record_delete("family", "f").await?;
            seen.push(tx.record_get("family", "f").await?);
            tx.record_put("family", "f", b"c".to_vec(), None, Expect::Absent)
                .await?;
            Ok::<_, StoreError>(seen)
        })
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        [
            Some(record(1, "a", Some(5))),
            Some(record(2, "b", None)),
            None
        ]
    );
    assert_eq!(get(store, "family", "f").await, Some(record(1, "c", None)));
}

pub async fn record_conflict_leaves_the_unit_usable(store: &dyn ResourceStore) {
    put(store, "client", "app", "v1", None, Expect::Absent)
        .await
        .unwrap();
    // A mismatch is an answer, not a broken transaction: the unit reads again, retries and
    // commits.
    let v = run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            let first = tx
                .record_put("client", "app", b"x".to_vec(), None, Expect::Absent)
                .await;
            assert!(is_conflict(&first), "{first:?}");
            let current = tx.record_get("client", "app").await?.expect("present");
            let v = tx
                .record_put(
                    "client",
                    "app",
                    b"v2".to_vec(),
                    None,
                    Expect::Version(current.version),
                )
                .await?;
            Ok::<_, StoreError>(v)
        })
    })
    .await
    .unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        get(store, "client", "app").await,
        Some(record(2, "v2", None))
    );
}

/// Consumes a single-use record as the token endpoint does: read it, delete it, and succeed
/// only if this unit's delete removed it.
async fn consume(store: &dyn ResourceStore, key: String) -> Result<Vec<u8>, TestError> {
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            let Some(code) = tx.record_get("code", &key).await? else {
                return Err(TestError::Refused);
            };
            if !tx.record_delete("code", &key).await? {
                return Err(TestError::Refused);
            }
            Ok(code.body)
        })
    })
    .await
}

pub async fn single_use_record_is_consumed_once(store: &dyn ResourceStore) {
    for round in 0..20 {
        let key = format!("code-{round}");
        put(store, "code", &key, "grant", Some(SOON), Expect::Absent)
            .await
            .unwrap();
        let (a, b) = futures::join!(consume(store, key.clone()), consume(store, key.clone()));
        let wins = [&a, &b].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {a:?} {b:?}");
        for r in [&a, &b] {
            match r {
                Ok(body) => assert_eq!(body, b"grant"),
                Err(e) => assert!(matches!(e, TestError::Refused), "round {round}: {e:?}"),
            }
        }
        assert_eq!(get(store, "code", &key).await, None);
    }
}

pub async fn racing_record_writers_have_one_winner(store: &dyn ResourceStore) {
    for round in 0..20 {
        let key = format!("family-{round}");
        // Two rotations from the same version: one wins, the other learns it lost.
        put(store, "family", &key, "v1", None, Expect::Absent)
            .await
            .unwrap();
        let (a, b) = futures::join!(
            put(store, "family", &key, "a", None, Expect::Version(1)),
            put(store, "family", &key, "b", None, Expect::Version(1)),
        );
        let winner = match (&a, &b) {
            (Ok(2), r) if is_conflict(r) => "a",
            (r, Ok(2)) if is_conflict(r) => "b",
            _ => panic!("round {round}: {a:?} {b:?}"),
        };
        assert_eq!(
            get(store, "family", &key).await,
            Some(record(2, winner, None))
        );
        // Two creators of one key: one creates, the other conflicts.
        let key = format!("account-{round}");
        let (a, b) = futures::join!(
            put(store, "account", &key, "a", None, Expect::Absent),
            put(store, "account", &key, "b", None, Expect::Absent),
        );
        let winner = match (&a, &b) {
            (Ok(1), r) if is_conflict(r) => "a",
            (r, Ok(1)) if is_conflict(r) => "b",
            _ => panic!("round {round}: {a:?} {b:?}"),
        };
        assert_eq!(
            get(store, "account", &key).await,
            Some(record(1, winner, None))
        );
    }
}

/// How long the holder keeps its unit open in [`a_held_record_stays_until_the_holder_ends`].
const HOLD: std::time::Duration = std::time::Duration::from_millis(300);

/// A unit that holds the record ([`WriteTx::record_hold`]) for [`HOLD`], telling `held` as soon
/// as it has it.
async fn hold_for_a_while(
    store: &dyn ResourceStore,
    key: &str,
    held: tokio::sync::oneshot::Sender<()>,
) -> Result<Option<StoredRecord>, StoreError> {
    let key = key.to_owned();
    run_write(store, move |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            let r = tx.record_hold("dek", &key).await?;
            let _ = held.send(());
            tokio::time::sleep(HOLD).await;
            Ok(r)
        })
    })
    .await
}

/// What a data key's writers rely on: while a unit holds a record, another unit can neither
/// take it for itself (an erasure's first step) nor delete it; each waits until the holder
/// has ended.
pub async fn a_held_record_stays_until_the_holder_ends(store: &dyn ResourceStore) {
    put(store, "dek", "scope", "k1", None, Expect::Absent)
        .await
        .unwrap();
    for deleting in [false, true] {
        let (held, is_held) = tokio::sync::oneshot::channel();
        let other = async {
            is_held.await.expect("the holder got the record");
            let since = std::time::Instant::now();
            let r = if deleting {
                delete(store, "dek", "scope").await.map(|gone| {
                    assert!(gone, "the record was there to delete");
                    None
                })
            } else {
                run_write(store, |tx: &mut dyn WriteTx| {
                    Box::pin(async move { tx.record_get("dek", "scope").await })
                })
                .await
            };
            (since.elapsed(), r)
        };
        let (holder, (waited, r)) = futures::join!(hold_for_a_while(store, "scope", held), other);
        assert_eq!(holder.unwrap(), Some(record(1, "k1", None)));
        let r = r.unwrap();
        assert!(
            waited >= HOLD / 2,
            "deleting {deleting}: done after {waited:?}, while the record was held"
        );
        if !deleting {
            assert_eq!(r, Some(record(1, "k1", None)));
        }
    }
    assert_eq!(get(store, "dek", "scope").await, None);
}

pub async fn records_list_in_key_order_by_kind(store: &dyn ResourceStore) {
    for key in ["b", "a/1", "c", "A", "a"] {
        put(store, "session", key, key, None, Expect::Absent)
            .await
            .unwrap();
    }
    put(store, "sessions", "0", "other kind", None, Expect::Absent)
        .await
        .unwrap();
    put(store, "session", "b", "b2", None, Expect::Version(1))
        .await
        .unwrap();
    let keys = |page: Vec<(String, StoredRecord)>| -> Vec<String> {
        page.into_iter().map(|(k, _)| k).collect()
    };
    // Bytewise order on both stores: upper case before lower, a prefix before its extensions.
    let all = store.record_list("session", None, 100).await.unwrap();
    assert_eq!(keys(all.clone()), ["A", "a", "a/1", "b", "c"]);
    assert_eq!(all[3].1, record(2, "b2", None));
    let page = store.record_list("session", Some("a"), 2).await.unwrap();
    assert_eq!(keys(page), ["a/1", "b"]);
    let page = store.record_list("session", Some("b"), 2).await.unwrap();
    assert_eq!(keys(page), ["c"]);
    assert!(
        store
            .record_list("session", Some("c"), 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .record_list("session", None, 0)
            .await
            .unwrap()
            .is_empty()
    );
    let other = store.record_list("sessions", None, 100).await.unwrap();
    assert_eq!(other, [("0".to_owned(), record(1, "other kind", None))]);
    assert!(
        store
            .record_list("nothing", None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn purge_removes_only_expired_records(store: &dyn ResourceStore) {
    put(store, "code", "at100", "x", Some(100), Expect::Absent)
        .await
        .unwrap();
    put(store, "session", "at200", "x", Some(200), Expect::Absent)
        .await
        .unwrap();
    put(store, "code", "at300", "x", Some(300), Expect::Absent)
        .await
        .unwrap();
    put(store, "account", "never", "x", None, Expect::Absent)
        .await
        .unwrap();
    assert_eq!(purge(store, 99, 10).await, 0);
    // Expiry at exactly `now` counts as expired; the limit caps one call.
    assert_eq!(purge(store, 200, 1).await, 1);
    assert_eq!(purge(store, 200, 10).await, 1);
    assert_eq!(purge(store, 200, 10).await, 0);
    assert_eq!(get(store, "code", "at100").await, None);
    assert_eq!(get(store, "session", "at200").await, None);
    assert!(get(store, "code", "at300").await.is_some());
    assert!(get(store, "account", "never").await.is_some());
    // Expired records are still served until purged: the caller decides what expiry means.
    assert_eq!(purge(store, i64::MAX, 0).await, 0);
    assert!(get(store, "code", "at300").await.is_some());
    assert_eq!(purge(store, i64::MAX, 10).await, 1);
    assert!(get(store, "account", "never").await.is_some());
}

pub async fn overlong_record_names_are_refused(store: &dyn ResourceStore) {
    let long_kind = "k".repeat(MAX_KIND_LEN + 1);
    let long_key = "x".repeat(MAX_KEY_LEN + 1);
    let r = store.record_get("code", &long_key).await;
    assert!(matches!(r, Err(StoreError::Internal(_))), "{r:?}");
    let r = store.record_list(&long_kind, None, 1).await;
    assert!(matches!(r, Err(StoreError::Internal(_))), "{r:?}");
    let r = put(store, &long_kind, "x", "b", None, Expect::Any).await;
    assert!(matches!(r, Err(StoreError::Internal(_))), "{r:?}");
    let r = put(store, "code", &long_key, "b", None, Expect::Absent).await;
    assert!(matches!(r, Err(StoreError::Internal(_))), "{r:?}");
    let r = delete(store, "code", &long_key).await;
    assert!(matches!(r, Err(StoreError::Internal(_))), "{r:?}");
    // The longest allowed names work.
    let (kind, key) = ("k".repeat(MAX_KIND_LEN), "x".repeat(MAX_KEY_LEN));
    put(store, &kind, &key, "b", None, Expect::Absent)
        .await
        .unwrap();
    assert_eq!(get(store, &kind, &key).await, Some(record(1, "b", None)));
}
