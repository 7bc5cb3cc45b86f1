//! The audit trail as FHIR: `AuditEvent` read and search, and the accounting of disclosures
//! (`Patient/[id]/$disclosures`, HIPAA 164.528), for the auditor role only (see `access`).
//!
//! The records stay where the audit trail keeps them (append-only, hash-chained); this view
//! decodes them and shapes each as an IHE BALP style `AuditEvent` (`haven_audit::fhir`). The id
//! of an `AuditEvent` is the record's event id; it has one version and never changes.
//!
//! Search: `patient` and `date` narrow what is read from the store (an index each); `agent`,
//! `action`, `outcome`, `entity` and `subtype` are checked on each decoded record. A page scans
//! at most [`SCAN_BUDGET`] records: a page can hold fewer matches than `_count` and still have
//! a `next` link, which resumes after the last record examined (the paging is by event id,
//! oldest first, so it neither skips nor repeats while new records arrive).

use bytes::Bytes;
use haven_audit::AuditRecord;
use haven_audit::fhir::{action_code, audit_event, outcome_code};
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use haven_store::PatientEvent;
use serde_json::{Value, json};

use crate::audit::Touched;
use crate::{FhirResponse, FhirService, ServiceError};

/// Records examined for one page at most.
pub(crate) const SCAN_BUDGET: usize = 5_000;
/// Records read from the store per round.
const ROUND: u32 = 500;
const DEFAULT_COUNT: usize = 50;
const MAX_COUNT: usize = 1_000;
/// How far back the accounting of disclosures reaches (HIPAA 164.528(a): six years).
const SIX_YEARS_MICROS: i64 = 6 * 366 * 24 * 3600 * 1_000_000;

/// The search parameters this view supports.
const PARAMS: &str = "patient, date, agent, action, outcome, entity, subtype, _count";

/// A parsed AuditEvent search.
#[derive(Debug, Default)]
struct Query {
    patient: Option<String>,
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    agent: Vec<String>,
    action: Vec<String>,
    outcome: Vec<String>,
    entity: Vec<String>,
    subtype: Vec<String>,
    /// Only accesses to patient data (the accounting of disclosures).
    data_only: bool,
    count: usize,
    after: i64,
}

