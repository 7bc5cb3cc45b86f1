//! FHIR R4 (4.0.1) knowledge for Haven: the vendored HL7 definitions, strict JSON parsing,
//! primitive parsing and resource validation.
//!
//! - [`json`]: request bodies to `serde_json` values, rejecting duplicate keys, excessive
//!   depth and trailing data, and keeping decimals' exact text.
//! - [`model`]: the R4 type model built from the official StructureDefinitions, and
//!   [`ResourceType`], the closed set of concrete resource type names.
//! - [`primitives`]: `id` and the calendar types, with the checks a regex cannot make.
//! - [`validate`]: structural validation of a resource against the model.
//! - [`fhirpath`]: the FHIRPath subset the R4 search parameters are written in.
//! - [`search`]: the R4 search parameters and the Patient compartment, and the extraction
//!   of a resource's index values (no storage, no query evaluation).
//!
//! Architecture invariant: this crate does no I/O at run time and has no async code. The
//! definitions are compiled in by `build.rs` (see `definitions/README.md` for their origin),
//! so every binary validates against exactly the same model, and tests need no files.

pub mod fhirpath;
pub mod json;
pub mod model;
pub mod primitives;
pub mod search;
pub mod validate;

pub use model::{Definitions, ResourceType, definitions};
pub use validate::{Issue, IssueCode, Severity, validate_resource};
