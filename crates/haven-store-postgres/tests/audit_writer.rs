//! Reads' audit records are written by a batcher on a connection of its own, outside the
//! request pool (`audit_writer` in the store). When PostgreSQL drops that connection, the batch
//! on it fails (its reads are refused, nothing is served unaudited) and the next batch opens a
//! new one: the store does not stay broken.

use haven_domain::Timestamp;
use haven_store::{AuditEntry, ResourceStore, StoreError};
use haven_store_postgres::testing::TempDatabase;
use haven_store_postgres::{PgOptions, PgStore};

fn entry(n: u32) -> AuditEntry {
    AuditEntry {
        time: Timestamp::now(),
        record: format!(r#"{{"n":{n}}}"#).into_bytes(),
        patients: vec![format!("patient-{n}")],
    }
}

async fn admin() -> sqlx::PgPool {
    let url = std::env::var("HAVEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| haven_store_postgres::testing::DEFAULT_ADMIN_URL.to_owned());
    sqlx::PgPool::connect(&url).await.expect("connect as admin")
}

fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .and_then(|s| s.split('?').next())
        .unwrap()
        .to_owned()
}

/// The backends of `db` whose last statement was the audit batch insert.
async fn audit_writers(admin: &sqlx::PgPool, db: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
         AND query LIKE 'WITH u AS MATERIALIZED%audit_event%'",
    )
    .bind(db)
    .fetch_all(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_audit_connection_fails_one_batch_and_is_replaced() {
    let admin = admin().await;
    let db = TempDatabase::create().await;
    let name = database_name(&db.url);
    let store = PgStore::connect(&db.url, PgOptions::default())
        .await
        .unwrap();

    store.record_audit(entry(1)).await.unwrap();
    let writers = audit_writers(&admin, &name).await;
    assert_eq!(writers.len(), 1, "one audit writer connection: {writers:?}");

    // The pool's connections are not the writer's: a read leaves the writer's alone.
    store.ping().await.unwrap();
    assert_eq!(audit_writers(&admin, &name).await, writers);

    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(writers[0])
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(terminated);
    // Wait until the server has let the backend go.
    for _ in 0..100 {
        if audit_writers(&admin, &name).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let lost = store.record_audit(entry(2)).await;
    assert!(
        matches!(lost, Err(StoreError::Unavailable(_))),
        "the batch on the dropped connection is refused: {lost:?}"
    );
    store.record_audit(entry(3)).await.unwrap();
    let again = audit_writers(&admin, &name).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again, writers, "a new connection, not the dropped one");

    // What was acknowledged is stored, with its patient; the refused record is not.
    let stored: Vec<(Vec<u8>, String)> = sqlx::query_as(
        "SELECT e.record, p.patient FROM audit_event e JOIN audit_patient p ON p.event_id = e.id \
         ORDER BY e.id",
    )
    .fetch_all(&store_pool(&db.url).await)
    .await
    .unwrap();
    assert_eq!(
        stored,
        vec![
            (br#"{"n":1}"#.to_vec(), "patient-1".to_owned()),
            (br#"{"n":3}"#.to_vec(), "patient-3".to_owned()),
        ]
    );
    // Closing the store closes the writer's connection too, not only the pool's.
    store.close().await;
    let mut left = audit_writers(&admin, &name).await;
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        left = audit_writers(&admin, &name).await;
    }
    assert!(
        left.is_empty(),
        "the audit writer's connection outlived close: {left:?}"
    );
}

async fn store_pool(url: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(url).await.unwrap()
}
