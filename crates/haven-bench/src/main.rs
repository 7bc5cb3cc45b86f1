//! `haven-bench`: Haven's benchmark harness.
//!
//! One run measures every selected server side by side on this machine, over loopback: the
//! trivial-handler ceiling (`crates/haven-http/examples/ceiling.rs`, the fastest a read could be
//! with the same runtime and HTTP stack) and Haven on each storage backend, each started fresh by
//! the harness. Each scenario runs a bounded time with a fixed number of connections; the result
//! is a markdown report on stdout and in `bench/out/`. `bench/README.md` explains how to read it.
//!
//! The harness depends on no Haven crate on purpose: it sees Haven only as a client would, over
//! HTTP, so it measures the shipped binary and cannot reach around the API.

mod auth;
mod clinical;
mod cpu;
mod load;
mod machine;
mod postgres;
mod report;
mod scenarios;
mod search;
mod server;
mod synth;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};

use crate::auth::Bearer;
use crate::load::{Recorded, Shape};
use crate::report::{Report, Row, ServerRun};
use crate::scenarios::{FHIR, Setup, Workload};
use crate::server::{HavenOptions, Server};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Read,
    Crud,
    History,
    Import,
    /// The search benchmark: loads a population (`--patients`), then measures each query kind.
    Search,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Benchmark Haven against the trivial-handler ceiling, side by side, on loopback.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Seconds measured per scenario and server.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// Seconds of load before measuring starts (run, not recorded).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=600))]
    warmup: u64,
    /// Concurrent connections, each with one request in flight.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    connections: u64,
    /// Concurrent connections for the import scenario (each Bundle is 100 resources).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    import_connections: u64,
    /// Threads of the load generator (default: the number of CPUs).
    #[arg(long)]
    client_threads: Option<usize>,
    /// Scenarios to run, in this order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "read,crud,history,import"
    )]
    scenarios: Vec<Scenario>,
    /// Storage backends of Haven to measure.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<Backend>,
    /// The Haven release binary.
    #[arg(long, default_value = "target/release/haven")]
    haven_bin: PathBuf,
    /// The ceiling server (`cargo build --release -p haven-http --example ceiling`).
    #[arg(long, default_value = "target/release/examples/ceiling")]
    ceiling_bin: PathBuf,
    /// A PostgreSQL server where the harness may create and drop a database.
    #[arg(
        long,
        env = "HAVEN_TEST_POSTGRES_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Directory for the reports (`results-<time>.md` and `latest.md`).
    #[arg(long, default_value = "bench/out")]
    out: PathBuf,
    /// Also measure each backend with audit records turned off (`haven serve
    /// --benchmark-without-audit`), and report what auditing costs.
    #[arg(long)]
    audit_cost: bool,
    /// Also measure each backend with encryption at rest turned off (`haven serve
    /// --benchmark-without-encryption`), and report what encryption costs.
    #[arg(long)]
    encryption_cost: bool,
    /// With --audit-cost or --encryption-cost, each scenario's window is cut into this many
    /// slices, taken in turn on each variant of a backend (all running at once), so that the
    /// machine's drift from minute to minute weighs on every variant alike.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Haven's log level (`info`, its default, writes one line per request).
    #[arg(long, default_value = "info")]
    haven_log_level: String,
    /// Lifetime in seconds of the access tokens Haven issues to the load clients (Haven allows
    /// 60-900); the harness fetches a new one at 4/5 of it, so runs of any length stay
    /// authorised.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(60..=900))]
    token_seconds: u64,
    /// Seed of the synthetic patients imported, and of the search population.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Search: patients in the population (about 10 resources each). The target is stated for
    /// 100000.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    patients: u64,
    /// Search: keep the loaded population in DIR (SQLite data directory, notes) and in a
    /// PostgreSQL database named after it, and reuse it (or resume its loading) next time.
    #[arg(long, value_name = "DIR")]
    reuse_data: Option<PathBuf>,
    /// Search: connections loading the population, one patient Bundle in flight each.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    load_connections: u64,
    /// Search: connections of the measurements; each kind is measured once per value (1: a
    /// search's own latency; more: under load, queueing included).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16",
        value_parser = clap::value_parser!(u64).range(1..=1024)
    )]
    search_connections: Vec<u64>,
    /// Search: query kinds to measure, in this order. Broad kinds go last: on SQLite a query
    /// that runs for minutes keeps running on one of the server's readers after the client
    /// gave up, and would slow every kind measured after it.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "identifier,family+birthdate,obs-subject-code-date,has,has-common+family,total-accurate,sort-large"
    )]
    search_kinds: Vec<search::queries::Kind>,
}

