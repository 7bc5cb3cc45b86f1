//! The SQL Haven runs for each query kind, rebuilt here so its plans can be shown.
//!
//! This mirrors `crates/haven-store/src/sql/search.rs` (the statement builder both stores share:
//! the most selective criterion, ranked by shape, *drives* as `rid IN (...)` and the others
//! *probe* each candidate with a correlated `EXISTS`) and the translation of
//! `crates/haven-service/src/search/translate.rs`, for the criteria the benchmark uses only:
//! token `system|code` (identifiers marked selective), string (starts-with), reference
//! `Type/id`, date `eq`/`ge`/`le`, `_has`, one `_sort` on a date and `_total`. The harness links no Haven crate
//! (it measures the shipped binary over HTTP), so the mirror is checked at run time instead:
//! the PostgreSQL text must equal what Haven's own connection last ran (`pg_stat_activity`),
//! and the count statement must find, in both databases, the number of matches Haven answers.
//! A change to the builder shows up there as "differs", not as a silently wrong plan.

use std::fmt::Write as _;

use time::Date;

use super::queries::Query;
use crate::synth::population::{LOINC, MRN_SYSTEM, mrn, patient_id};

/// A bound argument of a statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// A search parameter's key, with the parameter it stands for (`Patient.identifier`).
    Key(i64, String),
    Int(i64),
    Text(String),
}

impl Arg {
    /// As an SQL literal (both databases read the same syntax for these).
    pub fn literal(&self) -> String {
        match self {
            Arg::Key(v, _) | Arg::Int(v) => v.to_string(),
            Arg::Text(s) => format!("'{}'", s.replace('\'', "''")),
        }
    }

    /// The type sqlx binds it as in PostgreSQL (`i64` and `String`).
    pub fn pg_type(&self) -> &'static str {
        match self {
            Arg::Key(..) | Arg::Int(_) => "bigint",
            Arg::Text(_) => "text",
        }
    }

    /// For the report: the value, readable (U+10FFFF written as an escape).
    pub fn describe(&self) -> String {
        match self {
            Arg::Key(v, name) => format!("{v} (key of {name})"),
            Arg::Int(v) => v.to_string(),
            Arg::Text(s) => format!("'{}'", s.replace('\u{10FFFF}', "\\u{10FFFF}")),
        }
    }
}

/// A statement with `?` placeholders (SQLite's form) and its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Stmt {
    /// PostgreSQL's form: `$1`, `$2`, ... (as haven-store's `number_placeholders`), without
    /// the unary `+` Haven writes for SQLite's probes only (`probe_params`).
    pub fn numbered(&self) -> String {
        let mut out = String::with_capacity(self.sql.len() + 16);
        let mut n = 0;
        for ch in self.sql.chars() {
            if ch == '+' {
                continue;
            }
            if ch == '?' {
                n += 1;
                let _ = write!(out, "${n}");
            } else {
                out.push(ch);
            }
        }
        out
    }

    /// The statement with its arguments written in as literals.
    pub fn with_literals(&self) -> String {
        let mut args = self.args.iter();
        let mut out = String::with_capacity(self.sql.len() + 64);
        for ch in self.sql.chars() {
            match (ch, ch == '?') {
                (_, true) => out.push_str(&args.next().map(Arg::literal).unwrap_or_default()),
                (c, false) => out.push(c),
            }
        }
        out
    }

    /// The SQL with line breaks before its main clauses, for reading (otherwise unchanged).
    pub fn readable(&self) -> String {
        let mut s = self.sql.clone();
        for clause in [
            " FROM (SELECT",
            " FROM resource r WHERE",
            " AND r.",
            " AND (r.",
            " AND EXISTS (SELECT 1 FROM search_",
            " AND (EXISTS",
            ") q JOIN",
            " ORDER BY",
        ] {
            s = s.replace(clause, &format!("\n {}", clause.trim_start()));
        }
        s
    }
}

/// The statements Haven runs for one search: the page, and the count when `_total` asks.
#[derive(Debug, Clone)]
pub struct Statements {
    pub page: Stmt,
    /// `SELECT count(*)` of the same filter: run by Haven only for `_total=accurate`, but
    /// always built, to check the filter against Haven's answer.
    pub count: Stmt,
    pub haven_counts: bool,
}

