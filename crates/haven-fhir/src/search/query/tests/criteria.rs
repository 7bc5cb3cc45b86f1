//! Criteria: values by type, modifiers, prefixes, escaping, and the limits.

use super::*;
use StringMatch::{Contains, Exact, StartsWith};

#[test]
fn strings_by_modifier_and_escape() {
    let table: &[(&str, &str, Vec<SearchValue>)] = &[
        ("name", "Müller", vec![string("muller", StartsWith)]),
        ("name", "  Van  Dyke ", vec![string("van dyke", StartsWith)]),
        ("name:exact", "Müller", vec![string("Müller", Exact)]),
        ("name:exact", " a ", vec![string(" a ", Exact)]),
        ("name:contains", "ÜLL", vec![string("ull", Contains)]),
        (
            "name",
            "Ann,Bob",
            vec![string("ann", StartsWith), string("bob", StartsWith)],
        ),
        ("name", r"a\,b", vec![string("a,b", StartsWith)]),
        (
            "name",
            r"a\\,b",
            vec![string(r"a\", StartsWith), string("b", StartsWith)],
        ),
        ("name:exact", r"a\|b\$c", vec![string("a|b$c", Exact)]),
        ("name:exact", "a|b$c", vec![string("a|b$c", Exact)]),
        // A backslash before anything else, or at the end, is kept.
        ("name:exact", r"x\y\", vec![string(r"x\y\", Exact)]),
        ("family", "O'Brien", vec![string("o'brien", StartsWith)]),
    ];
    for (name, value, expected) in table {
        assert_eq!(&values("Patient", name, value), expected, "{name}={value}");
    }
}

#[test]
fn tokens_by_form_and_modifier() {
    let table: &[(&str, &str, &str, Vec<SearchValue>)] = &[
        (
            "Observation",
            "code",
            "1234-5",
            vec![token(None, Some("1234-5"))],
        ),
        (
            "Observation",
            "code",
            "http://loinc.org|1234-5",
            vec![token(Some("http://loinc.org"), Some("1234-5"))],
        ),
        (
            "Observation",
            "code",
            "|x",
            vec![token(Some(""), Some("x"))],
        ),
        (
            "Observation",
            "code",
            "http://loinc.org|",
            vec![token(Some("http://loinc.org"), None)],
        ),
        (
            "Observation",
            "code",
            r"a\|b",
            vec![token(None, Some("a|b"))],
        ),
        (
            "Observation",
            "code",
            r"s\,1|c\$2,d",
            vec![token(Some("s,1"), Some("c$2")), token(None, Some("d"))],
        ),
        ("Patient", "active", "true", vec![token(None, Some("true"))]),
        ("Patient", "_id", "abc", vec![token(None, Some("abc"))]),
        (
            "Observation",
            "code:text",
            "Blood  PRESSURE",
            vec![SearchValue::TokenText("blood pressure".into())],
        ),
        (
            "Patient",
            "identifier:of-type",
            "http://terminology.hl7.org/CodeSystem/v2-0203|MR|123",
            vec![SearchValue::OfType {
                type_system: Some("http://terminology.hl7.org/CodeSystem/v2-0203".into()),
                type_code: "MR".into(),
                value: "123".into(),
            }],
        ),
        (
            "Patient",
            "identifier:of-type",
            "|MR|1",
            vec![SearchValue::OfType {
                type_system: None,
                type_code: "MR".into(),
                value: "1".into(),
            }],
        ),
    ];
    for (on, name, value, expected) in table {
        assert_eq!(&values(on, name, value), expected, "{on}?{name}={value}");
    }
    assert_eq!(
        one("Patient", "gender:not", "male,female"),
        Ok(Criterion::Match {
            param: param("Patient", "gender"),
            values: vec![token(None, Some("male")), token(None, Some("female"))],
            negated: true,
        })
    );
}

#[test]
fn references_by_form() {
    let table: &[(&str, &str, Vec<SearchValue>)] = &[
        (
            "subject",
            "Patient/123",
            vec![reference(Some("Patient"), "123", None)],
        ),
        (
            "subject",
            "Patient/123/_history/2",
            vec![reference(Some("Patient"), "123", Some("2"))],
        ),
        ("subject", "123", vec![reference(None, "123", None)]),
        (
            "subject:Patient",
            "123",
            vec![reference(Some("Patient"), "123", None)],
        ),
        (
            "subject:Patient",
            "Patient/123",
            vec![reference(Some("Patient"), "123", None)],
        ),
        (
            "subject",
            "https://ehr.example/fhir/Patient/9",
            vec![reference(Some("Patient"), "9", None)],
        ),
        (
            "subject",
            "https://ehr.example/fhir/Patient/9/_history/3",
            vec![reference(Some("Patient"), "9", Some("3"))],
        ),
        (
            "subject",
            "https://other.example/fhir/Patient/9",
            vec![SearchValue::ReferenceUrl {
                url: "https://other.example/fhir/Patient/9".into(),
                version: None,
            }],
        ),
        (
            // On the base, but not Type/id: matched as text.
            "subject",
            "https://ehr.example/fhir/Patient",
            vec![SearchValue::ReferenceUrl {
                url: "https://ehr.example/fhir/Patient".into(),
                version: None,
            }],
        ),
        (
            "subject",
            "https://ehr.example/fhirx/Patient/9",
            vec![SearchValue::ReferenceUrl {
                url: "https://ehr.example/fhirx/Patient/9".into(),
                version: None,
            }],
        ),
        (
            "subject",
            "urn:uuid:53fefa32-fcbb-4ff8-8a92-55ee120877b7",
            vec![SearchValue::ReferenceUrl {
                url: "urn:uuid:53fefa32-fcbb-4ff8-8a92-55ee120877b7".into(),
                version: None,
            }],
        ),
        (
            "subject:identifier",
            "http://hospital.example/mrn|123",
            vec![SearchValue::ReferenceIdentifier {
                system: Some("http://hospital.example/mrn".into()),
                value: Some("123".into()),
            }],
        ),
        (
            "subject:identifier",
            "123",
            vec![SearchValue::ReferenceIdentifier {
                system: None,
                value: Some("123".into()),
            }],
        ),
        (
            "subject:identifier",
            "http://hospital.example/mrn|",
            vec![SearchValue::ReferenceIdentifier {
                system: Some("http://hospital.example/mrn".into()),
                value: None,
            }],
        ),
    ];
    for (name, value, expected) in table {
        assert_eq!(
            &values("Observation", name, value),
            expected,
            "{name}={value}"
        );
    }
    assert_eq!(
        values(
            "CarePlan",
            "instantiates-canonical",
            "http://example.org/PlanDefinition/p|1.0"
        ),
        [SearchValue::ReferenceUrl {
            url: "http://example.org/PlanDefinition/p".into(),
            version: Some("1.0".into()),
        }]
    );
    // A canonical on this server's base is a local reference with a version.
    assert_eq!(
        values(
            "CarePlan",
            "instantiates-canonical",
            "https://ehr.example/fhir/PlanDefinition/p|2"
        ),
        [reference(Some("PlanDefinition"), "p", Some("2"))]
    );
}

#[test]
fn dates_at_every_precision_and_prefix() {
    use Prefix::*;
    let table: &[(&str, &str, Vec<SearchValue>)] = &[
        (
            "birthdate",
            "2020",
            vec![date(Eq, "2020-01-01T00:00:00", "2021-01-01T00:00:00")],
        ),
        (
            "birthdate",
            "2020-02",
            vec![date(Eq, "2020-02-01T00:00:00", "2020-03-01T00:00:00")],
        ),
        (
            "birthdate",
            "ge2020-03-04",
            vec![date(Ge, "2020-03-04T00:00:00", "2020-03-05T00:00:00")],
        ),
        (
            "birthdate",
            "lt2020-03-04T10:30",
            vec![date(Lt, "2020-03-04T10:30:00", "2020-03-04T10:31:00")],
        ),
        (
            "_lastUpdated",
            "gt2020-03-04T10:30:05Z",
            vec![date(Gt, "2020-03-04T10:30:05", "2020-03-04T10:30:06")],
        ),
        (
            "_lastUpdated",
            "2020-03-04T10:30:05+02:00",
            vec![date(Eq, "2020-03-04T08:30:05", "2020-03-04T08:30:06")],
        ),
        (
            "birthdate",
            "ne2020,le2019,sa2018,eb2017,ap2016,eq2015",
            vec![
                date(Ne, "2020-01-01T00:00:00", "2021-01-01T00:00:00"),
                date(Le, "2019-01-01T00:00:00", "2020-01-01T00:00:00"),
                date(Sa, "2018-01-01T00:00:00", "2019-01-01T00:00:00"),
                date(Eb, "2017-01-01T00:00:00", "2018-01-01T00:00:00"),
                date(Ap, "2016-01-01T00:00:00", "2017-01-01T00:00:00"),
                date(Eq, "2015-01-01T00:00:00", "2016-01-01T00:00:00"),
            ],
        ),
    ];
    for (name, value, expected) in table {
        assert_eq!(&values("Patient", name, value), expected, "{name}={value}");
    }
}

#[test]
fn numbers_and_quantities() {
    use Prefix::*;
    assert_eq!(
        values("RiskAssessment", "probability", "5.4,gt0.8,1e2"),
        [
            number(Eq, "5.4", 5.35, 5.45),
            number(Gt, "0.8", 0.75, 0.85),
            number(Eq, "1e2", 50.0, 150.0),
        ]
    );
    let ucum = Some("http://unitsofmeasure.org");
    let table: &[(&str, SearchValue)] = &[
        ("5.4", quantity(Eq, "5.4", (5.35, 5.45), None, None)),
        (
            "5.4|http://unitsofmeasure.org|mg",
            quantity(Eq, "5.4", (5.35, 5.45), ucum, Some("mg")),
        ),
        (
            "le5.4||mg",
            quantity(Le, "5.4", (5.35, 5.45), None, Some("mg")),
        ),
        (
            "ap100|http://unitsofmeasure.org|",
            quantity(Ap, "100", (99.5, 100.5), ucum, None),
        ),
        ("-2||", quantity(Eq, "-2", (-2.5, -1.5), None, None)),
        (
            r"1|s\|x|c\,d",
            quantity(Eq, "1", (0.5, 1.5), Some("s|x"), Some("c,d")),
        ),
    ];
    for (value, expected) in table {
        assert_eq!(
            values("Observation", "value-quantity", value),
            std::slice::from_ref(expected),
            "{value}"
        );
    }
}

#[test]
fn uris_and_missing() {
    let uri = |mode| SearchValue::Uri {
        uri: "http://hl7.org/fhir/ValueSet/x".into(),
        mode,
    };
    for (name, mode) in [
        ("url", UriMatch::Exact),
        ("url:above", UriMatch::Above),
        ("url:below", UriMatch::Below),
    ] {
        assert_eq!(
            values("ValueSet", name, "http://hl7.org/fhir/ValueSet/x"),
            [uri(mode)]
        );
    }
    for (on, code) in [
        ("ValueSet", "url"),
        ("Patient", "birthdate"),
        ("Patient", "name"),
        ("Observation", "code"),
        ("Observation", "subject"),
        ("Observation", "value-quantity"),
        ("RiskAssessment", "probability"),
    ] {
        for (value, missing) in [("true", true), ("false", false)] {
            assert_eq!(
                one(on, &format!("{code}:missing"), value),
                Ok(Criterion::Missing {
                    param: param(on, code),
                    missing,
                })
            );
        }
        assert_eq!(
            problem(on, &format!("{code}:missing"), "yes"),
            ProblemKind::Invalid
        );
        assert_eq!(
            problem(on, &format!("{code}:missing"), "true,false"),
            ProblemKind::Invalid
        );
    }
}

#[test]
fn composites_convert_each_component() {
    let expected = SearchValue::Composite(vec![
        token(Some("http://loinc.org"), Some("8480-6")),
        quantity(Prefix::Gt, "100", (99.5, 100.5), None, None),
    ]);
    assert_eq!(
        values(
            "Observation",
            "code-value-quantity",
            "http://loinc.org|8480-6$gt100"
        ),
        std::slice::from_ref(&expected)
    );
    let both = values(
        "Observation",
        "code-value-quantity",
        r"http://loinc.org|8480-6$gt100,a\$b$lt5||mm[Hg]",
    );
    assert_eq!(both[0], expected);
    assert_eq!(
        both[1],
        SearchValue::Composite(vec![
            token(None, Some("a$b")),
            quantity(Prefix::Lt, "5", (4.5, 5.5), None, Some("mm[Hg]")),
        ])
    );
    assert_eq!(
        values("Observation", "code-value-date", "x$ge2020"),
        [SearchValue::Composite(vec![
            token(None, Some("x")),
            date(Prefix::Ge, "2020-01-01T00:00:00", "2021-01-01T00:00:00"),
        ])]
    );
}

#[test]
fn malformed_values_are_invalid() {
    let table: &[(&str, &str, &str)] = &[
        ("Patient", "name", ""),
        ("Patient", "name", "a,,b"),
        ("Patient", "name", "a,"),
        ("Patient", "name", ",a"),
        ("Patient", "name", "   "),
        ("Observation", "code", "|"),
        ("Observation", "code", "a|b|c"),
        ("Observation", "code:text", " "),
        ("Patient", "identifier:of-type", "a|b"),
        ("Patient", "identifier:of-type", "a||v"),
        ("Patient", "identifier:of-type", "a|b|"),
        ("Observation", "subject", "Foo/1"),
        ("Observation", "subject", "Patient/bad_id"),
        ("Observation", "subject", "Patient/"),
        ("Observation", "subject", "bad id"),
        ("Observation", "subject", "a/b/c"),
        ("Observation", "subject", "Patient/1|2"),
        ("Observation", "subject", "http://x/Patient/1|"),
        (
            "Observation",
            "subject",
            "https://ehr.example/fhir/Patient/1/_history/2|3",
        ),
        ("Observation", "subject:Patient", "Group/1"),
        ("Observation", "subject:Medication", "1"),
        ("Observation", "subject:identifier", "|"),
        ("Observation", "subject:identifier", "a|b|c"),
        ("Patient", "birthdate", "yesterday"),
        ("Patient", "birthdate", "2020-13"),
        ("Patient", "birthdate", "2020-02-30"),
        ("Patient", "birthdate", "ge"),
        ("Patient", "birthdate", "2020-01-01T10"),
        ("Patient", "birthdate", "GE2020"),
        ("RiskAssessment", "probability", "abc"),
        ("RiskAssessment", "probability", "5."),
        ("RiskAssessment", "probability", "gt"),
        ("Observation", "value-quantity", "5.4|mg"),
        ("Observation", "value-quantity", "5.4|a|b|c"),
        ("Observation", "value-quantity", "x|a|b"),
        ("ValueSet", "url", " "),
        (
            "Observation",
            "code-value-quantity",
            "http://loinc.org|8480-6",
        ),
        ("Observation", "code-value-quantity", "a$1$2"),
        ("Observation", "code-value-quantity", "a$"),
        ("Observation", "code-value-quantity", "a$abc"),
    ];
    for (on, name, value) in table {
        assert_eq!(
            problem(on, name, value),
            ProblemKind::Invalid,
            "{on}?{name}={value}"
        );
    }
}

#[test]
fn invalid_messages_name_the_parameter_but_not_the_value() {
    let Err(p) = one("Patient", "birthdate", "1970-01-3x") else {
        panic!()
    };
    assert!(p.message.contains("`birthdate`"), "{}", p.message);
    assert!(p.message.contains("2024-03-15"), "{}", p.message);
    assert!(!p.message.contains("1970"), "{}", p.message);
    let Err(p) = one("Patient", "birthdate", "2020,never") else {
        panic!()
    };
    assert!(p.message.contains("alternative 2 of 2"), "{}", p.message);
    let Err(p) = one("Observation", "code-value-quantity", "a$abc") else {
        panic!()
    };
    assert!(p.message.contains("component 2 of `code-value-quantity`"));
}

#[test]
fn unknown_modifiers_are_unknown_and_unknown_prefixes_invalid() {
    let table: &[(&str, &str, &str, ProblemKind)] = &[
        ("Patient", "name:foo", "x", ProblemKind::Unknown),
        ("Patient", "name:text", "x", ProblemKind::Unknown),
        ("Patient", "birthdate:exact", "2020", ProblemKind::Unknown),
        ("Patient", "birthdate", "xx2020", ProblemKind::Invalid),
        ("Observation", "code:Patient", "x", ProblemKind::Unknown),
        ("Observation", "subject:Patiënt", "1", ProblemKind::Unknown),
        ("Observation", "subject:[type]", "1", ProblemKind::Unknown),
        (
            "Observation",
            "code-value-quantity:missing",
            "true",
            ProblemKind::Unknown,
        ),
        (
            "Observation",
            "code-value-quantity:exact",
            "a$1",
            ProblemKind::Unknown,
        ),
        ("Patient", "foo", "x", ProblemKind::Unknown),
        ("Patient", "", "x", ProblemKind::Unknown),
        ("Patient", ":exact", "x", ProblemKind::Unknown),
        // Defined by R4, not implemented by Haven.
        (
            "Observation",
            "code:in",
            "http://x/vs",
            ProblemKind::Unsupported,
        ),
        (
            "Observation",
            "code:not-in",
            "http://x/vs",
            ProblemKind::Unsupported,
        ),
        ("Observation", "code:above", "x", ProblemKind::Unsupported),
        ("Observation", "code:below", "x", ProblemKind::Unsupported),
        (
            "Observation",
            "subject:above",
            "Patient/1",
            ProblemKind::Unsupported,
        ),
        (
            "Observation",
            "subject:below",
            "Patient/1",
            ProblemKind::Unsupported,
        ),
        ("Patient", "_text", "x", ProblemKind::Unsupported),
        ("Patient", "_content", "x", ProblemKind::Unsupported),
        ("Patient", "_query", "x", ProblemKind::Unsupported),
        ("Location", "near", "1|2|3|km", ProblemKind::Unsupported),
        ("Patient", "_list", "x", ProblemKind::Unsupported),
        ("Patient", "_filter", "x", ProblemKind::Unsupported),
        ("Patient", "_contained", "true", ProblemKind::Unsupported),
        (
            "Patient",
            "_containedType",
            "contained",
            ProblemKind::Unsupported,
        ),
    ];
    for (on, name, value, kind) in table {
        assert_eq!(problem(on, name, value), *kind, "{on}?{name}={value}");
    }
}

#[test]
fn alternatives_and_criteria_are_bounded() {
    let hundred = vec!["a"; MAX_VALUES_PER_PARAM].join(",");
    assert_eq!(
        values("Patient", "name", &hundred).len(),
        MAX_VALUES_PER_PARAM
    );
    let too_many = vec!["a"; MAX_VALUES_PER_PARAM + 1].join(",");
    assert_eq!(problem("Patient", "name", &too_many), ProblemKind::Invalid);

    let pairs = vec![("name", "a"); MAX_CRITERIA + 5];
    let request = run(Some("Patient"), &pairs);
    assert_eq!(request.criteria.len(), MAX_CRITERIA);
    assert_eq!(request.applied.len(), MAX_CRITERIA);
    assert_eq!(request.problems.len(), 1);
    assert_eq!(request.problems[0].kind, ProblemKind::Invalid);
    assert_readable(&request.problems[0].message);
}

#[test]
fn repeated_names_are_anded_in_order() {
    let request = run(
        Some("Patient"),
        &[
            ("name", "a"),
            ("foo", "x"),
            ("birthdate", "2020"),
            ("name", "b"),
        ],
    );
    let codes: Vec<&str> = request
        .criteria
        .iter()
        .map(|c| match c {
            Criterion::Match { param, .. } => param.code,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(codes, ["name", "birthdate", "name"]);
    assert_eq!(request.problems.len(), 1);
    assert_eq!(request.problems[0].name, "foo");
    assert!(!request.has_invalid());
}
