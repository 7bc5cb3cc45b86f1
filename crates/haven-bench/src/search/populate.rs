//! Loading the population into a server, resumably, and keeping it for later runs.
//!
//! Patients go in as one transaction Bundle each, several connections at a time, through
//! Haven's ordinary transaction endpoint. A Bundle is atomic and its Patient has a known id,
//! so a patient is loaded exactly when `GET Patient/{id}` finds it: an interrupted load
//! resumes by checking each patient from the last recorded point on, and never loads one
//! twice. With `--reuse-data DIR` the SQLite data directory (`DIR/sqlite-<population>`) and
//! the PostgreSQL database (`haven_bench_<population>`) are kept, and a later run that finds
//! the whole population there (counted through search) loads nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use crate::auth::Bearer;
use crate::load::Client;
use crate::scenarios::FHIR;
use crate::synth::population::{
    GENERATOR_VERSION, PRACTITIONER_ID, Person, patient_id, practitioner,
};

/// How long one Bundle may take before it counts as failed.
const BUNDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Attempts per Bundle (a 503 while the server is busy is retried).
const ATTEMPTS: u32 = 3;
/// How often progress is printed and saved.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// A population: how many patients, from which seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub patients: u64,
    pub seed: u64,
}

impl Spec {
    /// A name that changes with everything the data depends on, for kept data sets.
    pub fn key(&self) -> String {
        format!("p{}_s{}_g{GENERATOR_VERSION}", self.patients, self.seed)
    }
}

/// Where a backend's kept data set and its notes live, under `--reuse-data DIR`.
#[derive(Debug, Clone)]
pub struct Kept {
    /// `DIR/<backend>-<key>.progress`: patients `0..n` are known to be loaded.
    progress: PathBuf,
    /// `DIR/<backend>-<key>.loaded`: how the data set was loaded (for the report).
    loaded: PathBuf,
}

impl Kept {
    pub fn new(dir: &Path, backend: &str, spec: Spec) -> Self {
        let stem = format!("{backend}-{}", spec.key());
        Self {
            progress: dir.join(format!("{stem}.progress")),
            loaded: dir.join(format!("{stem}.loaded")),
        }
    }

    fn start(&self) -> u64 {
        std::fs::read_to_string(&self.progress)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The note of how the kept data set was loaded, if it was.
    pub fn loaded_note(&self) -> Option<String> {
        std::fs::read_to_string(&self.loaded)
            .ok()
            .map(|s| s.trim().to_owned())
    }
}

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub patients: u64,
    /// Patients found already loaded (a resumed load).
    pub skipped: u64,
    pub resources: u64,
    pub seconds: f64,
}

impl Loaded {
    pub fn resource_rate(&self) -> f64 {
        self.resources as f64 / self.seconds.max(1e-9)
    }

    pub fn describe(&self, connections: usize) -> String {
        let resumed = if self.skipped > 0 {
            format!(" (resumed: {} patients were already there)", self.skipped)
        } else {
            String::new()
        };
        format!(
            "{} patients, {} resources in {:.0} s: {:.0} resources/s, {:.1} patients/s over {connections} connections{resumed}",
            self.patients,
            self.resources,
            self.seconds,
            self.resource_rate(),
            self.patients as f64 / self.seconds.max(1e-9)
        )
    }
}

/// Counts the live resources of `ty` through search (`_summary=count`).
pub async fn count(client: &Client, base: &str, ty: &str) -> anyhow::Result<u64> {
    let url = format!("{base}{FHIR}/{ty}?_summary=count");
    let response = client
        .get(&url)
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .with_context(|| format!("GET {ty}?_summary=count failed"))?;
    let status = response.status();
    let body: Value = response.json().await.context("a count that is not JSON")?;
    if !status.is_success() {
        bail!("GET {ty}?_summary=count answered {status}: {body}");
    }
    body["total"]
        .as_u64()
        .with_context(|| format!("GET {ty}?_summary=count answered without a total"))
}

/// Whether patient `k` is on the server.
async fn exists(client: &Client, base: &str, k: u64) -> anyhow::Result<bool> {
    let response = client
        .get(format!("{base}{FHIR}/Patient/{}", patient_id(k)))
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    match status {
        200 => Ok(true),
        404 | 410 => Ok(false),
        other => bail!("GET Patient/{} answered {other}", patient_id(k)),
    }
}

/// Sends patient `k`'s Bundle, retrying a failed attempt only after checking that it did not
/// commit. Returns the resources written.
async fn send(client: &Client, base: &str, seed: u64, k: u64) -> anyhow::Result<u64> {
    let person = Person::generate(seed, k);
    let body = person.bundle();
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if exists(client, base, k).await? {
                return Ok(person.counts().total());
            }
        }
        let result = client
            .request(Method::POST, format!("{base}{FHIR}"))
            .header(CONTENT_TYPE, "application/fhir+json")
            .header("Prefer", "return=minimal")
            .timeout(BUNDLE_TIMEOUT)
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if status.is_success() {
                    return Ok(person.counts().total());
                }
                last = format!(
                    "HTTP {status}: {}",
                    text.chars().take(400).collect::<String>()
                );
                // A refused Bundle will be refused again: the generator is wrong.
                if status.is_client_error() {
                    break;
                }
            }
            Err(e) => last = format!("{e}"),
        }
    }
    bail!("patient {k} could not be loaded: {last}")
}

