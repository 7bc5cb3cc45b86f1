//! SQL for the search index, shared by both stores: index row maintenance, searches,
//! counts, `_include`/`_revinclude` and scans.
//!
//! Every table and column name comes from the fixed enums of [`crate::search`]; every value
//! is a bound argument. Statements are written with `?` and numbered for PostgreSQL at the
//! end, like the history query.
//!
//! **Query shape.** Conditions read only index tables, never resource bodies. The most
//! selective condition *drives*: a membership test of the resource's `rid` in a sub-select
//! through its `(param, value...)` index. Every other condition *probes* each candidate with
//! a correlated `EXISTS` through the `(rid, param)` index (see `Mode` and `Rank`):
//!
//! ```sql
//! r.rid IN (SELECT i1.rid FROM search_reference i1 WHERE i1.param = ? AND (...))
//!   AND EXISTS (SELECT 1 FROM search_token i2 WHERE i2.rid = r.rid AND +i2.param = ? AND (...))
//! ```
//!
//! **Sorting and paging.** Sort keys are correlated `MIN`/`MAX` sub-selects of the key
//! column, missing values last, ties broken by `rid`. Pages continue from a position (the
//! last entry's keys and rid) rather than an offset, so resources written while a client
//! pages do not make it skip or repeat the ones that did not change.

use crate::StoreError;
use crate::search::{
    Col, Condition, Found, IndexCell, IndexRow, ParamKey, Pred, Related, Scalar, SearchCursor,
    SearchPage, SearchQuery, SortValue, Table,
};
use crate::sql::{Placeholders, SqlArg};
use haven_domain::ResourceType;

/// A statement and its arguments.
#[derive(Clone, Debug)]
pub struct Statement {
    pub sql: String,
    pub args: Vec<SqlArg>,
}

/// Rows per multi-row INSERT: stays well under SQLite's bound-parameter limit.
const ROWS_PER_INSERT: usize = 200;

/// SQL scripts that delete every index row of each of `rids`: one `DELETE` per index table,
/// several statements in one script, so a store sends them in one round trip (a simple query
/// on PostgreSQL, one call into the connection's thread on SQLite) instead of one per table.
/// The rids are integers the store itself assigned, written as literals: nothing from a client
/// reaches this text.
#[must_use]
pub fn delete_index_scripts(rids: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in rids.chunks(ROWS_PER_INSERT) {
        let list = chunk
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut script = String::new();
        for t in Table::ALL {
            script.push_str(&format!(
                "DELETE FROM {} WHERE rid IN ({list});\n",
                t.name()
            ));
        }
        out.push(script);
    }
    out
}

/// Multi-row INSERTs of `rows` for `rid`, grouped by table.
#[must_use]
pub fn insert_index(rid: i64, rows: &[IndexRow], ph: Placeholders) -> Vec<Statement> {
    let rows: Vec<(i64, &IndexRow)> = rows.iter().map(|r| (rid, r)).collect();
    insert_index_rows(&rows, ph)
}

/// Multi-row INSERTs of rows of any resources, grouped by table: a unit of work that writes
/// a hundred resources inserts their index in a handful of statements.
#[must_use]
pub fn insert_index_rows(rows: &[(i64, &IndexRow)], ph: Placeholders) -> Vec<Statement> {
    let mut out = Vec::new();
    for table in Table::ALL {
        let of_table: Vec<&(i64, &IndexRow)> = rows
            .iter()
            .filter(|(_, r)| r.cell.table() == table)
            .collect();
        for chunk in of_table.chunks(ROWS_PER_INSERT) {
            let cols = table.columns();
            let mut sql = format!("INSERT INTO {} (rid, param, grp", table.name());
            for c in cols {
                sql.push_str(", ");
                sql.push_str(c.name());
            }
            sql.push_str(") VALUES ");
            let one = format!("(?, ?, ?{})", ", ?".repeat(cols.len()));
            let mut args = Vec::with_capacity(chunk.len() * (3 + cols.len()));
            for (i, (rid, row)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&one);
                args.push(SqlArg::Int(*rid));
                args.push(SqlArg::Int(i64::from(row.param.0)));
                args.push(SqlArg::Int(i64::from(row.grp)));
                push_cell(&row.cell, &mut args);
            }
            out.push(finish(sql, args, ph));
        }
    }
    out
}

/// The writes [`PendingIndex::take`] produces, in the order to run them.
#[derive(Debug)]
pub struct IndexWrites {
    /// Multi-statement scripts without parameters (`sqlx::raw_sql`).
    pub delete_scripts: Vec<String>,
    /// Ordinary statements with bound arguments.
    pub inserts: Vec<Statement>,
}

/// Index changes of a unit of work, held until the unit ends (or searches) and then written
/// in a few multi-row statements instead of several per resource.
#[derive(Debug, Default)]
pub struct PendingIndex {
    /// (rid, whether the resource may already have rows, its new rows)
    entries: Vec<(i64, bool, Vec<IndexRow>)>,
    at: std::collections::HashMap<i64, usize>,
}

