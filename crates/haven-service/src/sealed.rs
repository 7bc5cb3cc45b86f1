//! Encryption at rest: a [`ResourceStore`] that seals every resource body on its way into the
//! store and opens it on its way out, so nothing above it sees ciphertext and nothing below it
//! sees a clinical payload.
//!
//! Each version is sealed with AES-256-GCM under the data key (DEK) of its *scope*: the patient
//! whose compartment it is in (`Patient/<id>`: the Patient itself, or the first Patient its R4
//! compartment parameters reference), or its resource type (`type/<Type>`) for data outside
//! any patient compartment. The stored body is
//!
//! ```text
//! "\0HV1" | scope length (1 byte) | scope | DEK id (8 bytes) | nonce | ciphertext | tag
//! ```
//!
//! The associated data binds the ciphertext to the resource type, id, version, scope and DEK
//! id: a body copied into another row, another version or another patient's scope does not
//! open. A body whose DEK was destroyed (an erased patient) reads as [`StoreError::Erased`]:
//! `410 Gone` for a read, left out of history pages.
//!
//! This wrapper sits in the service because choosing the scope needs the FHIR compartment
//! definitions; the stores stay ignorant of both FHIR and cryptography. Backups pass through
//! untouched: they hold ciphertext, wrapped DEKs, and no key-encryption key.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};
use haven_keys::{DEK_ID_LEN, DataKeys, Dek};
use haven_store::{
    AuditEntry, AuditPos, ChainHead, ChainLink, CurrentState, ErasedOutcome, ErasedWriteFn, Expect,
    Found, HistoryPage, HistoryQuery, IndexCell, IndexRow, LinkedRecord, NewVersion, PatientEvent,
    Related, ResourceStore, SearchPage, SearchQuery, StoreError, StoredCheckpoint, StoredRecord,
    StoredVersion, UnsealedEvent, WriteTx, backup::BackupSink,
};
use serde_json::Value;

use crate::pseudonym::{IDENTIFIER_SCOPE, Pseudonymizer};

const MAGIC: &[u8; 4] = b"\0HV1";

/// The key scope of a resource version: its patient, or its type.
#[must_use]
pub fn scope_of(ty: ResourceType, id: &ResourceId, body: &[u8]) -> String {
    if ty.as_str() == "Patient" {
        return format!("Patient/{}", id.as_str());
    }
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
        let mut patients = Vec::new();
        crate::audit::patients_of(ty, &m, &mut patients);
        if let Some(p) = patients.first() {
            return format!("Patient/{p}");
        }
    }
    format!("type/{}", ty.as_str())
}

/// The same scope as [`scope_of`], read from the version's index rows instead of parsing its
/// body again (the index holds every compartment reference, extracted the same way): on the
/// embedded store this runs inside the single writer, where each microsecond is everyone's.
#[must_use]
pub fn scope_from_index(ty: ResourceType, id: &ResourceId, rows: &[IndexRow]) -> String {
    if ty.as_str() == "Patient" {
        return format!("Patient/{}", id.as_str());
    }
    for code in haven_fhir::definitions().patient_compartment(ty) {
        let key = crate::search::index::param_key(ty, code);
        for r in rows {
            if r.param == key
                && let IndexCell::Reference {
                    target_type: Some(t),
                    target_id: Some(p),
                    ..
                } = &r.cell
                && t == "Patient"
            {
                return format!("Patient/{p}");
            }
        }
    }
    format!("type/{}", ty.as_str())
}

fn aad(ty: ResourceType, id: &ResourceId, version: VersionId, scope: &str, dek: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(64);
    a.extend_from_slice(b"haven-body-v1\0");
    a.extend_from_slice(ty.as_str().as_bytes());
    a.push(0);
    a.extend_from_slice(id.as_str().as_bytes());
    a.push(0);
    a.extend_from_slice(&version.get().to_be_bytes());
    a.extend_from_slice(scope.as_bytes());
    a.push(0);
    a.extend_from_slice(dek);
    a
}

