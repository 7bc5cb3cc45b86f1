//! Batch and transaction Bundles (R4 http.html#transaction).
//!
//! A transaction runs as one unit of work: every entry succeeds or nothing is stored. Entries
//! run in the order the spec prescribes (DELETE, POST, PUT/PATCH, GET/HEAD), `urn:uuid:`
//! references between entries are rewritten to the ids the server assigns, and the response
//! lists one entry per request entry, in request order. A batch runs each entry on its own;
//! one entry's failure becomes that entry's response and does not affect the others.

use std::collections::{HashMap, HashSet};

use base64::Engine as _;
use futures::StreamExt as _;
use haven_store::{StoreError, WriteTx, run_write};

use crate::audit::{self, Touched, Who};
use serde_json::{Map, Value};

use crate::interactions::{Done, IsRace, apply, retry_on_race};
use crate::patch::parse_patch;
use crate::prepare::{
    Criteria, MAX_CONDITIONAL_DELETES, Op, cap_issues, check_resource, conformance_errors,
    parse_if_match, refuse_conditions,
};
use crate::route::{Method, Route, route, split_url};
use crate::wire::{BundleOut, Entry, EntryResponse, bundle_meta, raw, status_line};
use crate::{FhirResponse, FhirService, RequestContext, ReturnPreference, ServiceError, outcome};
use haven_domain::{ResourceId, ResourceType};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Batch,
    Transaction,
}

/// An entry's request as parsed from the Bundle, before ids are assigned.
#[derive(Clone)]
struct Planned {
    index: usize,
    method: Method,
    route: Route,
    query: Vec<(String, String)>,
    if_match: Option<String>,
    /// `request.ifNoneExist`: a conditional create.
    if_none_exist: Option<String>,
    resource: Option<Map<String, Value>>,
    full_url: Option<String>,
}

/// A failed unit of work: which entry failed, and why.
struct EntryFailure {
    index: Option<usize>,
    error: ServiceError,
    /// What a conditional entry or reference matched changed between planning and the unit:
    /// plan again.
    changed: bool,
}

impl From<StoreError> for EntryFailure {
    fn from(e: StoreError) -> Self {
        EntryFailure {
            index: None,
            error: e.into(),
            changed: false,
        }
    }
}

/// Attempts at a transaction whose conditional matches keep changing under it.
const CONDITIONAL_ATTEMPTS: usize = 3;

/// A search a transaction decided on while planning, and what it found then. The unit checks
/// it again under `lock_criteria`, so the transaction commits only on the answers it was
/// planned with.
#[derive(Clone)]
struct Expectation {
    criteria: Criteria,
    found: Vec<(ResourceType, ResourceId)>,
}

/// Entries of a batch that run at once.
const BATCH_CONCURRENCY: usize = 8;

impl IsRace for EntryFailure {
    fn is_race(&self) -> bool {
        // A changed conditional match needs a new plan, not the same unit again.
        !self.changed && self.error.is_race()
    }
}

/// The order category of an entry (http.html#trules).
fn phase(method: Method) -> u8 {
    match method {
        Method::Delete => 0,
        Method::Post => 1,
        Method::Put | Method::Patch => 2,
        Method::Get | Method::Head => 3,
    }
}

/// Adds the entry's position to an error, so the client knows which entry to fix.
fn in_entry(e: ServiceError, index: usize) -> ServiceError {
    let p = |m: String| format!("Bundle.entry[{index}]: {m}");
    match e {
        ServiceError::Invalid(issues) => ServiceError::Invalid(
            issues
                .into_iter()
                .map(|mut i| {
                    // "Patient.name[0]" -> "Bundle.entry[3].resource.name[0]"
                    let rest = i.location.split_once('.').map(|(_, r)| r).unwrap_or("");
                    i.location = if rest.is_empty() {
                        format!("Bundle.entry[{index}].resource")
                    } else {
                        format!("Bundle.entry[{index}].resource.{rest}")
                    };
                    i
                })
                .collect(),
        ),
        ServiceError::Malformed(m) => ServiceError::Malformed(p(m)),
        ServiceError::BadRequest(m) => ServiceError::BadRequest(p(m)),
        ServiceError::NotFound(m) => ServiceError::NotFound(p(m)),
        ServiceError::Forbidden(m) => ServiceError::Forbidden(p(m)),
        ServiceError::InsufficientScope(m) => ServiceError::InsufficientScope(p(m)),
        ServiceError::Unauthenticated { error, message } => ServiceError::Unauthenticated {
            error,
            message: p(message),
        },
        ServiceError::MethodNotAllowed(m) => ServiceError::MethodNotAllowed(p(m)),
        ServiceError::NotAcceptable(m) => ServiceError::NotAcceptable(p(m)),
        ServiceError::Conflict(m) => ServiceError::Conflict(p(m)),
        ServiceError::Gone {
            message,
            version,
            last_updated,
        } => ServiceError::Gone {
            message: p(message),
            version,
            last_updated,
        },
        ServiceError::PreconditionFailed(m) => ServiceError::PreconditionFailed(p(m)),
        ServiceError::TooLarge(m) => ServiceError::TooLarge(p(m)),
        ServiceError::UnsupportedMedia(m) => ServiceError::UnsupportedMedia(p(m)),
        ServiceError::Unprocessable(m) => ServiceError::Unprocessable(p(m)),
        ServiceError::UnknownType(t) => ServiceError::NotFound(p(format!(
            "'{t}' is not an R4 resource type this server knows"
        ))),
        other @ (ServiceError::Unavailable
        | ServiceError::Internal
        | ServiceError::OutcomeUnknown
        | ServiceError::WriteRace) => other,
    }
}