fn main() -> ExitCode {
    // The workspace's reqwest has rustls without a crypto provider: use aws-lc-rs, like haven.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let threads = args
        .client_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
        .max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("haven-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = bench(args, threads) => result,
            // Dropping the benchmark future runs the guards: servers stop, databases are dropped.
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; servers stopped, temporary data removed")),
        }
    });
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(errors) => {
            eprintln!("haven-bench: {errors} interactions failed; see the report");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("haven-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn require_file(path: &Path, build: &str) -> anyhow::Result<()> {
    if !path.is_file() {
        bail!(
            "{} not found; build it with `{build}` (bench/run does)",
            path.display()
        );
    }
    Ok(())
}

pub(crate) fn progress(server: &str, what: &str, rec: &Recorded) {
    eprintln!(
        "  {server:<8} {what:<24} {:>9.1}/s  p50 {:.2} ms  p99 {:.2} ms  errors {}",
        rec.rate(),
        rec.quantile_ms(0.5),
        rec.quantile_ms(0.99),
        rec.errors
    );
}

/// Runs one measurement and gauges how much CPU other processes took meanwhile.
pub(crate) async fn measure(
    workload: Workload,
    base: &str,
    bearer: &Bearer,
    shape: Shape,
    ours: cpu::Ours<'_>,
) -> anyhow::Result<(Recorded, f64)> {
    let before = cpu::sample(ours);
    let rec = load::run(Arc::new(workload), base, bearer, shape).await?;
    Ok((rec, cpu::others_share(before, cpu::sample(ours))))
}

/// Load shapes of a run.
#[derive(Debug, Clone, Copy)]
struct Shapes {
    normal: Shape,
    import: Shape,
}

/// Runs everything; returns the number of failed interactions.
async fn bench(args: Args, threads: usize) -> anyhow::Result<u64> {
    if !args.backends.is_empty() {
        require_file(&args.haven_bin, "cargo build --release -p haven")?;
    }
    if args.scenarios.contains(&Scenario::Read) {
        require_file(
            &args.ceiling_bin,
            "cargo build --release -p haven-http --example ceiling",
        )?;
    }
    let pg_version = if args.backends.contains(&Backend::Postgres) {
        Some(postgres::check(&args.postgres_url)?)
    } else {
        None
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;

    let now = time::OffsetDateTime::now_utc();
    let normal = Shape {
        connections: usize::try_from(args.connections)?,
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration),
    };
    let shapes = Shapes {
        normal,
        import: Shape {
            connections: usize::try_from(args.import_connections)?,
            ..normal
        },
    };
    let mut report = Report {
        date: now
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .unwrap_or_default(),
        commit: machine::git_commit(),
        machine: Some(machine::Machine::probe()),
        load_before: machine::load_average(),
        settings: format!(
            "{} s measured per scenario and server after {} s warm-up; {} connections (import: {}); \
             load generator: haven-bench, {threads} threads, HTTP/1.1 keep-alive, one request in \
             flight per connection; every request to Haven carries a bearer access token that \
             Haven checks, as in service (a `system/*.cruds` backend client, `private_key_jwt`; \
             tokens live {} s, renewed at 4/5 of that){}",
            args.duration,
            args.warmup,
            args.connections,
            args.import_connections,
            args.token_seconds,
            if args.audit_cost || args.encryption_cost {
                format!(
                    "; the variants of a backend run at once and are measured in turn, each \
                     window cut into {} slices (A B C, then C B A, ...; every slice after the \
                     first has its own {} ms warm-up), so that the machine's drift weighs on \
                     each alike",
                    args.rounds,
                    SLICE_WARMUP.as_millis()
                )
            } else {
                String::new()
            }
        ),
        import_note: format!(
            "Each Bundle is one synthetic patient: 1 Patient, 5 Encounter, 80 Observation, \
             5 Condition, 5 MedicationRequest, 2 Procedure and 2 Immunization, linked by \
             `urn:uuid:` references, generated from seed {}; posted to `/fhir` as a transaction \
             with `Prefer: return=minimal`.",
            args.seed
        ),
        log_level: args.haven_log_level.clone(),
        ..Report::default()
    };
    eprintln!(
        "haven-bench: {} s per scenario, {} connections, scenarios {:?}, backends {:?}",
        args.duration, args.connections, args.scenarios, args.backends
    );

    // bench/run splices whichever of these this run writes: remove those of an earlier run.
    let latest = args.out.join("latest.md");
    let latest_search = args.out.join("latest-search.md");
    for stale in [&latest, &latest_search] {
        if stale.exists() {
            std::fs::remove_file(stale)
                .with_context(|| format!("cannot remove {}", stale.display()))?;
        }
    }

    if args.scenarios.contains(&Scenario::Read) {
        measure_ceiling(&args, shapes, &mut report).await?;
    }
    let main_scenarios = args.scenarios.iter().any(|s| *s != Scenario::Search);
    if main_scenarios {
        for &backend in &args.backends {
            let mut variants = vec![Variant::Full];
            if args.audit_cost {
                variants.push(Variant::AuditOff);
            }
            if args.encryption_cost {
                variants.push(Variant::EncryptionOff);
            }
            measure_haven(
                &args,
                backend,
                &variants,
                pg_version.as_deref(),
                shapes,
                &mut report,
            )
            .await?;
        }
    }
    if args.scenarios.contains(&Scenario::Search) {
        measure_search(&args, pg_version.as_deref(), shapes, &mut report).await?;
    }

    let mut text = String::new();
    if main_scenarios {
        let main = report.render();
        std::fs::write(&latest, &main)?;
        text.push_str(&main);
    }
    if report.search.is_some() {
        let search = report.render_search();
        std::fs::write(&latest_search, &search)?;
        text.push_str(&search);
    }
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let file = args.out.join(format!("results-{stamp}.md"));
    std::fs::write(&file, &text).with_context(|| format!("cannot write {}", file.display()))?;
    println!("{text}");
    eprintln!("haven-bench: report written to {}", file.display());
    Ok(report.errors())
}

/// The read scenario against the trivial-handler ceiling.
async fn measure_ceiling(args: &Args, shapes: Shapes, report: &mut Report) -> anyhow::Result<()> {
    let mut ceiling = Server::ceiling(&args.ceiling_bin)?;
    let base = ceiling.base_url();
    let idle = ceiling.memory()?;
    // The ceiling answers any id with the same Patient.
    let path = format!("{FHIR}/Patient/5b0c1a7e-7d3c-4c36-9d0b-2f3e4a5b6c7d");
    let bearer = Bearer::none();
    let size = Setup::new(&base, &bearer)?.body_size(&path).await?;
    report.read_body.push(("ceiling".into(), size));
    let ours = cpu::Ours {
        server: ceiling.pid(),
        postgres_db: None,
    };
    let (rec, noise) = measure(Workload::Get { path }, &base, &bearer, shapes.normal, ours).await?;
    progress("ceiling", "read", &rec);
    report.read.push(Row::new("ceiling", None, rec, noise));
    let peak = ceiling.memory().unwrap_or_default();
    let stop = ceiling.stop()?;
    report.servers.push(ServerRun {
        name: "ceiling".into(),
        idle,
        peak,
        logs: ceiling.logs(),
        group_commit: None,
        stop,
    });
    Ok(())
}

/// Which build of Haven a run measures: as shipped, or with one cost switched off.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Full,
    AuditOff,
    EncryptionOff,
}

