//! What the service writes to the audit trail, and when (HIPAA 164.312(b)).
//!
//! Every interaction that touches patient data leaves a `haven_audit::AuditRecord`:
//! - a write records it *inside its unit of work*, so the record commits, or rolls back, with
//!   the data (`execute_op`, transactions);
//! - a read, search, history or `$everything` records it in a unit of its own and answers only
//!   once that unit is durable; if the record cannot be stored, the data is not served (503);
//! - a refused or failed interaction records its outcome the same way.
//!
//! Records hold identifiers only: the resources touched (`Type/id/_history/v`), the patients
//! whose data they are (the R4 Patient compartment of each resource), the request id and client
//! address. Never resource content.
//!
//! The sealer (`seal`) then chains committed records and signs checkpoints.

pub mod seal;

use haven_audit::{Actor, AuditRecord, Category, Entity, Outcome};
use haven_domain::{ResourceType, Timestamp};
use haven_fhir::definitions;
use haven_fhir::search::{IndexValue, extract};
use haven_store::{AuditEntry, StoredVersion, WriteTx};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::{FhirService, RequestContext, ServiceError};

pub use seal::{AuditOutput, Round, Sealer, SealerConfig};

/// The patients whose compartment `resource` (of type `ty`) is in: itself for a Patient, and
/// every Patient its compartment parameters reference (R4 CompartmentDefinition `patient`).
pub(crate) fn patients_of(ty: ResourceType, resource: &Map<String, Value>, out: &mut Vec<String>) {
    if ty.as_str() == "Patient"
        && let Some(id) = resource.get("id").and_then(Value::as_str)
    {
        out.push(id.to_owned());
    }
    referenced_patients(ty, resource, out);
}

/// The Patients `resource`'s compartment parameters reference.
fn referenced_patients(ty: ResourceType, resource: &Map<String, Value>, out: &mut Vec<String>) {
    let defs = definitions();
    for code in defs.patient_compartment(ty) {
        let Some(param) = defs.search_param(ty, code) else {
            continue;
        };
        for v in extract(resource, param) {
            if let IndexValue::Reference {
                target_type: Some(t),
                id: Some(id),
                ..
            } = v
                && t.as_str() == "Patient"
            {
                out.push(id);
            }
        }
    }
}

/// [`patients_of`] for a resource still in JSON text, whose type and id are known: the text is
/// parsed only when it may hold a reference (see [`may_reference`]), which spares most audited
/// reads (a Patient without links, a Practitioner) a full parse.
fn patients_of_json(ty: ResourceType, id: Option<&str>, json: &[u8], out: &mut Vec<String>) {
    if ty.as_str() == "Patient"
        && let Some(id) = id
    {
        out.push(id.to_owned());
    }
    if may_reference(json)
        && let Ok(resource) = serde_json::from_slice::<Map<String, Value>>(json)
    {
        referenced_patients(ty, &resource, out);
    }
}

/// Whether a resource's JSON may hold a literal reference, the only way its compartment
/// parameters can name a patient. A `reference` key can only be spelt literally or with a `\u`
/// escape, so a body with neither has none.
fn may_reference(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"\"reference\"").is_some()
        || memchr::memmem::find(body, b"\\u").is_some()
}

/// A Bundle as [`Touched::bundle`] reads it: its entries, left raw.
#[derive(serde::Deserialize)]
struct BundleView<'a> {
    #[serde(borrow, default)]
    entry: Vec<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct EntryView<'a> {
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
}

/// The few fields of a resource a record names. Values, not typed, so that an odd value
/// (a number for an id) is read as the full parse would read it rather than failing the entry.
#[derive(serde::Deserialize)]
struct ResourceHead {
    #[serde(rename = "resourceType", default)]
    resource_type: Option<Value>,
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    meta: Option<Value>,
}

/// What an interaction touched, gathered for its record.
#[derive(Clone, Debug, Default)]
pub(crate) struct Touched {
    pub entities: Vec<Entity>,
    pub patients: Vec<String>,
}

impl Touched {
    /// A stored version: the resource, and (from its body) the patients it belongs to.
    pub(crate) fn version(&mut self, v: &StoredVersion) {
        self.entities.push(Entity {
            resource_type: v.resource_type.as_str().to_owned(),
            id: v.id.as_str().to_owned(),
            version: Some(v.version.get()),
        });
        self.patients_of_version(v);
    }

    /// The patients a stored version places it with: a Patient itself, and whom its body's
    /// compartment parameters reference (a deletion marker has no body).
    pub(crate) fn patients_of_version(&mut self, v: &StoredVersion) {
        patients_of_json(
            v.resource_type,
            Some(v.id.as_str()),
            v.body.as_deref().unwrap_or_default(),
            &mut self.patients,
        );
    }

