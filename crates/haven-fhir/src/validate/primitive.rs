//! Checks of primitive values: JSON type, official regex, and what a regex cannot express
//! (calendar validity, integer ranges, base64 padding, the narrative `<div>`, 1 MB strings).

use serde_json::Value;

use super::structure::{Validator, json_kind};
use super::{IssueCode, Loc};
use crate::model::{Prim, TypeDef};
use crate::primitives;

/// R4 `datatypes.html#string`: "Strings SHALL NOT exceed 1MB in size".
const MAX_STRING_BYTES: usize = 1024 * 1024;

pub(super) fn check(
    v: &mut Validator<'_>,
    prim: Prim,
    def: &TypeDef,
    code: &str,
    value: &Value,
    loc: &Loc<'_>,
) {
    match prim {
        Prim::Boolean => {
            if !value.is_boolean() {
                let msg = format!(
                    "expected a JSON boolean (true or false), found {}",
                    json_kind(value)
                );
                v.issue(IssueCode::Structure, loc, msg);
            }
        }
        Prim::Integer | Prim::PositiveInt | Prim::UnsignedInt => {
            check_integer(v, prim, def, code, value, loc)
        }
        Prim::Decimal => {
            // JSON's number grammar is exactly the decimal regex, so the type check suffices.
            if !value.is_number() {
                let msg = format!(
                    "expected a JSON number for decimal, found {}",
                    json_kind(value)
                );
                v.issue(IssueCode::Structure, loc, msg);
            }
        }
        _ => {
            let Value::String(s) = value else {
                let msg = format!(
                    "expected a JSON string for {code}, found {}",
                    json_kind(value)
                );
                return v.issue(IssueCode::Structure, loc, msg);
            };
            check_string(v, prim, def, code, s, loc);
        }
    }
}

fn check_integer(
    v: &mut Validator<'_>,
    prim: Prim,
    def: &TypeDef,
    code: &str,
    value: &Value,
    loc: &Loc<'_>,
) {
    let Value::Number(n) = value else {
        let msg = format!(
            "expected a JSON number for {code}, found {}",
            json_kind(value)
        );
        return v.issue(IssueCode::Structure, loc, msg);
    };
    let text = n.as_str();
    if def.regex.as_ref().is_some_and(|rx| !rx.is_match(text)) {
        let msg = format!(
            "{code} must be a whole number written without fraction or exponent{}",
            match prim {
                Prim::PositiveInt => " and at least 1",
                Prim::UnsignedInt => " and not negative",
                _ => "",
            }
        );
        return v.issue(IssueCode::Value, loc, msg);
    }
    let min = if prim == Prim::PositiveInt {
        1
    } else if prim == Prim::UnsignedInt {
        0
    } else {
        i64::from(i32::MIN)
    };
    let in_range = text
        .parse::<i64>()
        .is_ok_and(|n| (min..=i64::from(i32::MAX)).contains(&n));
    if !in_range {
        let msg = format!("{code} out of range; allowed {min} to {}", i32::MAX);
        v.issue(IssueCode::Value, loc, msg);
    }
}

fn check_string(
    v: &mut Validator<'_>,
    prim: Prim,
    def: &TypeDef,
    code: &str,
    s: &str,
    loc: &Loc<'_>,
) {
    if s.is_empty() {
        let msg = "ele-1: empty strings are not allowed; omit the element instead".to_owned();
        return v.issue(IssueCode::Invariant, loc, msg);
    }
    if prim == Prim::StringLike && s.len() > MAX_STRING_BYTES {
        let msg = format!("{code} is longer than the 1 MB FHIR allows for strings");
        return v.issue(IssueCode::TooLong, loc, msg);
    }
    if def.regex.as_ref().is_some_and(|rx| !rx.is_match(s)) {
        let msg = format!("invalid {code}: {}", format_hint(code));
        return v.issue(IssueCode::Value, loc, msg);
    }
    let calendar = match prim {
        Prim::Date => primitives::parse_date(s).err(),
        Prim::DateTime => primitives::parse_datetime(s).err(),
        Prim::Instant => primitives::parse_instant(s).err(),
        Prim::Time => primitives::parse_time(s).err(),
        Prim::Base64Binary => {
            if !base64_padding_ok(s) {
                let msg =
                    "invalid base64Binary: '=' padding may only appear at the end (at most two)"
                        .to_owned();
                v.issue(IssueCode::Value, loc, msg);
            }
            None
        }
        Prim::Xhtml => {
            if !xhtml_div_ok(s) {
                let msg = "invalid xhtml: the narrative must be a single <div> element (starting with '<div' and ending with '</div>')".to_owned();
                v.issue(IssueCode::Value, loc, msg);
            }
            None
        }
        _ => None,
    };
    if let Some(err) = calendar {
        v.issue(IssueCode::Value, loc, err.to_string());
    }
}

/// What the official regex demands, in words (the regexes themselves are unreadable).
fn format_hint(code: &str) -> &'static str {
    match code {
        "id" => "must be 1-64 characters from A-Z, a-z, 0-9, '-' and '.'",
        "code" => "must not have leading, trailing or repeated whitespace",
        "uri" | "url" | "canonical" => "must not contain whitespace",
        "oid" => "must be 'urn:oid:' followed by a dotted numeric OID",
        "uuid" => "must be 'urn:uuid:' followed by a lower-case UUID",
        "date" => "must be YYYY, YYYY-MM or YYYY-MM-DD",
        "dateTime" => {
            "must be YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff] with a timezone (Z or +hh:mm)"
        }
        "instant" => "must be YYYY-MM-DDThh:mm:ss[.fff] with a timezone (Z or +hh:mm)",
        "time" => "must be hh:mm:ss[.fff] with hours 00-23",
        "base64Binary" => {
            "must be base64 (groups of four characters from A-Z, a-z, 0-9, '+', '/', '=')"
        }
        _ => "does not match the FHIR R4 format",
    }
}

/// After the regex (groups of four base64 characters), `=` may only end the data.
fn base64_padding_ok(s: &str) -> bool {
    let data: Vec<u8> = s.bytes().filter(|b| !b" \t\r\n".contains(b)).collect();
    match data.iter().position(|&b| b == b'=') {
        None => true,
        Some(first) => data.len() - first <= 2 && data[first..].iter().all(|&b| b == b'='),
    }
}

/// A basic shape check of `Narrative.div`; full XHTML validation is out of scope.
fn xhtml_div_ok(s: &str) -> bool {
    let s = s.trim();
    s.starts_with("<div")
        && s[4..].starts_with([' ', '>', '/', '\t', '\r', '\n'])
        && (s.ends_with("</div>") || s.ends_with("/>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_padding() {
        assert!(base64_padding_ok("QUJD"));
        assert!(base64_padding_ok("QUI="));
        assert!(base64_padding_ok("QQ=="));
        assert!(base64_padding_ok("QUJD\nQUJD"));
        assert!(!base64_padding_ok("Q==="));
        assert!(!base64_padding_ok("QQ==QUJD"));
    }

    #[test]
    fn xhtml_div() {
        assert!(xhtml_div_ok(
            r#"<div xmlns="http://www.w3.org/1999/xhtml">x</div>"#
        ));
        assert!(xhtml_div_ok("<div/>"));
        assert!(xhtml_div_ok(" <div>x</div>\n"));
        assert!(!xhtml_div_ok("<divx>x</divx>"));
        assert!(!xhtml_div_ok("<p>x</p>"));
        assert!(!xhtml_div_ok("<div>x"));
        assert!(!xhtml_div_ok("plain text"));
    }
}
