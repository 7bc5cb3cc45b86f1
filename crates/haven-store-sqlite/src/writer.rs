//! The writer task: the only read-write connection, running units of work with group commit.

use std::panic::AssertUnwindSafe;
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
use tokio::sync::{mpsc, oneshot};

use crate::reads::{self, map_err};
use crate::{audit, records};

pub(crate) struct Job {
    pub work: ErasedWriteFn,
    pub reply: oneshot::Sender<Result<ErasedOutcome, StoreError>>,
}

type Ack = (
    oneshot::Sender<Result<ErasedOutcome, StoreError>>,
    ErasedOutcome,
);

pub(crate) async fn run(
    mut conn: SqliteConnection,
    mut jobs: mpsc::Receiver<Job>,
    max_batch: usize,
) {
    while let Some(first) = jobs.recv().await {
        if let Err(e) = exec(&mut conn, "BEGIN IMMEDIATE").await {
            tracing::error!(error = %e, "cannot begin a write transaction");
            let _ = first
                .reply
                .send(Err(StoreError::Unavailable(e.to_string())));
            continue;
        }
        let started = Instant::now();
        let mut acks: Vec<Ack> = Vec::new();
        let mut sound = run_unit(&mut conn, first, &mut acks).await;
        // Everything that queued while the previous commit was syncing joins this one.
        while sound && acks.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => sound = run_unit(&mut conn, job, &mut acks).await,
                Err(_) => break,
            }
        }
        let committed = if !sound {
            // A savepoint could not be rolled back or released: SQLite may have rolled the whole
            // transaction back by itself (full disk, I/O error). Nothing of this batch can be
            // trusted to commit, so none of it is acknowledged.
            let _ = exec(&mut conn, "ROLLBACK").await;
            Err(sqlx::Error::Protocol(
                "write batch abandoned after a savepoint failure".into(),
            ))
        } else if acks.is_empty() {
            exec(&mut conn, "ROLLBACK").await
        } else {
            exec(&mut conn, "COMMIT").await
        };
        metrics::histogram!("haven_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("haven_store_commit_units").record(acks.len() as f64);
        match committed {
            Ok(()) => {
                for (reply, outcome) in acks {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, units = acks.len(), "group commit failed");
                let _ = exec(&mut conn, "ROLLBACK").await;
                for (reply, _) in acks {
                    let _ = reply.send(Err(StoreError::Unavailable("commit failed".into())));
                }
            }
        }
    }
    let _ = conn.close().await;
}

/// Runs one unit inside a savepoint. Successful units wait in `acks` for the commit; failed or
/// panicking units are rolled back to their savepoint and answered at once. Returns `false` when
/// the batch's transaction can no longer be trusted (a savepoint statement failed), so the
/// caller abandons the whole batch instead of committing neighbours' work around a hole.
async fn run_unit(conn: &mut SqliteConnection, job: Job, acks: &mut Vec<Ack>) -> bool {
    if let Err(e) = exec(conn, "SAVEPOINT unit").await {
        let _ = job.reply.send(Err(StoreError::Unavailable(e.to_string())));
        return false;
    }
    let (result, failed) = {
        let mut tx = SqliteTx {
            conn: &mut *conn,
            failed: false,
            pending: PendingIndex::default(),
        };
        let r = AssertUnwindSafe((job.work)(&mut tx)).catch_unwind().await;
        if matches!(r, Ok(Ok(_))) && !tx.failed {
            // The unit's index rows, written together before its savepoint is released.
            let flushed = tx.flush().await;
            let _ = tx.track(flushed);
        }
        (r, tx.failed)
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
        let _ = job.reply.send(Err(StoreError::Unavailable(
            "the write could not be completed; retry".into(),
        )));
        return false;
    }
    match outcome {
        Some(Ok(value)) => acks.push((job.reply, Ok(value))),
        // The unit's own error: nothing of it remains, answer now.
        Some(Err(unit_error)) => {
            let _ = job.reply.send(Ok(Err(unit_error)));
        }
        None => {
            let _ = job.reply.send(Err(StoreError::Internal(
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
