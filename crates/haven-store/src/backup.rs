//! Backups: every table that holds data, read in one consistent snapshot, as rows of typed
//! values; and the reverse, writing such rows into a fresh database. The format on disk (files,
//! hashes, the signed manifest) is the binary's business; this module fixes *what* is copied and
//! how rows go back, once for both stores.
//!
//! What is copied, and what is not:
//! - resource versions and heads, the audit trail, identity records and maintenance settings;
//! - **not** the search index: it is derived from the resources and rebuilt after a restore
//!   (`haven reindex`), so a backup is smaller and a restore into a newer Haven gets an index
//!   built with that Haven's search definitions;
//! - the audit trail goes out in chain order (each link with its record), so a backup can be
//!   verified in one pass without holding records in memory, and events not yet sealed go
//!   separately: a restore gives them fresh ids after the chain's events, so the restored
//!   instance's sealer picks them up in order on both stores.
//!
//! A restore runs in one transaction: interrupted, it leaves nothing behind and can simply be
//! run again.

use async_trait::async_trait;

use crate::StoreError;
use crate::sql::{Placeholders, SqlArg, number_placeholders};

/// The type of a column as the backup carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColKind {
    Int,
    OptInt,
    Text,
    OptText,
    Blob,
    OptBlob,
}

/// One file of a backup: its name, its columns and the query that reads it.
#[derive(Debug)]
pub struct TableSpec {
    pub name: &'static str,
    pub columns: &'static [(&'static str, ColKind)],
    /// Reads the rows in a stable order (shared by both stores).
    pub select: &'static str,
}

impl TableSpec {
    #[must_use]
    pub fn kinds(&self) -> Vec<ColKind> {
        self.columns.iter().map(|(_, k)| *k).collect()
    }
}

use ColKind::{Blob, Int, OptBlob, OptInt, Text};

pub const RESOURCE_VERSION: TableSpec = TableSpec {
    name: "resource_version",
    columns: &[
        ("seq", Int),
        ("resource_type", Text),
        ("id", Text),
        ("version", Int),
        ("last_updated", Int),
        ("change_kind", Int),
        ("body", OptBlob),
    ],
    select: "SELECT seq, resource_type, id, version, last_updated, \
             CAST(change_kind AS BIGINT), body FROM resource_version ORDER BY seq",
};

pub const RESOURCE: TableSpec = TableSpec {
    name: "resource",
    columns: &[
        ("resource_type", Text),
        ("id", Text),
        ("version", Int),
        ("seq", Int),
        ("deleted", Int),
    ],
    select: "SELECT resource_type, id, version, seq, CAST(deleted AS BIGINT) FROM resource \
             ORDER BY rid",
};

pub const AUDIT_CHECKPOINT: TableSpec = TableSpec {
    name: "audit_checkpoint",
    columns: &[
        ("seq", Int),
        ("hash", Blob),
        ("time", Int),
        ("key_id", Text),
        ("signature", Blob),
    ],
    select: "SELECT seq, hash, time, key_id, signature FROM audit_checkpoint ORDER BY seq",
};

/// Chain links in order, each with its event. A link whose event row is gone is left out here;
/// the gap it leaves makes the backup fail verification, which is the point.
pub const AUDIT_SEALED: TableSpec = TableSpec {
    name: "audit_sealed",
    columns: &[
        ("seq", Int),
        ("event_id", Int),
        ("hash", Blob),
        ("time", Int),
        ("record", Blob),
    ],
    select: "SELECT c.seq, c.event_id, c.hash, e.time, e.record FROM audit_chain c \
             JOIN audit_event e ON e.id = c.event_id ORDER BY c.seq",
};

/// Events no link seals yet (written moments before the snapshot).
pub const AUDIT_UNSEALED: TableSpec = TableSpec {
    name: "audit_unsealed",
    columns: &[("id", Int), ("time", Int), ("record", Blob)],
    select: "SELECT e.id, e.time, e.record FROM audit_event e WHERE NOT EXISTS \
             (SELECT 1 FROM audit_chain c WHERE c.event_id = e.id) ORDER BY e.id",
};

pub const AUDIT_PATIENT: TableSpec = TableSpec {
    name: "audit_patient",
    columns: &[("patient", Text), ("event_id", Int), ("time", Int)],
    select: "SELECT patient, event_id, time FROM audit_patient ORDER BY event_id, patient",
};

