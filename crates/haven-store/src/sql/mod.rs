//! SQL shared by the SQL stores: the history query and the decoding of version columns.
//!
//! Both stores run the same statements against the same schema; only the placeholder syntax
//! differs (`?` for SQLite, `$n` for PostgreSQL). Keeping the text here means a fix to history
//! reaches both backends at once. No driver is named: callers bind [`SqlArg`]s themselves.

use bytes::Bytes;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};

use crate::{
    ChangeKind, CurrentState, HistoryCursor, HistoryEntry, HistoryPage, HistoryQuery, HistoryScope,
    StoreError, StoredVersion,
};

pub mod audit;
pub mod records;
pub mod search;

/// A value to bind to a placeholder.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlArg {
    Text(String),
    /// Text or NULL.
    OptText(Option<String>),
    Int(i64),
    /// Integer or NULL.
    OptInt(Option<i64>),
    Float(f64),
    Blob(Vec<u8>),
    /// Bytes or NULL.
    OptBlob(Option<Vec<u8>>),
}

/// How a backend writes placeholders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholders {
    /// `?` (SQLite)
    Question,
    /// `$1`, `$2`, ... (PostgreSQL)
    Numbered,
}

/// A history query as SQL: fixed fragments only, every value a bound argument.
#[derive(Clone, Debug)]
pub struct HistorySql {
    pub sql: String,
    pub args: Vec<SqlArg>,
}

/// How a backend orders its history (see [`crate::HistoryPos`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryOrder {
    /// One writer commits in seq order (SQLite): order by `seq`; every position's `tx` is 0.
    Seq,
    /// Parallel writers (PostgreSQL): order by `(txid, seq)` and show only versions whose
    /// transaction is below `horizon`, the oldest transaction that was still running when the
    /// read began. Everything below it has finished, so no version can later appear there.
    TxSeq { horizon: i64 },
}

/// Builds the history query for `q`. Rows come back in the columns [`version_from_columns`]
/// expects plus `txid` and `seq`, newest first (or oldest first for an `After` cursor: see
/// [`history_page`]), one more than `q.count` to tell whether another page exists.
#[must_use]
pub fn history_sql(
    q: &HistoryQuery,
    placeholders: Placeholders,
    order: HistoryOrder,
) -> HistorySql {
    let txid = match order {
        HistoryOrder::Seq => "0",
        HistoryOrder::TxSeq { .. } => "v.txid",
    };
    let mut sql = format!(
        "SELECT {txid} AS txid, v.seq, v.resource_type, v.id, v.version, v.last_updated, \
         v.change_kind, v.body FROM resource_version v WHERE 1 = 1",
    );
    let mut args = Vec::new();
    match &q.scope {
        HistoryScope::System => {}
        HistoryScope::Type(t) => {
            sql.push_str(" AND v.resource_type = ?");
            args.push(SqlArg::Text(t.as_str().to_owned()));
        }
        HistoryScope::Instance(t, id) => {
            sql.push_str(" AND v.resource_type = ? AND v.id = ?");
            args.push(SqlArg::Text(t.as_str().to_owned()));
            args.push(SqlArg::Text(id.as_str().to_owned()));
        }
    }
    if let Some(since) = q.since {
        sql.push_str(" AND v.last_updated >= ?");
        args.push(SqlArg::Int(since.micros()));
    }
    if let Some(at) = q.at {
        // A version was current during [start, end) if it began before `end` and its
        // successor (if any) began after `start`.
        sql.push_str(
            " AND v.last_updated < ? AND NOT EXISTS (SELECT 1 FROM resource_version n \
             WHERE n.resource_type = v.resource_type AND n.id = v.id \
             AND n.version = v.version + 1 AND n.last_updated <= ?)",
        );
        args.push(SqlArg::Int(at.end.micros()));
        args.push(SqlArg::Int(at.start.micros()));
    }
    match order {
        HistoryOrder::Seq => match q.cursor {
            Some(HistoryCursor::Before(p)) => {
                sql.push_str(" AND v.seq < ? ORDER BY v.seq DESC LIMIT ?");
                args.push(SqlArg::Int(p.seq));
            }
            Some(HistoryCursor::After(p)) => {
                sql.push_str(" AND v.seq > ? ORDER BY v.seq ASC LIMIT ?");
                args.push(SqlArg::Int(p.seq));
            }
            None => sql.push_str(" ORDER BY v.seq DESC LIMIT ?"),
        },
        HistoryOrder::TxSeq { horizon } => {
            sql.push_str(" AND v.txid < ?");
            args.push(SqlArg::Int(horizon));
            // Row comparisons: PostgreSQL uses them as one range condition on the
            // (…, txid, seq) indexes.
            match q.cursor {
                Some(HistoryCursor::Before(p)) => {
                    sql.push_str(
                        " AND (v.txid, v.seq) < (?, ?) ORDER BY v.txid DESC, v.seq DESC LIMIT ?",
                    );
                    args.push(SqlArg::Int(p.tx));
                    args.push(SqlArg::Int(p.seq));
                }
                Some(HistoryCursor::After(p)) => {
                    sql.push_str(
                        " AND (v.txid, v.seq) > (?, ?) ORDER BY v.txid ASC, v.seq ASC LIMIT ?",
                    );
                    args.push(SqlArg::Int(p.tx));
                    args.push(SqlArg::Int(p.seq));
                }
                None => sql.push_str(" ORDER BY v.txid DESC, v.seq DESC LIMIT ?"),
            }
        }
    }
    args.push(SqlArg::Int(i64::from(q.count) + 1));
    if placeholders == Placeholders::Numbered {
        sql = number_placeholders(&sql);
    }
    HistorySql { sql, args }
}

