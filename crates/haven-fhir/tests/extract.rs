//! Index values extracted from realistic Patient and Observation resources, one table row
//! per (parameter, values), and `extract_all` over a whole resource.

mod search_common;

use haven_fhir::search::{IndexValue, extract, extract_all};
use search_common::{
    LOINC, check, code, date, micros, quantity, reference, resource, string, token, values,
};
use serde_json::{Map, Value};
use time::macros::datetime;

#[test]
fn patient() {
    let patient = resource(
        r#"{
        "resourceType": "Patient", "id": "p1",
        "meta": {"lastUpdated": "2024-01-02T03:04:05.678Z", "source": "http://src.example#a1",
                 "profile": ["http://example.org/StructureDefinition/p"],
                 "tag": [{"system": "http://example.org/tags", "code": "vip", "display": "VIP"}]},
        "identifier": [{"use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "Medical Record"},
            "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
        "active": true,
        "name": [{"family": "Müller", "given": ["Anna", "Lena"], "prefix": ["Dr."]},
                 {"text": "Anna  Müller-Lüdenscheidt"}],
        "telecom": [{"system": "phone", "value": "+49 30 1234"}, {"system": "email", "value": "anna@example.org"}],
        "gender": "female",
        "birthDate": "1974-12",
        "address": [{"line": ["Hauptstraße 5"], "city": "Köln", "postalCode": "50667", "country": "DE"}],
        "generalPractitioner": [{"reference": "Practitioner/gp1"},
            {"reference": "https://other.example/fhir/Organization/o1/_history/2"}],
        "managingOrganization": {"identifier": {"system": "http://example.org/orgs", "value": "O-7"}, "display": "Acme"}
    }"#,
    );
    let name_values = vec![
        string("Müller", "muller"),
        string("Anna", "anna"),
        string("Lena", "lena"),
        string("Dr.", "dr."),
        string("Anna  Müller-Lüdenscheidt", "anna muller-ludenscheidt"),
    ];
    let updated = datetime!(2024-01-02 03:04:05.678 UTC);
    check(
        &patient,
        vec![
            ("name", name_values.clone()),
            ("phonetic", name_values),
            ("family", vec![string("Müller", "muller")]),
            (
                "given",
                vec![string("Anna", "anna"), string("Lena", "lena")],
            ),
            (
                "identifier",
                vec![IndexValue::Token {
                    system: Some("urn:oid:1.2.36.146.595.217.0.1".to_owned()),
                    code: Some("12345".to_owned()),
                    text: Some("medical record".to_owned()),
                    of_type: Some((
                        Some("http://terminology.hl7.org/CodeSystem/v2-0203".to_owned()),
                        "MR".to_owned(),
                    )),
                }],
            ),
            (
                "birthdate",
                vec![date(
                    datetime!(1974-12-01 0:00 UTC),
                    datetime!(1975-01-01 0:00 UTC),
                )],
            ),
            ("gender", vec![code("female")]),
            ("active", vec![code("true")]),
            ("deceased", vec![code("false")]),
            ("address-city", vec![string("Köln", "koln")]),
            ("address-country", vec![string("DE", "de")]),
            (
                "address",
                vec![
                    string("Hauptstraße 5", "hauptstraße 5"),
                    string("Köln", "koln"),
                    string("50667", "50667"),
                    string("DE", "de"),
                ],
            ),
            (
                "telecom",
                vec![
                    token(Some("phone"), Some("+49 30 1234"), None),
                    token(Some("email"), Some("anna@example.org"), None),
                ],
            ),
            (
                "phone",
                vec![token(Some("phone"), Some("+49 30 1234"), None)],
            ),
            (
                "email",
                vec![token(Some("email"), Some("anna@example.org"), None)],
            ),
            (
                "general-practitioner",
                vec![
                    reference("Practitioner", "gp1", None, "Practitioner/gp1"),
                    reference(
                        "Organization",
                        "o1",
                        Some("2"),
                        "https://other.example/fhir/Organization/o1/_history/2",
                    ),
                ],
            ),
            (
                "organization",
                vec![IndexValue::Reference {
                    target_type: None,
                    id: None,
                    version: None,
                    url: None,
                    identifier: Some((
                        Some("http://example.org/orgs".to_owned()),
                        Some("O-7".to_owned()),
                    )),
                }],
            ),
            ("_id", vec![code("p1")]),
            (
                "_lastUpdated",
                vec![date(updated, updated + time::Duration::milliseconds(1))],
            ),
            (
                "_tag",
                vec![token(
                    Some("http://example.org/tags"),
                    Some("vip"),
                    Some("vip"),
                )],
            ),
            (
                "_profile",
                vec![IndexValue::Uri {
                    value: "http://example.org/StructureDefinition/p".to_owned(),
                }],
            ),
            (
                "_source",
                vec![IndexValue::Uri {
                    value: "http://src.example#a1".to_owned(),
                }],
            ),
            ("_security", vec![]),
            ("death-date", vec![]),
            ("link", vec![]),
        ],
    );
}

#[test]
fn patient_deceased_from_a_date() {
    let patient = resource(r#"{"resourceType": "Patient", "deceasedDateTime": "2020-02-03"}"#);
    check(
        &patient,
        vec![
            ("deceased", vec![code("true")]),
            (
                "death-date",
                vec![date(
                    datetime!(2020-02-03 0:00 UTC),
                    datetime!(2020-02-04 0:00 UTC),
                )],
            ),
        ],
    );
}

fn lab_observation() -> Map<String, Value> {
    resource(
        r#"{
        "resourceType": "Observation", "id": "o1", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"},
                            {"system": "http://snomed.info/sct", "code": "33747003"}],
                 "text": "Glucose"},
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2024-03-05T10:30:00+01:00",
        "performer": [{"reference": "Practitioner/pr1"}],
        "valueQuantity": {"value": 5.40, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    }"#,
    )
}

