//! The markdown report: one table per scenario, servers side by side.

use std::fmt::Write;

use crate::load::Recorded;
use crate::machine::Machine;
use crate::scenarios::HISTORY_VERSIONS;
use crate::search::SearchReport;
use crate::server::{LogStats, Memory};
use crate::synth::RESOURCES_PER_BUNDLE;

/// One measured line of a table.
#[derive(Debug)]
pub struct Row {
    /// `ceiling`, `sqlite` or `postgres`.
    pub server: String,
    /// What was measured when a scenario has several variants (history).
    pub variant: Option<String>,
    pub rec: Recorded,
    /// Share of the machine's CPU that other processes used meanwhile (0..1).
    pub noise: f64,
    /// CPU time per successful interaction (Haven, PostgreSQL, harness), when gauged.
    pub cpu: Option<crate::cpu::PerInteraction>,
}

impl Row {
    pub fn new(server: &str, variant: Option<String>, rec: Recorded, noise: f64) -> Self {
        Self {
            server: server.to_owned(),
            variant,
            rec,
            noise,
            cpu: None,
        }
    }
}

/// What is known about one server process after its run.
#[derive(Debug, Default)]
pub struct ServerRun {
    pub name: String,
    pub idle: Memory,
    pub peak: Memory,
    pub logs: LogStats,
    /// Group-commit figures from `/metrics`, when the store reports them.
    pub group_commit: Option<String>,
    pub stop: String,
}

/// Everything the report says.
#[derive(Debug, Default)]
pub struct Report {
    pub date: String,
    pub commit: String,
    pub machine: Option<Machine>,
    pub load_before: String,
    pub settings: String,
    pub log_level: String,
    pub durability: Vec<String>,
    pub read: Vec<Row>,
    pub read_body: Vec<(String, usize)>,
    pub crud: Vec<Row>,
    pub history: Vec<Row>,
    pub import: Vec<Row>,
    pub import_note: String,
    pub servers: Vec<ServerRun>,
    /// The search scenario, reported in a section of its own.
    pub search: Option<SearchReport>,
}

