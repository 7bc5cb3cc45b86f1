//! The writer task: the only read-write connection, running units of work with group commit.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};
use std::time::Instant;

use async_trait::async_trait;
use futures::FutureExt;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use haven_store::sql::Placeholders;
use haven_store::sql::records::conflict;
use haven_store::sql::search::PendingIndex;
use haven_store::{
    AuditEntry, AuditPos, ChainHead, ChainLink, ChangeKind, CurrentState, ErasedOutcome,
    ErasedWriteFn, Expect, IndexRow, NewVersion, SearchQuery, StoreError, StoredCheckpoint,
    StoredRecord, StoredVersion, UnsealedEvent, WriteTx,
};
use sqlx::{Connection, Row, SqliteConnection};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::reads::{self, map_err};
use crate::{audit, records};

/// What the writer is asked to do.
pub(crate) enum Job {
    /// A unit of work, answered after the commit that holds it.
    Unit {
        work: ErasedWriteFn,
        reply: oneshot::Sender<Result<ErasedOutcome, StoreError>>,
    },
    /// A read's audit record, stored with the next commit and answered once it is durable.
    Audit {
        entry: AuditEntry,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

impl Job {
    /// Answers the job with `error` without running it.
    fn fail(self, error: StoreError) {
        match self {
            Job::Unit { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Job::Audit { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

type Ack = (
    oneshot::Sender<Result<ErasedOutcome, StoreError>>,
    ErasedOutcome,
);

/// How a gathering writer is woken: by the sender whose job brings the queue to the number
/// the writer waits for, or by any unit of work, rather than by every job that arrives.
///
/// Waiting on the channel itself would wake the writer's thread once per record (a write to
/// its event fd by the sender, a return from `epoll_wait` on the writer): measured here, about
/// eleven wake-ups per commit of twelve reads' records, each a context switch that costs this
/// VM more than inserting the record. Senders read how many jobs are queued from the channel's
/// free capacity, so the count costs no lock.
#[derive(Debug)]
pub(crate) struct Gathering {
    /// Queued jobs that end the writer's wait; `usize::MAX` when it is not waiting.
    wake_at: AtomicUsize,
    ready: Notify,
}

impl Gathering {
    pub(crate) fn new() -> Self {
        Self {
            wake_at: AtomicUsize::new(usize::MAX),
            ready: Notify::new(),
        }
    }

    /// Queues `job` for the writer, waking it if this job ends its wait.
    pub(crate) async fn send(
        &self,
        jobs: &mpsc::Sender<Job>,
        job: Job,
    ) -> Result<(), mpsc::error::SendError<Job>> {
        let unit = matches!(job, Job::Unit { .. });
        jobs.send(job).await?;
        self.sent(jobs, unit);
        Ok(())
    }

    /// Called by a sender once its job is queued.
    fn sent(&self, jobs: &mpsc::Sender<Job>, unit: bool) {
        // Pairs with the fence in `gather`: either the writer sees this job in the queue, or
        // this sender sees the writer's threshold.
        fence(Ordering::SeqCst);
        let at = self.wake_at.load(Ordering::SeqCst);
        if at == usize::MAX {
            return;
        }
        let queued = jobs.max_capacity() - jobs.capacity();
        // One wake-up per wait: whoever swaps the threshold out gives it.
        if (unit || queued >= at)
            && self
                .wake_at
                .compare_exchange(at, usize::MAX, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.ready.notify_one();
        }
    }
}

/// A unit of work that writes nothing (no fsync): the readiness probe's, and the tests'.
pub(crate) fn noop_unit() -> ErasedWriteFn {
    Box::new(|_tx| Box::pin(async { Ok(Box::new(()) as Box<dyn std::any::Any + Send>) }))
}

/// Most audit records of reads in one commit (units are capped by `max_batch`).
const MAX_AUDIT_RECORDS: usize = 4_096;

/// One group commit being built: the units that succeeded (answered after the commit), and
/// every audit record to insert before it (those of reads, and those the units recorded).
#[derive(Default)]
struct Batch {
    acks: Vec<Ack>,
    audits: Vec<AuditEntry>,
    audit_acks: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

/// Starts the writer on a thread of its own, with a single-threaded runtime. Every commit
/// passes through this one task, statement by statement; on the server's shared runtime it
/// would wait behind the request tasks for each of them (measured: about half a millisecond
/// per statement under load, so the commits of reads' audit records, and the reads waiting
/// for them, slowed to that pace). On its own thread it runs as soon as a statement answers.
/// The returned receiver answers when the writer has finished (every sender dropped).
pub(crate) fn start(
    conn: SqliteConnection,
    jobs: mpsc::Receiver<Job>,
    gathering: Arc<Gathering>,
    max_batch: usize,
) -> Result<oneshot::Receiver<()>, StoreError> {
    let (done, finished) = oneshot::channel();
    // The runtime is built on the writer's thread: dropped in the caller's (an async context)
    // after a failed start, it would panic.
    let (started, start) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("haven-sqlite-writer".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started.send(Err(StoreError::Internal(format!(
                        "cannot start the writer's runtime: {e}"
                    ))));
                    return;
                }
            };
            let _ = started.send(Ok(()));
            runtime.block_on(run(conn, jobs, &gathering, max_batch));
            let _ = done.send(());
        })
        .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
    // Answered at once by the new thread (it only builds a runtime first).
    start
        .recv()
        .map_err(|_| StoreError::Internal("the writer thread stopped at start".into()))??;
    Ok(finished)
}

async fn run(
    mut conn: SqliteConnection,
    mut jobs: mpsc::Receiver<Job>,
    gathering: &Gathering,
    max_batch: usize,
) {
    // Reads' records in the last commit: how many readers are about.
    let mut last_records = 0usize;
    while let Some(first) = jobs.recv().await {
        let gathered = gather(&mut jobs, gathering, first, last_records).await;
        let started = Instant::now();
        let outcome = if gathered.iter().all(|j| matches!(j, Job::Audit { .. })) {
            match records_only(&mut conn, &mut jobs, gathered).await {
                Collected::Committed(outcome) => Some(outcome),
                // A write came in behind the records: it joins their commit.
                Collected::MetUnit(records, unit) => {
                    with_units(&mut conn, &mut jobs, records, vec![unit], max_batch).await
                }
            }
        } else {
            with_units(&mut conn, &mut jobs, Batch::default(), gathered, max_batch).await
        };
        // None: the transaction could not begin, and every job was answered already.
        if let Some(outcome) = outcome {
            last_records = outcome.audit_acks.len();
            outcome.finish(started);
        }
    }
    let _ = conn.close().await;
}

/// What collecting a commit of reads' records came to.
enum Collected {
    Committed(Outcome),
    /// A unit of work was next in the queue: the records collected so far, and the unit.
    MetUnit(Batch, Job),
}

/// What a batch came to: who to answer, and whether it committed.
struct Outcome {
    acks: Vec<Ack>,
    audit_acks: Vec<oneshot::Sender<Result<(), StoreError>>>,
    committed: Result<(), String>,
    /// Time spent running units, before the records and the commit.
    units_took: std::time::Duration,
}

impl Outcome {
    /// Records the batch's metrics and answers every job of it.
    fn finish(self, started: Instant) {
        let Outcome {
            acks,
            audit_acks,
            committed,
            units_took,
        } = self;
        let took = started.elapsed();
        if took > SLOW_COMMIT {
            // Every write and every audited read waited this long: say where the time went.
            tracing::warn!(
                units = acks.len(),
                records = audit_acks.len(),
                units_ms = units_took.as_millis() as u64,
                commit_ms = took.saturating_sub(units_took).as_millis() as u64,
                "slow group commit"
            );
        }
        metrics::histogram!("haven_store_commit_seconds").record(took.as_secs_f64());
        metrics::histogram!("haven_store_commit_units").record(acks.len() as f64);
        metrics::histogram!("haven_store_commit_audit_records").record(audit_acks.len() as f64);
        match committed {
            Ok(()) => {
                for (reply, outcome) in acks {
                    let _ = reply.send(Ok(outcome));
                }
                for reply in audit_acks {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, units = acks.len(), records = audit_acks.len(), "group commit failed");
                for (reply, _) in acks {
                    let _ = reply.send(Err(StoreError::Unavailable("commit failed".into())));
                }
                for reply in audit_acks {
                    let _ = reply.send(Err(StoreError::Unavailable(
                        "the audit record could not be stored".into(),
                    )));
                }
            }
        }
    }
}

/// A commit of reads' records only (the common case under read load): the records queued
/// meanwhile join it, and the transaction's begin, the records and its commit go to SQLite as
/// one request, one round trip to its thread instead of two. If a unit of work is next in the
/// queue, nothing is sent: the records go with the unit, in one commit.
async fn records_only(
    conn: &mut SqliteConnection,
    jobs: &mut mpsc::Receiver<Job>,
    gathered: Vec<Job>,
) -> Collected {
    let mut batch = Batch::default();
    let mut queued = gathered.into_iter();
    loop {
        let job = match queued.next() {
            Some(job) => job,
            None if batch.audit_acks.len() < MAX_AUDIT_RECORDS => match jobs.try_recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            None => break,
        };
        match job {
            Job::Audit { entry, reply } => {
                batch.audits.push(entry);
                batch.audit_acks.push(reply);
            }
            unit @ Job::Unit { .. } => return Collected::MetUnit(batch, unit),
        }
    }
    let committed =
        audit::insert_then(conn, Some("BEGIN IMMEDIATE"), &batch.audits, Some("COMMIT"))
            .await
            .map_err(|e| e.to_string());
    if committed.is_err() {
        // Whatever failed (the begin, an insert, the commit), leave no transaction open.
        let _ = exec(conn, "ROLLBACK").await;
    }
    Collected::Committed(Outcome {
        acks: Vec::new(),
        audit_acks: batch.audit_acks,
        committed,
        units_took: std::time::Duration::ZERO,
    })
}

/// A commit with units of work: each runs in a savepoint, then the records of the batch (the
/// units' and the reads') go in with the commit.
/// `batch` may already hold reads' records (collected before a unit was met). `None` when the
/// transaction could not begin: every job is answered with the error then.
async fn with_units(
    conn: &mut SqliteConnection,
    jobs: &mut mpsc::Receiver<Job>,
    mut batch: Batch,
    gathered: Vec<Job>,
    max_batch: usize,
) -> Option<Outcome> {
    let started = Instant::now();
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
        tracing::error!(error = %e, "cannot begin a write transaction");
        for job in gathered {
            job.fail(StoreError::Unavailable(e.to_string()));
        }
        for reply in batch.audit_acks {
            let _ = reply.send(Err(StoreError::Unavailable(e.to_string())));
        }
        return None;
    }
    let mut sound = true;
    for job in gathered {
        if sound {
            sound = take(conn, job, &mut batch).await;
        } else {
            job.fail(StoreError::Unavailable(
                "the write could not be completed; retry".into(),
            ));
        }
    }
    // Everything that queued while the previous commit was syncing joins this one.
    while sound && batch.acks.len() < max_batch && batch.audit_acks.len() < MAX_AUDIT_RECORDS {
        match jobs.try_recv() {
            Ok(job) => sound = take(conn, job, &mut batch).await,
            Err(_) => break,
        }
    }
    let Batch {
        acks,
        audits,
        audit_acks,
    } = batch;
    let units_took = started.elapsed();
    let committed = if !sound {
        // A savepoint could not be rolled back or released: SQLite may have rolled the
        // whole transaction back by itself (full disk, I/O error). Nothing of this batch can
        // be trusted to commit, so none of it is acknowledged.
        Err("write batch abandoned after a savepoint failure".to_owned())
    } else if acks.is_empty() && audit_acks.is_empty() {
        exec(conn, "ROLLBACK").await.map_err(|e| e.to_string())
    } else if audits.is_empty() {
        exec(conn, "COMMIT").await.map_err(|e| e.to_string())
    } else {
        // The audit records go in last, for the whole batch, with the commit: one request
        // to SQLite's thread. If they cannot be stored, nothing of the batch commits: the
        // units' data would be unaudited, and the reads would be served unaudited.
        audit::insert_then(conn, None, &audits, Some("COMMIT"))
            .await
            .map_err(|e| e.to_string())
    };
    if committed.is_err() {
        // Whatever failed (a statement, the commit itself), leave no transaction open.
        let _ = exec(conn, "ROLLBACK").await;
    }
    Some(Outcome {
        acks,
        audit_acks,
        committed,
        units_took,
    })
}

/// A group commit slower than this is logged with where its time went.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

/// How long the writer may wait for more reads' records before it commits: see [`gather`].
#[cfg(not(test))]
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(1);
/// Long in unit tests, so that a wait ended by a wake-up is told from one that timed out.
#[cfg(test)]
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The jobs a commit starts with. A job that is a read's record may wait for others, because
/// a commit costs the same for one record as for thirty (the disk sync and SQLite's pages are
/// most of it): measured here, about 0.2 ms of CPU per commit, against a read's 0.2 ms. Without
/// waiting, a commit starts the moment the previous one ends and takes only the few records
/// that came meanwhile; the CPU then goes to commits instead of reads. So, when the last
/// commit carried records of several readers, the writer waits until as many have come as
/// last time, for at most [`GATHER_WAIT`]. A lone reader never waits (its last commit had one
/// record), two readers wait only for each other, and under load the batches grow to what
/// comes in the wait. A unit of work (a write) ends the wait at once. The writer sleeps
/// through the wait and is woken once, by [`Gathering`].
async fn gather(
    jobs: &mut mpsc::Receiver<Job>,
    gathering: &Gathering,
    first: Job,
    last_records: usize,
) -> Vec<Job> {
    let mut gathered = vec![first];
    if last_records < 2 || !matches!(gathered[0], Job::Audit { .. }) {
        return gathered;
    }
    let want = last_records.min(MAX_AUDIT_RECORDS);
    // A wake-up left from an earlier wait (given as that wait timed out) must not end this one.
    let _ = gathering.ready.notified().now_or_never();
    wait_for(jobs, gathering, &mut gathered, want).await;
    gathering.wake_at.store(usize::MAX, Ordering::SeqCst);
    // What came by the deadline joins (the callers take more from the queue as they build).
    gathered
}

/// Takes queued jobs into `gathered` until it holds `want`, a unit of work comes, or
/// [`GATHER_WAIT`] has passed, sleeping between wake-ups.
async fn wait_for(
    jobs: &mut mpsc::Receiver<Job>,
    gathering: &Gathering,
    gathered: &mut Vec<Job>,
    want: usize,
) {
    let deadline = tokio::time::Instant::now() + GATHER_WAIT;
    loop {
        while gathered.len() < MAX_AUDIT_RECORDS
            && let Ok(job) = jobs.try_recv()
        {
            let unit = matches!(job, Job::Unit { .. });
            gathered.push(job);
            if unit {
                return;
            }
        }
        if gathered.len() >= want || tokio::time::Instant::now() >= deadline {
            return;
        }
        gathering
            .wake_at
            .store(want - gathered.len(), Ordering::SeqCst);
        fence(Ordering::SeqCst);
        // A job queued before the threshold was set did not look at it: take it first (it
        // may be a unit of work, which ends the wait).
        if !jobs.is_empty() {
            continue;
        }
        if tokio::time::timeout_at(deadline, gathering.ready.notified())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Adds one job to the batch: a read's audit record is only collected; a unit runs now.
async fn take(conn: &mut SqliteConnection, job: Job, batch: &mut Batch) -> bool {
    match job {
        Job::Audit { entry, reply } => {
            batch.audits.push(entry);
            batch.audit_acks.push(reply);
            true
        }
        Job::Unit { work, reply } => run_unit(conn, work, reply, batch).await,
    }
}

/// Runs one unit inside a savepoint. Successful units wait in the batch for the commit (with
/// the audit records they made); failed or panicking units are rolled back to their savepoint
/// and answered at once. Returns `false` when the batch's transaction can no longer be trusted
/// (a savepoint statement failed), so the caller abandons the whole batch instead of committing
/// neighbours' work around a hole.
async fn run_unit(
    conn: &mut SqliteConnection,
    work: ErasedWriteFn,
    reply: oneshot::Sender<Result<ErasedOutcome, StoreError>>,
    batch: &mut Batch,
) -> bool {
    if let Err(e) = exec(conn, "SAVEPOINT unit").await {
        let _ = reply.send(Err(StoreError::Unavailable(e.to_string())));
        return false;
    }
    let (result, failed, audits) = {
        let mut tx = SqliteTx {
            conn: &mut *conn,
            failed: false,
            pending: PendingIndex::default(),
            audits: Vec::new(),
        };
        let r = AssertUnwindSafe(work(&mut tx)).catch_unwind().await;
        if matches!(r, Ok(Ok(_))) && !tx.failed {
            // The unit's index rows, written together before its savepoint is released.
            let flushed = tx.flush().await;
            let _ = tx.track(flushed);
        }
        (r, tx.failed, tx.audits)
    };
    let (outcome, release) = match result {
        Ok(Ok(_)) if failed => {
            tracing::error!("a unit of work went on after a failed statement; rolled back");
            (None, rollback_savepoint(conn).await)
        }
        Ok(Ok(value)) => (Some(Ok(value)), exec(conn, "RELEASE unit").await),
        Ok(Err(unit_error)) => (Some(Err(unit_error)), rollback_savepoint(conn).await),
        Err(_panic) => {
            tracing::error!("a unit of work panicked; it was rolled back");
            (None, rollback_savepoint(conn).await)
        }
    };
    if let Err(e) = release {
        tracing::error!(error = %e, "a savepoint could not be released or rolled back");
        let _ = reply.send(Err(StoreError::Unavailable(
            "the write could not be completed; retry".into(),
        )));
        return false;
    }
    match outcome {
        Some(Ok(value)) => {
            // Its audit records commit with it, or not at all (inserted before the commit).
            batch.audits.extend(audits);
            batch.acks.push((reply, Ok(value)));
        }
        // The unit's own error: nothing of it remains, answer now.
        Some(Err(unit_error)) => {
            let _ = reply.send(Ok(Err(unit_error)));
        }
        None => {
            let _ = reply.send(Err(StoreError::Internal(
                "unit of work panicked or ignored a failed statement".into(),
            )));
        }
    }
    true
}

async fn rollback_savepoint(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    exec(conn, "ROLLBACK TO unit").await?;
    exec(conn, "RELEASE unit").await
}

async fn exec(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(&mut *conn).await.map(|_| ())
}

struct SqliteTx<'c> {
    conn: &'c mut SqliteConnection,
    /// A statement failed. A unit that goes on and returns `Ok` anyway is not committed (the
    /// same rule as PostgreSQL, where a failed statement aborts the transaction).
    failed: bool,
    /// Index changes not yet written: flushed before the unit searches and when it ends.
    pending: PendingIndex,
    /// Audit records of the unit: inserted with the whole batch's, before its commit (or
    /// before the unit itself reads the audit tables).
    audits: Vec<AuditEntry>,
}

impl SqliteTx<'_> {
    fn track<T>(&mut self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }
}

#[async_trait]
impl WriteTx for SqliteTx<'_> {
    async fn current(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<CurrentState>, StoreError> {
        let r = reads::current_state(self.conn, ty, id).await;
        self.track(r)
    }

    async fn read_current(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let r = reads::read_current(self.conn, ty, id).await;
        self.track(r)
    }

    async fn read_version(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let r = reads::read_version(self.conn, ty, id, version).await;
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

    async fn lock_criteria(&mut self, _key: i64) -> Result<(), StoreError> {
        // One writer runs units one after another: a unit's search and its write are never
        // interleaved with another unit's.
        Ok(())
    }

    async fn set_meta(&mut self, name: &str, value: Option<&str>) -> Result<(), StoreError> {
        let r = match value {
            Some(v) => {
                sqlx::query(
                    "INSERT INTO store_meta (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                )
                .bind(name)
                .bind(v)
                .execute(&mut *self.conn)
                .await
            }
            None => {
                sqlx::query("DELETE FROM store_meta WHERE name = ?1")
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
        self.audits.extend(entries);
        Ok(())
    }

    async fn audit_head(&mut self) -> Result<Option<ChainHead>, StoreError> {
        let flushed = self.flush_audits().await;
        self.track(flushed)?;
        let r = audit::head(self.conn).await;
        self.track(r)
    }

    async fn unsealed_audit(
        &mut self,
        after: Option<AuditPos>,
        limit: u32,
    ) -> Result<Vec<UnsealedEvent>, StoreError> {
        let flushed = self.flush_audits().await;
        self.track(flushed)?;
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
        let r = records::get(self.conn, kind, key).await;
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
        // A mismatch is an answer, not a failed statement: the unit may go on and commit.
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

impl SqliteTx<'_> {
    async fn append_inner(&mut self, v: NewVersion) -> Result<(), StoreError> {
        let version = i64::try_from(v.version.get()).map_err(StoreError::internal)?;
        let conflict = || {
            StoreError::VersionConflict(format!(
                "{}/{} version {}",
                v.resource_type, v.id, v.version
            ))
        };
        // Version 1 needs no look-up: if any version of the resource exists, so does version 1,
        // and the UNIQUE (resource_type, id, version) constraint refuses the insert. Creates,
        // most of an import, save a statement on the one writer.
        let existed = if version == 1 {
            false
        } else {
            let current: Option<i64> =
                sqlx::query("SELECT version FROM resource WHERE resource_type = ?1 AND id = ?2")
                    .bind(v.resource_type.as_str())
                    .bind(v.id.as_str())
                    .fetch_optional(&mut *self.conn)
                    .await
                    .map_err(map_err)?
                    .map(|r| r.try_get::<i64, _>(0))
                    .transpose()
                    .map_err(map_err)?;
            if version != current.unwrap_or(0) + 1 {
                return Err(conflict());
            }
            current.is_some()
        };
        let seq: i64 = sqlx::query(
            "INSERT INTO resource_version \
             (resource_type, id, version, last_updated, change_kind, body) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING seq",
        )
        .bind(v.resource_type.as_str())
        .bind(v.id.as_str())
        .bind(version)
        .bind(v.last_updated.micros())
        .bind(v.change.code())
        .bind(v.body.as_deref())
        .fetch_one(&mut *self.conn)
        .await
        .map_err(|e| match &e {
            // SQLITE_CONSTRAINT_UNIQUE: the version exists already.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("2067") => conflict(),
            _ => map_err(e),
        })?
        .try_get(0)
        .map_err(map_err)?;
        let deleted = v.change == ChangeKind::Delete;
        let rid: i64 = sqlx::query(
            "INSERT INTO resource (resource_type, id, version, seq, deleted) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (resource_type, id) DO UPDATE \
             SET version = excluded.version, seq = excluded.seq, deleted = excluded.deleted \
             RETURNING rid",
        )
        .bind(v.resource_type.as_str())
        .bind(v.id.as_str())
        .bind(version)
        .bind(seq)
        .bind(i64::from(deleted))
        .fetch_one(&mut *self.conn)
        .await
        .map_err(map_err)?
        .try_get(0)
        .map_err(map_err)?;
        let index = if deleted { Vec::new() } else { v.index };
        self.write_index(rid, existed, index);
        Ok(())
    }

    /// Replaces the index rows of `rid` (`existed`: it may have rows to remove), when the unit
    /// flushes.
    fn write_index(&mut self, rid: i64, existed: bool, rows: Vec<IndexRow>) {
        self.pending.replace(rid, existed, rows);
    }

    /// Inserts the unit's audit records now: it is about to read the audit tables, and sees
    /// its own writes.
    async fn flush_audits(&mut self) -> Result<(), StoreError> {
        if self.audits.is_empty() {
            return Ok(());
        }
        let audits = std::mem::take(&mut self.audits);
        audit::insert_then(self.conn, None, &audits, None).await
    }

    /// Writes the buffered index changes.
    async fn flush(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let writes = self.pending.take(Placeholders::Question);
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
            "SELECT rid FROM resource WHERE resource_type = ?1 AND id = ?2 AND deleted = 0",
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

#[cfg(test)]
mod tests {
    use super::*;
    use haven_domain::Timestamp;

    fn record() -> (Job, oneshot::Receiver<Result<(), StoreError>>) {
        let (reply, answer) = oneshot::channel();
        let entry = AuditEntry {
            time: Timestamp::from_micros(1),
            record: b"{}".to_vec(),
            patients: Vec::new(),
        };
        (Job::Audit { entry, reply }, answer)
    }

    fn woken(g: &Gathering) -> bool {
        g.ready.notified().now_or_never().is_some()
    }

    #[tokio::test]
    async fn a_gathering_writer_is_woken_once_by_the_job_that_completes_its_batch() {
        let g = Gathering::new();
        let (tx, _rx) = mpsc::channel(16);
        // Not gathering: no sender wakes the writer (the channel itself does, for its first).
        tx.send(record().0).await.unwrap();
        g.sent(&tx, false);
        assert!(!woken(&g));
        // Waiting for three queued jobs: the second and third sender count two, then three.
        g.wake_at.store(3, Ordering::SeqCst);
        tx.send(record().0).await.unwrap();
        g.sent(&tx, false);
        assert!(!woken(&g), "two of three queued");
        tx.send(record().0).await.unwrap();
        g.sent(&tx, false);
        assert!(woken(&g), "three queued");
        // The threshold was taken by that sender: the next one gives no second wake-up.
        assert_eq!(g.wake_at.load(Ordering::SeqCst), usize::MAX);
        tx.send(record().0).await.unwrap();
        g.sent(&tx, false);
        assert!(!woken(&g));
    }

    #[tokio::test]
    async fn a_unit_of_work_ends_the_wait_whatever_is_queued() {
        let g = Gathering::new();
        let (tx, _rx) = mpsc::channel(16);
        g.wake_at.store(10, Ordering::SeqCst);
        let (reply, _answer) = oneshot::channel();
        let work = noop_unit();
        tx.send(Job::Unit { work, reply }).await.unwrap();
        g.sent(&tx, true);
        assert!(woken(&g));
    }

    #[tokio::test]
    async fn gather_takes_what_is_queued_and_stops_at_a_unit() {
        let g = Gathering::new();
        let (tx, mut rx) = mpsc::channel(16);
        let mut answers = Vec::new();
        for _ in 0..4 {
            let (job, answer) = record();
            tx.send(job).await.unwrap();
            answers.push(answer);
        }
        let (first, _a) = record();
        // The last commit had three records: three are wanted, and all four queued are taken
        // at once (no wait, no wake-up needed).
        let started = std::time::Instant::now();
        let got = gather(&mut rx, &g, first, 3).await;
        assert_eq!(got.len(), 5);
        assert!(started.elapsed() < GATHER_WAIT, "{:?}", started.elapsed());
        assert_eq!(g.wake_at.load(Ordering::SeqCst), usize::MAX);
        // Nothing more comes: the wait ends at the deadline with what there is.
        let (first, _b) = record();
        let got = gather(&mut rx, &g, first, 3).await;
        assert_eq!(got.len(), 1);
        // A unit ends the gathering: jobs behind it stay queued for the next commit.
        let (first, _c) = record();
        let (reply, _answer) = oneshot::channel();
        let work = noop_unit();
        tx.send(Job::Unit { work, reply }).await.unwrap();
        tx.send(record().0).await.unwrap();
        let got = gather(&mut rx, &g, first, 3).await;
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1], Job::Unit { .. }));
        assert_eq!(rx.len(), 1);
        assert_eq!(g.wake_at.load(Ordering::SeqCst), usize::MAX);
    }

    /// Sends `jobs` from another task, one every 20 ms, each announced as `submit` does.
    fn send_later(tx: mpsc::Sender<Job>, g: Arc<Gathering>, jobs: Vec<Job>) {
        tokio::spawn(async move {
            for job in jobs {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                g.send(&tx, job).await.unwrap();
            }
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_writer_is_woken_by_the_record_that_completes_its_batch() {
        let g = Arc::new(Gathering::new());
        let (tx, mut rx) = mpsc::channel(16);
        // A wake-up left over from an earlier wait must not end this one early.
        g.ready.notify_one();
        send_later(
            tx.clone(),
            g.clone(),
            vec![record().0, record().0, record().0],
        );
        let started = std::time::Instant::now();
        let got = gather(&mut rx, &g, record().0, 4).await;
        let took = started.elapsed();
        assert_eq!(got.len(), 4, "the wait lasted until the fourth record");
        assert!(took < GATHER_WAIT / 2, "woken, not timed out: {took:?}");
        assert_eq!(g.wake_at.load(Ordering::SeqCst), usize::MAX);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_sent_during_the_wait_ends_it() {
        let g = Arc::new(Gathering::new());
        let (tx, mut rx) = mpsc::channel(16);
        let (reply, _answer) = oneshot::channel();
        let work = noop_unit();
        send_later(
            tx.clone(),
            g.clone(),
            vec![record().0, Job::Unit { work, reply }],
        );
        let started = std::time::Instant::now();
        let got = gather(&mut rx, &g, record().0, 10).await;
        let took = started.elapsed();
        assert_eq!(got.len(), 3);
        assert!(matches!(got[2], Job::Unit { .. }));
        assert!(took < GATHER_WAIT / 2, "ended by the write: {took:?}");
    }
}
