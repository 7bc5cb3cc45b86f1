//! Result parameters, `applied`, and system-level searches.

use super::*;

fn include(source: &str, code: Option<&str>, target: Option<&str>, iterate: bool) -> Include {
    Include {
        source: ty(source),
        param: code.map(|c| param(source, c)),
        target: target.map(ty),
        iterate,
    }
}

#[test]
fn result_parameters_fill_their_fields() {
    let request = run(
        Some("Observation"),
        &[
            ("_sort", "date,-_lastUpdated"),
            ("_count", "20"),
            ("_total", "accurate"),
            ("_summary", "data"),
            ("_elements", "Observation.status, code,status"),
            ("_include", "Observation:subject:Patient"),
            ("_include:iterate", "Patient:general-practitioner"),
            ("_include:recurse", "Observation:*"),
            ("_revinclude", "Provenance:target"),
            ("_cursor", "opaque-token=="),
            ("_format", "json"),
            ("_pretty", "true"),
            ("code", "x"),
        ],
    );
    assert!(request.problems.is_empty(), "{:?}", request.problems);
    assert_eq!(
        request.sort,
        [
            SortKey {
                param: param("Observation", "date"),
                descending: false,
            },
            SortKey {
                param: param("Observation", "_lastUpdated"),
                descending: true,
            },
        ]
    );
    assert_eq!(request.count, Some(20));
    assert_eq!(request.total, Some(TotalMode::Accurate));
    assert_eq!(request.summary, Some(SummaryMode::Data));
    assert_eq!(request.elements, ["status", "code"]);
    assert_eq!(
        request.includes,
        [
            include("Observation", Some("subject"), Some("Patient"), false),
            include("Patient", Some("general-practitioner"), None, true),
            include("Observation", None, None, true),
        ]
    );
    assert_eq!(
        request.revincludes,
        [include("Provenance", Some("target"), None, false)]
    );
    assert_eq!(request.cursor.as_deref(), Some("opaque-token=="));
    assert_eq!(request.criteria.len(), 1);
    // Everything applied, in order, except _format and _pretty.
    let names: Vec<&str> = request.applied.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "_sort",
            "_count",
            "_total",
            "_summary",
            "_elements",
            "_include",
            "_include:iterate",
            "_include:recurse",
            "_revinclude",
            "_cursor",
            "code",
        ]
    );
    assert_eq!(request.applied[4].1, "Observation.status, code,status");
}

#[test]
fn result_parameter_values() {
    let count = |v: &str| run(Some("Patient"), &[("_count", v)]).count;
    assert_eq!(count("0"), Some(0));
    assert_eq!(count("99999999999"), Some(u32::MAX));
    let summary = |v: &str| run(Some("Patient"), &[("_summary", v)]).summary;
    assert_eq!(summary("true"), Some(SummaryMode::True));
    assert_eq!(summary("text"), Some(SummaryMode::Text));
    assert_eq!(summary("count"), Some(SummaryMode::Count));
    assert_eq!(summary("false"), Some(SummaryMode::False));
    let total = |v: &str| run(Some("Patient"), &[("_total", v)]).total;
    assert_eq!(total("none"), Some(TotalMode::None));
    assert_eq!(total("estimate"), Some(TotalMode::Estimate));
    let includes = |v: &str| run(Some("Patient"), &[("_include", v)]).includes;
    assert_eq!(includes("*"), [include("Patient", None, None, false)]);
    assert_eq!(
        includes("Observation:*:Patient"),
        [include("Observation", None, Some("Patient"), false)]
    );
}

#[test]
fn malformed_result_parameters_are_invalid() {
    let table: &[(&str, &str)] = &[
        ("_count", "-1"),
        ("_count", "abc"),
        ("_count", ""),
        ("_count", "+5"),
        ("_count", "1.5"),
        ("_total", "all"),
        ("_summary", "yes"),
        ("_sort", "foo"),
        ("_sort", "name,"),
        ("_sort", "-"),
        ("_sort", "name:exact"),
        ("_sort", "_text"),
        ("_sort", "organization.name"),
        ("_elements", ""),
        ("_elements", "name.family"),
        ("_elements", "name,,gender"),
        ("_include", ""),
        ("_include", "Patient"),
        ("_include", "Patient:organization:Organization:x"),
        ("_include", "Foo:organization"),
        ("_include", "Patient:foo"),
        ("_include", "Patient:name"),
        ("_include", "Patient:organization:Patient"),
        ("_include", "Patient:organization:Foo"),
        ("_include", "Patient::Organization"),
        ("_revinclude", "Observation:code"),
        ("_cursor", ""),
        ("_type", "Patient"),
    ];
    for (name, value) in table {
        assert_eq!(
            problem("Patient", name, value),
            ProblemKind::Invalid,
            "{name}={value}"
        );
    }
    assert_eq!(
        problem("Observation", "_sort", "code-value-quantity"),
        ProblemKind::Invalid
    );
    for (name, value) in [("_count:x", "1"), ("_include:foo", "Patient:organization")] {
        assert_eq!(
            problem("Patient", name, value),
            ProblemKind::Unknown,
            "{name}"
        );
    }
}