#[test]
fn observation_with_a_quantity() {
    let obs = lab_observation();
    let glucose = token(
        Some(LOINC),
        Some("2339-0"),
        Some("glucose [mass/volume] in blood"),
    );
    let snomed = token(Some("http://snomed.info/sct"), Some("33747003"), None);
    let text = token(None, None, Some("glucose"));
    let value = quantity("5.40", 5.395, 5.405, "mmol/L", Some("mmol/L"));
    check(
        &obs,
        vec![
            ("code", vec![glucose.clone(), snomed.clone(), text.clone()]),
            (
                "category",
                vec![token(
                    Some("http://terminology.hl7.org/CodeSystem/observation-category"),
                    Some("laboratory"),
                    None,
                )],
            ),
            ("status", vec![code("final")]),
            (
                "subject",
                vec![reference("Patient", "p1", None, "Patient/p1")],
            ),
            (
                "patient",
                vec![reference("Patient", "p1", None, "Patient/p1")],
            ),
            (
                "encounter",
                vec![reference("Encounter", "e1", None, "Encounter/e1")],
            ),
            (
                "performer",
                vec![reference("Practitioner", "pr1", None, "Practitioner/pr1")],
            ),
            ("value-quantity", vec![value.clone()]),
            (
                "date",
                vec![date(
                    datetime!(2024-03-05 9:30 UTC),
                    datetime!(2024-03-05 9:30:01 UTC),
                )],
            ),
            (
                "code-value-quantity",
                vec![
                    IndexValue::Composite(vec![glucose, value.clone()]),
                    IndexValue::Composite(vec![snomed, value.clone()]),
                    IndexValue::Composite(vec![text, value]),
                ],
            ),
            ("value-concept", vec![]),
            ("value-string", vec![]),
            ("component-code-value-quantity", vec![]),
        ],
    );
    // The precision bounds are exactly the nearest doubles to 5.395 and 5.405.
    let [IndexValue::Quantity { lower, upper, .. }] = values(&obs, "value-quantity")[..] else {
        panic!("one quantity expected")
    };
    assert_eq!(
        (lower.to_bits(), upper.to_bits()),
        (5.395f64.to_bits(), 5.405f64.to_bits())
    );
}