fn bad(msg: String) -> ServiceError {
    ServiceError::BadRequest(msg)
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `[prefix]value` of a date parameter as a time range it narrows to.
fn date_bound(q: &mut Query, value: &str) -> Result<(), ServiceError> {
    let (prefix, rest) = match value.get(..2) {
        Some(p @ ("eq" | "ge" | "gt" | "le" | "lt")) => (p, &value[2..]),
        Some(p @ ("ne" | "sa" | "eb" | "ap")) => {
            return Err(bad(format!(
                "AuditEvent date supports the prefixes eq, ge, gt, le and lt, not {p}"
            )));
        }
        _ => ("eq", value),
    };
    let dt = haven_fhir::primitives::parse_search_datetime(rest).map_err(|e| {
        bad(format!(
            "date '{}' is not a date or time: {e}",
            value.chars().take(40).collect::<String>()
        ))
    })?;
    let start = Timestamp::from_datetime(dt.start());
    let end = Timestamp::from_datetime(dt.end_exclusive());
    let raise = |slot: &mut Option<Timestamp>, t: Timestamp| {
        *slot = Some(slot.map_or(t, |s| s.max(t)));
    };
    let lower = |slot: &mut Option<Timestamp>, t: Timestamp| {
        *slot = Some(slot.map_or(t, |s| s.min(t)));
    };
    match prefix {
        "ge" => raise(&mut q.since, start),
        "gt" => raise(&mut q.since, end),
        "le" => lower(&mut q.until, end),
        "lt" => lower(&mut q.until, start),
        _ => {
            raise(&mut q.since, start);
            lower(&mut q.until, end);
        }
    }
    Ok(())
}

fn parse_query(pairs: &[(String, String)]) -> Result<Query, ServiceError> {
    let mut q = Query {
        count: DEFAULT_COUNT,
        ..Query::default()
    };
    for (k, v) in pairs {
        match k.as_str() {
            "patient" => {
                let id = v.strip_prefix("Patient/").unwrap_or(v);
                ResourceId::parse(id).map_err(|_| {
                    bad(format!(
                        "patient '{}' is not a Patient id",
                        id.chars().take(70).collect::<String>()
                    ))
                })?;
                if q.patient.as_deref().is_some_and(|p| p != id) {
                    return Err(bad("give one patient per AuditEvent search".into()));
                }
                q.patient = Some(id.to_owned());
            }
            "date" => date_bound(&mut q, v)?,
            "agent" => q.agent.extend(
                list(v)
                    .into_iter()
                    .map(|a| a.rsplit('|').next().unwrap_or_default().to_owned()),
            ),
            "action" => q.action.extend(list(v)),
            "outcome" => q.outcome.extend(list(v)),
            "entity" => q.entity.extend(list(v)),
            "subtype" => q.subtype.extend(
                list(v)
                    .into_iter()
                    .map(|a| a.rsplit('|').next().unwrap_or_default().to_owned()),
            ),
            "_count" => {
                q.count = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_COUNT).contains(n))
                    .ok_or_else(|| bad(format!("_count must be 1 to {MAX_COUNT}")))?;
            }
            "_cursor" => {
                q.after = v
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| bad("_cursor is not one this server gave".into()))?;
            }
            other => {
                return Err(bad(format!(
                    "AuditEvent search does not support '{}'; supported: {PARAMS}",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(q)
}

/// Whether a decoded record matches the conditions checked record by record.
fn matches(q: &Query, r: &AuditRecord) -> bool {
    if q.data_only && r.category != haven_audit::Category::Data {
        return false;
    }
    let agent_ok = q.agent.is_empty()
        || q.agent.iter().any(|a| {
            r.actor.user.as_deref() == Some(a.as_str())
                || r.actor.client.as_deref() == Some(a.as_str())
        });
    let action_ok = q.action.is_empty() || q.action.iter().any(|a| a == action_code(r));
    let outcome_ok = q.outcome.is_empty() || q.outcome.iter().any(|o| o == outcome_code(r.status));
    let subtype_ok = q.subtype.is_empty()
        || q.subtype.iter().any(|s| {
            *s == r.action
                || (s == "search-type" && r.action == "search-compartment")
                || (s == "operation" && r.action == "everything")
        });
    let entity_ok = q.entity.is_empty()
        || q.entity.iter().any(|want| {
            r.entities
                .iter()
                .any(|e| *want == format!("{}/{}", e.resource_type, e.id))
                || want
                    .strip_prefix("Patient/")
                    .is_some_and(|p| r.patients.iter().any(|x| x == p))
        });
    agent_ok && action_ok && outcome_ok && subtype_ok && entity_ok
}

fn audit_event_type() -> Result<ResourceType, ServiceError> {
    ResourceType::parse("AuditEvent").ok_or(ServiceError::Internal)
}

fn decode(e: &PatientEvent) -> Option<AuditRecord> {
    match AuditRecord::from_canonical(&e.record) {
        Ok(r) => Some(r),
        Err(err) => {
            // Not shown: `haven audit verify` names such a record; the view skips it.
            tracing::warn!(event = e.id, error = %err, "an audit record does not decode");
            None
        }
    }
}

impl FhirService {
    /// `GET AuditEvent/[id]` and `GET AuditEvent/[id]/_history/1`.
    pub(crate) async fn audit_view_read(
        &self,
        id: &ResourceId,
        version: Option<VersionId>,
    ) -> Result<FhirResponse, ServiceError> {
        let not_found = || ServiceError::NotFound(format!("AuditEvent/{id} is not known"));
        let Ok(event_id) = id.as_str().parse::<i64>() else {
            return Err(not_found());
        };
        if version.is_some_and(|v| v.get() != 1) {
            return Err(ServiceError::NotFound(format!(
                "AuditEvent/{id} has one version, 1: audit records never change"
            )));
        }
        let event = self
            .store
            .audit_event(event_id)
            .await?
            .ok_or_else(not_found)?;
        let record = decode(&event).ok_or_else(not_found)?;
        let body = serde_json::to_vec(&audit_event(event.id, &record))
            .map_err(|_| ServiceError::Internal)?;
        let ty = audit_event_type()?;
        let mut touched = Touched::default();
        touched.named(ty, id.as_str());
        Ok(FhirResponse {
            status: 200,
            body: Some(Bytes::from(body)),
            location: None,
            version: Some(VersionId::FIRST),
            last_modified: Some(record.time),
            resource_type: Some(ty),
            audit: Some(touched),
        })
    }

    /// `GET AuditEvent?...`.
    pub(crate) async fn audit_view_search(
        &self,
        pairs: &[(String, String)],
    ) -> Result<FhirResponse, ServiceError> {
        let q = parse_query(pairs)?;
        self.audit_view_page(q, "AuditEvent", pairs).await
    }

    /// `GET Patient/[id]/$disclosures?since=...&until=...`: every access to the patient's
    /// data in the period (at most six years back), oldest first, as AuditEvents.
    pub(crate) async fn disclosures(
        &self,
        patient: &ResourceId,
        pairs: &[(String, String)],
    ) -> Result<FhirResponse, ServiceError> {
        let now = Timestamp::now();
        let earliest = Timestamp::from_micros(now.micros() - SIX_YEARS_MICROS);
        let mut q = Query {
            patient: Some(patient.as_str().to_owned()),
            data_only: true,
            count: DEFAULT_COUNT,
            ..Query::default()
        };
        let when = |v: &str| {
            haven_fhir::primitives::parse_search_datetime(v).map_err(|e| {
                bad(format!(
                    "'{}' is not a date or time: {e}",
                    v.chars().take(40).collect::<String>()
                ))
            })
        };
        for (k, v) in pairs {
            match k.as_str() {
                "since" => q.since = Some(Timestamp::from_datetime(when(v)?.start())),
                "until" => q.until = Some(Timestamp::from_datetime(when(v)?.end_exclusive())),
                "_count" | "_cursor" => {
                    let parsed = parse_query(&[(k.clone(), v.clone())])?;
                    if k == "_count" {
                        q.count = parsed.count;
                    } else {
                        q.after = parsed.after;
                    }
                }
                other => {
                    return Err(bad(format!(
                        "$disclosures takes since, until and _count, not '{}'",
                        other.chars().take(64).collect::<String>()
                    )));
                }
            }
        }
        let since = q.since.unwrap_or(earliest);
        if since < earliest {
            return Err(bad(format!(
                "the accounting of disclosures covers at most six years (HIPAA 164.528): since \
                 must be on or after {}",
                earliest.to_instant_string()
            )));
        }
        q.since = Some(since);
        let path = format!("Patient/{patient}/$disclosures");
        self.audit_view_page(q, &path, pairs).await
    }

    async fn audit_view_page(
        &self,
        q: Query,
        path: &str,
        pairs: &[(String, String)],
    ) -> Result<FhirResponse, ServiceError> {
        let since = q.since.unwrap_or(Timestamp::from_micros(0));
        let until = q.until.unwrap_or(Timestamp::from_micros(
            Timestamp::now().micros() + 1_000_000,
        ));
        let mut found: Vec<(i64, AuditRecord)> = Vec::new();
        let mut after = q.after;
        let mut scanned = 0usize;
        let mut exhausted = false;
        while found.len() < q.count && scanned < SCAN_BUDGET {
            let events = match &q.patient {
                Some(p) => {
                    self.store
                        .audit_for_patient(p, since, until, after, ROUND)
                        .await?
                }
                None => self.store.audit_events(since, until, after, ROUND).await?,
            };
            let Some(last) = events.last() else {
                exhausted = true;
                break;
            };
            let short = events.len() < ROUND as usize;
            let last_id = last.id;
            for e in &events {
                scanned += 1;
                after = e.id;
                if let Some(r) = decode(e)
                    && matches(&q, &r)
                {
                    found.push((e.id, r));
                    if found.len() == q.count {
                        break;
                    }
                }
            }
            if short && after == last_id {
                exhausted = true;
                break;
            }
        }

        let base = &self.config.base_url;
        let keep: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| k != "_cursor")
            .cloned()
            .collect();
        let url = |extra: Option<i64>| {
            let mut all = keep.clone();
            if let Some(c) = extra {
                all.push(("_cursor".into(), c.to_string()));
            }
            let qs = serde_urlencoded::to_string(&all).unwrap_or_default();
            if qs.is_empty() {
                format!("{base}/{path}")
            } else {
                format!("{base}/{path}?{qs}")
            }
        };
        let mut links =
            vec![json!({ "relation": "self", "url": url((q.after > 0).then_some(q.after)) })];
        if !exhausted {
            links.push(json!({ "relation": "next", "url": url(Some(after)) }));
        }
        let ty = audit_event_type()?;
        let mut touched = Touched::default();
        let entries: Vec<Value> = found
            .iter()
            .map(|(id, r)| {
                touched.named(ty, &id.to_string());
                json!({
                    "fullUrl": format!("{base}/AuditEvent/{id}"),
                    "resource": audit_event(*id, r),
                    "search": { "mode": "match" },
                })
            })
            .collect();
        let mut bundle = json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": entries,
        });
        if exhausted && q.after == 0 {
            // Everything matching was seen on this first page: the total is known.
            bundle["total"] = json!(found.len());
        }
        let body = serde_json::to_vec(&bundle).map_err(|_| ServiceError::Internal)?;
        Ok(FhirResponse {
            status: 200,
            body: Some(Bytes::from(body)),
            location: None,
            version: None,
            last_modified: None,
            resource_type: None,
            audit: Some(touched),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_audit::{Actor, Category, Entity, Outcome};

    fn record(action: &str, status: u16) -> AuditRecord {
        AuditRecord {
            time: Timestamp::from_micros(1_700_000_000_000_000),
            category: Category::Data,
            action: action.into(),
            status,
            outcome: Outcome::from_status(status),
            actor: Actor {
                user: Some("alice".into()),
                role: Some("clinician".into()),
                client: Some("ehr".into()),
            },
            source_ip: Some("192.0.2.1".into()),
            request_id: Some("r1".into()),
            purpose_of_use: None,
            entities: vec![Entity {
                resource_type: "Observation".into(),
                id: "o1".into(),
                version: Some(1),
            }],
            patients: vec!["p1".into()],
            detail: Some("type=Observation".into()),
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Result<Query, ServiceError> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_query(&owned)
    }

    #[test]
    fn every_view_of_a_record_is_a_valid_r4_audit_event() {
        for (action, status, category) in [
            ("read", 200, Category::Data),
            ("search-type", 200, Category::Data),
            ("create", 201, Category::Data),
            ("delete", 403, Category::Data),
            ("login-failure", 401, Category::Security),
            ("key-rotate", 200, Category::Security),
        ] {
            let mut r = record(action, status);
            r.category = category;
            r.purpose_of_use = Some("TREAT".into());
            let ev = audit_event(12, &r);
            let map = ev.as_object().unwrap();
            let issues = haven_fhir::validate_resource(map);
            assert!(issues.is_empty(), "{action}: {issues:?}");
        }
        let mut bare = record("audit-verify", 200);
        bare.category = Category::Security;
        bare.actor = Actor::default();
        bare.source_ip = None;
        bare.request_id = None;
        bare.entities.clear();
        bare.patients.clear();
        let ev = audit_event(1, &bare);
        assert!(haven_fhir::validate_resource(ev.as_object().unwrap()).is_empty());
    }

    #[test]
    fn filters_match_what_they_name() {
        let r = record("read", 200);
        let yes = |p: &[(&str, &str)]| matches(&q(p).unwrap(), &r);
        assert!(yes(&[]));
        assert!(yes(&[("agent", "alice")]));
        assert!(yes(&[("agent", "urn:haven:client|ehr")]));
        assert!(!yes(&[("agent", "bob")]));
        assert!(yes(&[("action", "R")]));
        assert!(!yes(&[("action", "C,U")]));
        assert!(yes(&[("outcome", "0")]));
        assert!(!yes(&[("outcome", "4,8")]));
        assert!(yes(&[("entity", "Observation/o1")]));
        assert!(yes(&[("entity", "Patient/p1")]));
        assert!(!yes(&[("entity", "Observation/o2")]));
        assert!(yes(&[("subtype", "read")]));
        assert!(yes(&[("subtype", "urn:haven:audit-action|read")]));
        assert!(!yes(&[("subtype", "create")]));
    }

    #[test]
    fn dates_narrow_the_range_and_bad_parameters_are_named() {
        let d = q(&[("date", "ge2026-01-01"), ("date", "lt2026-02-01")]).unwrap();
        assert_eq!(
            d.since.unwrap().to_instant_string(),
            "2026-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            d.until.unwrap().to_instant_string(),
            "2026-02-01T00:00:00.000000Z"
        );
        let day = q(&[("date", "2026-03-04")]).unwrap();
        assert_eq!(
            day.until.unwrap().micros() - day.since.unwrap().micros(),
            86_400_000_000
        );
        for bad in [
            vec![("date", "ne2026")],
            vec![("date", "yesterday")],
            vec![("_count", "0")],
            vec![("_count", "5000")],
            vec![("name", "x")],
            vec![("patient", "a"), ("patient", "b")],
        ] {
            assert!(q(&bad).is_err(), "{bad:?}");
        }
        let e = q(&[("_has:x", "y")]).unwrap_err().to_string();
        assert!(e.contains("supported: patient"), "{e}");
    }
}
