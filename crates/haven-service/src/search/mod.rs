//! FHIR search (R4 `search.html`): type, system and compartment searches, by GET or POST
//! `_search`, answered from the index tables with keyset paging, `_sort`, `_total`,
//! `_include`/`_revinclude` and `_summary`/`_elements`.
//!
//! The query string is parsed by `haven_fhir::search::query` (pure), translated into store
//! conditions by [`translate`] (FHIR semantics), and run by the store (SQL). Index rows are
//! computed by [`index`] on every write, in the write's own transaction.
//!
//! **Unknown parameters.** Lenient by default (R4 `search.html#errors`): ignored, reported in
//! an OperationOutcome entry (`search.mode = outcome`), and absent from the self link;
//! `Prefer: handling=strict` turns them into a 400. Malformed values are always a 400:
//! ignoring them would return more than the client asked for.
//!
//! **Paging.** Links carry an opaque `_cursor`: the sort keys and row key of the entry the
//! next (or previous) page starts after. Resources created or changed while a client pages
//! cannot make it skip or repeat entries that did not change; a changed entry may move.

pub mod index;
mod reindex;
pub(crate) mod translate;

pub use reindex::{IndexStatus, ReindexProgress, fingerprint};

use std::collections::HashSet;

use base64::Engine as _;
use haven_domain::{ResourceId, ResourceType};
use haven_fhir::definitions;
use haven_fhir::search::ParamType;
use haven_fhir::search::query::{
    self, Include, ParseOptions, ProblemKind, SearchRequest, SummaryMode, TotalMode,
};
use haven_fhir::search::subset;
use haven_store::{
    Col, Condition, Found, Pred, Related, Scalar, SearchCursor, SearchQuery, SortSpec, SortValue,
    Table,
};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::wire::{BundleOut, Entry, EntrySearch, Link, bundle_meta, raw};
use crate::{FhirResponse, FhirService, RequestContext, ServiceError, outcome};
use haven_fhir::{Issue, IssueCode, Severity};

/// Most resources `_include`/`_revinclude` add to one page.
const MAX_INCLUDED: u32 = 1000;
/// Rounds of `:iterate`.
const MAX_ITERATIONS: usize = 3;

/// Where a search looks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SearchScope {
    /// `GET [base]?...` (with `_type`).
    System,
    /// `GET [base]/[type]?...`
    Type(ResourceType),
    /// `GET [base]/Patient/[id]/[type]?...`: resources of `type` in the patient's compartment.
    Compartment {
        patient: ResourceId,
        ty: ResourceType,
    },
}

impl SearchScope {
    fn resource_type(&self) -> Option<ResourceType> {
        match self {
            SearchScope::System => None,
            SearchScope::Type(t) | SearchScope::Compartment { ty: t, .. } => Some(*t),
        }
    }

    fn path(&self) -> String {
        match self {
            SearchScope::System => String::new(),
            SearchScope::Type(t) => t.to_string(),
            SearchScope::Compartment { patient, ty } => format!("Patient/{patient}/{ty}"),
        }
    }
}

fn bad(message: String) -> ServiceError {
    ServiceError::BadRequest(message)
}

/// The condition "in Patient/`patient`'s compartment" for resources of `ty` (R4
/// CompartmentDefinition `patient`); `None` if `ty` cannot be in it.
pub(crate) fn compartment_condition(ty: ResourceType, patient: &ResourceId) -> Option<Condition> {
    let defs = definitions();
    let params = defs.patient_compartment(ty);
    let link = Condition::Any {
        table: Table::Reference,
        params: params.iter().map(|p| index::param_key(ty, p)).collect(),
        pred: Pred::And(vec![
            Pred::Eq(Col::TargetType, Scalar::Text("Patient".into())),
            Pred::Eq(Col::TargetId, Scalar::Text(patient.as_str().to_owned())),
        ]),
    };
    if ty.as_str() == "Patient" {
        // A Patient is in its own compartment.
        return Some(Condition::Or(vec![
            Condition::IdIn(vec![patient.as_str().to_owned()]),
            link,
        ]));
    }
    (!params.is_empty()).then_some(link)
}

