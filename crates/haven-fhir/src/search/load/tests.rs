use std::collections::BTreeMap;

use super::*;
use crate::fhirpath::lexer::{Token, tokenize};

/// Every expression of the table, top-level and component, as published.
fn all_expressions() -> Vec<&'static str> {
    let raw: Raw<'static> = serde_json::from_str(SEARCH_JSON).unwrap();
    let mut out = Vec::new();
    for p in &raw.params {
        out.extend(p.expression);
        out.extend(p.component.iter().map(|c| c.expression));
    }
    out
}

#[test]
fn construct_survey() {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let expressions = all_expressions();
    for text in &expressions {
        let expression = Expression::parse(text).unwrap();
        expression
            .node()
            .constructs(&mut |label| *counts.entry(label).or_default() += 1);
        // Grouping parentheses: a `(` that does not open a function's arguments.
        let tokens = tokenize(text).unwrap();
        let groups = tokens
            .iter()
            .enumerate()
            .filter(|(i, (t, _))| {
                *t == Token::Sym("(")
                    && !matches!(
                        i.checked_sub(1).map(|j| &tokens[j].0),
                        Some(Token::Ident(_))
                    )
            })
            .count();
        *counts.entry("( )").or_default() += groups;
    }
    // The table in the `fhirpath` module docs.
    let expected: BTreeMap<&str, usize> = [
        ("step", 2285),
        ("type root", 1770),
        ("bare name", 170),
        ("|", 414),
        ("( )", 135),
        ("as", 135),
        ("as()", 67),
        ("where()", 107),
        ("resolve()", 50),
        ("is", 50),
        ("=", 57),
        ("!=", 1),
        ("and", 1),
        ("exists()", 1),
        ("[]", 2),
        ("%resource", 2),
        ("string literal", 57),
        ("boolean literal", 1),
        ("integer literal", 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(expressions.len(), 1374 + 96);
    assert_eq!(counts, expected);
}

fn registry() -> Registry {
    load(crate::model::definitions())
}

fn param<'r>(reg: &'r Registry, ty: &str, code: &str) -> &'r SearchParam {
    let ty = ResourceType::parse(ty).unwrap();
    reg.by_type[&ty]
        .iter()
        .map(|&(i, _)| &reg.params[i])
        .find(|p| p.code == code)
        .unwrap_or_else(|| panic!("{ty}.{code}"))
}

fn sub_expression(reg: &Registry, ty: &str, code: &str) -> String {
    let rt = ResourceType::parse(ty).unwrap();
    param(reg, ty, code).expression(rt).unwrap().to_string()
}

#[test]
fn unions_are_split_per_base_type() {
    let reg = registry();
    assert_eq!(sub_expression(&reg, "Patient", "phonetic"), "Patient.name");
    assert_eq!(sub_expression(&reg, "Person", "phonetic"), "Person.name");
    assert_eq!(
        sub_expression(&reg, "Observation", "patient"),
        "Observation.subject.where((resolve() is Patient))"
    );
    assert_eq!(
        sub_expression(&reg, "Patient", "deceased"),
        "(Patient.deceased.exists() and (Patient.deceased != false))"
    );
    assert_eq!(
        sub_expression(&reg, "Observation", "value-quantity"),
        "(Observation.value as Quantity) | (Observation.value as SampledData)"
    );
    // No type name at the start: applies as a whole.
    assert_eq!(
        sub_expression(&reg, "InsurancePlan", "name"),
        "name | alias"
    );
    assert_eq!(
        sub_expression(&reg, "Observation", "combo-code-value-quantity"),
        "Observation | Observation.component"
    );
    // Common parameters: one shared sub-expression for every concrete type.
    let id = param(&reg, "Patient", "_id");
    assert_eq!(id.base.len(), 146);
    assert_eq!(id.expressions.len(), 1);
    assert_eq!(sub_expression(&reg, "Bundle", "_id"), "Resource.id");
    // `_text` is DomainResource's: Bundle, Binary and Parameters are not DomainResources.
    let text = reg.params.iter().find(|p| p.code == "_text").unwrap();
    assert_eq!(text.base.len(), 143);
    assert!(!text.base.contains(&ResourceType::parse("Bundle").unwrap()));
}

#[test]
fn every_base_type_gets_a_sub_expression() {
    let reg = registry();
    for p in reg.params.iter().filter(|p| p.expression_text.is_some()) {
        assert_eq!(
            p.by_base.len(),
            p.base.len(),
            "{}: {:?}",
            p.url,
            p.expression_text
        );
        assert!(p.by_base.windows(2).all(|w| w[0].0 < w[1].0), "{}", p.url);
    }
}

#[test]
fn first_load_is_fast_enough() {
    // Budget is 50 ms in release (measured by the `search_timing` example); debug builds
    // are ~10x slower, so only guard the order of magnitude here.
    let _ = crate::fhirpath::Expression::parse("Patient.name");
    let start = std::time::Instant::now();
    let reg = registry();
    let elapsed = start.elapsed();
    assert!(reg.params.len() > 1300);
    assert!(elapsed.as_millis() < 2000, "loading took {elapsed:?}");
}
