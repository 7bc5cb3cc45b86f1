//! Backup and restore on SQLite (the shared logic is `haven_store::backup`).
//!
//! A backup reads on one read-only connection inside one transaction: in WAL mode that is a
//! snapshot, and the writer goes on committing meanwhile. A restore builds a new database file
//! beside the target (`<file>.restoring`) in one transaction and renames it into place only
//! when it is complete, so an interrupted restore leaves the target untouched.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use async_trait::async_trait;
use futures::TryStreamExt;
use haven_store::StoreError;
use haven_store::backup::{
    self, ColKind, Dialect, ExportConn, RestoreConn, RestoreCounts, RestoreSource,
};
use haven_store::sql::{Placeholders, SqlArg};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection};

use crate::reads::{bind, map_err};

pub(crate) struct Export<'c>(pub(crate) &'c mut SqliteConnection);

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

fn decode(row: &SqliteRow, kinds: &[ColKind]) -> Result<Vec<SqlArg>, StoreError> {
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

struct Restore<'c>(&'c mut SqliteConnection);

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
    placeholders: Placeholders::Question,
    explicit_ids: "",
    after_explicit_ids: &[],
};

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_database_files(path: &Path) -> Result<(), StoreError> {
    for p in [
        path.to_owned(),
        with_suffix(path, "-wal"),
        with_suffix(path, "-shm"),
    ] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot remove {}: {e}",
                    p.display()
                )));
            }
        }
    }
    Ok(())
}

fn options(path: &Path) -> Result<SqliteConnectOptions, StoreError> {
    Ok(SqliteConnectOptions::from_str("sqlite://")
        .map_err(StoreError::internal)?
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true))
}

/// Restores a backup into a new database at `path`. Refuses when `path` already holds data.
/// The file appears only once the restore is complete (see the module documentation).
pub async fn restore(
    path: &Path,
    source: &mut dyn RestoreSource,
) -> Result<RestoreCounts, StoreError> {
    if path.exists() {
        let mut conn = SqliteConnection::connect_with(&options(path)?.read_only(true))
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        let found: i64 = match sqlx::query_scalar(backup::COUNT_DATA)
            .fetch_one(&mut conn)
            .await
        {
            Ok(n) => n,
            // A file without Haven's tables holds no Haven data, but it is not ours to remove.
            Err(_) => {
                return Err(StoreError::Internal(format!(
                    "{} exists and is not an empty Haven database; restore into a new data \
                     directory",
                    path.display()
                )));
            }
        };
        let _ = conn.close().await;
        if found > 0 {
            return Err(StoreError::Internal(format!(
                "{} already holds data ({found} rows of resources, audit events and accounts); \
                 restore into a new data directory",
                path.display()
            )));
        }
    }

    // Left over from an interrupted restore: start again.
    let partial = with_suffix(path, ".restoring");
    remove_database_files(&partial)?;
    crate::SqliteStore::migrate(&partial).await?;
    let mut conn = SqliteConnection::connect_with(&options(&partial)?)
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", partial.display())))?;
    let mut tx = conn.begin().await.map_err(map_err)?;
    let counts = backup::restore(&mut Restore(&mut tx), source, DIALECT).await?;
    tx.commit().await.map_err(map_err)?;
    // Fold the WAL into the file so the rename below moves everything.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await
        .map_err(map_err)?;
    conn.close().await.map_err(map_err)?;
    remove_database_files(path)?;
    std::fs::rename(&partial, path).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot move {} to {}: {e}",
            partial.display(),
            path.display()
        ))
    })?;
    // The rename is durable once the directory is.
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
    {
        let _ = d.sync_all();
    }
    for leftover in [with_suffix(&partial, "-wal"), with_suffix(&partial, "-shm")] {
        let _ = std::fs::remove_file(leftover);
    }
    Ok(counts)
}
