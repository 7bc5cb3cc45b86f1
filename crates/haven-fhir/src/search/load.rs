//! Builds the search-parameter table from `OUT_DIR/search.json`, which `build.rs` extracts
//! from the vendored SearchParameter bundle and Patient CompartmentDefinition.
//!
//! Format: `{"params": [{"url", "code", "type", "base": [..], "expression"?, "target"?: [..],
//! "component"?: [{"definition", "expression"}], "multipleOr"?, "multipleAnd"?,
//! "comparator"?: [..]}], "patientCompartment": [{"code", "param": [..]}]}` — the
//! SearchParameter and CompartmentDefinition fields of the same names, for 4.0.1 only.
//!
//! Every expression is parsed here, once. A union over several resource types
//! (`Patient.name | Practitioner.name`) is split into one sub-expression per base type, so
//! indexing a Patient evaluates only `Patient.name`. Terms that do not start with a type name
//! (`name | alias` of InsurancePlan, `%resource...`) apply to every base.

use std::collections::HashMap;

use serde::Deserialize;

use super::{Component, ParamType, SearchParam};
use crate::fhirpath::{Expression, Node, TypeName};
use crate::model::{Definitions, ResourceType};

static SEARCH_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/search.json"));

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    params: Vec<RawParam<'a>>,
    #[serde(rename = "patientCompartment", borrow)]
    patient_compartment: Vec<RawCompartment<'a>>,
}

#[derive(Deserialize)]
struct RawParam<'a> {
    url: &'a str,
    code: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    base: Vec<&'a str>,
    expression: Option<&'a str>,
    #[serde(default)]
    target: Vec<&'a str>,
    #[serde(default, borrow)]
    component: Vec<RawComponent<'a>>,
    #[serde(rename = "multipleOr")]
    multiple_or: Option<bool>,
    #[serde(rename = "multipleAnd")]
    multiple_and: Option<bool>,
    #[serde(default)]
    comparator: Vec<&'a str>,
}

#[derive(Deserialize)]
struct RawComponent<'a> {
    definition: &'a str,
    expression: &'a str,
}

#[derive(Deserialize)]
struct RawCompartment<'a> {
    code: &'a str,
    param: Vec<&'a str>,
}

/// The loaded table: every parameter, the parameters of each resource type, the compartment.
#[derive(Debug)]
pub(crate) struct Registry {
    pub params: Vec<SearchParam>,
    /// Per type, its parameters sorted by code: (index into `params`, index into that
    /// parameter's expressions), so extraction needs no lookup per parameter.
    pub by_type: HashMap<ResourceType, Vec<(usize, Option<usize>)>>,
    pub patient_compartment: HashMap<ResourceType, Vec<&'static str>>,
}

pub(super) fn load(defs: &Definitions) -> Registry {
    let raw: Raw<'static> =
        serde_json::from_str(SEARCH_JSON).expect("embedded search table is valid JSON");
    let kinds: HashMap<&str, ParamType> = raw
        .params
        .iter()
        .map(|p| (p.url, ParamType::parse(p.kind)))
        .collect();
    let mut params: Vec<SearchParam> = raw.params.iter().map(|p| param(p, &kinds, defs)).collect();
    params.sort_by_key(|p| p.code);
    let mut by_type: HashMap<ResourceType, Vec<(usize, Option<usize>)>> = HashMap::new();
    for (i, p) in params.iter().enumerate() {
        for ty in &p.base {
            let expression = p
                .by_base
                .binary_search_by_key(ty, |(t, _)| *t)
                .ok()
                .map(|at| p.by_base[at].1);
            by_type.entry(*ty).or_default().push((i, expression));
        }
    }
    let patient_compartment = raw
        .patient_compartment
        .into_iter()
        .filter_map(|row| Some((ResourceType::parse(row.code)?, row.param)))
        .collect();
    Registry {
        params,
        by_type,
        patient_compartment,
    }
}

