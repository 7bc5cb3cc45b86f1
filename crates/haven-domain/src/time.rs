//! `Timestamp`: the server's clock reading for `meta.lastUpdated`, with microsecond precision.
//!
//! Stored as integer microseconds since the Unix epoch (UTC) so both databases can index and
//! compare it cheaply; rendered as a FHIR `instant` (`2026-11-28T20:44:03.123456Z`).

use std::fmt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("'{0}' is not a valid instant: use e.g. 2026-01-31T12:00:00Z")]
    Invalid(String),
}

impl Timestamp {
    #[must_use]
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    #[must_use]
    pub fn from_micros(us: i64) -> Self {
        Self(us)
    }

    #[must_use]
    pub fn micros(self) -> i64 {
        self.0
    }

    #[must_use]
    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        let us = dt.unix_timestamp_nanos() / 1_000;
        Self(i64::try_from(us).unwrap_or(i64::MAX))
    }

    #[must_use]
    pub fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// The next representable instant: used so a resource's versions always have strictly
    /// increasing `lastUpdated`, even if the wall clock stepped back.
    #[must_use]
    pub fn succ(self) -> Self {
        Self(self.0.saturating_add(1))
    }

    /// The FHIR `instant` rendering, UTC with microseconds.
    #[must_use]
    pub fn to_instant_string(self) -> String {
        let dt = self.to_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.microsecond()
        )
    }

    /// The RFC 7231 HTTP-date for `Last-Modified` (whole seconds, GMT).
    #[must_use]
    pub fn to_http_date(self) -> String {
        const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let dt = self.to_datetime();
        format!(
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            DAYS[dt.weekday().number_days_from_monday() as usize],
            dt.day(),
            MONTHS[usize::from(u8::from(dt.month())) - 1],
            dt.year(),
            dt.hour(),
            dt.minute(),
            dt.second()
        )
    }

    /// Parses an RFC 3339 instant with a timezone (as `_since` requires).
    pub fn parse_instant(s: &str) -> Result<Self, TimestampError> {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(Self::from_datetime)
            .map_err(|_| TimestampError::Invalid(s.chars().take(40).collect()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_instant_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_instant_and_http_date() {
        let t = Timestamp::parse_instant("2026-11-28T20:44:03.123456Z").unwrap();
        assert_eq!(t.to_instant_string(), "2026-11-28T20:44:03.123456Z");
        assert_eq!(t.to_http_date(), "Sat, 28 Nov 2026 20:44:03 GMT");
        let u = Timestamp::parse_instant("2026-11-28T21:44:03.123456+01:00").unwrap();
        assert_eq!(t, u);
        assert!(t.succ() > t);
        assert!(Timestamp::parse_instant("2026-11-28").is_err());
    }
}