    /// A resource named without its body (a deletion, a failed read).
    pub(crate) fn named(&mut self, ty: ResourceType, id: &str) {
        self.entities.push(Entity {
            resource_type: ty.as_str().to_owned(),
            id: id.to_owned(),
            version: None,
        });
        if ty.as_str() == "Patient" {
            self.patients.push(id.to_owned());
        }
    }

    /// Every resource of a Bundle the service answered with (search, history, `$everything`).
    ///
    /// Read without building the Bundle as a JSON value: each entry's resource stays raw text,
    /// of which only the type, id and version are taken, and only a resource that may hold a
    /// reference (see [`may_reference`]) is parsed whole for its compartment. A page of fifty
    /// Patients otherwise cost the audited read more than the page itself.
    pub(crate) fn bundle(&mut self, body: &[u8]) {
        let Ok(bundle) = serde_json::from_slice::<BundleView<'_>>(body) else {
            return;
        };
        for e in bundle.entry {
            let Ok(EntryView {
                resource: Some(raw),
            }) = serde_json::from_str::<EntryView<'_>>(e.get())
            else {
                continue;
            };
            let Ok(head) = serde_json::from_str::<ResourceHead>(raw.get()) else {
                continue;
            };
            let Some(ty) = head
                .resource_type
                .as_ref()
                .and_then(Value::as_str)
                .and_then(ResourceType::parse)
            else {
                continue;
            };
            // An OperationOutcome of the search itself names no patient data.
            if ty.as_str() == "OperationOutcome" {
                continue;
            }
            let string_id = head.id.as_ref().and_then(Value::as_str);
            let version = head
                .meta
                .as_ref()
                .and_then(|m| m.get("versionId"))
                .and_then(Value::as_str)
                .and_then(|v| v.parse().ok());
            self.entities.push(Entity {
                resource_type: ty.as_str().to_owned(),
                id: string_id.unwrap_or_default().to_owned(),
                version,
            });
            patients_of_json(ty, string_id, raw.get().as_bytes(), &mut self.patients);
        }
    }
}

/// Who asked, as a unit of work can carry it (owned).
#[derive(Clone, Debug)]
pub(crate) struct Who {
    pub request_id: String,
    pub client_address: Option<String>,
    pub actor: Actor,
    /// The request's purpose of use (`X-Purpose-Of-Use`).
    pub purpose: Option<String>,
    /// Patients the caller has emergency access (break-glass) to: every access to their
    /// data is flagged.
    pub emergency: Vec<haven_domain::EmergencyAccess>,
}

/// The audit actor a principal stands for: a person by account name (a client acting for
/// itself has no user), their roles, the client.
pub(crate) fn actor_of(p: &haven_domain::Principal) -> Actor {
    Actor {
        user: match p.kind {
            haven_domain::PrincipalKind::User => {
                Some(p.username.clone().unwrap_or_else(|| p.subject.clone()))
            }
            haven_domain::PrincipalKind::Client => None,
        },
        role: (!p.roles.is_empty()).then(|| p.role_names()),
        client: Some(p.client_id.clone()),
    }
}

impl Who {
    pub(crate) fn of(ctx: &RequestContext) -> Self {
        let actor = ctx
            .principal
            .as_deref()
            .map_or_else(Actor::default, actor_of);
        Self {
            request_id: ctx.request_id.clone(),
            client_address: ctx.client_address.clone(),
            actor,
            purpose: ctx.purpose_of_use.clone(),
            emergency: ctx
                .principal
                .as_deref()
                .map(|p| p.emergency.clone())
                .unwrap_or_default(),
        }
    }
}

/// An audit record the store refused: the interaction fails with 503 (its data is not served,
/// and a write's unit rolls back with the record).
pub(crate) fn refused(e: haven_store::StoreError) -> ServiceError {
    metrics::counter!("haven_audit_write_failures_total").increment(1);
    tracing::error!(error = %e, "an audit record could not be stored; the interaction is refused");
    ServiceError::Unavailable
}

/// Whether a failed interaction is recorded. Not when the database itself is unreachable: the
/// record could not be stored either (waiting for it would only delay the 503), and nothing
/// was disclosed or changed.
pub(crate) fn worth_recording(e: &ServiceError) -> bool {
    !matches!(e, ServiceError::Unavailable)
}