impl PendingIndex {
    /// Records that `rid`'s rows become `rows`; a later call for the same rid wins.
    pub fn replace(&mut self, rid: i64, existed: bool, rows: Vec<IndexRow>) {
        match self.at.get(&rid) {
            Some(&i) => {
                self.entries[i].1 |= existed;
                self.entries[i].2 = rows;
            }
            None => {
                self.at.insert(rid, self.entries.len());
                self.entries.push((rid, existed, rows));
            }
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What applies every recorded change, emptying the buffer: first the deletion scripts
    /// (run them with the driver's multi-statement call), then the inserts.
    pub fn take(&mut self, ph: Placeholders) -> IndexWrites {
        let entries = std::mem::take(&mut self.entries);
        self.at.clear();
        let existed: Vec<i64> = entries.iter().filter(|e| e.1).map(|e| e.0).collect();
        let rows: Vec<(i64, &IndexRow)> = entries
            .iter()
            .flat_map(|(rid, _, rows)| rows.iter().map(move |r| (*rid, r)))
            .collect();
        IndexWrites {
            delete_scripts: delete_index_scripts(&existed),
            inserts: insert_index_rows(&rows, ph),
        }
    }
}

fn push_cell(cell: &IndexCell, args: &mut Vec<SqlArg>) {
    let text = |s: &Option<String>| SqlArg::OptText(s.clone());
    match cell {
        IndexCell::String { normalized, exact } => {
            args.push(SqlArg::Text(normalized.clone()));
            args.push(SqlArg::Text(exact.clone()));
        }
        IndexCell::Token {
            system,
            code,
            text: t,
            type_system,
            type_code,
        } => {
            args.extend([
                text(system),
                text(code),
                text(t),
                text(type_system),
                text(type_code),
            ]);
        }
        IndexCell::Reference {
            target_type,
            target_id,
            version,
            url,
            ident_system,
            ident_value,
        } => args.extend([
            text(target_type),
            text(target_id),
            text(version),
            text(url),
            text(ident_system),
            text(ident_value),
        ]),
        IndexCell::Date { start, end } => {
            args.push(SqlArg::Int(*start));
            args.push(SqlArg::Int(*end));
        }
        IndexCell::Number {
            lower,
            upper,
            system,
            code,
            unit,
        } => {
            args.push(SqlArg::Float(*lower));
            args.push(SqlArg::Float(*upper));
            args.push(text(system));
            args.push(text(code));
            args.push(text(unit));
        }
        IndexCell::Uri { value } => args.push(SqlArg::Text(value.clone())),
    }
}

/// The columns a row query returns, after `rid` and the sort keys: what
/// [`super::version_from_columns`] decodes.
const VERSION_COLUMNS: &str =
    "v.resource_type, v.id, v.version, v.last_updated, v.change_kind, v.body";

/// The kind of value a sort key column holds, to decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Text,
    Int,
    Float,
}

impl Table {
    /// What [`Table::sort_column`] holds.
    #[must_use]
    pub fn sort_kind(self) -> KeyKind {
        match self {
            Table::Date => KeyKind::Int,
            Table::Number => KeyKind::Float,
            _ => KeyKind::Text,
        }
    }
}

/// The page query of a search. Rows: `rid`, then one column `k0`, `k1`, ... per sort key,
/// then the version columns; at most `limit + 1` of them (the extra one tells whether
/// another page exists), in the page's order, or reversed for a backward cursor.
#[must_use]
pub fn search_page(q: &SearchQuery, ph: Placeholders) -> Statement {
    let mut b = Builder::new(ph);
    let backward = q.cursor.as_ref().is_some_and(|c| c.backward);
    let mut sql = String::from("SELECT q.rid");
    for i in 0..q.sort.len() {
        sql.push_str(&format!(", q.k{i}"));
    }
    sql.push_str(&format!(", {VERSION_COLUMNS} FROM (SELECT r.rid, r.seq"));
    for (i, key) in q.sort.iter().enumerate() {
        let agg = if key.descending { "MAX" } else { "MIN" };
        let col = key.table.sort_column().name();
        let params = b.probe_params("s", &key.params);
        sql.push_str(&format!(
            ", (SELECT {agg}(s.{col}) FROM {} s WHERE s.rid = r.rid AND {params}) AS k{i}",
            key.table.name()
        ));
    }
    sql.push_str(" FROM resource r WHERE ");
    let filter = b.filter("r", q);
    sql.push_str(&filter);
    sql.push_str(") q JOIN resource_version v ON v.seq = q.seq");
    if let Some(cursor) = &q.cursor {
        sql.push_str(" WHERE ");
        let keyset = b.keyset(q, cursor);
        sql.push_str(&keyset);
    }
    sql.push_str(" ORDER BY ");
    let mut order = Vec::new();
    for (i, key) in q.sort.iter().enumerate() {
        // Missing values last in both directions; a backward page reads the order reversed.
        let (nulls, dir) = match (key.descending, backward) {
            (false, false) => ("", "ASC"),
            (true, false) => ("", "DESC"),
            (false, true) => (" DESC", "DESC"),
            (true, true) => (" DESC", "ASC"),
        };
        order.push(format!("(q.k{i} IS NULL){nulls}, q.k{i} {dir}"));
    }
    order.push(if backward { "q.rid DESC" } else { "q.rid ASC" }.to_owned());
    sql.push_str(&order.join(", "));
    sql.push_str(" LIMIT ?");
    b.args.push(SqlArg::Int(i64::from(q.limit) + 1));
    finish(sql, b.args, ph)
}

/// `SELECT count(*)` of the matches of `q` (sort and cursor ignored).
#[must_use]
pub fn search_count(q: &SearchQuery, ph: Placeholders) -> Statement {
    let mut b = Builder::new(ph);
    let filter = b.filter("r", q);
    finish(
        format!("SELECT count(*) FROM resource r WHERE {filter}"),
        b.args,
        ph,
    )
}

/// The `(resource_type, id)` of up to `q.limit` matches, in rid order.
#[must_use]
pub fn search_ids(q: &SearchQuery, ph: Placeholders) -> Statement {
    let mut b = Builder::new(ph);
    let filter = b.filter("r", q);
    b.args.push(SqlArg::Int(i64::from(q.limit)));
    finish(
        format!(
            "SELECT r.resource_type, r.id FROM resource r WHERE {filter} ORDER BY r.rid LIMIT ?"
        ),
        b.args,
        ph,
    )
}

/// Rows like [`search_page`] (without sort keys) of related resources, in rid order.
#[must_use]
pub fn related(related: &Related, limit: u32, ph: Placeholders) -> Statement {
    let mut b = Builder::new(ph);
    let mut sql = format!(
        "SELECT t.rid, {VERSION_COLUMNS} FROM resource t JOIN resource_version v ON v.seq = t.seq \
         WHERE t.deleted = 0 AND t.rid IN ("
    );
    match related {
        Related::Targets {
            from,
            params,
            target,
        } => {
            // Arguments in the order their placeholders appear.
            let from = b.int_list(from);
            let params = b.params("x", params);
            sql.push_str(&format!(
                "SELECT u.rid FROM search_reference x JOIN resource u \
                 ON u.resource_type = x.target_type AND u.id = x.target_id \
                 WHERE x.rid IN ({from}) AND {params})"
            ));
            if let Some(target) = target {
                sql.push_str(" AND t.resource_type = ?");
                b.args.push(SqlArg::Text(target.as_str().to_owned()));
            }
        }
        Related::Sources { to, source, params } => {
            let params = b.params("x", params);
            let mut by_type: Vec<String> = Vec::new();
            let mut types: Vec<_> = to.iter().map(|(t, _)| *t).collect();
            types.sort_unstable();
            types.dedup();
            for ty in types {
                b.args.push(SqlArg::Text(ty.as_str().to_owned()));
                let ids: Vec<String> = to
                    .iter()
                    .filter(|(t, _)| *t == ty)
                    .map(|(_, id)| id.clone())
                    .collect();
                let ids = b.text_list(&ids);
                by_type.push(format!("(x.target_type = ? AND x.target_id IN ({ids}))"));
            }
            let targets = if by_type.is_empty() {
                "1 = 0".to_owned()
            } else {
                by_type.join(" OR ")
            };
            sql.push_str(&format!(
                "SELECT x.rid FROM search_reference x WHERE {params} AND ({targets})) \
                 AND t.resource_type = ?"
            ));
            b.args.push(SqlArg::Text(source.as_str().to_owned()));
        }
    }
    sql.push_str(" ORDER BY t.rid LIMIT ?");
    b.args.push(SqlArg::Int(i64::from(limit)));
    finish(sql, b.args, ph)
}

/// Current resources after `after_rid`, in rid order: rows like [`related`].
#[must_use]
pub fn scan(after_rid: i64, limit: u32, ph: Placeholders) -> Statement {
    finish(
        format!(
            "SELECT r.rid, {VERSION_COLUMNS} FROM resource r JOIN resource_version v \
             ON v.seq = r.seq WHERE r.deleted = 0 AND r.rid > ? ORDER BY r.rid LIMIT ?"
        ),
        vec![SqlArg::Int(after_rid), SqlArg::Int(i64::from(limit))],
        ph,
    )
}

/// Reads the rows of [`search_page`] (decoded into [`Found`]) as they stream in and makes
/// the page (without its total). Reading stops at the byte budget, like history.
pub async fn collect_page<S>(q: &SearchQuery, rows: S) -> Result<SearchPage, StoreError>
where
    S: futures::Stream<Item = Result<Found, StoreError>>,
{
    use futures::StreamExt as _;
    let mut rows = std::pin::pin!(rows);
    let mut found = Vec::new();
    let mut bytes = 0usize;
    let mut cut_short = false;
    while let Some(row) = rows.next().await {
        let row = row?;
        bytes += row.version.body.as_ref().map_or(0, bytes::Bytes::len);
        found.push(row);
        if bytes > q.max_bytes && found.len() <= q.limit as usize {
            cut_short = true;
            break;
        }
    }
    let more = cut_short || found.len() > q.limit as usize;
    found.truncate(q.limit as usize);
    let backward = q.cursor.as_ref().is_some_and(|c| c.backward);
    if backward {
        found.reverse();
    }
    let (has_previous, has_next) = match &q.cursor {
        None => (false, more),
        Some(c) if c.backward => (more, true),
        Some(_) => (true, more),
    };
    Ok(SearchPage {
        matches: found,
        has_next,
        has_previous,
        total: None,
    })
}

/// Decodes sort key `i` of a row, given the kinds of [`SearchQuery::sort`].
#[must_use]
pub fn key_kinds(q: &SearchQuery) -> Vec<KeyKind> {
    q.sort.iter().map(|k| k.table.sort_kind()).collect()
}

fn finish(sql: String, args: Vec<SqlArg>, ph: Placeholders) -> Statement {
    let sql = match ph {
        Placeholders::Question => sql,
        Placeholders::Numbered => super::number_placeholders(&sql),
    };
    Statement { sql, args }
}

/// How a condition is written.
///
/// SQLite evaluates `rid IN (SELECT ...)` by building the whole list first, so a broad
/// criterion written that way reads every match (a common LOINC code: a tenth of the
/// Observations) even when another criterion (one patient) leaves a handful of candidates.
/// So one condition, the most selective, *drives*: it is written as a membership test that
/// produces the candidates through its index; every other condition *probes* each candidate
/// with a correlated `EXISTS` through the `(rid, param)` index. When no condition is
/// selective, none drives: the type's resources are walked in row order and probed, which
/// stops as soon as a page is full. PostgreSQL plans both forms as semi-joins with its own
/// statistics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Driver,
    Probe,
}

