//! `date`, `dateTime`, `instant` and `time`, plus the looser form used by date search.
//!
//! Values without a timezone (dates, and search values without one) are taken to be UTC when
//! turned into instants: R4 leaves their zone to the server, and Haven's servers run in UTC.

use std::fmt;

use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

use super::PrimitiveError;

/// How much of a date/time was given. A value denotes the whole period of that size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    Year,
    Month,
    Day,
    /// `hh:mm` without seconds: only produced by [`parse_search_datetime`].
    Minute,
    Second,
    /// Fractional seconds with this many digits (at most 9 are kept).
    Fraction(u8),
}

/// Timezone as written, kept so that formatting reproduces the input (`Z` vs `+00:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Zone {
    None,
    Z,
    Offset {
        negative: bool,
        hours: u8,
        minutes: u8,
    },
}

/// A parsed `date`, `dateTime` or `instant`: the written fields plus their precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FhirDateTime {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    nanos: u32,
    precision: Precision,
    zone: Zone,
}

impl FhirDateTime {
    /// How much of the value was given.
    #[must_use]
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether a timezone was written (`Z` or an offset).
    #[must_use]
    pub fn has_timezone(&self) -> bool {
        self.zone != Zone::None
    }

    /// First instant of the period, in UTC. Values without a timezone are read as UTC.
    /// Saturates at the limits of [`PrimitiveDateTime`] (years ±9999).
    #[must_use]
    pub fn start(&self) -> OffsetDateTime {
        to_utc(self.local_start(), self.offset())
    }

    /// First instant *after* the period, in UTC: the period is `start() .. end_exclusive()`.
    #[must_use]
    pub fn end_exclusive(&self) -> OffsetDateTime {
        let start = self.local_start();
        let end = match self.precision {
            Precision::Year => first_of_month(i32::from(self.year) + 1, 1),
            Precision::Month if self.month == 12 => first_of_month(i32::from(self.year) + 1, 1),
            Precision::Month => first_of_month(i32::from(self.year), self.month + 1),
            Precision::Day => start.checked_add(Duration::DAY),
            Precision::Minute => start.checked_add(Duration::MINUTE),
            Precision::Second => start.checked_add(Duration::SECOND),
            Precision::Fraction(digits) => {
                let step = 10_i64.pow(9 - u32::from(digits.min(9)));
                start.checked_add(Duration::nanoseconds(step))
            }
        };
        to_utc(end.unwrap_or(PrimitiveDateTime::MAX), self.offset())
    }

    /// Last instant of the period (one nanosecond before [`Self::end_exclusive`]), in UTC.
    #[must_use]
    pub fn end(&self) -> OffsetDateTime {
        let end = self.end_exclusive();
        end.checked_sub(Duration::NANOSECOND).unwrap_or(end)
    }

    fn offset(&self) -> UtcOffset {
        match self.zone {
            Zone::None | Zone::Z => UtcOffset::UTC,
            Zone::Offset {
                negative,
                hours,
                minutes,
            } => {
                let sign = if negative { -1 } else { 1 };
                // Parsing limited hours to 14 and minutes to 59, always in range.
                UtcOffset::from_hms(sign * hours.cast_signed(), sign * minutes.cast_signed(), 0)
                    .unwrap_or(UtcOffset::UTC)
            }
        }
    }

    fn local_start(&self) -> PrimitiveDateTime {
        let date = calendar_date(self.year, self.month, self.day).unwrap_or(Date::MIN);
        // A leap second (ss = 60) is read as the first instant of the next minute.
        let (second, leap) = if self.second == 60 {
            (59, true)
        } else {
            (self.second, false)
        };
        let time = Time::from_hms_nano(self.hour, self.minute, second, self.nanos)
            .unwrap_or(Time::MIDNIGHT);
        let at = PrimitiveDateTime::new(date, time);
        if leap {
            at.replace_nanosecond(0)
                .ok()
                .and_then(|t| t.checked_add(Duration::SECOND))
                .unwrap_or(PrimitiveDateTime::MAX)
        } else {
            at
        }
    }
}

