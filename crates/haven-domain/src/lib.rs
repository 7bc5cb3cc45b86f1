//! Haven's domain vocabulary: the small value types every layer speaks.
//!
//! Everything here is pure (no I/O, no async) and follows "parse, don't validate": a
//! [`ResourceId`] or [`VersionId`] can only exist if it is valid, so code further down never
//! re-checks. Access decisions and principals will join this crate with the identity and
//! authorization work; they belong here because they are rules, not plumbing.

pub mod access;
mod ids;
mod interaction;
pub mod policy;
pub mod scope;
mod time;

pub use access::{EmergencyAccess, Principal, PrincipalKind, Role};
pub use haven_fhir::ResourceType;
pub use ids::{IdError, ResourceId, VersionId};
pub use interaction::Interaction;
pub use time::{Timestamp, TimestampError};
