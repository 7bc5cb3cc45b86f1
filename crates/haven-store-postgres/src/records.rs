//! The `identity_record` table (SQL text shared in `haven_store::sql::records`). Units run in
//! parallel here: a unit's read takes the record's advisory gate and locks the row (`FOR
//! UPDATE`, or shared with `FOR SHARE` for a record it only needs kept as it is; see
//! `haven_store::sql::records::get`), and every put checks its expectation in the statement
//! that writes, so the row lock decides a race.

use haven_domain::Timestamp;
use haven_store::sql::Placeholders;
use haven_store::sql::records as q;
use haven_store::{Expect, StoreError, StoredRecord};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::reads::{map_err, statement};

const PH: Placeholders = Placeholders::Numbered;

/// Decodes (version, body, expires) starting at column `at`.
fn record_from_row(row: &PgRow, at: usize) -> Result<StoredRecord, StoreError> {
    q::record_from_columns(
        row.try_get(at).map_err(map_err)?,
        row.try_get(at + 1).map_err(map_err)?,
        row.try_get(at + 2).map_err(map_err)?,
    )
}

/// `lock`: how a unit holds the row until its transaction ends.
pub(crate) async fn get(
    conn: &mut PgConnection,
    kind: &str,
    key: &str,
    lock: q::RowLock,
) -> Result<Option<StoredRecord>, StoreError> {
    q::check(kind, key)?;
    let row = statement(q::get(kind, key, lock, PH))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.map(|r| record_from_row(&r, 0)).transpose()
}

pub(crate) async fn list(
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
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

/// Rows that running units hold are skipped (a later purge takes them), so maintenance never
/// waits on a request.
pub(crate) async fn purge_expired(
    conn: &mut PgConnection,
    now: Timestamp,
    limit: u32,
) -> Result<u64, StoreError> {
    let done = statement(q::purge_expired(now, limit, true, PH))
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(done.rows_affected())
}