/// The names (never the values) of request parameters, for a record's detail.
pub(crate) fn parameter_names(prefix: &str, pairs: &[(String, String)]) -> Option<String> {
    // A name that does not look like a search parameter (`?John%20Smith`) could itself be
    // PHI: it is counted, not written.
    let plausible = |k: &str| {
        !k.is_empty()
            && k.len() <= 64
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.'))
    };
    let odd = pairs.iter().filter(|(k, _)| !plausible(k)).count();
    let mut names: Vec<&str> = pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| plausible(k))
        .collect();
    let odd_name = format!("({odd} other)");
    if odd > 0 {
        names.push(&odd_name);
    }
    names.sort_unstable();
    names.dedup();
    let params = names.join(",");
    match (prefix.strip_suffix("params="), params.is_empty()) {
        (Some(""), true) => None,
        (Some(head), true) => Some(head.trim_end().to_owned()),
        _ => Some(format!("{prefix}{params}")),
    }
}

/// The record of one interaction, ready for the store.
pub(crate) fn entry(
    who: &Who,
    action: &str,
    status: u16,
    touched: Touched,
    detail: Option<String>,
) -> AuditEntry {
    let time = Timestamp::now();
    let mut touched = touched;
    // A resource named up front (the subject of `$everything`) and found again with its
    // version is one entity.
    let versioned: Vec<(String, String)> = touched
        .entities
        .iter()
        .filter(|e| e.version.is_some())
        .map(|e| (e.resource_type.clone(), e.id.clone()))
        .collect();
    touched.entities.retain(|e| {
        e.version.is_some() || !versioned.contains(&(e.resource_type.clone(), e.id.clone()))
    });
    // Under break-glass: purpose "emergency treatment", and the detail says so.
    let emergency = touched.patients.iter().any(|p| {
        who.emergency
            .iter()
            .any(|e| &e.patient == p && e.until > time)
    });
    let (purpose_of_use, detail) = if emergency {
        (
            Some("ETREAT".to_owned()),
            Some(match detail {
                Some(d) => format!("break-glass {d}"),
                None => "break-glass".to_owned(),
            }),
        )
    } else {
        (who.purpose.clone(), detail)
    };
    let mut record = AuditRecord {
        time,
        category: Category::Data,
        action: action.to_owned(),
        status,
        outcome: Outcome::from_status(status),
        actor: who.actor.clone(),
        source_ip: who.client_address.clone(),
        request_id: Some(who.request_id.clone()),
        purpose_of_use,
        entities: touched.entities,
        patients: touched.patients,
        detail,
    };
    record.normalize();
    AuditEntry {
        time,
        patients: record.patients.clone(),
        record: record.canonical(),
    }
}

/// What a write touched: the version written and its patients. A deletion stores no body, so
/// the patients come from the version it deleted.
pub(crate) async fn touch_written(
    tx: &mut dyn WriteTx,
    t: &mut Touched,
    v: &StoredVersion,
) -> Result<(), ServiceError> {
    t.version(v);
    if v.is_deleted()
        && let Some(prev) = v
            .version
            .get()
            .checked_sub(1)
            .and_then(haven_domain::VersionId::from_u64)
        && let Some(before) = tx.read_version(v.resource_type, &v.id, prev).await?
    {
        t.patients_of_version(&before);
    }
    Ok(())
}

impl FhirService {
    /// Makes `entry` durable outside any unit of work (grouped with other requests' records by
    /// the store), before the answer it describes is sent. A failure is a 503: the data is not
    /// served unaudited.
    pub(crate) async fn audit_alone(&self, entry: AuditEntry) -> Result<(), ServiceError> {
        if !self.config.audit_writes {
            return Ok(());
        }
        self.store.record_audit(entry).await.map_err(refused)
    }

    /// Records a search, history or `$everything` answer: every resource in the Bundle and
    /// the patients they belong to. `detail`: parameter names only (values may be PHI).
    pub(crate) async fn audit_bundle(
        &self,
        ctx: &RequestContext,
        action: &str,
        result: Result<crate::FhirResponse, ServiceError>,
        detail: Option<String>,
        subject: Option<(ResourceType, &str)>,
    ) -> Result<crate::FhirResponse, ServiceError> {
        self.audit_answer(
            ctx,
            action,
            result,
            |resp| {
                let mut t = resp.audit.clone().unwrap_or_default();
                if let Some((ty, id)) = subject {
                    t.named(ty, id);
                }
                if resp.audit.is_none()
                    && let Some(body) = &resp.body
                {
                    t.bundle(body);
                }
                t
            },
            |resp| resp.status,
            detail,
        )
        .await
    }