fn first_of_month(year: i32, month: u8) -> Option<PrimitiveDateTime> {
    let month = Month::try_from(month).ok()?;
    Date::from_calendar_date(year, month, 1)
        .ok()
        .map(|d| d.midnight())
}

fn to_utc(local: PrimitiveDateTime, offset: UtcOffset) -> OffsetDateTime {
    local
        .assume_offset(offset)
        .checked_to_offset(UtcOffset::UTC)
        .unwrap_or_else(|| {
            if offset.is_negative() {
                PrimitiveDateTime::MAX.assume_utc()
            } else {
                PrimitiveDateTime::MIN.assume_utc()
            }
        })
}

fn calendar_date(year: u16, month: u8, day: u8) -> Option<Date> {
    let month = Month::try_from(month).ok()?;
    Date::from_calendar_date(i32::from(year), month, day).ok()
}

impl fmt::Display for FhirDateTime {
    /// Formats the value as it was written (fractions beyond 9 digits are dropped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        if self.precision == Precision::Year {
            return self.fmt_zone(f);
        }
        write!(f, "-{:02}", self.month)?;
        if self.precision == Precision::Month {
            return self.fmt_zone(f);
        }
        write!(f, "-{:02}", self.day)?;
        if self.precision == Precision::Day {
            return self.fmt_zone(f);
        }
        write!(f, "T{:02}:{:02}", self.hour, self.minute)?;
        if self.precision != Precision::Minute {
            write!(f, ":{:02}", self.second)?;
        }
        if let Precision::Fraction(digits) = self.precision {
            let text = format!("{:09}", self.nanos);
            write!(f, ".{}", &text[..usize::from(digits.min(9))])?;
        }
        self.fmt_zone(f)
    }
}

impl FhirDateTime {
    fn fmt_zone(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.zone {
            Zone::None => Ok(()),
            Zone::Z => f.write_str("Z"),
            Zone::Offset {
                negative,
                hours,
                minutes,
            } => {
                let sign = if negative { '-' } else { '+' };
                write!(f, "{sign}{hours:02}:{minutes:02}")
            }
        }
    }
}

/// A parsed FHIR `time` (`hh:mm:ss` with optional fraction): a time of day, no zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FhirTime {
    hour: u8,
    minute: u8,
    second: u8,
    nanos: u32,
    fraction_digits: u8,
}

impl FhirTime {
    /// As a [`time::Time`]; a leap second (`:60`) becomes `:59.999999999`.
    #[must_use]
    pub fn to_time(&self) -> Time {
        let (second, nanos) = if self.second == 60 {
            (59, 999_999_999)
        } else {
            (self.second, self.nanos)
        };
        Time::from_hms_nano(self.hour, self.minute, second, nanos).unwrap_or(Time::MIDNIGHT)
    }

    /// [`Precision::Second`] or [`Precision::Fraction`].
    #[must_use]
    pub fn precision(&self) -> Precision {
        if self.fraction_digits == 0 {
            Precision::Second
        } else {
            Precision::Fraction(self.fraction_digits)
        }
    }
}

impl fmt::Display for FhirTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}:{:02}", self.hour, self.minute, self.second)?;
        if self.fraction_digits > 0 {
            let text = format!("{:09}", self.nanos);
            write!(f, ".{}", &text[..usize::from(self.fraction_digits)])?;
        }
        Ok(())
    }
}

/// What a parser accepts after the date part.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `date`: YYYY, YYYY-MM or YYYY-MM-DD, nothing else.
    Date,
    /// `dateTime`: a date, or a full date with `Thh:mm:ss[.f]` and a mandatory zone.
    DateTime,
    /// `instant`: full date, seconds and zone required.
    Instant,
    /// Search values: any left-to-right prefix down to minutes, zone optional.
    Search,
}

/// Parses a FHIR `date` (`2023`, `2023-02`, `2023-02-28`).
///
/// # Errors
/// When `s` is not a valid date, including impossible days such as `2023-02-29`.
pub fn parse_date(s: &str) -> Result<FhirDateTime, PrimitiveError> {
    parse(s, Form::Date, "date")
}

