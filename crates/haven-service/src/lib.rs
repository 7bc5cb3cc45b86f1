//! Haven's service layer: the FHIR use cases, independent of HTTP and of any database.
//!
//! Each interaction follows one path: parse (already done by the caller) -> validate against the
//! R4 definitions -> assign id, version and `lastUpdated` -> run one unit of work against the
//! store -> shape the response. Authorization and audit will sit on this same path, inside the
//! same unit of work, which is why no other crate talks to the store directly.
//!
//! The service speaks FHIR's own vocabulary, including status codes (they appear in Bundle
//! `response.status`), but knows nothing of sockets, headers or axum.

mod access;
pub mod audit;
mod audit_view;
mod bundle;
mod capabilities;
mod confine;
mod consent;
mod erase;
mod error;
mod history;
mod interactions;
pub mod outcome;
mod patch;
mod prepare;
pub mod pseudonym;
mod route;
pub mod sealed;
pub mod search;
mod validate_op;
mod wire;

use std::sync::Arc;

use bytes::Bytes;
use haven_domain::{ResourceType, Timestamp, VersionId};
use haven_store::ResourceStore;

pub use erase::{ErasureReport, HOLD_KIND, Requester};
pub use error::ServiceError;
pub use haven_domain::Interaction;
pub use haven_fhir::json::{JsonError, JsonLimits};
pub use haven_fhir::{Issue, IssueCode, Severity};
pub use route::{Method, Route, allowed_methods, route, split_url};

/// Limits on what a client may send; every one is configurable.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_bundle_entries: usize,
    pub default_page_size: u32,
    pub max_page_size: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            max_json_depth: 64,
            max_bundle_entries: 1000,
            default_page_size: 50,
            max_page_size: 1000,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub limits: Limits,
    /// Absolute base URL of the FHIR endpoint, used in `Location` and `Bundle.entry.fullUrl`.
    pub base_url: String,
    /// Whether audit records are built and written. Always true in service; only the benchmark harness
    /// turns it off (`haven serve --benchmark-without-audit`), to measure what auditing costs.
    pub audit_writes: bool,
    /// The role policy (`policy/default.toml` unless configured).
    pub policy: std::sync::Arc<haven_domain::policy::Policy>,
}

/// What the client asked to get back after a write (`Prefer: return=`, http.html#ops).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// Per-request facts the service needs besides the request itself.
#[derive(Clone, Debug, Default)]
pub struct RequestContext {
    pub request_id: String,
    /// Who is calling (from a validated access token). `None` only for Haven's own commands
    /// (`haven reindex`), never for an HTTP request to the FHIR API.
    pub principal: Option<std::sync::Arc<haven_domain::Principal>>,
    /// The client's address as the trusted gateway reports it (audit `source.ip`).
    pub client_address: Option<String>,
    pub prefer: ReturnPreference,
    /// `Prefer: handling=strict`: unknown search parameters are errors, not ignored.
    pub strict_handling: bool,
    /// Why the caller asks (`X-Purpose-Of-Use`, a v3 PurposeOfUse code such as `TREAT`),
    /// recorded in the audit trail and matched against Consents.
    pub purpose_of_use: Option<String>,
}

/// A request body, already checked against its media type by the caller.
#[derive(Debug)]
pub enum RequestBody {
    None,
    /// A FHIR resource in JSON.
    Resource(serde_json::Map<String, serde_json::Value>),
    /// An RFC 6902 JSON Patch document.
    JsonPatch(serde_json::Value),
    /// Raw content for `Binary` (http.html#binary): stored as received.
    Raw {
        content_type: String,
        data: Bytes,
        security_context: Option<String>,
    },
}

#[derive(Debug)]
pub struct FhirRequest {
    pub route: Route,
    pub query: Vec<(String, String)>,
    pub if_match: Option<String>,
    /// `If-None-Exist` (conditional create): search criteria as a query string.
    pub if_none_exist: Option<String>,
    /// Conditional-request headers Haven does not offer (`If-None-Match` on writes), so their
    /// presence is refused rather than ignored.
    pub conditions: Vec<&'static str>,
    pub body: RequestBody,
}

/// The outcome of an interaction, in FHIR terms.
#[derive(Debug)]
pub struct FhirResponse {
    pub status: u16,
    /// Serialized FHIR JSON (compact), or empty.
    pub body: Option<Bytes>,
    /// `Location`, absolute.
    pub location: Option<String>,
    /// Version of the resource concerned, for `ETag`.
    pub version: Option<VersionId>,
    pub last_modified: Option<Timestamp>,
    /// Type of the resource in `body`, when it is a single resource.
    pub resource_type: Option<ResourceType>,
    /// What the answer disclosed, gathered where the full stored resources were at hand (a
    /// search page before `_elements`/`_summary` trimmed them); `None`: read it from `body`.
    pub(crate) audit: Option<audit::Touched>,
}