/// Collects `Reference.reference` values that are search criteria (`Patient?identifier=...`).
fn collect_conditional_references(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "reference"
                    && let Value::String(s) = child
                    && s.contains('?')
                    && !s.contains("://")
                {
                    if !out.contains(s) {
                        out.push(s.clone());
                    }
                    continue;
                }
                collect_conditional_references(child, out);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|i| collect_conditional_references(i, out)),
        _ => {}
    }
}

/// Rewrites every `Reference.reference` equal to a mapped `fullUrl`; returns the first
/// `urn:uuid:`/`urn:oid:` reference left unresolved.
fn rewrite_references(v: &mut Value, map: &HashMap<String, String>) -> Option<String> {
    let mut unresolved = None;
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "reference"
                    && let Value::String(s) = child
                {
                    if let Some(new) = map.get(s.as_str()) {
                        *s = new.clone();
                    } else if (s.starts_with("urn:uuid:") || s.starts_with("urn:oid:"))
                        && unresolved.is_none()
                    {
                        unresolved = Some(s.clone());
                    }
                    continue;
                }
                if let Some(u) = rewrite_references(child, map) {
                    unresolved.get_or_insert(u);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                if let Some(u) = rewrite_references(item, map) {
                    unresolved.get_or_insert(u);
                }
            }
        }
        _ => {}
    }
    unresolved
}

