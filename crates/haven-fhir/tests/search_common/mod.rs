//! Helpers shared by the extraction tests: resources from text, and expected index values.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use haven_fhir::search::{IndexValue, extract};
use haven_fhir::{ResourceType, definitions};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// Resources are parsed from text, as the server does, so decimals keep their written form
/// (`5.40`); `json!` would turn them into doubles first.
pub fn resource(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text).unwrap() {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}

pub fn values(resource: &Map<String, Value>, code: &str) -> Vec<IndexValue> {
    let ty = ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
    let param = definitions()
        .search_param(ty, code)
        .unwrap_or_else(|| panic!("{ty} has no parameter {code}"));
    extract(resource, param)
}

/// Checks each `(code, expected values)` row, reporting every mismatch at once.
#[track_caller]
pub fn check(resource: &Map<String, Value>, rows: Vec<(&str, Vec<IndexValue>)>) {
    let mut failures = Vec::new();
    for (code, expected) in rows {
        let actual = values(resource, code);
        if actual != expected {
            failures.push(format!(
                "{code}:\n  expected {expected:?}\n  actual   {actual:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

pub fn string(exact: &str, normalized: &str) -> IndexValue {
    IndexValue::String {
        normalized: normalized.to_owned(),
        exact: exact.to_owned(),
    }
}

pub fn token(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
    IndexValue::Token {
        system: system.map(str::to_owned),
        code: code.map(str::to_owned),
        text: text.map(str::to_owned),
        of_type: None,
    }
}

pub fn code(code: &str) -> IndexValue {
    token(None, Some(code), None)
}

pub fn reference(ty: &str, id: &str, version: Option<&str>, url: &str) -> IndexValue {
    IndexValue::Reference {
        target_type: ResourceType::parse(ty),
        id: Some(id.to_owned()),
        version: version.map(str::to_owned),
        url: Some(url.to_owned()),
        identifier: None,
    }
}

pub fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap()
}

pub fn date(start: OffsetDateTime, end: OffsetDateTime) -> IndexValue {
    IndexValue::Date {
        start_micros: micros(start),
        end_micros: micros(end),
    }
}

pub fn quantity(value: &str, lower: f64, upper: f64, code: &str, unit: Option<&str>) -> IndexValue {
    IndexValue::Quantity {
        value: Some(value.to_owned()),
        lower,
        upper,
        system: Some("http://unitsofmeasure.org".to_owned()),
        code: Some(code.to_owned()),
        unit: unit.map(str::to_owned),
    }
}

pub const LOINC: &str = "http://loinc.org";
