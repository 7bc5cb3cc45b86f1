//! SQL of the `identity_record` table, shared by both stores (placeholders aside). See
//! `crate::records`.
//!
//! Every put is one statement that checks and writes at once, and returns the new version only
//! if it wrote: no row back means the stored record did not match the expectation. Nothing is
//! read first and decided in Rust, so two units racing on one key cannot both pass the check,
//! whatever the isolation level: the database's own row locking decides the race.

use haven_domain::Timestamp;

use super::search::Statement;
use super::{Placeholders, SqlArg, number_placeholders};
use crate::StoreError;
use crate::records::{Expect, MAX_KEY_LEN, MAX_KIND_LEN, StoredRecord};

fn finish(sql: &str, args: Vec<SqlArg>, ph: Placeholders) -> Statement {
    let sql = match ph {
        Placeholders::Question => sql.to_owned(),
        Placeholders::Numbered => number_placeholders(sql),
    };
    Statement { sql, args }
}

fn kind_key(kind: &str, key: &str) -> [SqlArg; 2] {
    [SqlArg::Text(kind.to_owned()), SqlArg::Text(key.to_owned())]
}

/// Refuses a kind or key longer than the stores accept: a caller's bug, so an internal error.
/// The message names the kind, never the key (keys may be hashes of secrets).
pub fn check(kind: &str, key: &str) -> Result<(), StoreError> {
    if kind.len() > MAX_KIND_LEN {
        return Err(StoreError::Internal(format!(
            "record kind of {} bytes (at most {MAX_KIND_LEN})",
            kind.len()
        )));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::Internal(format!(
            "{kind} record key of {} bytes (at most {MAX_KEY_LEN})",
            key.len()
        )));
    }
    Ok(())
}

/// What a put reports when the stored record does not match its expectation.
#[must_use]
pub fn conflict(kind: &str) -> StoreError {
    StoreError::VersionConflict(format!("{kind} record"))
}

/// How a read inside a unit locks the record (PostgreSQL; SQLite has one writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowLock {
    /// No lock: a read outside any unit.
    None,
    /// Shared: no other unit may change or delete the record until this one ends, but many
    /// may hold it at once.
    Share,
    /// Exclusive: one unit at a time, after every unit that holds it shared has ended.
    Update,
}

/// The first key of the advisory locks that gate records (the two-integer form, a key space
/// of its own: `lock_criteria` and the sealer use single `bigint` keys). "HV".
pub const RECORD_GATE: i32 = 0x4856;

/// One record as (version, body, expires), locked as `lock` says.
///
/// Locked reads first take a transaction-scoped advisory lock on the record's name (shared or
/// exclusive), then the row (`FOR SHARE` or `FOR UPDATE`). The row lock alone would not be
/// fair: PostgreSQL grants `FOR SHARE` at once while only sharers hold the row, even to a unit
/// that comes after an exclusive one began to wait, so a steady stream of writers holding a
/// data key could keep an erasure or a re-wrap waiting until its statement times out. The lock
/// manager queues advisory locks in order: a sharer that comes after a waiting exclusive waits
/// behind it. The gate is taken even when the record does not exist yet, so an erasure of a
/// patient without a key still keeps out the writer that would create one. The `LATERAL` join
/// makes the gate the outer side: it is taken once, before the row is looked up.
#[must_use]
pub fn get(kind: &str, key: &str, lock: RowLock, ph: Placeholders) -> Statement {
    let locked = |gate: &str, rows: &str| {
        format!(
            "SELECT r.version, r.body, r.expires \
             FROM (SELECT {gate}({RECORD_GATE}, hashtext(? || '/' || ?))) g, \
             LATERAL (SELECT version, body, expires FROM identity_record \
                      WHERE kind = ? AND key = ? {rows}) r"
        )
    };
    let (sql, args): (String, Vec<SqlArg>) = match lock {
        RowLock::None => (
            "SELECT version, body, expires FROM identity_record WHERE kind = ? AND key = ?"
                .to_owned(),
            kind_key(kind, key).into(),
        ),
        RowLock::Share => (
            locked("pg_advisory_xact_lock_shared", "FOR SHARE"),
            [kind_key(kind, key), kind_key(kind, key)].concat(),
        ),
        RowLock::Update => (
            locked("pg_advisory_xact_lock", "FOR UPDATE"),
            [kind_key(kind, key), kind_key(kind, key)].concat(),
        ),
    };
    finish(&sql, args, ph)
}

/// Records of one kind as (key, version, body, expires), in key order after `after`.
#[must_use]
pub fn list(kind: &str, after: Option<&str>, limit: u32, ph: Placeholders) -> Statement {
    let mut args = vec![SqlArg::Text(kind.to_owned())];
    let sql = match after {
        Some(after) => {
            args.push(SqlArg::Text(after.to_owned()));
            "SELECT key, version, body, expires FROM identity_record \
             WHERE kind = ? AND key > ? ORDER BY key LIMIT ?"
        }
        None => {
            "SELECT key, version, body, expires FROM identity_record \
             WHERE kind = ? ORDER BY key LIMIT ?"
        }
    };
    args.push(SqlArg::Int(i64::from(limit)));
    finish(sql, args, ph)
}

