//! OperationOutcome construction (R4 operationoutcome.html).

use haven_fhir::Issue;
use serde_json::{Value, json};

/// Builds an OperationOutcome from issues. Locations become `expression` (FHIRPath).
#[must_use]
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut o = json!({
                "severity": i.severity.as_str(),
                "code": i.code.as_str(),
                "diagnostics": i.message,
            });
            if !i.location.is_empty() {
                o["expression"] = json!([i.location]);
            }
            o
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

/// An informational OperationOutcome (`Prefer: return=OperationOutcome`, `$validate` success).
#[must_use]
pub fn information(message: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": "information", "code": "informational", "diagnostics": message }]
    })
}
