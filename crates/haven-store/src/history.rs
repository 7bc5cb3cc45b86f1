//! History queries (R4 http.html#history): scope, `_since`, `_at`, and keyset paging.

use haven_domain::{ResourceId, ResourceType, Timestamp};

use crate::StoredVersion;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryScope {
    System,
    Type(ResourceType),
    Instance(ResourceType, ResourceId),
}

/// A half-open time period `[start, end)`, from a FHIR date of some precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub start: Timestamp,
    pub end: Timestamp,
}

/// A position in the history stream. Sequence numbers only grow, so paging by them neither
/// skips nor repeats entries while new versions are being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryCursor {
    /// Entries strictly older than this sequence number (the "next" page).
    Before(i64),
    /// Entries strictly newer than this sequence number (the "previous" page).
    After(i64),
}

#[derive(Clone, Debug)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions with `lastUpdated >= since`.
    pub since: Option<Timestamp>,
    /// Only versions that were current at some time within the period.
    pub at: Option<Period>,
    pub count: u32,
    pub cursor: Option<HistoryCursor>,
    /// A page ends early once its bodies exceed this many bytes (at least one entry is always
    /// returned), with a `next` link to the rest.
    pub max_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct HistoryEntry {
    /// Global, strictly increasing position of this version in the store.
    pub seq: i64,
    pub version: StoredVersion,
}

#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// Newest first.
    pub entries: Vec<HistoryEntry>,
    /// Whether older entries exist beyond this page.
    pub has_older: bool,
    /// Whether newer entries exist before this page.
    pub has_newer: bool,
}
