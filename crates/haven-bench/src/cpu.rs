//! How much CPU other processes used while a scenario ran (a noise gauge for the report), and
//! how much each part of the run used per interaction (Haven, PostgreSQL, the load generator).
//!
//! On a 2-core machine one `cargo build` elsewhere halves the figures, so the report states, for
//! each measurement, the share of the machine's CPU time spent by processes that are not part of
//! the run (the harness, the server under test, and the PostgreSQL processes working for the
//! benchmark database), plus the time the
//! hypervisor gave to other guests (steal). From `/proc/stat` (all CPUs) minus
//! `/proc/<pid>/stat` of the processes that are ours.

use std::path::Path;

/// Clock ticks at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    busy: u64,
    steal: u64,
    total: u64,
    ours: u64,
    /// The processes in `ours`, each with its part and its ticks so far.
    procs: Vec<(u32, Part, u64)>,
}

/// Which part of a run a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Server,
    Postgres,
    Harness,
}

/// CPU clock ticks of each part of a run, or (as [`PerInteraction`]) microseconds per interaction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Parts {
    pub server: u64,
    pub postgres: u64,
    pub harness: u64,
}

impl Parts {
    fn of(&mut self, part: Part) -> &mut u64 {
        match part {
            Part::Server => &mut self.server,
            Part::Postgres => &mut self.postgres,
            Part::Harness => &mut self.harness,
        }
    }

    pub fn add(&mut self, other: Parts) {
        self.server += other.server;
        self.postgres += other.postgres;
        self.harness += other.harness;
    }
}

/// CPU time per successful interaction, in microseconds, of each part of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerInteraction {
    pub server: f64,
    pub postgres: f64,
    pub harness: f64,
}

impl PerInteraction {
    /// `ticks` of CPU time spent while `interactions` succeeded, at `hz` ticks per second.
    /// `None` when nothing succeeded.
    pub fn of(ticks: Parts, interactions: u64, hz: u64) -> Option<Self> {
        if interactions == 0 || hz == 0 {
            return None;
        }
        let us = |t: u64| t as f64 * 1e6 / hz as f64 / interactions as f64;
        Some(Self {
            server: us(ticks.server),
            postgres: us(ticks.postgres),
            harness: us(ticks.harness),
        })
    }

    /// What the server side costs per interaction: Haven and its database.
    pub fn server_side(&self) -> f64 {
        self.server + self.postgres
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100)
}

/// CPU ticks of each part between two samples, process by process: one that started in
/// between spent all its ticks there; one that ended in between is in neither sum (its last
/// ticks are lost, rather than its whole life's being taken off its part).
pub fn parts_between(before: Sample, after: Sample) -> Parts {
    let earlier: std::collections::HashMap<u32, u64> =
        before.procs.iter().map(|&(pid, _, t)| (pid, t)).collect();
    let mut parts = Parts::default();
    for (pid, part, ticks) in after.procs {
        *parts.of(part) += ticks.saturating_sub(earlier.get(&pid).copied().unwrap_or(0));
    }
    parts
}

/// The processes that belong to a measurement.
#[derive(Debug, Clone, Copy)]
pub struct Ours<'a> {
    pub server: u32,
    /// The benchmark database, when PostgreSQL is under test: its server's background processes
    /// and the client backends of this database are ours; other databases' backends are not.
    pub postgres_db: Option<&'a str>,
}

/// Whether a `postgres` process with this title works for the database `db`:
/// `postgres: 15/main: user db 127.0.0.1(5432) idle` is a client backend of `db`,
/// `postgres: 15/main: walwriter` a background process working for every database.
fn postgres_works_for(title: &str, db: &str) -> bool {
    let client_backend = title.contains('(') || title.contains("[local]");
    !client_backend || title.split_whitespace().any(|word| word == db)
}

