//! The PostgreSQL store: Haven's database for replicated deployments.
//!
//! Design:
//! - **Same behaviour as SQLite**, proven by the shared contract suite; same schema, same
//!   migration numbers (`migrations/`), PostgreSQL types.
//! - **Replica-safe.** No in-process state decides anything: versions are checked in the
//!   database, `WriteTx::current` locks the resource's head row (`FOR UPDATE`) so concurrent
//!   writers to one resource queue up, and a unique index catches two creators of the same new
//!   version. Several Haven processes against one database behave as one server.
//! - **Durable.** `synchronous_commit` is left `on`; concurrent commits share WAL flushes, which is
//!   PostgreSQL's own group commit.
//! - **Bounded waits.** Pool acquisition and every statement have timeouts, so a lost database
//!   turns into a fast 503, never a hung request.

mod audit;
mod backup;
mod reads;
mod records;
#[cfg(feature = "testing")]
pub mod testing;

use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use haven_store::batch::{BatchLimits, Batcher};
use haven_store::sql::Placeholders;
use haven_store::sql::records::{RowLock, conflict};
use haven_store::sql::search::PendingIndex;
use haven_store::{
    AuditEntry, AuditPos, ChainHead, ChainLink, ChangeKind, CurrentState, ErasedOutcome,
    ErasedWriteFn, Expect, Found, HistoryPage, HistoryQuery, IndexRow, LinkedRecord, NewVersion,
    PatientEvent, Related, ResourceStore, SearchPage, SearchQuery, StoreError, StoredCheckpoint,
    StoredRecord, StoredVersion, UnsealedEvent, WriteTx,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, PgConnection, Row};

use reads::map_err;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone, Debug)]
pub struct PgOptions {
    pub max_connections: u32,
    /// How long a request waits for a connection before failing with 503.
    pub acquire_timeout: Duration,
    /// Server-side limit on any one statement.
    pub statement_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_millis(1500),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

pub struct PgStore {
    pool: PgPool,
    /// Group commit for reads' audit records, started on first use (`record_audit`), with a
    /// connection of its own ([`audit_writer`]).
    audit_batch: std::sync::OnceLock<Batcher<AuditEntry>>,
    /// How the audit writer connects, and its time limits (shared with its task).
    audit_connect: std::sync::Arc<AuditConnect>,
}

/// The audit writer's connection, and what it needs to open one.
struct AuditConnect {
    /// The pool's options under another application name (`haven-audit`), so that operators
    /// can tell the writer's connection apart in `pg_stat_activity`.
    options: PgConnectOptions,
    /// The connection, when open; [`PgStore::close`] closes it.
    conn: tokio::sync::Mutex<AuditSlot>,
    /// Longest wait to connect (the pool's acquire timeout).
    connect_timeout: Duration,
    /// Longest batch, connecting included (that plus the statement timeout).
    batch_timeout: Duration,
}

/// The audit writer's connection and its state.
#[derive(Default)]
struct AuditSlot {
    conn: Option<AuditConn>,
    /// Set by [`PgStore::close`]: no batch opens a connection after it.
    closed: bool,
}

struct AuditConn {
    conn: PgConnection,
    opened: std::time::Instant,
    used: std::time::Instant,
}

/// An idle audit connection older than this is replaced before the next batch, as the pool
/// retires its own (sqlx: 10 minutes idle, 30 minutes old): a firewall, a proxy or
/// `idle_session_timeout` may have dropped it meanwhile, and finding that out would cost the
/// batch (its reads answer 503) or, on a silently dropped one, the batch's whole time limit.
const AUDIT_CONN_IDLE: Duration = Duration::from_secs(60);
/// ...and any audit connection older than this.
const AUDIT_CONN_AGE: Duration = Duration::from_secs(30 * 60);

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

fn connect_options(url: &str, options: &PgOptions) -> Result<PgConnectOptions, StoreError> {
    let opts = PgConnectOptions::from_str(url)
        .map_err(|_| StoreError::Internal("the PostgreSQL URL cannot be parsed".into()))?;
    let ms = options.statement_timeout.as_millis().to_string();
    Ok(opts
        .options([
            ("statement_timeout", ms.as_str()),
            ("synchronous_commit", "on"),
            // No `plan_cache_mode`: the fixed statements (reads by id, the write path, the
            // audit insert) keep the generic plan PostgreSQL settles on after five runs. Search
            // statements are planned for their values by being sent unnamed
            // (`reads::planned_for_values`). Forcing custom plans on the whole connection made
            // PostgreSQL plan every read by id again: 0.17 ms of planning for 0.03 ms of work.
        ])
        .application_name("haven")
        .disable_statement_logging())
}

/// Whether every migration this build knows is applied (with the same checksum). Then a
/// replica starts without DDL, so it may connect with an application role that has no right to
/// change the schema (see `haven db grant`).
async fn schema_is_current(pool: &PgPool) -> bool {
    let applied: Result<Vec<(i64, Vec<u8>)>, _> =
        sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await;
    let Ok(applied) = applied else { return false };
    MIGRATOR.iter().all(|m| {
        applied
            .iter()
            .any(|(v, sum)| *v == m.version && sum.as_slice() == &*m.checksum)
    })
}

/// The privileges of Haven's application role on PostgreSQL: everything it needs to serve,
/// and on the audit tables only `SELECT` and `INSERT`, so neither Haven nor anyone holding its
/// credentials can change or remove an audit record (nor drop the triggers: only the owner
/// can). Run by the schema owner after `haven migrate` (`haven db grant`).
pub async fn grant_application_role(url: &str, role: &str) -> Result<(), StoreError> {
    let valid = !role.is_empty()
        && role.len() <= 63
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !role.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(StoreError::Internal(format!(
            "'{role}' is not a plain role name (lowercase letters, digits, underscore)"
        )));
    }
    let store = PgStore::connect(url, PgOptions::default()).await?;
    let audit = "audit_event, audit_patient, audit_chain, audit_checkpoint";
    // The role name was checked above to be a plain identifier; it is quoted anyway.
    let script = format!(
        "GRANT USAGE ON SCHEMA public TO \"{role}\";\n\
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO \"{role}\";\n\
         REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON _sqlx_migrations FROM \"{role}\";\n\
         REVOKE UPDATE, DELETE, TRUNCATE ON {audit} FROM \"{role}\";\n\
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO \"{role}\";\n"
    );
    let r = sqlx::raw_sql(sqlx::AssertSqlSafe(script))
        .execute(&store.pool)
        .await
        .map_err(|e| StoreError::Internal(format!("granting privileges failed: {e}")));
    store.pool.close().await;
    r.map(|_| ())
}

