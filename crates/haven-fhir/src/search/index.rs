//! Index values and the conversion of FHIRPath results into them (the table in the module
//! docs of `search`).

use serde_json::{Map, Value};
use time::OffsetDateTime;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::ParamType;
use super::number::{Bounds, bounds};
use crate::fhirpath::reference::{self, Literal};
use crate::fhirpath::{Data, Item};
use crate::model::ResourceType;
use crate::primitives::{FhirDateTime, parse_date, parse_datetime, parse_instant};

/// One value a resource has for a search parameter: what the store indexes and queries
/// match against.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `normalized` is [`normalize_string`] of `exact`, for the default (starts-with,
    /// case- and accent-insensitive) match; `exact` is the text as written, for `:exact`.
    String {
        normalized: String,
        exact: String,
    },
    /// `text` (Coding.display, CodeableConcept.text, Identifier.type.text) is normalized like
    /// a string, for `:text`. `of_type` is the (system, code) of an Identifier's type, for
    /// `:of-type`.
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
        of_type: Option<(Option<String>, String)>,
    },
    /// `url` is the reference text (for canonicals, without `|version`); `target_type`, `id`
    /// and `version` are what a literal reference names; `identifier` is the
    /// `Reference.identifier` (system, value), for `:identifier`.
    Reference {
        target_type: Option<ResourceType>,
        id: Option<String>,
        version: Option<String>,
        url: Option<String>,
        identifier: Option<(Option<String>, Option<String>)>,
    },
    /// `[start_micros, end_micros)`, microseconds since the epoch, UTC; an open end of a
    /// Period is `i64::MIN` / `i64::MAX`.
    Date {
        start_micros: i64,
        end_micros: i64,
    },
    /// `value` is the decimal as written (`None` for a Range); the value lies in
    /// `[lower, upper)`.
    Number {
        value: Option<String>,
        lower: f64,
        upper: f64,
    },
    /// Like `Number`, plus the unit: `system` and `code` (UCUM, or ISO 4217 for Money) and
    /// the human `unit`.
    Quantity {
        value: Option<String>,
        lower: f64,
        upper: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri {
        value: String,
    },
    /// One value per component, in component order, all taken from the same element.
    Composite(Vec<IndexValue>),
}

/// The form strings are compared in by default (R4 `search.html#string`: case- and
/// accent-insensitive): lower case, accents removed (NFD, combining marks dropped),
/// whitespace runs collapsed to one space and trimmed. Query values must be normalized the
/// same way.
#[must_use]
pub fn normalize_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    let mut push = |c: char, out: &mut String| {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    };
    if s.is_ascii() {
        for c in s.chars() {
            push(c.to_ascii_lowercase(), &mut out);
        }
    } else {
        for c in s.chars().flat_map(char::to_lowercase).nfd() {
            if !is_combining_mark(c) {
                push(c, &mut out);
            }
        }
    }
    out
}

/// Appends the index values of `item` for a parameter of type `ty`.
pub(super) fn convert(ty: ParamType, item: &Item<'_>, out: &mut Vec<IndexValue>) {
    let type_name = item.type_name().unwrap_or("");
    match (item.data(), ty) {
        (Data::Object(map), _) => convert_object(ty, type_name, map, out),
        (Data::Primitive(Value::String(s)), _) => convert_text(ty, type_name, s, out),
        (Data::Primitive(Value::Bool(b)), ParamType::Token) => out.push(boolean(*b)),
        (Data::Boolean(b), ParamType::Token) => out.push(boolean(b)),
        (Data::Primitive(Value::Number(n)), ParamType::Number) => out.extend(number(n.as_str())),
        (Data::Primitive(Value::Number(n)), ParamType::Token) => {
            out.push(token(None, Some(n.as_str()), None));
        }
        _ => {}
    }
}

fn convert_text(ty: ParamType, type_name: &str, s: &str, out: &mut Vec<IndexValue>) {
    match ty {
        ParamType::String => push_string(s, out),
        ParamType::Token => out.push(token(None, Some(s), None)),
        ParamType::Uri => out.push(IndexValue::Uri {
            value: s.to_owned(),
        }),
        ParamType::Reference => {
            let (url, version) = match s.split_once('|') {
                Some((url, version)) if type_name == "canonical" => (url, Some(version.to_owned())),
                _ => (s, None),
            };
            out.push(IndexValue::Reference {
                target_type: None,
                id: None,
                version,
                url: Some(url.to_owned()),
                identifier: None,
            });
        }
        ParamType::Date => {
            // Only the date types: a date parameter may also select free text
            // (`performedString` in `clinical-date`), which is not a date.
            let parsed = match type_name {
                "date" => parse_date(s),
                "instant" => parse_instant(s),
                "dateTime" | "" => parse_datetime(s),
                _ => return,
            };
            if let Ok(dt) = parsed {
                out.push(IndexValue::Date {
                    start_micros: micros(dt.start()),
                    end_micros: micros(dt.end_exclusive()),
                });
            }
        }
        _ => {}
    }
}