/// 31 bits of FNV-1a over `Type.code`: Haven's `param_key`
/// (`crates/haven-service/src/search/index.rs`).
pub fn param_key(ty: &str, code: &str) -> Arg {
    let mut h: u32 = 0x811c_9dc5;
    for b in ty.bytes().chain(*b".").chain(code.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    Arg::Key(i64::from(h & 0x7fff_ffff), format!("{ty}.{code}"))
}

/// Microseconds since the epoch of midnight UTC starting `date`.
fn micros(date: Date) -> i64 {
    date.midnight().assume_utc().unix_timestamp() * 1_000_000
}

/// The period `[start, end)` of a day, as a date search value denotes it.
fn day_period(date: Date) -> (i64, i64) {
    let next = date.next_day().unwrap_or(date);
    (micros(date), micros(next))
}

/// A predicate on one index row (`translate::value_pred`, one alternative).
enum Pred {
    Token { system: String, code: String },
    StartsWith(String),
    Reference { ty: &'static str, id: String },
    DateEq(Date),
    DateGe(Date),
    DateLe(Date),
}

/// How many resources a condition is expected to leave (`sql::search::Rank`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Rank {
    Few,
    Narrow,
    Moderate,
    Broad,
}

impl Pred {
    /// `pred_rank` of the predicate (inside the one-alternative OR, which keeps its rank):
    /// an equality on a reference's id is few, a date `eq` at day precision narrow,
    /// equalities and prefixes moderate, the other ranges broad.
    fn rank(&self) -> Rank {
        match self {
            Pred::Reference { .. } => Rank::Few,
            // A date `eq` at day precision is within one day: narrow.
            Pred::DateEq(_) => Rank::Narrow,
            Pred::Token { .. } | Pred::StartsWith(_) => Rank::Moderate,
            Pred::DateGe(_) | Pred::DateLe(_) => Rank::Broad,
        }
    }
}

/// A criterion (`translate::condition`).
enum Criterion {
    Any {
        table: &'static str,
        key: Arg,
        pred: Pred,
        /// `Condition::Selective`: translate marks identifier searches so.
        selective: bool,
    },
    /// `_has:source:param:inner` on `target` (an OR over the one searched type).
    Has {
        source: &'static str,
        param: &'static str,
        target: &'static str,
        inner: Box<Criterion>,
    },
}

impl Criterion {
    /// `sql::search::rank`.
    fn rank(&self) -> Rank {
        match self {
            Criterion::Any {
                selective: true, ..
            } => Rank::Few,
            Criterion::Any { table, pred, .. } => match (*table, pred.rank()) {
                ("search_reference", Rank::Few) => Rank::Few,
                (_, Rank::Few) => Rank::Moderate,
                (_, r) => r,
            },
            // A reverse chain finds as many as its inner criterion finds referrers.
            Criterion::Has { inner, .. } => inner.rank(),
        }
    }
}

/// How a condition is written (`sql::search::Mode`): the most selective condition drives (a
/// membership test through its index), the others probe each candidate (a correlated
/// `EXISTS` through the `(rid, param)` index).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Driver,
    Probe,
}

#[derive(Default)]
struct Builder {
    args: Vec<Arg>,
    aliases: usize,
}

