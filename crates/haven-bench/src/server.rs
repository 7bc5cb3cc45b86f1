//! Servers under test: spawned, watched and stopped by the harness.
//!
//! Haven is started as its release binary on port 0; its first JSON log line saying
//! `"message":"haven listening"` gives the address. Its data holds the harness's backend client,
//! registered before it starts, and once it listens the server carries a [`Bearer`] that its
//! clients send and a thread keeps valid (see [`crate::auth`]). A thread keeps reading stdout for the whole
//! run, so the pipe never fills and blocks the server (Haven logs one line per request at its
//! default level, `info`), and counts warnings and errors for the report. The ceiling prints
//! `ceiling listening on ADDR`. Dropping a [`Server`] stops it (SIGTERM, then SIGKILL after a
//! grace period), so an error or Ctrl-C in the harness never leaves a server behind.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::auth::{self, Bearer, Credentials, Refresher};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How many distinct warning/error messages are kept for the report.
const KEPT_MESSAGES: usize = 5;

/// Warnings and errors the server logged.
#[derive(Debug, Default, Clone)]
pub struct LogStats {
    pub lines: u64,
    pub warnings: u64,
    pub errors: u64,
    /// Distinct messages of warnings and errors, with how often each appeared.
    pub messages: Vec<(String, u64)>,
}

impl LogStats {
    fn note(&mut self, line: &str) {
        self.lines += 1;
        // Cheap test first: most lines are INFO request lines.
        let is_warn = line.contains("\"level\":\"WARN\"");
        let is_error = line.contains("\"level\":\"ERROR\"");
        if !is_warn && !is_error {
            return;
        }
        if is_warn {
            self.warnings += 1;
        } else {
            self.errors += 1;
        }
        let message = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| line.chars().take(200).collect());
        let level = if is_warn { "WARN" } else { "ERROR" };
        let key = format!("{level}: {message}");
        if let Some(entry) = self.messages.iter_mut().find(|(m, _)| *m == key) {
            entry.1 += 1;
        } else if self.messages.len() < KEPT_MESSAGES {
            self.messages.push((key, 1));
        }
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: resident now, in KiB.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident size so far, in KiB.
    pub hwm_kib: u64,
}

/// A spawned server process.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<LogStats>>,
    stderr: Arc<Mutex<String>>,
    stopped: bool,
    /// What its clients send in `Authorization` (nothing, for the ceiling).
    bearer: Bearer,
    /// Keeps `bearer` valid while the server runs (Haven only).
    refresher: Option<Refresher>,
}

/// How a Haven the harness starts is set up beyond its storage.
#[derive(Debug, Clone, Copy)]
pub struct HavenOptions<'a> {
    pub log_level: &'a str,
    /// Whether Haven writes audit records (`false`: `--benchmark-without-audit`).
    pub audit: bool,
    /// Whether Haven seals bodies at rest (`false`: `--benchmark-without-encryption`).
    pub encryption: bool,
    /// Lifetime of the access tokens Haven issues; the bearer is renewed at 4/5 of it.
    pub token_seconds: u64,
}

/// What a server prints when it is ready, and how to read the address from that line.
type ReadyLine = fn(&str) -> Option<SocketAddr>;

fn haven_ready(line: &str) -> Option<SocketAddr> {
    if !line.contains("haven listening") {
        return None;
    }
    let v: Value = serde_json::from_str(line).ok()?;
    if v["message"] != "haven listening" {
        return None;
    }
    v["address"].as_str()?.parse().ok()
}

fn ceiling_ready(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("ceiling listening on ")?
        .trim()
        .parse()
        .ok()
}

impl Server {
    /// Starts `haven serve` on a free loopback port, with its data in `data_dir` (SQLite) or in
    /// the PostgreSQL database `database_url`, and gets its clients a token. The bench client is
    /// registered first, its private key written to `client_key`; a key already there means the
    /// data (kept from an earlier run) has the client.
    pub fn haven(
        bin: &Path,
        data_dir: &Path,
        database_url: Option<&str>,
        client_key: &Path,
        options: HavenOptions<'_>,
    ) -> anyhow::Result<Self> {
        let credentials = Credentials::register(bin, data_dir, database_url, client_key)?;
        if database_url.is_some() && !data_dir.join("keyring.toml").exists() {
            // Haven makes no keyring by itself on PostgreSQL (replicas must share one).
            let status = auth::haven_command(bin, data_dir, database_url)
                .args(["keys", "init"])
                .stdout(std::process::Stdio::null())
                .status()
                .context("cannot run haven keys init")?;
            anyhow::ensure!(status.success(), "haven keys init failed");
        }
        let mut cmd = auth::haven_command(bin, data_dir, database_url);
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        if !options.audit {
            cmd.arg("--benchmark-without-audit");
        }
        if !options.encryption {
            cmd.arg("--benchmark-without-encryption");
        }
        // The listening line is INFO: keep it whatever the level asked for.
        let level = if options.log_level == "info" {
            options.log_level.to_owned()
        } else {
            format!("{},haven::serve=info", options.log_level)
        };
        cmd.env("HAVEN_LOG__LEVEL", level)
            .env("HAVEN_LOG__FORMAT", "json")
            .env(
                "HAVEN_IDENTITY__ACCESS_TOKEN_SECONDS",
                options.token_seconds.to_string(),
            );
        let mut server = Self::spawn(cmd, haven_ready)?;
        let (bearer, refresher) = auth::bearer(
            credentials,
            &server.base_url(),
            Duration::from_secs(options.token_seconds) * 4 / 5,
        )
        .context("cannot get an access token for the benchmark client")?;
        server.bearer = bearer;
        server.refresher = Some(refresher);
        Ok(server)
    }

