//! Erasure of a patient (GDPR Art. 17) by crypto-shredding, and the legal hold that forbids it.
//!
//! One unit of work: refuse if a legal hold is recorded for the patient (409); tombstone the
//! Patient and every current resource of its compartment that is sealed under the patient's
//! data key (a resource sealed under another patient's key, e.g. an Observation *of* patient B
//! that names A as performer, stays: it is B's record); the tombstones remove their index rows;
//! destroy the patient's data key; record the erasure in the audit trail under a pseudonym
//! (HMAC of the id under a key Haven keeps wrapped), never the id. Nothing is half-done: the
//! unit commits whole or not at all, so an interrupted erasure is simply run again.
//!
//! After the commit every version the key sealed, current or historical, is ciphertext nobody
//! can open through Haven (reads answer 410, histories leave them out). Copies made before
//! (a backup, a database file) still hold the wrapped key; they stop opening once the KEK
//! versions that wrapped it are retired (`haven keys rotate` + `haven keys retire`, which
//! `haven patient erase` runs unless told to defer).

use haven_audit::{Actor, AuditRecord, Category, Entity};
use haven_domain::{ResourceId, ResourceType, Timestamp};
use haven_store::{
    AuditEntry, ChangeKind, Condition, Expect, NewVersion, SearchQuery, StoreError, WriteTx,
    run_write,
};

use crate::sealed::scope_of;
use crate::search::compartment_condition;
use crate::{FhirService, ServiceError};

/// The record kind of legal holds (`key = Patient/<id>`).
pub const HOLD_KIND: &str = "legal-hold";
/// The scope of the key pseudonyms in erasure records are made with.
const PSEUDONYM_SCOPE: &str = "mac/pseudonyms";
/// Most resources one erasure tombstones (one unit of work).
const MAX_ERASED: u32 = 100_000;

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureReport {
    /// The audit trail's name for the patient.
    pub pseudonym: String,
    /// Current resources tombstoned (the Patient included).
    pub tombstoned: usize,
    /// Compartment resources left alone because another patient's key seals them.
    pub kept: usize,
    /// Whether a data key was destroyed (false when the patient had none: erased before).
    pub key_destroyed: bool,
}

/// Who asks, for the audit record.
#[derive(Debug, Clone, Default)]
pub struct Requester {
    pub actor: Actor,
    pub source_ip: Option<String>,
    pub request_id: Option<String>,
}

fn record(
    req: &Requester,
    action: &str,
    status: u16,
    entities: Vec<Entity>,
    patients: Vec<String>,
    detail: String,
) -> Result<AuditEntry, StoreError> {
    let time = Timestamp::now();
    let mut r = AuditRecord::new(time, Category::Security, action, status)
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    r.actor = req.actor.clone();
    r.source_ip = req.source_ip.clone();
    r.request_id = req.request_id.clone();
    r.entities = entities;
    r.patients = patients;
    r.detail = Some(detail.chars().take(256).collect());
    r.normalize();
    Ok(AuditEntry {
        time,
        patients: r.patients.clone(),
        record: r.canonical(),
    })
}

fn clean_reason(reason: &str) -> Result<String, ServiceError> {
    let r = reason.trim();
    if !(10..=500).contains(&r.chars().count()) {
        return Err(ServiceError::BadRequest(
            "give a reason of 10 to 500 characters (it is kept in the audit trail)".into(),
        ));
    }
    Ok(r.chars().filter(|c| !c.is_control()).collect())
}