/// Whether stored bytes are a sealed body (as opposed to JSON).
#[must_use]
pub fn is_sealed(body: &[u8]) -> bool {
    body.starts_with(MAGIC)
}

/// The scope and DEK id a sealed body names (for `haven keys`, backups and tests).
pub fn sealed_header(body: &[u8]) -> Result<(String, [u8; DEK_ID_LEN], &[u8]), StoreError> {
    let bad = || StoreError::Corrupt("a stored body is not a sealed Haven body".into());
    let rest = body.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
    let (&len, rest) = rest.split_first().ok_or_else(bad)?;
    let len = usize::from(len);
    if rest.len() < len + DEK_ID_LEN {
        return Err(bad());
    }
    let scope = std::str::from_utf8(&rest[..len])
        .map_err(|_| bad())?
        .to_owned();
    let mut id = [0u8; DEK_ID_LEN];
    id.copy_from_slice(&rest[len..len + DEK_ID_LEN]);
    Ok((scope, id, &rest[len + DEK_ID_LEN..]))
}

fn seal(v: &NewVersion, scope: &str, dek: &Dek, body: &[u8]) -> Result<Bytes, StoreError> {
    let scope_len = u8::try_from(scope.len())
        .map_err(|_| StoreError::Internal(format!("key scope too long: {scope}")))?;
    let sealed = dek
        .key
        .seal(
            &aad(v.resource_type, &v.id, v.version, scope, &dek.id),
            body,
        )
        .map_err(StoreError::internal)?;
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + scope.len() + DEK_ID_LEN + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(scope_len);
    out.extend_from_slice(scope.as_bytes());
    out.extend_from_slice(&dek.id);
    out.extend_from_slice(&sealed);
    Ok(Bytes::from(out))
}

fn open(v: &StoredVersion, scope: &str, dek: &Dek, sealed: &[u8]) -> Result<Bytes, StoreError> {
    dek.key
        .open(&aad(v.resource_type, &v.id, v.version, scope, &dek.id), sealed)
        .map(Bytes::from)
        .map_err(|_| {
            StoreError::Corrupt(format!(
                "the stored body of {}/{} version {} does not open under its key: it was altered or moved",
                v.resource_type.as_str(),
                v.id.as_str(),
                v.version.get()
            ))
        })
}

fn plaintext_refused(v: &StoredVersion) -> StoreError {
    StoreError::Corrupt(format!(
        "{}/{} version {} is stored unencrypted while encryption is on",
        v.resource_type.as_str(),
        v.id.as_str(),
        v.version.get()
    ))
}

/// A store whose resource bodies are sealed at rest.
pub struct SealedStore {
    inner: Arc<dyn ResourceStore>,
    keys: Arc<DataKeys>,
    pseudonyms: Option<Arc<Pseudonymizer>>,
}

fn pseudonymized(p: Option<&Pseudonymizer>, query: &SearchQuery) -> Option<SearchQuery> {
    let p = p?;
    let mut q = query.clone();
    for c in &mut q.conditions {
        p.condition(c);
    }
    Some(q)
}

impl SealedStore {
    #[must_use]
    pub fn new(inner: Arc<dyn ResourceStore>, keys: Arc<DataKeys>) -> Self {
        Self {
            inner,
            keys,
            pseudonyms: None,
        }
    }

    /// Also stores the values of `systems` in the search index as keyed hashes (see
    /// [`crate::pseudonym`]); creates the MAC key on first use.
    pub async fn with_sensitive_systems(
        mut self,
        systems: Vec<String>,
    ) -> Result<Self, StoreError> {
        if systems.is_empty() {
            return Ok(self);
        }
        let keys = self.keys.clone();
        let dek = haven_store::run_write(self.inner.as_ref(), move |tx| {
            Box::pin(async move { keys.for_write(tx, IDENTIFIER_SCOPE).await })
        })
        .await?;
        let mac = haven_crypto::MacKey::from_bytes(dek.key.secret_bytes())
            .map_err(StoreError::internal)?;
        self.pseudonyms = Some(Arc::new(Pseudonymizer::new(mac, systems)));
        Ok(self)
    }

