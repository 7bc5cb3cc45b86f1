//! The search section of the report: population and loading, latency per query kind and
//! backend against the target, the answer checks, and the query plans.

use std::fmt::Write as _;

use super::{SearchReport, TARGET_P99_MS, TARGET_PATIENTS};
use crate::report::{
    LATENCY_ALIGN, LATENCY_HEADER, rate, tail, write_failures, write_noise, write_servers,
};

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fenced(o: &mut String, lang: &str, text: &str) -> std::fmt::Result {
    writeln!(o, "```{lang}\n{}\n```\n", text.trim_end())
}

impl SearchReport {
    pub fn write(&self, o: &mut String) -> std::fmt::Result {
        let scale = if self.patients == TARGET_PATIENTS {
            String::new()
        } else {
            format!(
                " This run has {} patients, not {}: the figures show the method, not whether \
                 the target is met.",
                count(self.patients),
                count(TARGET_PATIENTS)
            )
        };
        writeln!(
            o,
            "Target (issue): p99 under {TARGET_P99_MS:.0} ms for the selective searches on \
             {} patients (about one million resources) on this machine; figures for the broad \
             ones.{scale}\n",
            count(TARGET_PATIENTS)
        )?;

        writeln!(o, "## Loading\n")?;
        writeln!(
            o,
            "One transaction Bundle per patient (`POST /fhir`, `Prefer: return=minimal`): the \
             Patient by PUT with a known id, the rest by POST with `urn:uuid:` references.\n"
        )?;
        writeln!(o, "| server | data |\n|---|---|")?;
        for (server, how) in &self.loads {
            writeln!(o, "| {server} | {how} |")?;
        }
        writeln!(o)?;

        writeln!(o, "## Query kinds\n")?;
        writeln!(
            o,
            "Each kind cycles through its queries (values drawn from the generator, spread over \
             the population); matches are the resources a query must find, per the generator, \
             averaged over the kind's queries.\n"
        )?;
        writeln!(
            o,
            "| kind | selective | example | queries | matches per query |\n|---|---|---|---:|---:|"
        )?;
        for k in &self.kinds {
            writeln!(
                o,
                "| {} | {} | `{}` | {} | {} |",
                k.kind.name(),
                if k.kind.selective() { "yes" } else { "no" },
                k.example,
                k.queries,
                if k.matches >= 100.0 {
                    count(k.matches.round() as u64)
                } else {
                    format!("{:.1}", k.matches)
                }
            )?;
        }
        writeln!(
            o,
            "\n`has` is `_has` over a rare lab code: each of 20 rare LOINC codes is on about \
             0.1 % of patients, so the reverse chain starts from a few Observations. \
             `has-common+family` is the other formulation, `_has` over the most common code \
             with a family name, for comparison.\n"
        )?;

        writeln!(o, "## Latency\n")?;
        writeln!(
            o,
            "With 1 connection a request never waits for another: latency is the search's own. \
             With more, the load is closed-loop on a machine whose 2 cores also run the client \
             (and PostgreSQL): latency then includes queueing, about connections / throughput.\n"
        )?;
        writeln!(
            o,
            "| kind | server | connections | requests/s | {LATENCY_HEADER} | p99 < {TARGET_P99_MS:.0} ms |\n\
             |---|---|---:|---:|{LATENCY_ALIGN}|---|"
        )?;
        for (r, (kind, connections)) in self.rows.iter().zip(&self.measured) {
            let selective = kind.selective();
            let kind = kind.name();
            let target = match (selective, r.rec.ok) {
                (false, _) => "(broad)".to_owned(),
                (true, 0) => "no answers".to_owned(),
                (true, _) if r.rec.quantile_ms(0.99) < TARGET_P99_MS => "met".to_owned(),
                (true, _) => "**missed**".to_owned(),
            };
            writeln!(
                o,
                "| {kind} | {} | {connections} | {} | {} | {target} |",
                r.server,
                rate(r.rec.rate()),
                tail(&r.rec)
            )?;
        }
        for (kind, server, why) in &self.skipped {
            writeln!(
                o,
                "| {kind} | {server} | | not measured: {} | | | | | | |",
                why.replace('|', "\\|")
            )?;
        }
        writeln!(o)?;

        writeln!(o, "## Answers checked\n")?;
        writeln!(
            o,
            "Before each kind is measured, `_summary=count` of some of its queries must equal \
             the generator's count, `_total=accurate` its total, and the `_sort=-date` page must \
             be newest first, starting at the population's latest observation of the code.\n"
        )?;
        for c in &self.checks {
            writeln!(o, "- {c}")?;
        }
        writeln!(o)?;

        self.write_plans(o)?;

        if !self.notes.is_empty() {
            writeln!(o, "## Notes\n")?;
            for n in &self.notes {
                writeln!(o, "- {n}")?;
            }
            writeln!(o)?;
        }
        write_servers(o, &self.servers)?;
        let sections = [("search", &self.rows)];
        write_noise(o, &sections)?;
        write_failures(o, &sections)
    }