/// The lock that serializes a patient's legal hold with their erasure.
fn hold_lock(scope: &str) -> i64 {
    let d = haven_crypto::sha256(&[b"legal-hold\0", scope.as_bytes()]);
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

enum Refusal {
    Held,
}

impl FhirService {
    fn keys(&self) -> Result<&std::sync::Arc<haven_keys::DataKeys>, ServiceError> {
        self.keys.as_ref().ok_or_else(|| {
            ServiceError::Unprocessable(
                "erasure by key destruction needs encryption at rest, which is off in this process"
                    .into(),
            )
        })
    }

    /// Records (`on`) or lifts a legal hold on a patient; audited in the same unit.
    pub async fn legal_hold(
        &self,
        patient: &ResourceId,
        on: bool,
        reason: &str,
        req: Requester,
    ) -> Result<(), ServiceError> {
        let reason = clean_reason(reason)?;
        let key = format!("Patient/{}", patient.as_str());
        let body = serde_json::to_vec(&serde_json::json!({
            "reason": reason,
            "since": Timestamp::now().to_string(),
        }))
        .map_err(|_| ServiceError::Internal)?;
        let action = if on {
            "legal-hold-set"
        } else {
            "legal-hold-lift"
        };
        let entity = Entity {
            resource_type: "Patient".into(),
            id: patient.as_str().to_owned(),
            version: None,
        };
        let entry = record(
            &req,
            action,
            200,
            vec![entity],
            vec![patient.as_str().to_owned()],
            format!("reason={reason}"),
        )?;
        run_write(self.store.as_ref(), move |tx| {
            Box::pin(async move {
                tx.lock_criteria(hold_lock(&key)).await?;
                if on {
                    tx.record_put(HOLD_KIND, &key, body, None, Expect::Any)
                        .await?;
                } else {
                    tx.record_delete(HOLD_KIND, &key).await?;
                }
                tx.audit(entry).await?;
                Ok::<(), ServiceError>(())
            })
        })
        .await
    }

    /// Whether a legal hold is recorded for the patient.
    pub async fn has_legal_hold(&self, patient: &ResourceId) -> Result<bool, ServiceError> {
        Ok(self
            .store
            .record_get(HOLD_KIND, &format!("Patient/{}", patient.as_str()))
            .await?
            .is_some())
    }

    /// Erases a patient by destroying their data key (see the module docs). `Conflict` (409)
    /// under a legal hold.
    pub async fn erase_patient(
        &self,
        patient: &ResourceId,
        reason: &str,
        req: Requester,
    ) -> Result<ErasureReport, ServiceError> {
        let reason = clean_reason(reason)?;
        let keys = self.keys()?.clone();
        let defs = haven_fhir::definitions();
        let patient_type = ResourceType::parse("Patient").ok_or(ServiceError::Internal)?;
        let types: Vec<ResourceType> = defs
            .resource_types()
            .iter()
            .copied()
            .filter(|t| *t == patient_type || !defs.patient_compartment(*t).is_empty())
            .collect();
        let members: Vec<Condition> = types
            .iter()
            .filter_map(|t| compartment_condition(*t, patient))
            .collect();
        let query = SearchQuery {
            types,
            conditions: vec![Condition::Or(members)],
            sort: Vec::new(),
            cursor: None,
            limit: MAX_ERASED + 1,
            total: false,
            max_bytes: usize::MAX,
        };
        let scope = format!("Patient/{}", patient.as_str());
        let patient_id = patient.clone();
        let outcome = run_write(self.store.as_ref(), move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                // Serialize with legal holds on this patient (the hold may not exist yet, so
                // its row cannot be locked) ...
                tx.lock_criteria(hold_lock(&scope)).await?;
                if tx.record_get(HOLD_KIND, &scope).await?.is_some() {
                    return Ok(Err(Refusal::Held));
                }
                // ... and with writers of the patient's data: they hold the data key's record
                // until they commit, so once it is ours every write sealed under the key is
                // committed and the search below sees it; later writers wait, then find no key
                // and make a new one.
                tx.record_get(haven_keys::DEK_KIND, &scope).await?;
                let mac_key = keys.for_write(tx, PSEUDONYM_SCOPE).await?;
                let mac = haven_crypto::MacKey::from_bytes(mac_key.key.secret_bytes())
                    .map_err(StoreError::internal)?;
                let pseudonym = format!(
                    "erased-{}",
                    &hex::encode(mac.mac(&[b"Patient", patient_id.as_str().as_bytes()]))[..24]
                );
                let mut targets = tx.search_ids(&query).await?;
                if targets.len() > MAX_ERASED as usize {
                    return Err(StoreError::Internal(format!(
                        "more than {MAX_ERASED} resources in the compartment"
                    )));
                }
                if !targets.iter().any(|(t, i)| *t == patient_type && *i == patient_id) {
                    targets.push((patient_type, patient_id.clone()));
                }
                let now = Timestamp::now();
                let (mut tombstoned, mut kept) = (0usize, 0usize);
                for (ty, id) in targets {
                    let Some(cur) = tx.read_current(ty, &id).await? else {
                        continue;
                    };
                    let Some(body) = &cur.body else {
                        continue;
                    };
                    if scope_of(ty, &id, body) != scope {
                        kept += 1;
                        continue;
                    }
                    tx.append(NewVersion {
                        resource_type: ty,
                        id,
                        version: cur.version.next(),
                        last_updated: now,
                        change: ChangeKind::Delete,
                        body: None,
                        index: Vec::new(),
                    })
                    .await?;
                    tombstoned += 1;
                }
                let key_destroyed = keys.destroy(tx, &scope).await?;
                let entity = Entity {
                    resource_type: "Patient".into(),
                    id: pseudonym.clone(),
                    version: None,
                };
                tx.audit(record(
                    &req,
                    "patient-erase",
                    200,
                    vec![entity],
                    Vec::new(),
                    format!(
                        "tombstoned={tombstoned} kept={kept} key-destroyed={key_destroyed} reason={reason}"
                    ),
                )?)
                .await?;
                Ok::<_, StoreError>(Ok(ErasureReport {
                    pseudonym,
                    tombstoned,
                    kept,
                    key_destroyed,
                }))
            })
        })
        .await?;
        match outcome {
            Ok(report) => Ok(report),
            Err(Refusal::Held) => Err(ServiceError::Conflict(format!(
                "Patient/{} is under a legal hold: it cannot be erased until the hold is lifted \
                 (`haven patient hold --lift`)",
                patient.as_str()
            ))),
        }
    }
}

