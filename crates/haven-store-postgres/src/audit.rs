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

/// Records per statement of [`insert_many`], and the PostgreSQL batcher's largest batch.
pub(crate) const AUDIT_BATCH: usize = 2_000;

/// Many events in one statement per [`AUDIT_BATCH`] (the arrays are single bound values, so no
/// parameter limit applies): the events take ids drawn from their identity sequence first, so
/// that their patients' rows can name them in the same statement. On its own (outside a
/// transaction) the statement is its own transaction: one round trip and one commit for a
/// whole batch of reads' records, all stored or none.
pub(crate) async fn insert_many(
    conn: &mut PgConnection,
    entries: Vec<AuditEntry>,
) -> Result<(), StoreError> {
    for chunk in entries.chunks(AUDIT_BATCH) {
        let times: Vec<i64> = chunk.iter().map(|e| e.time.micros()).collect();
        let records: Vec<Vec<u8>> = chunk.iter().map(|e| e.record.clone()).collect();
        let mut patients = Vec::new();
        let mut ordinals = Vec::new();
        for (o, e) in (1i64..).zip(chunk) {
            for p in e.distinct_patients() {
                patients.push(p.to_owned());
                ordinals.push(o);
            }
        }
        // `u` is materialized once (it calls a volatile function), so each event has one id,
        // used by its row and by its patients' rows: this statement is what keeps every
        // patient row naming an event of its own batch (the foreign key that checked it,
        // row by row, is gone: migration 0007). The sequence is looked up once per statement:
        // `OFFSET 0` keeps the planner from pulling the sub-select up into `nextval(...)`,
        // where it would run once per row (EXPLAIN VERBOSE shows either).
        sqlx::query(
            "WITH u AS MATERIALIZED ( \
                 SELECT nextval(s.seq) AS id, t, r, o \
                 FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS a(t, r, o), \
                      (SELECT pg_get_serial_sequence('audit_event', 'id')::regclass AS seq \
                       OFFSET 0) s \
             ), ev AS ( \
                 INSERT INTO audit_event (id, time, record) OVERRIDING SYSTEM VALUE \
                 SELECT id, t, r FROM u ORDER BY o \
             ) \
             INSERT INTO audit_patient (patient, event_id, time) \
             SELECT p.patient, u.id, u.t \
             FROM unnest($3::text[], $4::bigint[]) AS p(patient, o) JOIN u ON u.o = p.o",
        )
        .bind(times)
        .bind(records)
        .bind(patients)
        .bind(ordinals)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
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

/// Appends links with one statement whose text never changes: the links go as three arrays
/// (single bound values, so no parameter limit applies), in order. Built with one `VALUES` row
/// per link (`haven_store::sql::audit::insert_links`, which SQLite still uses), every batch size
/// was a statement of its own, and the sealer's batches seldom have the same size twice: each
/// round prepared a new statement on its connection, evicted another from the connection's
/// cache, and planned it. Measured with `pg_stat_statements` over one benchmark run of reads:
/// 72 texts, 294 plans in 581 calls, 12 µs of execution per link.
pub(crate) async fn seal(conn: &mut PgConnection, links: Vec<ChainLink>) -> Result<(), StoreError> {
    if links.is_empty() {
        return Ok(());
    }
    let mut seqs = Vec::with_capacity(links.len());
    let mut events = Vec::with_capacity(links.len());
    let mut hashes = Vec::with_capacity(links.len());
    for l in links {
        seqs.push(l.seq);
        events.push(l.event_id);
        hashes.push(l.hash);
    }
    sqlx::query(
        "INSERT INTO audit_chain (seq, event_id, hash) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
    )
    .bind(seqs)
    .bind(events)
    .bind(hashes)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
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
    // Planned for its range each time (sent unnamed): a generic plan would assume any range
    // selective and could read the whole trail through the time index, then sort it.
    let rows = sql(q::EVENTS)
        .persistent(false)
        .bind(since.micros())
        .bind(until.micros())
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    rows.iter().map(event_from_row).collect()
}