fn convert_object(
    ty: ParamType,
    type_name: &str,
    map: &Map<String, Value>,
    out: &mut Vec<IndexValue>,
) {
    match (ty, type_name) {
        (ParamType::String, "HumanName") => {
            for key in ["family", "given", "prefix", "suffix", "text"] {
                strings(map, key, |s| push_string(s, out));
            }
        }
        (ParamType::String, "Address") => {
            for key in [
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
                "text",
            ] {
                strings(map, key, |s| push_string(s, out));
            }
        }
        (ParamType::Token, "Coding") => out.extend(coding(map)),
        (ParamType::Token, "CodeableConcept") => {
            for c in map
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.extend(c.as_object().and_then(coding));
            }
            if let Some(text) = str_field(map, "text") {
                out.push(token(None, None, Some(text)));
            }
        }
        (ParamType::Token, "Identifier") => {
            let kind = map.get("type").and_then(Value::as_object);
            let of_type = kind
                .and_then(|k| k.get("coding")?.as_array()?.first()?.as_object())
                .and_then(|c| {
                    Some((
                        str_field(c, "system").map(str::to_owned),
                        str_field(c, "code")?.to_owned(),
                    ))
                });
            let mut t = token(
                str_field(map, "system"),
                str_field(map, "value"),
                kind.and_then(|k| str_field(k, "text")),
            );
            if let IndexValue::Token { of_type: slot, .. } = &mut t {
                *slot = of_type;
            }
            if str_field(map, "system").is_some() || str_field(map, "value").is_some() {
                out.push(t);
            }
        }
        (ParamType::Token, "ContactPoint") => {
            if let Some(value) = str_field(map, "value") {
                out.push(token(str_field(map, "system"), Some(value), None));
            }
        }
        (ParamType::Reference, "Reference") => out.extend(reference(map)),
        (ParamType::Reference, "Attachment") => {
            if let Some(url) = str_field(map, "url") {
                out.push(IndexValue::Reference {
                    target_type: None,
                    id: None,
                    version: None,
                    url: Some(url.to_owned()),
                    identifier: None,
                });
            }
        }
        (ParamType::Reference, _) => {
            // An embedded resource (Bundle `composition`: `Bundle.entry[0].resource`).
            if let Some(rt) = str_field(map, "resourceType").and_then(ResourceType::parse) {
                let id = str_field(map, "id");
                out.push(IndexValue::Reference {
                    target_type: Some(rt),
                    id: id.map(str::to_owned),
                    version: None,
                    url: id.map(|id| format!("{rt}/{id}")),
                    identifier: None,
                });
            }
        }
        (ParamType::Date, "Period") => out.extend(period(map)),
        (ParamType::Date, "Timing") => {
            let events = map.get("event").and_then(Value::as_array);
            let mut any = false;
            for event in events.into_iter().flatten().filter_map(Value::as_str) {
                if let Ok(dt) = parse_datetime(event) {
                    any = true;
                    out.push(date_value(&dt, &dt));
                }
            }
            if !any {
                let bounds = map.get("repeat").and_then(|r| r.get("boundsPeriod"));
                out.extend(bounds.and_then(Value::as_object).and_then(period));
            }
        }
        (ParamType::Number | ParamType::Quantity, "Range") => out.extend(range(ty, map)),
        (ParamType::Quantity, "Money") => {
            if let Some(b) = number_field(map, "value") {
                out.push(quantity(
                    b,
                    Some("urn:iso:std:iso:4217"),
                    str_field(map, "currency"),
                    None,
                ));
            }
        }
        (ParamType::Quantity, _) if is_quantity(type_name) => {
            if let Some(b) = number_field(map, "value") {
                out.push(quantity(
                    b,
                    str_field(map, "system"),
                    str_field(map, "code"),
                    str_field(map, "unit"),
                ));
            }
        }
        _ => {}
    }
}

fn is_quantity(type_name: &str) -> bool {
    matches!(
        type_name,
        "Quantity" | "Age" | "Duration" | "Count" | "Distance" | "MoneyQuantity" | "SimpleQuantity"
    )
}

fn str_field<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

/// Each string of a single-or-array string field.
fn strings<'a>(map: &'a Map<String, Value>, key: &str, mut f: impl FnMut(&'a str)) {
    match map.get(key) {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(values)) => values.iter().filter_map(Value::as_str).for_each(f),
        _ => {}
    }
}

fn push_string(s: &str, out: &mut Vec<IndexValue>) {
    let normalized = normalize_string(s);
    if !normalized.is_empty() {
        out.push(IndexValue::String {
            normalized,
            exact: s.to_owned(),
        });
    }
}

fn token(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
    IndexValue::Token {
        system: system.map(str::to_owned),
        code: code.map(str::to_owned),
        text: text.map(normalize_string).filter(|t| !t.is_empty()),
        of_type: None,
    }
}

fn boolean(b: bool) -> IndexValue {
    token(None, Some(if b { "true" } else { "false" }), None)
}

