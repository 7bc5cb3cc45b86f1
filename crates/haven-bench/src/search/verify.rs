//! Before a kind is measured, its answers are checked against the generator; after, the
//! plans of the statements Haven runs for it are taken and the rebuilt statements checked
//! against Haven (see [`super::sql`]).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use super::queries::{Kind, Query};
use super::{BackendPlan, CHECK_BUDGET, CHECKS_PER_KIND, Place, Population, explain, sql};
use crate::Backend;
use crate::load::Client;

/// How long a checked answer may take: as long as a measured one (`load`'s request timeout).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// GET `path` and the JSON answer.
async fn get_json(client: &Client, base: &str, path: &str) -> anyhow::Result<Value> {
    let response = client
        .get(format!("{base}{path}"))
        .timeout(CHECK_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("GET {path} failed"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("GET {path} did not answer JSON"))?;
    if !status.is_success() {
        bail!("GET {path} answered {status}: {body}");
    }
    Ok(body)
}

/// What the checks of a kind found.
pub(super) struct Checked {
    pub line: String,
    pub failures: u64,
    /// A request failed or took longer than a measured request may: measuring the kind would
    /// only time out (and, on SQLite, leave statements running on the server's readers).
    pub unusable: Option<String>,
}

/// Checks that Haven's answers match the generator: `_summary=count` of some queries of the
/// kind, and what the measured request itself must show (order, total).
pub(super) async fn check_kind(
    client: &Client,
    base: &str,
    population: &Population,
    kind: Kind,
    queries: &[Query],
    label: &str,
) -> Checked {
    let mut failures = Vec::new();
    let mut unusable = None;
    let mut checked = 0;
    let budget = Instant::now() + CHECK_BUDGET;
    for q in queries.iter().take(CHECKS_PER_KIND) {
        if Instant::now() > budget {
            break;
        }
        let want = q.expected(&population.facts);
        checked += 1;
        match get_json(client, base, &q.count_path()).await {
            Ok(answer) if answer["total"].as_u64() == Some(want) => {}
            Ok(answer) => failures.push(format!(
                "`{}` matched {}, the population has {want}",
                q.count_path(),
                answer["total"]
            )),
            Err(e) => failures.push(format!("`{}`: {e:#}", q.count_path())),
        }
        let started = Instant::now();
        let answer = match get_json(client, base, &q.path()).await {
            Ok(answer) => answer,
            Err(e) => {
                let why = format!(
                    "`{}` failed after {:.1} s: {e:#}",
                    q.path(),
                    started.elapsed().as_secs_f64()
                );
                failures.push(why.clone());
                unusable = Some(why);
                break;
            }
        };
        match q {
            Query::TotalAccurate { .. } if answer["total"].as_u64() != Some(want) => {
                failures.push(format!(
                    "`{}` answered total {}, want {want}",
                    q.path(),
                    answer["total"]
                ));
            }
            Query::SortLarge { code } => {
                let dates: Vec<&str> = answer["entry"]
                    .as_array()
                    .map(|e| {
                        e.iter()
                            .filter_map(|e| e["resource"]["effectiveDateTime"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                let latest = population
                    .facts
                    .iter()
                    .flat_map(|f| f.observations.iter())
                    .filter(|(c, _)| c == code)
                    .map(|(_, at)| at.date_time())
                    .max();
                let sorted = dates.windows(2).all(|w| w[0] >= w[1]);
                let full = want.min(20) as usize;
                if dates.len() != full
                    || !sorted
                    || dates.first().map(|d| (*d).to_owned()) != latest
                {
                    failures.push(format!(
                        "`{}`: {} entries, newest first: {sorted}, first {:?}, the latest is {latest:?}",
                        q.path(),
                        dates.len(),
                        dates.first()
                    ));
                }
            }
            _ => {}
        }
    }
    let queries = if checked == 1 { "query" } else { "queries" };
    let line = if failures.is_empty() {
        format!(
            "{label}, {}: {checked} {queries}, every match count as the generator says",
            kind.name()
        )
    } else {
        format!(
            "{label}, {}: {} of {checked} {queries} WRONG: {}",
            kind.name(),
            failures.len(),
            failures.join("; ")
        )
    };
    Checked {
        line,
        failures: failures.len() as u64,
        unusable,
    }
}

/// The plans and statement checks of `q` on one backend.
pub(super) async fn plan_kind(
    client: &Client,
    base: &str,
    backend: Backend,
    place: &Place,
    statements: &sql::Statements,
    q: &Query,
    expected: u64,
) -> BackendPlan {
    let mut out = BackendPlan {
        server: backend.name().into(),
        ..BackendPlan::default()
    };
    let shown = |r: anyhow::Result<String>| r.unwrap_or_else(|e| format!("(no plan: {e:#})"));
    match backend {
        Backend::Sqlite => {
            let db = place.data_dir.join("haven.db");
            out.page = shown(explain::sqlite_plan(&db, &statements.page));
            if statements.haven_counts {
                out.count = Some(shown(explain::sqlite_plan(&db, &statements.count)));
            }
            out.db_time = Some(match explain::sqlite_time_ms(&db, &statements.page) {
                Ok(ms) if ms < 1.0 => {
                    "page statement alone in the sqlite3 shell: under 1 ms".into()
                }
                Ok(ms) => {
                    format!("page statement alone in the sqlite3 shell: {ms:.0} ms (best of 3)")
                }
                Err(e) => format!("page statement alone in the sqlite3 shell: not timed ({e:#})"),
            });
            out.checks.push(count_check(
                explain::sqlite_count(&db, &statements.count),
                expected,
            ));
        }
        Backend::Postgres => {
            let Some(db) = &place.database else {
                return out;
            };
            // Run the search once through Haven, then look for its statement text.
            let ran = get_json(client, base, &q.path()).await;
            let last = if statements.haven_counts {
                &statements.count
            } else {
                &statements.page
            };
            out.checks.push(match (ran, explain::postgres_ran(&db.url, last)) {
                (Ok(_), Ok((true, prefix))) => format!(
                    "statement text equals what Haven's connection last ran (pg_stat_activity{})",
                    if prefix { ", first 1000 bytes" } else { "" }
                ),
                (Ok(_), Ok((false, _))) => "statement text DIFFERS from what Haven ran \
                    (pg_stat_activity): the rebuilt SQL is out of date, the plan may not be Haven's"
                    .into(),
                (Err(e), _) | (_, Err(e)) => format!("statement text not checked: {e:#}"),
            });
            let plans = |stmt: &sql::Stmt| {
                explain::postgres_plan(&db.url, stmt)
                    .unwrap_or_else(|e| format!("(no plan: {e:#})"))
            };
            out.page = plans(&statements.page);
            if statements.haven_counts {
                out.count = Some(plans(&statements.count));
            }
            out.checks.push(count_check(
                explain::postgres_count(&db.url, &statements.count),
                expected,
            ));
        }
    }
    out
}

fn count_check(got: anyhow::Result<u64>, expected: u64) -> String {
    match got {
        Ok(n) if n == expected => {
            format!("the count statement finds {n} matches, as Haven and the generator")
        }
        Ok(n) => format!(
            "the count statement finds {n} matches, NOT {expected}: the rebuilt filter differs from Haven's"
        ),
        Err(e) => format!("count statement not run: {e:#}"),
    }
}
