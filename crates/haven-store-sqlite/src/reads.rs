//! Queries shared by the read pool and the writer's transaction.

use futures::StreamExt as _;
use haven_domain::{ResourceId, ResourceType, VersionId};
use haven_store::sql::search::{self as search_sql, KeyKind, Statement};
use haven_store::sql::{self, Placeholders, SqlArg};
use haven_store::{
    CurrentState, Found, HistoryEntry, HistoryPage, HistoryPos, HistoryQuery, Related, SearchPage,
    SearchQuery, SortValue, StoreError, StoredVersion,
};
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};

pub(crate) async fn acquire(pool: &SqlitePool) -> Result<PoolConnection<Sqlite>, StoreError> {
    pool.acquire()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// A read connection whose statements SQLite interrupts once `timeout` has passed (for reads
/// whose cost depends on the data: search, history, scan). The deadline is checked by a
/// progress handler every few thousand VM instructions. Dropping the guard disarms the handler,
/// so the connection goes back to the pool without a stale deadline, even when the request
/// was abandoned half way.
pub(crate) struct TimedConnection {
    conn: PoolConnection<Sqlite>,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::ops::Deref for TimedConnection {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for TimedConnection {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for TimedConnection {
    fn drop(&mut self) {
        self.armed
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// VM instructions between deadline checks: about every 10-50 µs of work.
const PROGRESS_STEPS: i32 = 4_000;

pub(crate) async fn acquire_timed(
    pool: &SqlitePool,
    timeout: std::time::Duration,
) -> Result<TimedConnection, StoreError> {
    let mut conn = acquire(pool).await?;
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let deadline = std::time::Instant::now() + timeout;
    let flag = armed.clone();
    conn.lock_handle()
        .await
        .map_err(map_err)?
        .set_progress_handler(PROGRESS_STEPS, move || {
            // `false` interrupts the running statement (SQLITE_INTERRUPT).
            !flag.load(std::sync::atomic::Ordering::Relaxed) || std::time::Instant::now() < deadline
        });
    Ok(TimedConnection { conn, armed })
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
                // SQLITE_INTERRUPT: the statement timeout (see `acquire_timed`).
                Some(9) => StoreError::Unavailable("statement timeout".into()),
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

/// History, newest first, with keyset paging on `seq` (query text and page assembly shared in
/// `haven_store::sql`). One writer commits in seq order, so seq alone is a stable position.
pub(crate) async fn history(
    conn: &mut SqliteConnection,
    q: &HistoryQuery,
) -> Result<HistoryPage, StoreError> {
    let built = sql::history_sql(q, Placeholders::Question, sql::HistoryOrder::Seq);
    let query = bind(sqlx::query(sqlx::AssertSqlSafe(built.sql)), built.args);
    let rows = query.fetch(&mut *conn).map(|row| {
        let row = row.map_err(map_err)?;
        Ok(HistoryEntry {
            pos: HistoryPos {
                tx: 0,
                seq: row.try_get("seq").map_err(map_err)?,
            },
            version: version_from_row(&row, None)?,
        })
    });
    sql::collect_history(q, rows).await
}

type SqliteQuery = Query<'static, Sqlite, SqliteArguments>;

pub(crate) fn bind(mut query: SqliteQuery, args: Vec<SqlArg>) -> SqliteQuery {
    for arg in args {
        query = match arg {
            SqlArg::Text(s) => query.bind(s),
            SqlArg::OptText(s) => query.bind(s),
            SqlArg::Int(i) => query.bind(i),
            SqlArg::OptInt(i) => query.bind(i),
            SqlArg::Float(f) => query.bind(f),
            SqlArg::Blob(b) => query.bind(b),
            SqlArg::OptBlob(b) => query.bind(b),
        };
    }
    query
}

pub(crate) fn statement(s: Statement) -> SqliteQuery {
    bind(sqlx::query(sqlx::AssertSqlSafe(s.sql)), s.args)
}

/// A row of `rid`, sort keys and version columns.
fn found_from_row(row: &SqliteRow, kinds: &[KeyKind]) -> Result<Found, StoreError> {
    let rid: i64 = row.try_get(0).map_err(map_err)?;
    let mut keys = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        let at = i + 1;
        let key = match kind {
            KeyKind::Text => row
                .try_get::<Option<String>, _>(at)
                .map_err(map_err)?
                .map_or(SortValue::Null, SortValue::Text),
            KeyKind::Int => row
                .try_get::<Option<i64>, _>(at)
                .map_err(map_err)?
                .map_or(SortValue::Null, SortValue::Int),
            KeyKind::Float => row
                .try_get::<Option<f64>, _>(at)
                .map_err(map_err)?
                .map_or(SortValue::Null, SortValue::Float),
        };
        keys.push(key);
    }
    Ok(Found {
        rid,
        version: version_from_row(row, None)?,
        keys,
    })
}

pub(crate) async fn search(
    conn: &mut SqliteConnection,
    q: &SearchQuery,
) -> Result<SearchPage, StoreError> {
    let mut page = if q.limit == 0 {
        SearchPage {
            matches: Vec::new(),
            has_next: false,
            has_previous: false,
            total: None,
        }
    } else {
        let kinds = search_sql::key_kinds(q);
        let rows = statement(search_sql::search_page(q, Placeholders::Question))
            .fetch(&mut *conn)
            .map(|row| found_from_row(&row.map_err(map_err)?, &kinds));
        search_sql::collect_page(q, rows).await?
    };
    if q.total {
        let count: i64 = statement(search_sql::search_count(q, Placeholders::Question))
            .fetch_one(&mut *conn)
            .await
            .map_err(map_err)?
            .try_get(0)
            .map_err(map_err)?;
        page.total = Some(u64::try_from(count).unwrap_or(0));
    }
    Ok(page)
}

pub(crate) async fn search_ids(
    conn: &mut SqliteConnection,
    q: &SearchQuery,
) -> Result<Vec<(ResourceType, ResourceId)>, StoreError> {
    let rows = statement(search_sql::search_ids(q, Placeholders::Question))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|row| {
            let ty: &str = row.try_get(0).map_err(map_err)?;
            let id: &str = row.try_get(1).map_err(map_err)?;
            Ok((
                ResourceType::parse(ty)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown resource type {ty}")))?,
                ResourceId::parse(id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            ))
        })
        .collect()
}

pub(crate) async fn related(
    conn: &mut SqliteConnection,
    related: &Related,
    limit: u32,
) -> Result<Vec<Found>, StoreError> {
    let rows = statement(search_sql::related(related, limit, Placeholders::Question))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter().map(|row| found_from_row(row, &[])).collect()
}

pub(crate) async fn scan(
    conn: &mut SqliteConnection,
    after_rid: i64,
    limit: u32,
) -> Result<Vec<Found>, StoreError> {
    let rows = statement(search_sql::scan(after_rid, limit, Placeholders::Question))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter().map(|row| found_from_row(row, &[])).collect()
}
