//! Turning a request into a checked operation: the resource validated against R4, ids and
//! preconditions parsed. Everything here runs before the store is touched.

use base64::Engine as _;
use bytes::Bytes;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use serde_json::{Map, Value};

use crate::patch::{PatchLimits, parse_patch};
use crate::{FhirService, RequestBody, Route, ServiceError};

/// A single interaction ready to run inside a unit of work.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Create {
        ty: ResourceType,
        id: ResourceId,
        body: Map<String, Value>,
        /// `If-None-Exist` (http.html#ccreate): create only if nothing matches.
        if_none_exist: Option<Criteria>,
    },
    Update {
        ty: ResourceType,
        id: ResourceId,
        body: Map<String, Value>,
        if_match: Option<VersionId>,
    },
    Patch {
        ty: ResourceType,
        id: ResourceId,
        patch: json_patch::Patch,
        if_match: Option<VersionId>,
        limits: PatchLimits,
    },
    Delete {
        ty: ResourceType,
        id: ResourceId,
        if_match: Option<VersionId>,
    },
    Read {
        ty: ResourceType,
        id: ResourceId,
    },
    Vread {
        ty: ResourceType,
        id: ResourceId,
        version: VersionId,
    },
    /// `PUT [type]?criteria` (http.html#cond-update).
    ConditionalUpdate {
        ty: ResourceType,
        body: Map<String, Value>,
        criteria: Criteria,
    },
    /// `DELETE [type]?criteria` (http.html#cdelete).
    ConditionalDelete {
        ty: ResourceType,
        criteria: Criteria,
    },
    /// An unconditional create whose stored form (bytes and index rows) was computed before
    /// the unit of work (see [`Op::sealed`]).
    Insert {
        ty: ResourceType,
        id: ResourceId,
        last_updated: Timestamp,
        bytes: Bytes,
        index: Vec<haven_store::IndexRow>,
    },
    /// An update whose stored form was computed before the unit of work from the head it read
    /// then (`base`); the unit writes it only if the head is still that one, and otherwise
    /// answers `WriteRace`, so the update is sealed again (see `FhirService::execute_op`).
    Replace {
        ty: ResourceType,
        id: ResourceId,
        base: Option<haven_store::CurrentState>,
        if_match: Option<VersionId>,
        version: VersionId,
        last_updated: Timestamp,
        bytes: Bytes,
        index: Vec<haven_store::IndexRow>,
    },
}

/// The search criteria of a conditional interaction, ready for the store.
#[derive(Clone, Debug)]
pub(crate) struct Criteria {
    pub query: haven_store::SearchQuery,
    /// Units deciding on criteria over the same type serialize on this key (see
    /// `WriteTx::lock_criteria`).
    pub lock_key: i64,
}

impl Criteria {
    /// `limit`: how many matches the caller needs to see (2 tells "one" from "several").
    pub(crate) fn new(
        service: &crate::FhirService,
        ty: ResourceType,
        pairs: &[(String, String)],
        limit: u32,
        what: &str,
    ) -> Result<Self, ServiceError> {
        if pairs.is_empty() {
            return Err(ServiceError::BadRequest(format!(
                "{what} needs search criteria (e.g. ?identifier=system|value)"
            )));
        }
        // Strict: a criterion ignored as unknown would widen the match, and a conditional
        // write on a wider match changes the wrong resources.
        let mut prepared =
            service.prepare_search(&crate::search::SearchScope::Type(ty), pairs, true)?;
        if prepared.query.conditions.is_empty() {
            return Err(ServiceError::BadRequest(format!(
                "{what} needs search criteria that select resources, not only result parameters"
            )));
        }
        prepared.query.limit = limit;
        prepared.query.sort.clear();
        prepared.query.cursor = None;
        prepared.query.total = false;
        // One lock per resource type, not per criteria text: `identifier=x` and
        // `identifier=sys|x&family=y` can match the same resource, so conditional writes of one
        // type must all serialize to keep "create once". FNV-1a, 64 bits: stable across
        // processes and replicas (std's hasher is not).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in b"haven.conditional.".iter().chain(ty.as_str().as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Ok(Self {
            query: prepared.query,
            lock_key: i64::from_ne_bytes(h.to_ne_bytes()),
        })
    }
}