    #[must_use]
    pub fn keys(&self) -> &Arc<DataKeys> {
        &self.keys
    }

    async fn unseal(&self, mut v: StoredVersion) -> Result<StoredVersion, StoreError> {
        let Some(body) = &v.body else {
            return Ok(v);
        };
        if !is_sealed(body) {
            return Err(plaintext_refused(&v));
        }
        let (scope, id, sealed) = sealed_header(body)?;
        let dek = self.keys.for_read(self.inner.as_ref(), &scope, &id).await?;
        let plain = open(&v, &scope, &dek, sealed)?;
        v.body = Some(plain);
        Ok(v)
    }

    async fn unseal_found(&self, found: Vec<Found>) -> Result<Vec<Found>, StoreError> {
        let mut out = Vec::with_capacity(found.len());
        for mut f in found {
            f.version = self.unseal(f.version).await?;
            out.push(f);
        }
        Ok(out)
    }
}

/// The transaction of a sealed store's unit of work.
struct SealingTx<'t> {
    inner: &'t mut dyn WriteTx,
    keys: Arc<DataKeys>,
    pseudonyms: Option<Arc<Pseudonymizer>>,
}

impl SealingTx<'_> {
    async fn unseal(&mut self, mut v: StoredVersion) -> Result<StoredVersion, StoreError> {
        let Some(body) = &v.body else {
            return Ok(v);
        };
        if !is_sealed(body) {
            return Err(plaintext_refused(&v));
        }
        let (scope, id, sealed) = sealed_header(body)?;
        // Inside the unit: its own, not yet committed, key records are visible here.
        let dek = self.keys.for_read_in(self.inner, &scope, &id).await?;
        let plain = open(&v, &scope, &dek, sealed)?;
        v.body = Some(plain);
        Ok(v)
    }
}

#[async_trait]
impl WriteTx for SealingTx<'_> {
    async fn current(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<CurrentState>, StoreError> {
        self.inner.current(ty, id).await
    }

    async fn read_current(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        match self.inner.read_current(ty, id).await? {
            Some(v) => Ok(Some(self.unseal(v).await?)),
            None => Ok(None),
        }
    }

    async fn read_version(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        match self.inner.read_version(ty, id, version).await? {
            Some(v) => Ok(Some(self.unseal(v).await?)),
            None => Ok(None),
        }
    }

    async fn append(&mut self, mut version: NewVersion) -> Result<(), StoreError> {
        if let Some(p) = &self.pseudonyms {
            p.rows(&mut version.index);
        }
        if let Some(body) = version.body.take() {
            let scope = scope_from_index(version.resource_type, &version.id, &version.index);
            let dek = self.keys.for_write(self.inner, &scope).await?;
            version.body = Some(seal(&version, &scope, &dek, &body)?);
        }
        self.inner.append(version).await
    }

    async fn search_ids(
        &mut self,
        query: &SearchQuery,
    ) -> Result<Vec<(ResourceType, ResourceId)>, StoreError> {
        match pseudonymized(self.pseudonyms.as_deref(), query) {
            Some(q) => self.inner.search_ids(&q).await,
            None => self.inner.search_ids(query).await,
        }
    }

    async fn lock_criteria(&mut self, key: i64) -> Result<(), StoreError> {
        self.inner.lock_criteria(key).await
    }

    async fn set_meta(&mut self, name: &str, value: Option<&str>) -> Result<(), StoreError> {
        self.inner.set_meta(name, value).await
    }

    async fn replace_index(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        mut rows: Vec<IndexRow>,
    ) -> Result<bool, StoreError> {
        if let Some(p) = &self.pseudonyms {
            p.rows(&mut rows);
        }
        self.inner.replace_index(ty, id, rows).await
    }

    async fn audit_many(&mut self, entries: Vec<AuditEntry>) -> Result<(), StoreError> {
        self.inner.audit_many(entries).await
    }

    async fn audit_head(&mut self) -> Result<Option<ChainHead>, StoreError> {
        self.inner.audit_head().await
    }

    async fn unsealed_audit(
        &mut self,
        after: Option<AuditPos>,
        limit: u32,
    ) -> Result<Vec<UnsealedEvent>, StoreError> {
        self.inner.unsealed_audit(after, limit).await
    }

    async fn seal_audit(&mut self, links: Vec<ChainLink>) -> Result<(), StoreError> {
        self.inner.seal_audit(links).await
    }

    async fn audit_checkpoint(&mut self, checkpoint: StoredCheckpoint) -> Result<(), StoreError> {
        self.inner.audit_checkpoint(checkpoint).await
    }

    async fn record_get(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        self.inner.record_get(kind, key).await
    }

    async fn record_hold(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        self.inner.record_hold(kind, key).await
    }

    async fn record_put(
        &mut self,
        kind: &str,
        key: &str,
        body: Vec<u8>,
        expires: Option<Timestamp>,
        expect: Expect,
    ) -> Result<i64, StoreError> {
        self.inner
            .record_put(kind, key, body, expires, expect)
            .await
    }

    async fn record_delete(&mut self, kind: &str, key: &str) -> Result<bool, StoreError> {
        self.inner.record_delete(kind, key).await
    }

    async fn record_purge_expired(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.inner.record_purge_expired(now, limit).await
    }

    async fn audit_last_checkpoint(&mut self) -> Result<Option<(i64, Timestamp)>, StoreError> {
        self.inner.audit_last_checkpoint().await
    }
}

