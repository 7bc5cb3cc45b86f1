//! What each scenario does per iteration, and the data it needs beforehand.
//!
//! | scenario | iteration | recorded per |
//! |---|---|---|
//! | read | `GET /fhir/Patient/{id}` | request |
//! | crud | 9 linked resources created, read, updated (`If-Match`), deleted: 36 interactions | interaction |
//! | history | `GET /fhir/Patient/{id}/_history` (10 versions) or `GET /fhir/Patient/_history?_count=50` | request |
//! | import | one transaction Bundle of a synthetic patient (100 resources) | Bundle |
//! | search | one search of a kind, the values cycling over the population (`search` module) | request |

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::Method;
use reqwest::header::{ETAG, IF_MATCH, LOCATION};
use serde_json::Value;

use crate::auth::Bearer;
use crate::clinical;
use crate::load::{Client, Conn, Halt, Reply};
use crate::synth;

/// The FHIR base path of every server the harness drives.
pub const FHIR: &str = "/fhir";
/// Versions of the patient whose history is read.
pub const HISTORY_VERSIONS: u32 = 10;
/// Patients created before the type-level history run, so its page of 50 is always full.
const HISTORY_FILLER: u32 = 50;

/// The work of one iteration.
#[derive(Debug)]
pub enum Workload {
    /// One GET of a fixed path.
    Get { path: String },
    /// One GET of one of `paths`, the connections spread over them.
    GetEach { paths: Vec<String> },
    /// The clinical CRUD cycle.
    Crud,
    /// One transaction Bundle per iteration, generated from `seed`, the worker and the iteration.
    Import { seed: u64 },
}

impl Workload {
    pub async fn iteration(
        &self,
        conn: &mut Conn,
        worker: usize,
        iteration: u64,
    ) -> Result<(), Halt> {
        match self {
            Self::Get { path } => {
                let request = conn.get(path);
                conn.send(request, 1).await.map(drop)
            }
            Self::GetEach { paths } => {
                let at = (worker as u64).wrapping_mul(7919).wrapping_add(iteration);
                let Some(path) =
                    paths.get(usize::try_from(at % paths.len().max(1) as u64).unwrap_or(0))
                else {
                    return Err(conn.fail("no search queries to run".into()));
                };
                let request = conn.get(path);
                conn.send(request, 1).await.map(drop)
            }
            Self::Crud => crud_cycle(conn).await,
            Self::Import { seed } => {
                let bundle = synth::patient_bundle(
                    seed ^ ((worker as u64) << 40) ^ iteration.wrapping_mul(0x9E37_79B9),
                );
                let request = conn
                    .request(Method::POST, FHIR)
                    // An importer wants the outcome, not its own data echoed back.
                    .header("Prefer", "return=minimal")
                    .body(bundle);
                conn.send(request, synth::RESOURCES_PER_BUNDLE)
                    .await
                    .map(drop)
            }
        }
    }
}

/// A resource the cycle created: where it is and which version it has.
struct Created {
    type_name: String,
    id: String,
    etag: String,
    body: Value,
}

/// The id and ETag of a created resource, from `Location` (`.../Type/id/_history/1`) and `ETag`.
fn created_from(reply: &Reply, type_name: &str) -> Option<(String, String)> {
    let location = reply.headers.get(LOCATION)?.to_str().ok()?;
    let after = location.split(&format!("/{type_name}/")).nth(1)?;
    let id = after.split('/').next()?.to_owned();
    let etag = reply.headers.get(ETAG)?.to_str().ok()?.to_owned();
    Some((id, etag))
}

async fn create(conn: &mut Conn, body: Value) -> Result<Created, Halt> {
    let type_name = body["resourceType"].as_str().unwrap_or_default().to_owned();
    let bytes = serde_json::to_vec(&body).map_err(|_| Halt::Failed)?;
    let request = conn
        .request(Method::POST, &format!("{FHIR}/{type_name}"))
        .body(bytes);
    let reply = conn.send(request, 1).await?;
    match created_from(&reply, &type_name) {
        Some((id, etag)) => Ok(Created {
            type_name,
            id,
            etag,
            body,
        }),
        None => Err(conn.fail(format!(
            "create of {type_name} answered without Location or ETag"
        ))),
    }
}

