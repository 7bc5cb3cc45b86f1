//! JSON Patch (RFC 6902) for the FHIR patch interaction, with limits.
//!
//! A patch is small, but what it produces need not be: `copy` can double a document per
//! operation and nest a value inside itself. Unchecked, one request could exhaust memory or the
//! stack of the thread running it. So a patch has at most [`MAX_OPERATIONS`] operations, `copy`
//! may not take the whole document or copy a value into itself, and after every operation the
//! document must stay within the same depth and size limits as a request body.

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

use crate::ServiceError;

/// Most operations one patch may carry.
pub(crate) const MAX_OPERATIONS: usize = 100;

/// The limits a patched document must stay within (those of a request body).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PatchLimits {
    pub max_depth: usize,
    pub max_bytes: usize,
}

/// Parses and checks a JSON Patch document.
pub(crate) fn parse_patch(doc: Value) -> Result<Patch, ServiceError> {
    let patch: Patch = serde_json::from_value(doc).map_err(|e| {
        ServiceError::BadRequest(format!(
            "the body is not a valid JSON Patch (RFC 6902) document: {}",
            e.to_string().chars().take(200).collect::<String>()
        ))
    })?;
    if patch.0.len() > MAX_OPERATIONS {
        return Err(ServiceError::BadRequest(format!(
            "a patch may have at most {MAX_OPERATIONS} operations, this one has {}; split it",
            patch.0.len()
        )));
    }
    for op in &patch.0 {
        if let PatchOperation::Copy(c) = op {
            let from = c.from.as_str();
            let into = c.path.as_str();
            if from.is_empty() || into == from || into.starts_with(&format!("{from}/")) {
                return Err(ServiceError::BadRequest(
                    "a copy may not take the whole resource or copy a value into itself".into(),
                ));
            }
        }
    }
    Ok(patch)
}

/// Applies a checked patch one operation at a time, refusing any step that makes the document
/// deeper or larger than the limits. On error the document is left half-patched; callers discard it.
pub(crate) fn apply_patch(
    doc: &mut Value,
    patch: &Patch,
    limits: PatchLimits,
) -> Result<(), ServiceError> {
    for op in &patch.0 {
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|e| {
            ServiceError::Unprocessable(format!("the JSON Patch cannot be applied: {e}"))
        })?;
        if depth(doc) > limits.max_depth {
            return Err(ServiceError::Unprocessable(format!(
                "the patched resource would nest deeper than {} levels",
                limits.max_depth
            )));
        }
        if serialized_len(doc) > limits.max_bytes {
            return Err(ServiceError::Unprocessable(format!(
                "the patched resource would be larger than {} bytes",
                limits.max_bytes
            )));
        }
    }
    Ok(())
}

/// Nesting depth, computed without recursion so no document can overflow the stack here.
fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    max
}

/// Length of the compact JSON serialization (called only after the depth check).
fn serialized_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: PatchLimits = PatchLimits {
        max_depth: 64,
        max_bytes: 4096,
    };

    #[test]
    fn ordinary_patches_apply() {
        let mut doc = json!({"resourceType": "Patient", "active": true, "name": [{"family": "A"}]});
        let p = parse_patch(json!([
            {"op": "replace", "path": "/active", "value": false},
            {"op": "copy", "from": "/name/0", "path": "/name/1"},
            {"op": "test", "path": "/name/1/family", "value": "A"}
        ]))
        .unwrap();
        apply_patch(&mut doc, &p, LIMITS).unwrap();
        assert_eq!(doc["active"], false);
        assert_eq!(doc["name"][1]["family"], "A");
    }

    #[test]
    fn amplifying_patches_are_refused() {
        assert_eq!(
            parse_patch(json!([{"op": "copy", "from": "", "path": "/a"}]))
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            parse_patch(json!([{"op": "copy", "from": "/a", "path": "/a/b"}]))
                .unwrap_err()
                .status(),
            400
        );
        let many: Vec<Value> = (0..=MAX_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/a", "value": 1}))
            .collect();
        assert_eq!(parse_patch(Value::Array(many)).unwrap_err().status(), 400);

        // Doubling by copying siblings stops at the size limit, long before memory matters.
        let mut doc = json!({"a": "x".repeat(500)});
        let ops: Vec<Value> = (0..20)
            .map(|i| json!({"op": "copy", "from": "/a", "path": format!("/b{i}")}))
            .collect();
        let p = parse_patch(Value::Array(ops)).unwrap();
        assert_eq!(apply_patch(&mut doc, &p, LIMITS).unwrap_err().status(), 422);

        // Nesting grows by one level per add; it stops at the depth limit.
        let mut doc = json!({"a": {}});
        let deep = (0..70).fold(json!(1), |v, _| json!({"x": v}));
        let p = parse_patch(json!([{"op": "add", "path": "/a/b", "value": deep}])).unwrap();
        assert_eq!(apply_patch(&mut doc, &p, LIMITS).unwrap_err().status(), 422);
    }
}
