//! Backup and restore on PostgreSQL (the shared logic is `haven_store::backup`).
//!
//! A backup reads in one `REPEATABLE READ READ ONLY` transaction: one snapshot of every table,
//! taken while the other connections keep writing. A restore writes in one transaction, so an
//! interrupted restore leaves nothing behind; it keeps resource `seq` and audit event ids
//! (`OVERRIDING SYSTEM VALUE`), then moves the identity sequences past them.

use async_trait::async_trait;
use futures::TryStreamExt;
use haven_store::StoreError;
use haven_store::backup::{
    self, BackupSink, ColKind, Dialect, ExportConn, RestoreConn, RestoreCounts, RestoreSource,
};
use haven_store::sql::{Placeholders, SqlArg};
use sqlx::postgres::PgRow;
use sqlx::{Connection, PgConnection, Row};

use crate::reads::{bind, map_err};
use crate::{PgOptions, PgStore};

struct Export<'c>(&'c mut PgConnection);

#[async_trait]
impl ExportConn for Export<'_> {
    async fn stream(
        &mut self,
        sql: &str,
        kinds: &[ColKind],
        row: &mut (dyn FnMut(Vec<SqlArg>) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError> {
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).fetch(&mut *self.0);
        while let Some(r) = rows.try_next().await.map_err(map_err)? {
            row(decode(&r, kinds)?)?;
        }
        Ok(())
    }
}

fn decode(row: &PgRow, kinds: &[ColKind]) -> Result<Vec<SqlArg>, StoreError> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Ok(match k {
                ColKind::Int => SqlArg::Int(row.try_get(i).map_err(map_err)?),
                ColKind::OptInt => SqlArg::OptInt(row.try_get(i).map_err(map_err)?),
                ColKind::Text => SqlArg::Text(row.try_get(i).map_err(map_err)?),
                ColKind::OptText => SqlArg::OptText(row.try_get(i).map_err(map_err)?),
                ColKind::Blob => SqlArg::Blob(row.try_get(i).map_err(map_err)?),
                ColKind::OptBlob => SqlArg::OptBlob(row.try_get(i).map_err(map_err)?),
            })
        })
        .collect()
}

struct Restore<'c>(&'c mut PgConnection);

#[async_trait]
impl RestoreConn for Restore<'_> {
    async fn execute(&mut self, sql: String, args: Vec<SqlArg>) -> Result<(), StoreError> {
        bind(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
            .execute(&mut *self.0)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn scalar(&mut self, sql: String, args: Vec<SqlArg>) -> Result<i64, StoreError> {
        let row = bind(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
            .fetch_one(&mut *self.0)
            .await
            .map_err(map_err)?;
        row.try_get(0).map_err(map_err)
    }
}

const DIALECT: Dialect = Dialect {
    placeholders: Placeholders::Numbered,
    explicit_ids: "OVERRIDING SYSTEM VALUE",
    after_explicit_ids: &[
        "SELECT setval(pg_get_serial_sequence('resource_version', 'seq'), \
         GREATEST((SELECT max(seq) FROM resource_version), 1))",
        "SELECT setval(pg_get_serial_sequence('audit_event', 'id'), \
         GREATEST((SELECT max(id) FROM audit_event), 1))",
    ],
};

impl PgStore {
    pub(crate) async fn export(&self, sink: &mut dyn BackupSink) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let mut tx = conn.begin().await.map_err(map_err)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        // A backup reads everything: the per-statement limit that protects requests does not
        // apply to it.
        sqlx::query("SET LOCAL statement_timeout = 0")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let r = backup::export(&mut Export(&mut tx), sink).await;
        let _ = tx.rollback().await;
        r
    }

    /// Restores a backup into the database at `url` (migrated first). Refuses when it already
    /// holds data. Needs the schema owner: it sets identity sequences.
    pub async fn restore(
        url: &str,
        source: &mut dyn RestoreSource,
    ) -> Result<RestoreCounts, StoreError> {
        let store = Self::connect(url, PgOptions::default()).await?;
        let result = async {
            let mut conn = store.pool.acquire().await.map_err(map_err)?;
            let mut tx = conn.begin().await.map_err(map_err)?;
            sqlx::query("SET LOCAL statement_timeout = 0")
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let counts = backup::restore(&mut Restore(&mut tx), source, DIALECT).await?;
            tx.commit().await.map_err(map_err)?;
            // Fresh statistics: without them the planner treats the restored tables as empty,
            // and the re-index that follows (and the first requests) run with bad plans.
            // Outside the transaction the pool's statement timeout applies again: lift it for
            // this one statement; a failure only costs speed, so it is a warning.
            let analyzed = async {
                sqlx::query("SET statement_timeout = 0")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("ANALYZE").execute(&mut *conn).await?;
                sqlx::query("RESET statement_timeout")
                    .execute(&mut *conn)
                    .await
            }
            .await;
            if let Err(e) = analyzed {
                tracing::warn!(error = %e, "ANALYZE after the restore failed; run it by hand");
            }
            Ok(counts)
        }
        .await;
        store.pool.close().await;
        result
    }
}
