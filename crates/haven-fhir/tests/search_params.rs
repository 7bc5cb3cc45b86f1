//! The R4 search-parameter table and the Patient compartment, as loaded from the vendored
//! definitions.

use std::collections::BTreeMap;

use haven_fhir::search::{ParamType, SearchParam};
use haven_fhir::{ResourceType, definitions};

fn ty(name: &str) -> ResourceType {
    ResourceType::parse(name).unwrap()
}

fn param(type_name: &str, code: &str) -> &'static SearchParam {
    definitions()
        .search_param(ty(type_name), code)
        .unwrap_or_else(|| panic!("{type_name}.{code} is missing"))
}

#[test]
fn every_expression_parses_and_only_special_params_are_unsupported() {
    let unsupported: Vec<(&str, &str, &str)> = definitions()
        .all_search_params()
        .iter()
        .filter(|p| !p.is_supported())
        .map(|p| {
            (
                p.code,
                p.url.rsplit('/').next().unwrap_or(""),
                p.unsupported_reason().unwrap_or(""),
            )
        })
        .collect();
    let no_expression = "no FHIRPath expression: needs search logic of its own";
    assert_eq!(
        unsupported,
        [
            ("_content", "Resource-content", no_expression),
            ("_query", "Resource-query", no_expression),
            ("_text", "DomainResource-text", no_expression),
            (
                "near",
                "Location-near",
                "special parameter type: needs search logic of its own"
            ),
        ]
    );
}