    /// Starts the trivial-handler ceiling on a free loopback port.
    pub fn ceiling(bin: &Path) -> anyhow::Result<Self> {
        // The ceiling takes an address, not port 0: ask the OS for a free port, then hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free loopback port")?
            .port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("127.0.0.1:{port}"));
        Self::spawn(cmd, ceiling_ready)
    }

    fn spawn(mut cmd: Command, ready: ReadyLine) -> anyhow::Result<Self> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        let logs = Arc::new(Mutex::new(LogStats::default()));
        let stderr = Arc::new(Mutex::new(String::new()));

        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let logs = logs.clone();
            thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::with_capacity(1 << 16, out).lines() {
                    let Ok(line) = line else { break };
                    if tx.is_some()
                        && let Some(addr) = ready(&line)
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(addr);
                    }
                    if let Ok(mut stats) = logs.lock() {
                        stats.note(&line);
                    }
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let stderr = stderr.clone();
            thread::spawn(move || {
                // Keep the first 8 KiB (start-up errors); drain the rest.
                let mut buf = Vec::new();
                let mut reader = err;
                let mut chunk = [0u8; 4096];
                while let Ok(n) = reader.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    if buf.len() < 8192 {
                        buf.extend_from_slice(&chunk[..n]);
                        if let Ok(mut s) = stderr.lock() {
                            *s = String::from_utf8_lossy(&buf).into_owned();
                        }
                    }
                }
            });
        }

        let mut server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            stderr,
            stopped: false,
            bearer: Bearer::none(),
            refresher: None,
        };
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => {
                    server.addr = addr;
                    return Ok(server);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the line: wait briefly for the exit status.
                    thread::sleep(Duration::from_millis(200));
                }
            }
            if let Some(status) = server.child.try_wait()? {
                server.stopped = true;
                bail!(
                    "{program} exited ({status}) before listening: {}",
                    server.stderr_text().trim()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "{program} did not report its address within {} s",
                    START_TIMEOUT.as_secs()
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What this server's clients send in `Authorization`.
    pub fn bearer(&self) -> &Bearer {
        &self.bearer
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Current and peak resident memory.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .context("cannot read the server's /proc status")?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        })
    }

    pub fn logs(&self) -> LogStats {
        self.logs.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Graceful stop: SIGTERM, wait, SIGKILL if the grace period passes. Returns how it ended.
    pub fn stop(&mut self) -> anyhow::Result<String> {
        if self.stopped {
            return Ok("already stopped".into());
        }
        self.stopped = true;
        // No token requests to a server that is going away.
        self.refresher = None;
        // kill(1) rather than libc::kill: the workspace forbids `unsafe`.
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(format!("stopped ({status})"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        let status = self.child.wait()?;
        Ok(format!(
            "killed after {} s without stopping ({status})",
            STOP_GRACE.as_secs()
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("haven-bench: could not stop server {}: {e}", self.pid());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_lines_give_the_address() {
        let line = r#"{"timestamp":"2026-11-28T21:21:43.366340Z","level":"INFO","message":"haven listening","address":"127.0.0.1:18999","backend":"sqlite"}"#;
        assert_eq!(haven_ready(line), Some("127.0.0.1:18999".parse().unwrap()));
        assert_eq!(haven_ready(r#"{"message":"request completed"}"#), None);
        assert_eq!(
            ceiling_ready("ceiling listening on 127.0.0.1:4000"),
            Some("127.0.0.1:4000".parse().unwrap())
        );
    }

    #[test]
    fn warnings_and_errors_are_counted_by_message() {
        let mut s = LogStats::default();
        s.note(r#"{"level":"INFO","message":"request completed"}"#);
        s.note(r#"{"level":"WARN","message":"slow commit"}"#);
        s.note(r#"{"level":"WARN","message":"slow commit"}"#);
        s.note(r#"{"level":"ERROR","message":"store failed"}"#);
        assert_eq!((s.lines, s.warnings, s.errors), (4, 2, 1));
        assert_eq!(
            s.messages,
            vec![
                ("WARN: slow commit".to_owned(), 2),
                ("ERROR: store failed".to_owned(), 1)
            ]
        );
    }
}