/// The writer of reads' audit records: a batcher task, run on the server's runtime, with a
/// PostgreSQL connection of its own, outside the pool (opened on first use, and again after a
/// failed batch). Each batch is one statement outside any transaction (`audit::insert_many`):
/// one round trip and one commit for every record that came while the previous batch committed
/// (classic group commit; PostgreSQL also groups concurrent commits into one WAL flush).
///
/// Why a connection of its own: with a pooled one, every batch first queued for a connection
/// behind the requests waiting for the pool, and the reads waiting for the batch waited that
/// long too. Measured (reads by id, 32 connections): audited reads at 83-96 % of reads without
/// audit with its own connection (four runs), 75-83 % with a pooled one (ten runs that day).
///
/// Why on the server's runtime and not on a thread of its own, as the SQLite writer is: every
/// record and every acknowledgement would then cross between threads, and each wake-up of a
/// request task from outside the runtime waits in its shared queue behind the tasks already
/// running. Measured interleaved with the four runs above: 60-66 % on a thread of its own.
/// (At 64 connections the order turns: the batcher task then waits behind many request tasks
/// for each of its wake-ups, and audited reads fall to about a third of reads without audit,
/// against half on a thread of its own; docs/PERFORMANCE.md.)
///
/// Bounded: connecting waits at most the pool's acquire timeout, and a batch at most that plus
/// the statement timeout; past it the batch fails (its reads are refused with 503, as when the
/// database is unreachable) and the connection is dropped, so a hung one is never used again.
/// A batch that timed out may still have committed on the server: its reads are then refused
/// and recorded, never the other way round. An idle or old connection is replaced before a
/// batch ([`AUDIT_CONN_IDLE`]), and after [`PgStore::close`] no batch opens one.
fn audit_writer(
    connect: std::sync::Arc<AuditConnect>,
) -> (
    Batcher<AuditEntry>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    Batcher::new(
        move |entries: Vec<AuditEntry>| {
            let connect = connect.clone();
            async move { connect.write(entries).await }
        },
        BatchLimits {
            queue: 4_096,
            // One statement, so one transaction, per batch.
            max_batch: audit::AUDIT_BATCH,
            // One batch at a time: the next is everything that came while the previous one
            // committed. With four at once the batches were a quarter as large and PostgreSQL
            // committed four times as often, for the same reads (no better in the benchmark,
            // and more of PostgreSQL's CPU).
            in_flight: 1,
        },
    )
}