pub(crate) fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub(crate) fn ms(v: f64) -> String {
    match v {
        v if v < 1.0 => format!("{v:.3}"),
        v if v < 10.0 => format!("{v:.2}"),
        v if v < 100.0 => format!("{v:.1}"),
        v => format!("{v:.0}"),
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The latency and error cells shared by every table.
pub(crate) fn tail(rec: &Recorded) -> String {
    format!(
        "{} | {} | {} | {} | {}",
        ms(rec.quantile_ms(0.50)),
        ms(rec.quantile_ms(0.95)),
        ms(rec.quantile_ms(0.99)),
        ms(rec.max_ms()),
        rec.errors
    )
}

pub(crate) const LATENCY_HEADER: &str = "p50 ms | p95 ms | p99 ms | max ms | errors";
pub(crate) const LATENCY_ALIGN: &str = "---:|---:|---:|---:|---:";

impl Report {
    /// Failed interactions over every scenario.
    pub fn errors(&self) -> u64 {
        let search = self.search.as_ref().map_or(0, |s| {
            s.check_failures + s.rows.iter().map(|r| r.rec.errors).sum::<u64>()
        });
        [&self.read, &self.crud, &self.history, &self.import]
            .iter()
            .flat_map(|rows| rows.iter())
            .map(|r| r.rec.errors)
            .sum::<u64>()
            + search
    }

    /// The report of every scenario but search.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    /// The search section, with a header of its own (it is spliced into its own place).
    pub fn render_search(&self) -> String {
        let mut out = String::new();
        if let Some(search) = &self.search {
            let _ = self.header(
                &mut out,
                "Haven search benchmark",
                &[
                    ("population", search.population.as_str()),
                    ("settings", search.settings.as_str()),
                ],
                &search.durability,
            );
            let _ = search.write(&mut out);
        }
        out
    }

    /// The title and the table of where and how the run happened.
    fn header(
        &self,
        o: &mut String,
        title: &str,
        rows: &[(&str, &str)],
        durability: &[String],
    ) -> std::fmt::Result {
        writeln!(o, "# {title}, {}\n", self.date)?;
        writeln!(o, "| | |\n|---|---|")?;
        writeln!(o, "| commit | {} |", self.commit)?;
        if let Some(m) = &self.machine {
            writeln!(
                o,
                "| machine | {} CPUs ({}), {:.1} GiB RAM, Linux {} |",
                m.cpus, m.cpu_model, m.memory_gib, m.kernel
            )?;
        }
        writeln!(
            o,
            "| load average before the run | {} (1 min) |",
            self.load_before
        )?;
        for (name, value) in rows {
            writeln!(o, "| {name} | {value} |")?;
        }
        let per_request = if self.log_level == "info" {
            ": one line per request"
        } else {
            ""
        };
        writeln!(
            o,
            "| Haven logging | `{}`, JSON{per_request}, read and discarded by the harness |",
            self.log_level
        )?;
        for d in durability {
            writeln!(o, "| durability | {d} |")?;
        }
        writeln!(
            o,
            "\nLatencies are per HTTP interaction, in milliseconds, over successful interactions that \
             finished inside the measured window. Errors count every transport error or non-2xx \
             answer, warm-up included. Client and servers share the machine's CPUs over loopback.\n"
        )
    }

    fn write(&self, o: &mut String) -> std::fmt::Result {
        self.header(
            o,
            "Haven benchmark",
            &[("settings", self.settings.as_str())],
            &self.durability,
        )?;

        if !self.read.is_empty() {
            writeln!(o, "## Read by id\n")?;
            let sizes = self
                .read_body
                .iter()
                .map(|(s, n)| format!("{s} {n} B"))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(
                o,
                "`GET /fhir/Patient/{{id}}` of one Patient; response body: {sizes}.\n"
            )?;
            writeln!(
                o,
                "| server | requests/s | {LATENCY_HEADER} |\n|---|---:|{LATENCY_ALIGN}|"
            )?;
            for r in &self.read {
                let name = if r.server == "ceiling" {
                    "ceiling (trivial axum handler)"
                } else {
                    &r.server
                };
                writeln!(o, "| {name} | {} | {} |", rate(r.rec.rate()), tail(&r.rec))?;
            }
            if let Some(ceiling) = self.read.iter().find(|r| r.server == "ceiling") {
                let ratios = self
                    .read
                    .iter()
                    .filter(|r| r.server != "ceiling" && ceiling.rec.rate() > 0.0)
                    .map(|r| {
                        format!(
                            "{} = {:.0} % of the ceiling",
                            r.server,
                            100.0 * r.rec.rate() / ceiling.rec.rate()
                        )
                    })
                    .collect::<Vec<_>>();
                if !ratios.is_empty() {
                    writeln!(o, "\nRead by id: {}.", ratios.join("; "))?;
                }
            }
            writeln!(o)?;
        }

        for (suffix, what, flag, title) in [
            (
                " (audit off)",
                "audit",
                "--benchmark-without-audit",
                "What auditing costs",
            ),
            (
                " (encryption off)",
                "encryption",
                "--benchmark-without-encryption",
                "What encryption at rest costs",
            ),
        ] {
            let costs = costs(&[("read by id", &self.read), ("CRUD", &self.crud)], suffix);
            if costs.is_empty() {
                continue;
            }
            writeln!(o, "## {title}\n")?;
            writeln!(
                o,
                "The same build started with `{flag}`, measured in the same run. Throughput \
                 with {what}, as a share of throughput without; the target is at least 85 %. \
                 Server CPU: what Haven and, on PostgreSQL, the `postgres` processes (the \
                 benchmark database's backends and the cluster's background processes) used per \
                 successful interaction in the measured windows (from `/proc`), with {what} and \
                 without; \"added\" is the difference, what {what} costs each interaction.\n"
            )?;
            writeln!(
                o,
                "| backend | scenario | with {what} | without | share | server CPU µs, with / without | added |\n|---|---|---:|---:|---:|---:|---:|"
            )?;
            for (backend, scenario, on, off) in costs {
                let (on_rate, off_rate) = (on.rec.rate(), off.rec.rate());
                let cpu = match (on.cpu, off.cpu) {
                    (Some(a), Some(b)) => format!(
                        "{:.0} / {:.0} | {:+.0} µs",
                        a.server_side(),
                        b.server_side(),
                        a.server_side() - b.server_side()
                    ),
                    _ => "— | —".to_owned(),
                };
                writeln!(
                    o,
                    "| {backend} | {scenario} | {} | {} | {:.0} % | {cpu} |",
                    rate(on_rate),
                    rate(off_rate),
                    100.0 * on_rate / off_rate
                )?;
            }
            writeln!(o)?;
        }

        let gauged: Vec<(&str, &Row, crate::cpu::PerInteraction)> = [
            ("read by id", &self.read),
            ("CRUD", &self.crud),
            ("history", &self.history),
            ("import", &self.import),
        ]
        .into_iter()
        .flat_map(|(scenario, rows)| {
            rows.iter()
                .filter_map(move |r| r.cpu.map(|c| (scenario, r, c)))
        })
        .collect();
        if !gauged.is_empty() {
            writeln!(o, "## CPU per interaction\n")?;
            writeln!(
                o,
                "CPU time per successful interaction in the measured windows, from `/proc/<pid>/stat` \
                 (clock ticks, summed over the slices): Haven's process; the `postgres` \
                 processes that are not client backends of another database (the benchmark \
                 database's backends, and the background processes of every cluster on the \
                 host); the load generator, which also reads Haven's standard output (its log \
                 lines and, with audit on, the ECS audit lines). For import an interaction is \
                 one Bundle.\n"
            )?;
            writeln!(
                o,
                "| server | scenario | Haven µs | PostgreSQL µs | load generator µs |\n|---|---|---:|---:|---:|"
            )?;
            for (scenario, r, c) in gauged {
                let scenario = match &r.variant {
                    Some(v) => format!("{scenario} ({v})"),
                    None => scenario.to_owned(),
                };
                let pg = if r.server.starts_with("postgres") {
                    format!("{:.0}", c.postgres)
                } else {
                    "—".to_owned()
                };
                writeln!(
                    o,
                    "| {} | {scenario} | {:.0} | {pg} | {:.0} |",
                    r.server, c.server, c.harness
                )?;
            }
            writeln!(o)?;
        }

        if !self.crud.is_empty() {
            writeln!(o, "## CRUD: one clinical episode per cycle\n")?;
            writeln!(
                o,
                "Organization, Practitioner, Location, Patient, Encounter, Observation, \
                 MedicationRequest, Coverage and Claim, linked by references; each created (POST), \
                 read (GET), updated (PUT with `If-Match`) and deleted (DELETE): 36 interactions per \
                 cycle. Latency is per interaction.\n"
            )?;
            writeln!(
                o,
                "| server | interactions/s | cycles/s | {LATENCY_HEADER} |\n|---|---:|---:|{LATENCY_ALIGN}|"
            )?;
            for r in &self.crud {
                writeln!(
                    o,
                    "| {} | {} | {} | {} |",
                    r.server,
                    rate(r.rec.rate()),
                    rate(r.rec.iteration_rate()),
                    tail(&r.rec)
                )?;
            }
            writeln!(o)?;
        }

        if !self.history.is_empty() {
            writeln!(o, "## History\n")?;
            writeln!(
                o,
                "Instance: `GET /fhir/Patient/{{id}}/_history` of a Patient with {HISTORY_VERSIONS} \
                 versions. Type: `GET /fhir/Patient/_history?_count=50`, a full first page.\n"
            )?;
            writeln!(
                o,
                "| server | query | requests/s | {LATENCY_HEADER} |\n|---|---|---:|{LATENCY_ALIGN}|"
            )?;
            for r in &self.history {
                writeln!(
                    o,
                    "| {} | {} | {} | {} |",
                    r.server,
                    r.variant.as_deref().unwrap_or(""),
                    rate(r.rec.rate()),
                    tail(&r.rec)
                )?;
            }
            writeln!(o)?;
        }

        if !self.import.is_empty() {
            writeln!(o, "## Import: transaction Bundles\n")?;
            writeln!(o, "{}\n", self.import_note)?;
            writeln!(
                o,
                "| server | resources/s | bundles/s | {LATENCY_HEADER} |\n|---|---:|---:|{LATENCY_ALIGN}|"
            )?;
            for r in &self.import {
                writeln!(
                    o,
                    "| {} | {} | {} | {} |",
                    r.server,
                    rate(r.rec.unit_rate()),
                    rate(r.rec.rate()),
                    tail(&r.rec)
                )?;
            }
            writeln!(
                o,
                "\n({RESOURCES_PER_BUNDLE} resources per Bundle; latency is per Bundle.)\n"
            )?;
        }

        writeln!(
            o,
            "## Search\n\nThe search benchmark has a report of its own (`bench/out/latest-search.md`, \
             the Search section of docs/PERFORMANCE.md): it loads a population first \
             (`bench/run --scenarios search --patients 100000`).\n"
        )?;

        write_servers(o, &self.servers)?;
        let sections = [
            ("read", &self.read),
            ("crud", &self.crud),
            ("history", &self.history),
            ("import", &self.import),
        ];
        write_noise(o, &sections)?;
        write_failures(o, &sections)?;
        Ok(())
    }
}

/// Memory and logs of each server process.
pub(crate) fn write_servers(o: &mut String, servers: &[ServerRun]) -> std::fmt::Result {
    if servers.is_empty() {
        return Ok(());
    }
    writeln!(o, "## Memory\n")?;
    writeln!(
        o,
        "Resident memory of each server process (PostgreSQL's own processes are not counted).\n"
    )?;
    writeln!(
        o,
        "| server | idle (VmRSS before load) | peak (VmHWM after all scenarios) |"
    )?;
    writeln!(o, "|---|---:|---:|")?;
    for s in servers {
        writeln!(
            o,
            "| {} | {} | {} |",
            s.name,
            mib(s.idle.rss_kib),
            mib(s.peak.hwm_kib)
        )?;
    }
    writeln!(o, "\n## Server logs\n")?;
    writeln!(
        o,
        "| server | log lines | warnings | errors | stop |\n|---|---:|---:|---:|---|"
    )?;
    for s in servers {
        writeln!(
            o,
            "| {} | {} | {} | {} | {} |",
            s.name, s.logs.lines, s.logs.warnings, s.logs.errors, s.stop
        )?;
    }
    for s in servers {
        for (message, count) in &s.logs.messages {
            writeln!(o, "- {}: {count} × {message}", s.name)?;
        }
    }
    for s in servers {
        if let Some(g) = &s.group_commit {
            writeln!(
                o,
                "\nGroup commit ({}, whole run, from `/metrics`): {g}.",
                s.name
            )?;
        }
    }
    writeln!(o)
}

fn variant_suffix(r: &Row) -> String {
    r.variant
        .as_deref()
        .map(|v| format!(" ({v})"))
        .unwrap_or_default()
}

/// The share of the machine other processes took during each measurement.
pub(crate) fn write_noise(o: &mut String, sections: &[(&str, &Vec<Row>)]) -> std::fmt::Result {
    let noise = sections
        .iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(scenario, rows)| {
            let cells = rows
                .iter()
                .map(|r| format!("{}{} {:.0} %", r.server, variant_suffix(r), 100.0 * r.noise))
                .collect::<Vec<_>>()
                .join(", ");
            format!("- {scenario}: {cells}")
        })
        .collect::<Vec<_>>();
    if noise.is_empty() {
        return Ok(());
    }
    writeln!(o, "## Other processes\n")?;
    writeln!(
        o,
        "Share of the machine's CPU time that went, during each measurement, to processes \
         outside the run (not the harness, the server under test or PostgreSQL) or to other \
         guests of the hypervisor (steal). Above a few percent the figures above are low.\n\n{}\n",
        noise.join("\n")
    )
}

/// The first distinct failures of each measurement.
pub(crate) fn write_failures(o: &mut String, sections: &[(&str, &Vec<Row>)]) -> std::fmt::Result {
    let failures = sections
        .iter()
        .flat_map(|(scenario, rows)| {
            rows.iter().flat_map(move |r| {
                r.rec
                    .error_samples
                    .iter()
                    .map(move |e| format!("- {scenario}{}, {}: {e}", variant_suffix(r), r.server))
            })
        })
        .collect::<Vec<_>>();
    if failures.is_empty() {
        return Ok(());
    }
    writeln!(
        o,
        "## Failures (first distinct ones)\n\n{}\n",
        failures.join("\n")
    )
}

/// (backend, scenario, row as shipped, row with one cost off) for each backend measured both
/// ways; `suffix` names the variant (" (audit off)").
fn costs<'a>(
    tables: &[(&str, &'a Vec<Row>)],
    suffix: &str,
) -> Vec<(String, String, &'a Row, &'a Row)> {
    let mut out = Vec::new();
    for (scenario, rows) in tables {
        for off in rows.iter().filter(|r| r.server.ends_with(suffix)) {
            let backend = off.server.trim_end_matches(suffix);
            if let Some(on) = rows.iter().find(|r| r.server == backend)
                && off.rec.rate() > 0.0
            {
                out.push((backend.to_owned(), (*scenario).to_owned(), on, off));
            }
        }
    }
    out
}
