//! Data keys (DEKs): one per patient compartment (`Patient/<id>`), one per resource type for
//! data outside any compartment (`type/<Type>`), and a few for Haven's own use (`mac/...`).
//!
//! A DEK is stored only wrapped, as a record (`kind = "dek"`, `key = <scope>`) in the same
//! database as the data it seals, so a unit of work that writes a patient's first resource also
//! creates the patient's key, atomically. Each DEK has a random 8-byte id that every body it
//! seals names: erasing a patient deletes the record, and a later key for the same scope has
//! another id, so old ciphertexts never open again (see [`crate`] for what that protects
//! against, and what it does not).
//!
//! Unwrapped keys are cached for `ttl`: a running replica keeps serving what it has cached while
//! the provider is down for at most that long, and learns of an erasure by another replica
//! within it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_crypto::AeadKey;
use haven_store::{Expect, ResourceStore, StoreError, WriteTx};
use serde::{Deserialize, Serialize};

use crate::provider::{KeyError, KeyProvider, wrapped_version};

/// The record kind DEKs are stored under.
pub const DEK_KIND: &str = "dek";
/// Length of a DEK id.
pub const DEK_ID_LEN: usize = 8;
/// At most this many unwrapped keys are cached; past it the cache starts over.
const MAX_CACHED: usize = 50_000;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DekRecord {
    id: String,
    wrapped: String,
    created: String,
}

/// An unwrapped data key with its id.
#[derive(Debug)]
pub struct Dek {
    pub id: [u8; DEK_ID_LEN],
    pub key: AeadKey,
}

/// Progress of one re-wrapping pass (`haven keys status`, the background re-wrapper).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapStep {
    pub examined: u64,
    pub rewrapped: u64,
    /// Where the next step starts; `None` when the pass is complete.
    pub next: Option<String>,
}

/// DEKs: created on first use, cached unwrapped, destroyed on erasure.
pub struct DataKeys {
    provider: Arc<dyn KeyProvider>,
    cache: Mutex<HashMap<String, (Arc<Dek>, Instant)>>,
    ttl: Duration,
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKeys({})", self.provider.describe())
    }
}

fn context(scope: &str, id: &[u8; DEK_ID_LEN]) -> Vec<u8> {
    let mut c = scope.as_bytes().to_vec();
    c.push(0);
    c.extend_from_slice(id);
    c
}

/// A provider failure as the store layer reports it: unavailable is 503, a refusal means data
/// Haven cannot open (a retired key version, a damaged record), which is an internal error.
pub fn store_error(e: KeyError) -> StoreError {
    match e {
        KeyError::Unavailable(m) => StoreError::Unavailable(format!("key provider: {m}")),
        KeyError::Refused(m) | KeyError::Config(m) => {
            StoreError::Corrupt(format!("key provider refused a data key: {m}"))
        }
    }
}

fn parse(scope: &str, body: &[u8]) -> Result<(DekRecord, [u8; DEK_ID_LEN]), StoreError> {
    let rec: DekRecord = serde_json::from_slice(body)
        .map_err(|e| StoreError::Corrupt(format!("data key record {scope}: {e}")))?;
    let id: [u8; DEK_ID_LEN] = hex::decode(&rec.id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("data key record {scope}: bad id")))?;
    Ok((rec, id))
}

impl DataKeys {
    #[must_use]
    pub fn new(provider: Arc<dyn KeyProvider>, ttl: Duration) -> Self {
        Self {
            provider,
            cache: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    #[must_use]
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    fn cached(&self, scope: &str, id: &[u8; DEK_ID_LEN]) -> Option<Arc<Dek>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(scope)
            .filter(|(d, at)| &d.id == id && at.elapsed() < self.ttl)
            .map(|(d, _)| d.clone())
    }

    fn remember(&self, scope: &str, dek: Arc<Dek>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(scope.to_owned(), (dek, Instant::now()));
    }

    /// Drops a scope's cached key (after its destruction).
    pub fn forget(&self, scope: &str) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(scope);
    }

    async fn open_record(&self, scope: &str, body: &[u8]) -> Result<Arc<Dek>, StoreError> {
        let (rec, id) = parse(scope, body)?;
        if let Some(d) = self.cached(scope, &id) {
            return Ok(d);
        }
        let key = self
            .provider
            .unwrap(&rec.wrapped, &context(scope, &id))
            .await
            .map_err(store_error)?;
        let dek = Arc::new(Dek { id, key });
        self.remember(scope, dek.clone());
        Ok(dek)
    }

