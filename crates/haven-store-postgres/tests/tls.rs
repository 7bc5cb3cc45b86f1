//! The store talks to PostgreSQL over TLS when the URL asks for it (`sslmode=require`, or
//! `verify-full` with `sslrootcert`): a database reached over a network must not see patient
//! data in clear. Checked from the server's side (`pg_stat_ssl`).

use haven_store::ResourceStore;
use haven_store_postgres::testing::TempDatabase;
use haven_store_postgres::{PgOptions, PgStore};

async fn admin() -> sqlx::PgPool {
    let url = std::env::var("HAVEN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| haven_store_postgres::testing::DEFAULT_ADMIN_URL.to_owned());
    sqlx::PgPool::connect(&url).await.expect("connect as admin")
}

#[tokio::test]
async fn sslmode_require_encrypts_every_connection_of_the_store() {
    let admin = admin().await;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&admin)
        .await
        .unwrap();
    if ssl != "on" {
        // A throwaway cluster (scripts/test's fallback) has no certificate; Debian's packaged
        // server, which CI uses, enables TLS with a self-signed one.
        eprintln!(
            "skipped: this PostgreSQL server has TLS off, so Haven's use of it cannot be shown"
        );
        return;
    }
    let db = TempDatabase::create().await;
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}sslmode=require", db.url);
    let store = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    store.ping().await.unwrap();
    // A read's audit record: the audit writer's own connection (outside the pool) is checked
    // with the pool's.
    store
        .record_audit(haven_store::AuditEntry {
            time: haven_domain::Timestamp::now(),
            record: b"{}".to_vec(),
            patients: vec!["p".into()],
        })
        .await
        .unwrap();
    let name = db
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let rows: Vec<(bool, Option<String>)> = sqlx::query_as(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = $1",
    )
    .bind(&name)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(!rows.is_empty(), "the store holds no connection");
    assert!(
        rows.iter().all(|(ssl, _)| *ssl),
        "a connection of the store is not encrypted: {rows:?}"
    );
    assert!(
        rows.iter()
            .all(|(_, v)| v.as_deref().is_some_and(|v| v.starts_with("TLSv1."))),
        "{rows:?}"
    );
    store.close().await;
}
