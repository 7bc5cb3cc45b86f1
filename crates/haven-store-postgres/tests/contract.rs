//! The storage contract suite, run against PostgreSQL (a fresh database per test).

use std::sync::Arc;

use haven_store::ResourceStore;
use haven_store_postgres::testing::TempDatabase;
use haven_store_postgres::{PgOptions, PgStore};

async fn fresh() -> (Arc<dyn ResourceStore>, TempDatabase) {
    let db = TempDatabase::create().await;
    let store = PgStore::connect(&db.url, PgOptions::default())
        .await
        .expect("connect to the test database");
    (Arc::new(store), db)
}

haven_store_tests::store_contract_tests!(fresh());