impl FhirService {
    /// `POST Patient/[id]/$erase` for a signed-in person: only the admin role may erase, and a
    /// refusal is itself recorded (a security event). The key-encryption key is not retired
    /// here (every replica must first re-wrap); the answer says to run `haven keys rotate` and
    /// `haven keys retire` so copies made before stop opening.
    pub async fn erase_patient_as(
        &self,
        principal: &haven_domain::Principal,
        patient: &str,
        reason: &str,
        request_id: Option<String>,
        source_ip: Option<String>,
    ) -> Result<ErasureReport, ServiceError> {
        let id = ResourceId::parse(patient)
            .map_err(|e| ServiceError::BadRequest(format!("not a patient id: {e}")))?;
        let req = Requester {
            actor: crate::audit::actor_of(principal),
            source_ip,
            request_id,
        };
        let allowed = principal.kind == haven_domain::PrincipalKind::User
            && principal.roles.contains(&haven_domain::Role::Admin);
        if !allowed {
            let entry = record(
                &req,
                "patient-erase",
                403,
                vec![Entity {
                    resource_type: "Patient".into(),
                    id: id.as_str().to_owned(),
                    version: None,
                }],
                vec![id.as_str().to_owned()],
                "refused: only a person with the admin role may erase".into(),
            )?;
            run_write(self.store.as_ref(), move |tx| {
                Box::pin(async move {
                    tx.audit(entry).await?;
                    Ok::<(), ServiceError>(())
                })
            })
            .await?;
            return Err(ServiceError::Forbidden(
                "only a person with the admin role may erase a patient".into(),
            ));
        }
        self.erase_patient(&id, reason, req).await
    }
}