/// How many resources a condition is expected to leave, from its shape alone (the store has
/// no value statistics): `Selective` marks and ids are few, a reference to one resource is
/// few, an equality or prefix on a value is moderate, ranges, negations and the like broad.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Rank {
    Few,
    /// A date (or instant) within one day: a birth date, a day's observations.
    Narrow,
    Moderate,
    Broad,
}

fn rank(c: &Condition) -> Rank {
    match c {
        Condition::Selective(_) | Condition::IdIn(_) | Condition::False => Rank::Few,
        Condition::Any { pred, table, .. } => match (table, pred_rank(pred)) {
            (Table::Reference, Rank::Few) => Rank::Few,
            (_, Rank::Few) => Rank::Moderate,
            (_, r) => r,
        },
        Condition::Composite { .. } => Rank::Moderate,
        Condition::Chain { inner, .. } => rank(inner),
        // A reverse chain finds as many resources as its inner condition finds referrers.
        Condition::ReferencedBy { inner, .. } => rank(inner),
        Condition::And(cs) => cs.iter().map(rank).min().unwrap_or(Rank::Broad),
        Condition::Or(cs) => cs.iter().map(rank).max().unwrap_or(Rank::Few),
        Condition::True | Condition::None { .. } => Rank::Broad,
    }
}