#[async_trait]
impl ResourceStore for SealedStore {
    async fn read_current(
        &self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        match self.inner.read_current(ty, id).await? {
            Some(v) => Ok(Some(self.unseal(v).await?)),
            None => Ok(None),
        }
    }

    async fn read_version(
        &self,
        ty: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError> {
        match self.inner.read_version(ty, id, version).await? {
            Some(v) => Ok(Some(self.unseal(v).await?)),
            None => Ok(None),
        }
    }

    /// Versions of erased patients are left out: they no longer exist for anyone.
    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let mut page = self.inner.history(query).await?;
        let mut kept = Vec::with_capacity(page.entries.len());
        for mut e in std::mem::take(&mut page.entries) {
            match self.unseal(e.version).await {
                Ok(v) => {
                    e.version = v;
                    kept.push(e);
                }
                Err(StoreError::Erased(_)) => {}
                Err(err) => return Err(err),
            }
        }
        page.entries = kept;
        Ok(page)
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let mut page = match pseudonymized(self.pseudonyms.as_deref(), query) {
            Some(q) => self.inner.search(&q).await?,
            None => self.inner.search(query).await?,
        };
        page.matches = self.unseal_found(std::mem::take(&mut page.matches)).await?;
        Ok(page)
    }

    async fn related(&self, related: &Related, limit: u32) -> Result<Vec<Found>, StoreError> {
        let found = self.inner.related(related, limit).await?;
        self.unseal_found(found).await
    }

    async fn scan(&self, after_rid: i64, limit: u32) -> Result<Vec<Found>, StoreError> {
        let found = self.inner.scan(after_rid, limit).await?;
        self.unseal_found(found).await
    }

    async fn meta(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.meta(name).await
    }