#[test]
fn observation_components_pair_codes_with_their_own_values() {
    let bp = resource(
        r#"{
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Group/g1"},
        "effectivePeriod": {"start": "2024-03-05T10:00:00Z"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
             "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "271636001"}]}}
        ]
    }"#,
    );
    let systolic = IndexValue::Composite(vec![
        token(Some(LOINC), Some("8480-6"), None),
        quantity("120", 119.5, 120.5, "mm[Hg]", None),
    ]);
    let diastolic = IndexValue::Composite(vec![
        token(Some(LOINC), Some("8462-4"), None),
        quantity("80", 79.5, 80.5, "mm[Hg]", None),
    ]);
    check(
        &bp,
        vec![
            (
                "component-code-value-quantity",
                vec![systolic.clone(), diastolic.clone()],
            ),
            ("combo-code-value-quantity", vec![systolic, diastolic]),
            (
                "component-code-value-concept",
                vec![IndexValue::Composite(vec![
                    token(Some(LOINC), Some("8867-4"), None),
                    token(Some("http://snomed.info/sct"), Some("271636001"), None),
                ])],
            ),
            (
                "component-value-quantity",
                vec![
                    quantity("120", 119.5, 120.5, "mm[Hg]", None),
                    quantity("80", 79.5, 80.5, "mm[Hg]", None),
                ],
            ),
            (
                "date",
                vec![IndexValue::Date {
                    start_micros: micros(datetime!(2024-03-05 10:00 UTC)),
                    end_micros: i64::MAX,
                }],
            ),
            // `patient` is `subject.where(resolve() is Patient)`: a Group does not count.
            ("patient", vec![]),
            ("subject", vec![reference("Group", "g1", None, "Group/g1")]),
            ("code-value-quantity", vec![]),
        ],
    );
}

#[test]
fn observation_with_a_coded_value_and_unresolvable_subject() {
    let obs = resource(
        r#"{
        "resourceType": "Observation", "status": "final",
        "code": {"text": "Blood group"},
        "subject": {"reference": "urn:uuid:0a2d6f34-2b7c-4d8e-9f10-1a2b3c4d5e6f"},
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "278149003", "display": "Blood group A Rh(D) positive"}]}
    }"#,
    );
    let value = token(
        Some("http://snomed.info/sct"),
        Some("278149003"),
        Some("blood group a rh(d) positive"),
    );
    check(
        &obs,
        vec![
            ("value-concept", vec![value.clone()]),
            (
                "code-value-concept",
                vec![IndexValue::Composite(vec![
                    token(None, None, Some("blood group")),
                    value,
                ])],
            ),
            ("value-quantity", vec![]),
            ("patient", vec![]),
            (
                "subject",
                vec![IndexValue::Reference {
                    target_type: None,
                    id: None,
                    version: None,
                    url: Some("urn:uuid:0a2d6f34-2b7c-4d8e-9f10-1a2b3c4d5e6f".to_owned()),
                    identifier: None,
                }],
            ),
        ],
    );
}

#[test]
fn extract_all_covers_every_parameter_of_the_type() {
    let obs = lab_observation();
    let all = extract_all(&obs);
    let mut codes: Vec<&str> = all.iter().map(|(p, _)| p.code).collect();
    codes.dedup();
    assert_eq!(
        codes,
        [
            "_id",
            "category",
            "code",
            "code-value-quantity",
            "combo-code",
            "combo-code-value-quantity",
            "combo-value-quantity",
            "date",
            "encounter",
            "patient",
            "performer",
            "status",
            "subject",
            "value-quantity",
        ]
    );
    // The same values as parameter-by-parameter extraction, each once.
    for (param, value) in &all {
        let from_one = extract(&obs, param);
        assert_eq!(
            from_one.iter().filter(|v| *v == value).count(),
            1,
            "{}",
            param.code
        );
        let from_all = all.iter().filter(|(p, _)| std::ptr::eq(*p, *param)).count();
        assert_eq!(from_one.len(), from_all, "{}", param.code);
    }
    // Not a resource of a known type: nothing, and no panic.
    assert!(extract_all(&resource(r#"{"resourceType": "Nope"}"#)).is_empty());
    assert!(extract_all(&resource("{}")).is_empty());
}