/// A Haven the harness started, with what measuring it needs: its address, a bearer for its
/// clients, a setup client and its memory when idle.
pub(crate) struct Running {
    pub(crate) server: Server,
    pub(crate) base: String,
    pub(crate) bearer: Bearer,
    pub(crate) setup: Setup,
    pub(crate) idle: server::Memory,
}

impl Running {
    /// `haven serve` on a free loopback port (see [`Server::haven`]), announced as `label`.
    pub(crate) fn start(
        bin: &Path,
        data_dir: &Path,
        database_url: Option<&str>,
        client_key: &Path,
        options: HavenOptions<'_>,
        label: &str,
    ) -> anyhow::Result<Self> {
        let server = Server::haven(bin, data_dir, database_url, client_key, options)?;
        let base = server.base_url();
        let bearer = server.bearer().clone();
        let setup = Setup::new(&base, &bearer)?;
        let idle = server.memory()?;
        eprintln!("{label}: Haven at {base}");
        Ok(Self {
            server,
            base,
            bearer,
            setup,
            idle,
        })
    }
}

/// One Haven under test: a variant, its server and what the scenarios need of it.
struct Instance {
    label: String,
    // Field order is drop order: the server stops before its database and directory go.
    server: Server,
    database: Option<postgres::Database>,
    temp: tempfile::TempDir,
    base: String,
    bearer: Bearer,
    setup: Setup,
    idle: server::Memory,
}

