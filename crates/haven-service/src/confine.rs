//! Confinement to one patient's compartment (R4 CompartmentDefinition `patient`), for callers
//! whose role (`patient`) or token scopes (`patient/`, with a launch context) allow access to
//! one patient's record only.
//!
//! Every interaction is rewritten or refused *before* it runs, so the confined caller goes
//! through exactly the code everyone else does, just narrower:
//! - a search of a type in the compartment runs as the compartment search
//!   (`Patient/X/Observation?...`), so matches, `Bundle.total` and paging links only ever count
//!   the patient's own resources; a search of `Patient` gets `_id=X`;
//! - a read answers 404 unless the resource's current version is in the compartment, a vread
//!   unless that version is, an instance history unless every version is (as if it did not
//!   exist: a patient learns nothing about other ids);
//! - `$everything` answers only for the patient themself (404 for others);
//! - what could reach outside the compartment is refused with 403: system-wide search and
//!   history, type history, searches of types outside the compartment, `_include`,
//!   `_revinclude`, `_has`, chained parameters, every entry of a batch or transaction, and
//!   writes (until the policy lets patients change their own record field by field).

use haven_domain::{ResourceId, ResourceType};
use haven_fhir::definitions;
use serde_json::Value;

use crate::search::SearchScope;
use crate::{FhirRequest, FhirService, RequestBody, Route, ServiceError};

fn outside(what: &str) -> ServiceError {
    ServiceError::Forbidden(format!(
        "{what} is not available to a caller confined to one patient's record"
    ))
}

/// 404 for a resource outside the compartment: the same answer as for one that does not exist.
fn not_found(ty: ResourceType, id: &ResourceId) -> ServiceError {
    ServiceError::NotFound(format!("{ty}/{id} is not known"))
}

/// Whether `ty` has members in the Patient compartment.
fn in_compartment_types(ty: ResourceType) -> bool {
    ty.as_str() == "Patient" || !definitions().patient_compartment(ty).is_empty()
}

/// Parameters that could reach resources outside the compartment.
fn reaches_outside(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    base == "_include" || base == "_revinclude" || name.contains("_has") || name.contains('.')
}

/// Longest instance history a confined caller may read (each version is checked).
const MAX_CHECKED_VERSIONS: u64 = 1000;