pub const IDENTITY_RECORD: TableSpec = TableSpec {
    name: "identity_record",
    columns: &[
        ("kind", Text),
        ("key", Text),
        ("version", Int),
        ("body", Blob),
        ("expires", OptInt),
    ],
    select: "SELECT kind, key, version, body, expires FROM identity_record ORDER BY kind, key",
};

/// Maintenance settings, without the search index's own (`search.*`: the index is rebuilt)
/// and the time of the last backup (a restored instance has made none yet).
pub const STORE_META: TableSpec = TableSpec {
    name: "store_meta",
    columns: &[("name", Text), ("value", Text)],
    select: "SELECT name, value FROM store_meta WHERE name NOT LIKE 'search.%' \
             AND name <> 'backup.last_success' ORDER BY name",
};

/// Every table of a backup, in the order a restore writes them (parents before children).
pub const TABLES: [&TableSpec; 8] = [
    &RESOURCE_VERSION,
    &RESOURCE,
    &AUDIT_CHECKPOINT,
    &AUDIT_SEALED,
    &AUDIT_UNSEALED,
    &AUDIT_PATIENT,
    &IDENTITY_RECORD,
    &STORE_META,
];

/// Where exported rows go (the binary writes them to files).
pub trait BackupSink: Send {
    fn begin(&mut self, table: &'static TableSpec) -> Result<(), StoreError>;
    /// One row, values in the table's column order.
    fn row(&mut self, row: Vec<SqlArg>) -> Result<(), StoreError>;
    fn end(&mut self, table: &'static TableSpec) -> Result<(), StoreError>;
}

/// Where restored rows come from, table by table in [`TABLES`] order.
pub trait RestoreSource: Send {
    /// The next row of `table`, `None` when the table is done.
    fn next_row(&mut self, table: &'static TableSpec) -> Result<Option<Vec<SqlArg>>, StoreError>;
}

/// A connection inside the export's snapshot transaction.
#[async_trait]
pub trait ExportConn: Send {
    /// Runs `sql` and hands each row, decoded by `kinds`, to `row`.
    async fn stream(
        &mut self,
        sql: &str,
        kinds: &[ColKind],
        row: &mut (dyn FnMut(Vec<SqlArg>) -> Result<(), StoreError> + Send),
    ) -> Result<(), StoreError>;
}

/// A connection inside the restore's transaction.
#[async_trait]
pub trait RestoreConn: Send {
    async fn execute(&mut self, sql: String, args: Vec<SqlArg>) -> Result<(), StoreError>;
    /// Runs a statement that returns one integer (a count, a `RETURNING id`).
    async fn scalar(&mut self, sql: String, args: Vec<SqlArg>) -> Result<i64, StoreError>;
}

/// How a store's SQL differs for a restore.
#[derive(Clone, Copy, Debug)]
pub struct Dialect {
    pub placeholders: Placeholders,
    /// Written between the column list and `VALUES` when ids are given explicitly
    /// (PostgreSQL's identity columns need `OVERRIDING SYSTEM VALUE`).
    pub explicit_ids: &'static str,
    /// Run once the rows with explicit ids are in, before rows that get generated ids
    /// (PostgreSQL: move the identity sequences past the restored ids).
    pub after_explicit_ids: &'static [&'static str],
}

/// Reads every table of [`TABLES`] through `conn` (which the store has put in one snapshot).
pub async fn export(
    conn: &mut dyn ExportConn,
    sink: &mut dyn BackupSink,
) -> Result<(), StoreError> {
    for table in TABLES {
        sink.begin(table)?;
        let kinds = table.kinds();
        conn.stream(table.select, &kinds, &mut |row| sink.row(row))
            .await?;
        sink.end(table)?;
    }
    Ok(())
}

/// Rows with data in them: a restore goes only into a database that has none.
pub const COUNT_DATA: &str = "SELECT (SELECT count(*) FROM resource_version) \
     + (SELECT count(*) FROM audit_event) + (SELECT count(*) FROM identity_record)";

/// Most rows, and most bytes of values, per INSERT statement.
const MAX_ROWS: usize = 500;
const MAX_BYTES: usize = 4 << 20;

/// A multi-row INSERT being filled.
struct Insert {
    head: String,
    width: usize,
    rows: usize,
    bytes: usize,
    args: Vec<SqlArg>,
}

impl Insert {
    fn new(table: &str, columns: &[&str], modifier: &str) -> Self {
        let head = format!(
            "INSERT INTO {table} ({}){}{} VALUES ",
            columns.join(", "),
            if modifier.is_empty() { "" } else { " " },
            modifier
        );
        Self {
            head,
            width: columns.len(),
            rows: 0,
            bytes: 0,
            args: Vec::new(),
        }
    }

    fn push(&mut self, values: Vec<SqlArg>) {
        self.bytes += values.iter().map(arg_len).sum::<usize>();
        self.rows += 1;
        self.args.extend(values);
    }

    fn full(&self) -> bool {
        self.rows >= MAX_ROWS || self.bytes >= MAX_BYTES
    }

    async fn flush(
        &mut self,
        conn: &mut dyn RestoreConn,
        ph: Placeholders,
    ) -> Result<(), StoreError> {
        if self.rows == 0 {
            return Ok(());
        }
        let one = format!("({})", vec!["?"; self.width].join(", "));
        let mut sql = self.head.clone();
        for i in 0..self.rows {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&one);
        }
        let sql = match ph {
            Placeholders::Question => sql,
            Placeholders::Numbered => number_placeholders(&sql),
        };
        let args = std::mem::take(&mut self.args);
        self.rows = 0;
        self.bytes = 0;
        conn.execute(sql, args).await
    }
}

fn arg_len(a: &SqlArg) -> usize {
    match a {
        SqlArg::Text(s) => s.len(),
        SqlArg::OptText(s) => s.as_ref().map_or(0, String::len),
        SqlArg::Blob(b) => b.len(),
        SqlArg::OptBlob(b) => b.as_ref().map_or(0, Vec::len),
        SqlArg::Int(_) | SqlArg::OptInt(_) | SqlArg::Float(_) => 8,
    }
}

/// A row as an array of its columns.
fn columns<const N: usize>(row: Vec<SqlArg>, table: &TableSpec) -> Result<[SqlArg; N], StoreError> {
    let width = row.len();
    row.try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "backup table {}: a row has {width} values, not {N}",
            table.name
        ))
    })
}