impl Instance {
    fn start(args: &Args, backend: Backend, variant: Variant) -> anyhow::Result<Self> {
        let label = match variant {
            Variant::Full => backend.name().to_owned(),
            Variant::AuditOff => format!("{} (audit off)", backend.name()),
            Variant::EncryptionOff => format!("{} (encryption off)", backend.name()),
        };
        let temp = tempfile::Builder::new()
            .prefix("haven-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let database = match backend {
            Backend::Postgres => Some(postgres::Database::create(&args.postgres_url)?),
            Backend::Sqlite => None,
        };
        let Running {
            server,
            base,
            bearer,
            setup,
            idle,
        } = Running::start(
            &args.haven_bin,
            &temp.path().join("data"),
            database.as_ref().map(|d| d.url.as_str()),
            &temp.path().join("bench-client.pem"),
            HavenOptions {
                log_level: &args.haven_log_level,
                audit: variant != Variant::AuditOff,
                encryption: variant != Variant::EncryptionOff,
                token_seconds: args.token_seconds,
            },
            &label,
        )?;
        Ok(Self {
            label,
            server,
            database,
            temp,
            base,
            bearer,
            setup,
            idle,
        })
    }

    fn ours(&self) -> cpu::Ours<'_> {
        cpu::Ours {
            server: self.server.pid(),
            postgres_db: self.database.as_ref().map(|d| d.name.as_str()),
        }
    }
}

/// Warm-up of every slice after a server's first: meant to let the background work the previous
/// slice left on another server (the audit sealer runs every 200 ms) end before this one is
/// measured. Not measured itself; PostgreSQL's work for the shared cluster may still spill over.
const SLICE_WARMUP: Duration = Duration::from_millis(500);

/// Measures one workload on every instance. With several instances (variants of one backend),
/// the window is cut into `rounds` slices taken in turn, A B C, then C B A, and so on: this
/// machine's speed drifts by tens of percent from minute to minute, and variants measured one
/// after the other would carry that drift into their ratio. Interleaved, a slow spell weighs on
/// each alike, and reversing the order every round keeps a steady drift from favouring one
/// place in it.
async fn measure_all(
    instances: &[Instance],
    workloads: Vec<Workload>,
    shape: Shape,
    rounds: u32,
) -> anyhow::Result<Vec<Measured>> {
    let workloads: Vec<Arc<Workload>> = workloads.into_iter().map(Arc::new).collect();
    let rounds = if instances.len() > 1 {
        rounds.max(1)
    } else {
        1
    };
    let hz = cpu::ticks_per_second();
    // Per instance: the measurement so far, its noise share weighted by slice length, the
    // slices' total length, and the CPU ticks each part of the run spent in measured windows.
    let mut totals: Vec<Option<(Recorded, f64, f64, cpu::Parts)>> =
        instances.iter().map(|_| None).collect();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..instances.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let instance = &instances[i];
            let slice = Shape {
                warmup: if round == 0 {
                    shape.warmup
                } else {
                    SLICE_WARMUP
                },
                duration: shape.duration / rounds,
                ..shape
            };
            // The noise gauge covers the slice's warm-up too; the CPU per interaction only
            // the measured window, whose interactions are the ones counted.
            let length = (slice.warmup + slice.duration).as_secs_f64();
            let ours = instance.ours();
            let before = cpu::sample(ours);
            let window_start = tokio::time::Instant::now() + slice.warmup;
            let window = async {
                tokio::time::sleep_until(window_start).await;
                let start = cpu::sample(ours);
                tokio::time::sleep_until(window_start + slice.duration).await;
                cpu::parts_between(start, cpu::sample(ours))
            };
            let (rec, ticks) = tokio::join!(
                load::run(
                    workloads[i].clone(),
                    &instance.base,
                    &instance.bearer,
                    slice,
                ),
                window
            );
            let rec = rec?;
            let noise = cpu::others_share(before, cpu::sample(ours)) * length;
            totals[i] = Some(match totals[i].take() {
                None => (rec, noise, length, ticks),
                Some((mut total, n, l, mut t)) => {
                    total.append(rec)?;
                    t.add(ticks);
                    (total, n + noise, l + length, t)
                }
            });
        }
    }
    Ok(totals
        .into_iter()
        .flatten()
        .map(|(rec, noise, length, ticks)| {
            let cpu = cpu::PerInteraction::of(ticks, rec.ok, hz);
            Measured {
                rec,
                noise: noise / length,
                cpu,
            }
        })
        .collect())
}