pub(crate) fn number_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Reads the rows of [`history_sql`] as they stream in and makes the page. Reading stops at
/// the byte budget, so a history of large versions (Binary, big documents) cannot pull
/// gigabytes into memory for one request; the page then says more entries follow.
pub async fn collect_history<S>(q: &HistoryQuery, rows: S) -> Result<HistoryPage, StoreError>
where
    S: futures::Stream<Item = Result<HistoryEntry, StoreError>>,
{
    use futures::StreamExt as _;
    let mut rows = std::pin::pin!(rows);
    let mut entries = Vec::new();
    let mut bytes = 0usize;
    let mut cut_short = false;
    while let Some(entry) = rows.next().await {
        let entry = entry?;
        bytes += entry.version.body.as_ref().map_or(0, Bytes::len);
        entries.push(entry);
        if bytes > q.max_bytes && entries.len() <= q.count as usize {
            cut_short = true;
            break;
        }
    }
    Ok(history_page(q, entries, cut_short))
}

/// Turns the rows of [`history_sql`] (in the order the query returned them) into a page.
/// `cut_short`: the reader stopped early at the byte budget, so more entries follow.
#[must_use]
fn history_page(q: &HistoryQuery, mut rows: Vec<HistoryEntry>, cut_short: bool) -> HistoryPage {
    let more = cut_short || rows.len() > q.count as usize;
    rows.truncate(q.count as usize);
    if matches!(q.cursor, Some(HistoryCursor::After(_))) {
        rows.reverse();
    }
    let (has_older, has_newer) = match q.cursor {
        None => (more, false),
        Some(HistoryCursor::Before(_)) => (more, true),
        Some(HistoryCursor::After(_)) => (true, more),
    };
    HistoryPage {
        entries: rows,
        has_older,
        has_newer,
    }
}

fn version_number(version: i64) -> Result<VersionId, StoreError> {
    u64::try_from(version)
        .ok()
        .and_then(VersionId::from_u64)
        .ok_or_else(|| StoreError::Corrupt(format!("bad version {version}")))
}

/// Decodes the columns of a `resource_version` row.
pub fn version_from_columns(
    resource_type: &str,
    id: &str,
    version: i64,
    last_updated: i64,
    change_kind: i64,
    body: Option<Vec<u8>>,
) -> Result<StoredVersion, StoreError> {
    Ok(StoredVersion {
        resource_type: ResourceType::parse(resource_type)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown resource type {resource_type}")))?,
        id: ResourceId::parse(id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        version: version_number(version)?,
        last_updated: Timestamp::from_micros(last_updated),
        change: ChangeKind::from_code(change_kind)?,
        body: body.map(Bytes::from),
    })
}

/// Decodes the head columns (version, last_updated, change_kind) of a resource.
pub fn state_from_columns(
    version: i64,
    last_updated: i64,
    change_kind: i64,
) -> Result<CurrentState, StoreError> {
    Ok(CurrentState {
        version: version_number(version)?,
        last_updated: Timestamp::from_micros(last_updated),
        deleted: ChangeKind::from_code(change_kind)? == ChangeKind::Delete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        let q = HistoryQuery {
            scope: HistoryScope::Type(ResourceType::parse("Patient").unwrap()),
            since: Some(Timestamp::from_micros(5)),
            at: None,
            count: 10,
            cursor: Some(HistoryCursor::Before(crate::HistoryPos { tx: 7, seq: 99 })),
            max_bytes: 1 << 20,
        };
        let s = history_sql(
            &q,
            Placeholders::Numbered,
            HistoryOrder::TxSeq { horizon: 50 },
        );
        assert!(s.sql.contains("v.resource_type = $1"), "{}", s.sql);
        assert!(s.sql.contains("v.last_updated >= $2"));
        assert!(s.sql.contains("v.txid < $3"));
        assert!(s.sql.contains("(v.txid, v.seq) < ($4, $5)"));
        assert!(s.sql.ends_with("LIMIT $6"));
        assert!(!s.sql.contains('?'));
        assert_eq!(s.args.len(), 6);
        assert_eq!(s.args[2], SqlArg::Int(50));
        assert_eq!(s.args[5], SqlArg::Int(11));
        let s = history_sql(&q, Placeholders::Question, HistoryOrder::Seq);
        assert!(s.sql.contains("v.seq < ?"), "{}", s.sql);
        assert!(!s.sql.contains("v.txid"), "{}", s.sql);
        assert_eq!(s.sql.matches('?').count(), 4);
    }
}