/// Whether a condition reaches this resource's rows through references to or from others.
fn indirect(c: &Condition) -> bool {
    match c {
        Condition::Chain { .. } | Condition::ReferencedBy { .. } => true,
        Condition::Selective(inner) => indirect(inner),
        Condition::And(cs) | Condition::Or(cs) => cs.iter().any(indirect),
        _ => false,
    }
}

const DAY_MICROS: i64 = 86_400_000_000;

/// `Few` for an equality on a reference's target id; `Narrow` for a date within one day;
/// `Moderate` for equalities, prefixes and longer date ranges bounded on start; `Broad` for
/// open ranges and the rest.
fn pred_rank(p: &Pred) -> Rank {
    match p {
        Pred::Eq(Col::TargetId, _) => Rank::Few,
        Pred::Eq(..) | Pred::StartsWith(..) => Rank::Moderate,
        // A date `eq` is a range bounded on start: narrow within a day, else moderate.
        Pred::And(ps) => {
            let from = ps.iter().find_map(|p| match p {
                Pred::Ge(Col::Start, Scalar::Int(v)) => Some(*v),
                _ => None,
            });
            let to = ps.iter().find_map(|p| match p {
                Pred::Lt(Col::Start, Scalar::Int(v)) => Some(*v),
                _ => None,
            });
            let range = match (from, to) {
                (Some(a), Some(b)) if b.saturating_sub(a) <= DAY_MICROS => Rank::Narrow,
                (Some(_), Some(_)) => Rank::Moderate,
                _ => Rank::Broad,
            };
            ps.iter()
                .map(pred_rank)
                .min()
                .unwrap_or(Rank::Broad)
                .min(range)
        }
        Pred::Or(ps) => ps.iter().map(pred_rank).max().unwrap_or(Rank::Few),
        _ => Rank::Broad,
    }
}

/// Accumulates the arguments of a statement while its text is built, and hands out unique
/// table aliases for nested sub-selects.
struct Builder {
    args: Vec<SqlArg>,
    aliases: usize,
    ph: Placeholders,
}