/// One instance's measurement of one workload.
struct Measured {
    rec: Recorded,
    /// Share of the machine's CPU other processes used meanwhile (0..1).
    noise: f64,
    /// CPU time per successful interaction of Haven, PostgreSQL and the harness, over the
    /// measured windows.
    cpu: Option<cpu::PerInteraction>,
}

/// Reports one measurement of every instance: a progress line each, and their rows.
fn rows(
    instances: &[Instance],
    results: Vec<Measured>,
    what: &str,
    variant: Option<&str>,
    out: &mut Vec<Row>,
) {
    for (instance, m) in instances.iter().zip(results) {
        progress(&instance.label, what, &m.rec);
        let mut row = Row::new(&instance.label, variant.map(str::to_owned), m.rec, m.noise);
        row.cpu = m.cpu;
        out.push(row);
    }
}

/// Every selected scenario against a fresh Haven per variant on `backend`, the variants
/// measured side by side (see [`measure_all`]).
async fn measure_haven(
    args: &Args,
    backend: Backend,
    variants: &[Variant],
    pg_version: Option<&str>,
    shapes: Shapes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut instances = Vec::with_capacity(variants.len());
    for &variant in variants {
        instances.push(Instance::start(args, backend, variant)?);
    }
    let rounds = args.rounds;
    for &scenario in &args.scenarios {
        match scenario {
            Scenario::Read => {
                let mut workloads = Vec::new();
                for instance in &instances {
                    let id = instance.setup.read_target().await?;
                    let path = format!("{FHIR}/Patient/{id}");
                    report.read_body.push((
                        instance.label.clone(),
                        instance.setup.body_size(&path).await?,
                    ));
                    workloads.push(Workload::Get { path });
                }
                let results = measure_all(&instances, workloads, shapes.normal, rounds).await?;
                rows(&instances, results, "read", None, &mut report.read);
            }
            Scenario::Crud => {
                let workloads = instances.iter().map(|_| Workload::Crud).collect();
                let results = measure_all(&instances, workloads, shapes.normal, rounds).await?;
                rows(
                    &instances,
                    results,
                    "crud (interactions)",
                    None,
                    &mut report.crud,
                );
            }
            Scenario::History => {
                let mut targets = Vec::new();
                for instance in &instances {
                    targets.push(instance.setup.history_target().await?);
                }
                let kinds = [
                    (
                        format!("instance, {} versions", scenarios::HISTORY_VERSIONS),
                        None,
                    ),
                    (
                        "type, _count=50".to_owned(),
                        Some("/Patient/_history?_count=50"),
                    ),
                ];
                for (kind, fixed) in kinds {
                    let workloads = targets
                        .iter()
                        .map(|id| Workload::Get {
                            path: match fixed {
                                Some(p) => format!("{FHIR}{p}"),
                                None => format!("{FHIR}/Patient/{id}/_history"),
                            },
                        })
                        .collect();
                    let results = measure_all(&instances, workloads, shapes.normal, rounds).await?;
                    rows(
                        &instances,
                        results,
                        &format!("history {kind}"),
                        Some(&kind),
                        &mut report.history,
                    );
                }
            }
            Scenario::Import => {
                let workloads = instances
                    .iter()
                    .map(|_| Workload::Import { seed: args.seed })
                    .collect();
                let results = measure_all(&instances, workloads, shapes.import, rounds).await?;
                rows(
                    &instances,
                    results,
                    "import (bundles)",
                    None,
                    &mut report.import,
                );
            }
            // Run on a server of its own, after the others (see `search`).
            Scenario::Search => {}
        }
    }

    for mut instance in instances {
        let peak = instance.server.memory().unwrap_or_default();
        let group_commit = instance
            .setup
            .metrics()
            .await
            .as_deref()
            .and_then(group_commit);
        // One line per backend: the variants of a backend share its settings.
        let line = durability(instance.database.as_ref(), pg_version, instance.temp.path());
        if !report.durability.contains(&line) {
            report.durability.push(line);
        }
        let stop = instance.server.stop()?;
        report.servers.push(ServerRun {
            name: instance.label,
            idle: instance.idle,
            peak,
            logs: instance.server.logs(),
            group_commit,
            stop,
        });
    }
    Ok(())
}

