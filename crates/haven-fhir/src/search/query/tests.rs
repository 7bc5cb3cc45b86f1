//! Unit tests of the search-query parser. Tables map one `name=value` occurrence to the
//! values it converts to, or to the kind of problem it raises; chains, `_has`, result
//! parameters and system-level searches have tests of their own.

mod chains;
mod criteria;
mod results;

use super::*;

fn ty(name: &str) -> ResourceType {
    ResourceType::parse(name).unwrap()
}

fn param(on: &str, code: &str) -> &'static SearchParam {
    definitions().search_param(ty(on), code).unwrap()
}

const BASE: &str = "https://ehr.example/fhir";

/// Parses `pairs` on `on` (`None`: system level), with this server's base set.
fn run(on: Option<&str>, pairs: &[(&str, &str)]) -> SearchRequest {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    let options = ParseOptions {
        base_url: Some(BASE),
    };
    parse(on.map(ty), &pairs, &options)
}

/// The criterion of a single occurrence, or its problem.
fn one(on: &str, name: &str, value: &str) -> Result<Criterion, Problem> {
    let mut request = run(Some(on), &[(name, value)]);
    match (request.criteria.pop(), request.problems.pop()) {
        (Some(criterion), None) => {
            assert_eq!(request.applied, [(name.to_owned(), value.to_owned())]);
            Ok(criterion)
        }
        (None, Some(problem)) => {
            assert!(request.applied.is_empty(), "{name}={value}");
            assert_eq!(problem.name, name);
            Err(problem)
        }
        other => panic!("{name}={value}: {other:?}"),
    }
}

/// The values of a plain `Match` (not negated).
fn values(on: &str, name: &str, value: &str) -> Vec<SearchValue> {
    match one(on, name, value) {
        Ok(Criterion::Match {
            values,
            negated: false,
            ..
        }) => values,
        other => panic!("{on}?{name}={value}: {other:?}"),
    }
}

/// The kind of problem a single occurrence raises; its message must read well.
fn problem(on: &str, name: &str, value: &str) -> ProblemKind {
    match one(on, name, value) {
        Err(problem) => {
            assert_readable(&problem.message);
            problem.kind
        }
        Ok(criterion) => panic!("{on}?{name}={value} parsed: {criterion:?}"),
    }
}

/// Messages are sentences for an OperationOutcome: no Rust debug output.
fn assert_readable(message: &str) {
    assert!(!message.is_empty());
    assert!(!message.contains("  "), "{message}");
    for debug in ["Some(", "None", "ResourceType(", "\\\"", "{", "Fail"] {
        assert!(!message.contains(debug), "{message}");
    }
}

fn string(text: &str, mode: StringMatch) -> SearchValue {
    SearchValue::String {
        text: text.to_owned(),
        mode,
    }
}

fn token(system: Option<&str>, code: Option<&str>) -> SearchValue {
    SearchValue::Token {
        system: system.map(str::to_owned),
        code: code.map(str::to_owned),
    }
}

fn reference(target: Option<&str>, id: &str, version: Option<&str>) -> SearchValue {
    SearchValue::Reference {
        target_type: target.map(ty),
        id: id.to_owned(),
        version: version.map(str::to_owned),
    }
}

/// Microseconds of a UTC date-time written `YYYY-MM-DDThh:mm:ss`.
fn at(text: &str) -> i64 {
    let t = crate::primitives::parse_datetime(&format!("{text}Z")).unwrap();
    i64::try_from(t.start().unix_timestamp_nanos() / 1000).unwrap()
}

fn date(prefix: Prefix, start: &str, end: &str) -> SearchValue {
    SearchValue::Date {
        prefix,
        start_micros: at(start),
        end_micros: at(end),
    }
}

fn number(prefix: Prefix, value: &str, lower: f64, upper: f64) -> SearchValue {
    SearchValue::Number {
        prefix,
        value: value.to_owned(),
        lower,
        upper,
    }
}

fn quantity(
    prefix: Prefix,
    value: &str,
    (lower, upper): (f64, f64),
    system: Option<&str>,
    code: Option<&str>,
) -> SearchValue {
    SearchValue::Quantity {
        prefix,
        value: value.to_owned(),
        lower,
        upper,
        system: system.map(str::to_owned),
        code: code.map(str::to_owned),
    }
}
