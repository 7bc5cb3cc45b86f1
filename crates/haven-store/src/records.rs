//! Small records outside FHIR: the identity module's accounts, clients, sessions, codes,
//! refresh-token families, signing keys and throttling state.
//!
//! A record is an opaque body under `(kind, key)` with a version that increases by one on every
//! change, so callers can compare-and-swap: read a record, decide, and write it back only if
//! nobody changed it in between ([`Expect::Version`]). Single-use things (authorization codes,
//! a refresh token's current secret) rely on that: of two units that consume the same record,
//! exactly one succeeds. Records may carry an expiry; the store does not hide expired records
//! (the caller decides what expiry means) and purges them on request.
//!
//! Kinds and keys are chosen by the caller (short ASCII; keys of secrets are hashes of the
//! secret, never the secret). The store never parses a body.

use haven_domain::Timestamp;

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// 1 for a new record, +1 on every put.
    pub version: i64,
    pub body: Vec<u8>,
    pub expires: Option<Timestamp>,
}

/// What a put expects to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// No record under the key (create only).
    Absent,
    /// The record at exactly this version (compare-and-swap).
    Version(i64),
    /// Whatever is there, or nothing (upsert).
    Any,
}

/// Longest kind and key the stores accept (bytes).
pub const MAX_KIND_LEN: usize = 32;
pub const MAX_KEY_LEN: usize = 256;