fn title_of(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// utime + stime of one process, in clock ticks.
fn process_ticks(stat: &str) -> Option<u64> {
    // The command name may hold spaces or ')': the fields that follow start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `state` is field 3 of the file; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn comm_of(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

pub fn sample(ours: Ours<'_>) -> Sample {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal. Interrupt time is left out of `busy`: the
    // loopback traffic of the run itself is handled there and is charged to no process.
    let at = |i: usize| cpu.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2);
    let steal = at(7);
    let total = (0..8).map(at).sum();

    let me = std::process::id();
    let mut procs = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(text) =
                std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
            else {
                continue;
            };
            let part = if pid == me {
                Part::Harness
            } else if pid == ours.server {
                Part::Server
            } else if ours.postgres_db.is_some_and(|db| {
                comm_of(&text) == Some("postgres") && postgres_works_for(&title_of(pid), db)
            }) {
                Part::Postgres
            } else {
                continue;
            };
            procs.push((pid, part, process_ticks(&text).unwrap_or(0)));
        }
    }
    Sample {
        busy,
        steal,
        total,
        ours: procs.iter().map(|p| p.2).sum(),
        procs,
    }
}

/// The share of the machine's CPU time (0..1) that went elsewhere between two samples: to other
/// processes, or to other guests of the hypervisor (steal time).
pub fn others_share(before: Sample, after: Sample) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let busy = after.busy.saturating_sub(before.busy);
    let ours = after.ours.saturating_sub(before.ours);
    let steal = after.steal.saturating_sub(before.steal);
    (busy.saturating_sub(ours) + steal) as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ticks_are_read_after_the_command_name() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 70 30 0 0 20 0 3 0";
        assert_eq!(process_ticks(stat), Some(100));
        assert_eq!(comm_of(stat), Some("tokio (rt) x"));
    }

    #[test]
    fn only_the_benchmark_database_backends_are_ours() {
        let db = "haven_bench_1_2";
        assert!(postgres_works_for("postgres: 15/main: walwriter ", db));
        assert!(postgres_works_for(
            "postgres: 15/main: postgres haven_bench_1_2 127.0.0.1(40112) idle",
            db
        ));
        assert!(!postgres_works_for(
            "postgres: 15/main: postgres test 127.0.0.1(40113) idle",
            db
        ));
        assert!(!postgres_works_for(
            "postgres: 15/main: postgres test [local] idle",
            db
        ));
    }

    #[test]
    fn our_own_work_is_not_noise() {
        let before = Sample {
            busy: 100,
            steal: 0,
            total: 1000,
            ours: 50,
            ..Sample::default()
        };
        let after = Sample {
            busy: 600,
            steal: 10,
            total: 1500,
            ours: 500,
            ..Sample::default()
        };
        // 500 busy - 450 ours + 10 stolen, of 500 ticks.
        assert!((others_share(before, after) - 0.12).abs() < 1e-9);
    }

    fn procs(procs: &[(u32, Part, u64)]) -> Sample {
        Sample {
            procs: procs.to_vec(),
            ..Sample::default()
        }
    }

    #[test]
    fn cpu_per_interaction_is_ticks_over_interactions() {
        let before = procs(&[
            (10, Part::Server, 1_000),
            (20, Part::Postgres, 40),
            (21, Part::Postgres, 10),
            (22, Part::Postgres, 5_000),
            (30, Part::Harness, 7),
        ]);
        // Backend 22 closed in between; backend 23 opened and spent 20 ticks.
        let after = procs(&[
            (10, Part::Server, 1_300),
            (20, Part::Postgres, 120),
            (21, Part::Postgres, 30),
            (23, Part::Postgres, 20),
            (30, Part::Harness, 67),
        ]);
        let ticks = parts_between(before, after);
        assert_eq!(
            ticks,
            Parts {
                server: 300,
                postgres: 120,
                harness: 60
            }
        );
        // 300 ticks at 100 Hz = 3 s of CPU over 10,000 interactions = 300 µs each.
        let per = PerInteraction::of(ticks, 10_000, 100).unwrap();
        assert!((per.server - 300.0).abs() < 1e-9, "{per:?}");
        assert!((per.postgres - 120.0).abs() < 1e-9, "{per:?}");
        assert!((per.harness - 60.0).abs() < 1e-9, "{per:?}");
        assert!((per.server_side() - 420.0).abs() < 1e-9);
        assert_eq!(PerInteraction::of(ticks, 0, 100), None);
    }

    #[test]
    fn this_machine_reports_its_tick_rate() {
        let hz = ticks_per_second();
        assert!((1..=10_000).contains(&hz), "{hz}");
    }
}
