//! Consent: a patient's active R4 `Consent` can refuse access to their records, for an actor
//! (a Practitioner, an Organization, a CareTeam) or a purpose of use, and Haven enforces it on
//! every read of their data.
//!
//! How a Consent decides (R4 consent.html, "provision"): the base provision applies to
//! everyone it names (no actor and no purpose: everyone); within it, the most deeply nested
//! provision that matches the request decides, `deny` or `permit`. A provision matches when
//! its period (if any) contains now, one of its actors (if any) is the caller, and one of its
//! purposes (if any) is the request's purpose of use. The caller is their `fhirUser`
//! (`Practitioner/123`) and, when a provision names organizations or care teams, the
//! organizations of their PractitionerRoles and the CareTeams they take part in. A request's
//! purpose of use is the `X-Purpose-Of-Use` header (a v3 PurposeOfUse code), `TREAT` for a
//! person and none for a backend client otherwise. The provision's data, class, code,
//! security labels and actions are not interpreted: a matching deny refuses every read.
//!
//! Where: a read of one resource whose patient refuses is 403 naming the Consent; a search, a
//! history or `$everything` leaves such resources out (and then gives no `total`), and a
//! compartment search or `$everything` of a refusing patient is 403 naming the Consent. The
//! audit record of each names the Consents that withheld something.
//!
//! Break-glass: a person with emergency access to the patient open passes the refusal; the
//! access is recorded with purpose `ETREAT` (see `haven_identity::emergency`).
//!
//! Cost: whether any active Consent exists is asked once every [`TTL`]; without one nothing
//! more is done. Otherwise a patient's active Consents are read once per [`TTL`] per process,
//! which is also how long a new or changed Consent takes to apply on another replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use haven_domain::{PrincipalKind, ResourceType, Timestamp};
use serde_json::{Map, Value};

use crate::search::SearchScope;
use crate::{FhirService, RequestContext, ServiceError};

/// How long a cached answer is used.
pub(crate) const TTL: Duration = Duration::from_secs(2);
const CACHE_LIMIT: usize = 10_000;
/// Most Consents read for one patient.
const MAX_CONSENTS: usize = 100;

/// A patient's active Consents as read, and when.
type Cached = (Vec<Map<String, Value>>, Instant);

/// The service's consent caches.
#[derive(Debug, Default)]
pub(crate) struct ConsentCache {
    any: Mutex<Option<(bool, Instant)>>,
    by_patient: Mutex<HashMap<String, Cached>>,
    /// Whether some Consent refuses a caller (by `fhirUser` and purpose).
    restricted: Mutex<HashMap<String, (bool, Instant)>>,
}

impl ConsentCache {
    /// Forgets what this process knows (after it wrote a Consent itself).
    pub(crate) fn clear(&self) {
        *self
            .any
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.by_patient
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.restricted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// What a decision needs of the caller and the request.
#[derive(Debug, Default)]
struct Caller {
    refs: Vec<String>,
    /// Whether organizations and care teams were looked up already.
    expanded: bool,
    purpose: Option<String>,
}

/// Whether a provision's period contains `now` (an absent bound is open).
fn in_period(p: &Map<String, Value>, now: Timestamp) -> bool {
    let Some(Value::Object(period)) = p.get("period") else {
        return true;
    };
    let bound = |k: &str| {
        period
            .get(k)
            .and_then(Value::as_str)
            .and_then(|s| haven_fhir::primitives::parse_datetime(s).ok())
    };
    let after_start = bound("start").is_none_or(|s| Timestamp::from_datetime(s.start()) <= now);
    let before_end = bound("end").is_none_or(|e| now < Timestamp::from_datetime(e.end_exclusive()));
    after_start && before_end
}

fn actor_refs(p: &Map<String, Value>) -> Vec<&str> {
    p.get("actor")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.get("reference")?.get("reference")?.as_str())
                .collect()
        })
        .unwrap_or_default()
}

fn purposes(p: &Map<String, Value>) -> Vec<&str> {
    p.get("purpose")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.get("code")?.as_str()).collect())
        .unwrap_or_default()
}

/// Whether a reference names the caller (`Practitioner/1` or `https://.../Practitioner/1`).
fn names(reference: &str, refs: &[String]) -> bool {
    refs.iter()
        .any(|r| reference == r || reference.ends_with(&format!("/{r}")))
}

