//! Query plans of the statements Haven runs, from the databases themselves, and the checks
//! that the statements rebuilt in [`super::sql`] are the ones Haven runs.
//!
//! SQLite: `EXPLAIN QUERY PLAN` through the `sqlite3` command-line shell, opened read-only on
//! the server's `haven.db` while the server runs, and the statement's time over three runs.
//! PostgreSQL: `EXPLAIN (ANALYZE, BUFFERS)` through `psql` of the statement PREPAREd with the
//! argument types sqlx binds, at its first execution: a plan made for these values. Haven sends
//! search statements unnamed (`haven_store_postgres::reads::planned_for_values`), so PostgreSQL
//! plans every execution that way and never switches them to a generic plan.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::sql::Stmt;

/// Longest a plan or check may take, in seconds.
const TIMEOUT: u32 = 300;
/// Longest the three timed runs of a statement in the sqlite3 shell may take, in seconds.
pub const TIMING_TIMEOUT: u32 = 60;
/// The exit status of timeout(1) when the time ran out.
const TIMED_OUT: i32 = 124;

/// Runs `program args` with `input` on stdin, stopped after `seconds`; returns stdout.
fn run_for(seconds: u32, program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
    let mut child = Command::new("timeout")
        .arg(seconds.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.code() == Some(TIMED_OUT) {
        bail!("{program} did not finish within {seconds} s");
    }
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

fn run(program: &str, args: &[&str], input: &str) -> anyhow::Result<String> {
    run_for(TIMEOUT, program, args, input)
}

/// `sqlite3 --version`, or why it cannot be run.
pub fn sqlite_version() -> anyhow::Result<String> {
    let v = run("sqlite3", &["--version"], "")?;
    Ok(v.split_whitespace().next().unwrap_or("?").to_owned())
}

fn sqlite(db: &Path, script: &str) -> anyhow::Result<String> {
    sqlite_for(TIMEOUT, db, script)
}

fn sqlite_for(seconds: u32, db: &Path, script: &str) -> anyhow::Result<String> {
    let uri = format!("file:{}?mode=ro", db.display());
    run_for(seconds, "sqlite3", &["-batch", "-bail", &uri], script)
}

/// `EXPLAIN QUERY PLAN` of `stmt` in SQLite.
pub fn sqlite_plan(db: &Path, stmt: &Stmt) -> anyhow::Result<String> {
    sqlite(
        db,
        &format!("EXPLAIN QUERY PLAN {};\n", stmt.with_literals()),
    )
}

/// The best of three runs of `stmt` in SQLite, in milliseconds (the shell's timer).
pub fn sqlite_time_ms(db: &Path, stmt: &Stmt) -> anyhow::Result<f64> {
    let sql = stmt.with_literals();
    let out = sqlite_for(
        TIMING_TIMEOUT,
        db,
        &format!(".output /dev/null\n.timer on\n{sql};\n{sql};\n{sql};\n"),
    )?;
    out.lines()
        .filter_map(|l| l.strip_prefix("Run Time: real "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .reduce(f64::min)
        .context("the sqlite3 shell printed no timing")
}

/// The single number `stmt` (a count) returns in SQLite.
pub fn sqlite_count(db: &Path, stmt: &Stmt) -> anyhow::Result<u64> {
    let out = sqlite(db, &format!("{};\n", stmt.with_literals()))?;
    out.trim()
        .parse()
        .with_context(|| format!("the count statement answered {out:?}"))
}

fn psql(url: &str, script: &str) -> anyhow::Result<String> {
    run(
        "psql",
        &["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url],
        script,
    )
}

/// `PREPARE` of `stmt` as sqlx would bind it, and the `EXECUTE` with its arguments.
fn prepared(stmt: &Stmt) -> (String, String) {
    let types: Vec<&str> = stmt.args.iter().map(super::sql::Arg::pg_type).collect();
    let values: Vec<String> = stmt.args.iter().map(super::sql::Arg::literal).collect();
    (
        format!(
            "PREPARE haven_q({}) AS {};\n",
            types.join(", "),
            stmt.numbered()
        ),
        format!("EXECUTE haven_q({})", values.join(", ")),
    )
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of the first execution of `stmt` prepared: the custom plan,
/// made for its values, which is the plan Haven's unnamed statement gets.
pub fn postgres_plan(url: &str, stmt: &Stmt) -> anyhow::Result<String> {
    let (prepare, execute) = prepared(stmt);
    let script = format!(
        "SET statement_timeout = '{TIMEOUT}s';\n{prepare}EXPLAIN (ANALYZE, BUFFERS) {execute};\n"
    );
    Ok(psql(url, &script)?.trim().to_owned())
}

/// The single number `stmt` (a count) returns in PostgreSQL.
pub fn postgres_count(url: &str, stmt: &Stmt) -> anyhow::Result<u64> {
    let (prepare, execute) = prepared(stmt);
    let out = psql(url, &format!("{prepare}{execute};\n"))?;
    out.trim()
        .parse()
        .with_context(|| format!("the count statement answered {out:?}"))
}

/// How much of a statement's text `pg_stat_activity` keeps (`track_activity_query_size`,
/// 1 kB by default, less one byte); longer statements are compared on that prefix.
const ACTIVITY_PREFIX: usize = 1000;

/// Whether one of Haven's connections to the database last ran exactly `stmt` (up to the
/// prefix `pg_stat_activity` keeps). Returns (seen, compared on a prefix only).
pub fn postgres_ran(url: &str, stmt: &Stmt) -> anyhow::Result<(bool, bool)> {
    let text = stmt.numbered();
    let truncated = text.len() > ACTIVITY_PREFIX;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = 'haven' AND left(query, {ACTIVITY_PREFIX}) = left($haven${text}$haven$, {ACTIVITY_PREFIX}) \
         AND ({truncated} OR query = $haven${text}$haven$);\n"
    );
    let n: u64 = psql(url, &sql)?.trim().parse().unwrap_or(0);
    Ok((n > 0, truncated))
}

/// `VACUUM (ANALYZE)` of the database: what autovacuum does to a freshly loaded database
/// sooner or later, done now so plans do not change in the middle of a measurement.
pub fn postgres_vacuum_analyze(url: &str) -> anyhow::Result<()> {
    psql(url, "VACUUM (ANALYZE);\n").map(drop)
}
