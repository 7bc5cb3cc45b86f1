//! Access tokens for the Havens under test, obtained the way a backend system obtains them.
//!
//! Every request under `/fhir` (but `GET /fhir/metadata`) needs `Authorization: Bearer`, and
//! checking that token is part of what each request costs in service, so the harness sends one
//! and measures it rather than reaching around it. Before a Haven starts, its data gets a backend
//! client (`haven client add --service --generate-key`, the operator's command); once it listens,
//! `haven token` (SMART Backend Services: client credentials with a `private_key_jwt` assertion)
//! gives the token. The harness links no Haven crate, so both are the real CLI, run as a
//! subprocess with the server's own storage settings.
//!
//! Tokens are short-lived (the harness asks Haven for `--token-seconds`, 300 by default). A
//! thread fetches a new one at 4/5 of that lifetime and swaps it into the [`Bearer`] that every
//! client reads when it builds a request, so a scenario of any length never sends an expired
//! token. A refresh that fails is retried every few seconds and reported; should the token
//! expire anyway, the 401s are counted as failed interactions like any other error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::RequestBuilder;
use reqwest::header::{AUTHORIZATION, HeaderValue};

/// The backend client the harness registers on every Haven it starts.
pub const CLIENT_ID: &str = "haven-bench";
/// What the client may do: every interaction on every resource type (SMART v2 scopes).
const SCOPE: &str = "system/*.cruds";
/// How long after a failed refresh the next attempt is made.
const RETRY: Duration = Duration::from_secs(10);

/// The `Authorization` header a server's clients send: absent for the ceiling, which checks
/// nothing; for Haven, the current access token, replaced in place when it is refreshed.
#[derive(Debug, Clone, Default)]
pub struct Bearer(Option<Arc<RwLock<HeaderValue>>>);

impl Bearer {
    /// No token: requests go out without `Authorization`.
    pub fn none() -> Self {
        Self(None)
    }

    /// A fixed token (Haven's come from [`bearer`], which renews them).
    pub(crate) fn new(token: &str) -> anyhow::Result<Self> {
        Ok(Self(Some(Arc::new(RwLock::new(header_value(token)?)))))
    }

    fn replace(&self, token: &str) -> anyhow::Result<()> {
        if let Some(current) = &self.0 {
            let value = header_value(token)?;
            *current.write().unwrap_or_else(PoisonError::into_inner) = value;
        }
        Ok(())
    }

    /// `request` with the current token, if there is one.
    pub fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.0 {
            None => request,
            Some(current) => {
                // A clone of the value shares its bytes: no copy of the token per request.
                let value = current
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                request.header(AUTHORIZATION, value)
            }
        }
    }
}

fn header_value(token: &str) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .context("haven token printed something that is not a token")?;
    // Kept out of reqwest's Debug output (and so out of any error text the report shows).
    value.set_sensitive(true);
    Ok(value)
}

