//! Helpers shared by the validation tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use haven_fhir::{Issue, IssueCode, Severity, validate_resource};
use serde_json::{Value, json};

pub fn validate(resource: &Value) -> Vec<Issue> {
    validate_resource(resource.as_object().expect("test resources are objects"))
}

#[track_caller]
pub fn assert_valid(resource: &Value) {
    let issues = validate(resource);
    assert!(
        issues.is_empty(),
        "expected no issues, got:\n{}",
        render(&issues)
    );
}

/// Exactly one issue, with this code and location; returns it for message checks.
#[track_caller]
pub fn assert_one(resource: &Value, code: IssueCode, location: &str) -> Issue {
    let mut issues = validate(resource);
    assert_eq!(
        issues.len(),
        1,
        "expected exactly one issue, got:\n{}",
        render(&issues)
    );
    let issue = issues.remove(0);
    assert_eq!(
        (issue.code, issue.location.as_str()),
        (code, location),
        "{issue}"
    );
    assert_eq!(issue.severity, Severity::Error);
    issue
}

pub fn render(issues: &[Issue]) -> String {
    issues.iter().map(|i| format!("  {i}\n")).collect()
}

/// Applies `edit` to a copy of `base`.
pub fn with(base: &Value, edit: impl FnOnce(&mut Value)) -> Value {
    let mut copy = base.clone();
    edit(&mut copy);
    copy
}

/// A small valid Patient that the rule tests break one way at a time.
pub fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "birthDate": "1974-12-25",
        "managingOrganization": {"reference": "Organization/o1"}
    })
}

/// A small valid Observation with a choice-typed value.
pub fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "valueQuantity": {"value": 72.5, "unit": "kg"}
    })
}
