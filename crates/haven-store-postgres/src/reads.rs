//! Queries shared by the read pool and the writer's transaction.

use futures::StreamExt as _;
use haven_domain::{ResourceId, ResourceType, VersionId};
use haven_store::sql::search::{self as search_sql, KeyKind, Statement};
use haven_store::sql::{self, Placeholders, SqlArg};
use haven_store::{
    CurrentState, Found, HistoryEntry, HistoryPage, HistoryPos, HistoryQuery, HistoryScope,
    Related, SearchPage, SearchQuery, SortValue, StoreError, StoredVersion,
};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Row};

/// Classifies driver errors: lost connections and timeouts are `Unavailable` (503, retry);
/// a unique violation is a lost version race; anything else is internal.
pub(crate) fn map_err(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                "23505" => StoreError::VersionConflict(db.message().to_owned()),
                // Deadlock or serialization failure: nothing was written; retried like a race.
                "40P01" | "40001" => StoreError::VersionConflict(db.message().to_owned()),
                // connection exceptions, shutdown, cannot connect now, too many connections,
                // statement timeout / cancel, serialization failure or deadlock
                c if c.starts_with("08")
                    || matches!(c, "57P01" | "57P02" | "57P03" | "53300" | "57014") =>
                {
                    StoreError::Unavailable(e.to_string())
                }
                _ => StoreError::internal(e),
            }
        }
        _ => StoreError::internal(e),
    }
}

fn version_from_row(row: &PgRow, ty: Option<ResourceType>) -> Result<StoredVersion, StoreError> {
    let name: String = match ty {
        Some(t) => t.as_str().to_owned(),
        None => row.try_get("resource_type").map_err(map_err)?,
    };
    let change: i16 = row.try_get("change_kind").map_err(map_err)?;
    sql::version_from_columns(
        &name,
        row.try_get::<&str, _>("id").map_err(map_err)?,
        row.try_get("version").map_err(map_err)?,
        row.try_get("last_updated").map_err(map_err)?,
        i64::from(change),
        row.try_get("body").map_err(map_err)?,
    )
}

pub(crate) async fn read_current(
    conn: &mut PgConnection,
    ty: ResourceType,
    id: &ResourceId,
) -> Result<Option<StoredVersion>, StoreError> {
    let row = sqlx::query(
        "SELECT v.id, v.version, v.last_updated, v.change_kind, v.body \
         FROM resource r JOIN resource_version v ON v.seq = r.seq \
         WHERE r.resource_type = $1 AND r.id = $2",
    )
    .bind(ty.as_str())
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    row.map(|r| version_from_row(&r, Some(ty))).transpose()
}

/// The head of a resource, locked until the transaction ends (`FOR UPDATE OF r`): a second
/// writer to the same resource waits here and then sees the first one's version.
pub(crate) async fn current_state_for_update(
    conn: &mut PgConnection,
    ty: ResourceType,
    id: &ResourceId,
) -> Result<Option<CurrentState>, StoreError> {
    let row = sqlx::query(
        "SELECT v.version, v.last_updated, v.change_kind \
         FROM resource r JOIN resource_version v ON v.seq = r.seq \
         WHERE r.resource_type = $1 AND r.id = $2 FOR UPDATE OF r",
    )
    .bind(ty.as_str())
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    let Some(row) = row else { return Ok(None) };
    let change: i16 = row.try_get("change_kind").map_err(map_err)?;
    sql::state_from_columns(
        row.try_get("version").map_err(map_err)?,
        row.try_get("last_updated").map_err(map_err)?,
        i64::from(change),
    )
    .map(Some)
}

pub(crate) async fn read_version(
    conn: &mut PgConnection,
    ty: ResourceType,
    id: &ResourceId,
    version: VersionId,
) -> Result<Option<StoredVersion>, StoreError> {
    let v = i64::try_from(version.get()).map_err(StoreError::internal)?;
    let row = sqlx::query(
        "SELECT id, version, last_updated, change_kind, body FROM resource_version \
         WHERE resource_type = $1 AND id = $2 AND version = $3",
    )
    .bind(ty.as_str())
    .bind(id.as_str())
    .bind(v)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    row.map(|r| version_from_row(&r, Some(ty))).transpose()
}