impl AuditConnect {
    /// Writes one batch ([`audit_writer`]): on the open connection, or on a new one when there
    /// is none, or when it is idle or old; a failed batch drops its connection.
    async fn write(&self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        // One batch at a time (`in_flight` 1): only `close` ever waits for the lock.
        let mut slot = self.conn.lock().await;
        if slot.closed {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        let started = std::time::Instant::now();
        let records = entries.len();
        if slot.conn.as_ref().is_some_and(|c| {
            c.used.elapsed() > AUDIT_CONN_IDLE || c.opened.elapsed() > AUDIT_CONN_AGE
        }) && let Some(old) = slot.conn.take()
        {
            self.close_quietly(old.conn).await;
        }
        let written = tokio::time::timeout(self.batch_timeout, async {
            if slot.conn.is_none() {
                let opened = tokio::time::timeout(self.connect_timeout, self.options.connect())
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable(
                            "cannot connect to PostgreSQL to store audit records: timed out".into(),
                        )
                    })?
                    .map_err(map_err)?;
                let now = std::time::Instant::now();
                slot.conn = Some(AuditConn {
                    conn: opened,
                    opened: now,
                    used: now,
                });
            }
            match slot.conn.as_mut() {
                Some(c) => audit::insert_many(&mut c.conn, entries).await,
                None => Err(StoreError::Internal("no audit connection".into())),
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "storing audit records timed out".into(),
            ))
        });
        if written.is_err() {
            // The connection may be broken, or mid-statement after a timeout.
            slot.conn = None;
        } else {
            if let Some(c) = slot.conn.as_mut() {
                c.used = std::time::Instant::now();
            }
            // The SQLite writer's series: a commit of reads' records and no unit.
            metrics::histogram!("haven_store_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!("haven_store_commit_units").record(0.0);
            metrics::histogram!("haven_store_commit_audit_records").record(records as f64);
        }
        written
    }

    /// Closes the writer's connection politely, giving up after the connect timeout (a
    /// connection nobody answers on is then just dropped).
    async fn close_quietly(&self, conn: PgConnection) {
        let _ = tokio::time::timeout(self.connect_timeout, sqlx::Connection::close(conn)).await;
    }
}

impl PgStore {
    /// The batcher of reads' audit records ([`audit_writer`]), started on first use.
    fn audit_batcher(&self) -> &Batcher<AuditEntry> {
        self.audit_batch.get_or_init(|| {
            let (batcher, work) = audit_writer(self.audit_connect.clone());
            tokio::spawn(work);
            batcher
        })
    }

    /// Connects, applies migrations (serialised across replicas by sqlx's advisory lock) and
    /// returns the store.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Self, StoreError> {
        let opts = connect_options(url, &options)?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout)
            // No ping per acquire: it costs a round trip on every request. A connection broken
            // by an outage fails its next statement (503) and is dropped from the pool.
            .test_before_acquire(false)
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        if !schema_is_current(&pool).await {
            MIGRATOR.run(&pool).await.map_err(|e| {
                StoreError::Internal(format!(
                    "migration failed: {e}; if Haven connects with a restricted application \
                     role, run `haven migrate` as the schema owner first"
                ))
            })?;
        }
        Ok(Self {
            pool,
            audit_batch: std::sync::OnceLock::new(),
            audit_connect: std::sync::Arc::new(AuditConnect {
                options: opts.application_name("haven-audit"),
                conn: tokio::sync::Mutex::default(),
                connect_timeout: options.acquire_timeout,
                batch_timeout: options.acquire_timeout + options.statement_timeout,
            }),
        })
    }

    /// Applies migrations and returns how many the schema has.
    pub async fn migrate(url: &str) -> Result<usize, StoreError> {
        let store = Self::connect(url, PgOptions::default()).await?;
        store.pool.close().await;
        Ok(MIGRATOR.iter().count())
    }
}