/// Create, read, update and delete one linked clinical episode (9 resources, 36 interactions).
async fn crud_cycle(conn: &mut Conn) -> Result<(), Halt> {
    let org = create(conn, clinical::organization()).await?;
    let practitioner = create(conn, clinical::practitioner()).await?;
    let location = create(conn, clinical::location(&org.id)).await?;
    let patient = create(conn, clinical::managed_patient(&org.id)).await?;
    let encounter = create(
        conn,
        clinical::encounter(&patient.id, &practitioner.id, &location.id, &org.id),
    )
    .await?;
    let observation = create(conn, clinical::observation(&patient.id, &encounter.id)).await?;
    let prescription = create(
        conn,
        clinical::medication_request(&patient.id, &encounter.id, &practitioner.id),
    )
    .await?;
    let coverage = create(conn, clinical::coverage(&patient.id, &org.id)).await?;
    let claim = create(
        conn,
        clinical::claim(&patient.id, &org.id, &encounter.id, &coverage.id),
    )
    .await?;
    let all = [
        org,
        practitioner,
        location,
        patient,
        encounter,
        observation,
        prescription,
        coverage,
        claim,
    ];

    for r in &all {
        let request = conn.get(&format!("{FHIR}/{}/{}", r.type_name, r.id));
        conn.send(request, 1).await?;
    }
    for r in &all {
        let body = clinical::revised(r.body.clone(), &r.id);
        let bytes = serde_json::to_vec(&body).map_err(|_| Halt::Failed)?;
        let request = conn
            .request(Method::PUT, &format!("{FHIR}/{}/{}", r.type_name, r.id))
            .header(IF_MATCH, &r.etag)
            .body(bytes);
        conn.send(request, 1).await?;
    }
    // Dependants first, as a client that respects references would.
    for r in all.iter().rev() {
        let request = conn.request(Method::DELETE, &format!("{FHIR}/{}/{}", r.type_name, r.id));
        conn.send(request, 1).await?;
    }
    Ok(())
}

/// Set-up requests made before a scenario runs (not measured).
pub struct Setup {
    client: Client,
    base: String,
}

impl Setup {
    pub fn new(base: &str, bearer: &Bearer) -> anyhow::Result<Self> {
        Ok(Self {
            client: crate::load::client(bearer)?,
            base: base.to_owned(),
        })
    }

    async fn write(&self, method: Method, path: &str, body: &Value) -> anyhow::Result<String> {
        let response = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
            .timeout(Duration::from_secs(30))
            .body(serde_json::to_vec(body)?)
            .send()
            .await
            .with_context(|| format!("{method} {path} failed"))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        let created: Value = serde_json::from_str(&text)
            .with_context(|| format!("{method} {path} did not answer JSON"))?;
        created["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{method} {path} answered without an id"))
    }

    /// Creates the Patient that the read scenario fetches; returns its id.
    pub async fn read_target(&self) -> anyhow::Result<String> {
        self.write(
            Method::POST,
            &format!("{FHIR}/Patient"),
            &clinical::patient(),
        )
        .await
    }

    /// Creates a Patient with `HISTORY_VERSIONS` versions, and enough other Patients to fill a
    /// type-level history page; returns the id of the many-versioned one.
    pub async fn history_target(&self) -> anyhow::Result<String> {
        let path = format!("{FHIR}/Patient");
        let id = self
            .write(Method::POST, &path, &clinical::patient())
            .await?;
        for version in 2..=HISTORY_VERSIONS {
            let mut body = clinical::patient();
            body["id"] = Value::String(id.clone());
            body["telecom"][0]["value"] = Value::String(format!("(03) 5555 {:04}", version));
            self.write(Method::PUT, &format!("{path}/{id}"), &body)
                .await?;
        }
        for _ in 0..HISTORY_FILLER {
            self.write(Method::POST, &path, &clinical::patient())
                .await?;
        }
        Ok(id)
    }

    /// The size of a GET response body, in bytes.
    pub async fn body_size(&self, path: &str) -> anyhow::Result<usize> {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET {path} answered {}", response.status());
        }
        Ok(response.bytes().await?.len())
    }

    /// `/metrics` of a Haven server, if it answers.
    pub async fn metrics(&self) -> Option<String> {
        let response = self
            .client
            .get(format!("{}/metrics", self.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }
}
