//! The audit tables (SQL text shared in `haven_store::sql::audit`).

use haven_domain::Timestamp;
use haven_store::sql::audit as q;
use haven_store::sql::{Placeholders, SqlArg};
use haven_store::{
    AuditEntry, AuditPos, ChainHead, ChainLink, LinkedRecord, PatientEvent, StoreError,
    StoredCheckpoint, UnsealedEvent,
};
use sqlx::{Row, SqliteConnection};

use crate::reads::{bind, map_err, statement};

const PH: Placeholders = Placeholders::Question;

/// Rows per statement in [`insert_then`]: three bound values each, well below SQLite's limit
/// of 32,766 per statement.
const ROWS_PER_STATEMENT: usize = 2_000;

/// Batches of at most this many rows (events and patient rows together) keep their statement
/// prepared ([`insert_then`]); larger ones are parsed each time. 32 connections' reads of
/// one patient each make 64.
const KEPT_SHAPE: usize = 64;

/// The largest audit event id ever used: `audit_event` counts with AUTOINCREMENT, whose
/// sequence never goes back, even past rows a rolled-back batch held.
const TOP_ID: &str = "max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'audit_event'), 0), \
                         coalesce((SELECT max(id) FROM audit_event), 0))";

/// Inserts `entries` with their patients, then runs `then` (the commit, if any), as one query: its
/// statements run one after another on SQLite's thread, so a whole batch of records costs one
/// round trip to it instead of four. The events are numbered in the statement itself, from the
/// largest id so far (read inside this write transaction, so other processes writing to the
/// file, such as `haven user add`, are counted), so that their patients' rows can name them
/// without the ids being read back first.
pub(crate) async fn insert_then(
    conn: &mut SqliteConnection,
    first: Option<&str>,
    entries: &[AuditEntry],
    then: Option<&str>,
) -> Result<(), StoreError> {
    let total = i64::try_from(entries.len()).map_err(StoreError::internal)?;
    let mut sql = String::new();
    if let Some(first) = first {
        sql.push_str(first);
        sql.push_str(";\n");
    }
    let mut args = Vec::new();
    let mut patients: Vec<(&str, i64, i64)> = Vec::new();
    let mut ordinal = 0i64;
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        // Event k of the chunk takes top + k: the SELECT reads audit_event, so SQLite computes
        // all its rows before inserting any, and `top` is the same for every row.
        sql.push_str("INSERT INTO audit_event (id, time, record) SELECT t.top + v.column1, v.column2, v.column3 FROM (VALUES ");
        for (i, e) in chunk.iter().enumerate() {
            ordinal += 1;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?)");
            args.push(SqlArg::Int(
                i64::try_from(i + 1).map_err(StoreError::internal)?,
            ));
            args.push(SqlArg::Int(e.time.micros()));
            args.push(SqlArg::Blob(e.record.clone()));
            patients.extend(
                e.distinct_patients()
                    .into_iter()
                    .map(|p| (p, ordinal, e.time.micros())),
            );
        }
        sql.push_str(") AS v, (SELECT ");
        sql.push_str(TOP_ID);
        sql.push_str(" AS top) AS t;\n");
    }
    // After the events, the largest id is that of the last one: event n (from 1) of the whole
    // batch is top - total + n.
    for chunk in patients.chunks(ROWS_PER_STATEMENT) {
        sql.push_str("INSERT INTO audit_patient (patient, event_id, time) SELECT v.column1, t.top - ? + v.column2, v.column3 FROM (VALUES ");
        args.push(SqlArg::Int(total));
        for (i, (p, n, time)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str("(?, ?, ?)");
            args.extend([
                SqlArg::Text((*p).to_owned()),
                SqlArg::Int(*n),
                SqlArg::Int(*time),
            ]);
        }
        sql.push_str(") AS v, (SELECT max(id) AS top FROM audit_event) AS t;\n");
    }
    if let Some(then) = then {
        sql.push_str(then);
        sql.push(';');
    }
    // The text depends only on the batch's shape (how many events, how many patient rows,
    // whether it begins the transaction), and under load a few shapes recur: small ones are
    // kept prepared in the connection's statement cache (LRU, see `WRITER_STATEMENTS`). Parsing them anew was a
    // fifth of SQLite's time on the writer (perf, 13 records per commit); keeping them raised
    // audited reads from 75 % to 82 % of reads without audit (median of four runs each).
    let keep = entries.len() + patients.len() <= KEPT_SHAPE;
    bind(sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(keep), args)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(crate) async fn head(conn: &mut SqliteConnection) -> Result<Option<ChainHead>, StoreError> {
    let row = sqlx::query(q::head(false))
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.map(|r| {
        Ok(ChainHead {
            seq: r.try_get(0).map_err(map_err)?,
            hash: r.try_get(1).map_err(map_err)?,
            pos: AuditPos {
                tx: r.try_get(2).map_err(map_err)?,
                id: r.try_get(3).map_err(map_err)?,
            },
        })
    })
    .transpose()
}

