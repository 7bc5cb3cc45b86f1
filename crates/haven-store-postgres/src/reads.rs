//! Queries shared by the read pool and the writer's transaction.

use bytes::Bytes;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use haven_store::{
    ChangeKind, CurrentState, HistoryCursor, HistoryEntry, HistoryPage, HistoryQuery, HistoryScope,
    StoreError, StoredVersion,
};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

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
                // connection exceptions, shutdown, cannot connect now, too many connections,
                // statement timeout / cancel, serialization failure or deadlock
                c if c.starts_with("08")
                    || matches!(
                        c,
                        "57P01" | "57P02" | "57P03" | "53300" | "57014" | "40001" | "40P01"
                    ) =>
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
    let resource_type = match ty {
        Some(t) => t,
        None => {
            let name: String = row.try_get("resource_type").map_err(map_err)?;
            ResourceType::parse(&name)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown resource type {name}")))?
        }
    };
    let id: String = row.try_get("id").map_err(map_err)?;
    let version: i64 = row.try_get("version").map_err(map_err)?;
    let last_updated: i64 = row.try_get("last_updated").map_err(map_err)?;
    let change: i16 = row.try_get("change_kind").map_err(map_err)?;
    let body: Option<Vec<u8>> = row.try_get("body").map_err(map_err)?;
    Ok(StoredVersion {
        resource_type,
        id: ResourceId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        version: u64::try_from(version)
            .ok()
            .and_then(VersionId::from_u64)
            .ok_or_else(|| StoreError::Corrupt(format!("bad version {version}")))?,
        last_updated: Timestamp::from_micros(last_updated),
        change: ChangeKind::from_code(i64::from(change))?,
        body: body.map(Bytes::from),
    })
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
    let version: i64 = row.try_get("version").map_err(map_err)?;
    let last_updated: i64 = row.try_get("last_updated").map_err(map_err)?;
    let change: i16 = row.try_get("change_kind").map_err(map_err)?;
    Ok(Some(CurrentState {
        version: u64::try_from(version)
            .ok()
            .and_then(VersionId::from_u64)
            .ok_or_else(|| StoreError::Corrupt(format!("bad version {version}")))?,
        last_updated: Timestamp::from_micros(last_updated),
        deleted: ChangeKind::from_code(i64::from(change))? == ChangeKind::Delete,
    }))
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

/// History, newest first, with keyset paging on `seq`.
pub(crate) async fn history(
    conn: &mut PgConnection,
    q: &HistoryQuery,
) -> Result<HistoryPage, StoreError> {
    // The SQL is assembled from fixed fragments only; every value is a bound parameter.
    let mut sql = String::from(
        "SELECT v.seq, v.resource_type, v.id, v.version, v.last_updated, v.change_kind, v.body \
         FROM resource_version v WHERE 1 = 1",
    );
    let mut binds: Vec<Bind> = Vec::new();
    match &q.scope {
        HistoryScope::System => {}
        HistoryScope::Type(t) => {
            sql.push_str(" AND v.resource_type = ?");
            binds.push(Bind::Text(t.as_str().to_owned()));
        }
        HistoryScope::Instance(t, id) => {
            sql.push_str(" AND v.resource_type = ? AND v.id = ?");
            binds.push(Bind::Text(t.as_str().to_owned()));
            binds.push(Bind::Text(id.as_str().to_owned()));
        }
    }
    if let Some(since) = q.since {
        sql.push_str(" AND v.last_updated >= ?");
        binds.push(Bind::Int(since.micros()));
    }
    if let Some(at) = q.at {
        // A version was current during [start, end) if it began before `end` and its
        // successor (if any) began after `start`.
        sql.push_str(
            " AND v.last_updated < ? AND NOT EXISTS (SELECT 1 FROM resource_version n \
             WHERE n.resource_type = v.resource_type AND n.id = v.id \
             AND n.version = v.version + 1 AND n.last_updated <= ?)",
        );
        binds.push(Bind::Int(at.end.micros()));
        binds.push(Bind::Int(at.start.micros()));
    }
    let ascending = matches!(q.cursor, Some(HistoryCursor::After(_)));
    match q.cursor {
        Some(HistoryCursor::Before(s)) => {
            sql.push_str(" AND v.seq < ?");
            binds.push(Bind::Int(s));
        }
        Some(HistoryCursor::After(s)) => {
            sql.push_str(" AND v.seq > ?");
            binds.push(Bind::Int(s));
        }
        None => {}
    }
    sql.push_str(if ascending {
        " ORDER BY v.seq ASC LIMIT ?"
    } else {
        " ORDER BY v.seq DESC LIMIT ?"
    });
    binds.push(Bind::Int(i64::from(q.count) + 1));

    // Fragments are written with `?`; PostgreSQL numbers its parameters.
    let mut numbered = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            numbered.push_str(&format!("${n}"));
        } else {
            numbered.push(ch);
        }
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(numbered));
    for b in binds {
        query = match b {
            Bind::Text(s) => query.bind(s),
            Bind::Int(i) => query.bind(i),
        };
    }
    let rows = query.fetch_all(&mut *conn).await.map_err(map_err)?;
    let more = rows.len() > q.count as usize;
    let mut entries = Vec::with_capacity(rows.len().min(q.count as usize));
    for row in rows.iter().take(q.count as usize) {
        let seq: i64 = row.try_get("seq").map_err(map_err)?;
        entries.push(HistoryEntry {
            seq,
            version: version_from_row(row, None)?,
        });
    }
    if ascending {
        entries.reverse();
    }
    let (has_older, has_newer) = match q.cursor {
        None => (more, false),
        Some(HistoryCursor::Before(_)) => (more, true),
        Some(HistoryCursor::After(_)) => (true, more),
    };
    Ok(HistoryPage {
        entries,
        has_older,
        has_newer,
    })
}

enum Bind {
    Text(String),
    Int(i64),
}