    async fn write_erased(&self, work: ErasedWriteFn) -> Result<ErasedOutcome, StoreError> {
        let keys = self.keys.clone();
        let pseudonyms = self.pseudonyms.clone();
        let wrapped: ErasedWriteFn = Box::new(move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                let mut sealing = SealingTx {
                    inner: tx,
                    keys,
                    pseudonyms,
                };
                work(&mut sealing).await
            })
        });
        self.inner.write_erased(wrapped).await
    }

    async fn record_audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.inner.record_audit(entry).await
    }

    async fn audit_links(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<LinkedRecord>, StoreError> {
        self.inner.audit_links(after_seq, limit).await
    }

    async fn audit_checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        self.inner.audit_checkpoints().await
    }

    async fn audit_unsealed_before(&self, before: Timestamp) -> Result<u64, StoreError> {
        self.inner.audit_unsealed_before(before).await
    }

    async fn audit_for_patient(
        &self,
        patient: &str,
        since: Timestamp,
        until: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PatientEvent>, StoreError> {
        self.inner
            .audit_for_patient(patient, since, until, after_id, limit)
            .await
    }

    async fn audit_event(&self, id: i64) -> Result<Option<PatientEvent>, StoreError> {
        self.inner.audit_event(id).await
    }

    async fn audit_events(
        &self,
        since: Timestamp,
        until: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PatientEvent>, StoreError> {
        self.inner.audit_events(since, until, after_id, limit).await
    }

    async fn record_get(&self, kind: &str, key: &str) -> Result<Option<StoredRecord>, StoreError> {
        self.inner.record_get(kind, key).await
    }

    async fn record_list(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, StoredRecord)>, StoreError> {
        self.inner.record_list(kind, after, limit).await
    }

    /// Backups hold what is stored: ciphertext and wrapped keys.
    async fn backup(&self, sink: &mut dyn BackupSink) -> Result<(), StoreError> {
        self.inner.backup(sink).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap()
    }

    fn ty(s: &str) -> ResourceType {
        ResourceType::parse(s).unwrap()
    }

    #[test]
    fn scopes_follow_the_patient_compartment() {
        assert_eq!(scope_of(ty("Patient"), &rid("p1"), b"{}"), "Patient/p1");
        let obs = br#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}"#;
        assert_eq!(scope_of(ty("Observation"), &rid("o1"), obs), "Patient/p2");
        let org = br#"{"resourceType":"Organization","name":"x"}"#;
        assert_eq!(
            scope_of(ty("Organization"), &rid("g1"), org),
            "type/Organization"
        );
        let group = br#"{"resourceType":"Observation","subject":{"reference":"Group/g"}}"#;
        assert_eq!(
            scope_of(ty("Observation"), &rid("o2"), group),
            "type/Observation"
        );
    }

    #[test]
    fn the_index_gives_the_body_scope() {
        for (t, body) in [
            (
                "Observation",
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"},"performer":[{"reference":"Patient/p3"}]}"#,
            ),
            (
                "Observation",
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"performer":[{"reference":"Patient/p3"}]}"#,
            ),
            (
                "Encounter",
                r#"{"resourceType":"Encounter","status":"planned","class":{"code":"AMB"},"subject":{"reference":"Patient/p9"}}"#,
            ),
            (
                "Organization",
                r#"{"resourceType":"Organization","name":"x"}"#,
            ),
            (
                "Observation",
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Group/g"}}"#,
            ),
        ] {
            let ty = ty(t);
            let m: serde_json::Map<String, Value> = serde_json::from_str(body).unwrap();
            let rows = crate::search::index::index_rows(ty, &m);
            assert_eq!(
                scope_from_index(ty, &rid("r"), &rows),
                scope_of(ty, &rid("r"), body.as_bytes()),
                "{body}"
            );
        }
    }

    #[test]
    fn headers_are_parsed_and_bounded() {
        assert!(sealed_header(b"{\"a\":1}").is_err());
        assert!(sealed_header(b"\0HV1\x05ab").is_err());
        let mut b = b"\0HV1\x09Patient/1".to_vec();
        b.extend_from_slice(&[7u8; 8]);
        b.extend_from_slice(b"rest");
        let (scope, id, rest) = sealed_header(&b).unwrap();
        assert_eq!(
            (scope.as_str(), id, rest),
            ("Patient/1", [7u8; 8], &b"rest"[..])
        );
    }
}