impl Op {
    /// The resource this operation touches (`None`: chosen by search criteria).
    pub(crate) fn target(&self) -> Option<(ResourceType, &ResourceId)> {
        match self {
            Op::Create { ty, id, .. }
            | Op::Insert { ty, id, .. }
            | Op::Replace { ty, id, .. }
            | Op::Update { ty, id, .. }
            | Op::Patch { ty, id, .. }
            | Op::Delete { ty, id, .. }
            | Op::Read { ty, id }
            | Op::Vread { ty, id, .. } => Some((*ty, id)),
            Op::ConditionalUpdate { .. } | Op::ConditionalDelete { .. } => None,
        }
    }

    /// The audit action code of this operation.
    pub(crate) fn action(&self) -> &'static str {
        match self {
            Op::Create { .. } | Op::Insert { .. } => "create",
            Op::Update { .. } | Op::Replace { .. } | Op::ConditionalUpdate { .. } => "update",
            Op::Patch { .. } => "patch",
            Op::Delete { .. } | Op::ConditionalDelete { .. } => "delete",
            Op::Read { .. } => "read",
            Op::Vread { .. } => "vread",
        }
    }

    pub(crate) fn is_write(&self) -> bool {
        !matches!(self, Op::Read { .. } | Op::Vread { .. })
    }

    /// Moves the work that depends on nothing in the store out of the unit of work: an
    /// unconditional create knows its id, version (1) and time already, so its serialization
    /// and search-index extraction (FHIRPath over every parameter of the type) run here, on the
    /// caller's task, instead of inside the unit. On SQLite the unit runs on the one writer
    /// task, where this work would serialize every create in the server.
    pub(crate) fn sealed(self) -> Result<Op, ServiceError> {
        match self {
            Op::Create {
                ty,
                id,
                body,
                if_none_exist: None,
            } => {
                let last_updated = Timestamp::now();
                let (bytes, index) =
                    finalize_indexed(ty, body, &id, VersionId::FIRST, last_updated)?;
                Ok(Op::Insert {
                    ty,
                    id,
                    last_updated,
                    bytes,
                    index,
                })
            }
            other => Ok(other),
        }
    }
}

/// Most resources one conditional delete removes; more matches are a 412 (the criteria are
/// not selective enough).
pub(crate) const MAX_CONDITIONAL_DELETES: u32 = 100;

/// Conditions Haven does not offer (`If-None-Match` on writes, `If-Modified-Since` in Bundles)
/// are refused rather than ignored. Refusing them is safer than ignoring them and creating the duplicate the
/// client asked not to create. One rule for REST headers and Bundle `request` fields.
pub(crate) fn refuse_conditions(present: &[&str]) -> Result<(), ServiceError> {
    if present.is_empty() {
        return Ok(());
    }
    Err(ServiceError::BadRequest(format!(
        "conditional requests ({}) are not offered by this server version; see /metadata",
        present.join(", ")
    )))
}

pub(crate) fn parse_if_match(value: Option<&str>) -> Result<Option<VersionId>, ServiceError> {
    value
        .map(|v| {
            VersionId::parse_etag(v).map_err(|_| {
                ServiceError::BadRequest(format!(
                    "If-Match must be a version ETag such as W/\"3\", not '{}'",
                    v.chars().take(40).collect::<String>()
                ))
            })
        })
        .transpose()
}

/// Wraps raw content as a Binary resource (http.html#binary).
pub(crate) fn binary_resource(
    content_type: &str,
    data: &[u8],
    security_context: Option<&str>,
) -> Result<Map<String, Value>, ServiceError> {
    let mut m = Map::new();
    m.insert("resourceType".into(), Value::from("Binary"));
    m.insert("contentType".into(), Value::from(content_type));
    if let Some(sc) = security_context {
        m.insert(
            "securityContext".into(),
            serde_json::json!({ "reference": sc }),
        );
    }
    if !data.is_empty() {
        m.insert(
            "data".into(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(data)),
        );
    }
    Ok(m)
}