/// A `haven` command with no `HAVEN_*` variable inherited from the caller: the harness
/// measures Haven's defaults, whatever its own environment says.
fn haven(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HAVEN_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// A [`haven`] command on one server's storage: its data directory and PostgreSQL database.
pub fn haven_command(bin: &Path, data_dir: &Path, database_url: Option<&str>) -> Command {
    let mut cmd = haven(bin);
    cmd.arg("--data-dir").arg(data_dir);
    if let Some(url) = database_url {
        cmd.env("HAVEN_DATABASE_URL", url);
    }
    cmd
}

/// Runs `cmd` to completion; its stdout when it succeeds.
fn output(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    // Only warnings: the commands' own output is what we read.
    cmd.env("HAVEN_LOG__LEVEL", "warn").stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", cmd.get_program().to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bench client of one server: its private key, and how to ask the server for a token.
#[derive(Debug, Clone)]
pub struct Credentials {
    bin: PathBuf,
    key: PathBuf,
}

impl Credentials {
    /// Registers the bench client in the server's storage, unless `key` (its private key, PKCS#8
    /// PEM) is already there from an earlier run on the same data. Runs before the server starts.
    pub fn register(
        bin: &Path,
        data_dir: &Path,
        database_url: Option<&str>,
        key: &Path,
    ) -> anyhow::Result<Self> {
        if !key.is_file() {
            let mut cmd = haven_command(bin, data_dir, database_url);
            cmd.args(["client", "add", CLIENT_ID, "--service", "--scope", SCOPE])
                .arg("--generate-key")
                .arg(key);
            output(cmd, "haven client add").with_context(|| {
                format!(
                    "cannot register the benchmark client {CLIENT_ID} (if the data set already \
                     has it but its key {} is gone, remove the data set)",
                    key.display()
                )
            })?;
        }
        Ok(Self {
            bin: bin.to_owned(),
            key: key.to_owned(),
        })
    }

    /// A new access token from the server at `root` (`http://127.0.0.1:PORT`).
    fn token(&self, root: &str) -> anyhow::Result<String> {
        let mut cmd = haven(&self.bin);
        cmd.args(["token", "--client", CLIENT_ID, "--key"])
            .arg(&self.key)
            .args(["--url", root]);
        let out = output(cmd, "haven token")?;
        match out.lines().map(str::trim).rfind(|l| !l.is_empty()) {
            Some(token) => Ok(token.to_owned()),
            None => bail!("haven token printed no token"),
        }
    }
}

/// Keeps a [`Bearer`] valid: fetches a new token every `every` until dropped.
#[derive(Debug)]
pub struct Refresher {
    /// Dropping it stops the thread (at its next wake-up; it is never joined, so a stop never
    /// waits for a token request in flight).
    _stop: mpsc::Sender<()>,
}

/// A live token for the server at `root`, and the thread that renews it every `every`.
pub fn bearer(
    credentials: Credentials,
    root: &str,
    every: Duration,
) -> anyhow::Result<(Bearer, Refresher)> {
    let root = root.to_owned();
    let bearer = Bearer::new(&credentials.token(&root)?)?;
    let refresher = refresh(bearer.clone(), every, move || credentials.token(&root));
    Ok((bearer, refresher))
}

fn refresh(
    bearer: Bearer,
    every: Duration,
    fetch: impl Fn() -> anyhow::Result<String> + Send + 'static,
) -> Refresher {
    let (stop, stopped) = mpsc::channel::<()>();
    thread::spawn(move || {
        let mut wait = every;
        loop {
            match stopped.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            match fetch().and_then(|token| bearer.replace(&token)) {
                Ok(()) => wait = every,
                Err(e) => {
                    // The server stopping while a token was asked for is no failure.
                    if matches!(stopped.try_recv(), Err(TryRecvError::Disconnected)) {
                        return;
                    }
                    eprintln!(
                        "haven-bench: could not refresh the access token, retrying in {} s: {e:#}",
                        RETRY.as_secs()
                    );
                    wait = RETRY.min(every);
                }
            }
        }
    });
    Refresher { _stop: stop }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn sent(bearer: &Bearer) -> Option<String> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let request = bearer
            .authorize(reqwest::Client::new().get("http://127.0.0.1:9/fhir/Patient"))
            .build()
            .unwrap();
        request
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[test]
    fn the_ceiling_gets_no_header_and_haven_the_current_token() {
        assert_eq!(sent(&Bearer::none()), None);
        let bearer = Bearer::new("t1").unwrap();
        assert_eq!(sent(&bearer).as_deref(), Some("Bearer t1"));
        bearer.replace("t2").unwrap();
        assert_eq!(sent(&bearer.clone()).as_deref(), Some("Bearer t2"));
        assert!(Bearer::new("not\na token").is_err());
    }

    #[test]
    fn the_refresher_replaces_the_token_until_dropped() {
        let bearer = Bearer::new("t0").unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let refresher = refresh(bearer.clone(), Duration::from_millis(20), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(format!("t{n}"))
        });
        thread::sleep(Duration::from_millis(200));
        assert!(calls.load(Ordering::SeqCst) >= 2);
        assert_ne!(sent(&bearer).as_deref(), Some("Bearer t0"));
        drop(refresher);
        thread::sleep(Duration::from_millis(60));
        let after = calls.load(Ordering::SeqCst);
        thread::sleep(Duration::from_millis(100));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            after,
            "still refreshing after the drop"
        );
    }

    #[test]
    fn a_failed_refresh_keeps_the_old_token_and_is_retried() {
        let bearer = Bearer::new("old").unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let _refresher = refresh(bearer.clone(), Duration::from_millis(20), move || {
            if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                bail!("the token endpoint refused")
            }
            Ok("new".into())
        });
        thread::sleep(Duration::from_millis(200));
        assert!(calls.load(Ordering::SeqCst) >= 2);
        assert_eq!(sent(&bearer).as_deref(), Some("Bearer new"));
    }
}
