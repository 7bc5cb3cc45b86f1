//! SQL of the audit tables, shared by both stores (placeholders aside). See `crate::audit`.

use super::search::Statement;
use super::{Placeholders, SqlArg, number_placeholders};
use crate::{AuditPos, ChainLink};

fn finish(sql: String, args: Vec<SqlArg>, ph: Placeholders) -> Statement {
    let sql = match ph {
        Placeholders::Question => sql,
        Placeholders::Numbered => number_placeholders(&sql),
    };
    Statement { sql, args }
}

/// The newest link with its event's position (`txid` is 0 where the store has none).
#[must_use]
pub fn head(with_txid: bool) -> &'static str {
    if with_txid {
        "SELECT c.seq, c.hash, e.txid, e.id FROM audit_chain c JOIN audit_event e \
         ON e.id = c.event_id ORDER BY c.seq DESC LIMIT 1"
    } else {
        "SELECT c.seq, c.hash, 0 AS txid, e.id FROM audit_chain c JOIN audit_event e \
         ON e.id = c.event_id ORDER BY c.seq DESC LIMIT 1"
    }
}

/// Events after `after` in sealing order. `horizon`: only events of transactions below it
/// (PostgreSQL); `None` for a store with one writer, which orders by id alone.
#[must_use]
pub fn unsealed(
    after: Option<AuditPos>,
    horizon: Option<i64>,
    limit: u32,
    ph: Placeholders,
) -> Statement {
    let after = after.unwrap_or(AuditPos { tx: 0, id: 0 });
    let (sql, args) = match horizon {
        None => (
            "SELECT 0 AS txid, id, record FROM audit_event WHERE id > ? ORDER BY id LIMIT ?"
                .to_owned(),
            vec![SqlArg::Int(after.id), SqlArg::Int(i64::from(limit))],
        ),
        Some(h) => (
            "SELECT txid, id, record FROM audit_event WHERE txid < ? AND (txid, id) > (?, ?) \
             ORDER BY txid, id LIMIT ?"
                .to_owned(),
            vec![
                SqlArg::Int(h),
                SqlArg::Int(after.tx),
                SqlArg::Int(after.id),
                SqlArg::Int(i64::from(limit)),
            ],
        ),
    };
    finish(sql, args, ph)
}

/// Appends links in one statement, a `VALUES` row each: SQLite's sealer. (PostgreSQL binds the
/// links as arrays instead, so that the text does not change with their number:
/// `haven-store-postgres` `audit::seal`.)
#[must_use]
pub fn insert_links(links: &[ChainLink], ph: Placeholders) -> Statement {
    let mut sql = String::from("INSERT INTO audit_chain (seq, event_id, hash) VALUES ");
    let mut args = Vec::with_capacity(links.len() * 3);
    for (i, l) in links.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?)");
        args.extend([
            SqlArg::Int(l.seq),
            SqlArg::Int(l.event_id),
            SqlArg::Blob(l.hash.clone()),
        ]);
    }
    finish(sql, args, ph)
}

pub const INSERT_CHECKPOINT: &str = "INSERT INTO audit_checkpoint (seq, hash, time, key_id, signature) \
     VALUES (?, ?, ?, ?, ?)";

/// Links after a seq with their records (a missing event row reads as NULL).
pub const LINKS: &str = "SELECT c.seq, c.event_id, e.record, c.hash FROM audit_chain c \
     LEFT JOIN audit_event e ON e.id = c.event_id WHERE c.seq > ? ORDER BY c.seq LIMIT ?";

pub const LAST_CHECKPOINT: &str =
    "SELECT seq, time FROM audit_checkpoint ORDER BY seq DESC LIMIT 1";

pub const CHECKPOINTS: &str =
    "SELECT seq, hash, time, key_id, signature FROM audit_checkpoint ORDER BY seq";

pub const UNSEALED_BEFORE: &str = "SELECT count(*) FROM audit_event e WHERE e.time < ? \
     AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id)";

pub const FOR_PATIENT: &str = "SELECT e.id, e.time, e.record FROM audit_patient p \
     JOIN audit_event e ON e.id = p.event_id WHERE p.patient = ? AND p.time >= ? \
     AND p.time < ? AND p.event_id > ? ORDER BY p.event_id LIMIT ?";

pub const EVENT: &str = "SELECT id, time, record FROM audit_event WHERE id = ?";

/// Events in a time range in id order (the AuditEvent view's scan).
pub const EVENTS: &str = "SELECT id, time, record FROM audit_event WHERE time >= ? AND time < ? \
     AND id > ? ORDER BY id LIMIT ?";

/// `sql` with `$n` placeholders where the backend needs them.
#[must_use]
pub fn placeholders(sql: &str, ph: Placeholders) -> String {
    match ph {
        Placeholders::Question => sql.to_owned(),
        Placeholders::Numbered => number_placeholders(sql),
    }
}