#[test]
fn single_valued_result_parameters_are_given_once() {
    let request = run(
        Some("Patient"),
        &[
            ("_count", "10"),
            ("_count", "20"),
            ("_include", "Patient:organization"),
            ("_include", "Patient:link"),
        ],
    );
    assert_eq!(request.count, Some(10));
    assert_eq!(request.includes.len(), 2);
    assert_eq!(request.problems.len(), 1);
    assert_eq!(request.problems[0].kind, ProblemKind::Invalid);
    assert_eq!(request.applied.len(), 3);

    let pairs = vec![("_include", "Patient:organization"); MAX_CRITERIA + 1];
    let request = run(Some("Patient"), &pairs);
    assert_eq!(request.includes.len(), MAX_CRITERIA);
    assert!(request.has_invalid());
}

#[test]
fn system_level_searches_use_common_parameters() {
    let request = run(
        None,
        &[
            ("_id", "1,2"),
            ("_lastUpdated", "ge2024"),
            ("_tag", "http://x|y"),
            ("_profile", "http://x/sd"),
            ("_security", "R"),
            ("_source", "http://x"),
            ("_sort", "-_lastUpdated"),
        ],
    );
    assert!(request.problems.is_empty(), "{:?}", request.problems);
    assert_eq!(request.criteria.len(), 6);
    assert_eq!(request.resource_type, None);
    assert!(request.types.is_empty());
    // `_id` is the same parameter for every type.
    assert!(matches!(
        request.criteria[0],
        Criterion::Match { param, .. } if std::ptr::eq(param, super::param("Patient", "_id"))
    ));

    let table: &[(&[(&str, &str)], ProblemKind)] = &[
        (&[("name", "x")], ProblemKind::Unknown),
        (&[("foo", "x")], ProblemKind::Unknown),
        (
            &[("_has:Observation:patient:code", "x")],
            ProblemKind::Unknown,
        ),
        (&[("_sort", "name")], ProblemKind::Invalid),
        (&[("_type", "Foo")], ProblemKind::Invalid),
        (&[("_type", "Patient,")], ProblemKind::Invalid),
        (
            &[("_type", "Patient"), ("_type", "Group")],
            ProblemKind::Invalid,
        ),
        (&[("_type:x", "Patient")], ProblemKind::Unknown),
        (
            &[("_type", "Patient,Observation"), ("family", "x")],
            ProblemKind::Unknown,
        ),
        (&[("_include", "*")], ProblemKind::Invalid),
    ];
    for (pairs, kind) in table {
        let request = run(None, pairs);
        assert_eq!(request.problems.len(), 1, "{pairs:?}");
        assert_eq!(request.problems[0].kind, *kind, "{pairs:?}");
        assert_readable(&request.problems[0].message);
    }
}

#[test]
fn system_level_type_narrows_the_parameters() {
    // One type: all its parameters, wherever _type stands.
    let request = run(
        None,
        &[
            ("name", "ann"),
            ("_type", "Patient"),
            ("_sort", "birthdate"),
            ("_include", "*"),
            ("_has:Observation:patient:code", "x"),
        ],
    );
    assert!(request.problems.is_empty(), "{:?}", request.problems);
    assert_eq!(request.types, [ty("Patient")]);
    assert_eq!(request.criteria.len(), 2);
    assert_eq!(request.sort[0].param, param("Patient", "birthdate"));
    assert_eq!(
        request.applied[1],
        ("_type".to_owned(), "Patient".to_owned())
    );
    // Several types: the parameters they share.
    let request = run(
        None,
        &[("_type", "Patient,Practitioner,Patient"), ("family", "x")],
    );
    assert!(request.problems.is_empty(), "{:?}", request.problems);
    assert_eq!(request.types, [ty("Patient"), ty("Practitioner")]);
    assert_eq!(
        request.criteria,
        [Criterion::Match {
            param: param("Patient", "family"),
            values: vec![string("x", StringMatch::StartsWith)],
            negated: false,
        }]
    );
}
