//! `Reference.reference` (R4 `references.html#literal`): syntax, local targets and types.

use serde_json::{Map, Value};

use super::structure::{Scope, Validator};
use super::{IssueCode, Loc};
use crate::model::ResourceType;
use crate::primitives::is_valid_id;

const FORMS: &str = "'#id', 'Type/id', 'Type/id/_history/vid', an absolute http(s) URL ending in Type/id, \
                     'urn:uuid:<uuid>', 'urn:oid:<oid>' or (in a transaction) 'Type?criteria'";

/// What a reference string points at, as far as syntax tells.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// `#`: the resource that contains this one.
    Container,
    /// `#id`: a contained resource.
    Contained(&'a str),
    /// `Type/id`, with or without a version or absolute base.
    Typed(ResourceType),
    /// `urn:uuid:` / `urn:oid:`: resolved within a Bundle; the type is unknown.
    Urn,
}

pub(super) fn check(
    v: &mut Validator<'_>,
    reference: &Map<String, Value>,
    targets: &[&str],
    loc: &Loc<'_>,
    scope: Scope<'_>,
) {
    let Some(Value::String(text)) = reference.get("reference") else {
        return;
    };
    if text.is_empty() {
        return; // reported as ele-1 by the primitive check
    }
    let at = loc.field("reference");
    let type_name = match parse(text) {
        Err(reason) => {
            let msg = format!("invalid reference: {reason}; allowed forms are {FORMS}");
            return v.issue(IssueCode::Value, &at, msg);
        }
        Ok(Target::Urn) => return,
        Ok(Target::Container) => {
            if !scope.in_contained {
                let msg = "ref-1: '#' refers to the containing resource and is only valid inside a contained resource".to_owned();
                v.issue(IssueCode::Invariant, &at, msg);
            }
            return;
        }
        Ok(Target::Contained(id)) => match scope.contained.iter().find(|(cid, _)| *cid == id) {
            Some((_, type_name)) => *type_name,
            None => {
                let msg = "ref-1: local reference does not match the id of any contained resource"
                    .to_owned();
                return v.issue(IssueCode::Invariant, &at, msg);
            }
        },
        Ok(Target::Typed(rt)) => rt.as_str(),
    };
    if !targets.is_empty() && !targets.contains(&"Resource") && !targets.contains(&type_name) {
        let msg = format!(
            "a reference to {type_name} is not allowed here; allowed: {}",
            targets.join(", ")
        );
        v.issue(IssueCode::Value, &at, msg);
    }
}

fn parse(text: &str) -> Result<Target<'_>, &'static str> {
    if let Some(id) = text.strip_prefix('#') {
        return match id {
            "" => Ok(Target::Container),
            id if is_valid_id(id) => Ok(Target::Contained(id)),
            _ => Err("'#' must be followed by a valid id"),
        };
    }
    if let Some(uuid) = text.strip_prefix("urn:uuid:") {
        return if is_uuid(uuid) {
            Ok(Target::Urn)
        } else {
            Err("not a valid urn:uuid")
        };
    }
    if let Some(oid) = text.strip_prefix("urn:oid:") {
        return if is_oid(oid) {
            Ok(Target::Urn)
        } else {
            Err("not a valid urn:oid")
        };
    }
    // A conditional reference (`Patient?identifier=...`): valid syntax, resolved by search
    // when a transaction is processed (http.html#trules). Servers refuse it elsewhere.
    if !text.contains("://")
        && let Some((ty, criteria)) = text.split_once('?')
    {
        return match ResourceType::parse(ty) {
            Some(rt) if !criteria.is_empty() => Ok(Target::Typed(rt)),
            Some(_) => Err("a conditional reference needs search criteria after '?'"),
            None => Err("a conditional reference must start with a resource type"),
        };
    }
    let absolute = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"));
    let path = match absolute {
        Some(rest) => {
            let (host, path) = rest
                .split_once('/')
                .ok_or("an absolute reference must end in Type/id")?;
            if host.is_empty() {
                return Err("an absolute reference needs a host");
            }
            path
        }
        None => text,
    };
    let segments: Vec<&str> = path.split('/').collect();
    // Relative references are exactly Type/id[/_history/vid]; absolute ones may have a base.
    let (type_name, id, version) = match segments.as_slice() {
        [.., t, id, "_history", vid] if absolute.is_some() || segments.len() == 4 => {
            (*t, *id, Some(*vid))
        }
        [.., t, id] if absolute.is_some() || segments.len() == 2 => (*t, *id, None),
        _ => return Err("expected Type/id"),
    };
    let rt = ResourceType::parse(type_name).ok_or("the type is not a known R4 resource type")?;
    if !is_valid_id(id) {
        return Err("the id is not a valid FHIR id");
    }
    if version.is_some_and(|vid| !is_valid_id(vid)) {
        return Err("the version is not a valid FHIR id");
    }
    Ok(Target::Typed(rt))
}

/// 8-4-4-4-12 hex digits (either case; the `uuid` datatype itself demands lower case).
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `[0-2](\.(0|[1-9][0-9]*))+`, as in the `oid` datatype.
fn is_oid(s: &str) -> bool {
    let mut arcs = s.split('.');
    let first_ok = arcs.next().is_some_and(|a| matches!(a, "0" | "1" | "2"));
    let rest: Vec<&str> = arcs.collect();
    first_ok
        && !rest.is_empty()
        && rest.iter().all(|a| {
            !a.is_empty()
                && a.bytes().all(|b| b.is_ascii_digit())
                && (a.len() == 1 || !a.starts_with('0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(name: &str) -> Result<Target<'static>, &'static str> {
        Ok(Target::Typed(ResourceType::parse(name).unwrap()))
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(parse("Patient/123"), typed("Patient"));
        assert_eq!(parse("Patient/123/_history/2"), typed("Patient"));
        assert_eq!(
            parse("https://example.org/fhir/Patient/123"),
            typed("Patient")
        );
        assert_eq!(
            parse("http://example.org/Patient/a.b-c/_history/7"),
            typed("Patient")
        );
        assert_eq!(parse("#"), Ok(Target::Container));
        assert_eq!(parse("#med1"), Ok(Target::Contained("med1")));
        assert_eq!(
            parse("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"),
            Ok(Target::Urn)
        );
        assert_eq!(parse("urn:oid:1.2.840.113619"), Ok(Target::Urn));
        // Conditional references are syntax the validator accepts; the service resolves them
        // in transactions and refuses them elsewhere.
        assert!(matches!(
            parse("Patient?identifier=x"),
            Ok(Target::Typed(t)) if t.as_str() == "Patient"
        ));
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            "Patient",
            "Patient/",
            "/Patient/1",
            "patient/1",
            "Foo/1",
            "Patient/1/2",
            "Patient/1/_history",
            "Patient/1/_history/",
            "Patient/a b",
            "Patient/1/_history/v 1",
            "fhir/Patient/1",
            "https:///Patient/1",
            "https://example.org",
            "https://example.org/fhir/Foo/1",
            "#bad id",
            "urn:uuid:1234",
            "urn:oid:3.1",
            "urn:oid:1",
            "urn:oid:1.02",
            "Patient?",
            "patient?identifier=x",
            "ftp://example.org/Patient/1",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
