//! Haven's audit trail, without I/O: the record, its canonical bytes, the hash chain, signed
//! checkpoints, chain verification and the ECS projection. Storage lives elsewhere; this crate
//! only says what is written and how to tell whether it is intact.
//!
//! **Canonical form.** An [`AuditRecord`] is hashed as its canonical bytes: compact JSON with
//! the keys in struct-field order, every key always present, integers only (times are
//! microseconds). Equal records give equal bytes, and the bytes are what the database stores, so
//! a verifier recomputes hashes from exactly what was sealed without re-encoding anything.
//!
//! **Chain.** Record `seq` (from 1, without gaps) is sealed by
//! `chain_hash(prev, seq, canonical) = sha256("haven-audit-v1\0" || prev || seq || len || canonical)`,
//! with `prev` the hash of record `seq - 1` ([`GENESIS`] for record 1). Every field except the
//! record has a fixed width and the record is length-prefixed, so no two different inputs frame
//! to the same bytes; the sequence number inside the hash makes a record valid only at its
//! place. Changing, deleting or reordering any record breaks every hash after it.
//!
//! **Checkpoints.** The chain alone cannot catch someone who rewrites the table and recomputes
//! all hashes, or who simply deletes the newest rows. So the writer periodically signs a
//! [`Checkpoint`] (seq, hash, time) with an Ed25519 key held outside the database, stores it, and
//! also emits it as a log line ([`Checkpoint::to_log_line`]) so copies live in a system the
//! database's users cannot edit. Those copies are fed back with [`Checkpoint::from_log_line`].
//!
//! **What verification proves.** [`ChainVerifier`] streams the links in order (bounded memory
//! for millions of links) and reports the first [`Break`]: a gap, a missing record, a record that
//! does not match its hash, a checkpoint that does not match the chain, is badly signed, names an
//! unknown key, or seals records beyond the end. A clean [`Report`] proves that every record up
//! to the last checked checkpoint is exactly what was sealed, in order, with none removed,
//! including at the tail. It cannot prove more than the keys and copies it is given: an attacker
//! with write access to the database (but not the signing key) can still *append* forged records,
//! which the next checkpoint will then seal; records after the last checkpoint can be deleted
//! from the end undetected; and an attacker holding the signing key can rewrite everything.
//!
//! **ECS.** [`ecs_line`] renders a record as one Elastic Common Schema 8.11 line for log
//! platforms, with identifiers only, never resource content.
//!
//! Architecture invariant: no I/O, no database, no async; cryptography comes from
//! `haven-crypto` only.

mod chain;
mod ecs;
mod record;
mod verify;

pub use chain::{CHECKPOINT_LOG_KEY, Checkpoint, GENESIS, chain_hash};
pub use ecs::{
    ECS_DATASET, ECS_EVENT_CATEGORIES, ECS_EVENT_TYPES, ECS_FIELDS, ECS_TOP_LEVEL_KEYS,
    ECS_VERSION, ecs_line,
};
pub use record::{
    Actor, AuditError, AuditRecord, Category, Entity, MAX_ACTION_LEN, MAX_DETAIL_CHARS,
    MAX_ENTITIES, Outcome,
};
pub mod fhir;
pub use verify::{Break, BreakReason, ChainVerifier, Report};