fn param(
    raw: &RawParam<'static>,
    kinds: &HashMap<&str, ParamType>,
    defs: &Definitions,
) -> SearchParam {
    let base = expand_bases(&raw.base, defs);
    let mut problem = None;
    let mut expressions = Vec::new();
    let mut by_base = Vec::new();
    match raw.expression.map(Expression::parse) {
        Some(Ok(whole)) => {
            // Distinct term selections share one sub-expression (`_id` has 146 bases).
            let terms = union_terms(whole.node());
            let mut seen: HashMap<Vec<usize>, usize> = HashMap::new();
            for &ty in &base {
                let selected: Vec<usize> = terms
                    .iter()
                    .enumerate()
                    .filter(|(_, (root, _))| root.is_none_or(|r| is_a(ty, r)))
                    .map(|(i, _)| i)
                    .collect();
                if selected.is_empty() {
                    continue;
                }
                let index = *seen.entry(selected.clone()).or_insert_with(|| {
                    let node = selected
                        .iter()
                        .map(|&i| terms[i].1.clone())
                        .reduce(|a, b| Node::Union(Box::new(a), Box::new(b)))
                        .unwrap_or(Node::Empty);
                    expressions.push(Expression::from_node(node));
                    expressions.len() - 1
                });
                by_base.push((ty, index));
            }
        }
        Some(Err(e)) => problem = Some(e.to_string()),
        None => {}
    }
    let mut components = Vec::with_capacity(raw.component.len());
    for c in &raw.component {
        match (Expression::parse(c.expression), kinds.get(c.definition)) {
            (Ok(expression), Some(&param_type)) => components.push(Component {
                definition: c.definition,
                param_type,
                expression,
            }),
            (Err(e), _) => problem = Some(format!("component: {e}")),
            (_, None) => problem = Some(format!("unknown component {}", c.definition)),
        }
    }
    let param_type = ParamType::parse(raw.kind);
    if raw.expression.is_none() {
        problem = Some("no FHIRPath expression: needs search logic of its own".to_owned());
    } else if param_type == ParamType::Special {
        problem = Some("special parameter type: needs search logic of its own".to_owned());
    }
    let mut targets: Vec<ResourceType> = raw
        .target
        .iter()
        .filter_map(|t| ResourceType::parse(t))
        .collect();
    targets.sort_unstable();
    SearchParam {
        code: raw.code,
        url: raw.url,
        param_type,
        base,
        expression_text: raw.expression,
        targets,
        components,
        multiple_or: raw.multiple_or.unwrap_or(true),
        multiple_and: raw.multiple_and.unwrap_or(true),
        comparators: raw.comparator.clone(),
        expressions,
        by_base,
        problem,
    }
}

/// Concrete resource types a base list covers: `Resource` and `DomainResource` stand for all
/// their concrete descendants.
fn expand_bases(bases: &[&str], defs: &Definitions) -> Vec<ResourceType> {
    let mut out: Vec<ResourceType> = Vec::new();
    for base in bases {
        match (ResourceType::parse(base), TypeName::resolve(base)) {
            (Some(ty), _) => out.push(ty),
            (None, Some(abstract_base)) => out.extend(
                defs.resource_types()
                    .iter()
                    .filter(|ty| is_a(**ty, abstract_base)),
            ),
            (None, None) => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn is_a(ty: ResourceType, wanted: TypeName) -> bool {
    crate::fhirpath::type_is_a(ty.as_str(), wanted)
}

/// The top-level terms of a union, each with the type its path starts from, if any.
fn union_terms(node: &Node) -> Vec<(Option<TypeName>, Node)> {
    match node {
        Node::Union(a, b) => {
            let mut terms = union_terms(a);
            terms.extend(union_terms(b));
            terms
        }
        other => vec![(root_type(other), other.clone())],
    }
}

/// The type name a term's path starts with (`Patient` in `(Patient.deceased as dateTime)` or
/// in `Patient.deceased.exists() and Patient.deceased != false`).
fn root_type(node: &Node) -> Option<TypeName> {
    match node {
        Node::TypeFilter(t) => Some(*t),
        Node::Child(base, _)
        | Node::Index(base, _)
        | Node::Call(Some(base), _)
        | Node::Is(base, _)
        | Node::As(base, _) => root_type(base),
        Node::And(a, b) | Node::Or(a, b) | Node::Union(a, b) => {
            let (ra, rb) = (root_type(a), root_type(b));
            if ra == rb || rb.is_none() { ra } else { None }
        }
        Node::Equals { left, right, .. } => {
            let (ra, rb) = (root_type(left), root_type(right));
            if ra == rb || rb.is_none() { ra } else { None }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
