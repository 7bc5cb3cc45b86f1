//! The storage contract suite, run against the embedded SQLite store.

use std::sync::Arc;

use haven_store::ResourceStore;
use haven_store_sqlite::{SqliteOptions, SqliteStore};

async fn fresh() -> (Arc<dyn ResourceStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("haven.db"), SqliteOptions::default())
        .await
        .expect("open store");
    (Arc::new(store), dir)
}

haven_store_tests::store_contract_tests!(fresh());