/// The provision that decides, as `true` for deny; `None`: this provision does not apply.
fn decide(p: &Map<String, Value>, caller: &Caller, now: Timestamp) -> Option<bool> {
    let deny = p.get("type").and_then(Value::as_str) == Some("deny");
    // A permit Haven cannot fully evaluate does not apply (fail closed); a deny with
    // constraints Haven does not interpret applies more widely than written.
    if !deny && !interpretable(p) {
        return None;
    }
    if !in_period(p, now) {
        return None;
    }
    let actors = actor_refs(p);
    if !actors.is_empty() && !actors.iter().any(|a| names(a, &caller.refs)) {
        return None;
    }
    let ps = purposes(p);
    if !ps.is_empty() && !caller.purpose.as_deref().is_some_and(|x| ps.contains(&x)) {
        return None;
    }
    let nested = p
        .get("provision")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .find_map(|n| decide(n, caller, now));
    nested.or_else(|| Some(p.get("type").and_then(Value::as_str) == Some("deny")))
}

/// Whether every constraint of a provision is one this module evaluates: actors by reference,
/// purposes by code, a period that parses; no data, class, code, action or security label.
fn interpretable(p: &Map<String, Value>) -> bool {
    let unsupported = [
        "data",
        "class",
        "code",
        "action",
        "securityLabel",
        "dataPeriod",
    ]
    .iter()
    .any(|k| p.get(*k).is_some_and(|v| !v.is_null()));
    let actors_ok = p.get("actor").and_then(Value::as_array).is_none_or(|a| {
        a.iter().all(|x| {
            x.get("reference")
                .and_then(|r| r.get("reference"))
                .is_some()
        })
    });
    let purposes_ok = p
        .get("purpose")
        .and_then(Value::as_array)
        .is_none_or(|a| a.iter().all(|c| c.get("code").is_some()));
    let period_ok = p.get("period").is_none_or(|period| {
        ["start", "end"].iter().all(|k| {
            period.get(*k).is_none_or(|v| {
                v.as_str()
                    .is_some_and(|s| haven_fhir::primitives::parse_datetime(s).is_ok())
            })
        })
    });
    !unsupported && actors_ok && purposes_ok && period_ok
}

/// Whether a Consent names organizations or care teams anywhere in its provisions.
fn names_groups(p: &Map<String, Value>) -> bool {
    actor_refs(p)
        .iter()
        .any(|r| r.contains("Organization/") || r.contains("CareTeam/"))
        || p.get("provision")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .any(names_groups)
}

/// A refusal: the Consent that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub consent: String,
}

