//! What a reference string says about its target (R4 `references.html#literal`): the type,
//! id and version of `Type/id`, `Type/id/_history/v` and absolute URLs ending that way.
//! Shared by `resolve()` and by search's reference index values.

use crate::model::ResourceType;
use crate::primitives::is_valid_id;

/// The parts of a literal reference that can be read from its text alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Literal<'a> {
    /// `Type/id[/_history/vid]`, relative or after an absolute base.
    Typed {
        target: ResourceType,
        id: &'a str,
        version: Option<&'a str>,
    },
    /// `#id` (empty for `#`, the container).
    Contained(&'a str),
    /// Anything else (`urn:uuid:`, `urn:oid:`, a URL that does not end in `Type/id`).
    Opaque,
}

/// Reads a reference string. Never fails: what cannot be read is [`Literal::Opaque`].
pub(crate) fn parse(text: &str) -> Literal<'_> {
    if let Some(id) = text.strip_prefix('#') {
        return Literal::Contained(id);
    }
    if text.starts_with("urn:") {
        return Literal::Opaque;
    }
    // Relative references are exactly `Type/id[/_history/vid]`; absolute ones may have any
    // base before that (`https://fhir.example/r4/Patient/1`).
    let (absolute, path) = match text.split_once("://") {
        Some((_, rest)) => match rest.split_once('/') {
            Some((host, path)) if !host.is_empty() => (true, path),
            _ => return Literal::Opaque,
        },
        None => (false, text),
    };
    let segments: Vec<&str> = path.split('/').collect();
    let (ty, id, version) = match segments.as_slice() {
        [.., t, id, "_history", v] if absolute || segments.len() == 4 => (*t, *id, Some(*v)),
        [.., t, id] if absolute || segments.len() == 2 => (*t, *id, None),
        _ => return Literal::Opaque,
    };
    match ResourceType::parse(ty) {
        Some(target) if is_valid_id(id) && version.is_none_or(is_valid_id) => Literal::Typed {
            target,
            id,
            version,
        },
        _ => Literal::Opaque,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(text: &str) -> Option<(&'static str, &str, Option<&str>)> {
        match parse(text) {
            Literal::Typed {
                target,
                id,
                version,
            } => Some((target.as_str(), id, version)),
            _ => None,
        }
    }

    #[test]
    fn literal_references() {
        assert_eq!(typed("Patient/123"), Some(("Patient", "123", None)));
        assert_eq!(
            typed("Patient/123/_history/2"),
            Some(("Patient", "123", Some("2")))
        );
        assert_eq!(
            typed("https://fhir.example/r4/Patient/123"),
            Some(("Patient", "123", None))
        );
        assert_eq!(
            typed("http://x/Observation/o.1/_history/7"),
            Some(("Observation", "o.1", Some("7")))
        );
        assert_eq!(parse("#c1"), Literal::Contained("c1"));
        assert_eq!(parse("#"), Literal::Contained(""));
        for opaque in [
            "urn:uuid:5d5e4c4e-8c1b-4a3b-9a2d-2b0d7f3e2c11",
            "urn:oid:1.2.3",
            "base/Patient/1",
            "Patient",
            "Patient/",
            "patient/1",
            "Patient/a_b",
            "http:///Patient/1",
            "http://host",
            "Patient/1/_history/",
            "",
        ] {
            assert_eq!(parse(opaque), Literal::Opaque, "{opaque}");
        }
    }
}
