//! The audit tables (SQL text shared in `haven_store::sql::audit`; same code as the SQLite
//! store's but for the driver types and the visibility horizon).

use haven_domain::Timestamp;
use haven_store::sql::Placeholders;
use haven_store::sql::audit as q;
use haven_store::{
    AuditEntry, AuditPos, ChainHead, ChainLink, LinkedRecord, PatientEvent, StoreError,
    StoredCheckpoint, UnsealedEvent,
};
use sqlx::{PgConnection, Row};

use crate::reads::{HORIZON_SQL, map_err, statement};

const PH: Placeholders = Placeholders::Numbered;

fn sql(text: &str) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(q::placeholders(text, PH)))
}

/// Many events: one insert from arrays for the events (in chunks), one for their patients. The
/// rows are inserted in array order (`ORDER BY o`), so the identity ids they take grow in that
/// order; the returned ids, sorted, belong to the entries in order.
pub(crate) async fn insert_many(
    conn: &mut PgConnection,
    entries: Vec<AuditEntry>,
) -> Result<(), StoreError> {
    for chunk in entries.chunks(1000) {
        let times: Vec<i64> = chunk.iter().map(|e| e.time.micros()).collect();
        let records: Vec<Vec<u8>> = chunk.iter().map(|e| e.record.clone()).collect();
        let mut ids: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO audit_event (time, record) \
             SELECT t, r FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS u(t, r, o) \
             ORDER BY o RETURNING id",
        )
        .bind(times)
        .bind(records)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        ids.sort_unstable();
        if ids.len() != chunk.len() {
            return Err(StoreError::Internal(
                "audit insert returned too few ids".into(),
            ));
        }
        let mut patients = Vec::new();
        let mut event_ids = Vec::new();
        let mut event_times = Vec::new();
        for (e, id) in chunk.iter().zip(&ids) {
            for p in &e.patients {
                patients.push(p.clone());
                event_ids.push(*id);
                event_times.push(e.time.micros());
            }
        }
        if !patients.is_empty() {
            sqlx::query(
                "INSERT INTO audit_patient (patient, event_id, time) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])",
            )
            .bind(patients)
            .bind(event_ids)
            .bind(event_times)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        }
    }
    Ok(())
}

pub(crate) async fn head(conn: &mut PgConnection) -> Result<Option<ChainHead>, StoreError> {
    let row = sqlx::query(q::head(true))
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

/// Parallel writers: only events below the visibility horizon are final (see
/// `reads::HORIZON_SQL`), and they are sealed in (txid, id) order, so an event that commits
/// late always lands after the sealer's position.
pub(crate) async fn unsealed(
    conn: &mut PgConnection,
    after: Option<AuditPos>,
    limit: u32,
) -> Result<Vec<UnsealedEvent>, StoreError> {
    let horizon: i64 = sqlx::query_scalar(HORIZON_SQL)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    let rows = statement(q::unsealed(after, Some(horizon), limit, PH))
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

pub(crate) async fn seal(conn: &mut PgConnection, links: Vec<ChainLink>) -> Result<(), StoreError> {
    for chunk in links.chunks(200) {
        statement(q::insert_links(chunk, PH))
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
    }
    Ok(())
}

pub(crate) async fn checkpoint(
    conn: &mut PgConnection,
    c: StoredCheckpoint,
) -> Result<(), StoreError> {
    sql(q::INSERT_CHECKPOINT)
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
    conn: &mut PgConnection,
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
    conn: &mut PgConnection,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<LinkedRecord>, StoreError> {
    let rows = sql(q::LINKS)
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
    conn: &mut PgConnection,
) -> Result<Vec<StoredCheckpoint>, StoreError> {
    let rows = sql(q::CHECKPOINTS)
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
    conn: &mut PgConnection,
    before: Timestamp,
) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q::placeholders(q::UNSEALED_BEFORE, PH)))
        .bind(before.micros())
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    u64::try_from(n).map_err(StoreError::internal)
}

pub(crate) async fn for_patient(
    conn: &mut PgConnection,
    patient: &str,
    since: Timestamp,
    until: Timestamp,
    after_id: i64,
    limit: u32,
) -> Result<Vec<PatientEvent>, StoreError> {
    let rows = sql(q::FOR_PATIENT)
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

fn event_from_row(r: &sqlx::postgres::PgRow) -> Result<PatientEvent, StoreError> {
    Ok(PatientEvent {
        id: r.try_get(0).map_err(map_err)?,
        time: Timestamp::from_micros(r.try_get(1).map_err(map_err)?),
        record: r.try_get(2).map_err(map_err)?,
    })
}

pub(crate) async fn event(
    conn: &mut PgConnection,
    id: i64,
) -> Result<Option<PatientEvent>, StoreError> {
    let row = sql(q::EVENT)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.as_ref().map(event_from_row).transpose()
}

pub(crate) async fn events(
    conn: &mut PgConnection,
    since: Timestamp,
    until: Timestamp,
    after_id: i64,
    limit: u32,
) -> Result<Vec<PatientEvent>, StoreError> {
    let rows = sql(q::EVENTS)
        .bind(since.micros())
        .bind(until.micros())
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter().map(event_from_row).collect()
}