/// One writer: every committed event is final, so sealing order is id order.
pub(crate) async fn unsealed(
    conn: &mut SqliteConnection,
    after: Option<AuditPos>,
    limit: u32,
) -> Result<Vec<UnsealedEvent>, StoreError> {
    let rows = statement(q::unsealed(after, None, limit, PH))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(UnsealedEvent {
                pos: AuditPos {
                    tx: r.try_get(0).map_err(map_err)?,
                    id: r.try_get(1).map_err(map_err)?,
                },
                record: r.try_get(2).map_err(map_err)?,
            })
        })
        .collect()
}

pub(crate) async fn seal(
    conn: &mut SqliteConnection,
    links: Vec<ChainLink>,
) -> Result<(), StoreError> {
    for chunk in links.chunks(200) {
        statement(q::insert_links(chunk, PH))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

pub(crate) async fn checkpoint(
    conn: &mut SqliteConnection,
    c: StoredCheckpoint,
) -> Result<(), StoreError> {
    sqlx::query(q::INSERT_CHECKPOINT)
        .bind(c.seq)
        .bind(c.hash)
        .bind(c.time.micros())
        .bind(c.key_id)
        .bind(c.signature)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    Ok(())
}

pub(crate) async fn last_checkpoint(
    conn: &mut SqliteConnection,
) -> Result<Option<(i64, Timestamp)>, StoreError> {
    let row = sqlx::query(q::LAST_CHECKPOINT)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.map(|r| {
        Ok((
            r.try_get(0).map_err(map_err)?,
            Timestamp::from_micros(r.try_get(1).map_err(map_err)?),
        ))
    })
    .transpose()
}

pub(crate) async fn links(
    conn: &mut SqliteConnection,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<LinkedRecord>, StoreError> {
    let rows = sqlx::query(q::LINKS)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(LinkedRecord {
                seq: r.try_get(0).map_err(map_err)?,
                event_id: r.try_get(1).map_err(map_err)?,
                record: r.try_get(2).map_err(map_err)?,
                hash: r.try_get(3).map_err(map_err)?,
            })
        })
        .collect()
}

pub(crate) async fn checkpoints(
    conn: &mut SqliteConnection,
) -> Result<Vec<StoredCheckpoint>, StoreError> {
    let rows = sqlx::query(q::CHECKPOINTS)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(StoredCheckpoint {
                seq: r.try_get(0).map_err(map_err)?,
                hash: r.try_get(1).map_err(map_err)?,
                time: Timestamp::from_micros(r.try_get(2).map_err(map_err)?),
                key_id: r.try_get(3).map_err(map_err)?,
                signature: r.try_get(4).map_err(map_err)?,
            })
        })
        .collect()
}

pub(crate) async fn unsealed_before(
    conn: &mut SqliteConnection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(q::UNSEALED_BEFORE)
        .bind(before.micros())
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    u64::try_from(n).map_err(StoreError::internal)
}

pub(crate) async fn for_patient(
    conn: &mut SqliteConnection,
    patient: &str,
    since: Timestamp,
    until: Timestamp,
    after_id: i64,
    limit: u32,
) -> Result<Vec<PatientEvent>, StoreError> {
    let rows = sqlx::query(q::FOR_PATIENT)
        .bind(patient)
        .bind(since.micros())
        .bind(until.micros())
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter()
        .map(|r| {
            Ok(PatientEvent {
                id: r.try_get(0).map_err(map_err)?,
                time: Timestamp::from_micros(r.try_get(1).map_err(map_err)?),
                record: r.try_get(2).map_err(map_err)?,
            })
        })
        .collect()
}

fn event_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<PatientEvent, StoreError> {
    Ok(PatientEvent {
        id: r.try_get(0).map_err(map_err)?,
        time: Timestamp::from_micros(r.try_get(1).map_err(map_err)?),
        record: r.try_get(2).map_err(map_err)?,
    })
}

pub(crate) async fn event(
    conn: &mut SqliteConnection,
    id: i64,
) -> Result<Option<PatientEvent>, StoreError> {
    let row = sqlx::query(q::EVENT)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.as_ref().map(event_from_row).transpose()
}

pub(crate) async fn events(
    conn: &mut SqliteConnection,
    since: Timestamp,
    until: Timestamp,
    after_id: i64,
    limit: u32,
) -> Result<Vec<PatientEvent>, StoreError> {
    let rows = sqlx::query(q::EVENTS)
        .bind(since.micros())
        .bind(until.micros())
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter().map(event_from_row).collect()
}