    /// The scope's DEK inside a unit of work, created (and stored wrapped, in this unit) if the
    /// scope has none. The record is held until the unit ends ([`WriteTx::record_hold`]), so
    /// an erasure cannot destroy the key between this call and the unit's commit. Writers of
    /// one scope hold it together: on PostgreSQL they do not queue behind each other (every
    /// write of a non-patient type shares one scope, `type/Organization` for instance), and
    /// an erasure's exclusive read waits until they have all committed.
    pub async fn for_write(
        &self,
        tx: &mut dyn WriteTx,
        scope: &str,
    ) -> Result<Arc<Dek>, StoreError> {
        for _ in 0..2 {
            if let Some(rec) = tx.record_hold(DEK_KIND, scope).await? {
                return self.open_record(scope, &rec.body).await;
            }
            let id: [u8; DEK_ID_LEN] = haven_crypto::random_bytes();
            let (key, wrapped) = self
                .provider
                .generate(&context(scope, &id))
                .await
                .map_err(store_error)?;
            let body = serde_json::to_vec(&DekRecord {
                id: hex::encode(id),
                wrapped,
                created: haven_domain::Timestamp::now().to_string(),
            })
            .map_err(StoreError::internal)?;
            match tx
                .record_put(DEK_KIND, scope, body, None, Expect::Absent)
                .await
            {
                Ok(_) => {
                    let dek = Arc::new(Dek { id, key });
                    self.remember(scope, dek.clone());
                    return Ok(dek);
                }
                // Another unit created the scope's key first: use theirs.
                Err(StoreError::VersionConflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::VersionConflict(format!(
            "data key of {scope} created concurrently"
        )))
    }

    /// The DEK with `id` for reading. `Err(StoreError::Erased)` when the scope's key is gone
    /// or is another (the data was erased).
    pub async fn for_read(
        &self,
        store: &dyn ResourceStore,
        scope: &str,
        id: &[u8; DEK_ID_LEN],
    ) -> Result<Arc<Dek>, StoreError> {
        if let Some(d) = self.cached(scope, id) {
            return Ok(d);
        }
        let Some(rec) = store.record_get(DEK_KIND, scope).await? else {
            return Err(StoreError::Erased(scope.to_owned()));
        };
        let dek = self.open_record(scope, &rec.body).await?;
        if &dek.id != id {
            return Err(StoreError::Erased(scope.to_owned()));
        }
        Ok(dek)
    }

    /// Like [`DataKeys::for_read`], inside a unit of work (which sees its own new keys).
    pub async fn for_read_in(
        &self,
        tx: &mut dyn WriteTx,
        scope: &str,
        id: &[u8; DEK_ID_LEN],
    ) -> Result<Arc<Dek>, StoreError> {
        if let Some(d) = self.cached(scope, id) {
            return Ok(d);
        }
        let Some(rec) = tx.record_hold(DEK_KIND, scope).await? else {
            return Err(StoreError::Erased(scope.to_owned()));
        };
        let dek = self.open_record(scope, &rec.body).await?;
        if &dek.id != id {
            return Err(StoreError::Erased(scope.to_owned()));
        }
        Ok(dek)
    }

    /// Destroys a scope's DEK in a unit of work (crypto-shredding); true if there was one.
    pub async fn destroy(&self, tx: &mut dyn WriteTx, scope: &str) -> Result<bool, StoreError> {
        let gone = tx.record_delete(DEK_KIND, scope).await?;
        self.forget(scope);
        Ok(gone)
    }

    /// Re-wraps, under the provider's current KEK version, up to `limit` DEKs after `after`
    /// (in key order) that an older version wraps. Each DEK is replaced by compare-and-swap in
    /// its own unit, so a concurrent erasure or re-wrap wins cleanly and the pass can be
    /// interrupted and resumed at any point.
    pub async fn rewrap_step(
        &self,
        store: &dyn ResourceStore,
        after: Option<&str>,
        limit: u32,
    ) -> Result<RewrapStep, StoreError> {
        let current = self.provider.status().await.map_err(store_error)?.current;
        let batch = store.record_list(DEK_KIND, after, limit).await?;
        let mut step = RewrapStep {
            examined: batch.len() as u64,
            next: if batch.len() < limit as usize {
                None
            } else {
                batch.last().map(|(k, _)| k.clone())
            },
            ..RewrapStep::default()
        };
        for (scope, rec) in batch {
            let (old, id) = parse(&scope, &rec.body)?;
            if wrapped_version(&old.wrapped).is_some_and(|v| v >= current) {
                continue;
            }
            let wrapped = self
                .provider
                .rewrap(&old.wrapped, &context(&scope, &id))
                .await
                .map_err(store_error)?;
            let body =
                serde_json::to_vec(&DekRecord { wrapped, ..old }).map_err(StoreError::internal)?;
            let version = rec.version;
            let key = scope.clone();
            let expected = rec.body.clone();
            let r = haven_store::run_write(store, move |tx| {
                Box::pin(async move {
                    // The very record we re-wrapped, not merely one at the same version: a key
                    // destroyed by an erasure and created anew starts again at version 1, and
                    // must never be overwritten by the destroyed one.
                    match tx.record_get(DEK_KIND, &key).await? {
                        Some(now) if now.version == version && now.body == expected => {}
                        _ => {
                            return Err(StoreError::VersionConflict(format!(
                                "data key of {key} changed while it was re-wrapped"
                            )));
                        }
                    }
                    tx.record_put(DEK_KIND, &key, body, None, Expect::Version(version))
                        .await
                })
            })
            .await;
            let r: Result<i64, StoreError> = r;
            match r {
                Ok(_) => step.rewrapped += 1,
                // Erased or re-wrapped meanwhile: nothing left to do for this one.
                Err(StoreError::VersionConflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(step)
    }

    /// How many DEKs each KEK version wraps.
    pub async fn census(
        &self,
        store: &dyn ResourceStore,
    ) -> Result<BTreeMap<u32, u64>, StoreError> {
        let mut out = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let batch = store.record_list(DEK_KIND, after.as_deref(), 1_000).await?;
            for (scope, rec) in &batch {
                let (r, _) = parse(scope, &rec.body)?;
                *out.entry(wrapped_version(&r.wrapped).unwrap_or(0))
                    .or_insert(0) += 1;
            }
            if batch.len() < 1_000 {
                return Ok(out);
            }
            after = batch.last().map(|(k, _)| k.clone());
        }
    }
}