/// Creates the shared Practitioner (PUT, so loading twice changes nothing but its version).
async fn put_practitioner(client: &Client, base: &str) -> anyhow::Result<()> {
    let response = client
        .put(format!("{base}{FHIR}/Practitioner/{PRACTITIONER_ID}"))
        .header(CONTENT_TYPE, "application/fhir+json")
        .timeout(Duration::from_secs(30))
        .body(serde_json::to_vec(&practitioner())?)
        .send()
        .await?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "PUT Practitioner/{PRACTITIONER_ID} answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// Loads patients `0..spec.patients` into the server at `base`. `resume`: some may be there
/// already (from `kept`'s progress on, each is checked before it is sent).
pub async fn load(
    label: &str,
    base: &str,
    bearer: &Bearer,
    spec: Spec,
    connections: usize,
    resume: bool,
    kept: Option<&Kept>,
) -> anyhow::Result<Loaded> {
    let setup = crate::load::client(bearer)?;
    put_practitioner(&setup, base).await?;
    let start = if resume {
        kept.map_or(0, Kept::start).min(spec.patients)
    } else {
        0
    };
    let n = usize::try_from(spec.patients)?;
    let done: Arc<Vec<AtomicBool>> = Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
    for flag in done.iter().take(usize::try_from(start)?) {
        flag.store(true, Ordering::Relaxed);
    }
    let next = Arc::new(AtomicU64::new(start));
    let resources = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU64::new(start));
    let failed = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    eprintln!(
        "{label}: loading {} patients over {connections} connections{}",
        spec.patients,
        if resume {
            format!(", resuming (checking each patient from {start} on)")
        } else {
            String::new()
        }
    );

    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (done, next, resources, skipped, failed) = (
            done.clone(),
            next.clone(),
            resources.clone(),
            skipped.clone(),
            failed.clone(),
        );
        let base = base.to_owned();
        let client = crate::load::client(bearer)?;
        tasks.push(tokio::spawn(async move {
            loop {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= spec.patients {
                    return Ok(());
                }
                let outcome = async {
                    if resume && exists(&client, &base, k).await? {
                        skipped.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    let written = send(&client, &base, spec.seed, k).await?;
                    resources.fetch_add(written, Ordering::Relaxed);
                    anyhow::Ok(())
                }
                .await;
                if let Err(e) = outcome {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                if let Some(flag) = done.get(usize::try_from(k).unwrap_or(usize::MAX)) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }));
    }

    // Progress: printed and saved every few seconds until every worker has stopped.
    let mut watermark = usize::try_from(start)?;
    let mut handles = tasks;
    let mut first_error = None;
    loop {
        let finished = handles.iter().all(tokio::task::JoinHandle::is_finished);
        while watermark < n && done[watermark].load(Ordering::Relaxed) {
            watermark += 1;
        }
        if let Some(kept) = kept {
            let _ = std::fs::write(&kept.progress, watermark.to_string());
        }
        let seconds = started.elapsed().as_secs_f64();
        let sent = next.load(Ordering::Relaxed).min(spec.patients);
        let written = resources.load(Ordering::Relaxed);
        let rate = written as f64 / seconds.max(1e-9);
        let left = spec.patients.saturating_sub(sent);
        let patient_rate = sent.saturating_sub(start) as f64 / seconds.max(1e-9);
        let eta = left as f64 / patient_rate.max(1e-9);
        eprintln!(
            "{label}: {sent}/{} patients sent, {written} resources, {rate:.0} resources/s, {:.0} s elapsed{}",
            spec.patients,
            seconds,
            if finished || seconds < PROGRESS_EVERY.as_secs_f64() {
                String::new()
            } else {
                format!(", about {eta:.0} s left")
            }
        );
        if finished {
            break;
        }
        let sleep = tokio::time::sleep(PROGRESS_EVERY);
        tokio::pin!(sleep);
        // Wake early when the last worker ends.
        loop {
            tokio::select! {
                () = &mut sleep => break,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if handles.iter().all(tokio::task::JoinHandle::is_finished) {
                        break;
                    }
                }
            }
        }
    }
    for handle in handles.drain(..) {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("a loader failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.context(format!(
            "{label}: loading stopped{}",
            if kept.is_some() {
                "; run again with the same --reuse-data to resume"
            } else {
                ""
            }
        )));
    }
    let skipped = skipped.load(Ordering::Relaxed);
    Ok(Loaded {
        patients: spec.patients - skipped.min(spec.patients),
        skipped,
        resources: resources.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Records how a kept data set was loaded.
pub fn remember(kept: &Kept, note: &str) -> anyhow::Result<()> {
    std::fs::write(&kept.loaded, note)
        .with_context(|| format!("cannot write {}", kept.loaded.display()))
}