impl Builder {
    fn new(ph: Placeholders) -> Self {
        Self {
            args: Vec::new(),
            aliases: 0,
            ph,
        }
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }

    fn scalar(&mut self, v: &Scalar) {
        self.args.push(match v {
            Scalar::Text(s) => SqlArg::Text(s.clone()),
            Scalar::Int(i) => SqlArg::Int(*i),
            Scalar::Float(f) => SqlArg::Float(*f),
        });
    }

    fn int_list(&mut self, values: &[i64]) -> String {
        if values.is_empty() {
            return "NULL".to_owned();
        }
        self.args.extend(values.iter().map(|v| SqlArg::Int(*v)));
        vec!["?"; values.len()].join(", ")
    }

    fn text_list(&mut self, values: &[String]) -> String {
        if values.is_empty() {
            return "NULL".to_owned();
        }
        self.args
            .extend(values.iter().map(|v| SqlArg::Text(v.clone())));
        vec!["?"; values.len()].join(", ")
    }

    /// `alias.param = ?` or `alias.param IN (...)`.
    fn params(&mut self, alias: &str, keys: &[ParamKey]) -> String {
        match keys {
            [] => "1 = 0".to_owned(),
            [one] => {
                self.args.push(SqlArg::Int(i64::from(one.0)));
                format!("{alias}.param = ?")
            }
            many => {
                let ints: Vec<i64> = many.iter().map(|k| i64::from(k.0)).collect();
                let list = self.int_list(&ints);
                format!("{alias}.param IN ({list})")
            }
        }
    }

    /// Like [`Builder::params`], for a probe correlated on `rid`: the unary `+` keeps SQLite's
    /// planner from choosing the `(param, value...)` index, which it may otherwise prefer for
    /// being covering and would then scan every row of the parameter for each candidate; the
    /// `(rid, param)` index finds a resource's few rows directly.
    /// SQLite only: PostgreSQL plans a probe as a semi-join with statistics, and there the `+`
    /// would only hide a useful index.
    fn probe_params(&mut self, alias: &str, keys: &[ParamKey]) -> String {
        let p = self.params(alias, keys);
        match self.ph {
            Placeholders::Question => {
                p.replacen(&format!("{alias}.param"), &format!("+{alias}.param"), 1)
            }
            Placeholders::Numbered => p,
        }
    }

    /// The WHERE clause of the matches of `q` on the head alias `r`.
    fn filter(&mut self, r: &str, q: &SearchQuery) -> String {
        let mut parts = vec![format!("{r}.deleted = 0")];
        match q.types.as_slice() {
            [] => {}
            [one] => {
                self.args.push(SqlArg::Text(one.as_str().to_owned()));
                parts.push(format!("{r}.resource_type = ?"));
            }
            many => {
                let names: Vec<String> = many.iter().map(|t| t.as_str().to_owned()).collect();
                let list = self.text_list(&names);
                parts.push(format!("{r}.resource_type IN ({list})"));
            }
        }
        parts.extend(self.conditions(r, &q.conditions, Mode::Driver));
        parts.join(" AND ")
    }

    /// ANDed conditions on alias `a`. In driver mode the most selective one (if it is selective
    /// enough) selects the candidates and the others probe each candidate; see [`Mode`].
    fn conditions(&mut self, a: &str, cs: &[Condition], mode: Mode) -> Vec<String> {
        let driver = match mode {
            Mode::Probe => None,
            Mode::Driver => cs
                .iter()
                .enumerate()
                .filter(|(_, c)| rank(c) < Rank::Broad)
                // Among equals, a condition on this resource's own rows beats one that goes
                // through references (chains, `_has`), which reads more to find the same.
                .min_by_key(|(i, c)| (rank(c), indirect(c), *i))
                .map(|(i, _)| i),
        };
        cs.iter()
            .enumerate()
            .map(|(i, c)| {
                let m = if Some(i) == driver {
                    Mode::Driver
                } else {
                    Mode::Probe
                };
                self.condition(a, c, m)
            })
            .collect()
    }

