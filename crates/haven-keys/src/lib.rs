//! Key management for envelope encryption.
//!
//! The key hierarchy (docs/SECURITY.md has the full threat model):
//!
//! ```text
//! KEK (versions)            in a keyring file or Vault/OpenBao Transit; never in the database
//!  └─ wraps DEKs            one per patient compartment, one per resource type outside them,
//!      │                    stored wrapped as records in the database (`kind = "dek"`)
//!      └─ seal bodies       every resource version (AES-256-GCM, haven-service's `sealed`)
//! ```
//!
//! [`KeyProvider`] is the one trait both KEK holders implement: [`FileKeyring`] here, the
//! Vault/OpenBao Transit client in the binary (which owns the HTTP client; this crate does no
//! network I/O). [`DataKeys`] creates, caches, re-wraps and destroys DEKs over the store's
//! record API, in the caller's unit of work.
//!
//! Crypto-shredding: erasing a patient deletes their DEK record in the unit that tombstones
//! their resources. A copy of the database or a backup taken before still holds the wrapped
//! DEK; it stops opening once the KEK versions that wrapped it are retired, which the erasure
//! procedure does (rotate, re-wrap the living keys, retire the old versions: `haven patient
//! erase`).

mod dek;
mod file;
mod provider;

pub use dek::{DEK_ID_LEN, DEK_KIND, DataKeys, Dek, RewrapStep, store_error};
pub use file::FileKeyring;
pub use provider::{KekStatus, KeyError, KeyProvider, wrapped_version};
