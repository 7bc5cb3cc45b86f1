//! Reads' audit records are written by a batcher on a connection of its own, outside the
//! request pool (`audit_writer` in the store). When PostgreSQL drops that connection, the batch
//! on it fails (its reads are refused, nothing is served unaudited) and the next batch opens a
//! new one: the store does not stay broken.

use haven_domain::Timestamp;
use haven_store::{AuditEntry, ResourceStore};
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

/// The backends of `db` opened under `application_name`: `haven-audit` is the audit writer's
/// connection, `haven` the pool's.
async fn backends(admin: &sqlx::PgPool, db: &str, application_name: &str) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 \
         ORDER BY pid",
    )
    .bind(db)
    .bind(application_name)
    .fetch_all(admin)
    .await
    .unwrap()
}

async fn audit_writers(admin: &sqlx::PgPool, db: &str) -> Vec<i32> {
    backends(admin, db, "haven-audit").await
}

/// Waits (up to 2 s) until the audit writer's backends are `want`.
async fn until_writers(admin: &sqlx::PgPool, db: &str, want: &[i32]) {
    let mut now = audit_writers(admin, db).await;
    for _ in 0..100 {
        if now == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        now = audit_writers(admin, db).await;
    }
    assert_eq!(now, want, "the audit writer's backends");
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

    // The writer's connection is not one of the pool's.
    store.ping().await.unwrap();
    let pooled = backends(&admin, &name, "haven").await;
    assert!(!pooled.is_empty());
    assert!(!pooled.contains(&writers[0]), "{pooled:?} {writers:?}");
    assert_eq!(audit_writers(&admin, &name).await, writers);

    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(writers[0])
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(terminated);
    until_writers(&admin, &name, &[]).await;

    let lost = store.record_audit(entry(2)).await;
    assert!(
        lost.is_err(),
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
    // Closing the store closes the writer's connection too, not only the pool's, and no
    // record is taken after it (none would be stored: no connection opens again).
    store.close().await;
    until_writers(&admin, &name, &[]).await;
    let late = store.record_audit(entry(4)).await;
    assert!(late.is_err(), "a record after close is refused: {late:?}");
    until_writers(&admin, &name, &[]).await;
}

async fn store_pool(url: &str) -> sqlx::PgPool {
    sqlx::PgPool::connect(url).await.unwrap()
}