    fn condition(&mut self, a: &str, c: &Condition, mode: Mode) -> String {
        match c {
            Condition::True => "1 = 1".to_owned(),
            Condition::False => "1 = 0".to_owned(),
            Condition::Selective(inner) => self.condition(a, inner, mode),
            Condition::Any {
                table,
                params,
                pred,
            } => {
                let x = self.alias("i");
                let params = match mode {
                    Mode::Driver => self.params(&x, params),
                    Mode::Probe => self.probe_params(&x, params),
                };
                let pred = self.pred(&x, pred);
                let t = table.name();
                match mode {
                    Mode::Driver => format!(
                        "{a}.rid IN (SELECT {x}.rid FROM {t} {x} WHERE {params} AND ({pred}))"
                    ),
                    Mode::Probe => format!(
                        "EXISTS (SELECT 1 FROM {t} {x} WHERE {x}.rid = {a}.rid AND {params} \
                         AND ({pred}))"
                    ),
                }
            }
            Condition::None {
                table,
                params,
                pred,
            } => {
                // Always a probe: the complement of a value is rarely selective.
                let x = self.alias("i");
                let params = self.probe_params(&x, params);
                let pred = self.pred(&x, pred);
                format!(
                    "NOT EXISTS (SELECT 1 FROM {} {x} WHERE {x}.rid = {a}.rid AND {params} \
                     AND ({pred}))",
                    table.name()
                )
            }
            Condition::Composite { parts } => {
                let mut from = String::new();
                let mut wheres = Vec::new();
                let mut first: Option<String> = None;
                for (table, key, pred) in parts {
                    let x = self.alias("c");
                    match &first {
                        None => from.push_str(&format!("{} {x}", table.name())),
                        Some(f) => from.push_str(&format!(
                            " JOIN {} {x} ON {x}.rid = {f}.rid AND {x}.grp = {f}.grp",
                            table.name()
                        )),
                    }
                    let params = if first.is_none() && mode == Mode::Probe {
                        self.probe_params(&x, std::slice::from_ref(key))
                    } else {
                        self.params(&x, std::slice::from_ref(key))
                    };
                    let pred = self.pred(&x, pred);
                    wheres.push(format!("{params} AND ({pred})"));
                    if first.is_none() {
                        first = Some(x);
                    }
                }
                let Some(f) = first else {
                    return "1 = 0".to_owned();
                };
                let wheres = wheres.join(" AND ");
                match mode {
                    Mode::Driver => {
                        format!("{a}.rid IN (SELECT {f}.rid FROM {from} WHERE {wheres})")
                    }
                    Mode::Probe => format!(
                        "EXISTS (SELECT 1 FROM {from} WHERE {f}.rid = {a}.rid AND {wheres})"
                    ),
                }
            }
            Condition::And(cs) => {
                if cs.is_empty() {
                    return "1 = 1".to_owned();
                }
                let parts = self.conditions(a, cs, mode);
                format!("({})", parts.join(" AND "))
            }
            Condition::Or(cs) => {
                if cs.is_empty() {
                    return "1 = 0".to_owned();
                }
                // An OR drives only if every branch can.
                let m = if cs.iter().all(|c| rank(c) < Rank::Broad) {
                    mode
                } else {
                    Mode::Probe
                };
                let parts: Vec<String> = cs.iter().map(|c| self.condition(a, c, m)).collect();
                format!("({})", parts.join(" OR "))
            }
            Condition::Chain {
                params,
                target,
                inner,
            } => {
                let x = self.alias("x");
                let t = self.alias("t");
                let target = SqlArg::Text(target.as_str().to_owned());
                match mode {
                    // From the targets the inner condition selects to the references to them
                    // (the `(param, target_id, target_type)` index), never the other way round.
                    Mode::Driver => {
                        let params = self.params(&x, params);
                        self.args.push(target.clone());
                        self.args.push(target);
                        let inner = self.condition(&t, inner, Mode::Driver);
                        format!(
                            "{a}.rid IN (SELECT {x}.rid FROM search_reference {x} WHERE {params} \
                             AND {x}.target_type = ? AND {x}.target_id IN (SELECT {t}.id \
                             FROM resource {t} WHERE {t}.resource_type = ? \
                             AND {t}.deleted = 0 AND {inner}))"
                        )
                    }
                    Mode::Probe => {
                        let params = self.probe_params(&x, params);
                        self.args.push(target);
                        let inner = self.condition(&t, inner, Mode::Probe);
                        format!(
                            "EXISTS (SELECT 1 FROM search_reference {x} JOIN resource {t} \
                             ON {t}.resource_type = {x}.target_type AND {t}.id = {x}.target_id \
                             WHERE {x}.rid = {a}.rid AND {params} AND {x}.target_type = ? \
                             AND {t}.deleted = 0 AND {inner})"
                        )
                    }
                }
            }
            Condition::ReferencedBy {
                source,
                param,
                target,
                inner,
            } => {
                let x = self.alias("x");
                let s = self.alias("s");
                let text = |v: &ResourceType| SqlArg::Text(v.as_str().to_owned());
                match mode {
                    // From the referrers the inner condition selects to their references (the
                    // `(rid, param)` index), never by walking every reference of the parameter.
                    // The ids found become rids (the `(resource_type, id)` index), so the
                    // outer query looks its candidates up by rid like any other driver instead
                    // of walking the type in rid order to test each id.
                    Mode::Driver => {
                        let u = self.alias("u");
                        self.args.push(text(target));
                        self.args.push(text(source));
                        let inner = self.condition(&s, inner, Mode::Driver);
                        let params = self.probe_params(&x, std::slice::from_ref(param));
                        self.args.push(text(target));
                        format!(
                            "{a}.rid IN (SELECT {u}.rid FROM resource {u} \
                             WHERE {u}.resource_type = ? AND {u}.id IN (SELECT {x}.target_id \
                             FROM search_reference {x} WHERE {x}.rid IN (SELECT {s}.rid \
                             FROM resource {s} WHERE {s}.resource_type = ? AND {s}.deleted = 0 \
                             AND {inner}) AND {params} AND {x}.target_type = ?))"
                        )
                    }
                    Mode::Probe => {
                        let params = self.params(&x, std::slice::from_ref(param));
                        self.args.push(text(target));
                        self.args.push(text(target));
                        self.args.push(text(source));
                        let inner = self.condition(&s, inner, Mode::Probe);
                        format!(
                            "EXISTS (SELECT 1 FROM search_reference {x} \
                             JOIN resource {s} ON {s}.rid = {x}.rid WHERE {params} \
                             AND {x}.target_type = ? AND {x}.target_id = {a}.id \
                             AND {a}.resource_type = ? AND {s}.resource_type = ? \
                             AND {s}.deleted = 0 AND {inner})"
                        )
                    }
                }
            }
            Condition::IdIn(ids) => {
                let list = self.text_list(ids);
                format!("{a}.id IN ({list})")
            }
        }
    }

