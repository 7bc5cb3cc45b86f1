//! The `identity_record` table (SQL text shared in `haven_store::sql::records`). The writer
//! runs one unit at a time, so a record read in a unit needs no lock to stay as read.

use haven_domain::Timestamp;
use haven_store::sql::Placeholders;
use haven_store::sql::records as q;
use haven_store::{Expect, StoreError, StoredRecord};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::reads::{map_err, statement};

const PH: Placeholders = Placeholders::Question;

/// Decodes (version, body, expires) starting at column `at`.
fn record_from_row(row: &SqliteRow, at: usize) -> Result<StoredRecord, StoreError> {
    q::record_from_columns(
        row.try_get(at).map_err(map_err)?,
        row.try_get(at + 1).map_err(map_err)?,
        row.try_get(at + 2).map_err(map_err)?,
    )
}

pub(crate) async fn get(
    conn: &mut SqliteConnection,
    kind: &str,
    key: &str,
) -> Result<Option<StoredRecord>, StoreError> {
    q::check(kind, key)?;
    let row = statement(q::get(kind, key, q::RowLock::None, PH))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.map(|r| record_from_row(&r, 0)).transpose()
}

pub(crate) async fn list(
    conn: &mut SqliteConnection,
    kind: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<(String, StoredRecord)>, StoreError> {
    q::check(kind, "")?;
    let rows = statement(q::list(kind, after, limit, PH))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| Ok((r.try_get(0).map_err(map_err)?, record_from_row(r, 1)?)))
        .collect()
}

/// The new version, or `None` when the stored record did not match `expect`.
pub(crate) async fn put(
    conn: &mut SqliteConnection,
    kind: &str,
    key: &str,
    body: Vec<u8>,
    expires: Option<Timestamp>,
    expect: Expect,
) -> Result<Option<i64>, StoreError> {
    q::check(kind, key)?;
    let row = statement(q::put(kind, key, body, expires, expect, PH))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.map(|r| r.try_get(0).map_err(map_err)).transpose()
}

pub(crate) async fn delete(
    conn: &mut SqliteConnection,
    kind: &str,
    key: &str,
) -> Result<bool, StoreError> {
    q::check(kind, key)?;
    let done = statement(q::delete(kind, key, PH))
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(done.rows_affected() > 0)
}

pub(crate) async fn purge_expired(
    conn: &mut SqliteConnection,
    now: Timestamp,
    limit: u32,
) -> Result<u64, StoreError> {
    let done = statement(q::purge_expired(now, limit, false, PH))
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(done.rows_affected())
}