#[test]
fn the_table_has_every_r4_parameter() {
    let all = definitions().all_search_params();
    // 1,378 in the bundle, minus the R5 snapshot of DeviceDefinition-classification.
    assert_eq!(all.len(), 1377);
    assert!(all.windows(2).all(|w| w[0].code <= w[1].code));
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for p in all {
        *by_type.entry(p.param_type.as_str()).or_default() += 1;
    }
    let expected: BTreeMap<&str, usize> = [
        ("token", 538),
        ("reference", 472),
        ("string", 133),
        ("date", 109),
        ("composite", 46),
        ("uri", 45),
        ("quantity", 27),
        ("number", 6),
        ("special", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(by_type, expected);
    assert!(
        !all.iter()
            .any(|p| p.url.ends_with("DeviceDefinition-classification"))
    );
}

#[test]
fn lookup_by_type_and_code_finds_every_parameter() {
    let defs = definitions();
    let mut pairs = 0;
    for p in defs.all_search_params() {
        assert!(!p.base.is_empty(), "{}", p.url);
        for &base in &p.base {
            let found = defs.search_param(base, p.code).unwrap();
            assert!(std::ptr::eq(found, p), "{base}.{}", p.code);
            if p.is_supported() {
                assert!(p.expression(base).is_some(), "{base}.{}", p.code);
            }
            pairs += 1;
        }
    }
    assert!(pairs > 3000, "{pairs}");
    assert!(defs.search_param(ty("Patient"), "nope").is_none());
    assert!(defs.search_param(ty("Patient"), "code").is_none());
    assert!(
        param("Patient", "name")
            .expression(ty("Observation"))
            .is_none()
    );
}

#[test]
fn patient_parameters() {
    let codes: Vec<&str> = definitions()
        .search_params(ty("Patient"))
        .map(|p| p.code)
        .collect();
    for code in [
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
        "_text",
        "active",
        "address-city",
        "birthdate",
        "deceased",
        "family",
        "gender",
        "general-practitioner",
        "identifier",
        "name",
        "organization",
        "phonetic",
        "telecom",
    ] {
        assert!(codes.contains(&code), "Patient has no {code}: {codes:?}");
    }
    assert!(codes.windows(2).all(|w| w[0] < w[1]), "sorted by code");
    assert_eq!(param("Patient", "birthdate").param_type, ParamType::Date);
    assert_eq!(param("Patient", "name").param_type, ParamType::String);
    assert_eq!(param("Patient", "identifier").param_type, ParamType::Token);
    let gp = param("Patient", "general-practitioner");
    assert_eq!(gp.param_type, ParamType::Reference);
    assert_eq!(
        gp.targets,
        [
            ty("Organization"),
            ty("Practitioner"),
            ty("PractitionerRole")
        ]
    );
    assert_eq!(
        gp.url,
        "http://hl7.org/fhir/SearchParameter/Patient-general-practitioner"
    );
    assert!(gp.multiple_or && gp.multiple_and);
    assert_eq!(
        param("Patient", "_lastUpdated").comparators,
        ["eq", "ne", "gt", "ge", "lt", "le", "sa", "eb", "ap"]
    );
    assert_eq!(
        param("Patient", "name").expression_text,
        Some("Patient.name")
    );
    assert_eq!(
        ParamType::Token.modifiers(),
        [
            "missing", "text", "not", "above", "below", "in", "not-in", "of-type"
        ]
    );
}

#[test]
fn common_parameters_apply_to_every_type() {
    let defs = definitions();
    for &rt in defs.resource_types() {
        for code in [
            "_id",
            "_lastUpdated",
            "_tag",
            "_profile",
            "_security",
            "_source",
        ] {
            let p = defs
                .search_param(rt, code)
                .unwrap_or_else(|| panic!("{rt}.{code}"));
            assert!(p.is_supported());
        }
        assert!(defs.search_params(rt).count() >= 6);
    }
    assert_eq!(param("Observation", "_id").base.len(), 146);
}

#[test]
fn composite_parameters_know_their_components() {
    let cvq = param("Observation", "code-value-quantity");
    assert_eq!(cvq.param_type, ParamType::Composite);
    let components: Vec<(&str, ParamType, String)> = cvq
        .components
        .iter()
        .map(|c| (c.definition, c.param_type, c.expression.to_string()))
        .collect();
    assert_eq!(
        components,
        [
            (
                "http://hl7.org/fhir/SearchParameter/clinical-code",
                ParamType::Token,
                "code".to_owned()
            ),
            (
                "http://hl7.org/fhir/SearchParameter/Observation-value-quantity",
                ParamType::Quantity,
                "value.as(Quantity)".to_owned()
            ),
        ]
    );
    for p in definitions().all_search_params() {
        if p.param_type == ParamType::Composite {
            assert!(p.components.len() >= 2, "{}", p.url);
        } else {
            assert!(p.components.is_empty(), "{}", p.url);
        }
    }
}

#[test]
fn patient_compartment() {
    let defs = definitions();
    let comp = |name: &str| defs.patient_compartment(ty(name));
    assert_eq!(comp("Observation"), ["subject", "performer"]);
    // R4 says `patient`; the vendored package changed it to `subject` (see build.rs).
    assert_eq!(comp("Encounter"), ["patient"]);
    assert_eq!(
        comp("AllergyIntolerance"),
        ["patient", "recorder", "asserter"]
    );
    assert_eq!(comp("Patient"), ["link"]);
    assert_eq!(comp("Provenance"), ["patient"]);
    // The vendored package adds Task; R4 lists it as never in the compartment.
    assert!(comp("Task").is_empty());
    assert!(comp("Practitioner").is_empty());
    assert!(comp("ValueSet").is_empty());

    // Every listed code is a supported reference parameter of that type, so that
    // compartment membership can be computed from the index.
    let mut members = 0;
    for &rt in defs.resource_types() {
        for code in defs.patient_compartment(rt) {
            let p = defs
                .search_param(rt, code)
                .unwrap_or_else(|| panic!("{rt}.{code} named by the compartment"));
            assert!(p.is_supported(), "{rt}.{code}");
            assert_eq!(p.param_type, ParamType::Reference, "{rt}.{code}");
        }
        if !defs.patient_compartment(rt).is_empty() {
            members += 1;
        }
    }
    assert_eq!(members, 66);
}
