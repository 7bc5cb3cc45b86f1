//! Units of work: closures that run against a [`WriteTx`] inside one transaction.

use std::any::Any;

use async_trait::async_trait;
use futures::future::BoxFuture;
use haven_domain::{ResourceId, ResourceType, Timestamp, VersionId};

use crate::{
    AuditEntry, AuditPos, ChainHead, ChainLink, CurrentState, IndexRow, NewVersion, ResourceStore,
    SearchQuery, StoreError, StoredCheckpoint, StoredVersion, UnsealedEvent,
    records::{Expect, StoredRecord},
};

/// Operations available inside a write transaction. Reads here see the unit's own writes.
#[async_trait]
pub trait WriteTx: Send {
    /// The head of a resource. It stays locked against other writers until the unit ends, so a
    /// check made on it (e.g. `If-Match`) still holds when the unit appends.
    async fn current(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<CurrentState>, StoreError>;

    /// The current version with its body, locked like [`WriteTx::current`].
    async fn read_current(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
    ) -> Result<Option<StoredVersion>, StoreError>;

    async fn read_version(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        version: VersionId,
    ) -> Result<Option<StoredVersion>, StoreError>;

    /// Appends a version. Fails with [`StoreError::VersionConflict`] unless `version` directly
    /// follows the current one.
    async fn append(&mut self, version: NewVersion) -> Result<(), StoreError>;

    /// The (type, id) of current resources matching `query` (sort, cursor and total are
    /// ignored; at most `query.limit`), as this transaction sees them. Conditional
    /// interactions decide on this, after [`WriteTx::lock_criteria`].
    async fn search_ids(
        &mut self,
        query: &SearchQuery,
    ) -> Result<Vec<(ResourceType, ResourceId)>, StoreError>;

    /// Serializes units that decide on the same search criteria (two conditional creates
    /// with the same `If-None-Exist` must not both create): held until the unit ends.
    /// `key` is a hash of the criteria.
    async fn lock_criteria(&mut self, key: i64) -> Result<(), StoreError>;

    /// Sets a maintenance setting (see [`crate::ResourceStore::meta`]); `None` removes it.
    async fn set_meta(&mut self, name: &str, value: Option<&str>) -> Result<(), StoreError>;

    /// Replaces the index rows of a current resource without a new version (re-indexing
    /// after a change of search definitions). Returns false if the resource is gone.
    async fn replace_index(
        &mut self,
        ty: ResourceType,
        id: &ResourceId,
        rows: Vec<IndexRow>,
    ) -> Result<bool, StoreError>;

    /// Records an audit event in this unit: it commits, or rolls back, with the data.
    async fn audit(&mut self, entry: AuditEntry) -> Result<(), StoreError> {
        self.audit_many(vec![entry]).await
    }

    /// Records many audit events in a few multi-row statements (the records of concurrent
    /// reads, collected into one unit of work).
    async fn audit_many(&mut self, entries: Vec<AuditEntry>) -> Result<(), StoreError>;

    /// The newest chain link. Call [`WriteTx::lock_criteria`] with the sealer's key first, so
    /// one sealer at a time extends the chain.
    async fn audit_head(&mut self) -> Result<Option<ChainHead>, StoreError>;

    /// Committed events after `after` in sealing order, at most `limit`, that no later commit
    /// can precede (below the store's visibility horizon).
    async fn unsealed_audit(
        &mut self,
        after: Option<AuditPos>,
        limit: u32,
    ) -> Result<Vec<UnsealedEvent>, StoreError>;

    /// Appends chain links (seq must continue the chain; the store refuses a duplicate seq or a
    /// second link for one event).
    async fn seal_audit(&mut self, links: Vec<ChainLink>) -> Result<(), StoreError>;

    /// Stores a signed checkpoint.
    async fn audit_checkpoint(&mut self, checkpoint: StoredCheckpoint) -> Result<(), StoreError>;

    /// A record (see [`crate::records`]), locked against other writers until the unit ends
    /// (PostgreSQL `FOR UPDATE`; SQLite has one writer), so a decision made on it still holds
    /// when the unit writes.
    async fn record_get(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<StoredRecord>, StoreError>;

    /// A record, kept from being changed or deleted until the unit ends, while other units
    /// may hold it at the same time (PostgreSQL: a shared advisory lock on the record's name,
    /// queued fairly behind a waiting [`WriteTx::record_get`], then `FOR SHARE`). For a record that every writer
    /// of some data reads and only rare units change, like a data key: writers do not wait for
    /// each other, and a unit that takes it with [`WriteTx::record_get`] waits until every
    /// holder has committed. The default takes the writer's lock, which is right for a store
    /// whose units run one at a time (SQLite). A unit that holds a record must not then take,
    /// write or delete the same record: two such units would each wait for the other's hold.
    async fn record_hold(
        &mut self,
        kind: &str,
        key: &str,
    ) -> Result<Option<StoredRecord>, StoreError> {
        self.record_get(kind, key).await
    }

    /// Writes a record if what is stored matches `expect`; returns the new version.
    /// A mismatch is [`StoreError::VersionConflict`] (the unit may retry or give up).
    async fn record_put(
        &mut self,
        kind: &str,
        key: &str,
        body: Vec<u8>,
        expires: Option<Timestamp>,
        expect: Expect,
    ) -> Result<i64, StoreError>;

    /// Deletes a record; true if one was there. Consuming a single-use record is a delete
    /// whose result decides: of two units deleting the same key, one sees true.
    async fn record_delete(&mut self, kind: &str, key: &str) -> Result<bool, StoreError>;

    /// Deletes up to `limit` records of any kind whose expiry is at or before `now`; returns
    /// how many went.
    async fn record_purge_expired(&mut self, now: Timestamp, limit: u32)
    -> Result<u64, StoreError>;

    /// The newest checkpoint's (seq, time), as the sealer decides whether one is due (read
    /// under its lock: another replica may have signed one since).
    async fn audit_last_checkpoint(&mut self) -> Result<Option<(i64, Timestamp)>, StoreError>;
}

/// The future a unit of work returns; it borrows the transaction for its whole run.
pub type WriteFuture<'t, T> = BoxFuture<'t, T>;

/// A unit of work with its result types erased, so `ResourceStore` stays object-safe.
pub type ErasedWriteFn = Box<
    dyn for<'t> FnOnce(
            &'t mut dyn WriteTx,
        ) -> WriteFuture<'t, Result<Box<dyn Any + Send>, Box<dyn Any + Send>>>
        + Send,
>;

/// `Ok` when the unit succeeded and was committed, `Err` when it returned its own error and was
/// rolled back. Store-level failures are the outer `Result`.
pub type ErasedOutcome = Result<Box<dyn Any + Send>, Box<dyn Any + Send>>;

/// Runs a typed unit of work. `T` is returned only after the commit is durable; `E` is the
/// unit's own error (the transaction is rolled back), and store failures become `E` through
/// `From<StoreError>`.
pub async fn run_write<T, E, F>(store: &dyn ResourceStore, work: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: for<'t> FnOnce(&'t mut dyn WriteTx) -> WriteFuture<'t, Result<T, E>> + Send + 'static,
{
    let erased: ErasedWriteFn = Box::new(move |tx| {
        Box::pin(async move {
            match work(tx).await {
                Ok(v) => Ok(Box::new(v) as Box<dyn Any + Send>),
                Err(e) => Err(Box::new(e) as Box<dyn Any + Send>),
            }
        })
    });
    match store.write_erased(erased).await {
        Ok(Ok(v)) => Ok(*v.downcast::<T>().map_err(|_| {
            StoreError::Internal("unit of work returned an unexpected type".into())
        })?),
        Ok(Err(e)) => Err(*e.downcast::<E>().map_err(|_| {
            StoreError::Internal("unit of work failed with an unexpected type".into())
        })?),
        Err(store_err) => Err(E::from(store_err)),
    }
}