#[async_trait]
impl ResourceStore for PgStore {
    async fn read_current(
        &self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        reads::read_current(&mut conn, ty, id).await
    }

    async fn read_version(
        &self,
        ty: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        reads::read_version(&mut conn, ty, id, version).await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        reads::history(&mut conn, query).await
    }

    async fn write_erased(&self, work: ErasedWriteFn) -> Result<ErasedOutcome, StoreError> {
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let result = {
            let mut unit = PgTx {
                conn: &mut tx,
                failed: false,
                pending: PendingIndex::default(),
            };
            let r = AssertUnwindSafe(work(&mut unit)).catch_unwind().await;
            if matches!(r, Ok(Ok(_))) && !unit.failed {
                // The unit's index rows, written together before the commit.
                let flushed = unit.flush().await;
                let _ = unit.track(flushed);
            }
            (r, unit.failed)
        };
        let (result, failed) = result;
        match result {
            Ok(Ok(_)) if failed => {
                let _ = tx.rollback().await;
                tracing::error!("a unit of work went on after a failed statement; rolled back");
                Err(StoreError::Internal(
                    "unit of work ignored a failed statement".into(),
                ))
            }
            Ok(Ok(value)) => {
                // If the commit's answer is lost, the outcome is unknown. That is not a 503: a
                // client retrying a create on Retry-After could store it twice.
                tx.commit()
                    .await
                    .map_err(|e| StoreError::CommitOutcomeUnknown(e.to_string()))?;
                // Same series as the SQLite store; PostgreSQL groups commits itself, so each
                // unit counts as one.
                metrics::histogram!("haven_store_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("haven_store_commit_units").record(1.0);
                Ok(Ok(value))
            }
            Ok(Err(unit_error)) => {
                let _ = tx.rollback().await;
                Ok(Err(unit_error))
            }
            Err(_panic) => {
                tracing::error!("a unit of work panicked; it was rolled back");
                let _ = tx.rollback().await;
                Err(StoreError::Internal("unit of work panicked".into()))
            }
        }
    }

    async fn record_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.audit_batcher().submit(entry).await
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        reads::search(&mut conn, query).await
    }

    async fn related(&self, related: &Related, limit: u32) -> Result<Vec<Found>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        reads::related(&mut conn, related, limit).await
    }

    async fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        sqlx::query_scalar("SELECT value FROM store_meta WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)
    }

    async fn scan(&self, after_rid: i64, limit: u32) -> Result<Vec<Found>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        reads::scan(&mut conn, after_rid, limit).await
    }

    async fn audit_links(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<LinkedRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        audit::links(&mut conn, after_seq, limit).await
    }

    async fn audit_checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        audit::checkpoints(&mut conn).await
    }

    async fn audit_unsealed_before(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
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
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        audit::for_patient(&mut conn, patient, since, until, after_id, limit).await
    }

    async fn audit_event(&self, id: i64) -> Result<Option<PatientEvent>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        audit::event(&mut conn, id).await
    }

    async fn audit_events(
        &self,
        since: Timestamp,
        until: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PatientEvent>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        audit::events(&mut conn, since, until, after_id, limit).await
    }

    async fn record_get(&self, kind: &str, key: &str) -> Result<Option<StoredRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        records::get(&mut conn, kind, key, RowLock::None).await
    }

    async fn record_list(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, StoredRecord)>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        records::list(&mut conn, kind, after, limit).await
    }

    async fn backup(
        &self,
        sink: &mut dyn haven_store::backup::BackupSink,
    ) -> Result<(), StoreError> {
        self.export(sink).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
        // After the batch in flight, if any: its reads are answered first. Later batches
        // are refused, as the pool now refuses work.
        let mut slot = self.audit_connect.conn.lock().await;
        slot.closed = true;
        if let Some(c) = slot.conn.take() {
            self.audit_connect.close_quietly(c.conn).await;
        }
    }
}

