//! Property tests for the search-query parser: no input makes it panic or break its limits,
//! escaping round-trips, and converted numbers and dates keep their range invariants.

use haven_fhir::search::query::{
    Criterion, MAX_CRITERIA, MAX_VALUES_PER_PARAM, ParseOptions, Prefix, SearchRequest,
    SearchValue, StringMatch, parse,
};
use haven_fhir::{ResourceType, definitions};
use proptest::prelude::*;
use proptest::sample::select;

/// Pieces of parameter names, so random names reach chains, `_has`, modifiers and result
/// parameters rather than stopping at "unknown parameter".
const NAME_PARTS: &[&str] = &[
    "name",
    "family",
    "birthdate",
    "subject",
    "patient",
    "performer",
    "code",
    "value-quantity",
    "code-value-quantity",
    "probability",
    "url",
    "target",
    "focus",
    "organization",
    "partof",
    "general-practitioner",
    "identifier",
    "_id",
    "_lastUpdated",
    "_has",
    "_sort",
    "_count",
    "_include",
    "_revinclude",
    "_type",
    "_elements",
    "_summary",
    "_total",
    "_cursor",
    "_format",
    "_text",
    "near",
    "Patient",
    "Observation",
    "Organization",
    "Provenance",
    "Foo",
    ":",
    ".",
    ":exact",
    ":contains",
    ":missing",
    ":not",
    ":text",
    ":of-type",
    ":identifier",
    ":above",
    ":in",
    ":Patient",
    ":iterate",
    "*",
    "-",
];

const VALUE_PARTS: &[&str] = &[
    "2020",
    "2020-03-04",
    "T10:30",
    ":00Z",
    "+14:00",
    "ge",
    "xx",
    "-",
    "5.4",
    "1e999",
    "e",
    "|",
    "$",
    ",",
    "\\",
    "\\,",
    "\\|",
    "\\$",
    "\\\\",
    "Patient/1",
    "/_history/2",
    "https://ehr.example/fhir/",
    "http://loinc.org",
    "true",
    "a",
    "Müller",
    " ",
    ":",
    "*",
    "Observation:subject",
    "Patient:organization:Organization",
];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(select(NAME_PARTS), 0..9).prop_map(|parts| parts.concat()),
        "\\PC{0,24}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(select(VALUE_PARTS), 0..10).prop_map(|parts| parts.concat()),
        "\\PC{0,24}",
    ]
}

/// `None` (system level), or a type: mostly ones with chains and composites.
fn resource_type() -> impl Strategy<Value = Option<ResourceType>> {
    let all = definitions().resource_types().len();
    prop_oneof![
        Just(None),
        select(&["Patient", "Observation", "Provenance", "RiskAssessment"][..])
            .prop_map(ResourceType::parse),
        (0..all).prop_map(|i| Some(definitions().resource_types()[i])),
    ]
}

fn options() -> ParseOptions<'static> {
    ParseOptions {
        base_url: Some("https://ehr.example/fhir"),
    }
}

fn run(on: Option<&str>, name: &str, value: &str) -> SearchRequest {
    parse(
        on.and_then(ResourceType::parse),
        &[(name.to_owned(), value.to_owned())],
        &options(),
    )
}

fn check_value(value: &SearchValue) {
    match value {
        SearchValue::Number { lower, upper, .. } | SearchValue::Quantity { lower, upper, .. } => {
            assert!(lower <= upper, "{value:?}");
        }
        SearchValue::Date {
            start_micros,
            end_micros,
            ..
        } => assert!(start_micros < end_micros, "{value:?}"),
        SearchValue::String { text, .. } | SearchValue::TokenText(text) => {
            assert!(!text.is_empty());
        }
        SearchValue::Composite(parts) => {
            assert!(parts.len() >= 2, "{value:?}");
            parts.iter().for_each(check_value);
        }
        _ => {}
    }
}

fn check_criterion(criterion: &Criterion) {
    match criterion {
        Criterion::Match { values, .. } => {
            assert!((1..=MAX_VALUES_PER_PARAM).contains(&values.len()));
            values.iter().for_each(check_value);
        }
        Criterion::Missing { .. } => {}
        Criterion::Chain { param, targets } => {
            assert!(!targets.is_empty());
            for (ty, inner) in targets {
                assert!(param.targets.is_empty() || param.targets.contains(ty));
                check_criterion(inner);
            }
        }
        Criterion::Has { inner, .. } => check_criterion(inner),
    }
}