impl Builder {
    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }

    fn text(&mut self, s: &str) {
        self.args.push(Arg::Text(s.to_owned()));
    }

    fn int(&mut self, v: i64) {
        self.args.push(Arg::Int(v));
    }

    /// `alias.param = ?`, with the unary `+` of a probe (`probe_params`) that keeps the planner
    /// off the `(param, value...)` index.
    fn params(&mut self, x: &str, key: &Arg, mode: Mode) -> String {
        self.args.push(key.clone());
        match mode {
            Mode::Driver => format!("{x}.param = ?"),
            Mode::Probe => format!("+{x}.param = ?"),
        }
    }

    /// `((...))`: the alternatives' OR around the one alternative's predicate.
    fn pred(&mut self, x: &str, p: &Pred) -> String {
        let within = |b: &mut Builder, (qs, qe): (i64, i64)| {
            b.int(qs);
            b.int(qe);
            b.int(qe);
            format!("({x}.start_at >= ? AND {x}.start_at < ? AND {x}.end_at <= ?)")
        };
        let one = match p {
            Pred::Token { system, code } => {
                self.text(code);
                self.text(system);
                format!("({x}.code = ? AND {x}.system = ?)")
            }
            Pred::StartsWith(s) => {
                self.text(s);
                self.text(&format!("{s}\u{10FFFF}"));
                format!("({x}.normalized >= ? AND {x}.normalized < ?)")
            }
            Pred::Reference { ty, id } => {
                self.text(id);
                self.text(ty);
                format!("({x}.target_id = ? AND {x}.target_type = ?)")
            }
            Pred::DateEq(d) => within(self, day_period(*d)),
            Pred::DateGe(d) => {
                let (qs, qe) = day_period(*d);
                self.int(qe);
                let w = within(self, (qs, qe));
                format!("({x}.end_at > ? OR {w})")
            }
            Pred::DateLe(d) => {
                let (qs, qe) = day_period(*d);
                self.int(qs);
                let w = within(self, (qs, qe));
                format!("({x}.start_at < ? OR {w})")
            }
        };
        format!("({one})")
    }

    fn condition(&mut self, a: &str, c: &Criterion, mode: Mode) -> String {
        match c {
            Criterion::Any {
                table, key, pred, ..
            } => {
                let x = self.alias("i");
                let params = self.params(&x, key, mode);
                let pred = self.pred(&x, pred);
                match mode {
                    Mode::Driver => format!(
                        "{a}.rid IN (SELECT {x}.rid FROM {table} {x} WHERE {params} AND ({pred}))"
                    ),
                    Mode::Probe => format!(
                        "EXISTS (SELECT 1 FROM {table} {x} WHERE {x}.rid = {a}.rid AND {params} \
                         AND ({pred}))"
                    ),
                }
            }
            Criterion::Has {
                source,
                param,
                target,
                inner,
            } => {
                // The OR over the searched types drives only if its one branch can.
                let mode = if c.rank() < Rank::Broad {
                    mode
                } else {
                    Mode::Probe
                };
                let x = self.alias("x");
                let s = self.alias("s");
                let key = param_key(source, param);
                let branch = match mode {
                    Mode::Driver => {
                        let u = self.alias("u");
                        self.text(target);
                        self.text(source);
                        let inner = self.condition(&s, inner, Mode::Driver);
                        // The key in its probe form: the references are reached by rid.
                        let params = self.params(&x, &key, Mode::Probe);
                        self.text(target);
                        format!(
                            "{a}.rid IN (SELECT {u}.rid FROM resource {u} \
                             WHERE {u}.resource_type = ? AND {u}.id IN (SELECT {x}.target_id \
                             FROM search_reference {x} WHERE {x}.rid IN (SELECT {s}.rid \
                             FROM resource {s} WHERE {s}.resource_type = ? AND {s}.deleted = 0 \
                             AND {inner}) AND {params} AND {x}.target_type = ?))"
                        )
                    }
                    Mode::Probe => {
                        // Never the probe form of the key here: the reference is reached by
                        // target.
                        let params = self.params(&x, &key, Mode::Driver);
                        self.text(target);
                        self.text(target);
                        self.text(source);
                        let inner = self.condition(&s, inner, Mode::Probe);
                        format!(
                            "EXISTS (SELECT 1 FROM search_reference {x} \
                             JOIN resource {s} ON {s}.rid = {x}.rid WHERE {params} \
                             AND {x}.target_type = ? AND {x}.target_id = {a}.id \
                             AND {a}.resource_type = ? AND {s}.resource_type = ? \
                             AND {s}.deleted = 0 AND {inner})"
                        )
                    }
                };
                format!("({branch})")
            }
        }
    }

    /// `filter`: the type, then the criteria; the most selective criterion that is not broad
    /// (the first of equals) drives, the others probe.
    fn filter(&mut self, ty: &str, criteria: &[Criterion]) -> String {
        self.text(ty);
        let driver = criteria
            .iter()
            .enumerate()
            .filter(|(_, c)| c.rank() < Rank::Broad)
            // Among equals, a direct condition before a reverse chain (`indirect`).
            .min_by_key(|(i, c)| (c.rank(), matches!(c, Criterion::Has { .. }), *i))
            .map(|(i, _)| i);
        let mut parts = vec!["r.deleted = 0".to_owned(), "r.resource_type = ?".to_owned()];
        for (i, c) in criteria.iter().enumerate() {
            let mode = if Some(i) == driver {
                Mode::Driver
            } else {
                Mode::Probe
            };
            parts.push(self.condition("r", c, mode));
        }
        parts.join(" AND ")
    }
}