struct PgTx<'c> {
    conn: &'c mut PgConnection,
    /// A statement failed. PostgreSQL has then aborted the transaction, and a COMMIT would
    /// silently roll back: a unit that swallowed the error must not be acknowledged.
    failed: bool,
    /// Index changes not yet written: flushed before the unit searches and before commit.
    pending: PendingIndex,
}

impl PgTx<'_> {
    fn track<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }
}

impl PgTx<'_> {
    async fn current_inner(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<CurrentState>, StoreError> {
        reads::current_state_for_update(self.conn, ty, id).await
    }

    async fn read_current_inner(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        // Lock first, so a patch computed from this version cannot race another writer.
        reads::current_state_for_update(self.conn, ty, id).await?;
        reads::read_current(self.conn, ty, id).await
    }

    async fn read_version_inner(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        reads::read_version(self.conn, ty, id, version).await
    }

    async fn append_inner(&mut self, v: NewVersion) -> Result<(), StoreError> {
        let current: Option<i64> = sqlx::query(
            "SELECT version FROM resource WHERE resource_type = $1 AND id = $2 FOR UPDATE",
        )
        .bind(v.resource_type.as_str())
        .bind(v.id.as_str())
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(map_err)?
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()
        .map_err(map_err)?;
        let version = i64::try_from(v.version.get()).map_err(StoreError::internal)?;
        if version != current.unwrap_or(0) + 1 {
            return Err(StoreError::VersionConflict(format!(
                "{}/{} version {}",
                v.resource_type, v.id, v.version
            )));
        }
        // A concurrent creator of the same new version makes this INSERT fail on the unique
        // index (mapped to VersionConflict), once the other transaction commits.
        let seq: i64 = sqlx::query(
            "INSERT INTO resource_version \
             (resource_type, id, version, last_updated, change_kind, body) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
        )
        .bind(v.resource_type.as_str())
        .bind(v.id.as_str())
        .bind(version)
        .bind(v.last_updated.micros())
        .bind(i16::try_from(v.change.code()).map_err(StoreError::internal)?)
        .bind(v.body.as_deref())
        .fetch_one(&mut *self.conn)
        .await
        .map_err(map_err)?
        .try_get(0)
        .map_err(map_err)?;
        let deleted = v.change == ChangeKind::Delete;
        let rid: i64 = sqlx::query(
            "INSERT INTO resource (resource_type, id, version, seq, deleted) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (resource_type, id) DO UPDATE \
             SET version = EXCLUDED.version, seq = EXCLUDED.seq, deleted = EXCLUDED.deleted \
             RETURNING rid",
        )
        .bind(v.resource_type.as_str())
        .bind(v.id.as_str())
        .bind(version)
        .bind(seq)
        .bind(i16::from(deleted))
        .fetch_one(&mut *self.conn)
        .await
        .map_err(map_err)?
        .try_get(0)
        .map_err(map_err)?;
        let index = if deleted { Vec::new() } else { v.index };
        self.write_index(rid, current.is_some(), index);
        Ok(())
    }

    /// Replaces the index rows of `rid` (`existed`: it may have rows to remove), when the unit
    /// flushes.
    fn write_index(&mut self, rid: i64, existed: bool, rows: Vec<IndexRow>) {
        self.pending.replace(rid, existed, rows);
    }

    /// Writes the buffered index changes.
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let writes = self.pending.take(Placeholders::Numbered);
        for script in writes.delete_scripts {
            sqlx::raw_sql(sqlx::AssertSqlSafe(script))
                .execute(&mut *self.conn)
                .await
                .map_err(map_err)?;
        }
        for s in writes.inserts {
            reads::statement(s)
                .execute(&mut *self.conn)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    async fn replace_index_inner(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        rows: Vec<IndexRow>,
    ) -> Result<bool, StoreError> {
        let rid: Option<i64> = sqlx::query(
            "SELECT rid FROM resource WHERE resource_type = $1 AND id = $2 AND deleted = 0 \
             FOR UPDATE",
        )
        .bind(ty.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(map_err)?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(map_err)?;
        let Some(rid) = rid else { return Ok(false) };
        self.write_index(rid, true, rows);
        Ok(true)
    }
}

#[async_trait]
impl WriteTx for PgTx<'_> {
    async fn current(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<CurrentState>, StoreError> {
        let r = self.current_inner(ty, id).await;
        self.track(r)
    }

    async fn read_current(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let r = self.read_current_inner(ty, id).await;
        self.track(r)
    }

    async fn read_version(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let r = self.read_version_inner(ty, id, version).await;
        self.track(r)
    }

    async fn append(&mut self, v: NewVersion) -> Result<(), StoreError> {
        let r = self.append_inner(v).await;
        self.track(r)
    }

    async fn search_ids(
        &mut self,
        query: &SearchQuery,
    ) -> Result<Vec<(ResourceType, ResourceId)>, StoreError> {
        let flushed = self.flush().await;
        self.track(flushed)?;
        let r = reads::search_ids(self.conn, query).await;
        self.track(r)
    }

    async fn lock_criteria(&mut self, key: i64) -> Result<(), StoreError> {
        // A transaction-scoped advisory lock: a second unit with the same criteria waits here
        // until the first commits, and its search (a new statement, READ COMMITTED) then sees
        // what the first created.
        let r = sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(key)
            .execute(&mut *self.conn)
            .await
            .map(|_| ())
            .map_err(map_err);
        self.track(r)
    }

    async fn set_meta(&mut self, name: &str, value: Option<&str>) -> Result<(), StoreError> {
        let r = match value {
            Some(v) => {
                sqlx::query(
                    "INSERT INTO store_meta (name, value) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(name)
                .bind(v)
                .execute(&mut *self.conn)
                .await
            }
            None => {
                sqlx::query("DELETE FROM store_meta WHERE name = $1")
                    .bind(name)
                    .execute(&mut *self.conn)
                    .await
            }
        }
        .map(|_| ())
        .map_err(map_err);
        self.track(r)
    }

    async fn replace_index(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        rows: Vec<IndexRow>,
    ) -> Result<bool, StoreError> {
        let r = self.replace_index_inner(ty, id, rows).await;
        self.track(r)
    }

    async fn audit_many(&mut self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        let r = audit::insert_many(self.conn, entries).await;
        self.track(r)
    }

    async fn audit_head(&mut self) -> Result<Option<ChainHead>, StoreError> {
        let r = audit::head(self.conn).await;
        self.track(r)
    }

    async fn unsealed_audit(
        &mut self,
        after: Option<AuditPos>,
        limit: u32,
    ) -> Result<Vec<UnsealedEvent>, StoreError> {
        let r = audit::unsealed(self.conn, after, limit).await;
        self.track(r)
    }

    async fn seal_audit(&mut self, links: Vec<ChainLink>) -> Result<(), StoreError> {
        let r = audit::seal(self.conn, links).await;
        self.track(r)
    }

    async fn audit_checkpoint(&mut self, checkpoint: StoredCheckpoint) -> Result<(), StoreError> {
        let r = audit::checkpoint(self.conn, checkpoint).await;
        self.track(r)
    }

    async fn audit_last_checkpoint(&mut self) -> Result<Option<(i64, Timestamp)>, StoreError> {
        let r = audit::last_checkpoint(self.conn).await;
        self.track(r)
    }

    async fn record_get(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let r = records::get(self.conn, kind, key, RowLock::Update).await;
        self.track(r)
    }

    async fn record_hold(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        let r = records::get(self.conn, kind, key, RowLock::Share).await;
        self.track(r)
    }

    async fn record_put(
        &mut self,
        kind: &str,
        key: &str,
        body: Vec<u8>,
        expires: Option<Timestamp>,
        expect: Expect,
    ) -> Result<i64, StoreError> {
        let r = records::put(self.conn, kind, key, body, expires, expect).await;
        // A mismatch is an answer, not a failed statement (the transaction is intact): the
        // unit may go on and commit. Statement errors still mark the unit failed.
        self.track(r)?.ok_or_else(|| conflict(kind))
    }

    async fn record_delete(&mut self, kind: &str, key: &str) -> Result<bool, StoreError> {
        let r = records::delete(self.conn, kind, key).await;
        self.track(r)
    }

    async fn record_purge_expired(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let r = records::purge_expired(self.conn, now, limit).await;
        self.track(r)
    }
}