impl FhirService {
    /// Runs a search as Haven itself (no caller, nothing audited): for reading Consents and
    /// the caller's roles.
    async fn internal_search(
        &self,
        ty: &str,
        pairs: &[(&str, &str)],
    ) -> Result<Vec<Map<String, Value>>, ServiceError> {
        let ty = ResourceType::parse(ty).ok_or(ServiceError::Internal)?;
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let r = self
            .search(&RequestContext::default(), &SearchScope::Type(ty), &pairs)
            .await?;
        let body: Value = r
            .body
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        Ok(body
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("resource")?.as_object().cloned())
            .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some(ty.as_str()))
            .collect())
    }

    /// Whether any active Consent exists (cached).
    pub(crate) async fn any_consent(&self) -> Result<bool, ServiceError> {
        if let Some((any, at)) = *self
            .consents
            .any
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            && at.elapsed() < TTL
        {
            return Ok(any);
        }
        let found = !self
            .internal_search("Consent", &[("status", "active"), ("_count", "1")])
            .await?
            .is_empty();
        *self
            .consents
            .any
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((found, Instant::now()));
        Ok(found)
    }

    /// Whether some active Consent refuses this caller for some patient (then counts are not
    /// shown: they would include what is withheld). More active Consents than can be read at
    /// once count as restricted.
    async fn restricted(&self, ctx: &RequestContext) -> Result<bool, ServiceError> {
        if ctx.principal.is_none() {
            return Ok(false);
        }
        let caller = Self::caller(ctx);
        let key = format!(
            "{}|{}",
            caller.refs.join(","),
            caller.purpose.as_deref().unwrap_or("")
        );
        let started = Instant::now();
        if let Some((r, at)) = self
            .consents
            .restricted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            && at.elapsed() < TTL
        {
            return Ok(*r);
        }
        let r = self.restricted_uncached(ctx).await?;
        let mut m = self
            .consents
            .restricted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= CACHE_LIMIT {
            m.clear();
        }
        // Stamped with when the question was asked, so the answer is never older than TTL.
        m.insert(key, (r, started));
        Ok(r)
    }

    async fn restricted_uncached(&self, ctx: &RequestContext) -> Result<bool, ServiceError> {
        const LIMIT: usize = 1_000;
        let count = LIMIT.to_string();
        let consents = self
            .internal_search(
                "Consent",
                &[("status", "active"), ("_count", count.as_str())],
            )
            .await?;
        if consents.len() >= LIMIT {
            return Ok(true);
        }
        let now = Timestamp::now();
        let mut caller = Self::caller(ctx);
        for c in &consents {
            let Some(Value::Object(base)) = c.get("provision") else {
                continue;
            };
            if names_groups(base) {
                self.expand(&mut caller).await?;
            }
            if decide(base, &caller, now) == Some(true) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A patient's active Consents (cached).
    async fn consents_of(&self, patient: &str) -> Result<Vec<Map<String, Value>>, ServiceError> {
        if let Some((c, at)) = self
            .consents
            .by_patient
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(patient)
            && at.elapsed() < TTL
        {
            return Ok(c.clone());
        }
        let started = Instant::now();
        let reference = format!("Patient/{patient}");
        // One more than evaluated, to know when there are too many.
        let count = (MAX_CONSENTS + 1).to_string();
        let found = self
            .internal_search(
                "Consent",
                &[
                    ("patient", reference.as_str()),
                    ("status", "active"),
                    ("_count", count.as_str()),
                ],
            )
            .await?;
        let mut m = self
            .consents
            .by_patient
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= CACHE_LIMIT {
            m.clear();
        }
        m.insert(patient.to_owned(), (found.clone(), started));
        Ok(found)
    }

    /// Adds the organizations and care teams the caller belongs to.
    async fn expand(&self, caller: &mut Caller) -> Result<(), ServiceError> {
        if caller.expanded {
            return Ok(());
        }
        caller.expanded = true;
        let Some(me) = caller
            .refs
            .iter()
            .find(|r| r.starts_with("Practitioner/"))
            .cloned()
        else {
            return Ok(());
        };
        for role in self
            .internal_search(
                "PractitionerRole",
                &[("practitioner", me.as_str()), ("_count", "100")],
            )
            .await?
        {
            if let Some(org) = role
                .get("organization")
                .and_then(|o| o.get("reference"))
                .and_then(Value::as_str)
            {
                caller.refs.push(org.to_owned());
            }
        }
        for team in self
            .internal_search(
                "CareTeam",
                &[("participant", me.as_str()), ("_count", "100")],
            )
            .await?
        {
            if let Some(id) = team.get("id").and_then(Value::as_str) {
                caller.refs.push(format!("CareTeam/{id}"));
            }
        }
        Ok(())
    }

    fn caller(ctx: &RequestContext) -> Caller {
        let p = ctx.principal.as_deref();
        Caller {
            refs: p.and_then(|p| p.fhir_user.clone()).into_iter().collect(),
            expanded: false,
            purpose: ctx.purpose_of_use.clone().or_else(|| {
                p.filter(|p| p.kind == PrincipalKind::User)
                    .map(|_| "TREAT".to_owned())
            }),
        }
    }

    /// The Consents refusing `ctx` access to each of `patients` (patients with emergency
    /// access open pass). Haven's own work (no principal) is never refused.
    pub(crate) async fn consent_refusals(
        &self,
        ctx: &RequestContext,
        patients: &[String],
    ) -> Result<HashMap<String, Refusal>, ServiceError> {
        let mut out = HashMap::new();
        let Some(principal) = ctx.principal.as_deref() else {
            return Ok(out);
        };
        if patients.is_empty() || !self.any_consent().await? {
            return Ok(out);
        }
        let now = Timestamp::now();
        let mut caller = Self::caller(ctx);
        let own = principal
            .fhir_user
            .as_deref()
            .and_then(|f| f.strip_prefix("Patient/"));
        for patient in patients {
            // A patient's Consent is about others' access: never about their own.
            if out.contains_key(patient)
                || principal.in_emergency(patient, now)
                || own == Some(patient.as_str())
            {
                continue;
            }
            let consents = self.consents_of(patient).await?;
            if consents.len() > MAX_CONSENTS {
                // Not all can be read, so none can be said not to refuse: fail closed.
                out.insert(
                    patient.clone(),
                    Refusal {
                        consent: format!(
                            "more than {MAX_CONSENTS} active Consents, which must be consolidated"
                        ),
                    },
                );
                continue;
            }
            for consent in consents {
                let Some(Value::Object(base)) = consent.get("provision") else {
                    continue;
                };
                if names_groups(base) {
                    self.expand(&mut caller).await?;
                }
                if decide(base, &caller, now) == Some(true) {
                    let id = consent.get("id").and_then(Value::as_str).unwrap_or("?");
                    out.insert(
                        patient.clone(),
                        Refusal {
                            consent: format!("Consent/{id}"),
                        },
                    );
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Whether the caller may be shown this stored version (its patients' Consents); for the
    /// bodies a write's answer would carry (the version written, or the existing resource a
    /// conditional create found).
    pub(crate) async fn may_show(
        &self,
        ctx: &RequestContext,
        v: &haven_store::StoredVersion,
    ) -> Result<bool, ServiceError> {
        if ctx.principal.is_none() || v.body.is_none() || !self.any_consent().await? {
            return Ok(true);
        }
        let mut t = crate::audit::Touched::default();
        t.patients_of_version(v);
        Ok(self.consent_refusals(ctx, &t.patients).await?.is_empty())
    }

    /// Refuses when a Consent of one of `patients` refuses the caller (reads of one resource,
    /// compartment searches, `$everything`).
    pub(crate) async fn check_consent(
        &self,
        ctx: &RequestContext,
        patients: &[String],
    ) -> Result<(), ServiceError> {
        let refused = self.consent_refusals(ctx, patients).await?;
        match refused.values().next() {
            None => Ok(()),
            Some(r) => Err(ServiceError::Forbidden(format!(
                "the patient's consent ({}) refuses you access to their records; in an \
                 emergency a clinician can open break-glass access \
                 (POST Patient/[id]/$break-glass)",
                r.consent
            ))),
        }
    }

    /// Leaves out of a Bundle answer every resource of a patient whose Consent refuses the
    /// caller; returns the Consents that withheld something. Without a withheld entry the
    /// answer is untouched.
    pub(crate) async fn filter_by_consent(
        &self,
        ctx: &RequestContext,
        resp: &mut crate::FhirResponse,
        subsetted: bool,
    ) -> Result<Vec<String>, ServiceError> {
        if ctx.principal.is_none() || !self.any_consent().await? {
            return Ok(Vec::new());
        }
        let Some(body) = resp.body.as_deref() else {
            return Ok(Vec::new());
        };
        let Ok(Value::Object(mut bundle)) = serde_json::from_slice::<Value>(body) else {
            return Ok(Vec::new());
        };
        // A count tells about resources this caller may not see: gone for anyone some
        // Consent restricts.
        let restricted = self.restricted(ctx).await?;
        let Some(Value::Array(entries)) = bundle.get("entry") else {
            if restricted && bundle.remove("total").is_some() {
                resp.body = Some(bytes::Bytes::from(
                    serde_json::to_vec(&bundle).map_err(|_| ServiceError::Internal)?,
                ));
                return Ok(vec!["total".into()]);
            }
            return Ok(Vec::new());
        };
        // The patients of each entry: from the stored version when the answer was trimmed.
        let mut per_entry: Vec<Vec<String>> = Vec::with_capacity(entries.len());
        let mut all: Vec<String> = Vec::new();
        for e in entries {
            let mut ps = Vec::new();
            if let Some(Value::Object(r)) = e.get("resource")
                && let Some(ty) = r
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .and_then(ResourceType::parse)
            {
                let stored = if subsetted {
                    let id = r
                        .get("id")
                        .and_then(Value::as_str)
                        .and_then(|i| haven_domain::ResourceId::parse(i).ok());
                    match id {
                        Some(id) => self.store.read_current(ty, &id).await?,
                        None => None,
                    }
                } else {
                    None
                };
                match stored {
                    Some(v) => {
                        let mut t = crate::audit::Touched::default();
                        t.patients_of_version(&v);
                        ps = t.patients;
                    }
                    None => crate::audit::patients_of(ty, r, &mut ps),
                }
            }
            all.extend(ps.iter().cloned());
            per_entry.push(ps);
        }
        all.sort_unstable();
        all.dedup();
        let refused = self.consent_refusals(ctx, &all).await?;
        if refused.is_empty() {
            if restricted && bundle.remove("total").is_some() {
                resp.body = Some(bytes::Bytes::from(
                    serde_json::to_vec(&bundle).map_err(|_| ServiceError::Internal)?,
                ));
            }
            return Ok(Vec::new());
        }
        let mut withheld_ids: Vec<(String, String)> = Vec::new();
        let Some(Value::Array(entries)) = bundle.remove("entry") else {
            return Ok(Vec::new());
        };
        let kept: Vec<Value> = entries
            .into_iter()
            .zip(per_entry)
            .filter_map(|(e, ps)| {
                if ps.iter().any(|p| refused.contains_key(p)) {
                    if let Some(r) = e.get("resource") {
                        withheld_ids.push((
                            r.get("resourceType")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                            r.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                        ));
                    }
                    None
                } else {
                    Some(e)
                }
            })
            .collect();
        bundle.insert("entry".into(), Value::Array(kept));
        // A count would tell how much was withheld.
        bundle.remove("total");
        resp.body = Some(bytes::Bytes::from(
            serde_json::to_vec(&bundle).map_err(|_| ServiceError::Internal)?,
        ));
        if let Some(t) = resp.audit.as_mut() {
            t.entities
                .retain(|e| !withheld_ids.contains(&(e.resource_type.clone(), e.id.clone())));
            t.patients.retain(|p| !refused.contains_key(p));
        }
        let mut consents: Vec<String> = refused.into_values().map(|r| r.consent).collect();
        consents.sort_unstable();
        consents.dedup();
        Ok(consents)
    }
}

/// A record's detail with the Consents that withheld something from the answer.
pub(crate) fn with_withheld(detail: Option<String>, consents: &[String]) -> Option<String> {
    if consents.is_empty() {
        return detail;
    }
    let w = format!("withheld-by={}", consents.join(","));
    Some(match detail {
        Some(d) => format!("{w} {d}"),
        None => w,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prov(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn caller(refs: &[&str], purpose: Option<&str>) -> Caller {
        Caller {
            refs: refs.iter().map(|r| (*r).to_owned()).collect(),
            expanded: true,
            purpose: purpose.map(str::to_owned),
        }
    }

    #[test]
    fn a_nested_deny_for_an_actor_refuses_only_that_actor() {
        let p = prov(json!({"type": "permit", "provision": [
            {"type": "deny", "actor": [{"role": {"text": "x"}, "reference": {"reference": "Practitioner/dr-no"}}]}
        ]}));
        let now = Timestamp::now();
        assert_eq!(
            decide(&p, &caller(&["Practitioner/dr-no"], None), now),
            Some(true)
        );
        assert_eq!(
            decide(&p, &caller(&["Practitioner/dr-yes"], None), now),
            Some(false)
        );
        // A full URL names the same practitioner.
        let full = prov(
            json!({"type": "deny", "actor": [{"reference": {"reference": "https://ehr.example.org/fhir/Practitioner/dr-no"}}]}),
        );
        assert_eq!(
            decide(&full, &caller(&["Practitioner/dr-no"], None), now),
            Some(true)
        );
    }

    #[test]
    fn purposes_periods_and_nested_permits_decide() {
        let now = Timestamp::now();
        let marketing = prov(json!({"type": "permit", "provision": [
            {"type": "deny", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HMARKT"}]}
        ]}));
        assert_eq!(
            decide(&marketing, &caller(&[], Some("HMARKT")), now),
            Some(true)
        );
        assert_eq!(
            decide(&marketing, &caller(&[], Some("TREAT")), now),
            Some(false)
        );
        // Opt-out with an exception for one care team.
        let opt_out = prov(json!({"type": "deny", "provision": [
            {"type": "permit", "actor": [{"reference": {"reference": "CareTeam/ward-7"}}]}
        ]}));
        assert_eq!(
            decide(&opt_out, &caller(&["Practitioner/a"], None), now),
            Some(true)
        );
        assert_eq!(
            decide(
                &opt_out,
                &caller(&["Practitioner/a", "CareTeam/ward-7"], None),
                now
            ),
            Some(false)
        );
        assert!(names_groups(&opt_out));
        // A deny that has ended no longer applies.
        let ended = prov(json!({"type": "permit", "provision": [
            {"type": "deny", "period": {"end": "2001-01-01"}, "actor": [{"reference": {"reference": "Practitioner/a"}}]}
        ]}));
        assert_eq!(
            decide(&ended, &caller(&["Practitioner/a"], None), now),
            Some(false)
        );
    }
}
