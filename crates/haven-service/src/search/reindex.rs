//! Re-indexing: recomputing every current resource's index rows after the search
//! definitions (or Haven's conversion of values) changed, in batches that can be resumed.
//!
//! The store records which definitions its index was built with (`search.index`, a
//! fingerprint). A re-index writes each batch's rows together with its progress
//! (`search.reindex`, "fingerprint rid") in one transaction, so an interrupted run resumes
//! after the last batch that committed, and a finished one stamps the new fingerprint.

use std::sync::LazyLock;

use haven_fhir::definitions;
use haven_store::{SearchQuery, WriteTx, run_write};
use serde_json::{Map, Value};

use super::index::index_rows;
use crate::{FhirService, ServiceError};

/// Bump when the conversion of values into index rows changes (not the definitions: those
/// are fingerprinted themselves).
const INDEX_FORMAT: u32 = 1;

const FINGERPRINT_KEY: &str = "search.index";
const PROGRESS_KEY: &str = "search.reindex";

/// A short digest of everything the index depends on: the search parameters (code, type,
/// expression, components) and [`INDEX_FORMAT`].
#[must_use]
pub fn fingerprint() -> &'static str {
    static FP: LazyLock<String> = LazyLock::new(|| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |s: &str| {
            for b in s.bytes().chain([0]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        feed(&INDEX_FORMAT.to_string());
        for p in definitions().all_search_params() {
            feed(p.url);
            feed(p.code);
            feed(p.param_type.as_str());
            feed(p.expression_text.unwrap_or(""));
            for c in &p.components {
                feed(c.definition);
            }
            feed(&p.is_supported().to_string());
        }
        format!("{h:016x}")
    });
    &FP
}

/// Where the index stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexStatus {
    /// Built with the current definitions.
    Current,
    /// Built with other definitions (or by a Haven before the index existed): searches may
    /// miss resources until `haven reindex` has run.
    Stale,
}

/// Progress of a re-index, for the caller to show.
#[derive(Debug, Clone, Copy)]
pub struct ReindexProgress {
    pub done: u64,
    /// Current resources in the store when the run started.
    pub total: u64,
    /// Resumed from an interrupted run.
    pub resumed: bool,
}

impl FhirService {
    /// Whether the index matches the definitions. A store with no index stamp but also no
    /// resources (a new database) is stamped as current.
    pub async fn index_status(&self) -> Result<IndexStatus, ServiceError> {
        match self.store.meta(FINGERPRINT_KEY).await? {
            Some(fp) if fp == fingerprint() => Ok(IndexStatus::Current),
            Some(_) => Ok(IndexStatus::Stale),
            None => {
                if self.current_resources().await? == 0 {
                    let fp = fingerprint().to_owned();
                    run_write(self.store.as_ref(), move |tx: &mut dyn WriteTx| {
                        Box::pin(async move {
                            tx.set_meta(FINGERPRINT_KEY, Some(&fp))
                                .await
                                .map_err(ServiceError::from)
                        })
                    })
                    .await?;
                    Ok(IndexStatus::Current)
                } else {
                    Ok(IndexStatus::Stale)
                }
            }
        }
    }

    async fn current_resources(&self) -> Result<u64, ServiceError> {
        let page = self
            .store
            .search(&SearchQuery {
                types: Vec::new(),
                conditions: Vec::new(),
                sort: Vec::new(),
                cursor: None,
                limit: 0,
                total: true,
                max_bytes: 0,
            })
            .await?;
        Ok(page.total.unwrap_or(0))
    }

    /// Recomputes the index rows of every current resource, `batch` at a time, calling
    /// `progress` after each batch. Resumes an interrupted run with the same definitions;
    /// `restart` starts from the beginning anyway.
    pub async fn reindex(
        &self,
        batch: u32,
        restart: bool,
        mut progress: impl FnMut(ReindexProgress),
    ) -> Result<ReindexProgress, ServiceError> {
        let fp = fingerprint();
        let total = self.current_resources().await?;
        let mut after = 0_i64;
        let mut resumed = false;
        if !restart
            && let Some(saved) = self.store.meta(PROGRESS_KEY).await?
            && let Some((saved_fp, rid)) = saved.split_once(' ')
            && saved_fp == fp
            && let Ok(rid) = rid.parse::<i64>()
        {
            after = rid;
            resumed = true;
        }
        let mut state = ReindexProgress {
            done: 0,
            total,
            resumed,
        };
        if resumed {
            // Resources before the resume point were done by the earlier run.
            state.done = self.count_upto(after).await?;
        }
        loop {
            let found = self.store.scan(after, batch.max(1)).await?;
            let Some(last) = found.last().map(|f| f.rid) else {
                break;
            };
            let mut work = Vec::with_capacity(found.len());
            for f in &found {
                let v = &f.version;
                let Some(body) = v.body.as_deref() else {
                    continue;
                };
                let resource: Map<String, Value> =
                    serde_json::from_slice(body).map_err(|_| ServiceError::Internal)?;
                work.push((
                    v.resource_type,
                    v.id.clone(),
                    index_rows(v.resource_type, &resource),
                ));
            }
            let n = found.len() as u64;
            let marker = format!("{fp} {last}");
            run_write(self.store.as_ref(), move |tx: &mut dyn WriteTx| {
                Box::pin(async move {
                    for (ty, id, rows) in work {
                        // A resource deleted since the scan simply has nothing to replace.
                        tx.replace_index(ty, &id, rows).await?;
                    }
                    tx.set_meta(PROGRESS_KEY, Some(&marker)).await?;
                    Ok::<(), ServiceError>(())
                })
            })
            .await?;
            after = last;
            state.done += n;
            progress(state);
        }
        let fp = fp.to_owned();
        run_write(self.store.as_ref(), move |tx: &mut dyn WriteTx| {
            Box::pin(async move {
                tx.set_meta(FINGERPRINT_KEY, Some(&fp)).await?;
                tx.set_meta(PROGRESS_KEY, None).await?;
                Ok::<(), ServiceError>(())
            })
        })
        .await?;
        Ok(state)
    }

    /// Current resources with `rid <= upto` (for resumed progress).
    async fn count_upto(&self, upto: i64) -> Result<u64, ServiceError> {
        let mut n = 0;
        let mut after = 0;
        while after < upto {
            let found = self.store.scan(after, 1000).await?;
            let Some(last) = found.last().map(|f| f.rid) else {
                break;
            };
            n += found.iter().filter(|f| f.rid <= upto).count() as u64;
            after = last;
        }
        Ok(n)
    }
}
