//! Storage traits: the narrow set of operations the service layer may ask of a database.
//!
//! The traits know FHIR only as opaque, versioned JSON documents keyed by (type, id, version);
//! they do not parse bodies, decide access or assign versions. Those are the service's job, so
//! both implementations (embedded SQLite and PostgreSQL) stay small and behave identically, which
//! the shared contract suite (`haven-store-tests`) checks.
//!
//! Writes are *units of work*: the service hands the store a closure that runs against a
//! [`WriteTx`]; the store runs it inside a transaction and acknowledges it only once it is
//! durable. Expressing writes this way lets a store group many requests' units into one durable
//! commit (group commit) without the service noticing, and makes "partly written" impossible to
//! express: a unit either commits whole or leaves no trace.

pub mod audit;
pub mod backup;
pub mod batch;
mod error;
mod history;
pub mod records;
pub mod search;
pub mod sql;
mod write;

pub use audit::{
    AuditEntry, AuditPos, ChainHead, ChainLink, LinkedRecord, PatientEvent, StoredCheckpoint,
    UnsealedEvent,
};
pub use error::StoreError;
pub use history::{
    HistoryCursor, HistoryEntry, HistoryPage, HistoryPos, HistoryQuery, HistoryScope, Period,
};
pub use records::{Expect, StoredRecord};
pub use search::{
    Col, Condition, Found, IndexCell, IndexRow, ParamKey, Pred, Related, Scalar, SearchCursor,
    SearchPage, SearchQuery, SortSpec, SortValue, Table,
};
pub use write::{ErasedOutcome, ErasedWriteFn, WriteFuture, WriteTx, run_write};

use async_trait::async_trait;
use bytes::Bytes;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};

/// How a version came to be; shown as `Bundle.entry.request.method` in history.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChangeKind {
    Create,
    Update,
    Patch,
    Delete,
}

impl ChangeKind {
    #[must_use]
    pub fn code(self) -> i64 {
        match self {
            ChangeKind::Create => 0,
            ChangeKind::Update => 1,
            ChangeKind::Patch => 2,
            ChangeKind::Delete => 3,
        }
    }

    pub fn from_code(code: i64) -> Result<Self, StoreError> {
        Ok(match code {
            0 => ChangeKind::Create,
            1 => ChangeKind::Update,
            2 => ChangeKind::Patch,
            3 => ChangeKind::Delete,
            other => return Err(StoreError::Corrupt(format!("unknown change kind {other}"))),
        })
    }

    /// The HTTP method that produces this kind of change.
    #[must_use]
    pub fn method(self) -> &'static str {
        match self {
            ChangeKind::Create => "POST",
            ChangeKind::Update => "PUT",
            ChangeKind::Patch => "PATCH",
            ChangeKind::Delete => "DELETE",
        }
    }
}

/// One stored version of a resource. `body` is `None` exactly for deletions.
#[derive(Clone, Debug)]
pub struct StoredVersion {
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub version: VersionId,
    pub last_updated: Timestamp,
    pub change: ChangeKind,
    /// The resource as stored: compact JSON with `meta.versionId` and `meta.lastUpdated` set.
    pub body: Option<Bytes>,
}

impl StoredVersion {
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.change == ChangeKind::Delete
    }
}

/// The head of a resource's history, without its body: enough to check preconditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentState {
    pub version: VersionId,
    pub last_updated: Timestamp,
    pub deleted: bool,
}

/// A version to append. The store refuses it with [`StoreError::VersionConflict`] unless
/// `version` is exactly one more than the current version (or 1 for a new resource).
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub version: VersionId,
    pub last_updated: Timestamp,
    pub change: ChangeKind,
    pub body: Option<Bytes>,
    /// The search index rows of this version, replacing the previous version's (ignored for
    /// a deletion, which removes them).
    pub index: Vec<IndexRow>,
}

/// Read access and units of work against one database.
#[async_trait]
pub trait ResourceStore: Send + Sync + 'static {
    /// The current version of a resource (including a deletion marker), if it ever existed.
    async fn read_current(
        &self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError>;

    /// One specific version.
    async fn read_version(
        &self,
        ty: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError>;

    /// A page of history, newest first.
    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError>;

    /// A page of current resources matching a query (see [`search`]).
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError>;

    /// Resources related to others through reference index rows (`_include`,
    /// `_revinclude`), at most `limit` of them.
    async fn related(&self, related: &Related, limit: u32) -> Result<Vec<Found>, StoreError>;

    /// Current resources in `rid` order after `after_rid`, at most `limit`, for re-indexing.
    async fn scan(&self, after_rid: i64, limit: u32) -> Result<Vec<Found>, StoreError>;

    /// A maintenance setting (`store_meta`), e.g. which search definitions the index was
    /// built with. Written with [`WriteTx::set_meta`].
    async fn meta(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// Runs a unit of work in one transaction and returns once it is durable (or rolled back).
    /// Use the typed wrapper [`run_write`] rather than calling this directly.
    async fn write_erased(&self, work: ErasedWriteFn) -> Result<ErasedOutcome, StoreError>;

    /// Stores one audit record outside any unit of work (a read's record) and returns once it
    /// is durable. Concurrent callers' records share commits: on SQLite the writer adds them to
    /// the group commit it is building, on PostgreSQL a batcher writes each batch in one statement.
    /// Nothing is acknowledged before its commit; an error means the record may not be stored,
    /// and the data it describes must not be served.
    async fn record_audit(&self, entry: AuditEntry) -> Result<(), StoreError>;

    /// Chain links in seq order after `after_seq`, at most `limit`, each with its event's
    /// record (for verification).
    async fn audit_links(
        &self,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<LinkedRecord>, StoreError>;

    /// Every stored checkpoint, in seq order.
    async fn audit_checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError>;

    /// Events that no link seals and that were recorded before `before` (a verifier's
    /// question: the sealer should have reached them).
    async fn audit_unsealed_before(&self, before: Timestamp) -> Result<u64, StoreError>;

    /// Events concerning `patient` recorded in `[since, until)`, oldest first, after event id
    /// `after_id`, at most `limit` (the accounting of disclosures).
    async fn audit_for_patient(
        &self,
        patient: &str,
        since: Timestamp,
        until: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PatientEvent>, StoreError>;

    /// One audit event by id (the AuditEvent view).
    async fn audit_event(&self, id: i64) -> Result<Option<PatientEvent>, StoreError>;

    /// Events recorded in `[since, until)` after event id `after_id`, in id order, at most
    /// `limit` (the AuditEvent view's search).
    async fn audit_events(
        &self,
        since: Timestamp,
        until: Timestamp,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<PatientEvent>, StoreError>;

    /// A record (see [`records`]), without locking it.
    async fn record_get(&self, kind: &str, key: &str) -> Result<Option<StoredRecord>, StoreError>;

    /// Records of one kind in key order after `after` (exclusive), at most `limit`.
    async fn record_list(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, StoredRecord)>, StoreError>;

    /// Reads every table a backup holds in one consistent snapshot, taken while the store keeps
    /// serving (see [`backup`]), and hands the rows to `sink`.
    async fn backup(&self, sink: &mut dyn backup::BackupSink) -> Result<(), StoreError>;

    /// Cheap liveness check of the database, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stops accepting work, finishes what was accepted and closes connections.
    async fn close(&self);
}