/// Parses a FHIR `dateTime`: a `date`, or `YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)`.
///
/// # Errors
/// When `s` is not a valid dateTime (R4 requires seconds and a zone once a time is given).
pub fn parse_datetime(s: &str) -> Result<FhirDateTime, PrimitiveError> {
    parse(s, Form::DateTime, "dateTime")
}

/// Parses a FHIR `instant`: `YYYY-MM-DDThh:mm:ss[.fff](Z|±hh:mm)`, all parts required.
///
/// # Errors
/// When `s` is not a valid instant.
pub fn parse_instant(s: &str) -> Result<FhirDateTime, PrimitiveError> {
    parse(s, Form::Instant, "instant")
}

/// Parses a date search value (R4 `search.html#date`): like a dateTime, but any precision
/// down to minutes (`2023-01-02T10:30`) is allowed and the zone is optional (UTC assumed).
///
/// # Errors
/// When `s` is not such a value.
pub fn parse_search_datetime(s: &str) -> Result<FhirDateTime, PrimitiveError> {
    parse(s, Form::Search, "date search value")
}

/// Parses a FHIR `time`: `hh:mm:ss[.fff]`, hours 00-23.
///
/// # Errors
/// When `s` is not a valid time.
pub fn parse_time(s: &str) -> Result<FhirTime, PrimitiveError> {
    let err = |reason| PrimitiveError {
        kind: "time",
        reason,
    };
    let mut c = Cursor {
        s: s.as_bytes(),
        pos: 0,
    };
    let (hour, minute) = c.hour_minute().ok_or(err("expected hh:mm:ss"))?;
    let (second, nanos, fraction_digits) = c.seconds().ok_or(err("expected hh:mm:ss"))?;
    if !c.done() {
        return Err(err("unexpected characters after the time"));
    }
    Ok(FhirTime {
        hour,
        minute,
        second,
        nanos,
        fraction_digits,
    })
}

fn parse(s: &str, form: Form, kind: &'static str) -> Result<FhirDateTime, PrimitiveError> {
    let err = |reason| PrimitiveError { kind, reason };
    let mut c = Cursor {
        s: s.as_bytes(),
        pos: 0,
    };
    let year = c.digits(4).ok_or(err("expected a four-digit year"))?;
    if year == 0 {
        return Err(err("year 0000 does not exist"));
    }
    let mut v = FhirDateTime {
        year: u16::try_from(year).map_err(|_| err("year out of range"))?,
        month: 1,
        day: 1,
        hour: 0,
        minute: 0,
        second: 0,
        nanos: 0,
        precision: Precision::Year,
        zone: Zone::None,
    };
    if form != Form::Instant && c.done() {
        return Ok(v);
    }
    v.month = c
        .dash_two_digits()
        .filter(|m| (1..=12).contains(m))
        .ok_or(err("expected -MM with month 01-12"))?;
    v.precision = Precision::Month;
    if form != Form::Instant && c.done() {
        return Ok(v);
    }
    v.day = c.dash_two_digits().ok_or(err("expected -DD"))?;
    if calendar_date(v.year, v.month, v.day).is_none() {
        return Err(err("no such day in that month"));
    }
    v.precision = Precision::Day;
    if form == Form::Date || (form != Form::Instant && c.done()) {
        return if c.done() {
            Ok(v)
        } else {
            Err(err("unexpected characters after the date"))
        };
    }
    if !c.eat(b'T') {
        return Err(err("expected 'T' before the time"));
    }
    (v.hour, v.minute) = c
        .hour_minute()
        .ok_or(err("expected hh:mm:ss with hour 00-23"))?;
    v.precision = Precision::Minute;
    if form != Form::Search || c.peek() == Some(b':') {
        let (second, nanos, digits) = c.seconds().ok_or(err("expected :ss with seconds 00-60"))?;
        (v.second, v.nanos) = (second, nanos);
        v.precision = if digits == 0 {
            Precision::Second
        } else {
            Precision::Fraction(digits)
        };
    }
    if form == Form::Search && c.done() {
        return Ok(v);
    }
    v.zone = c.zone().ok_or(err(
        "expected a timezone: Z or +hh:mm / -hh:mm (up to 14:00)",
    ))?;
    if !c.done() {
        return Err(err("unexpected characters after the timezone"));
    }
    Ok(v)
}