    fn write_plans(&self, o: &mut String) -> std::fmt::Result {
        if self.plans.is_empty() {
            return Ok(());
        }
        writeln!(o, "## Query plans\n")?;
        writeln!(
            o,
            "For the first query of each kind: the statements Haven runs (rebuilt by the harness \
             from haven-store's SQL builder, and checked: the PostgreSQL text against what \
             Haven's connection ran, the filter by counting its matches in each database), \
             SQLite's `EXPLAIN QUERY PLAN` (the `sqlite3` shell{}, read-only on the server's \
             `haven.db`; Haven links its own SQLite, whose planner may differ by version; Haven \
             runs no `ANALYZE`, so the planner has no statistics), and PostgreSQL's \
             `EXPLAIN (ANALYZE, BUFFERS)` of the statement prepared with sqlx's argument types, \
             at its first execution: Haven sends search statements unnamed, so PostgreSQL plans \
             each execution for its values, as it does a first one. Line breaks are added to the SQL; placeholders are `?` in \
             SQLite and `$1`, `$2`, ... in PostgreSQL.\n",
            self.sqlite_shell
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default()
        )?;
        for p in &self.plans {
            writeln!(o, "### {}\n", p.kind.name())?;
            writeln!(o, "`GET {}`: matches {}.\n", p.path, count(p.expected))?;
            for b in &p.backends {
                let mut found = match b.server.as_str() {
                    "sqlite" => sqlite_findings(&b.page),
                    // The plan that runs, not the custom plan shown after it.
                    _ => {
                        postgres_findings(b.page.split("\n\nFirst execution").next().unwrap_or(""))
                    }
                };
                if let Some(t) = &b.db_time {
                    found.insert(0, t.clone());
                }
                found.extend(b.highlights.iter().cloned());
                if !found.is_empty() {
                    writeln!(o, "- {}: {}", b.server, found.join("; "))?;
                }
            }
            writeln!(o, "\n<details><summary>Statements and plans</summary>\n")?;
            let statements = if p.statements.haven_counts {
                vec![("Page", &p.statements.page), ("Count", &p.statements.count)]
            } else {
                vec![("Page", &p.statements.page)]
            };
            for (name, stmt) in &statements {
                writeln!(o, "{name} statement:\n")?;
                fenced(o, "sql", &stmt.readable())?;
                let args = stmt
                    .args
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("{} = {}", i + 1, a.describe()))
                    .collect::<Vec<_>>()
                    .join("; ");
                writeln!(o, "Arguments: {args}.\n")?;
            }
            for b in &p.backends {
                writeln!(o, "**{}**\n", b.server)?;
                let label = if p.statements.haven_counts {
                    "Page:\n\n"
                } else {
                    ""
                };
                write!(o, "{label}")?;
                fenced(o, "text", &b.page)?;
                if let Some(c) = &b.count {
                    writeln!(o, "Count:\n")?;
                    fenced(o, "text", c)?;
                }
                let mut lines = b.checks.clone();
                if let Some(t) = &b.db_time {
                    lines.push(t.clone());
                }
                for l in lines {
                    writeln!(o, "- {l}")?;
                }
                writeln!(o)?;
            }
            writeln!(o, "</details>\n")?;
        }
        Ok(())
    }
}

/// Rows a PostgreSQL plan node went through (`rows` times `loops` of its actual figures).
fn node_rows(line: &str) -> Option<u64> {
    let actual = &line[line.find("(actual time=")?..];
    let rows: u64 = actual
        .split("rows=")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let loops: u64 = actual
        .split("loops=")
        .nth(1)?
        .trim_end_matches(')')
        .parse()
        .ok()?;
    Some(rows * loops)
}

/// Node lines of a PostgreSQL plan worth a reader's attention: sequential scans and nodes
/// that handle many rows, and the execution time.
fn postgres_findings(plan: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(t) = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Execution Time: "))
    {
        out.push(format!("executes in {t}"));
    }
    let mut big: Vec<(u64, String)> = plan
        .lines()
        .filter_map(|l| {
            let node = l.trim().trim_start_matches("->").trim();
            let name = node.split("  (").next()?.to_owned();
            let rows = node_rows(node)?;
            (rows >= 10_000 || name.starts_with("Seq Scan")).then_some((rows, name))
        })
        .collect();
    big.sort_by_key(|b| std::cmp::Reverse(b.0));
    for (rows, name) in big.into_iter().take(3) {
        out.push(format!("`{name}` handles {} rows", count(rows)));
    }
    out
}

/// Lines of an SQLite plan that read more than the query needs: full scans, and index
/// searches bounded by the parameter key alone (every row of that parameter).
fn sqlite_findings(plan: &str) -> Vec<String> {
    plan.lines()
        .map(|l| l.trim_start_matches(['|', '`', '-', ' ']))
        .filter(|l| {
            (l.starts_with("SCAN ") && !l.starts_with("SCAN CONSTANT"))
                || l.ends_with("(param=?)")
                || l.ends_with("(resource_type=?)")
        })
        .map(|l| format!("reads a whole index range: `{l}`"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn plans_show_what_reads_too_much() {
        let sqlite = "QUERY PLAN\n|--SEARCH r USING INDEX resource_live (resource_type=? AND rid=?)\n\
                      |--LIST SUBQUERY 3\n|  `--SEARCH i3 USING COVERING INDEX search_date_match (param=?)";
        assert_eq!(
            super::sqlite_findings(sqlite),
            [
                "reads a whole index range: `SEARCH i3 USING COVERING INDEX search_date_match (param=?)`"
            ]
        );
        let pg = "Limit  (cost=1..2 rows=1 width=8) (actual time=0.1..0.2 rows=1 loops=1)\n\
                  ->  Index Scan using search_date_rid on search_date i3  (cost=0.28..1.30 rows=1 width=8) (actual time=0.005..0.005 rows=1 loops=20000)\n\
                  ->  Seq Scan on resource r  (cost=0.00..10.00 rows=10 width=8) (actual time=0.005..0.005 rows=3 loops=1)\n\
                  Execution Time: 12.5 ms";
        assert_eq!(
            super::postgres_findings(pg),
            [
                "executes in 12.5 ms",
                "`Index Scan using search_date_rid on search_date i3` handles 20,000 rows",
                "`Seq Scan on resource r` handles 3 rows"
            ]
        );
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_012_345), "1,012,345");
    }
}
