//! Validation of a resource (already parsed as JSON) against the R4 base definitions.
//!
//! What is checked (R4 `json.html`, `elementdefinition.html`, `datatypes.html`): known
//! elements only; cardinality and array-ness; choice types (`value[x]`); primitive JSON
//! types, official regexes, calendar validity and integer ranges; `_x` primitive extensions
//! and their alignment with primitive arrays; `ele-1` (no empty objects or strings); nested
//! datatypes, backbone elements and `contentReference`s; embedded resources (`contained`,
//! `Bundle.entry.resource`, ...) by their own `resourceType`; contained-resource rules
//! (`dom-2`, `dom-4`, an id); `Reference.reference` syntax and target types; `ext-1`.
//! Not checked: terminology bindings, profiles, and FHIRPath invariants beyond those named.
//!
//! Every problem is reported, not just the first. Locations are FHIRPath-like and use the
//! JSON property name, so choice elements appear as `Observation.valueQuantity`; array items
//! are always indexed (`Patient.name[0].given[1]`); an embedded resource continues the path
//! (`Bundle.entry[0].resource.name[0]`); the extensions of a primitive `_given[1]` are
//! children of `given[1]` (`Patient.name[0].given[1].extension[0]`), as in FHIRPath. A key
//! that is itself wrong is reported with its JSON spelling (`Patient._foo`).
//!
//! Messages say what is wrong and what is allowed, but never quote element *values*, which
//! may be patient data.
//!
//! Issue codes used:
//!
//! | problem | code |
//! |---|---|
//! | `resourceType` missing or not a string | `invalid` |
//! | `resourceType` unknown or abstract | `not-supported` |
//! | unknown element, array where single (or vice versa), empty array, `null`, wrong JSON type, two choice variants, misaligned `_x` | `structure` |
//! | missing element with `min >= 1` | `required` |
//! | primitive content (regex, calendar, range), bad reference syntax or target type | `value` |
//! | string over 1 MB | `too-long` |
//! | `ele-1` (empty object/string), `ext-1`, `dom-2`, `dom-4`, contained without id, `ref-1` | `invariant` |
//!
//! Performance: the definitions are precompiled (see `model`), locations are built lazily
//! (only when an issue is reported), so a valid resource is validated without allocation
//! beyond the returned `Vec`.

mod primitive;
mod reference;
mod structure;

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::definitions;

/// How bad an issue is (FHIR `issue-severity`). The validator only produces `Error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

/// What kind of issue (FHIR `issue-type` codes; see the module table for when each is used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IssueCode {
    Structure,
    Required,
    Value,
    Invariant,
    Invalid,
    CodeInvalid,
    NotSupported,
    TooLong,
    // The codes below are not produced by validation; the service layer reports them.
    NotFound,
    Conflict,
    Deleted,
    BusinessRule,
    Transient,
    Exception,
    Forbidden,
    /// An authentication problem (no or an invalid access token).
    Login,
}

impl Severity {
    /// The FHIR code, e.g. `"error"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

impl IssueCode {
    /// The FHIR code, e.g. `"code-invalid"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::Invalid => "invalid",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::NotSupported => "not-supported",
            IssueCode::TooLong => "too-long",
            IssueCode::NotFound => "not-found",
            IssueCode::Conflict => "conflict",
            IssueCode::Deleted => "deleted",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Transient => "transient",
            IssueCode::Exception => "exception",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Login => "login",
        }
    }
}

/// One problem found in a resource; maps onto an `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    /// FHIRPath-like location, e.g. `Patient.name[0].given[1]`.
    pub location: String,
    /// Human-readable explanation; never contains element values.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{}] at {}: {}",
            self.severity.as_str(),
            self.code.as_str(),
            self.location,
            self.message
        )
    }
}

/// Validates a resource against the R4 base definitions. Returns every problem found; an
/// empty `Vec` means the resource is valid.
#[must_use]
pub fn validate_resource(resource: &Map<String, Value>) -> Vec<Issue> {
    let mut v = structure::Validator {
        defs: definitions(),
        issues: Vec::new(),
    };
    v.check_root(resource);
    v.issues
}

/// A location built on the stack while walking; rendered to a string only for an issue.
#[derive(Clone, Copy)]
pub(crate) struct Loc<'a> {
    parent: Option<&'a Loc<'a>>,
    seg: Seg<'a>,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root(&'a str),
    Field(&'a str),
    Index(usize),
}

impl<'a> Loc<'a> {
    pub(crate) fn root(name: &'a str) -> Self {
        Loc {
            parent: None,
            seg: Seg::Root(name),
        }
    }

    pub(crate) fn field(&'a self, name: &'a str) -> Loc<'a> {
        Loc {
            parent: Some(self),
            seg: Seg::Field(name),
        }
    }

    pub(crate) fn index(&'a self, i: usize) -> Loc<'a> {
        Loc {
            parent: Some(self),
            seg: Seg::Index(i),
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        if let Some(parent) = self.parent {
            parent.write(out);
        }
        match self.seg {
            Seg::Root(name) => out.push_str(name),
            Seg::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_render_fhirpath_style() {
        let root = Loc::root("Patient");
        let name = root.field("name");
        let first = name.index(0);
        let given = first.field("given");
        assert_eq!(given.index(1).render(), "Patient.name[0].given[1]");
        assert_eq!(Loc::root("").field("resourceType").render(), "resourceType");
    }

    #[test]
    fn codes_serialize_as_fhir_codes() {
        assert_eq!(
            serde_json::to_string(&IssueCode::CodeInvalid).unwrap(),
            "\"code-invalid\""
        );
        assert_eq!(
            serde_json::to_string(&IssueCode::NotSupported).unwrap(),
            "\"not-supported\""
        );
        assert_eq!(
            serde_json::to_string(&IssueCode::TooLong).unwrap(),
            "\"too-long\""
        );
        assert_eq!(
            serde_json::to_string(&Severity::Information).unwrap(),
            "\"information\""
        );
        for code in [
            IssueCode::Structure,
            IssueCode::Required,
            IssueCode::Value,
            IssueCode::Invariant,
            IssueCode::Invalid,
            IssueCode::CodeInvalid,
            IssueCode::NotSupported,
            IssueCode::TooLong,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        for s in [
            Severity::Fatal,
            Severity::Error,
            Severity::Warning,
            Severity::Information,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