/// A search made ready for the store, with what the response needs to know.
pub(crate) struct Prepared {
    pub request: SearchRequest,
    pub query: SearchQuery,
    pub outcome: Vec<Issue>,
}

impl FhirService {
    /// Parses and translates a search. `strict`: unknown parameters are errors.
    pub(crate) fn prepare_search(
        &self,
        scope: &SearchScope,
        pairs: &[(String, String)],
        strict: bool,
    ) -> Result<Prepared, ServiceError> {
        let limits = &self.config.limits;
        let request = query::parse(
            scope.resource_type(),
            pairs,
            &ParseOptions {
                base_url: Some(&self.config.base_url),
            },
        );
        let refused: Vec<Issue> = request
            .problems
            .iter()
            .filter(|p| p.kind == ProblemKind::Invalid || strict)
            .map(|p| Issue {
                severity: Severity::Error,
                code: match p.kind {
                    ProblemKind::Invalid => IssueCode::Invalid,
                    _ => IssueCode::NotSupported,
                },
                location: String::new(),
                message: p.message.clone(),
            })
            .collect();
        if !refused.is_empty() {
            return Err(ServiceError::Invalid(refused));
        }
        let outcome: Vec<Issue> = request
            .problems
            .iter()
            .map(|p| Issue {
                severity: Severity::Warning,
                code: IssueCode::NotSupported,
                location: String::new(),
                message: format!("ignored: {}", p.message),
            })
            .collect();

        let types: Vec<ResourceType> = match scope {
            SearchScope::System if request.types.is_empty() => {
                definitions().resource_types().to_vec()
            }
            SearchScope::System => request.types.clone(),
            SearchScope::Type(t) | SearchScope::Compartment { ty: t, .. } => vec![*t],
        };
        let mut conditions: Vec<Condition> = request
            .criteria
            .iter()
            .map(|c| translate::condition(c, &types))
            .collect();
        if let SearchScope::Compartment { patient, ty } = scope {
            conditions.push(compartment_condition(*ty, patient).ok_or_else(|| {
                bad(format!(
                    "{ty} resources are not in the Patient compartment; search /{ty} instead"
                ))
            })?);
        }
        let sort = request
            .sort
            .iter()
            .map(|k| {
                let table = translate::table_of(k.param.param_type).ok_or_else(|| {
                    bad(format!("_sort cannot use the parameter '{}'", k.param.code))
                })?;
                Ok(SortSpec {
                    table,
                    params: translate::keys(k.param, &types),
                    descending: k.descending,
                })
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        let count_only = request.summary == Some(SummaryMode::Count);
        let limit = if count_only {
            0
        } else {
            request
                .count
                .unwrap_or(limits.default_page_size)
                .min(limits.max_page_size)
        };
        let cursor = request
            .cursor
            .as_deref()
            .map(|c| decode_cursor(c, &sort))
            .transpose()?;
        let total = count_only
            || matches!(
                request.total,
                Some(TotalMode::Accurate | TotalMode::Estimate)
            );
        let query = SearchQuery {
            types: match scope {
                SearchScope::System if request.types.is_empty() => Vec::new(),
                _ => types,
            },
            conditions,
            sort,
            cursor,
            limit,
            total,
            max_bytes: limits.max_body_bytes.max(1 << 20),
        };
        Ok(Prepared {
            request,
            query,
            outcome,
        })
    }

    /// Runs a search and renders the searchset Bundle.
    pub(crate) async fn search(
        &self,
        ctx: &RequestContext,
        scope: &SearchScope,
        pairs: &[(String, String)],
    ) -> Result<FhirResponse, ServiceError> {
        let prepared = self.prepare_search(scope, pairs, ctx.strict_handling)?;
        self.run_search(&scope.path(), prepared).await
    }

    /// `Patient/[id]/$everything` (R4 patient-operation-everything): the patient and every
    /// resource in their compartment, with `_since`, `_type`, `_count` and paging.
    pub(crate) async fn everything(
        &self,
        ctx: &RequestContext,
        patient: &ResourceId,
        pairs: &[(String, String)],
    ) -> Result<FhirResponse, ServiceError> {
        let patient_type = ResourceType::parse("Patient").ok_or(ServiceError::Internal)?;
        match self.store.read_current(patient_type, patient).await? {
            Some(v) if !v.is_deleted() => {}
            _ => {
                return Err(ServiceError::NotFound(format!(
                    "Patient/{patient} does not exist"
                )));
            }
        }
        let mut since = None;
        let mut rest = Vec::new();
        for (k, v) in pairs {
            match k.as_str() {
                "_since" => {
                    let t = haven_fhir::primitives::parse_instant(v).map_err(|_| {
                        bad("_since must be an instant such as 2024-01-31T12:00:00Z".into())
                    })?;
                    since = Some(t);
                    rest.push((k.clone(), v.clone()));
                }
                "_type" | "_count" | "_cursor" => rest.push((k.clone(), v.clone())),
                other => {
                    return Err(bad(format!(
                        "$everything takes _since, _type and _count, not '{}'",
                        other.chars().take(40).collect::<String>()
                    )));
                }
            }
        }
        let for_parser: Vec<(String, String)> = rest
            .iter()
            .filter(|(k, _)| k != "_since")
            .cloned()
            .collect();
        let mut prepared = self.prepare_search(&SearchScope::System, &for_parser, true)?;
        let defs = definitions();
        let types: Vec<ResourceType> = if prepared.request.types.is_empty() {
            defs.resource_types()
                .iter()
                .copied()
                .filter(|t| t.as_str() == "Patient" || !defs.patient_compartment(*t).is_empty())
                .collect()
        } else {
            prepared.request.types.clone()
        };
        let members: Vec<Condition> = types
            .iter()
            .filter_map(|t| compartment_condition(*t, patient))
            .collect();
        prepared.query.types = types.clone();
        prepared.query.conditions.push(Condition::Or(members));
        if let Some(since) = since {
            let micros = i64::try_from(since.start().unix_timestamp_nanos() / 1000)
                .map_err(|_| bad("_since is out of range".into()))?;
            prepared.query.conditions.push(Condition::Any {
                table: Table::Date,
                params: types
                    .iter()
                    .map(|t| index::param_key(*t, "_lastUpdated"))
                    .collect(),
                pred: Pred::Ge(Col::Start, Scalar::Int(micros)),
            });
        }
        prepared.request.applied = rest;
        let _ = ctx;
        self.run_search(&format!("Patient/{patient}/$everything"), prepared)
            .await
    }

    /// Runs a prepared search and renders the searchset Bundle; `path` is the search's URL
    /// relative to the base, for links.
    async fn run_search(
        &self,
        path: &str,
        prepared: Prepared,
    ) -> Result<FhirResponse, ServiceError> {
        let Prepared {
            request,
            query,
            outcome,
        } = prepared;
        let mut page = self.store.search(&query).await?;
        // A total is free when the first page holds every match.
        if page.total.is_none()
            && request.total != Some(TotalMode::None)
            && query.cursor.is_none()
            && !page.has_next
        {
            page.total = Some(page.matches.len() as u64);
        }
        let included = self.includes(&request, &page.matches).await?;

        let base = &self.config.base_url;
        let link_to = |cursor: Option<String>| {
            let mut pairs: Vec<(&str, &str)> = request
                .applied
                .iter()
                .filter(|(k, _)| k != "_cursor")
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            if let Some(c) = &cursor {
                pairs.push(("_cursor", c));
            }
            let qs = serde_urlencoded::to_string(&pairs).unwrap_or_default();
            if qs.is_empty() {
                format!("{base}/{path}")
            } else {
                format!("{base}/{path}?{qs}")
            }
        };
        let mut link = vec![Link {
            relation: "self",
            url: link_to(request.cursor.clone()),
        }];
        link.push(Link {
            relation: "first",
            url: link_to(None),
        });
        if page.has_previous
            && let Some(first) = page.matches.first()
        {
            link.push(Link {
                relation: "previous",
                url: link_to(Some(encode_cursor(&first.cursor(true)))),
            });
        }
        if page.has_next
            && let Some(last) = page.matches.last()
        {
            link.push(Link {
                relation: "next",
                url: link_to(Some(encode_cursor(&last.cursor(false)))),
            });
        }

        // Subsetted resources are re-serialized; the rest are embedded as stored.
        let subsetting = matches!(
            request.summary,
            Some(SummaryMode::True | SummaryMode::Text | SummaryMode::Data)
        ) || !request.elements.is_empty();
        let mut owned: Vec<Box<RawValue>> = Vec::new();
        if subsetting {
            // Matches only: included resources are context and come whole.
            for f in &page.matches {
                owned.push(subsetted(f, &request)?);
            }
        }
        let mut entry = Vec::with_capacity(page.matches.len() + included.len() + 1);
        for (i, (f, mode)) in page
            .matches
            .iter()
            .map(|f| (f, "match"))
            .chain(included.iter().map(|f| (f, "include")))
            .enumerate()
        {
            let v = &f.version;
            let resource = match owned.get(i) {
                Some(r) => Some(r.as_ref()),
                None => v.body.as_deref().map(raw).transpose()?,
            };
            entry.push(Entry {
                full_url: Some(format!("{base}/{}/{}", v.resource_type, v.id)),
                resource,
                search: Some(EntrySearch { mode }),
                ..Entry::default()
            });
        }
        let outcome_raw;
        if !outcome.is_empty() {
            outcome_raw = serde_json::value::to_raw_value(&outcome::operation_outcome(&outcome))
                .map_err(|_| ServiceError::Internal)?;
            entry.push(Entry {
                resource: Some(outcome_raw.as_ref()),
                search: Some(EntrySearch { mode: "outcome" }),
                ..Entry::default()
            });
        }
        let bundle = BundleOut {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: bundle_meta(),
            kind: "searchset",
            total: page.total,
            link,
            entry,
        };
        let mut response = FhirResponse::json(200, bundle.to_bytes()?);
        if subsetting {
            // The trimmed page may have lost the references that name each resource's patient:
            // the record is taken from the stored resources instead.
            let mut touched = crate::audit::Touched::default();
            for f in page.matches.iter().chain(included.iter()) {
                touched.version(&f.version);
            }
            response.audit = Some(touched);
        }
        Ok(response)
    }

    /// The resources `_include` and `_revinclude` add to a page (without the page's own).
    async fn includes(
        &self,
        request: &SearchRequest,
        matches: &[Found],
    ) -> Result<Vec<Found>, ServiceError> {
        if request.includes.is_empty() && request.revincludes.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen: HashSet<i64> = matches.iter().map(|f| f.rid).collect();
        let mut out: Vec<Found> = Vec::new();
        let mut frontier: Vec<Found> = matches.to_vec();
        for round in 0..=MAX_ITERATIONS {
            let mut added = Vec::new();
            let select = |incs: &[Include]| -> Vec<Include> {
                incs.iter()
                    .filter(|i| round == 0 || i.iterate)
                    .cloned()
                    .collect()
            };
            for inc in select(&request.includes) {
                let from: Vec<i64> = frontier
                    .iter()
                    .filter(|f| f.version.resource_type == inc.source)
                    .map(|f| f.rid)
                    .collect();
                if from.is_empty() {
                    continue;
                }
                let params = include_keys(&inc);
                let budget = MAX_INCLUDED.saturating_sub(out.len() as u32 + added.len() as u32);
                if budget == 0 {
                    break;
                }
                let related = Related::Targets {
                    from,
                    params,
                    target: inc.target,
                };
                for f in self.store.related(&related, budget).await? {
                    if seen.insert(f.rid) {
                        added.push(f);
                    }
                }
            }
            for inc in select(&request.revincludes) {
                let to: Vec<(ResourceType, String)> = frontier
                    .iter()
                    .filter(|f| inc.target.is_none_or(|t| t == f.version.resource_type))
                    .map(|f| (f.version.resource_type, f.version.id.as_str().to_owned()))
                    .collect();
                if to.is_empty() {
                    continue;
                }
                let budget = MAX_INCLUDED.saturating_sub(out.len() as u32 + added.len() as u32);
                if budget == 0 {
                    break;
                }
                let related = Related::Sources {
                    to,
                    source: inc.source,
                    params: include_keys(&inc),
                };
                for f in self.store.related(&related, budget).await? {
                    if seen.insert(f.rid) {
                        added.push(f);
                    }
                }
            }
            if added.is_empty() {
                break;
            }
            frontier = added.clone();
            out.extend(added);
        }
        Ok(out)
    }
}

/// The keys of the reference parameters an include follows (`*`: all of the source's).
fn include_keys(inc: &Include) -> Vec<haven_store::ParamKey> {
    match inc.param {
        Some(p) => vec![index::param_key(inc.source, p.code)],
        None => definitions()
            .search_params(inc.source)
            .filter(|p| p.param_type == ParamType::Reference)
            .map(|p| index::param_key(inc.source, p.code))
            .collect(),
    }
}

fn subsetted(f: &Found, request: &SearchRequest) -> Result<Box<RawValue>, ServiceError> {
    let body = f.version.body.as_deref().ok_or(ServiceError::Internal)?;
    let mut resource: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| ServiceError::Internal)?;
    if let Some(mode) = request.summary {
        subset::summarize(&mut resource, mode);
    }
    if !request.elements.is_empty() {
        subset::select_elements(&mut resource, &request.elements);
    }
    serde_json::value::to_raw_value(&resource).map_err(|_| ServiceError::Internal)
}

/// A cursor as an opaque, URL-safe token: base64 of `{"k": [keys], "r": rid, "b": backward}`.
/// A client can forge one, but only to move its own position: every value is bound as a
/// query argument and its type is checked against the sort.
pub(crate) fn encode_cursor(c: &SearchCursor) -> String {
    let keys: Vec<Value> = c
        .keys
        .iter()
        .map(|k| match k {
            SortValue::Null => Value::Null,
            SortValue::Text(s) => Value::from(s.as_str()),
            SortValue::Int(i) => Value::from(*i),
            SortValue::Float(f) => json!(f),
        })
        .collect();
    let doc = json!({ "k": keys, "r": c.rid, "b": c.backward });
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(doc.to_string())
}

fn decode_cursor(token: &str, sort: &[SortSpec]) -> Result<SearchCursor, ServiceError> {
    let stale = || {
        bad(
            "the _cursor parameter does not belong to this search; follow the links of the \
             previous page, or start again without _cursor"
                .into(),
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| stale())?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|_| stale())?;
    let keys = doc.get("k").and_then(Value::as_array).ok_or_else(stale)?;
    if keys.len() != sort.len() {
        return Err(stale());
    }
    let keys = keys
        .iter()
        .zip(sort)
        .map(|(k, spec)| {
            use haven_store::sql::search::KeyKind;
            Ok(match (k, spec.table.sort_kind()) {
                (Value::Null, _) => SortValue::Null,
                (Value::String(s), KeyKind::Text) => SortValue::Text(s.clone()),
                (Value::Number(n), KeyKind::Int) => SortValue::Int(n.as_i64().ok_or_else(stale)?),
                (Value::Number(n), KeyKind::Float) => {
                    SortValue::Float(n.as_f64().ok_or_else(stale)?)
                }
                _ => return Err(stale()),
            })
        })
        .collect::<Result<Vec<_>, ServiceError>>()?;
    Ok(SearchCursor {
        keys,
        rid: doc.get("r").and_then(Value::as_i64).ok_or_else(stale)?,
        backward: doc.get("b").and_then(Value::as_bool).ok_or_else(stale)?,
    })
}