    fn pred(&mut self, x: &str, p: &Pred) -> String {
        let col = |c: &Col| format!("{x}.{}", c.name());
        match p {
            Pred::True => "1 = 1".to_owned(),
            Pred::Eq(c, v) => {
                self.scalar(v);
                format!("{} = ?", col(c))
            }
            Pred::IsNull(c) => format!("{} IS NULL", col(c)),
            Pred::Lt(c, v) => {
                self.scalar(v);
                format!("{} < ?", col(c))
            }
            Pred::Le(c, v) => {
                self.scalar(v);
                format!("{} <= ?", col(c))
            }
            Pred::Gt(c, v) => {
                self.scalar(v);
                format!("{} > ?", col(c))
            }
            Pred::Ge(c, v) => {
                self.scalar(v);
                format!("{} >= ?", col(c))
            }
            Pred::StartsWith(c, s) => {
                // A range rather than LIKE, so both databases use the btree index (text
                // columns compare bytewise: BINARY in SQLite, COLLATE "C" in PostgreSQL).
                // U+10FFFF is the greatest scalar value, so every extension of `s` falls
                // below `s` followed by it.
                self.args.push(SqlArg::Text(s.clone()));
                self.args.push(SqlArg::Text(format!("{s}\u{10FFFF}")));
                format!("({c} >= ? AND {c} < ?)", c = col(c))
            }
            Pred::Contains(c, s) => {
                self.args
                    .push(SqlArg::Text(format!("%{}%", escape_like(s))));
                format!("{} LIKE ? ESCAPE '\\'", col(c))
            }
            Pred::PrefixOf(c, s) => {
                self.args.push(SqlArg::Text(s.clone()));
                format!("substr(?, 1, length({c})) = {c}", c = col(c))
            }
            Pred::And(ps) => {
                if ps.is_empty() {
                    return "1 = 1".to_owned();
                }
                let parts: Vec<String> = ps.iter().map(|p| self.pred(x, p)).collect();
                format!("({})", parts.join(" AND "))
            }
            Pred::Or(ps) => {
                if ps.is_empty() {
                    return "1 = 0".to_owned();
                }
                let parts: Vec<String> = ps.iter().map(|p| self.pred(x, p)).collect();
                format!("({})", parts.join(" OR "))
            }
            Pred::Not(p) => {
                let inner = self.pred(x, p);
                format!("NOT ({inner})")
            }
        }
    }

    /// Entries strictly after (or, for a backward cursor, before) the cursor's position in
    /// the order of `q.sort`, missing values last, then rid.
    fn keyset(&mut self, q: &SearchQuery, cursor: &SearchCursor) -> String {
        let mut alternatives = Vec::new();
        let keys = q.sort.len().min(cursor.keys.len());
        for i in 0..=keys {
            // Walking forward, nothing follows a missing key (missing values sort last), so
            // that level has no alternative. Decided before the equalities bind their
            // arguments: a dropped alternative must leave no arguments behind.
            if i < keys && !cursor.backward && cursor.keys[i] == SortValue::Null {
                continue;
            }
            let mut conj = Vec::new();
            for (j, value) in cursor.keys.iter().enumerate().take(i) {
                conj.push(self.key_eq(j, value));
            }
            let step = if i == keys {
                self.args.push(SqlArg::Int(cursor.rid));
                if cursor.backward {
                    "q.rid < ?".to_owned()
                } else {
                    "q.rid > ?".to_owned()
                }
            } else {
                self.key_step(i, q.sort[i].descending, &cursor.keys[i], cursor.backward)
            };
            conj.push(step);
            alternatives.push(format!("({})", conj.join(" AND ")));
        }
        format!("({})", alternatives.join(" OR "))
    }

    fn key_eq(&mut self, i: usize, value: &SortValue) -> String {
        match value {
            SortValue::Null => format!("q.k{i} IS NULL"),
            v => {
                self.sort_value(v);
                format!("q.k{i} = ?")
            }
        }
    }

