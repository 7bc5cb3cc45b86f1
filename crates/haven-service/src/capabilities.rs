//! `/metadata` and `$validate`.
//!
//! The CapabilityStatement is generated from the same tables the router uses
//! ([`TYPE_INTERACTIONS`], [`SYSTEM_INTERACTIONS`]) and from the vendored R4 definitions, so it
//! cannot claim an interaction the server does not route (a unit test cross-checks the two).

use bytes::Bytes;
use haven_domain::{Interaction, ResourceId, ResourceType};
use serde_json::{Value, json};

use crate::prepare::{check_resource, resource_body};
use crate::{FhirResponse, FhirService, RequestBody, ServiceError, outcome};

/// Interactions offered on every resource type.
pub const TYPE_INTERACTIONS: [Interaction; 8] = [
    Interaction::Read,
    Interaction::Vread,
    Interaction::Update,
    Interaction::Patch,
    Interaction::Delete,
    Interaction::HistoryInstance,
    Interaction::HistoryType,
    Interaction::Create,
];

/// Interactions offered at the server base.
pub const SYSTEM_INTERACTIONS: [Interaction; 3] = [
    Interaction::Transaction,
    Interaction::Batch,
    Interaction::HistorySystem,
];

impl FhirService {
    pub(crate) fn capabilities(&self) -> Bytes {
        let defs = haven_fhir::definitions();
        let interactions: Vec<Value> = TYPE_INTERACTIONS
            .iter()
            .map(|i| json!({ "code": i.as_str() }))
            .collect();
        let resources: Vec<Value> = defs
            .resource_types()
            .iter()
            .map(|t| {
                json!({
                    "type": t.as_str(),
                    "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                    "interaction": interactions,
                    "versioning": "versioned-update",
                    "readHistory": true,
                    "updateCreate": true,
                    "conditionalCreate": false,
                    "conditionalRead": "not-supported",
                    "conditionalUpdate": false,
                    "conditionalDelete": "not-supported",
                    "operation": [{
                        "name": "validate",
                        "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"
                    }]
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

    /// `$validate` (R4 resource-operation-validate): 200 with an OperationOutcome listing every
    /// issue, whether or not the resource is valid; errors only when validation cannot run.
    pub(crate) async fn validate_operation(
        &self,
        ty: ResourceType,
        id: Option<ResourceId>,
        body: RequestBody,
        query: &[(String, String)],
    ) -> Result<FhirResponse, ServiceError> {
        let mut mode = query
            .iter()
            .find(|(k, _)| k == "mode")
            .map(|(_, v)| v.clone());
        // The body is the resource, or a Parameters with `resource` and `mode`; `resource` may be
        // absent only for mode=delete (R4 Resource-validate), and then there may be no body.
        let mut resource = match body {
            RequestBody::None => None,
            other => Some(resource_body(ty, other, id.as_ref())?),
        };
        if let Some(b) = &resource
            && b.get("resourceType").and_then(Value::as_str) == Some("Parameters")
            && ty.as_str() != "Parameters"
        {
            let params = b
                .get("parameter")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut found = None;
            for p in params {
                match p.get("name").and_then(Value::as_str) {
                    Some("resource") => {
                        found = p.get("resource").and_then(Value::as_object).cloned()
                    }
                    Some("mode") => {
                        mode = p
                            .get("valueCode")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    }
                    _ => {}
                }
            }
            resource = found;
        }
        if mode.as_deref() == Some("delete") {
            let id = id.ok_or_else(|| {
                ServiceError::BadRequest(
                    "mode=delete needs an instance: POST [type]/[id]/$validate".into(),
                )
            })?;
            return match self.store.read_current(ty, &id).await? {
                Some(v) if !v.is_deleted() => Ok(ok_outcome("the resource can be deleted")),
                _ => Err(ServiceError::NotFound(format!("{ty}/{id} does not exist"))),
            };
        }
        let resource = resource.ok_or_else(|| {
            ServiceError::BadRequest(
                "send the resource to validate, or a Parameters with a 'resource' parameter".into(),
            )
        })?;
        if query.iter().any(|(k, _)| k == "profile") {
            return Err(ServiceError::BadRequest(
                "validation against a profile is not supported yet; omit 'profile' to validate against the R4 base definitions"
                    .into(),
            ));
        }
        if mode.as_deref() == Some("update") && id.is_none() {
            return Err(ServiceError::BadRequest(
                "mode=update needs an instance: POST [type]/[id]/$validate".into(),
            ));
        }
        if !matches!(mode.as_deref(), None | Some("create") | Some("update")) {
            return Err(ServiceError::BadRequest(
                "mode must be one of create, update, delete".into(),
            ));
        }
        let expected = if mode.as_deref() == Some("update") {
            id.as_ref()
        } else {
            None
        };
        match check_resource(ty, resource, expected) {
            Ok(_) => Ok(ok_outcome("validation found no issues")),
            Err(ServiceError::Invalid(issues)) => Ok(FhirResponse::json(
                200,
                Bytes::from(
                    serde_json::to_vec(&outcome::operation_outcome(&issues)).unwrap_or_default(),
                ),
            )),
            Err(other) => Err(other),
        }
    }
}

fn ok_outcome(message: &str) -> FhirResponse {
    FhirResponse::json(
        200,
        Bytes::from(serde_json::to_vec(&outcome::information(message)).unwrap_or_default()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Method, route};

    /// Every interaction the CapabilityStatement claims is routed, and search (not offered) is not.
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
        assert_eq!(route(Method::Get, &["Patient"]).unwrap_err().status(), 405);
    }
}