impl FhirService {
    pub(crate) async fn process_bundle(
        &self,
        ctx: &RequestContext,
        bundle: Map<String, Value>,
    ) -> Result<FhirResponse, ServiceError> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(ServiceError::BadRequest(
                "POST to the base expects a Bundle of type batch or transaction".into(),
            ));
        }
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("batch") => Kind::Batch,
            Some("transaction") => Kind::Transaction,
            _ => {
                return Err(ServiceError::BadRequest(
                    "Bundle.type must be 'batch' or 'transaction' to be processed".into(),
                ));
            }
        };
        let count = match bundle.get("entry") {
            None => 0,
            Some(Value::Array(a)) => a.len(),
            Some(_) => {
                return Err(ServiceError::BadRequest(
                    "Bundle.entry must be an array".into(),
                ));
            }
        };
        let max = self.config.limits.max_bundle_entries;
        if count > max {
            return Err(ServiceError::TooLarge(format!(
                "the Bundle has {count} entries; this server accepts at most {max} per request — split it"
            )));
        }
        match kind {
            Kind::Transaction => {
                // The envelope and every entry are checked against R4 before anything runs.
                conformance_errors(&bundle)?;
                self.transaction(ctx, bundle).await
            }
            Kind::Batch => self.batch(ctx, bundle).await,
        }
    }

    fn plan_entry(
        &self,
        ctx: &RequestContext,
        index: usize,
        entry: Value,
    ) -> Result<Planned, ServiceError> {
        let Value::Object(mut entry) = entry else {
            return Err(ServiceError::BadRequest(
                "the entry must be a JSON object".into(),
            ));
        };
        let request = entry
            .get("request")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ServiceError::BadRequest("request is required (method and url)".into())
            })?;
        let method = request
            .get("method")
            .and_then(Value::as_str)
            .and_then(Method::parse)
            .ok_or_else(|| {
                ServiceError::BadRequest(
                    "request.method must be GET, HEAD, POST, PUT, PATCH or DELETE".into(),
                )
            })?;
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ServiceError::BadRequest("request.url is required".into()))?;
        let conditions: Vec<&str> = ["ifNoneMatch", "ifModifiedSince"]
            .into_iter()
            .filter(|k| request.contains_key(*k))
            .collect();
        refuse_conditions(&conditions)?;
        let if_none_exist = request
            .get("ifNoneExist")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let if_match = request
            .get("ifMatch")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let base_prefix = format!("{}/", self.config.base_url);
        let relative = url.strip_prefix(&base_prefix).unwrap_or(url);
        if relative.contains("://") {
            return Err(ServiceError::BadRequest(format!(
                "request.url must be relative to this server's base ({})",
                self.config.base_url
            )));
        }
        let (segments, query) = split_url(relative)?;
        let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
        let route = route(method, &segs)?;
        crate::access::check_reach(&self.config.policy, ctx, &query)?;
        // Criteria the entry runs (ifNoneExist, conditional references) are searches too.
        if let (Some(c), Route::Create(ty)) = (&if_none_exist, &route) {
            crate::access::check_criteria(&self.config.policy, ctx, *ty, c)?;
        }
        if let Some(Value::Object(resource)) = entry.get("resource") {
            let mut refs = Vec::new();
            collect_conditional_references(&Value::Object(resource.clone()), &mut refs);
            for text in refs {
                let (ty, q) = text.split_once('?').unwrap_or((&text, ""));
                if let Some(ty) = ResourceType::parse(ty) {
                    crate::access::check_criteria(&self.config.policy, ctx, ty, q)?;
                }
            }
        }
        if crate::access::scope_filter(ctx, &route).is_some() {
            return Err(ServiceError::Forbidden(
                "a token whose granular scopes (Type.rs?param=value) allow this only in part \
                 cannot use it in a batch or transaction; call it directly"
                    .into(),
            ));
        }
        if crate::access::check(&self.config.policy, ctx, &route)?
            != crate::access::Confinement::Unconfined
        {
            return Err(ServiceError::Forbidden(
                "a caller confined to one patient's record cannot use batches or transactions"
                    .into(),
            ));
        }
        if matches!(
            route,
            Route::Bundle | Route::Capabilities | Route::Validate(..)
        ) {
            return Err(ServiceError::BadRequest(
                "only create, read, vread, update, patch, delete and history may appear in a Bundle".into(),
            ));
        }
        if route
            .resource_type()
            .is_some_and(|t| t.as_str() == "AuditEvent")
        {
            return Err(ServiceError::Forbidden(
                "the audit trail is not read or written in a Bundle; call GET AuditEvent directly"
                    .into(),
            ));
        }
        if matches!(route, Route::Everything(_)) {
            return Err(ServiceError::BadRequest(
                "$everything cannot run inside a Bundle; call it directly".into(),
            ));
        }
        if if_none_exist.is_some() && !matches!(route, Route::Create(_)) {
            return Err(ServiceError::BadRequest(
                "ifNoneExist applies to POST (create) entries only".into(),
            ));
        }
        if !query.is_empty()
            && !matches!(
                route,
                Route::HistoryInstance(..)
                    | Route::HistoryType(_)
                    | Route::HistorySystem
                    | Route::Search(_)
                    | Route::ConditionalUpdate(_)
                    | Route::ConditionalDelete(_)
            )
        {
            return Err(ServiceError::BadRequest(
                "only searches, history and conditional updates and deletes take query parameters"
                    .into(),
            ));
        }
        let resource = match entry.remove("resource") {
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                return Err(ServiceError::BadRequest(
                    "resource must be a JSON object".into(),
                ));
            }
            None => None,
        };
        let full_url = entry
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Planned {
            index,
            method,
            route,
            query,
            if_match,
            if_none_exist,
            resource,
            full_url,
        })
    }

    /// Turns a planned entry into an operation (the id for a create is given by the caller).
    fn entry_op(
        &self,
        p: Planned,
        create_id: Option<haven_domain::ResourceId>,
    ) -> Result<Op, ServiceError> {
        let if_match = parse_if_match(p.if_match.as_deref())?;
        let need_resource = |r: Option<Map<String, Value>>| {
            r.ok_or_else(|| ServiceError::BadRequest("this entry needs a resource".into()))
        };
        Ok(match p.route {
            Route::Create(ty) => Op::Create {
                ty,
                id: create_id.unwrap_or_else(haven_domain::ResourceId::generate),
                body: check_resource(ty, need_resource(p.resource)?, None)?,
                if_none_exist: p
                    .if_none_exist
                    .as_deref()
                    .map(|c| self.entry_criteria(ty, c, 2, "ifNoneExist"))
                    .transpose()?,
            },
            Route::ConditionalUpdate(ty) => Op::ConditionalUpdate {
                ty,
                body: check_resource(ty, need_resource(p.resource)?, None)?,
                criteria: Criteria::new(self, ty, &p.query, 2, "a conditional update")?,
            },
            Route::ConditionalDelete(ty) => Op::ConditionalDelete {
                ty,
                criteria: Criteria::new(
                    self,
                    ty,
                    &p.query,
                    MAX_CONDITIONAL_DELETES + 1,
                    "a conditional delete",
                )?,
            },
            Route::Update(ty, id) => Op::Update {
                ty,
                body: check_resource(ty, need_resource(p.resource)?, Some(&id))?,
                id,
                if_match,
            },
            Route::Patch(ty, id) => {
                // In a Bundle, a JSON Patch travels as a Binary (http.html#patch).
                let binary = need_resource(p.resource)?;
                let is_json_patch = binary.get("resourceType").and_then(Value::as_str)
                    == Some("Binary")
                    && binary
                        .get("contentType")
                        .and_then(Value::as_str)
                        .is_some_and(|c| c.starts_with("application/json-patch+json"));
                if !is_json_patch {
                    return Err(ServiceError::UnsupportedMedia(
                        "a PATCH entry must carry a Binary with contentType application/json-patch+json".into(),
                    ));
                }
                let data = binary.get("data").and_then(Value::as_str).unwrap_or("");
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|_| {
                        ServiceError::BadRequest("the patch Binary's data is not base64".into())
                    })?;
                let doc = self.parse_json_patch(&decoded)?;
                Op::Patch {
                    ty,
                    id,
                    patch: parse_patch(doc)?,
                    if_match,
                    limits: self.patch_limits(),
                }
            }
            Route::Delete(ty, id) => Op::Delete { ty, id, if_match },
            Route::Read(ty, id) => Op::Read { ty, id },
            Route::Vread(ty, id, version) => Op::Vread { ty, id, version },
            _ => {
                return Err(ServiceError::BadRequest(
                    "history and search cannot run inside a transaction; use a batch".into(),
                ));
            }
        })
    }

    /// Criteria given as a query string (`ifNoneExist`, a conditional reference).
    fn entry_criteria(
        &self,
        ty: ResourceType,
        query: &str,
        limit: u32,
        what: &str,
    ) -> Result<Criteria, ServiceError> {
        let query = query.strip_prefix('?').unwrap_or(query);
        let pairs = split_url(&format!("?{query}"))?.1;
        Criteria::new(self, ty, &pairs, limit, what)
    }

    /// Runs a planned search outside the unit (planning), for an [`Expectation`].
    async fn expect(&self, criteria: Criteria) -> Result<Expectation, ServiceError> {
        let page = self.store.search(&criteria.query).await?;
        let found = page
            .matches
            .iter()
            .map(|f| (f.version.resource_type, f.version.id.clone()))
            .collect();
        Ok(Expectation { criteria, found })
    }

    async fn transaction(
        &self,
        ctx: &RequestContext,
        mut bundle: Map<String, Value>,
    ) -> Result<FhirResponse, ServiceError> {
        let entries = match bundle.remove("entry") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let n = entries.len();
        let mut planned = Vec::with_capacity(n);
        for (i, e) in entries.into_iter().enumerate() {
            planned.push(self.plan_entry(ctx, i, e).map_err(|err| in_entry(err, i))?);
        }
        let who = Who::of(ctx);
        // Reads run inside the unit of work; a patient's Consent is checked before it, so a
        // refused read refuses the whole transaction and nothing is written.
        if ctx.principal.is_some() && self.any_consent().await? {
            for p in &planned {
                let read = match &p.route {
                    Route::Read(ty, id) => self.store.read_current(*ty, id).await?,
                    Route::Vread(ty, id, v) => self.store.read_version(*ty, id, *v).await?,
                    _ => continue,
                };
                let Some(v) = read else { continue };
                let mut t = Touched::default();
                t.patients_of_version(&v);
                if let Err(e) = self.check_consent(ctx, &t.patients).await {
                    return self.transaction_refused(&who, in_entry(e, p.index)).await;
                }
            }
        }
        let mut attempt = 0;
        let results = loop {
            attempt += 1;
            match self.run_transaction(planned.clone(), &who).await {
                Err(f) if f.changed && attempt < CONDITIONAL_ATTEMPTS => {
                    tracing::debug!(
                        attempt,
                        "re-planning a transaction whose conditional matches changed"
                    );
                }
                Err(f) if f.changed => {
                    return self
                        .transaction_refused(&who, ServiceError::WriteRace)
                        .await;
                }
                Err(f) => {
                    let error = match f.index {
                        Some(i) => in_entry(f.error, i),
                        None => f.error,
                    };
                    return self.transaction_refused(&who, error).await;
                }
                Ok(done) => break done,
            }
        };

        let mut by_index: Vec<Option<Done>> = (0..n).map(|_| None).collect();
        for (i, d) in results {
            by_index[i] = Some(d);
        }
        let outcomes: Vec<Result<Done, ServiceError>> = by_index
            .into_iter()
            .map(|d| d.ok_or(ServiceError::Internal))
            .collect();
        let withheld = self.withheld_in(ctx, &outcomes).await?;
        self.bundle_response(ctx, "transaction-response", outcomes, Vec::new(), &withheld)
    }

    /// Plans a transaction (resolving conditional entries and references by search, then
    /// assigning ids and rewriting references) and runs it as one unit of work that first
    /// checks every search still finds what planning found.
    /// Records a transaction that wrote nothing, then returns its error.
    async fn transaction_refused(
        &self,
        who: &Who,
        error: ServiceError,
    ) -> Result<FhirResponse, ServiceError> {
        if !audit::worth_recording(&error) {
            return Err(error);
        }
        self.audit_alone(audit::entry(
            who,
            "transaction",
            error.status(),
            Touched::default(),
            None,
        ))
        .await?;
        Err(error)
    }

    async fn run_transaction(
        &self,
        mut planned: Vec<Planned>,
        who: &Who,
    ) -> Result<Vec<(usize, Done)>, EntryFailure> {
        let fail = |index: usize| {
            move |error: ServiceError| EntryFailure {
                index: Some(index),
                error,
                changed: false,
            }
        };
        let n = planned.len();
        let mut expectations: Vec<Expectation> = Vec::new();
        // 1. Assign ids to creates and map every fullUrl to the resource's new identity;
        // conditional creates and updates take the identity their criteria find.
        let mut mapping: HashMap<String, String> = HashMap::new();
        let mut create_ids = vec![None; n];
        let mut existing: Vec<Option<(ResourceType, ResourceId)>> = vec![None; n];
        for p in &mut planned {
            let target = match &p.route {
                Route::Create(ty) => {
                    let ty = *ty;
                    let mut id = ResourceId::generate();
                    if let Some(c) = &p.if_none_exist {
                        let criteria = self
                            .entry_criteria(ty, c, 2, "ifNoneExist")
                            .map_err(fail(p.index))?;
                        let e = self.expect(criteria).await.map_err(fail(p.index))?;
                        match e.found.as_slice() {
                            [] => {}
                            [(t, found)] => {
                                id = found.clone();
                                existing[p.index] = Some((*t, found.clone()));
                            }
                            _ => {
                                return Err(fail(p.index)(ServiceError::PreconditionFailed(
                                    "ifNoneExist matches more than one resource; make the \
                                     criteria more selective"
                                        .into(),
                                )));
                            }
                        }
                        expectations.push(e);
                    }
                    let t = format!("{ty}/{id}");
                    if let Some(c) = &p.if_none_exist {
                        // A conditional reference with the same criteria as a conditional
                        // create in this transaction means that entry's resource.
                        let c = c.strip_prefix('?').unwrap_or(c);
                        mapping.insert(format!("{ty}?{c}"), t.clone());
                    }
                    create_ids[p.index] = Some(id);
                    Some(t)
                }
                Route::Update(ty, id) => Some(format!("{ty}/{id}")),
                Route::ConditionalUpdate(ty) => {
                    let ty = *ty;
                    let criteria = Criteria::new(self, ty, &p.query, 2, "a conditional update")
                        .map_err(fail(p.index))?;
                    let e = self.expect(criteria).await.map_err(fail(p.index))?;
                    let id = match e.found.as_slice() {
                        [] => p
                            .resource
                            .as_ref()
                            .and_then(|r| r.get("id"))
                            .and_then(Value::as_str)
                            .and_then(|s| ResourceId::parse(s).ok())
                            .unwrap_or_else(ResourceId::generate),
                        [(_, id)] => id.clone(),
                        _ => {
                            return Err(fail(p.index)(ServiceError::PreconditionFailed(
                                "the conditional update matches more than one resource; make \
                                 the criteria more selective"
                                    .into(),
                            )));
                        }
                    };
                    expectations.push(e);
                    // From here on it is a plain update of the resource the criteria chose.
                    p.route = Route::Update(ty, id.clone());
                    p.query.clear();
                    if let Some(r) = p.resource.as_mut() {
                        r.insert("id".into(), Value::from(id.as_str()));
                    }
                    Some(format!("{ty}/{id}"))
                }
                _ => None,
            };
            if let (Some(full), Some(t)) = (&p.full_url, target)
                && mapping.insert(full.clone(), t).is_some()
            {
                return Err(fail(p.index)(ServiceError::BadRequest(format!(
                    "fullUrl {full} appears more than once"
                ))));
            }
        }
        // 2. Conditional references (`Patient?identifier=...`) resolve to the one resource
        // they match (http.html#trules).
        for p in &planned {
            let mut refs = Vec::new();
            if let Some(r) = &p.resource {
                collect_conditional_references(&Value::Object(r.clone()), &mut refs);
            }
            for text in refs {
                if mapping.contains_key(&text) {
                    continue;
                }
                let (ty, query) = text.split_once('?').unwrap_or((&text, ""));
                let ty = ResourceType::parse(ty).ok_or_else(|| {
                    fail(p.index)(ServiceError::BadRequest(format!(
                        "the conditional reference {} does not start with a resource type",
                        text.chars().take(80).collect::<String>()
                    )))
                })?;
                let criteria = self
                    .entry_criteria(ty, query, 2, "a conditional reference")
                    .map_err(fail(p.index))?;
                let e = self.expect(criteria).await.map_err(fail(p.index))?;
                let target = match e.found.as_slice() {
                    [(t, id)] => format!("{t}/{id}"),
                    found => {
                        return Err(fail(p.index)(ServiceError::PreconditionFailed(format!(
                            "the conditional reference {} matches {} resources; it must match \
                             exactly one",
                            text.chars().take(80).collect::<String>(),
                            found.len()
                        ))));
                    }
                };
                expectations.push(e);
                mapping.insert(text, target);
            }
        }
        // 3. Rewrite references between entries.
        for p in &mut planned {
            if let Some(res) = p.resource.take() {
                let mut v = Value::Object(res);
                if let Some(u) = rewrite_references(&mut v, &mapping) {
                    return Err(fail(p.index)(ServiceError::BadRequest(format!(
                        "the reference {u} is not the fullUrl of any entry in this transaction"
                    ))));
                }
                if let Value::Object(m) = v {
                    p.resource = Some(m);
                }
            }
        }
        // 4. Validate and build operations; no resource may be touched twice (http.html#trules).
        let mut ops: Vec<(usize, u8, Op)> = Vec::with_capacity(n);
        let mut touched = HashSet::new();
        let mut issues = Vec::new();
        for p in planned {
            let (index, ph) = (p.index, phase(p.method));
            // A conditional create that found its resource reads it instead.
            if let Some((ty, id)) = existing[index].take() {
                ops.push((index, ph, Op::Read { ty, id }));
                continue;
            }
            let mut p = p;
            // The search was made while planning and is checked again in the unit.
            p.if_none_exist = None;
            match self.entry_op(p, create_ids[index].take()) {
                Ok(op) => {
                    if let Some((ty, id)) = op.target()
                        && op.is_write()
                        && !touched.insert((ty, id.clone()))
                    {
                        return Err(fail(index)(ServiceError::BadRequest(format!(
                            "{ty}/{id} is changed by more than one entry; a transaction may touch each resource once"
                        ))));
                    }
                    ops.push((index, ph, op));
                }
                Err(ServiceError::Invalid(found)) => {
                    if let ServiceError::Invalid(found) =
                        in_entry(ServiceError::Invalid(found), index)
                    {
                        issues.extend(found);
                    }
                }
                Err(other) => return Err(fail(index)(other)),
            }
        }
        if !issues.is_empty() {
            return Err(EntryFailure {
                index: None,
                error: ServiceError::Invalid(cap_issues(issues)),
                changed: false,
            });
        }
        ops.sort_by_key(|(index, ph, _)| (*ph, *index));
        let ops = ops
            .into_iter()
            .map(|(index, ph, op)| Ok((index, ph, op.sealed().map_err(fail(index))?)))
            .collect::<Result<Vec<_>, EntryFailure>>()?;

        // 5. Run every entry in one unit of work, after checking the planned searches.
        let audit_writes = self.config.audit_writes;
        retry_on_race(|| {
            let ops = ops.clone();
            let expectations = expectations.clone();
            let who = who.clone();
            run_write(self.store.as_ref(), move |tx: &mut dyn WriteTx| {
                Box::pin(async move {
                    for e in &expectations {
                        tx.lock_criteria(e.criteria.lock_key).await?;
                        let now = tx.search_ids(&e.criteria.query).await?;
                        if now != e.found {
                            return Err(EntryFailure {
                                index: None,
                                error: ServiceError::WriteRace,
                                changed: true,
                            });
                        }
                    }
                    let mut done = Vec::with_capacity(ops.len());
                    for (index, _, op) in ops {
                        let d = apply(tx, op).await.map_err(|error| EntryFailure {
                            index: Some(index),
                            error,
                            changed: false,
                        })?;
                        done.push((index, d));
                    }
                    // One record for the whole transaction, committed with it.
                    if audit_writes {
                        let mut t = Touched::default();
                        for (_, d) in &done {
                            for v in d.version.iter().chain(&d.also) {
                                audit::touch_written(tx, &mut t, v).await.map_err(|error| {
                                    EntryFailure {
                                        index: None,
                                        error,
                                        changed: false,
                                    }
                                })?;
                            }
                        }
                        let detail = Some(format!("entries={}", done.len()));
                        tx.audit(audit::entry(&who, "transaction", 200, t, detail))
                            .await
                            .map_err(|e| EntryFailure {
                                index: None,
                                error: audit::refused(e),
                                changed: false,
                            })?;
                    }
                    Ok::<_, EntryFailure>(done)
                })
            })
        })
        .await
    }

    async fn batch(
        &self,
        ctx: &RequestContext,
        mut bundle: Map<String, Value>,
    ) -> Result<FhirResponse, ServiceError> {
        let entries = match bundle.remove("entry") {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        };
        let n = entries.len();
        let mut outcomes: Vec<Option<Result<Done, ServiceError>>> = (0..n).map(|_| None).collect();
        let mut histories: Vec<(usize, bytes::Bytes)> = Vec::new();
        let mut phases: [Vec<(usize, Op)>; 4] = Default::default();
        for (i, e) in entries.into_iter().enumerate() {
            let planned = match self.plan_entry(ctx, i, e) {
                Ok(p) => p,
                Err(err) => {
                    outcomes[i] = Some(Err(err));
                    continue;
                }
            };
            if matches!(
                planned.route,
                Route::HistoryInstance(..)
                    | Route::HistoryType(_)
                    | Route::HistorySystem
                    | Route::Search(_)
            ) {
                let answer = match &planned.route {
                    Route::Search(scope) => self.audited_search(ctx, scope, &planned.query).await,
                    route => self.audited_history(ctx, route, &planned.query).await,
                };
                match answer {
                    Ok(resp) => {
                        histories.push((i, resp.body.unwrap_or_default()));
                        outcomes[i] = Some(Ok(Done {
                            status: 200,
                            version: None,
                            located: false,
                            write: false,
                            also: Vec::new(),
                        }));
                    }
                    Err(err) => outcomes[i] = Some(Err(err)),
                }
                continue;
            }
            let ph = usize::from(phase(planned.method));
            match self.entry_op(planned, None) {
                Ok(op) => phases[ph].push((i, op)),
                Err(err) => outcomes[i] = Some(Err(err)),
            }
        }
        // Batch entries must not depend on each other (http.html#brules): two writes to one
        // resource would race, so every write after the first to a resource is refused.
        let mut written = HashSet::new();
        for group in &mut phases {
            group.retain(|(i, op)| {
                if let Some((ty, id)) = op.target()
                    && op.is_write()
                    && !written.insert((ty, id.clone()))
                {
                    outcomes[*i] = Some(Err(ServiceError::BadRequest(format!(
                        "{ty}/{id} is changed by an earlier entry of this batch; batch entries must be independent"
                    ))));
                    return false;
                }
                true
            });
        }
        // Entries of one phase run concurrently, a bounded number at a time, so their writes
        // share group commits without one batch taking every database connection.
        for group in phases {
            let runs = futures::stream::iter(
                group
                    .into_iter()
                    .map(|(i, op)| async move { (i, self.execute_op(ctx, op).await) }),
            )
            .buffer_unordered(BATCH_CONCURRENCY);
            let done: Vec<(usize, Result<Done, ServiceError>)> = runs.collect().await;
            for (i, r) in done {
                outcomes[i] = Some(r);
            }
        }
        let outcomes: Vec<Result<Done, ServiceError>> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Err(ServiceError::Internal)))
            .collect();
        let withheld = self.withheld_in(ctx, &outcomes).await?;
        self.bundle_response(ctx, "batch-response", outcomes, histories, &withheld)
    }

    /// The entries whose resource a patient's Consent withholds from the caller (their answer
    /// then carries no body).
    async fn withheld_in(
        &self,
        ctx: &RequestContext,
        outcomes: &[Result<Done, ServiceError>],
    ) -> Result<std::collections::HashSet<usize>, ServiceError> {
        let mut out = std::collections::HashSet::new();
        for (i, o) in outcomes.iter().enumerate() {
            if let Ok(d) = o
                && let Some(v) = &d.version
                && !self.may_show(ctx, v).await?
            {
                out.insert(i);
            }
        }
        Ok(out)
    }

    fn bundle_response(
        &self,
        ctx: &RequestContext,
        kind: &'static str,
        outcomes: Vec<Result<Done, ServiceError>>,
        histories: Vec<(usize, bytes::Bytes)>,
        withheld: &std::collections::HashSet<usize>,
    ) -> Result<FhirResponse, ServiceError> {
        let base = &self.config.base_url;
        let history_of: HashMap<usize, &bytes::Bytes> =
            histories.iter().map(|(i, b)| (*i, b)).collect();
        let mut entry = Vec::with_capacity(outcomes.len());
        for (i, o) in outcomes.iter().enumerate() {
            match o {
                Ok(d) => {
                    let mut response = EntryResponse {
                        status: status_line(d.status),
                        ..EntryResponse::default()
                    };
                    let mut full_url = None;
                    let mut resource = None;
                    if let Some(v) = &d.version {
                        response.etag = Some(v.version.etag());
                        response.last_modified = Some(v.last_updated.to_instant_string());
                        if d.located {
                            response.location = Some(format!(
                                "{}/{}/_history/{}",
                                v.resource_type, v.id, v.version
                            ));
                        }
                        if d.status != 204 {
                            full_url = Some(format!("{base}/{}/{}", v.resource_type, v.id));
                            let wants_body = (!d.write
                                || ctx.prefer == ReturnPreference::Representation)
                                && !withheld.contains(&i);
                            if wants_body {
                                resource = v.body.as_deref().map(raw).transpose()?;
                            } else if ctx.prefer == ReturnPreference::OperationOutcome {
                                response.outcome = Some(outcome::information(&format!(
                                    "{}/{} is now at version {}",
                                    v.resource_type, v.id, v.version
                                )));
                            }
                        }
                    } else if let Some(body) = history_of.get(&i) {
                        resource = Some(raw(body)?);
                    }
                    entry.push(Entry {
                        full_url,
                        resource,
                        response: Some(response),
                        ..Entry::default()
                    });
                }
                Err(e) => entry.push(Entry {
                    full_url: None,
                    resource: None,
                    response: Some(EntryResponse {
                        status: status_line(e.status()),
                        outcome: Some(e.to_operation_outcome()),
                        ..EntryResponse::default()
                    }),
                    ..Entry::default()
                }),
            }
        }
        let bundle = BundleOut {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: bundle_meta(),
            kind,
            total: None,
            link: Vec::new(),
            entry,
        };
        Ok(FhirResponse {
            status: 200,
            body: Some(bundle.to_bytes()?),
            location: None,
            version: None,
            last_modified: None,
            resource_type: None,
            audit: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_rewritten_everywhere_and_unresolved_ones_reported() {
        let map: HashMap<String, String> = [("urn:uuid:a".to_owned(), "Patient/1".to_owned())]
            .into_iter()
            .collect();
        let mut v = json!({
            "subject": {"reference": "urn:uuid:a"},
            "performer": [{"reference": "urn:uuid:a"}, {"reference": "Practitioner/x"}],
            "note": [{"text": "urn:uuid:a"}],
            "contained": [{"resourceType": "Provenance", "target": [{"reference": "urn:uuid:a"}]}]
        });
        assert_eq!(rewrite_references(&mut v, &map), None);
        assert_eq!(v["subject"]["reference"], "Patient/1");
        assert_eq!(v["performer"][0]["reference"], "Patient/1");
        assert_eq!(v["performer"][1]["reference"], "Practitioner/x");
        assert_eq!(
            v["note"][0]["text"], "urn:uuid:a",
            "only Reference.reference is rewritten"
        );
        assert_eq!(v["contained"][0]["target"][0]["reference"], "Patient/1");
        let mut w = json!({"subject": {"reference": "urn:uuid:missing"}});
        assert_eq!(
            rewrite_references(&mut w, &map).as_deref(),
            Some("urn:uuid:missing")
        );
    }

    #[test]
    fn entry_errors_name_the_entry() {
        let e = in_entry(ServiceError::BadRequest("bad".into()), 3);
        assert_eq!(e.status(), 400);
        assert!(e.issues()[0].message.starts_with("Bundle.entry[3]: "));
        let issue = haven_fhir::Issue {
            severity: haven_fhir::Severity::Error,
            code: haven_fhir::IssueCode::Structure,
            location: "Patient.name[0]".into(),
            message: "m".into(),
        };
        let ServiceError::Invalid(issues) = in_entry(ServiceError::Invalid(vec![issue]), 2) else {
            panic!("stays Invalid");
        };
        assert_eq!(issues[0].location, "Bundle.entry[2].resource.name[0]");
        assert_eq!(in_entry(ServiceError::Unavailable, 1).status(), 503);
    }

    #[test]
    fn phases_follow_the_spec_order() {
        let mut methods = [
            Method::Get,
            Method::Put,
            Method::Post,
            Method::Delete,
            Method::Patch,
            Method::Head,
        ];
        methods.sort_by_key(|m| phase(*m));
        assert_eq!(methods[0], Method::Delete);
        assert_eq!(methods[1], Method::Post);
        assert!(matches!(methods[2], Method::Put | Method::Patch));
        assert!(matches!(methods[5], Method::Get | Method::Head));
    }
}
