//! Parsing of the FHIR primitives whose rules go beyond a regex: `id`, and the calendar types
//! `date`, `dateTime`, `instant` and `time` (R4 `datatypes.html#primitive`).
//!
//! The parsers accept exactly the language of the official R4 regexes and additionally check
//! the calendar (no 2023-02-30, leap years honoured), which a regex cannot. Parsed values
//! remember their precision, because a FHIR date is a *period* (`2023` means the whole year);
//! search needs that period's start and end.
//!
//! Error messages never echo the input: values such as a birth date are patient data.

mod datetime;

pub use datetime::{
    FhirDateTime, FhirTime, Precision, parse_date, parse_datetime, parse_instant,
    parse_search_datetime, parse_time,
};

/// Whether `s` is a valid FHIR `id`: 1 to 64 characters from `A-Z a-z 0-9 - .`.
#[must_use]
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A primitive value that does not parse. Carries no copy of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct PrimitiveError {
    /// The FHIR type that was expected (`date`, `dateTime`, `instant`, `time`).
    pub kind: &'static str,
    /// What is wrong, for humans.
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("Abc-1.2"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("é"));
        assert!(!is_valid_id("a/b"));
    }
}