/// What an acknowledged write means on a backend, for the report.
fn durability(
    database: Option<&postgres::Database>,
    pg_version: Option<&str>,
    dir: &Path,
) -> String {
    match database {
        Some(db) => format!(
            "PostgreSQL {}: synchronous_commit={}, fsync={}, wal_sync_method={}, \
             full_page_writes={} (`SHOW` in the benchmark database)",
            pg_version.unwrap_or("?"),
            db.show("synchronous_commit"),
            db.show("fsync"),
            db.show("wal_sync_method"),
            db.show("full_page_writes"),
        ),
        None => format!(
            "SQLite: WAL journal, synchronous=FULL (set by haven-store-sqlite); data on {}",
            machine::filesystem(dir)
        ),
    }
}

/// The search scenario on every selected backend (each on a Haven of its own).
async fn measure_search(
    args: &Args,
    pg_version: Option<&str>,
    shapes: Shapes,
    report: &mut Report,
) -> anyhow::Result<()> {
    let options = search::Options {
        spec: search::populate::Spec {
            patients: args.patients,
            seed: args.seed,
        },
        kinds: args.search_kinds.clone(),
        load_connections: usize::try_from(args.load_connections)?,
        shape: shapes.normal,
        connections: args
            .search_connections
            .iter()
            .map(|c| usize::try_from(*c))
            .collect::<Result<_, _>>()?,
        reuse: args.reuse_data.clone(),
        haven_bin: args.haven_bin.clone(),
        postgres_url: args.postgres_url.clone(),
        log_level: args.haven_log_level.clone(),
        token_seconds: args.token_seconds,
    };
    let started = std::time::Instant::now();
    let population = search::Population::generate(options.spec, &options.kinds);
    eprintln!(
        "search: population generated in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        population.describe()
    );
    let mut out = search::SearchReport::new(&population, &options);
    if args.backends.contains(&Backend::Sqlite) {
        out.sqlite_shell = search::explain::sqlite_version().ok();
    }
    for &backend in &args.backends {
        search::run(
            &options,
            &population,
            backend,
            |db, dir| durability(db, pg_version, dir),
            &mut out,
        )
        .await?;
    }
    report.search = Some(out);
    Ok(())
}

/// Group-commit figures from a Prometheus text page: commits, units per commit, commit time.
fn group_commit(metrics: &str) -> Option<String> {
    let total = |name: &str| -> Option<f64> {
        let values = metrics
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect::<Vec<_>>();
        (!values.is_empty()).then(|| values.iter().sum())
    };
    let commits = total("haven_store_commit_units_count")?;
    let units = total("haven_store_commit_units_sum")?;
    let seconds = total("haven_store_commit_seconds_sum")?;
    if commits == 0.0 {
        return None;
    }
    // Reads' audit records, stored with the commits (absent from older builds' pages).
    let records = total("haven_store_commit_audit_records_sum")
        .map(|r| format!(", {:.1} reads' audit records", r / commits))
        .unwrap_or_default();
    Some(format!(
        "{commits:.0} commits, {:.1} units of work{records} per commit on average, {:.2} ms per commit on average",
        units / commits,
        1000.0 * seconds / commits
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_commit_figures_come_from_the_metrics_page() {
        let page = "# TYPE haven_store_commit_units summary\n\
                    haven_store_commit_units_bucket{le=\"1\"} 3\n\
                    haven_store_commit_units_sum 40\n\
                    haven_store_commit_units_count 10\n\
                    haven_store_commit_seconds_sum 0.05\n\
                    haven_store_commit_seconds_count 10\n";
        assert_eq!(
            group_commit(page).as_deref(),
            Some(
                "10 commits, 4.0 units of work per commit on average, 5.00 ms per commit on average"
            )
        );
        let with_reads = format!("{page}haven_store_commit_audit_records_sum 250\n");
        assert_eq!(
            group_commit(&with_reads).as_deref(),
            Some(
                "10 commits, 4.0 units of work, 25.0 reads' audit records per commit on average, 5.00 ms per commit on average"
            )
        );
        assert_eq!(group_commit("haven_http_requests_total 3\n"), None);
    }

    #[test]
    fn the_command_line_parses() {
        let a = Args::try_parse_from([
            "haven-bench",
            "--duration",
            "3",
            "--scenarios",
            "read,import",
            "--backends",
            "sqlite",
        ])
        .unwrap();
        assert_eq!(a.duration, 3);
        assert_eq!(a.scenarios, [Scenario::Read, Scenario::Import]);
        assert_eq!(a.backends, [Backend::Sqlite]);
        assert!(Args::try_parse_from(["haven-bench", "--duration", "0"]).is_err());
    }
}