fn coding(map: &Map<String, Value>) -> Option<IndexValue> {
    let (system, code, display) = (
        str_field(map, "system"),
        str_field(map, "code"),
        str_field(map, "display"),
    );
    (system.is_some() || code.is_some() || display.is_some()).then(|| token(system, code, display))
}

fn reference(map: &Map<String, Value>) -> Option<IndexValue> {
    let text = str_field(map, "reference");
    let (mut target_type, mut id, mut version) = (None, None, None);
    match text.map(reference::parse) {
        Some(Literal::Typed {
            target,
            id: i,
            version: v,
        }) => {
            target_type = Some(target);
            id = Some(i.to_owned());
            version = v.map(str::to_owned);
        }
        // A contained resource: its id is only meaningful inside this resource.
        Some(Literal::Contained(_) | Literal::Opaque) | None => {}
    }
    if target_type.is_none() {
        let declared = str_field(map, "type").map(|t| {
            t.strip_prefix("http://hl7.org/fhir/StructureDefinition/")
                .unwrap_or(t)
        });
        target_type = declared.and_then(ResourceType::parse);
    }
    let identifier = map.get("identifier").and_then(Value::as_object).map(|i| {
        (
            str_field(i, "system").map(str::to_owned),
            str_field(i, "value").map(str::to_owned),
        )
    });
    (text.is_some() || identifier.is_some()).then(|| IndexValue::Reference {
        target_type,
        id,
        version,
        url: text.map(str::to_owned),
        identifier,
    })
}

fn micros(t: OffsetDateTime) -> i64 {
    let micros = t.unix_timestamp_nanos() / 1000;
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

fn date_value(start: &FhirDateTime, end: &FhirDateTime) -> IndexValue {
    IndexValue::Date {
        start_micros: micros(start.start()),
        end_micros: micros(end.end_exclusive()),
    }
}

fn period(map: &Map<String, Value>) -> Option<IndexValue> {
    let start = str_field(map, "start").and_then(|s| parse_datetime(s).ok());
    let end = str_field(map, "end").and_then(|s| parse_datetime(s).ok());
    if start.is_none() && end.is_none() {
        return None;
    }
    Some(IndexValue::Date {
        start_micros: start.map_or(i64::MIN, |s| micros(s.start())),
        end_micros: end.map_or(i64::MAX, |e| micros(e.end_exclusive())),
    })
}

fn number(text: &str) -> Option<IndexValue> {
    let b = bounds(text)?;
    Some(IndexValue::Number {
        value: Some(b.text),
        lower: b.lower,
        upper: b.upper,
    })
}

fn number_field(map: &Map<String, Value>, key: &str) -> Option<Bounds> {
    match map.get(key)? {
        Value::Number(n) => bounds(n.as_str()),
        _ => None,
    }
}

fn quantity(b: Bounds, system: Option<&str>, code: Option<&str>, unit: Option<&str>) -> IndexValue {
    IndexValue::Quantity {
        value: Some(b.text),
        lower: b.lower,
        upper: b.upper,
        system: system.map(str::to_owned),
        code: code.map(str::to_owned),
        unit: unit.map(str::to_owned),
    }
}

/// A Range as one value from `low`'s lower bound to `high`'s upper bound (open ends
/// unbounded); for quantities the unit comes from `low`, else `high`.
fn range(ty: ParamType, map: &Map<String, Value>) -> Option<IndexValue> {
    let low = map.get("low").and_then(Value::as_object);
    let high = map.get("high").and_then(Value::as_object);
    let lower = low.and_then(|q| number_field(q, "value"));
    let upper = high.and_then(|q| number_field(q, "value"));
    if lower.is_none() && upper.is_none() {
        return None;
    }
    let lower = lower.map_or(f64::NEG_INFINITY, |b| b.lower);
    let upper = upper.map_or(f64::INFINITY, |b| b.upper);
    if ty == ParamType::Number {
        return Some(IndexValue::Number {
            value: None,
            lower,
            upper,
        });
    }
    let unit_of = low.filter(|q| q.contains_key("value")).or(high)?;
    Some(IndexValue::Quantity {
        value: None,
        lower,
        upper,
        system: str_field(unit_of, "system").map(str::to_owned),
        code: str_field(unit_of, "code").map(str::to_owned),
        unit: str_field(unit_of, "unit").map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_folded_for_search() {
        assert_eq!(normalize_string("Müller"), "muller");
        assert_eq!(normalize_string("  du   Marché\t"), "du marche");
        assert_eq!(normalize_string("ÅNGSTRÖM"), "angstrom");
        assert_eq!(normalize_string("Zoë O'Brien"), "zoe o'brien");
        assert_eq!(normalize_string("İstanbul"), "istanbul");
        assert_eq!(normalize_string("Peter\u{a0}James"), "peter james");
        assert_eq!(normalize_string(" \n "), "");
        assert_eq!(normalize_string("東京"), "東京");
    }
}