/// How long a history read waits for transactions that were running when it began (see
/// [`history`]). Writes are short, so this is normally a few milliseconds; a transaction held
/// open longer (an idle session in another program) only delays, never hides, what it covers.
const HORIZON_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The visibility horizon: the oldest transaction still running *in this database* (other
/// databases of the cluster cannot write our tables), or the next transaction id if none is;
/// every transaction below it has ended. Run it before the statement that reads with it: a
/// transaction that gets its id afterwards gets one at or above `xmax`.
///
/// `pg_snapshot_xmax` is one past the newest *completed* transaction, so running transactions
/// may have ids above it as well as below. `pg_stat_activity.backend_xid` is a 32-bit xid; it
/// is widened to the 64-bit form stored in `resource_version.txid` with the epoch of `xmax`,
/// corrected when the two are more than 2^31 apart (across an epoch boundary): running
/// transactions are always within 2^31 of each other. It lists the sessions of roles whose activity this role may
/// see: Haven's replicas share one role, or the role has `pg_read_all_stats`.
pub(crate) const HORIZON_SQL: &str = "\
    WITH s AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next), \
    running AS ( \
        SELECT ((s.next >> 32) << 32) | a.backend_xid::text::bigint AS x, s.next \
        FROM pg_stat_activity a, s \
        WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL \
          AND a.pid <> pg_backend_pid()) \
    SELECT LEAST((SELECT next FROM s), \
                 (SELECT min(CASE WHEN x > next + 2147483648 THEN x - 4294967296 \
                                  WHEN x < next - 2147483648 THEN x + 4294967296 \
                                  ELSE x END) FROM running))";

/// History, newest first, with keyset paging on `(txid, seq)` (query text and page assembly
/// shared in `haven_store::sql`).
///
/// Writers run in parallel, so versions commit out of sequence order. A read shows only
/// versions below the visibility horizon (see [`haven_store::HistoryPos`]), so a page never
/// shows a version while an older position may still appear. To also show the caller its own
/// and everyone's committed writes, it first waits (up to [`HORIZON_WAIT`]) until the horizon
/// has passed the newest transaction visible in the scope: the transactions that delay it are
/// ones that were already running, so the wait ends as soon as they do.
pub(crate) async fn history(
    conn: &mut PgConnection,
    q: &HistoryQuery,
) -> Result<HistoryPage, StoreError> {
    let (scope_sql, scope_args) = match &q.scope {
        HistoryScope::System => (String::new(), Vec::new()),
        HistoryScope::Type(t) => (
            " WHERE resource_type = $1".to_owned(),
            vec![t.as_str().to_owned()],
        ),
        HistoryScope::Instance(t, id) => (
            " WHERE resource_type = $1 AND id = $2".to_owned(),
            vec![t.as_str().to_owned(), id.as_str().to_owned()],
        ),
    };
    let newest_sql = format!(
        "SELECT ({HORIZON_SQL}) AS horizon, (SELECT max(txid) FROM resource_version{scope_sql}) AS newest"
    );
    let mut first = sqlx::query(sqlx::AssertSqlSafe(newest_sql));
    for a in scope_args {
        first = first.bind(a);
    }
    let row = first.fetch_one(&mut *conn).await.map_err(map_err)?;
    let mut horizon: i64 = row.try_get("horizon").map_err(map_err)?;
    let newest: Option<i64> = row.try_get("newest").map_err(map_err)?;
    if let Some(newest) = newest {
        let deadline = tokio::time::Instant::now() + HORIZON_WAIT;
        let mut pause = std::time::Duration::from_millis(1);
        while horizon <= newest && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(20));
            horizon = sqlx::query_scalar(HORIZON_SQL)
                .fetch_one(&mut *conn)
                .await
                .map_err(map_err)?;
        }
    }
    let built = sql::history_sql(
        q,
        Placeholders::Numbered,
        sql::HistoryOrder::TxSeq { horizon },
    );
    // Planned for its values, like a search: one shape serves every scope and `_since`.
    let query = planned_for_values(Statement {
        sql: built.sql,
        args: built.args,
    });
    let rows = query.fetch(&mut *conn).map(|row| {
        let row = row.map_err(map_err)?;
        Ok(HistoryEntry {
            pos: HistoryPos {
                tx: row.try_get("txid").map_err(map_err)?,
                seq: row.try_get("seq").map_err(map_err)?,
            },
            version: version_from_row(&row, None)?,
        })
    });
    sql::collect_history(q, rows).await
}

type PgQuery = Query<'static, Postgres, PgArguments>;

pub(crate) fn bind(mut query: PgQuery, args: Vec<SqlArg>) -> PgQuery {
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

pub(crate) fn statement(s: Statement) -> PgQuery {
    bind(sqlx::query(sqlx::AssertSqlSafe(s.sql)), s.args)
}

/// A search (or history) statement, sent unnamed so that PostgreSQL plans it for these values
/// each time. The same text runs with very different values (one patient, or a code on a tenth
/// of all Observations); a prepared statement would switch after five runs to a generic plan that
/// assumes every condition is selective, which can be a hundred times slower. Unnamed, it is
/// also kept out of the connection's statement cache, which the many shapes of searches would
/// otherwise churn.
pub(crate) fn planned_for_values(s: Statement) -> PgQuery {
    statement(s).persistent(false)
}

/// A row of `rid`, sort keys and version columns.
fn found_from_row(row: &PgRow, kinds: &[KeyKind]) -> Result<Found, StoreError> {
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
    conn: &mut PgConnection,
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
        let rows = planned_for_values(search_sql::search_page(q, Placeholders::Numbered))
            .fetch(&mut *conn)
            .map(|row| found_from_row(&row.map_err(map_err)?, &kinds));
        search_sql::collect_page(q, rows).await?
    };
    if q.total {
        let count: i64 = planned_for_values(search_sql::search_count(q, Placeholders::Numbered))
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
    conn: &mut PgConnection,
    q: &SearchQuery,
) -> Result<Vec<(ResourceType, ResourceId)>, StoreError> {
    let rows = planned_for_values(search_sql::search_ids(q, Placeholders::Numbered))
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
    conn: &mut PgConnection,
    related: &Related,
    limit: u32,
) -> Result<Vec<Found>, StoreError> {
    let rows = planned_for_values(search_sql::related(related, limit, Placeholders::Numbered))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter().map(|row| found_from_row(row, &[])).collect()
}

pub(crate) async fn scan(
    conn: &mut PgConnection,
    after_rid: i64,
    limit: u32,
) -> Result<Vec<Found>, StoreError> {
    let rows = statement(search_sql::scan(after_rid, limit, Placeholders::Numbered))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter().map(|row| found_from_row(row, &[])).collect()
}