/// A byte cursor over ASCII input; any non-matching byte (including UTF-8) fails the parse.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.pos == self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn digits(&mut self, n: usize) -> Option<u32> {
        let bytes = self.s.get(self.pos..self.pos + n)?;
        if !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos += n;
        Some(
            bytes
                .iter()
                .fold(0, |acc, b| acc * 10 + u32::from(b - b'0')),
        )
    }

    fn two(&mut self) -> Option<u8> {
        self.digits(2).and_then(|d| u8::try_from(d).ok())
    }

    fn dash_two_digits(&mut self) -> Option<u8> {
        if !self.eat(b'-') {
            return None;
        }
        self.two()
    }

    fn hour_minute(&mut self) -> Option<(u8, u8)> {
        let hour = self.two().filter(|h| *h <= 23)?;
        if !self.eat(b':') {
            return None;
        }
        let minute = self.two().filter(|m| *m <= 59)?;
        Some((hour, minute))
    }

    /// `:ss` and an optional `.fraction`: (second, nanoseconds, fraction digits kept, max 9).
    fn seconds(&mut self) -> Option<(u8, u32, u8)> {
        if !self.eat(b':') {
            return None;
        }
        let second = self.two().filter(|s| *s <= 60)?;
        if !self.eat(b'.') {
            return Some((second, 0, 0));
        }
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let all = &self.s[start..self.pos];
        if all.is_empty() {
            return None;
        }
        let kept = &all[..all.len().min(9)];
        let mut nanos = kept
            .iter()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
        for _ in kept.len()..9 {
            nanos *= 10;
        }
        Some((second, nanos, u8::try_from(kept.len()).ok()?))
    }

    fn zone(&mut self) -> Option<Zone> {
        if self.eat(b'Z') {
            return Some(Zone::Z);
        }
        let negative = match self.peek()? {
            b'+' => false,
            b'-' => true,
            _ => return None,
        };
        self.pos += 1;
        let hours = self.two()?;
        if !self.eat(b':') {
            return None;
        }
        let minutes = self.two().filter(|m| *m <= 59)?;
        // R4 regex: (0[0-9]|1[0-3]):[0-5][0-9] | 14:00
        if hours > 14 || (hours == 14 && minutes != 0) {
            return None;
        }
        Some(Zone::Offset {
            negative,
            hours,
            minutes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn dates_at_each_precision() {
        let y = parse_date("2023").unwrap();
        assert_eq!(y.precision(), Precision::Year);
        assert_eq!(y.start(), datetime!(2023-01-01 0:00 UTC));
        assert_eq!(y.end_exclusive(), datetime!(2024-01-01 0:00 UTC));
        assert_eq!(y.end(), datetime!(2023-12-31 23:59:59.999_999_999 UTC));
        let m = parse_date("2023-12").unwrap();
        assert_eq!(m.precision(), Precision::Month);
        assert_eq!(m.end_exclusive(), datetime!(2024-01-01 0:00 UTC));
        let m = parse_date("2024-02").unwrap();
        assert_eq!(m.end_exclusive(), datetime!(2024-03-01 0:00 UTC));
        let d = parse_date("2024-02-29").unwrap();
        assert_eq!(d.precision(), Precision::Day);
        assert_eq!(d.end_exclusive(), datetime!(2024-03-01 0:00 UTC));
        assert!(!d.has_timezone());
    }

    #[test]
    fn impossible_calendar_dates_are_rejected() {
        for bad in [
            "2023-02-29",
            "2023-02-30",
            "2100-02-29",
            "2023-04-31",
            "2023-13-01",
            "2023-00-10",
            "2023-01-00",
            "2023-01-32",
            "0000",
            "0000-01-01",
            "23",
            "2023-1-01",
            "2023-01-1",
            "2023/01/01",
            " 2023",
            "2023 ",
            "",
            "2023-",
            "2023-01-01T",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
        assert!(parse_date("2000-02-29").is_ok());
        assert!(parse_date("2024-02-29").is_ok());
    }

    #[test]
    fn datetimes_follow_the_r4_grammar() {
        let v = parse_datetime("2015-02-07T13:28:17-05:00").unwrap();
        assert_eq!(v.precision(), Precision::Second);
        assert_eq!(v.start(), datetime!(2015-02-07 18:28:17 UTC));
        assert_eq!(v.end_exclusive(), datetime!(2015-02-07 18:28:18 UTC));
        let v = parse_datetime("2017-01-01T00:00:00.123Z").unwrap();
        assert_eq!(v.precision(), Precision::Fraction(3));
        assert_eq!(v.end_exclusive(), datetime!(2017-01-01 0:00:00.124 UTC));
        assert!(parse_datetime("2018").is_ok());
        assert!(parse_datetime("2018-05-06").is_ok());
        for bad in [
            "2015-02-07T13:28:17",  // zone required with a time
            "2015-02-07T13:28Z",    // seconds required
            "2015-02-07T24:00:00Z", // no hour 24
            "2015-02-07T23:60:00Z",
            "2015-02-07T23:59:61Z",
            "2015-02-07T13:28:17+15:00",
            "2015-02-07T13:28:17+14:30",
            "2015-02-07T13:28:17+0500",
            "2015-02-07T13:28:17.Z",
            "2015-02T13:28:17Z",
            "2015-02-07t13:28:17Z",
            "2015-02-07T13:28:17z",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
        assert!(parse_datetime("2015-02-07T13:28:17+14:00").is_ok());
        assert!(parse_datetime("2016-12-31T23:59:60Z").is_ok());
    }

    #[test]
    fn instants_need_every_part() {
        assert!(parse_instant("2015-02-07T13:28:17.239+02:00").is_ok());
        for bad in ["2015", "2015-02", "2015-02-07", "2015-02-07T13:28:17"] {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn search_values_allow_minutes_and_no_zone() {
        let v = parse_search_datetime("2023-01-02T10:30").unwrap();
        assert_eq!(v.precision(), Precision::Minute);
        assert_eq!(v.start(), datetime!(2023-01-02 10:30 UTC));
        assert_eq!(v.end_exclusive(), datetime!(2023-01-02 10:31 UTC));
        assert_eq!(v.to_string(), "2023-01-02T10:30");
        assert!(parse_search_datetime("2023-01-02T10:30+01:00").is_ok());
        assert!(parse_search_datetime("2023-01-02T10:30:05").is_ok());
        assert!(parse_search_datetime("2023-01-02T10").is_err());
        assert!(parse_datetime("2023-01-02T10:30").is_err());
    }

    #[test]
    fn times() {
        let t = parse_time("13:28:17.5").unwrap();
        assert_eq!(t.to_string(), "13:28:17.5");
        assert_eq!(t.to_time(), time::macros::time!(13:28:17.5));
        assert_eq!(t.precision(), Precision::Fraction(1));
        for bad in [
            "24:00:00",
            "12:00",
            "12:60:00",
            "1:00:00",
            "12:00:00Z",
            "12:00:00.",
            "",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formatting_reproduces_the_input() {
        for s in [
            "2023",
            "2023-07",
            "2023-07-04",
            "2023-07-04T05:06:07Z",
            "2023-07-04T05:06:07.000+00:00",
            "2023-07-04T05:06:07-00:00",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59.999999999-13:59",
        ] {
            assert_eq!(parse_datetime(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn extremes_saturate_instead_of_panicking() {
        let v = parse_datetime("9999-12-31T23:59:59-13:00").unwrap();
        assert_eq!(v.start(), PrimitiveDateTime::MAX.assume_utc());
        let v = parse_date("9999").unwrap();
        assert_eq!(v.end_exclusive(), PrimitiveDateTime::MAX.assume_utc());
        let v = parse_datetime("0001-01-01T00:00:00+14:00").unwrap();
        assert_eq!(v.start().year(), 0);
    }
}