fn int(row: &[SqlArg], at: usize, table: &str) -> Result<i64, StoreError> {
    match row.get(at) {
        Some(SqlArg::Int(i)) => Ok(*i),
        _ => Err(StoreError::Corrupt(format!(
            "backup table {table}: column {at} is not an integer"
        ))),
    }
}

/// Row counts a restore wrote, per backup table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreCounts {
    pub tables: Vec<(&'static str, u64)>,
}

/// Patient rows whose event is not in `audit_event`.
const ORPHAN_PATIENT_ROWS: &str = "SELECT count(*) FROM audit_patient p \
     WHERE NOT EXISTS (SELECT 1 FROM audit_event e WHERE e.id = p.event_id)";

/// Writes every table from `source` through `conn` (which the store has put in one
/// transaction on an empty database), in [`TABLES`] order.
pub async fn restore(
    conn: &mut dyn RestoreConn,
    source: &mut dyn RestoreSource,
    dialect: Dialect,
) -> Result<RestoreCounts, StoreError> {
    let ph = dialect.placeholders;
    let found = conn.scalar(COUNT_DATA.to_owned(), Vec::new()).await?;
    if found > 0 {
        return Err(StoreError::Internal(format!(
            "the target database already holds data ({found} rows of resources, audit events \
             and accounts); restore into a fresh instance"
        )));
    }
    let mut counts = RestoreCounts::default();
    // Old ids of unsealed events -> the ids they get here.
    let mut renumbered: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    for table in TABLES {
        let mut n = 0u64;
        let check = |row: &Vec<SqlArg>| -> Result<(), StoreError> {
            if row.len() == table.columns.len() {
                Ok(())
            } else {
                Err(StoreError::Corrupt(format!(
                    "backup table {}: a row has {} values, not {}",
                    table.name,
                    row.len(),
                    table.columns.len()
                )))
            }
        };
        if table.name == AUDIT_SEALED.name {
            let mut events = Insert::new(
                "audit_event",
                &["id", "time", "record"],
                dialect.explicit_ids,
            );
            let mut links = Insert::new("audit_chain", &["seq", "event_id", "hash"], "");
            while let Some(row) = source.next_row(table)? {
                check(&row)?;
                let [seq, event_id, hash, time, record] = columns(row, table)?;
                events.push(vec![event_id.clone(), time, record]);
                links.push(vec![seq, event_id, hash]);
                n += 1;
                if events.full() || links.full() {
                    events.flush(conn, ph).await?;
                    links.flush(conn, ph).await?;
                }
            }
            events.flush(conn, ph).await?;
            links.flush(conn, ph).await?;
            for sql in dialect.after_explicit_ids {
                conn.execute((*sql).to_owned(), Vec::new()).await?;
            }
        } else if table.name == AUDIT_UNSEALED.name {
            let sql = match ph {
                Placeholders::Question => {
                    "INSERT INTO audit_event (time, record) VALUES (?, ?) RETURNING id".to_owned()
                }
                Placeholders::Numbered => {
                    "INSERT INTO audit_event (time, record) VALUES ($1, $2) RETURNING id".to_owned()
                }
            };
            while let Some(row) = source.next_row(table)? {
                check(&row)?;
                let old = int(&row, 0, table.name)?;
                let [_, time, record] = columns(row, table)?;
                let new = conn.scalar(sql.clone(), vec![time, record]).await?;
                renumbered.insert(old, new);
                n += 1;
            }
        } else {
            let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
            let modifier = if table.name == RESOURCE_VERSION.name {
                dialect.explicit_ids
            } else {
                ""
            };
            let mut insert = Insert::new(table.name, &columns, modifier);
            while let Some(mut row) = source.next_row(table)? {
                check(&row)?;
                if table.name == AUDIT_PATIENT.name {
                    let old = int(&row, 1, table.name)?;
                    if let Some(new) = renumbered.get(&old) {
                        row[1] = SqlArg::Int(*new);
                    }
                }
                insert.push(row);
                n += 1;
                if insert.full() {
                    insert.flush(conn, ph).await?;
                }
            }
            insert.flush(conn, ph).await?;
            if table.name == AUDIT_PATIENT.name {
                // Each row must name a restored event. SQLite's foreign key refuses an orphan
                // on insert; PostgreSQL has no key there (its migration 0007), so the check is
                // made here, for both: an orphan's id could later be taken by a new event,
                // which would then be reported as a disclosure of that row's patient.
                let orphans = conn
                    .scalar(ORPHAN_PATIENT_ROWS.to_owned(), Vec::new())
                    .await?;
                if orphans > 0 {
                    return Err(StoreError::Corrupt(format!(
                        "backup table audit_patient: {orphans} rows name audit events the                          backup does not hold; the backup is damaged or was altered, restore                          from another one"
                    )));
                }
            }
            if table.name == RESOURCE_VERSION.name {
                for sql in dialect.after_explicit_ids {
                    conn.execute((*sql).to_owned(), Vec::new()).await?;
                }
            }
        }
        counts.tables.push((table.name, n));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_in_restore_order_and_unique() {
        let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(at("resource_version") < at("resource"));
        assert!(at("audit_sealed") < at("audit_unsealed"));
        assert!(at("audit_unsealed") < at("audit_patient"));
    }

    #[test]
    fn every_select_names_as_many_columns_as_the_spec() {
        for t in TABLES {
            let list = t.select.split(" FROM ").next().unwrap();
            let n = list.matches(',').count() + 1;
            assert_eq!(n, t.columns.len(), "{}", t.name);
        }
    }

    #[test]
    fn inserts_are_chunked_by_rows_and_bytes() {
        let mut i = Insert::new("t", &["a"], "");
        for _ in 0..MAX_ROWS - 1 {
            i.push(vec![SqlArg::Int(1)]);
        }
        assert!(!i.full());
        i.push(vec![SqlArg::Int(1)]);
        assert!(i.full());
        let mut j = Insert::new("t", &["a"], "OVERRIDING SYSTEM VALUE");
        assert!(j.head.contains("(a) OVERRIDING SYSTEM VALUE VALUES"));
        j.push(vec![SqlArg::Blob(vec![0; MAX_BYTES])]);
        assert!(j.full());
    }
}
