//! The audit trail's storage: append-only events written in the same unit of work as the data
//! they describe, and the hash chain and checkpoints that seal them (computed by the service
//! with `haven-audit`; the store only keeps bytes).
//!
//! Events are ordered for sealing by their writing transaction, then by id ([`AuditPos`]), the
//! same way history is ordered (see [`crate::HistoryPos`]): a store hands the sealer only events
//! below its visibility horizon, so an event that commits late is never passed over.

use haven_domain::Timestamp;

/// One audit record to store: its canonical bytes (`haven_audit::AuditRecord::canonical`),
/// when it happened, and the patients whose data it concerns (indexed for the accounting of
/// disclosures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub time: Timestamp,
    pub record: Vec<u8>,
    pub patients: Vec<String>,
}

impl AuditEntry {
    /// Each patient once (sorted): `audit_patient` is keyed by patient and event, so a name
    /// given twice would fail the insert, and with it every record of the batch it is in.
    #[must_use]
    pub fn distinct_patients(&self) -> Vec<&str> {
        let mut own: Vec<&str> = self.patients.iter().map(String::as_str).collect();
        own.sort_unstable();
        own.dedup();
        own
    }
}

/// Where an event sits in sealing order: writing transaction (0 on SQLite), then event id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditPos {
    pub tx: i64,
    pub id: i64,
}

/// An event that no chain link seals yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsealedEvent {
    pub pos: AuditPos,
    pub record: Vec<u8>,
}

/// A link of the chain: sequence number (gap-free from 1), the event it seals, its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub seq: i64,
    pub event_id: i64,
    pub hash: Vec<u8>,
}

/// The newest link, and the position of the event it sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub pos: AuditPos,
}

/// A signed checkpoint as stored (`haven_audit::Checkpoint` without interpretation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub time: Timestamp,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// A link as a verifier reads it: the record bytes are `None` when the event row is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedRecord {
    pub seq: i64,
    pub event_id: i64,
    pub record: Option<Vec<u8>>,
    pub hash: Vec<u8>,
}

/// An event found for a patient (accounting of disclosures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatientEvent {
    pub id: i64,
    pub time: Timestamp,
    pub record: Vec<u8>,
}