/// A value that parses back to exactly `text`.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | ',' | '$' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Dates of every search precision, each inside the one before: `Y`, `Y-M`, `Y-M-D`,
/// `Y-M-DThh:mm`, `Y-M-DThh:mm:ss`, and the same instant with `Z` (no zone is UTC too).
fn nested_dates() -> impl Strategy<Value = Vec<String>> {
    (1u16..=9999, 1u8..=12, 1u8..=28, 0u8..24, 0u8..60, 0u8..60).prop_map(|(y, mo, d, h, mi, s)| {
        vec![
            format!("{y:04}"),
            format!("{y:04}-{mo:02}"),
            format!("{y:04}-{mo:02}-{d:02}"),
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}"),
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}"),
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_query_parses_within_its_limits(
        on in resource_type(),
        pairs in prop::collection::vec((name(), value()), 0..8),
    ) {
        let request = parse(on, &pairs, &options());
        prop_assert!(request.criteria.len() <= MAX_CRITERIA);
        prop_assert!(request.applied.len() + request.problems.len() <= pairs.len());
        for criterion in &request.criteria {
            check_criterion(criterion);
        }
        for problem in &request.problems {
            prop_assert!(!problem.message.is_empty());
            prop_assert!(pairs.iter().any(|(n, _)| *n == problem.name));
        }
        for applied in &request.applied {
            prop_assert!(pairs.contains(applied));
        }
    }

    #[test]
    fn escaped_alternatives_round_trip(
        alternatives in prop::collection::vec("[a-z,$|\\\\ é]{1,8}", 1..=20),
    ) {
        let value: Vec<String> = alternatives.iter().map(|a| escape(a)).collect();
        let request = run(Some("Patient"), "name:exact", &value.join(","));
        prop_assert!(request.problems.is_empty(), "{:?}", request.problems);
        let expected: Vec<SearchValue> = alternatives
            .iter()
            .map(|a| SearchValue::String { text: a.clone(), mode: StringMatch::Exact })
            .collect();
        let round_trips = matches!(
            &request.criteria[..],
            [Criterion::Match { values, .. }] if *values == expected
        );
        prop_assert!(round_trips, "{:?}", request.criteria);
        // A token code escapes the same way, `|` included.
        let request = run(Some("Observation"), "code", &value.join(","));
        let codes: Vec<Option<String>> = match &request.criteria[..] {
            [Criterion::Match { values, .. }] => values
                .iter()
                .map(|v| match v {
                    SearchValue::Token { system: None, code } => code.clone(),
                    _ => None,
                })
                .collect(),
            other => panic!("{other:?}"),
        };
        prop_assert_eq!(codes, alternatives.into_iter().map(Some).collect::<Vec<_>>());
    }

    #[test]
    fn a_number_lies_in_its_range(
        text in "-?[0-9]{1,8}(\\.[0-9]{1,6})?",
        prefix in select(&[("", Prefix::Eq), ("gt", Prefix::Gt), ("le", Prefix::Le), ("ap", Prefix::Ap)][..]),
    ) {
        let request = run(Some("RiskAssessment"), "probability", &format!("{}{text}", prefix.0));
        let [Criterion::Match { values, .. }] = &request.criteria[..] else {
            panic!("{:?}", request.problems);
        };
        let [SearchValue::Number { prefix: p, value, lower, upper }] = &values[..] else {
            panic!("{values:?}");
        };
        let exact: f64 = text.parse().unwrap();
        prop_assert_eq!(*p, prefix.1);
        prop_assert_eq!(value, &text);
        prop_assert!(*lower <= exact && exact < *upper, "{} not in [{}, {})", exact, lower, upper);
    }

    #[test]
    fn date_ranges_are_non_empty_and_nested_by_precision(
        dates in nested_dates(),
        prefix in select(&["", "ge", "lt", "ap"][..]),
    ) {
        let mut outer: Option<(i64, i64)> = None;
        for date in &dates {
            let request = run(Some("Patient"), "birthdate", &format!("{prefix}{date}"));
            let [Criterion::Match { values, .. }] = &request.criteria[..] else {
                panic!("{date}: {:?}", request.problems);
            };
            let [SearchValue::Date { start_micros, end_micros, .. }] = values[..] else {
                panic!("{values:?}");
            };
            prop_assert!(start_micros < end_micros, "{}", date);
            if let Some((start, end)) = outer {
                prop_assert!(start <= start_micros && end_micros <= end, "{} escapes its parent", date);
            }
            outer = Some((start_micros, end_micros));
        }
    }
}
