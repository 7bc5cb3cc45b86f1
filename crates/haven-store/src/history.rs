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

/// Where a version sits in the history stream: ordered by the writing transaction, then by
/// sequence number within it.
///
/// Sequence numbers alone are not enough where writers run in parallel (PostgreSQL): a unit
/// that drew seq 7 may commit after one that drew seq 8, and a reader who already paged past 8
/// would never see 7. So a store orders history by `(tx, seq)` and shows only versions whose
/// transaction lies below its *visibility horizon* (every transaction before it has finished);
/// a version that commits later always lands at a later position. SQLite has one writer, so
/// commit order is seq order and `tx` is 0 throughout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryPos {
    /// The writing transaction's number (PostgreSQL's 64-bit transaction id; 0 on SQLite and
    /// for versions written before positions had one).
    pub tx: i64,
    /// The version's sequence number.
    pub seq: i64,
}

impl std::fmt::Display for HistoryPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.tx, self.seq)
    }
}

impl std::str::FromStr for HistoryPos {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (tx, seq) = s.split_once('.').ok_or(())?;
        Ok(Self {
            tx: tx.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// A position in the history stream. Positions only grow (see [`HistoryPos`]), so paging by
/// them neither skips nor repeats entries while new versions are being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryCursor {
    /// Entries strictly older than this position (the "next" page).
    Before(HistoryPos),
    /// Entries strictly newer than this position (the "previous" page).
    After(HistoryPos),
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
    pub pos: HistoryPos,
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