impl FhirResponse {
    fn json(status: u16, body: Bytes) -> Self {
        Self {
            status,
            body: Some(body),
            location: None,
            version: None,
            last_modified: None,
            resource_type: None,
            audit: None,
        }
    }
}

pub struct FhirService {
    store: Arc<dyn ResourceStore>,
    config: ServiceConfig,
    /// Patients' Consents, briefly cached (`consent`).
    consents: consent::ConsentCache,
    /// The data keys of a sealed store (`sealed`), for erasure; `None` without encryption.
    keys: Option<Arc<haven_keys::DataKeys>>,
}

impl std::fmt::Debug for FhirService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FhirService")
            .field("config", &self.config)
            .finish()
    }
}

impl FhirService {
    #[must_use]
    pub fn new(store: Arc<dyn ResourceStore>, config: ServiceConfig) -> Self {
        Self {
            store,
            config,
            consents: consent::ConsentCache::default(),
            keys: None,
        }
    }

    /// The data keys the store seals with (needed by erasure).
    #[must_use]
    pub fn with_keys(mut self, keys: Arc<haven_keys::DataKeys>) -> Self {
        self.keys = Some(keys);
        self
    }

    #[must_use]
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// Whether the database answers, for readiness probes.
    pub async fn ready(&self) -> Result<(), ServiceError> {
        self.store.ping().await.map_err(ServiceError::from)
    }

    /// Stops the store after in-flight work has finished.
    pub async fn shutdown(&self) {
        self.store.close().await;
    }

    /// Parses a request body as a FHIR JSON resource, with the configured limits.
    pub fn parse_resource(
        &self,
        bytes: &[u8],
    ) -> Result<serde_json::Map<String, serde_json::Value>, ServiceError> {
        let limits = JsonLimits {
            max_depth: self.config.limits.max_json_depth,
        };
        haven_fhir::json::parse_resource_json(bytes, &limits)
            .map_err(|e| ServiceError::Malformed(e.to_string()))
    }

    /// Parses a JSON Patch body.
    pub fn parse_json_patch(&self, bytes: &[u8]) -> Result<serde_json::Value, ServiceError> {
        let limits = JsonLimits {
            max_depth: self.config.limits.max_json_depth,
        };
        haven_fhir::json::parse_json(bytes, &limits)
            .map_err(|e| ServiceError::Malformed(e.to_string()))
    }

    /// Runs one FHIR interaction.
    pub async fn handle(
        &self,
        ctx: &RequestContext,
        req: FhirRequest,
    ) -> Result<FhirResponse, ServiceError> {
        let action = req.route.interaction().as_str();
        let decided = match access::check(&self.config.policy, ctx, &req.route) {
            Ok(access::Confinement::Unconfined) => {
                access::check_reach(&self.config.policy, ctx, &req.query)
                    .and_then(|()| match (&req.route, &req.if_none_exist) {
                        (Route::Create(ty), Some(c)) => {
                            access::check_criteria(&self.config.policy, ctx, *ty, c)
                        }
                        _ => Ok(()),
                    })
                    .map(|()| req)
            }
            Ok(access::Confinement::Patient(patient)) => self.confine(&patient, req).await,
            Ok(access::Confinement::OwnPatientFields(fields)) => {
                self.own_patient_update(req, &fields).await
            }
            Err(refused) => Err(refused),
        };
        let decided = match decided {
            Ok(req) => self.apply_scope_filter(ctx, req).await,
            Err(e) => Err(e),
        };
        let req = match decided {
            Ok(req) => req,
            Err(refused) => {
                // A refusal is an access attempt: recorded before it is answered.
                return self
                    .audit_answer::<FhirResponse>(
                        ctx,
                        action,
                        Err(refused),
                        |_| audit::Touched::default(),
                        |r| r.status,
                        Some("refused=access".into()),
                    )
                    .await;
            }
        };
        prepare::refuse_conditions(&req.conditions)?;
        if let Some(r) = self.audit_view(ctx, &req).await {
            return r;
        }
        // A Consent written here applies here at once (elsewhere within `consent::TTL`): the
        // cache is emptied before the write and again once it has committed.
        let consent_write = req.route.interaction().is_write()
            && req
                .route
                .resource_type()
                .is_none_or(|t| t.as_str() == "Consent");
        if consent_write {
            self.consents.clear();
        }
        let result = match req.route {
            Route::Capabilities => Ok(FhirResponse::json(200, self.capabilities())),
            Route::Bundle => match req.body {
                RequestBody::Resource(bundle) => self.process_bundle(ctx, bundle).await,
                _ => Err(ServiceError::BadRequest(
                    "POST to the base expects a batch or transaction Bundle".into(),
                )),
            },
            Route::HistorySystem | Route::HistoryType(_) | Route::HistoryInstance(..) => {
                self.audited_history(ctx, &req.route, &req.query).await
            }
            Route::Validate(ty, id) => {
                let subject = id.clone();
                let r = self.validate_operation(ty, id, req.body, &req.query).await;
                match subject {
                    // Validating a stored resource reads it.
                    Some(id) => {
                        self.audit_bundle(
                            ctx,
                            "operation",
                            r,
                            Some("$validate".into()),
                            Some((ty, id.as_str())),
                        )
                        .await
                    }
                    None => r,
                }
            }
            Route::Search(scope) => self.audited_search(ctx, &scope, &req.query).await,
            Route::Everything(patient) => {
                let mut withheld = Vec::new();
                let r = match self
                    .check_consent(ctx, &[patient.as_str().to_owned()])
                    .await
                {
                    Ok(()) => self.everything(ctx, &patient, &req.query).await,
                    Err(e) => Err(e),
                };
                let r = self
                    .consent_filtered(ctx, r, &req.query, &mut withheld)
                    .await;
                let patient_type = ResourceType::parse("Patient").ok_or(ServiceError::Internal)?;
                self.audit_bundle(
                    ctx,
                    "everything",
                    r,
                    consent::with_withheld(
                        audit::parameter_names("params=", &req.query),
                        &withheld,
                    ),
                    Some((patient_type, patient.as_str())),
                )
                .await
            }
            route => {
                let op = self.prepare_single(
                    route,
                    req.if_match.as_deref(),
                    req.if_none_exist.as_deref(),
                    &req.query,
                    req.body,
                )?;
                self.execute_single(ctx, op).await
            }
        };
        if consent_write {
            self.consents.clear();
        }
        result
    }
}

