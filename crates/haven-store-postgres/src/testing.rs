//! Throwaway databases for tests: each test gets its own, dropped afterwards.
//!
//! The server is taken from `HAVEN_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). There is no silent skip: if no server
//! answers, creating the database fails and so does the test.

use sqlx::{Connection, PgConnection};

pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database created for one test. `url` connects to it; dropping the value drops it.
#[derive(Debug)]
pub struct TempDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("HAVEN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

impl TempDatabase {
    pub async fn create() -> Self {
        let admin = admin_url();
        let name = format!("haven_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for these tests and did not answer at {admin} ({e}); \
                 start it (scripts/test does) or set HAVEN_TEST_POSTGRES_URL"
            )
        });
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let (base, _) = admin.rsplit_once('/').expect("admin URL has a database");
        Self {
            url: format!("{base}/{name}"),
            name,
            admin_url: admin,
        }
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside a runtime; use a fresh thread with its own small runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}
