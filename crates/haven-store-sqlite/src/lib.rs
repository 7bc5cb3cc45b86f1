//! The embedded SQLite store: Haven's default database, one file in the data directory.
//!
//! Design:
//! - **Durability first.** WAL journal with `synchronous=FULL`: a commit returns only after the
//!   WAL is fsynced, so an acknowledged write survives `kill -9` and power loss.
//! - **One writer, many readers.** SQLite allows one writer at a time. A single writer, on a
//!   thread of its own, owns the only read-write connection; readers use a pool of read-only
//!   connections, which WAL lets run concurrently with the writer.
//! - **Group commit.** The disk here does ~250-300 fsyncs/s, so one commit per request would cap
//!   writes near that. The writer runs each unit of work inside its own `SAVEPOINT` and commits
//!   every unit that queued up meanwhile with one fsync. A unit is acknowledged only after that
//!   commit; a unit that fails rolls back to its savepoint without touching its neighbours.
//!   The audit records of the batch (the units' and reads') are inserted together just before
//!   the commit: if they cannot be stored, nothing of that commit is (every read 503, every
//!   write rolled back), since neither may go unaudited.

mod audit;
pub mod backup;
mod reads;
mod records;
mod writer;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use haven_store::backup::BackupSink;
use haven_store::{
    AuditEntry, ErasedOutcome, ErasedWriteFn, Found, HistoryPage, HistoryQuery, LinkedRecord,
    PatientEvent, Related, ResourceStore, SearchPage, SearchQuery, StoreError, StoredCheckpoint,
    StoredRecord, StoredVersion,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

/// Statements the writer keeps prepared (sqlx's cache, least recently used first out): the
/// units' statements, and the audit batch shapes of `audit::insert_then` seen recently (one
/// per count of events and patient rows, up to 64 rows in all). sqlx's default of 100 would
/// let a spread of shapes push the units' statements out.
const WRITER_STATEMENTS: usize = 400;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Tuning knobs; the defaults suit a small site on a 2-4 core machine.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Read-only connections for concurrent reads.
    pub read_connections: u32,
    /// Most units of work committed by one fsync.
    pub max_batch: usize,
    /// Queued jobs before callers wait (back-pressure): units of work, and reads' audit
    /// records (one each).
    pub queue_depth: usize,
    /// How long a reader waits for a lock before giving up.
    pub busy_timeout: Duration,
    /// Longest a search, history or scan statement may run before SQLite interrupts it (503).
    /// Reads by key are bounded by their index lookup and are not timed.
    pub statement_timeout: Duration,
    /// Caps the database file at this many pages (`PRAGMA max_page_count`); writes beyond it
    /// fail with 503 as on a full disk. `None`: no cap beyond SQLite's own.
    pub max_pages: Option<u32>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            read_connections: 4,
            max_batch: 256,
            queue_depth: 1024,
            busy_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            max_pages: None,
        }
    }
}

pub struct SqliteStore {
    path: PathBuf,
    readers: SqlitePool,
    statement_timeout: Duration,
    jobs: Mutex<Option<mpsc::Sender<writer::Job>>>,
    /// Wakes the writer when it has gathered enough (see `writer::Gathering`).
    gathering: Arc<writer::Gathering>,
    /// Answers (or is dropped) when the writer thread has finished.
    writer: Mutex<Option<oneshot::Receiver<()>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file, applies migrations and starts the writer.
    pub async fn open(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        let base = SqliteConnectOptions::from_str("sqlite://")
            .map_err(StoreError::internal)?
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true)
            // Text in the search index compares bytewise (haven_store::sql::search); SQLite's
            // LIKE folds ASCII case unless told not to, PostgreSQL's never does. Same answer
            // for `:contains` on both stores.
            .pragma("case_sensitive_like", "ON")
            .disable_statement_logging();

        let mut conn = SqliteConnection::connect_with(
            &base
                .clone()
                .create_if_missing(true)
                .statement_cache_capacity(WRITER_STATEMENTS),
        )
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;