/// Checks a resource body for a write to `ty`: its type matches, its id obeys `id_rule`, and it
/// conforms to the R4 definitions. Returns the body with server-owned fields cleared.
pub(crate) fn check_resource(
    ty: ResourceType,
    mut body: Map<String, Value>,
    expected_id: Option<&ResourceId>,
) -> Result<Map<String, Value>, ServiceError> {
    match body.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == ty.as_str() => {}
        Some(t) => {
            return Err(ServiceError::BadRequest(format!(
                "the body is a {} but the URL names {ty}; send a {ty} or use the {}/ endpoint",
                t.chars().take(64).collect::<String>(),
                t.chars().take(64).collect::<String>()
            )));
        }
        None => {
            return Err(ServiceError::BadRequest(
                "the body has no resourceType; FHIR JSON resources must name their type".into(),
            ));
        }
    }
    match expected_id {
        // Update: the body's id must be present and equal the URL's (http.html#update).
        Some(id) => match body.get("id") {
            Some(Value::String(s)) if s == id.as_str() => {}
            Some(Value::String(s)) => {
                return Err(ServiceError::BadRequest(format!(
                    "the body's id '{}' does not match the id '{id}' in the URL",
                    s.chars().take(64).collect::<String>()
                )));
            }
            Some(_) => {
                return Err(ServiceError::BadRequest(
                    "the body's id must be a string".into(),
                ));
            }
            None => {
                return Err(ServiceError::BadRequest(format!(
                    "an update must carry the resource's id in the body (\"id\": \"{id}\")"
                )));
            }
        },
        // Create: the server assigns the id and ignores any the client sent (http.html#create).
        None => {
            body.remove("id");
        }
    }
    // The server owns versionId and lastUpdated; a client's values are replaced, not validated.
    if let Some(Value::Object(meta)) = body.get_mut("meta") {
        meta.remove("versionId");
        meta.remove("lastUpdated");
        if meta.is_empty() {
            body.remove("meta");
        }
    }
    conformance_errors(&body)?;
    if let Some(text) = conditional_reference(&Value::Object(body.clone())) {
        return Err(ServiceError::BadRequest(format!(
            "the conditional reference {} is only resolved inside a transaction Bundle; send \
             the resource in a transaction or reference it as Type/id",
            text.chars().take(80).collect::<String>()
        )));
    }
    Ok(body)
}

/// Validates against the R4 definitions; every error- or fatal-level issue is reported at once.
pub(crate) fn conformance_errors(resource: &Map<String, Value>) -> Result<(), ServiceError> {
    let issues: Vec<_> = haven_fhir::validate_resource(resource)
        .into_iter()
        .filter(|i| {
            matches!(
                i.severity,
                haven_fhir::Severity::Error | haven_fhir::Severity::Fatal
            )
        })
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::Invalid(cap_issues(issues)))
    }
}

/// The first `Reference.reference` that is search criteria (`Patient?identifier=...`).
fn conditional_reference(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, child)| match child {
            Value::String(s) if k == "reference" && s.contains('?') && !s.contains("://") => {
                Some(s.clone())
            }
            other => conditional_reference(other),
        }),
        Value::Array(items) => items.iter().find_map(conditional_reference),
        _ => None,
    }
}

/// Most issues reported for one request; a body built to fail everywhere must not turn into a
/// response hundreds of times its size.
pub(crate) const MAX_ISSUES: usize = 100;

/// Keeps the first [`MAX_ISSUES`] issues and says how many more there were.
pub(crate) fn cap_issues(mut issues: Vec<haven_fhir::Issue>) -> Vec<haven_fhir::Issue> {
    if issues.len() > MAX_ISSUES {
        let more = issues.len() - MAX_ISSUES;
        issues.truncate(MAX_ISSUES);
        issues.push(haven_fhir::Issue {
            severity: haven_fhir::Severity::Information,
            code: haven_fhir::IssueCode::TooLong,
            location: String::new(),
            message: format!("{more} more issues were found and are not listed; fix these first"),
        });
    }
    issues
}

