//! Resource ids and version ids as newtypes that cannot be built invalid.

use std::fmt;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// FHIR R4 `id`: `[A-Za-z0-9\-\.]{1,64}` (datatypes.html#id).
    #[error("'{0}' is not a valid FHIR id: use 1 to 64 characters from A-Z, a-z, 0-9, '-' and '.'")]
    InvalidId(String),
    /// Haven's version ids are positive integers, counted per resource from 1.
    #[error("'{0}' is not a valid version id: Haven's version ids are positive integers")]
    InvalidVersion(String),
}

/// A FHIR logical id (`Resource.id`), checked against the R4 id syntax.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    /// Parses a client-supplied id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if haven_fhir::primitives::is_valid_id(s) {
            Ok(Self(s.to_owned()))
        } else {
            // Never echo an unbounded string back: ids longer than 64 are cut in the message.
            let shown: String = s.chars().take(70).collect();
            Err(IdError::InvalidId(shown))
        }
    }

    /// A new server-assigned id: a random UUID (v4), so ids reveal neither order nor count and
    /// several replicas can assign ids without coordination.
    #[must_use]
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceId({})", self.0)
    }
}

/// A resource version (`meta.versionId`): 1 for the first version, +1 for each change.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct VersionId(u64);

impl VersionId {
    pub const FIRST: VersionId = VersionId(1);

    /// Parses a version id as it appears in URLs, `meta.versionId` and ETags.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let err = || IdError::InvalidVersion(s.chars().take(70).collect());
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        match s.parse::<u64>() {
            Ok(0) | Err(_) => Err(err()),
            Ok(n) => Ok(Self(n)),
        }
    }

    /// Parses an `ETag` / `If-Match` value: `W/"3"`, or a bare `"3"` which some clients send.
    pub fn parse_etag(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        let t = t.strip_prefix("W/").unwrap_or(t);
        let t = t
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(t);
        Self::parse(t)
    }

    /// Builds a version from a stored number; `None` for 0, which is never stored.
    #[must_use]
    pub fn from_u64(n: u64) -> Option<Self> {
        (n > 0).then_some(Self(n))
    }

    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }

    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// The weak ETag for this version, `W/"n"` (http.html#versioning).
    #[must_use]
    pub fn etag(self) -> String {
        format!("W/\"{}\"", self.0)
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_follow_r4_syntax() {
        assert!(ResourceId::parse("abc-123.X").is_ok());
        assert!(ResourceId::parse(&"a".repeat(64)).is_ok());
        assert!(ResourceId::parse(&"a".repeat(65)).is_err());
        assert!(ResourceId::parse("").is_err());
        assert!(ResourceId::parse("a b").is_err());
        assert!(ResourceId::parse("a/b").is_err());
        assert!(ResourceId::parse("é").is_err());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = ResourceId::generate();
        let b = ResourceId::generate();
        assert_ne!(a, b);
        assert!(ResourceId::parse(a.as_str()).is_ok());
    }

    #[test]
    fn etags_parse() {
        assert_eq!(VersionId::parse_etag("W/\"3\"").unwrap().get(), 3);
        assert_eq!(VersionId::parse_etag("\"12\"").unwrap().get(), 12);
        assert_eq!(VersionId::parse_etag("7").unwrap().get(), 7);
        assert!(VersionId::parse_etag("W/\"0\"").is_err());
        assert!(VersionId::parse_etag("W/\"x\"").is_err());
        assert!(VersionId::parse_etag("W/\"-1\"").is_err());
        assert!(VersionId::parse("99999999999999999999").is_err());
        assert_eq!(VersionId::FIRST.next().etag(), "W/\"2\"");
    }

    proptest! {
        #[test]
        fn version_parse_never_panics(s in ".*") {
            let _ = VersionId::parse(&s);
            let _ = VersionId::parse_etag(&s);
        }

        #[test]
        fn version_round_trips(n in 1u64..u64::MAX / 2) {
            let v = VersionId::from_u64(n).unwrap();
            prop_assert_eq!(VersionId::parse(&v.to_string()).unwrap(), v);
            prop_assert_eq!(VersionId::parse_etag(&v.etag()).unwrap(), v);
        }

        #[test]
        fn id_parse_agrees_with_the_regex(s in "[A-Za-z0-9.\\-]{0,70}") {
            let ok = !s.is_empty() && s.len() <= 64;
            prop_assert_eq!(ResourceId::parse(&s).is_ok(), ok);
        }
    }
}
