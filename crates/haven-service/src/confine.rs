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
use crate::{FhirRequest, FhirService, Route, ServiceError};

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