impl FhirService {
    /// The audit trail's own view (`audit_view`), with its audit record: reading the trail is
    /// itself recorded. `None`: the request is not for it.
    async fn audit_view(
        &self,
        ctx: &RequestContext,
        req: &FhirRequest,
    ) -> Option<Result<FhirResponse, ServiceError>> {
        let audit_event = |t: &ResourceType| t.as_str() == "AuditEvent";
        let (action, r, detail) = match &req.route {
            Route::Read(t, id) if audit_event(t) => {
                ("read", self.audit_view_read(id, None).await, None)
            }
            Route::Vread(t, id, v) if audit_event(t) => {
                ("vread", self.audit_view_read(id, Some(*v)).await, None)
            }
            Route::Search(search::SearchScope::Type(t)) if audit_event(t) => (
                "search-type",
                self.audit_view_search(&req.query).await,
                audit::parameter_names("type=AuditEvent params=", &req.query),
            ),
            Route::Disclosures(patient) => {
                let r = self.disclosures(patient, &req.query).await;
                let ty = ResourceType::parse("Patient")?;
                return Some(
                    self.audit_bundle(
                        ctx,
                        "disclosures",
                        r,
                        Some("$disclosures".into()),
                        Some((ty, patient.as_str())),
                    )
                    .await,
                );
            }
            _ => return None,
        };
        Some(self.audit_bundle(ctx, action, r, detail, None).await)
    }

    /// A search with its audit record.
    pub(crate) async fn audited_search(
        &self,
        ctx: &RequestContext,
        scope: &search::SearchScope,
        query: &[(String, String)],
    ) -> Result<FhirResponse, ServiceError> {
        let mut withheld = Vec::new();
        let r = match scope {
            search::SearchScope::Compartment { patient, .. } => {
                match self
                    .check_consent(ctx, &[patient.as_str().to_owned()])
                    .await
                {
                    Ok(()) => self.search(ctx, scope, query).await,
                    Err(e) => Err(e),
                }
            }
            _ => self.search(ctx, scope, query).await,
        };
        let r = self.consent_filtered(ctx, r, query, &mut withheld).await;
        let r = r.map(|mut resp| {
            let left_out = access::filter_includes(&self.config.policy, ctx, query, &mut resp);
            if !left_out.is_empty() {
                withheld.push(format!("includes:{}", left_out.join("+")));
            }
            resp
        });
        let (action, subject) = match scope {
            search::SearchScope::System => ("search-system", None),
            search::SearchScope::Type(_) => ("search-type", None),
            search::SearchScope::Compartment { patient, .. } => (
                "search-compartment",
                ResourceType::parse("Patient").map(|t| (t, patient.as_str())),
            ),
        };
        let detail = match scope {
            search::SearchScope::Type(t) | search::SearchScope::Compartment { ty: t, .. } => {
                audit::parameter_names(&format!("type={t} params="), query)
            }
            search::SearchScope::System => audit::parameter_names("params=", query),
        };
        let detail = consent::with_withheld(detail, &withheld);
        self.audit_bundle(ctx, action, r, detail, subject).await
    }