        if let Some(pages) = options.max_pages {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PRAGMA max_page_count = {pages}"
            )))
            .execute(&mut conn)
            .await
            .map_err(StoreError::internal)?;
        }

        let readers = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(base.read_only(true))
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open readers: {e}")))?;

        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let gathering = Arc::new(writer::Gathering::new());
        let handle = writer::start(conn, rx, gathering.clone(), options.max_batch.max(1))?;
        Ok(Self {
            path: path.to_owned(),
            readers,
            statement_timeout: options.statement_timeout,
            jobs: Mutex::new(Some(tx)),
            gathering,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Applies migrations to the database at `path` without starting a store.
    pub async fn migrate(path: &Path) -> Result<usize, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(StoreError::internal)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let mut conn = SqliteConnection::connect_with(&opts)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;
        let _ = conn.close().await;
        Ok(MIGRATOR.iter().count())
    }

    /// Queues `job` for the writer and waits for its answer.
    async fn submit<T>(
        &self,
        job: writer::Job,
        answer: oneshot::Receiver<T>,
    ) -> Result<T, StoreError> {
        self.gathering
            .send(&self.sender()?, job)
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the writer stopped before answering".into()))
    }

    fn sender(&self) -> Result<mpsc::Sender<writer::Job>, StoreError> {
        self.jobs
            .lock()
            .map_err(|_| StoreError::Internal("writer handle poisoned".into()))?
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is shutting down".into()))
    }
}

#[async_trait]
impl ResourceStore for SqliteStore {
    async fn read_current(
        &self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let mut conn = reads::acquire(&self.readers).await?;
        reads::read_current(&mut conn, ty, id).await
    }

    async fn read_version(
        &self,
        ty: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let mut conn = reads::acquire(&self.readers).await?;
        reads::read_version(&mut conn, ty, id, version).await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        reads::history(&mut conn, query).await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        reads::search(&mut conn, query).await
    }

    async fn related(&self, related: &Related, limit: u32) -> Result<Vec<Found>, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        reads::related(&mut conn, related, limit).await
    }

    async fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut conn = reads::acquire(&self.readers).await?;
        sqlx::query_scalar("SELECT value FROM store_meta WHERE name = ?1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(reads::map_err)
    }

    async fn scan(&self, after_rid: i64, limit: u32) -> Result<Vec<Found>, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        reads::scan(&mut conn, after_rid, limit).await
    }

    async fn write_erased(&self, work: ErasedWriteFn) -> Result<ErasedOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(writer::Job::Unit { work, reply }, answer)
            .await?
    }

    async fn record_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(writer::Job::Audit { entry, reply }, answer)
            .await?
    }

    async fn audit_links(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<LinkedRecord>, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        audit::links(&mut conn, after_seq, limit).await
    }

    async fn audit_checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        audit::checkpoints(&mut conn).await
    }

    async fn audit_unsealed_before(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        audit::unsealed_before(&mut conn, before).await
    }

    async fn audit_for_patient(
        &self,
        patient: &str,
        since: Timestamp,
        until: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PatientEvent>, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        audit::for_patient(&mut conn, patient, since, until, after_id, limit).await
    }

    async fn audit_event(&self, id: i64) -> Result<Option<PatientEvent>, StoreError> {
        let mut conn = reads::acquire(&self.readers).await?;
        audit::event(&mut conn, id).await
    }

    async fn audit_events(
        &self,
        since: Timestamp,
        until: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PatientEvent>, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        audit::events(&mut conn, since, until, after_id, limit).await
    }

    async fn record_get(&self, kind: &str, key: &str) -> Result<Option<StoredRecord>, StoreError> {
        let mut conn = reads::acquire(&self.readers).await?;
        records::get(&mut conn, kind, key).await
    }

    async fn record_list(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, StoredRecord)>, StoreError> {
        let mut conn = reads::acquire_timed(&self.readers, self.statement_timeout).await?;
        records::list(&mut conn, kind, after, limit).await
    }

    async fn backup(&self, sink: &mut dyn BackupSink) -> Result<(), StoreError> {
        // Not timed: a backup reads everything. One transaction on a read-only connection
        // is one WAL snapshot; the writer keeps committing meanwhile.
        let mut conn = reads::acquire(&self.readers).await?;
        let mut tx = conn.begin().await.map_err(reads::map_err)?;
        let r = haven_store::backup::export(&mut backup::Export(&mut tx), sink).await;
        let _ = tx.rollback().await;
        r
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = reads::acquire(&self.readers).await?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        drop(conn);
        // The writer too: a stuck or dead writer task must make the server unready, not only
        // fail every write. An empty unit writes nothing (no fsync).
        match self.write_erased(writer::noop_unit()).await? {
            Ok(_) => Ok(()),
            Err(_) => Err(StoreError::Unavailable("the writer refused a no-op".into())),
        }
    }

    async fn close(&self) {
        // Dropping the last sender lets the writer finish the queued units and exit.
        let sender = self.jobs.lock().ok().and_then(|mut g| g.take());
        drop(sender);
        let handle = self.writer.lock().ok().and_then(|mut g| g.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        self.readers.close().await;
    }
}
