//! Index values of the other FHIR types search converts: Period, Duration, choice types
//! selected with `as`, Money, Range, Timing, canonical, embedded resources, useContext
//! composites and `%resource` in composite components.

mod search_common;

use haven_fhir::search::IndexValue;
use search_common::{check, code, date, quantity, reference, resource, string, token};
use time::macros::datetime;

#[test]
fn encounter() {
    let encounter = resource(
        r#"{
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2024-01-01T08:00:00Z", "end": "2024-01-03"},
        "length": {"value": 2, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}
    }"#,
    );
    check(
        &encounter,
        vec![
            (
                "class",
                vec![token(
                    Some("http://terminology.hl7.org/CodeSystem/v3-ActCode"),
                    Some("AMB"),
                    Some("ambulatory"),
                )],
            ),
            (
                "date",
                vec![date(
                    datetime!(2024-01-01 8:00 UTC),
                    datetime!(2024-01-04 0:00 UTC),
                )],
            ),
            ("length", vec![quantity("2", 1.5, 2.5, "d", Some("days"))]),
            (
                "patient",
                vec![reference("Patient", "p1", None, "Patient/p1")],
            ),
        ],
    );
}

#[test]
fn medication_request_code_or_reference_by_type() {
    let coded = resource(
        r#"{"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "582620"}]},
        "subject": {"reference": "Patient/p1"}, "authoredOn": "2024-02-01"}"#,
    );
    let referenced = resource(
        r##"{"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "contained": [{"resourceType": "Medication", "id": "med"}],
        "medicationReference": {"reference": "#med"},
        "subject": {"reference": "Patient/p1"}}"##,
    );
    let rxnorm = token(
        Some("http://www.nlm.nih.gov/research/umls/rxnorm"),
        Some("582620"),
        None,
    );
    check(
        &coded,
        vec![
            ("code", vec![rxnorm]),
            ("medication", vec![]),
            (
                "authoredon",
                vec![date(
                    datetime!(2024-02-01 0:00 UTC),
                    datetime!(2024-02-02 0:00 UTC),
                )],
            ),
        ],
    );
    check(
        &referenced,
        vec![
            ("code", vec![]),
            (
                "medication",
                vec![IndexValue::Reference {
                    target_type: None,
                    id: None,
                    version: None,
                    url: Some("#med".to_owned()),
                    identifier: None,
                }],
            ),
        ],
    );
}

#[test]
fn condition_onset_by_type() {
    let dated = resource(
        r#"{"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
        "code": {"text": "Asthma"}, "onsetDateTime": "2019-05", "abatementString": "in childhood"}"#,
    );
    let aged = resource(
        r#"{"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
        "onsetAge": {"value": 40, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"}}"#,
    );
    check(
        &dated,
        vec![
            (
                "onset-date",
                vec![date(
                    datetime!(2019-05-01 0:00 UTC),
                    datetime!(2019-06-01 0:00 UTC),
                )],
            ),
            ("onset-age", vec![]),
            (
                "abatement-string",
                vec![string("in childhood", "in childhood")],
            ),
            ("abatement-date", vec![]),
            ("code", vec![token(None, None, Some("asthma"))]),
        ],
    );
    check(
        &aged,
        vec![
            ("onset-date", vec![]),
            (
                "onset-age",
                vec![quantity("40", 39.5, 40.5, "a", Some("years"))],
            ),
        ],
    );
}

#[test]
fn immunization() {
    let immunization = resource(
        r#"{"resourceType": "Immunization", "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2023-10-01T09:00:00-04:00",
        "lotNumber": "AAJN11K",
        "performer": [{"actor": {"reference": "Practitioner/pr1"}}]}"#,
    );
    check(
        &immunization,
        vec![
            (
                "vaccine-code",
                vec![token(
                    Some("http://hl7.org/fhir/sid/cvx"),
                    Some("140"),
                    None,
                )],
            ),
            (
                "patient",
                vec![reference("Patient", "p1", None, "Patient/p1")],
            ),
            (
                "date",
                vec![date(
                    datetime!(2023-10-01 13:00 UTC),
                    datetime!(2023-10-01 13:00:01 UTC),
                )],
            ),
            ("lot-number", vec![string("AAJN11K", "aajn11k")]),
            (
                "performer",
                vec![reference("Practitioner", "pr1", None, "Practitioner/pr1")],
            ),
            ("status", vec![code("completed")]),
        ],
    );
}

