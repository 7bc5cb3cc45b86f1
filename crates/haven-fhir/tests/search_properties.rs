//! Property tests for FHIRPath and extraction: no input makes them panic, and the values they
//! produce keep their invariants.

use haven_fhir::fhirpath::Expression;
use haven_fhir::search::{IndexValue, extract_all};
use haven_fhir::{ResourceType, definitions};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value};

/// Keys that R4 expressions navigate, so random documents actually reach the converters.
const KEYS: &[&str] = &[
    "resourceType",
    "id",
    "name",
    "given",
    "family",
    "text",
    "value",
    "valueQuantity",
    "valueString",
    "valueCodeableConcept",
    "valueRange",
    "valuePeriod",
    "valueDateTime",
    "code",
    "coding",
    "system",
    "display",
    "reference",
    "subject",
    "patient",
    "component",
    "period",
    "start",
    "end",
    "extension",
    "url",
    "contained",
    "entry",
    "resource",
    "event",
    "low",
    "high",
    "deceasedBoolean",
    "deceasedDateTime",
    "telecom",
    "identifier",
    "type",
    "effectiveDateTime",
    "effectivePeriod",
    "meta",
    "lastUpdated",
    "tag",
    "onsetAge",
    "onsetDateTime",
    "onsetRange",
    "birthDate",
    "address",
    "city",
    "line",
    "status",
    "performer",
    "useContext",
    "totalGross",
    "currency",
    "prediction",
    "probabilityDecimal",
    "probabilityRange",
    "scheduledTiming",
    "activity",
    "detail",
    "repeat",
    "boundsPeriod",
    "referenceSeq",
    "chromosome",
    "variant",
    "_given",
    "class",
    "unit",
    "actor",
    "medicationReference",
    "medicationCodeableConcept",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "Patient/1",
    "#c",
    "#",
    "urn:uuid:x",
    "http://a/Observation/1/_history/2",
    "Patient",
    "2024",
    "2024-02-30",
    "2024-01-01T10:00:00Z",
    "2024-01-01T10:00:00+14:00",
    "9999-12-31T23:59:60Z",
    "Müller",
    "5.40",
    "true",
    "a|b",
    "Group/g",
    "c",
];

/// A JSON number from text (kept exactly, as `arbitrary_precision` does for request bodies).
fn number() -> impl Strategy<Value = Value> {
    "-?[0-9]{1,45}(\\.[0-9]{1,25})?([eE][-+]?[0-9]{1,3})?"
        .prop_filter_map("valid JSON number", |text| serde_json::from_str(&text).ok())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        select(STRINGS).prop_map(|s| Value::String(s.to_owned())),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((select(KEYS), inner), 0..7).prop_map(|entries| {
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect(),
                )
            }),
        ]
    })
}

/// A random document posing as a resource of a random concrete type.
fn resource() -> impl Strategy<Value = Map<String, Value>> {
    let types = definitions().resource_types().len();
    (
        0..types,
        prop::collection::vec((select(KEYS), json_value()), 0..10),
    )
        .prop_map(|(i, entries)| {
            let mut map: Map<String, Value> = entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            let ty = definitions().resource_types()[i];
            map.insert("resourceType".into(), Value::String(ty.as_str().into()));
            map
        })
}

/// Expression-like text: fragments of the FHIRPath grammar in random order.
fn expression_text() -> impl Strategy<Value = String> {
    const FRAGMENTS: &[&str] = &[
        "Patient",
        "Observation",
        "Resource",
        ".",
        "name",
        "value",
        "code",
        "coding",
        "(",
        ")",
        "where(",
        "resolve()",
        " is ",
        " as ",
        " | ",
        " = ",
        " != ",
        " and ",
        " or ",
        "'x'",
        "1",
        "2.5",
        "[",
        "]",
        "0",
        "exists()",
        "empty()",
        "first()",
        "last()",
        "not()",
        "hasValue()",
        "%resource",
        "$this",
        "ofType(",
        "as(",
        "is(",
        "Quantity",
        "Patient",
        "extension('u')",
        "extension",
        "{}",
        "true",
        "subject",
        "component",
        " ",
        ",",
    ];
    prop_oneof![
        prop::collection::vec(select(FRAGMENTS), 0..24).prop_map(|parts| parts.concat()),
        "\\PC{0,40}",
    ]
}

fn check_invariants(value: &IndexValue) {
    match value {
        IndexValue::Number { lower, upper, .. } | IndexValue::Quantity { lower, upper, .. } => {
            assert!(lower <= upper, "{value:?}");
        }
        IndexValue::String { normalized, .. } => {
            assert!(!normalized.is_empty());
            assert_eq!(normalized.trim(), normalized);
        }
        IndexValue::Composite(parts) => {
            assert!(parts.len() >= 2, "{value:?}");
            parts.iter().for_each(check_invariants);
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn extraction_never_panics_and_keeps_invariants(resource in resource()) {
        for (_, value) in extract_all(&resource) {
            check_invariants(&value);
        }
    }

    #[test]
    fn every_r4_expression_evaluates_on_any_json(resource in resource()) {
        for param in definitions().all_search_params() {
            for &base in param.base.iter().take(2) {
                if let Some(expression) = param.expression(base) {
                    let _ = expression.evaluate(&resource);
                }
            }
            for component in &param.components {
                let _ = component.expression.evaluate(&resource);
            }
        }
    }

    #[test]
    fn any_text_parses_or_errs_and_evaluates(text in expression_text(), resource in resource()) {
        match Expression::parse(&text) {
            Ok(expression) => {
                let _ = expression.evaluate(&resource);
                // Display is parseable and means the same.
                let again = Expression::parse(&expression.to_string()).unwrap();
                prop_assert_eq!(again, expression);
            }
            Err(e) => prop_assert!(e.offset <= text.len()),
        }
    }
}

#[test]
fn a_patient_typed_document_of_another_shape_yields_nothing_odd() {
    let odd: Map<String, Value> = serde_json::from_str(
        r#"{"resourceType": "Patient", "name": "not an array", "birthDate": 1974,
            "telecom": [[{"value": "nested"}]], "gender": {"code": "x"}, "deceasedBoolean": "yes"}"#,
    )
    .unwrap();
    let values = extract_all(&odd);
    let codes: Vec<&str> = values.iter().map(|(p, _)| p.code).collect();
    // `name` as a string is still a string; everything else has the wrong shape.
    assert_eq!(codes, ["deceased", "name", "phonetic"]);
    assert!(ResourceType::parse("Patient").is_some());
}
