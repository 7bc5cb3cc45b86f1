//! A throw-away PostgreSQL database per run, made and dropped with `psql`.
//!
//! `psql` keeps the harness free of a database driver: it needs three statements, not a pool.
//! The database is dropped (`WITH (FORCE)`, PostgreSQL 13+) when the guard is dropped, so an
//! error or Ctrl-C does not leave it behind. URLs may hold a password, so they are never printed.

use std::process::Command;

use anyhow::{Context, bail};

/// A database created for one run and dropped with the guard, or kept for later runs.
pub struct Database {
    admin_url: String,
    pub name: String,
    pub url: String,
    keep: bool,
}

/// Runs one statement with psql and returns its unaligned, tuples-only output.
fn psql(url: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .context("cannot run psql (install the PostgreSQL client, or pass --backends sqlite)")?;
    if !out.status.success() {
        bail!(
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `url` with its database name replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let scheme_end = url
        .find("://")
        .context("the PostgreSQL URL must look like postgres://user@host:5432/db")?
        + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).map_or(url.len(), |i| scheme_end + i);
    let query = url[authority_end..]
        .find('?')
        .map_or("", |i| &url[authority_end + i..]);
    Ok(format!("{}/{name}{query}", &url[..authority_end]))
}

impl Database {
    /// Creates a fresh database on the server of `admin_url`.
    pub fn create(admin_url: &str) -> anyhow::Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Several databases may be made in the same second (the variants of a backend run at
        // once): a counter keeps their names apart.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("haven_bench_{}_{stamp}_{n}", std::process::id());
        psql(admin_url, &format!("CREATE DATABASE {name}"))
            .context("cannot create the benchmark database")?;
        Ok(Self {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name)?,
            name,
            keep: false,
        })
    }

    /// The database `name` (letters, digits and `_`), created if it does not exist, and kept
    /// when the guard is dropped. Returns whether it existed.
    pub fn kept(admin_url: &str, name: &str) -> anyhow::Result<(Self, bool)> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("{name:?} is not a plain database name");
        }
        let existed = psql(
            admin_url,
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{name}'"),
        )? == "1";
        if !existed {
            psql(admin_url, &format!("CREATE DATABASE {name}"))
                .context("cannot create the benchmark database")?;
        }
        Ok((
            Self {
                admin_url: admin_url.to_owned(),
                url: with_database(admin_url, name)?,
                name: name.to_owned(),
                keep: true,
            },
            existed,
        ))
    }

    /// `SHOW <setting>` in this database.
    pub fn show(&self, setting: &str) -> String {
        psql(&self.url, &format!("SHOW {setting}")).unwrap_or_else(|e| format!("unknown ({e})"))
    }
}

/// Checks that the server answers, before any time is spent on the run.
pub fn check(admin_url: &str) -> anyhow::Result<String> {
    psql(admin_url, "SHOW server_version").context("cannot reach PostgreSQL (see --postgres-url)")
}

impl Drop for Database {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!("haven-bench: could not drop database {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/b",
            ),
            (
                "postgres://u:p@h/db?sslmode=disable",
                "postgres://u:p@h/b?sslmode=disable",
            ),
            ("postgresql://h:5432", "postgresql://h:5432/b"),
            (
                "postgres://h?sslmode=require",
                "postgres://h/b?sslmode=require",
            ),
        ];
        for (url, want) in cases {
            assert_eq!(with_database(url, "b").unwrap(), want, "{url}");
        }
    }
}
