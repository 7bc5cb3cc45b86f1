//! `/metadata`: the CapabilityStatement.
//!
//! The CapabilityStatement is generated from the same tables the router uses
//! ([`TYPE_INTERACTIONS`], [`SYSTEM_INTERACTIONS`]) and from the vendored R4 definitions, so it
//! cannot claim an interaction the server does not route (a unit test cross-checks the two).

use bytes::Bytes;
use haven_domain::Interaction;
use serde_json::{Value, json};

use crate::FhirService;

/// Interactions offered on every resource type.
pub const TYPE_INTERACTIONS: [Interaction; 9] = [
    Interaction::Read,
    Interaction::Vread,
    Interaction::Update,
    Interaction::Patch,
    Interaction::Delete,
    Interaction::HistoryInstance,
    Interaction::HistoryType,
    Interaction::Create,
    Interaction::SearchType,
];

/// Interactions offered at the server base.
pub const SYSTEM_INTERACTIONS: [Interaction; 4] = [
    Interaction::Transaction,
    Interaction::Batch,
    Interaction::HistorySystem,
    Interaction::SearchSystem,
];

impl FhirService {
    pub(crate) fn capabilities(&self) -> Bytes {
        let defs = haven_fhir::definitions();
        let interactions: Vec<Value> = TYPE_INTERACTIONS
            .iter()
            .map(|i| json!({ "code": i.as_str() }))
            .collect();
        // `_revinclude` targets: for each type, the reference parameters that can point at it.
        let mut revincludes: std::collections::HashMap<&str, Vec<String>> =
            std::collections::HashMap::new();
        for source in defs.resource_types() {
            for p in defs.search_params(*source).filter(|p| {
                p.is_supported() && p.param_type == haven_fhir::search::ParamType::Reference
            }) {
                for target in &p.targets {
                    revincludes
                        .entry(target.as_str())
                        .or_default()
                        .push(format!("{source}:{}", p.code));
                }
            }
        }
        let resources: Vec<Value> = defs
            .resource_types()
            .iter()
            .map(|t| {
                if t.as_str() == "AuditEvent" {
                    return audit_event_capability();
                }
                let params: Vec<&haven_fhir::search::SearchParam> = defs
                    .search_params(*t)
                    .filter(|p| p.is_supported())
                    .collect();
                let search_param: Vec<Value> = params
                    .iter()
                    .map(|p| {
                        json!({
                            "name": p.code,
                            "definition": p.url,
                            "type": p.param_type.as_str(),
                        })
                    })
                    .collect();
                let includes: Vec<String> = params
                    .iter()
                    .filter(|p| p.param_type == haven_fhir::search::ParamType::Reference)
                    .map(|p| format!("{t}:{}", p.code))
                    .collect();
                let mut operation = vec![json!({
                    "name": "validate",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
                })];
                if t.as_str() == "Patient" {
                    operation.push(json!({
                        "name": "everything",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"
                    }));
                    operation.push(json!({
                        "name": "disclosures",
                        "definition": "urn:haven:OperationDefinition/Patient-disclosures",
                        "documentation": "The accounting of disclosures (HIPAA 164.528): every \
                            access to the patient's data in a period of up to six years \
                            (parameters since, until), as AuditEvents; auditor role only."
                    }));
                }
                json!({
                    "type": t.as_str(),
                    "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                    "interaction": interactions,
                    "versioning": "versioned-update",
                    "readHistory": true,
                    "updateCreate": true,
                    "conditionalCreate": true,
                    "conditionalRead": "not-supported",
                    "conditionalUpdate": true,
                    "conditionalDelete": "multiple",
                    "searchInclude": includes,
                    "searchRevInclude": revincludes.get(t.as_str()).cloned().unwrap_or_default(),
                    "searchParam": search_param,
                    "operation": operation,
                })
            })
            .collect();
        let limits = &self.config.limits;
        let cs = json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": haven_domain::Timestamp::now().to_instant_string(),
            "publisher": "Haven",
            "kind": "instance",
            "software": { "name": "Haven", "version": env!("CARGO_PKG_VERSION") },
            "implementation": {
                "description": format!(
                    "Haven FHIR R4 server (max body {} bytes, max {} Bundle entries, page size up to {})",
                    limits.max_body_bytes, limits.max_bundle_entries, limits.max_page_size
                ),
                "url": self.config.base_url,
            },
            "fhirVersion": defs.fhir_version(),
            "format": ["application/fhir+json", "json"],
            "patchFormat": ["application/json-patch+json"],
            "rest": [{
                "mode": "server",
                "resource": resources,
                "interaction": SYSTEM_INTERACTIONS.iter().map(|i| json!({ "code": i.as_str() })).collect::<Vec<_>>(),
            }]
        });
        Bytes::from(serde_json::to_vec(&cs).unwrap_or_default())
    }
}

/// `AuditEvent` as the audit trail's view serves it (`audit_view`): read and search only, by
/// the auditor role; never written.
fn audit_event_capability() -> Value {
    let param = |name: &str, ty: &str| {
        json!({
            "name": name,
            "definition": format!("http://hl7.org/fhir/SearchParameter/AuditEvent-{name}"),
            "type": ty,
        })
    };
    json!({
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "Haven's tamper-evident audit trail, read-only, for the auditor role \
            (scope user/AuditEvent.rs). Records are never created, changed or deleted through \
            the API.",
        "interaction": [
            { "code": "read" },
            { "code": "vread" },
            { "code": "search-type" }
        ],
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "conditionalCreate": false,
        "conditionalRead": "not-supported",
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",
        "searchParam": [
            param("patient", "reference"),
            param("date", "date"),
            param("agent", "reference"),
            param("action", "token"),
            param("outcome", "token"),
            param("entity", "reference"),
            param("subtype", "token"),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Method, route};

    /// Every interaction the CapabilityStatement claims is routed.
    #[test]
    fn capability_tables_match_the_router() {
        for i in TYPE_INTERACTIONS {
            let (method, path): (Method, &[&str]) = match i {
                Interaction::Read => (Method::Get, &["Patient", "a"]),
                Interaction::Vread => (Method::Get, &["Patient", "a", "_history", "1"]),
                Interaction::Update => (Method::Put, &["Patient", "a"]),
                Interaction::Patch => (Method::Patch, &["Patient", "a"]),
                Interaction::Delete => (Method::Delete, &["Patient", "a"]),
                Interaction::HistoryInstance => (Method::Get, &["Patient", "a", "_history"]),
                Interaction::HistoryType => (Method::Get, &["Patient", "_history"]),
                Interaction::Create => (Method::Post, &["Patient"]),
                Interaction::SearchType => (Method::Get, &["Patient"]),
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(route(method, path).unwrap().interaction(), i);
        }
        assert_eq!(
            route(Method::Get, &["_history"]).unwrap().interaction(),
            Interaction::HistorySystem
        );
        assert_eq!(
            route(Method::Post, &[]).unwrap().interaction(),
            Interaction::Batch
        );
        assert_eq!(
            route(Method::Get, &[]).unwrap().interaction(),
            Interaction::SearchSystem
        );
        assert_eq!(
            route(Method::Patch, &["Patient"]).unwrap_err().status(),
            405
        );
    }
}