/// Sets id, `meta.versionId` and `meta.lastUpdated`, and serializes with `resourceType`, `id`
/// and `meta` first, as FHIR JSON is conventionally written. Also computes the search index
/// rows of the stored resource from the same tree, so the index describes exactly the bytes
/// stored.
pub(crate) fn finalize_indexed(
    ty: ResourceType,
    mut body: Map<String, Value>,
    id: &ResourceId,
    version: VersionId,
    last_updated: Timestamp,
) -> Result<(Bytes, Vec<haven_store::IndexRow>), ServiceError> {
    let mut meta = match body.remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.remove("versionId");
    meta.remove("lastUpdated");
    let mut new_meta = Map::new();
    new_meta.insert("versionId".into(), Value::from(version.to_string()));
    new_meta.insert(
        "lastUpdated".into(),
        Value::from(last_updated.to_instant_string()),
    );
    new_meta.extend(meta);
    body.remove("resourceType");
    body.remove("id");
    let mut out = Map::with_capacity(body.len() + 3);
    out.insert("resourceType".into(), Value::from(ty.as_str()));
    out.insert("id".into(), Value::from(id.as_str()));
    out.insert("meta".into(), Value::Object(new_meta));
    out.extend(body);
    let index = crate::search::index::index_rows(ty, &out);
    let bytes = serde_json::to_vec(&out)
        .map(Bytes::from)
        .map_err(|_| ServiceError::Internal)?;
    Ok((bytes, index))
}

impl FhirService {
    /// A patched resource must fit the limits of a request body.
    pub(crate) fn patch_limits(&self) -> PatchLimits {
        PatchLimits {
            max_depth: self.config.limits.max_json_depth,
            max_bytes: self.config.limits.max_body_bytes,
        }
    }

    /// Prepares a single REST interaction (not history, bundles or operations).
    pub(crate) fn prepare_single(
        &self,
        route: Route,
        if_match: Option<&str>,
        if_none_exist: Option<&str>,
        query: &[(String, String)],
        body: RequestBody,
    ) -> Result<Op, ServiceError> {
        let if_match = parse_if_match(if_match)?;
        if if_none_exist.is_some() && !matches!(route, Route::Create(_)) {
            return Err(ServiceError::BadRequest(
                "If-None-Exist applies to create (POST) only".into(),
            ));
        }
        Ok(match route {
            Route::Create(ty) => {
                let body = resource_body(ty, body, None)?;
                let if_none_exist = if_none_exist
                    .map(|criteria| {
                        let pairs = crate::route::split_url(&format!("?{criteria}"))?.1;
                        Criteria::new(self, ty, &pairs, 2, "If-None-Exist")
                    })
                    .transpose()?;
                Op::Create {
                    ty,
                    id: ResourceId::generate(),
                    body: check_resource(ty, body, None)?,
                    if_none_exist,
                }
            }
            Route::ConditionalUpdate(ty) => {
                if if_match.is_some() {
                    return Err(ServiceError::BadRequest(
                        "If-Match cannot be combined with a conditional update".into(),
                    ));
                }
                let body = resource_body(ty, body, None)?;
                let given = body.get("id").and_then(Value::as_str);
                let given = given
                    .map(|id| {
                        ResourceId::parse(id).map_err(|e| ServiceError::BadRequest(e.to_string()))
                    })
                    .transpose()?;
                Op::ConditionalUpdate {
                    ty,
                    body: check_resource(ty, body, given.as_ref())?,
                    criteria: Criteria::new(self, ty, query, 2, "a conditional update")?,
                }
            }
            Route::ConditionalDelete(ty) => Op::ConditionalDelete {
                ty,
                criteria: Criteria::new(
                    self,
                    ty,
                    query,
                    MAX_CONDITIONAL_DELETES + 1,
                    "a conditional delete",
                )?,
            },
            Route::Update(ty, id) => {
                let body = resource_body(ty, body, Some(&id))?;
                Op::Update {
                    ty,
                    body: check_resource(ty, body, Some(&id))?,
                    id,
                    if_match,
                }
            }
            Route::Patch(ty, id) => match body {
                RequestBody::JsonPatch(doc) => Op::Patch {
                    ty,
                    id,
                    patch: parse_patch(doc)?,
                    if_match,
                    limits: self.patch_limits(),
                },
                _ => {
                    return Err(ServiceError::UnsupportedMedia(
                        "PATCH takes a JSON Patch document (Content-Type: application/json-patch+json)"
                            .into(),
                    ));
                }
            },
            Route::Delete(ty, id) => Op::Delete { ty, id, if_match },
            Route::Read(ty, id) => Op::Read { ty, id },
            Route::Vread(ty, id, version) => Op::Vread { ty, id, version },
            other => {
                return Err(ServiceError::MethodNotAllowed(format!(
                    "{} cannot be part of this request",
                    other.interaction().as_str()
                )));
            }
        })
    }
}

