//! The markdown report: one table per scenario, servers side by side.

use std::fmt::Write;

use crate::load::Recorded;
use crate::machine::Machine;
use crate::scenarios::HISTORY_VERSIONS;
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
}

impl Row {
    pub fn new(server: &str, variant: Option<String>, rec: Recorded, noise: f64) -> Self {
        Self {
            server: server.to_owned(),
            variant,
            rec,
            noise,
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
    pub search: Option<String>,
    pub servers: Vec<ServerRun>,
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn ms(v: f64) -> String {
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
fn tail(rec: &Recorded) -> String {
    format!(
        "{} | {} | {} | {} | {}",
        ms(rec.quantile_ms(0.50)),
        ms(rec.quantile_ms(0.95)),
        ms(rec.quantile_ms(0.99)),
        ms(rec.max_ms()),
        rec.errors
    )
}

const LATENCY_HEADER: &str = "p50 ms | p95 ms | p99 ms | max ms | errors";
const LATENCY_ALIGN: &str = "---:|---:|---:|---:|---:";

impl Report {
    /// Failed interactions over every scenario.
    pub fn errors(&self) -> u64 {
        [&self.read, &self.crud, &self.history, &self.import]
            .iter()
            .flat_map(|rows| rows.iter())
            .map(|r| r.rec.errors)
            .sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, o: &mut String) -> std::fmt::Result {
        writeln!(o, "# Haven benchmark, {}\n", self.date)?;
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
        writeln!(o, "| settings | {} |", self.settings)?;
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
        for d in &self.durability {
            writeln!(o, "| durability | {d} |")?;
        }
        writeln!(
            o,
            "\nLatencies are per HTTP interaction, in milliseconds, over successful interactions that \
             finished inside the measured window. Errors count every transport error or non-2xx \
             answer, warm-up included. Client and servers share the machine's CPUs over loopback.\n"
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

        if let Some(search) = &self.search {
            writeln!(o, "## Search mix\n\n{search}\n")?;
        }

        if !self.servers.is_empty() {
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
            for s in &self.servers {
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
            for s in &self.servers {
                writeln!(
                    o,
                    "| {} | {} | {} | {} | {} |",
                    s.name, s.logs.lines, s.logs.warnings, s.logs.errors, s.stop
                )?;
            }
            for s in &self.servers {
                for (message, count) in &s.logs.messages {
                    writeln!(o, "- {}: {count} × {message}", s.name)?;
                }
            }
            for s in &self.servers {
                if let Some(g) = &s.group_commit {
                    writeln!(
                        o,
                        "\nGroup commit ({}, whole run, from `/metrics`): {g}.",
                        s.name
                    )?;
                }
            }
            writeln!(o)?;
        }

        let noise = [
            ("read", &self.read),
            ("crud", &self.crud),
            ("history", &self.history),
            ("import", &self.import),
        ]
        .into_iter()
        .filter(|(_, rows)| !rows.is_empty())
        .map(|(scenario, rows)| {
            let cells = rows
                .iter()
                .map(|r| {
                    let variant = r
                        .variant
                        .as_deref()
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default();
                    format!("{}{variant} {:.0} %", r.server, 100.0 * r.noise)
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("- {scenario}: {cells}")
        })
        .collect::<Vec<_>>();
        if !noise.is_empty() {
            writeln!(o, "## Other processes\n")?;
            writeln!(
                o,
                "Share of the machine's CPU time that went, during each measurement, to processes \
                 outside the run (not the harness, the server under test or PostgreSQL) or to other \
                 guests of the hypervisor (steal). Above a few percent the figures above are low.\n\n{}\n",
                noise.join("\n")
            )?;
        }

        let failures = [
            ("read", &self.read),
            ("crud", &self.crud),
            ("history", &self.history),
            ("import", &self.import),
        ]
        .into_iter()
        .flat_map(|(scenario, rows)| {
            rows.iter().flat_map(move |r| {
                r.rec.error_samples.iter().map(move |e| {
                    let variant = r
                        .variant
                        .as_deref()
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default();
                    format!("- {scenario}{variant}, {}: {e}", r.server)
                })
            })
        })
        .collect::<Vec<_>>();
        if !failures.is_empty() {
            writeln!(
                o,
                "## Failures (first distinct ones)\n\n{}\n",
                failures.join("\n")
            )?;
        }
        Ok(())
    }
}