    /// A history read with its audit record.
    pub(crate) async fn audited_history(
        &self,
        ctx: &RequestContext,
        route: &Route,
        query: &[(String, String)],
    ) -> Result<FhirResponse, ServiceError> {
        let mut withheld = Vec::new();
        let r = self.history(route, query).await;
        let r = self.consent_filtered(ctx, r, query, &mut withheld).await;
        let (action, subject) = match route {
            Route::HistoryInstance(t, id) => ("history-instance", Some((*t, id.as_str()))),
            Route::HistoryType(_) => ("history-type", None),
            _ => ("history-system", None),
        };
        self.audit_bundle(
            ctx,
            action,
            r,
            consent::with_withheld(audit::parameter_names("params=", query), &withheld),
            subject,
        )
        .await
    }

    /// Narrows a read or search to what the caller's granular scopes allow (SMART v2
    /// `Observation.rs?category=vital-signs`): a search gets the filter as further criteria; a
    /// read is answered only if the resource matches one of the filters (else 404, as for a
    /// record outside the caller's reach). Filters are checked against the current version.
    async fn apply_scope_filter(
        &self,
        ctx: &RequestContext,
        mut req: FhirRequest,
    ) -> Result<FhirRequest, ServiceError> {
        let Some(filter) = access::scope_filter(ctx, &req.route) else {
            return Ok(req);
        };
        // A filter on a parameter this type's search does not know would be dropped by lenient
        // handling, and with it the restriction: refuse instead.
        if let Some(ty) = req.route.resource_type() {
            let defs = haven_fhir::definitions();
            for (name, _) in filter.alternatives.iter().flatten() {
                let code = name.split(':').next().unwrap_or(name);
                let known = matches!(
                    code,
                    "_id" | "_lastUpdated" | "_tag" | "_security" | "_profile"
                ) || defs
                    .search_params(ty)
                    .any(|p| p.code == code && p.is_supported());
                if !known {
                    return Err(ServiceError::Forbidden(format!(
                        "the access token's granular scope filters {ty} on '{code}', which is not \
                         a search parameter of {ty} here; ask for a scope with a filter this \
                         server can apply"
                    )));
                }
            }
        }
        match &req.route {
            Route::Search(_) => {
                req.query.extend(filter.as_search_params()?);
                Ok(req)
            }
            Route::Read(ty, id) | Route::Vread(ty, id, _) => {
                for alternative in &filter.alternatives {
                    let mut pairs = vec![("_id".to_owned(), id.as_str().to_owned())];
                    pairs.extend(alternative.iter().cloned());
                    let found = self
                        .search(
                            &RequestContext::default(),
                            &search::SearchScope::Type(*ty),
                            &pairs,
                        )
                        .await?;
                    let matched = found
                        .body
                        .as_deref()
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                        .and_then(|b| {
                            b.get("entry")
                                .and_then(|e| e.as_array())
                                .map(|e| !e.is_empty())
                        })
                        .unwrap_or(false);
                    if matched {
                        return Ok(req);
                    }
                }
                Err(ServiceError::NotFound(format!("{ty}/{id} is not known")))
            }
            _ => Ok(req),
        }
    }

    /// A Bundle answer without what patients' Consents withhold from the caller.
    async fn consent_filtered(
        &self,
        ctx: &RequestContext,
        r: Result<FhirResponse, ServiceError>,
        query: &[(String, String)],
        withheld: &mut Vec<String>,
    ) -> Result<FhirResponse, ServiceError> {
        let mut resp = r?;
        // `_elements` and `_summary` may have trimmed the references that place a resource
        // with its patient: then the stored versions tell.
        let subsetted = query
            .iter()
            .any(|(k, _)| k == "_elements" || k == "_summary");
        *withheld = self.filter_by_consent(ctx, &mut resp, subsetted).await?;
        Ok(resp)
    }
}

/// Decodes a stored `Binary` resource into its content type and raw bytes, for serving the
/// native content (http.html#binary). `None` if the body is not a Binary with data.
#[must_use]
pub fn binary_content(body: &[u8]) -> Option<(String, Vec<u8>)> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let ct = v.get("contentType")?.as_str()?.to_owned();
    let data = match v.get("data").and_then(|d| d.as_str()) {
        Some(d) => base64::engine::general_purpose::STANDARD.decode(d).ok()?,
        None => Vec::new(),
    };
    Some((ct, data))
}