#[test]
fn money_ranges_timings_canonicals_and_embedded_resources() {
    let invoice = resource(
        r#"{"resourceType": "Invoice", "status": "issued", "totalGross": {"value": 99.90, "currency": "EUR"}}"#,
    );
    check(
        &invoice,
        vec![(
            "totalgross",
            vec![IndexValue::Quantity {
                value: Some("99.90".to_owned()),
                lower: 99.895,
                upper: 99.905,
                system: Some("urn:iso:std:iso:4217".to_owned()),
                code: Some("EUR".to_owned()),
                unit: None,
            }],
        )],
    );
    let risk = resource(
        r#"{"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/p1"},
        "prediction": [{"probabilityDecimal": 0.25}, {"probabilityRange": {"low": {"value": 0.1}, "high": {"value": 0.3}}}]}"#,
    );
    check(
        &risk,
        vec![(
            "probability",
            vec![
                IndexValue::Number {
                    value: Some("0.25".to_owned()),
                    lower: 0.245,
                    upper: 0.255,
                },
                IndexValue::Number {
                    value: None,
                    lower: 0.05,
                    upper: 0.35,
                },
            ],
        )],
    );
    let plan = resource(
        r#"{"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": "Patient/p1"},
        "instantiatesCanonical": ["http://example.org/PlanDefinition/pd|2.0"],
        "activity": [{"detail": {"status": "scheduled", "scheduledTiming": {"event": ["2024-05-01", "2024-05-08T10:00:00Z"]}}}]}"#,
    );
    check(
        &plan,
        vec![
            (
                "activity-date",
                vec![
                    date(
                        datetime!(2024-05-01 0:00 UTC),
                        datetime!(2024-05-02 0:00 UTC),
                    ),
                    date(
                        datetime!(2024-05-08 10:00 UTC),
                        datetime!(2024-05-08 10:00:01 UTC),
                    ),
                ],
            ),
            (
                "instantiates-canonical",
                vec![IndexValue::Reference {
                    target_type: None,
                    id: None,
                    version: Some("2.0".to_owned()),
                    url: Some("http://example.org/PlanDefinition/pd".to_owned()),
                    identifier: None,
                }],
            ),
        ],
    );
    let document = resource(
        r#"{"resourceType": "Bundle", "type": "document",
        "entry": [{"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Composition", "id": "c1"}},
                  {"resource": {"resourceType": "Patient", "id": "p1"}}]}"#,
    );
    check(
        &document,
        vec![
            (
                "composition",
                vec![reference("Composition", "c1", None, "Composition/c1")],
            ),
            ("type", vec![code("document")]),
        ],
    );
}

#[test]
fn use_context_composites() {
    let value_set = resource(
        r#"{"resourceType": "ValueSet", "status": "active", "url": "http://example.org/vs",
        "useContext": [
            {"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "focus"},
             "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}},
            {"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "age"},
             "valueRange": {"low": {"value": 18, "system": "http://unitsofmeasure.org", "code": "a"}}}
        ]}"#,
    );
    let context_type = |c: &str| {
        token(
            Some("http://terminology.hl7.org/CodeSystem/usage-context-type"),
            Some(c),
            None,
        )
    };
    check(
        &value_set,
        vec![
            (
                "context-type-value",
                vec![IndexValue::Composite(vec![
                    context_type("focus"),
                    token(Some("http://snomed.info/sct"), Some("1"), None),
                ])],
            ),
            (
                "context-type-quantity",
                vec![IndexValue::Composite(vec![
                    context_type("age"),
                    IndexValue::Quantity {
                        value: None,
                        lower: 17.5,
                        upper: f64::INFINITY,
                        system: Some("http://unitsofmeasure.org".to_owned()),
                        code: Some("a".to_owned()),
                        unit: None,
                    },
                ])],
            ),
            (
                "url",
                vec![IndexValue::Uri {
                    value: "http://example.org/vs".to_owned(),
                }],
            ),
        ],
    );
}

#[test]
fn composite_components_may_reach_the_resource() {
    // `chromosome-variant-coordinate`: per variant, `%resource.referenceSeq.chromosome` with
    // that variant's own `start` and `end`.
    let sequence = resource(
        r#"{"resourceType": "MolecularSequence", "coordinateSystem": 0,
        "referenceSeq": {"chromosome": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/chromosome-human", "code": "1"}]},
                         "windowStart": 22125500, "windowEnd": 22125510},
        "variant": [{"start": 22125503, "end": 22125504}, {"start": 22125507, "end": 22125508}]}"#,
    );
    let chromosome = token(
        Some("http://terminology.hl7.org/CodeSystem/chromosome-human"),
        Some("1"),
        None,
    );
    let number = |n: i64| IndexValue::Number {
        value: Some(n.to_string()),
        lower: n as f64 - 0.5,
        upper: n as f64 + 0.5,
    };
    check(
        &sequence,
        vec![
            (
                "chromosome-variant-coordinate",
                vec![
                    IndexValue::Composite(vec![
                        chromosome.clone(),
                        number(22_125_503),
                        number(22_125_504),
                    ]),
                    IndexValue::Composite(vec![
                        chromosome.clone(),
                        number(22_125_507),
                        number(22_125_508),
                    ]),
                ],
            ),
            (
                "chromosome-window-coordinate",
                vec![IndexValue::Composite(vec![
                    chromosome,
                    number(22_125_500),
                    number(22_125_510),
                ])],
            ),
        ],
    );
}