    /// Key `i` strictly beyond `value` in the walking direction. Missing values sort last:
    /// everything else precedes them (and nothing follows them, which [`Builder::keyset`]
    /// handles by leaving that level out).
    fn key_step(
        &mut self,
        i: usize,
        descending: bool,
        value: &SortValue,
        backward: bool,
    ) -> String {
        match (value, backward) {
            (SortValue::Null, _) => format!("q.k{i} IS NOT NULL"),
            (v, false) => {
                self.sort_value(v);
                let op = if descending { "<" } else { ">" };
                format!("(q.k{i} {op} ? OR q.k{i} IS NULL)")
            }
            (v, true) => {
                self.sort_value(v);
                let op = if descending { ">" } else { "<" };
                format!("q.k{i} {op} ?")
            }
        }
    }

    fn sort_value(&mut self, v: &SortValue) {
        self.args.push(match v {
            SortValue::Null => SqlArg::OptText(None),
            SortValue::Text(s) => SqlArg::Text(s.clone()),
            SortValue::Int(i) => SqlArg::Int(*i),
            SortValue::Float(f) => SqlArg::Float(*f),
        });
    }
}

/// Escapes LIKE's wildcards (and the escape character itself) with `\`.
fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::SortSpec;
    use haven_domain::ResourceType;

    fn patient() -> ResourceType {
        ResourceType::parse("Patient").unwrap()
    }

    fn query(conditions: Vec<Condition>) -> SearchQuery {
        SearchQuery {
            types: vec![patient()],
            conditions,
            sort: Vec::new(),
            cursor: None,
            limit: 10,
            total: false,
            max_bytes: 1 << 20,
        }
    }

    #[test]
    fn placeholders_match_arguments() {
        let mut q = query(vec![
            Condition::Any {
                table: Table::String,
                params: vec![ParamKey(7)],
                pred: Pred::StartsWith(Col::Normalized, "smi".into()),
            },
            Condition::Chain {
                params: vec![ParamKey(8), ParamKey(9)],
                target: patient(),
                inner: Box::new(Condition::IdIn(vec!["a".into(), "b".into()])),
            },
            Condition::ReferencedBy {
                source: patient(),
                param: ParamKey(10),
                target: patient(),
                inner: Box::new(Condition::IdIn(vec!["c".into()])),
            },
            Condition::Composite {
                parts: vec![
                    (
                        Table::Token,
                        ParamKey(1),
                        Pred::Eq(Col::Code, Scalar::Text("x".into())),
                    ),
                    (
                        Table::Number,
                        ParamKey(2),
                        Pred::Gt(Col::Upper, Scalar::Float(1.5)),
                    ),
                ],
            },
        ]);
        q.sort = vec![SortSpec {
            table: Table::Date,
            params: vec![ParamKey(3)],
            descending: true,
        }];
        q.cursor = Some(SearchCursor {
            keys: vec![SortValue::Int(5)],
            rid: 9,
            backward: false,
        });
        for ph in [Placeholders::Question, Placeholders::Numbered] {
            for s in [
                search_page(&q, ph),
                search_count(&q, ph),
                search_ids(&q, ph),
            ] {
                let n = match ph {
                    Placeholders::Question => s.sql.matches('?').count(),
                    Placeholders::Numbered => s.sql.matches('$').count(),
                };
                assert_eq!(n, s.args.len(), "{}", s.sql);
            }
        }
    }

    #[test]
    fn cursors_with_missing_keys_bind_one_argument_per_placeholder() {
        let mut q = query(Vec::new());
        q.sort = [false, true]
            .into_iter()
            .map(|descending| SortSpec {
                table: Table::Number,
                params: vec![ParamKey(4)],
                descending,
            })
            .collect();
        let values = [SortValue::Null, SortValue::Float(1.5)];
        for first in &values {
            for second in &values {
                for backward in [false, true] {
                    q.cursor = Some(SearchCursor {
                        keys: vec![first.clone(), second.clone()],
                        rid: 9,
                        backward,
                    });
                    let s = search_page(&q, Placeholders::Question);
                    assert_eq!(s.sql.matches('?').count(), s.args.len(), "{}", s.sql);
                    // The rid is bound right after the key values it follows.
                    let rid_at = s.args.iter().position(|a| *a == SqlArg::Int(9));
                    let before_rid = s.sql[..s.sql.find("q.rid ").unwrap()].matches('?').count();
                    assert_eq!(rid_at, Some(before_rid), "{}", s.sql);
                }
            }
        }
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(escape_like("50%_a\\b"), "50\\%\\_a\\\\b");
    }

    #[test]
    fn inserts_group_rows_by_table_and_chunk() {
        let rows: Vec<IndexRow> = (0..450)
            .map(|i| IndexRow {
                param: ParamKey(1),
                grp: 0,
                cell: IndexCell::Uri {
                    value: format!("u{i}"),
                },
            })
            .chain(std::iter::once(IndexRow {
                param: ParamKey(2),
                grp: 0,
                cell: IndexCell::Date { start: 1, end: 2 },
            }))
            .collect();
        let stmts = insert_index(42, &rows, Placeholders::Question);
        assert_eq!(stmts.len(), 4, "one date insert and three uri chunks");
        let total_args: usize = stmts.iter().map(|s| s.args.len()).sum();
        assert_eq!(total_args, 450 * 4 + 5);
    }
}