/// Whether a stored body belongs to `patient`'s compartment.
fn body_in_compartment(ty: ResourceType, body: &[u8], patient: &str) -> bool {
    let Ok(Value::Object(resource)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let mut patients = Vec::new();
    crate::audit::patients_of(ty, &resource, &mut patients);
    patients.iter().any(|p| p == patient)
}

impl FhirService {
    /// Whether version `v` of `ty/id` is in `patient`'s compartment (a deletion marker is
    /// judged by the version before it).
    async fn version_in_compartment(
        &self,
        ty: ResourceType,
        id: &ResourceId,
        v: haven_domain::VersionId,
        patient: &str,
    ) -> Result<bool, ServiceError> {
        if ty.as_str() == "Patient" {
            return Ok(id.as_str() == patient);
        }
        let mut n = v.get();
        while let Some(version) = haven_domain::VersionId::from_u64(n) {
            let Some(stored) = self.store.read_version(ty, id, version).await? else {
                return Ok(false);
            };
            if let Some(body) = &stored.body {
                return Ok(body_in_compartment(ty, body, patient));
            }
            n -= 1;
        }
        Ok(false)
    }

    /// Whether every version of `ty/id` is in `patient`'s compartment (its history shows them
    /// all: a resource moved from another patient keeps that patient's versions).
    async fn history_in_compartment(
        &self,
        ty: ResourceType,
        id: &ResourceId,
        patient: &str,
    ) -> Result<bool, ServiceError> {
        if ty.as_str() == "Patient" {
            return Ok(id.as_str() == patient);
        }
        let Some(current) = self.store.read_current(ty, id).await? else {
            return Ok(false);
        };
        let last = current.version.get();
        if last > MAX_CHECKED_VERSIONS {
            return Ok(false);
        }
        for n in 1..=last {
            let Some(v) = haven_domain::VersionId::from_u64(n) else {
                continue;
            };
            if let Some(stored) = self.store.read_version(ty, id, v).await?
                && let Some(body) = &stored.body
                && !body_in_compartment(ty, body, patient)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the current version of `ty/id` is in `patient`'s compartment.
    async fn in_compartment(
        &self,
        ty: ResourceType,
        id: &ResourceId,
        patient: &str,
    ) -> Result<bool, ServiceError> {
        if ty.as_str() == "Patient" {
            return Ok(id.as_str() == patient);
        }
        let Some(current) = self.store.read_current(ty, id).await? else {
            return Ok(false);
        };
        let Some(body) = &current.body else {
            return Ok(false);
        };
        let Ok(Value::Object(resource)) = serde_json::from_slice::<Value>(body) else {
            return Ok(false);
        };
        let mut patients = Vec::new();
        crate::audit::patients_of(ty, &resource, &mut patients);
        Ok(patients.iter().any(|p| p == patient))
    }

    /// Rewrites a request to stay inside `patient`'s compartment, or refuses it.
    pub(crate) async fn confine(
        &self,
        patient: &str,
        mut req: FhirRequest,
    ) -> Result<FhirRequest, ServiceError> {
        let patient_id = ResourceId::parse(patient).map_err(|_| {
            ServiceError::Forbidden("the token's patient context is not an id".into())
        })?;
        if let Some((name, _)) = req.query.iter().find(|(k, _)| reaches_outside(k)) {
            return Err(outside(&format!("the parameter {name}")));
        }
        req.route = match req.route {
            Route::Capabilities | Route::Validate(_, None) => req.route,
            Route::Read(ty, id) => {
                if !self.in_compartment(ty, &id, patient).await? {
                    return Err(not_found(ty, &id));
                }
                Route::Read(ty, id)
            }
            Route::Vread(ty, id, v) => {
                if !self.version_in_compartment(ty, &id, v, patient).await? {
                    return Err(not_found(ty, &id));
                }
                Route::Vread(ty, id, v)
            }
            Route::HistoryInstance(ty, id) => {
                if !self.history_in_compartment(ty, &id, patient).await? {
                    return Err(not_found(ty, &id));
                }
                Route::HistoryInstance(ty, id)
            }
            Route::Everything(id) => {
                if id.as_str() != patient {
                    let ty = ResourceType::parse("Patient").ok_or(ServiceError::Internal)?;
                    return Err(not_found(ty, &id));
                }
                Route::Everything(id)
            }
            Route::Search(SearchScope::Type(ty)) if ty.as_str() == "Patient" => {
                req.query.push(("_id".into(), patient.to_owned()));
                Route::Search(SearchScope::Type(ty))
            }
            Route::Search(SearchScope::Type(ty)) if in_compartment_types(ty) => {
                Route::Search(SearchScope::Compartment {
                    patient: patient_id,
                    ty,
                })
            }
            Route::Search(SearchScope::Compartment { patient: p, ty }) => {
                if p.as_str() != patient {
                    return Err(not_found(
                        ResourceType::parse("Patient").ok_or(ServiceError::Internal)?,
                        &p,
                    ));
                }
                Route::Search(SearchScope::Compartment { patient: p, ty })
            }
            Route::Search(SearchScope::Type(ty)) => {
                return Err(outside(&format!("searching {ty}")));
            }
            Route::Search(SearchScope::System) => return Err(outside("a search of every type")),
            Route::HistorySystem | Route::HistoryType(_) => {
                return Err(outside("history beyond one resource"));
            }
            Route::Bundle => return Err(outside("a batch or transaction")),
            // Never reached: the audit trail's view is the auditor's, never confined.
            Route::Disclosures(_) => return Err(outside("the audit trail")),
            Route::Validate(_, Some(_))
            | Route::Create(_)
            | Route::Update(..)
            | Route::Patch(..)
            | Route::Delete(..)
            | Route::ConditionalUpdate(_)
            | Route::ConditionalDelete(_) => return Err(outside("changing records")),
        };
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::reaches_outside;

    #[test]
    fn parameters_that_reach_other_resources_are_recognized() {
        for p in [
            "_include",
            "_revinclude:iterate",
            "_has:Observation:patient:code",
            "subject.name",
            "subject:Patient.name",
        ] {
            assert!(reaches_outside(p), "{p}");
        }
        for p in [
            "code",
            "date",
            "_count",
            "_sort",
            "subject",
            "patient:missing",
            "_id",
        ] {
            assert!(!reaches_outside(p), "{p}");
        }
    }
}

impl FhirService {
    /// A person's update of their own Patient record that may change only `fields` (the
    /// policy's `own_patient_fields`): compares the new content with the stored one and refuses
    /// a change anywhere else (identifiers, name, birth date, `meta.security`, ...). The update
    /// is then made conditional on the version compared (`If-Match`), so a change that slips in
    /// between is a 412, never an unchecked write.
    pub(crate) async fn own_patient_update(
        &self,
        mut req: FhirRequest,
        fields: &[String],
    ) -> Result<FhirRequest, ServiceError> {
        let (Route::Update(ty, id) | Route::Patch(ty, id)) = &req.route else {
            return Err(ServiceError::Internal);
        };
        let current = self
            .store
            .read_current(*ty, id)
            .await?
            .filter(|v| !v.is_deleted())
            .ok_or_else(|| ServiceError::NotFound(format!("{ty}/{id} does not exist")))?;
        let body = current.body.as_deref().ok_or(ServiceError::Internal)?;
        let old: serde_json::Value =
            serde_json::from_slice(body).map_err(|_| ServiceError::Internal)?;
        let new = match (&req.route, &req.body) {
            (Route::Update(..), RequestBody::Resource(m)) => serde_json::Value::Object(m.clone()),
            (Route::Patch(..), RequestBody::JsonPatch(doc)) => {
                let patch = crate::patch::parse_patch(doc.clone())?;
                let mut patched = old.clone();
                crate::patch::apply_patch(&mut patched, &patch, self.patch_limits())?;
                patched
            }
            // The usual request checks answer these.
            _ => return Ok(req),
        };
        if let Some(changed) = changed_outside(&old, &new, fields) {
            return Err(ServiceError::Forbidden(format!(
                "on your own Patient record you may change only {}; '{changed}' may not be \
                 changed by you",
                fields.join(", ")
            )));
        }
        let compared = format!("W/\"{}\"", current.version);
        match &req.if_match {
            Some(given) if given.trim() != compared => {
                return Err(ServiceError::PreconditionFailed(format!(
                    "{ty}/{id} is at version {}; read it again and retry",
                    current.version
                )));
            }
            _ => req.if_match = Some(compared),
        }
        Ok(req)
    }
}

/// The first top-level element (or `meta` element other than `versionId` and `lastUpdated`)
/// that differs between `old` and `new` and is not in `fields`.
fn changed_outside(
    old: &serde_json::Value,
    new: &serde_json::Value,
    fields: &[String],
) -> Option<String> {
    let empty = serde_json::Map::new();
    let (o, n) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let meta = |m: &serde_json::Map<String, serde_json::Value>| {
        let mut meta = m
            .get("meta")
            .and_then(serde_json::Value::as_object)
            .cloned()
            .unwrap_or_default();
        meta.remove("versionId");
        meta.remove("lastUpdated");
        meta
    };
    let (mo, mn) = (meta(o), meta(n));
    let mut meta_keys: Vec<&String> = mo.keys().chain(mn.keys()).collect();
    meta_keys.sort();
    meta_keys.dedup();
    if let Some(k) = meta_keys.into_iter().find(|k| mo.get(*k) != mn.get(*k)) {
        return Some(format!("meta.{k}"));
    }
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| k.as_str() != "meta" && !fields.iter().any(|f| f == *k))
        .find(|k| o.get(*k) != n.get(*k))
        .cloned()
}

#[cfg(test)]
mod own_patient_tests {
    use super::changed_outside;
    use serde_json::json;

    #[test]
    fn only_the_listed_elements_may_change() {
        let fields = vec!["telecom".to_owned(), "address".to_owned()];
        let old = json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "3",
            "lastUpdated": "2026-01-01T00:00:00Z", "security": [{"code": "R"}]},
            "identifier": [{"value": "MRN-1"}], "name": [{"family": "Doe"}],
            "telecom": [{"system": "phone", "value": "1"}]});
        let mut ok = old.clone();
        ok["telecom"] = json!([{"system": "phone", "value": "2"}]);
        ok["address"] = json!([{"city": "Leeds"}]);
        ok["meta"] = json!({"security": [{"code": "R"}]});
        assert_eq!(changed_outside(&old, &ok, &fields), None);
        let mut ident = ok.clone();
        ident["identifier"] = json!([{"value": "MRN-2"}]);
        assert_eq!(
            changed_outside(&old, &ident, &fields).as_deref(),
            Some("identifier")
        );
        let mut sec = ok.clone();
        sec["meta"] = json!({"security": []});
        assert_eq!(
            changed_outside(&old, &sec, &fields).as_deref(),
            Some("meta.security")
        );
        let mut removed = ok;
        removed.as_object_mut().unwrap().remove("name");
        assert_eq!(
            changed_outside(&old, &removed, &fields).as_deref(),
            Some("name")
        );
    }
}
