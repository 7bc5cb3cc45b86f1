//! Queries shared by the read pool and the writer's transaction.

use futures::StreamExt as _;
use haven_domain::{ResourceId, ResourceType, VersionId};
use haven_store::sql::{self, Placeholders, SqlArg};
use haven_store::{
    CurrentState, HistoryEntry, HistoryPage, HistoryQuery, StoreError, StoredVersion,
};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};

pub(crate) async fn acquire(pool: &SqlitePool) -> Result<PoolConnection<Sqlite>, StoreError> {
    pool.acquire()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Classifies driver errors. Conditions of the machine rather than of the request (busy, locked,
/// out of memory, I/O error, disk full, cannot open) are `Unavailable`: a 503 the client may
/// retry once the operator has acted.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Database(db) => {
            // Extended result codes carry the primary code in their low byte.
            let primary = db
                .code()
                .and_then(|c| c.parse::<i32>().ok())
                .map(|c| c & 0xff);
            match primary {
                // SQLITE_BUSY, LOCKED, NOMEM, READONLY, IOERR, FULL, CANTOPEN
                Some(5 | 6 | 7 | 8 | 10 | 13 | 14) => StoreError::Unavailable(e.to_string()),
                _ => StoreError::internal(e),
            }
        }
        _ => StoreError::internal(e),
    }
}

fn version_from_row(
    row: &SqliteRow,
    ty: Option<ResourceType>,
) -> Result<StoredVersion, StoreError> {
    let name: String = match ty {
        Some(t) => t.as_str().to_owned(),
        None => row.try_get("resource_type").map_err(map_err)?,
    };
    let change: i64 = row.try_get("change_kind").map_err(map_err)?;
    sql::version_from_columns(
        &name,
        row.try_get::<&str, _>("id").map_err(map_err)?,
        row.try_get("version").map_err(map_err)?,
        row.try_get("last_updated").map_err(map_err)?,
        change,
        row.try_get("body").map_err(map_err)?,
    )
}

pub(crate) async fn read_current(
    conn: &mut SqliteConnection,
    ty: ResourceType,
    id: &ResourceId,
) -> Result<Option<StoredVersion>, StoreError> {
    let row = sqlx::query(
        "SELECT v.id, v.version, v.last_updated, v.change_kind, v.body \
         FROM resource r JOIN resource_version v ON v.seq = r.seq \
         WHERE r.resource_type = ?1 AND r.id = ?2",
    )
    .bind(ty.as_str())
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    row.map(|r| version_from_row(&r, Some(ty))).transpose()
}

pub(crate) async fn current_state(
    conn: &mut SqliteConnection,
    ty: ResourceType,
    id: &ResourceId,
) -> Result<Option<CurrentState>, StoreError> {
    let row = sqlx::query(
        "SELECT v.version, v.last_updated, v.change_kind \
         FROM resource r JOIN resource_version v ON v.seq = r.seq \
         WHERE r.resource_type = ?1 AND r.id = ?2",
    )
    .bind(ty.as_str())
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    let Some(row) = row else { return Ok(None) };
    let change: i64 = row.try_get("change_kind").map_err(map_err)?;
    sql::state_from_columns(
        row.try_get("version").map_err(map_err)?,
        row.try_get("last_updated").map_err(map_err)?,
        change,
    )
    .map(Some)
}

pub(crate) async fn read_version(
    conn: &mut SqliteConnection,
    ty: ResourceType,
    id: &ResourceId,
    version: VersionId,
) -> Result<Option<StoredVersion>, StoreError> {
    let v = i64::try_from(version.get()).map_err(StoreError::internal)?;
    let row = sqlx::query(
        "SELECT id, version, last_updated, change_kind, body FROM resource_version \
         WHERE resource_type = ?1 AND id = ?2 AND version = ?3",
    )
    .bind(ty.as_str())
    .bind(id.as_str())
    .bind(v)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    row.map(|r| version_from_row(&r, Some(ty))).transpose()
}

/// History, newest first, with keyset paging on `seq` (query text and page assembly shared in `haven_store::sql`).
pub(crate) async fn history(
    conn: &mut SqliteConnection,
    q: &HistoryQuery,
) -> Result<HistoryPage, StoreError> {
    let built = sql::history_sql(q, Placeholders::Question);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(built.sql));
    for arg in built.args {
        query = match arg {
            SqlArg::Text(s) => query.bind(s),
            SqlArg::Int(i) => query.bind(i),
        };
    }
    let rows = query.fetch(&mut *conn).map(|row| {
        let row = row.map_err(map_err)?;
        Ok(HistoryEntry {
            seq: row.try_get("seq").map_err(map_err)?,
            version: version_from_row(&row, None)?,
        })
    });
    sql::collect_history(q, rows).await
}
