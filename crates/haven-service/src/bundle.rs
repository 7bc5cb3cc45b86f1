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
use serde_json::{Map, Value};

use crate::interactions::{Done, IsRace, apply, retry_on_race};
use crate::patch::parse_patch;
use crate::prepare::{
    Op, cap_issues, check_resource, conformance_errors, parse_if_match, refuse_conditions,
};
use crate::route::{Method, Route, route, split_url};
use crate::wire::{BundleOut, Entry, EntryResponse, bundle_meta, raw, status_line};
use crate::{FhirResponse, FhirService, RequestContext, ReturnPreference, ServiceError, outcome};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Batch,
    Transaction,
}

/// An entry's request as parsed from the Bundle, before ids are assigned.
struct Planned {
    index: usize,
    method: Method,
    route: Route,
    query: Vec<(String, String)>,
    if_match: Option<String>,
    resource: Option<Map<String, Value>>,
    full_url: Option<String>,
}

/// A failed unit of work: which entry failed, and why.
struct EntryFailure {
    index: Option<usize>,
    error: ServiceError,
}

impl From<StoreError> for EntryFailure {
    fn from(e: StoreError) -> Self {
        EntryFailure {
            index: None,
            error: e.into(),
        }
    }
}

/// Entries of a batch that run at once.
const BATCH_CONCURRENCY: usize = 8;

impl IsRace for EntryFailure {
    fn is_race(&self) -> bool {
        self.error.is_race()
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
        ServiceError::MethodNotAllowed(m) => ServiceError::MethodNotAllowed(p(m)),
        ServiceError::NotAcceptable(m) => ServiceError::NotAcceptable(p(m)),
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

    fn plan_entry(&self, index: usize, entry: Value) -> Result<Planned, ServiceError> {
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
        let conditions: Vec<&str> = ["ifNoneExist", "ifNoneMatch", "ifModifiedSince"]
            .into_iter()
            .filter(|k| request.contains_key(*k))
            .collect();
        refuse_conditions(&conditions)?;
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
        if matches!(
            route,
            Route::Bundle | Route::Capabilities | Route::Validate(..)
        ) {
            return Err(ServiceError::BadRequest(
                "only create, read, vread, update, patch, delete and history may appear in a Bundle".into(),
            ));
        }
        if !query.is_empty()
            && !matches!(
                route,
                Route::HistoryInstance(..) | Route::HistoryType(_) | Route::HistorySystem
            )
        {
            return Err(ServiceError::BadRequest(
                "conditional interactions and search are not offered by this server version".into(),
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
                if_none_exist: None,
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
                    "history cannot run inside a transaction; use a batch".into(),
                ));
            }
        })
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
            planned.push(self.plan_entry(i, e).map_err(|err| in_entry(err, i))?);
        }

        // 1. Assign ids to creates and map every fullUrl to the resource's new identity.
        let mut mapping: HashMap<String, String> = HashMap::new();
        let mut create_ids = vec![None; n];
        for p in &planned {
            let target = match &p.route {
                Route::Create(ty) => {
                    let id = haven_domain::ResourceId::generate();
                    let t = format!("{ty}/{id}");
                    create_ids[p.index] = Some(id);
                    Some(t)
                }
                Route::Update(ty, id) => Some(format!("{ty}/{id}")),
                _ => None,
            };
            if let (Some(full), Some(t)) = (&p.full_url, target)
                && mapping.insert(full.clone(), t).is_some()
            {
                return Err(in_entry(
                    ServiceError::BadRequest(format!("fullUrl {full} appears more than once")),
                    p.index,
                ));
            }
        }
        // 2. Rewrite references between entries.
        for p in &mut planned {
            if let Some(res) = p.resource.take() {
                let mut v = Value::Object(res);
                if let Some(u) = rewrite_references(&mut v, &mapping) {
                    return Err(in_entry(
                        ServiceError::BadRequest(format!(
                            "the reference {u} is not the fullUrl of any entry in this transaction"
                        )),
                        p.index,
                    ));
                }
                if let Value::Object(m) = v {
                    p.resource = Some(m);
                }
            }
        }
        // 3. Validate and build operations; no resource may be touched twice (http.html#trules).
        let mut ops: Vec<(usize, u8, Op)> = Vec::with_capacity(n);
        let mut touched = HashSet::new();
        let mut issues = Vec::new();
        for p in planned {
            let (index, ph) = (p.index, phase(p.method));
            match self.entry_op(p, create_ids[index].take()) {
                Ok(op) => {
                    if let Some((ty, id)) = op.target()
                        && op.is_write()
                        && !touched.insert((ty, id.clone()))
                    {
                        return Err(in_entry(
                            ServiceError::BadRequest(format!(
                                "{ty}/{id} is changed by more than one entry; a transaction may touch each resource once"
                            )),
                            index,
                        ));
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
                Err(other) => return Err(in_entry(other, index)),
            }
        }
        if !issues.is_empty() {
            return Err(ServiceError::Invalid(cap_issues(issues)));
        }
        ops.sort_by_key(|(index, ph, _)| (*ph, *index));

        // 4. Run every entry in one unit of work.
        let results = retry_on_race(|| {
            let ops = ops.clone();
            run_write(self.store.as_ref(), move |tx: &mut dyn WriteTx| {
                Box::pin(async move {
                    let mut done = Vec::with_capacity(ops.len());
                    for (index, _, op) in ops {
                        let d = apply(tx, op).await.map_err(|error| EntryFailure {
                            index: Some(index),
                            error,
                        })?;
                        done.push((index, d));
                    }
                    Ok::<_, EntryFailure>(done)
                })
            })
        })
        .await
        .map_err(|f| match f.index {
            Some(i) => in_entry(f.error, i),
            None => f.error,
        })?;

        let mut by_index: Vec<Option<Done>> = (0..n).map(|_| None).collect();
        for (i, d) in results {
            by_index[i] = Some(d);
        }
        let outcomes: Vec<Result<Done, ServiceError>> = by_index
            .into_iter()
            .map(|d| d.ok_or(ServiceError::Internal))
            .collect();
        self.bundle_response(ctx, "transaction-response", outcomes, Vec::new())
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
            let planned = match self.plan_entry(i, e) {
                Ok(p) => p,
                Err(err) => {
                    outcomes[i] = Some(Err(err));
                    continue;
                }
            };
            if matches!(
                planned.route,
                Route::HistoryInstance(..) | Route::HistoryType(_) | Route::HistorySystem
            ) {
                match self.history(&planned.route, &planned.query).await {
                    Ok(resp) => {
                        histories.push((i, resp.body.unwrap_or_default()));
                        outcomes[i] = Some(Ok(Done {
                            status: 200,
                            version: None,
                            located: false,
                            write: false,
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
                    .map(|(i, op)| async move { (i, self.execute_op(op).await) }),
            )
            .buffer_unordered(BATCH_CONCURRENCY);
            let done: Vec<(usize, Result<Done, ServiceError>)> = runs.collect().await;
            for (i, r) in done {
                outcomes[i] = Some(r);
            }
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Err(ServiceError::Internal)))
            .collect();
        self.bundle_response(ctx, "batch-response", outcomes, histories)
    }

    fn bundle_response(
        &self,
        ctx: &RequestContext,
        kind: &'static str,
        outcomes: Vec<Result<Done, ServiceError>>,
        histories: Vec<(usize, bytes::Bytes)>,
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
                            let wants_body =
                                !d.write || ctx.prefer == ReturnPreference::Representation;
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
