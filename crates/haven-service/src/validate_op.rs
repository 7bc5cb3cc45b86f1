//! `$validate` (R4 resource-operation-validate): check a resource against the R4 definitions
//! without storing it.

use bytes::Bytes;
use haven_domain::{ResourceId, ResourceType};
use serde_json::Value;

use crate::prepare::{check_resource, resource_body};
use crate::{FhirResponse, FhirService, RequestBody, ServiceError, outcome};

impl FhirService {
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