/// The resource a create/update carries, from JSON or (for Binary) raw content.
pub(crate) fn resource_body(
    ty: ResourceType,
    body: RequestBody,
    id: Option<&ResourceId>,
) -> Result<Map<String, Value>, ServiceError> {
    match body {
        RequestBody::Resource(m) => Ok(m),
        RequestBody::Raw {
            content_type,
            data,
            security_context,
        } if ty.as_str() == "Binary" => {
            let mut m = binary_resource(&content_type, &data, security_context.as_deref())?;
            if let Some(id) = id {
                m.insert("id".into(), Value::from(id.as_str()));
            }
            Ok(m)
        }
        RequestBody::Raw { .. } => Err(ServiceError::UnsupportedMedia(format!(
            "{ty} must be sent as FHIR JSON (Content-Type: application/fhir+json); only Binary accepts other content"
        ))),
        RequestBody::JsonPatch(_) => Err(ServiceError::UnsupportedMedia(
            "a JSON Patch document is only accepted by PATCH".into(),
        )),
        RequestBody::None => Err(ServiceError::BadRequest(
            "this interaction needs a resource in the request body".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ty(s: &str) -> ResourceType {
        ResourceType::parse(s).unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn create_drops_client_id_and_server_meta() {
        let body = obj(
            json!({"resourceType": "Patient", "id": "client", "meta": {"versionId": "9", "lastUpdated": "2020-01-01T00:00:00Z", "tag": [{"code": "t"}]}}),
        );
        let checked = check_resource(ty("Patient"), body, None).unwrap();
        assert!(checked.get("id").is_none());
        assert_eq!(checked["meta"], json!({"tag": [{"code": "t"}]}));
    }

    #[test]
    fn update_requires_matching_id_and_type() {
        let id = ResourceId::parse("p1").unwrap();
        let ok = obj(json!({"resourceType": "Patient", "id": "p1"}));
        assert!(check_resource(ty("Patient"), ok, Some(&id)).is_ok());
        for bad in [
            json!({"resourceType": "Patient", "id": "p2"}),
            json!({"resourceType": "Patient"}),
            json!({"resourceType": "Observation", "id": "p1"}),
            json!({"id": "p1"}),
            json!({"resourceType": "Patient", "id": 7}),
        ] {
            assert_eq!(
                check_resource(ty("Patient"), obj(bad.clone()), Some(&id))
                    .unwrap_err()
                    .status(),
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn invalid_resources_report_every_issue() {
        let body = obj(json!({"resourceType": "Patient", "foo": 1, "birthDate": "1970-13-01"}));
        match check_resource(ty("Patient"), body, None) {
            Err(ServiceError::Invalid(issues)) => assert_eq!(issues.len(), 2, "{issues:?}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn finalize_puts_type_id_meta_first() {
        let body = obj(
            json!({"gender": "female", "meta": {"tag": [{"code": "t"}], "versionId": "7"}, "resourceType": "Patient"}),
        );
        let id = ResourceId::parse("abc").unwrap();
        let (bytes, _) = finalize_indexed(
            ty("Patient"),
            body,
            &id,
            VersionId::FIRST.next(),
            Timestamp::from_micros(0),
        )
        .unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            text.starts_with(r#"{"resourceType":"Patient","id":"abc","meta":{"versionId":"2","lastUpdated":"1970-01-01T00:00:00.000000Z","tag":[{"code":"t"}]},"gender":"female"}"#),
            "{text}"
        );
    }

    #[test]
    fn raw_content_becomes_a_binary() {
        let m = binary_resource("application/pdf", b"%PDF-1.4", Some("Patient/1")).unwrap();
        assert_eq!(m["contentType"], "application/pdf");
        assert_eq!(m["data"], "JVBERi0xLjQ=");
        assert_eq!(m["securityContext"]["reference"], "Patient/1");
        assert!(haven_fhir::validate_resource(&m).is_empty());
    }

    #[test]
    fn if_match_must_be_an_etag() {
        assert_eq!(parse_if_match(Some("W/\"3\"")).unwrap().unwrap().get(), 3);
        assert!(parse_if_match(None).unwrap().is_none());
        assert_eq!(parse_if_match(Some("W/\"x\"")).unwrap_err().status(), 400);
    }
}