    /// Records an interaction that answered without a write of its own (a read, a search, a
    /// refusal): durable before the answer leaves.
    pub(crate) async fn audit_answer<T>(
        &self,
        ctx: &RequestContext,
        action: &str,
        result: Result<T, ServiceError>,
        touched: impl FnOnce(&T) -> Touched,
        status: impl FnOnce(&T) -> u16,
        detail: Option<String>,
    ) -> Result<T, ServiceError> {
        if !self.config.audit_writes {
            // The benchmark's comparison: no record is built either, so the whole cost shows.
            return result;
        }
        let (code, t) = match &result {
            Ok(v) => (status(v), touched(v)),
            Err(e) if !worth_recording(e) => return result,
            Err(e) => (e.status(), Touched::default()),
        };
        self.audit_alone(entry(&Who::of(ctx), action, code, t, detail))
            .await?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_domain::{ResourceId, Timestamp, VersionId};
    use haven_store::ChangeKind;

    fn patients(ty: &str, body: &str) -> Vec<String> {
        let mut t = Touched::default();
        t.patients_of_version(&StoredVersion {
            resource_type: ResourceType::parse(ty).unwrap(),
            id: ResourceId::parse("self").unwrap(),
            version: VersionId::FIRST,
            last_updated: Timestamp::from_micros(0),
            change: ChangeKind::Create,
            body: Some(bytes::Bytes::copy_from_slice(body.as_bytes())),
        });
        t.patients.sort();
        t.patients.dedup();
        t.patients
    }

    #[test]
    fn the_patients_of_a_body_are_found_with_or_without_the_shortcut() {
        // No reference: the patient itself only (the parse is skipped).
        assert_eq!(
            patients("Patient", r#"{"resourceType":"Patient","id":"self"}"#),
            ["self"]
        );
        assert!(!may_reference(br#"{"resourceType":"Patient","id":"self"}"#));
        // A linked patient is in the compartment too.
        let linked = r#"{"resourceType":"Patient","id":"self","link":[{"other":{"reference":"Patient/p2"},"type":"seealso"}]}"#;
        assert_eq!(patients("Patient", linked), ["p2", "self"]);
        // The key spelt with an escape is still a reference.
        let escaped = r#"{"resourceType":"Observation","id":"self","status":"final","code":{"text":"x"},"subject":{"\u0072eference":"Patient/p3"}}"#;
        assert!(may_reference(escaped.as_bytes()));
        assert_eq!(patients("Observation", escaped), ["p3"]);
        // A word "reference" in a value does not make a reference, but costs only a parse.
        let text = r#"{"resourceType":"Practitioner","id":"self","name":[{"text":"reference"}]}"#;
        assert!(patients("Practitioner", text).is_empty());
    }

    #[test]
    fn a_bundle_names_each_resource_and_its_patients() {
        let body = br#"{"resourceType":"Bundle","type":"searchset","entry":[
            {"fullUrl":"x","resource":{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"}}},
            {"resource":{"resourceType":"Observation","id":"o1","meta":{"versionId":"1"},"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"}}},
            {"resource":{"resourceType":"Patient","id":"p3","link":[{"other":{"reference":"Patient/p4"},"type":"seealso"}]}},
            {"resource":{"resourceType":"OperationOutcome","issue":[]}},
            {"request":{"method":"DELETE","url":"Patient/p5"}},
            "not an entry",
            {"resource":{"resourceType":"NoSuchType","id":"z"}}
        ]}"#;
        let mut t = Touched::default();
        t.bundle(body);
        let names: Vec<String> = t
            .entities
            .iter()
            .map(|e| format!("{}/{}/{:?}", e.resource_type, e.id, e.version))
            .collect();
        assert_eq!(
            names,
            [
                "Patient/p1/Some(2)",
                "Observation/o1/Some(1)",
                "Patient/p3/None"
            ]
        );
        t.patients.sort();
        assert_eq!(t.patients, ["p1", "p2", "p3", "p4"]);
        // Not a Bundle at all: nothing, and no panic.
        let mut t = Touched::default();
        t.bundle(b"{\"entry\":7}");
        t.bundle(b"not json");
        assert!(t.entities.is_empty() && t.patients.is_empty());
    }

    /// [`may_reference`] holds only while every Patient-compartment parameter is a reference
    /// parameter: those name a patient only through a `reference` key
    /// (`haven_fhir::search::IndexValue::Reference`). Bundle, whose entries embed resources, is
    /// not in the compartment.
    #[test]
    fn the_patient_compartment_is_reached_only_through_references() {
        let defs = definitions();
        let mut checked = 0;
        for &ty in defs.resource_types() {
            for code in defs.patient_compartment(ty) {
                if let Some(p) = defs.search_param(ty, code) {
                    assert_eq!(
                        p.param_type,
                        haven_fhir::search::ParamType::Reference,
                        "{ty}.{code}"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 50, "only {checked} compartment parameters found");
        assert!(
            defs.patient_compartment(ResourceType::parse("Bundle").unwrap())
                .is_empty()
        );
    }
}
