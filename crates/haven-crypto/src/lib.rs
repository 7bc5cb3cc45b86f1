//! Haven's cryptography: the only crate that names hash and signature crates.
//!
//! Everything else in Haven asks this crate for what it needs (a SHA-256 digest, a signing key,
//! a signature check) and never sees a RustCrypto type. That keeps the choice of primitives in one
//! place that can be reviewed as a whole and changed without touching callers.
//!
//! Today it holds what the audit trail needs: [`sha256`] for the hash chain, and Ed25519
//! ([`SigningKey`], [`VerifyingKey`]) for signed checkpoints. Signing keys are zeroized on drop,
//! never printed (`Debug` shows only the key id) and never quoted in an error message.
//!
//! Architecture invariant: no I/O. Callers read key files and hand the bytes over; this crate
//! only parses them.

mod error;
mod hash;
mod sign;

pub use error::CryptoError;
pub use hash::sha256;
pub use sign::{SIGNATURE_LEN, SigningKey, VerifyingKey};