fn token(ty: &'static str, code: &'static str, system: &str, value: &str) -> Criterion {
    Criterion::Any {
        table: "search_token",
        key: param_key(ty, code),
        pred: Pred::Token {
            system: system.to_owned(),
            code: value.to_owned(),
        },
        selective: code == "identifier",
    }
}

fn family(name: &str) -> Criterion {
    Criterion::Any {
        table: "search_string",
        key: param_key("Patient", "family"),
        pred: Pred::StartsWith(name.to_ascii_lowercase()),
        selective: false,
    }
}

fn date(ty: &'static str, code: &'static str, pred: Pred) -> Criterion {
    Criterion::Any {
        table: "search_date",
        key: param_key(ty, code),
        pred,
        selective: false,
    }
}

fn loinc(code: &str) -> Criterion {
    token("Observation", "code", LOINC, code)
}

fn has_observation(code: &str) -> Criterion {
    Criterion::Has {
        source: "Observation",
        param: "patient",
        target: "Patient",
        inner: Box::new(loinc(code)),
    }
}

/// The default page size (Haven's `limits.default_page_size`).
const DEFAULT_COUNT: i64 = 50;

/// The statements of `q`.
pub fn statements(q: &Query) -> Statements {
    let (criteria, sort, count, haven_counts) = match q {
        Query::Identifier { k } => (
            vec![token("Patient", "identifier", MRN_SYSTEM, &mrn(*k))],
            false,
            DEFAULT_COUNT,
            false,
        ),
        Query::FamilyBirthdate { family: f, birth } => (
            vec![
                family(f),
                date("Patient", "birthdate", Pred::DateEq(*birth)),
            ],
            false,
            DEFAULT_COUNT,
            false,
        ),
        Query::ObsSubjectCodeDate { k, code, year } => {
            // Generated years are always valid dates.
            let first =
                Date::from_calendar_date(*year, time::Month::January, 1).unwrap_or(Date::MIN);
            let last =
                Date::from_calendar_date(*year, time::Month::December, 31).unwrap_or(Date::MIN);
            (
                vec![
                    Criterion::Any {
                        table: "search_reference",
                        key: param_key("Observation", "subject"),
                        pred: Pred::Reference {
                            ty: "Patient",
                            id: patient_id(*k),
                        },
                        selective: false,
                    },
                    loinc(code),
                    date("Observation", "date", Pred::DateGe(first)),
                    date("Observation", "date", Pred::DateLe(last)),
                ],
                false,
                DEFAULT_COUNT,
                false,
            )
        }
        Query::Has { code } => (vec![has_observation(code)], false, DEFAULT_COUNT, false),
        Query::HasCommonFamily { code, family: f } => (
            vec![has_observation(code), family(f)],
            false,
            DEFAULT_COUNT,
            false,
        ),
        Query::SortLarge { code } => (vec![loinc(code)], true, 20, false),
        Query::TotalAccurate { code } => (vec![loinc(code)], false, 1, true),
    };
    let ty = q.resource_type();

    let mut b = Builder::default();
    let mut sql = String::from("SELECT q.rid");
    if sort {
        sql.push_str(", q.k0");
    }
    sql.push_str(
        ", v.resource_type, v.id, v.version, v.last_updated, v.change_kind, v.body \
         FROM (SELECT r.rid, r.seq",
    );
    if sort {
        b.args.push(param_key(ty, "date"));
        sql.push_str(
            ", (SELECT MAX(s.start_at) FROM search_date s WHERE s.rid = r.rid AND +s.param = ?) AS k0",
        );
    }
    sql.push_str(" FROM resource r WHERE ");
    let filter = b.filter(ty, &criteria);
    sql.push_str(&filter);
    sql.push_str(") q JOIN resource_version v ON v.seq = q.seq ORDER BY ");
    if sort {
        sql.push_str("(q.k0 IS NULL), q.k0 DESC, ");
    }
    sql.push_str("q.rid ASC LIMIT ?");
    b.int(count + 1);
    let page = Stmt { sql, args: b.args };

    let mut b = Builder::default();
    let filter = b.filter(ty, &criteria);
    let count = Stmt {
        sql: format!("SELECT count(*) FROM resource r WHERE {filter}"),
        args: b.args,
    };
    Statements {
        page,
        count,
        haven_counts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_havens() {
        // Keys whose statements found the matches Haven found in a benchmark run.
        let cases = [
            ("Patient", "identifier", 1_691_100_867),
            ("Patient", "family", 147_360_096),
            ("Patient", "birthdate", 218_419_845),
            ("Observation", "code", 592_331_440),
            ("Observation", "subject", 505_649_651),
            ("Observation", "date", 2_089_022_869),
            ("Observation", "patient", 1_119_826_218),
        ];
        for (ty, code, key) in cases {
            assert_eq!(
                param_key(ty, code),
                Arg::Key(key, format!("{ty}.{code}")),
                "{ty}.{code}"
            );
        }
    }

    #[test]
    fn placeholders_match_arguments() {
        let queries = [
            Query::Identifier { k: 1 },
            Query::FamilyBirthdate {
                family: "O'Brien",
                birth: Date::from_calendar_date(1970, time::Month::May, 3).unwrap(),
            },
            Query::ObsSubjectCodeDate {
                k: 2,
                code: "8867-4",
                year: 2019,
            },
            Query::Has { code: "5671-3" },
            Query::HasCommonFamily {
                code: "8867-4",
                family: "Smith",
            },
            Query::SortLarge { code: "8867-4" },
            Query::TotalAccurate { code: "8867-4" },
        ];
        for q in &queries {
            let s = statements(q);
            for stmt in [&s.page, &s.count] {
                assert_eq!(
                    stmt.sql.matches('?').count(),
                    stmt.args.len(),
                    "{}",
                    stmt.sql
                );
                assert!(!stmt.with_literals().contains('?'));
                assert!(stmt.numbered().contains(&format!("${}", stmt.args.len())));
            }
        }
    }

    #[test]
    fn the_identifier_page_is_the_builders_shape() {
        let s = statements(&Query::Identifier { k: 0 });
        assert_eq!(
            s.page.sql,
            "SELECT q.rid, v.resource_type, v.id, v.version, v.last_updated, v.change_kind, \
             v.body FROM (SELECT r.rid, r.seq FROM resource r WHERE r.deleted = 0 AND \
             r.resource_type = ? AND r.rid IN (SELECT i1.rid FROM search_token i1 WHERE \
             i1.param = ? AND (((i1.code = ? AND i1.system = ?))))) q JOIN resource_version v \
             ON v.seq = q.seq ORDER BY q.rid ASC LIMIT ?"
        );
        assert_eq!(s.page.args[0], Arg::Text("Patient".into()));
        assert_eq!(s.page.args[2], Arg::Text("MRN-0000001".into()));
        assert_eq!(s.page.args[4], Arg::Int(51));
    }

    /// Page statements as Haven's builder (`haven_store::sql::search`) writes them for
    /// PostgreSQL; the benchmark also compares them with what `pg_stat_activity` shows Haven ran
    /// and reports any difference.
    #[test]
    fn pages_are_what_haven_ran() {
        let page = |q: Query| statements(&q).page.numbered();
        assert_eq!(
            page(Query::Has { code: "2284-8" }),
            "SELECT q.rid, v.resource_type, v.id, v.version, v.last_updated, v.change_kind, v.body FROM (SELECT r.rid, r.seq FROM resource r WHERE r.deleted = 0 AND r.resource_type = $1 AND (r.rid IN (SELECT u3.rid FROM resource u3 WHERE u3.resource_type = $2 AND u3.id IN (SELECT x1.target_id FROM search_reference x1 WHERE x1.rid IN (SELECT s2.rid FROM resource s2 WHERE s2.resource_type = $3 AND s2.deleted = 0 AND s2.rid IN (SELECT i4.rid FROM search_token i4 WHERE i4.param = $4 AND (((i4.code = $5 AND i4.system = $6))))) AND x1.param = $7 AND x1.target_type = $8)))) q JOIN resource_version v ON v.seq = q.seq ORDER BY q.rid ASC LIMIT $9"
        );
        assert_eq!(
            page(Query::FamilyBirthdate {
                family: "Lee",
                birth: Date::from_calendar_date(1948, time::Month::October, 2).unwrap(),
            }),
            "SELECT q.rid, v.resource_type, v.id, v.version, v.last_updated, v.change_kind, v.body FROM (SELECT r.rid, r.seq FROM resource r WHERE r.deleted = 0 AND r.resource_type = $1 AND EXISTS (SELECT 1 FROM search_string i1 WHERE i1.rid = r.rid AND i1.param = $2 AND (((i1.normalized >= $3 AND i1.normalized < $4)))) AND r.rid IN (SELECT i2.rid FROM search_date i2 WHERE i2.param = $5 AND (((i2.start_at >= $6 AND i2.start_at < $7 AND i2.end_at <= $8))))) q JOIN resource_version v ON v.seq = q.seq ORDER BY q.rid ASC LIMIT $9"
        );
        assert_eq!(
            page(Query::ObsSubjectCodeDate {
                k: 1,
                code: "8867-4",
                year: 2024
            }),
            "SELECT q.rid, v.resource_type, v.id, v.version, v.last_updated, v.change_kind, v.body FROM (SELECT r.rid, r.seq FROM resource r WHERE r.deleted = 0 AND r.resource_type = $1 AND r.rid IN (SELECT i1.rid FROM search_reference i1 WHERE i1.param = $2 AND (((i1.target_id = $3 AND i1.target_type = $4)))) AND EXISTS (SELECT 1 FROM search_token i2 WHERE i2.rid = r.rid AND i2.param = $5 AND (((i2.code = $6 AND i2.system = $7)))) AND EXISTS (SELECT 1 FROM search_date i3 WHERE i3.rid = r.rid AND i3.param = $8 AND (((i3.end_at > $9 OR (i3.start_at >= $10 AND i3.start_at < $11 AND i3.end_at <= $12))))) AND EXISTS (SELECT 1 FROM search_date i4 WHERE i4.rid = r.rid AND i4.param = $13 AND (((i4.start_at < $14 OR (i4.start_at >= $15 AND i4.start_at < $16 AND i4.end_at <= $17)))))) q JOIN resource_version v ON v.seq = q.seq ORDER BY q.rid ASC LIMIT $18"
        );
        assert_eq!(
            page(Query::HasCommonFamily {
                code: "8867-4",
                family: "Lee"
            }),
            "SELECT q.rid, v.resource_type, v.id, v.version, v.last_updated, v.change_kind, v.body FROM (SELECT r.rid, r.seq FROM resource r WHERE r.deleted = 0 AND r.resource_type = $1 AND (EXISTS (SELECT 1 FROM search_reference x1 JOIN resource s2 ON s2.rid = x1.rid WHERE x1.param = $2 AND x1.target_type = $3 AND x1.target_id = r.id AND r.resource_type = $4 AND s2.resource_type = $5 AND s2.deleted = 0 AND EXISTS (SELECT 1 FROM search_token i3 WHERE i3.rid = s2.rid AND i3.param = $6 AND (((i3.code = $7 AND i3.system = $8)))))) AND r.rid IN (SELECT i4.rid FROM search_string i4 WHERE i4.param = $9 AND (((i4.normalized >= $10 AND i4.normalized < $11))))) q JOIN resource_version v ON v.seq = q.seq ORDER BY q.rid ASC LIMIT $12"
        );
        assert_eq!(
            page(Query::SortLarge { code: "8867-4" }),
            "SELECT q.rid, q.k0, v.resource_type, v.id, v.version, v.last_updated, v.change_kind, v.body FROM (SELECT r.rid, r.seq, (SELECT MAX(s.start_at) FROM search_date s WHERE s.rid = r.rid AND s.param = $1) AS k0 FROM resource r WHERE r.deleted = 0 AND r.resource_type = $2 AND r.rid IN (SELECT i1.rid FROM search_token i1 WHERE i1.param = $3 AND (((i1.code = $4 AND i1.system = $5))))) q JOIN resource_version v ON v.seq = q.seq ORDER BY (q.k0 IS NULL), q.k0 DESC, q.rid ASC LIMIT $6"
        );
    }

    #[test]
    fn dates_are_day_periods_in_utc_micros() {
        let d = Date::from_calendar_date(1970, time::Month::January, 2).unwrap();
        assert_eq!(day_period(d), (86_400_000_000, 172_800_000_000));
    }
}