/// The put for `expect`, returning the new version as its one row, or no row on a mismatch.
/// - `Absent`: insert at version 1 unless the key exists.
/// - `Version(v)`: update only the row still at `v`.
/// - `Any`: insert at version 1, or update whatever is there to its version + 1.
#[must_use]
pub fn put(
    kind: &str,
    key: &str,
    body: Vec<u8>,
    expires: Option<Timestamp>,
    expect: Expect,
    ph: Placeholders,
) -> Statement {
    let expires = SqlArg::OptInt(expires.map(Timestamp::micros));
    let [kind, key] = kind_key(kind, key);
    let (sql, args) = match expect {
        Expect::Absent => (
            "INSERT INTO identity_record (kind, key, version, body, expires) \
             VALUES (?, ?, 1, ?, ?) ON CONFLICT (kind, key) DO NOTHING RETURNING version",
            vec![kind, key, SqlArg::Blob(body), expires],
        ),
        Expect::Version(v) => (
            "UPDATE identity_record SET version = version + 1, body = ?, expires = ? \
             WHERE kind = ? AND key = ? AND version = ? RETURNING version",
            vec![SqlArg::Blob(body), expires, kind, key, SqlArg::Int(v)],
        ),
        Expect::Any => (
            "INSERT INTO identity_record (kind, key, version, body, expires) \
             VALUES (?, ?, 1, ?, ?) ON CONFLICT (kind, key) DO UPDATE \
             SET version = identity_record.version + 1, body = excluded.body, \
             expires = excluded.expires RETURNING version",
            vec![kind, key, SqlArg::Blob(body), expires],
        ),
    };
    finish(sql, args, ph)
}

/// Deletes one record; rows affected say whether it was there.
#[must_use]
pub fn delete(kind: &str, key: &str, ph: Placeholders) -> Statement {
    finish(
        "DELETE FROM identity_record WHERE kind = ? AND key = ?",
        kind_key(kind, key).into(),
        ph,
    )
}

/// Deletes up to `limit` records whose expiry is at or before `now`, oldest expiry first; rows
/// affected are the count. `skip_locked` (PostgreSQL): leave rows that a running unit holds
/// for a later purge instead of waiting for that unit.
#[must_use]
pub fn purge_expired(now: Timestamp, limit: u32, skip_locked: bool, ph: Placeholders) -> Statement {
    let sql = if skip_locked {
        "DELETE FROM identity_record WHERE (kind, key) IN (SELECT kind, key FROM identity_record \
         WHERE expires IS NOT NULL AND expires <= ? ORDER BY expires LIMIT ? \
         FOR UPDATE SKIP LOCKED)"
    } else {
        "DELETE FROM identity_record WHERE (kind, key) IN (SELECT kind, key FROM identity_record \
         WHERE expires IS NOT NULL AND expires <= ? ORDER BY expires LIMIT ?)"
    };
    finish(
        sql,
        vec![SqlArg::Int(now.micros()), SqlArg::Int(i64::from(limit))],
        ph,
    )
}

/// Decodes the (version, body, expires) columns of a record.
pub fn record_from_columns(
    version: i64,
    body: Vec<u8>,
    expires: Option<i64>,
) -> Result<StoredRecord, StoreError> {
    if version < 1 {
        return Err(StoreError::Corrupt(format!("record version {version}")));
    }
    Ok(StoredRecord {
        version,
        body,
        expires: expires.map(Timestamp::from_micros),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_match_arguments() {
        let at = Some(Timestamp::from_micros(7));
        for ph in [Placeholders::Question, Placeholders::Numbered] {
            let mut all = vec![
                get("k", "x", RowLock::None, ph),
                get("k", "x", RowLock::Share, ph),
                get("k", "x", RowLock::Update, ph),
                list("k", None, 10, ph),
                list("k", Some("a"), 10, ph),
                delete("k", "x", ph),
                purge_expired(Timestamp::from_micros(1), 5, false, ph),
                purge_expired(Timestamp::from_micros(1), 5, true, ph),
            ];
            for expect in [Expect::Absent, Expect::Version(3), Expect::Any] {
                all.push(put("k", "x", vec![1], at, expect, ph));
            }
            for s in all {
                let marks = match ph {
                    Placeholders::Question => s.sql.matches('?').count(),
                    Placeholders::Numbered => s.sql.matches('$').count(),
                };
                assert_eq!(marks, s.args.len(), "{}", s.sql);
            }
        }
        let s = put(
            "k",
            "x",
            vec![1],
            None,
            Expect::Version(3),
            Placeholders::Numbered,
        );
        assert!(s.sql.contains("version = $5"), "{}", s.sql);
        assert_eq!(s.args[1], SqlArg::OptInt(None));
        assert_eq!(s.args[4], SqlArg::Int(3));
    }

    #[test]
    fn lengths_are_checked_and_the_key_is_never_named() {
        assert!(check(&"k".repeat(MAX_KIND_LEN), &"x".repeat(MAX_KEY_LEN)).is_ok());
        assert!(check(&"k".repeat(MAX_KIND_LEN + 1), "x").is_err());
        let secret = "s".repeat(MAX_KEY_LEN + 1);
        let err = check("session", &secret).unwrap_err().to_string();
        assert!(err.contains("session") && !err.contains(&secret), "{err}");
        assert_eq!(
            conflict("code").to_string(),
            "version conflict on code record"
        );
    }
}
