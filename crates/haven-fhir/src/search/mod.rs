//! The pure half of FHIR search (R4 `search.html`): which search parameters exist, and what a
//! resource's index values are. No storage and no query evaluation: the store indexes what
//! [`extract_all`] returns, and matches queries against it.
//!
//! **Definitions.** All 1,377 R4 (4.0.1) SearchParameters of the vendored bundle, loaded on
//! first use ([`Definitions::search_params`], [`Definitions::search_param`]), with parameters
//! of `Resource` and `DomainResource` (`_id`, `_lastUpdated`, `_tag`, `_profile`,
//! `_security`, `_source`) listed under every concrete type they apply to. Expressions are
//! parsed once, and unions are split per base type (see `load.rs`). The Patient compartment
//! ([`Definitions::patient_compartment`]) comes from the vendored CompartmentDefinition, with
//! the two rows the Medplum package changed restored to R4 by `build.rs` (Encounter links
//! through `patient`, not `subject`; Task is not in the compartment).
//!
//! **Unsupported parameters** ([`SearchParam::is_supported`] is false; [`extract`] yields
//! nothing for them). Each needs search logic of its own that FHIRPath cannot express:
//!
//! | parameter | type | why |
//! |---|---|---|
//! | `_text` (DomainResource) | string | no expression: full-text search over the narrative |
//! | `_content` (Resource) | string | no expression: full-text search over the whole resource |
//! | `_query` (Resource) | token | no expression: names a named query |
//! | `near` (Location) | special | geographic distance over `Location.position` |
//!
//! The three `phonetic` parameters (Patient/Person/Practitioner/RelatedPerson, Organization,
//! InsurancePlan) are extracted like any string parameter; phonetic matching is the query
//! side's business. The one R5 snapshot in the package (`DeviceDefinition-classification`)
//! is dropped by `build.rs`.
//!
//! **Conversions** (R4 `search.html#table`), by search type and the FHIR type of each value
//! the expression yields; anything not listed yields nothing:
//!
//! | search type | FHIR type → [`IndexValue`] |
//! |---|---|
//! | string | string, markdown (and other string primitives); HumanName: `family`, each `given`, `prefix`, `suffix`, `text`; Address: each `line`, `city`, `district`, `state`, `postalCode`, `country`, `text` |
//! | token | code/string/id/uri → code; boolean (also computed, Patient `deceased`) → `"true"`/`"false"`; Coding → system, code, display; CodeableConcept → each Coding, plus its `text`; Identifier → system, value, `type.text`, first `type.coding` as `of_type`; ContactPoint → `system` as system, `value` as code |
//! | reference | Reference → type/id/version from a literal reference (or `#id` of a contained resource; else `Reference.type`), the text as written, `identifier`; canonical → url and `\|version`; uri, Attachment (`url`) → url; an embedded resource (Bundle `composition`, `message`) → its type and id |
//! | date | date, dateTime, instant → the period the precision denotes; Period → start of `start` to end of `end`, open ends unbounded; Timing → each `event`, else `repeat.boundsPeriod` |
//! | number | integer, decimal, ... → value with its implicit precision range; Range → `low`..`high` |
//! | quantity | Quantity and its profiles (Age, Duration, Count, Distance) → value, system, code, unit; Money → value and currency (system `urn:iso:std:iso:4217`); Range → `low`..`high` |
//! | uri | uri, url, canonical, oid, uuid → the text |
//! | composite | one [`IndexValue::Composite`] per element the expression selects, per combination of its components' values (so `code-value-quantity` pairs each code of *this* Observation or component with *its* value) |
//!
//! Deliberately not indexed: SampledData (a quantity parameter may select it, but its data
//! is an unbounded series), Age/Range/string selected by a *date* parameter (`onset[x]` in
//! `clinical-date`), extensions of primitives (`_given`).
//!
//! Numbers keep their exact text; the bounds are the implicit precision range of R4
//! `search.html#number` ("5.40" → [5.395, 5.405)), computed from the decimal text so that
//! they are the nearest doubles to the exact bounds. Dates are microseconds since the Unix
//! epoch, UTC (values without a zone are taken as UTC, as in `primitives`), end exclusive.

mod index;
mod load;
mod number;
pub mod query;
pub mod subset;

use std::sync::LazyLock;

use serde_json::{Map, Value};

pub use index::{IndexValue, normalize_string};

use crate::fhirpath::{Expression, Item};
use crate::model::{Definitions, ResourceType, definitions};

/// Composite values per selected element are capped, so that a hostile resource (hundreds
/// of codings times hundreds of values) cannot blow up the index.
const MAX_COMBINATIONS: usize = 64;

/// A search parameter's type (R4 `search-param-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    fn parse(s: &str) -> ParamType {
        match s {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            _ => ParamType::Special,
        }
    }

    /// The R4 code (`token`, `reference`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }

    /// The modifiers R4 defines for this type (`search.html#modifiers`); `[type]` stands for
    /// the `:Patient`-style reference type modifier. Composite and special take none.
    #[must_use]
    pub fn modifiers(self) -> &'static [&'static str] {
        match self {
            ParamType::String => &["missing", "exact", "contains"],
            ParamType::Token => &[
                "missing", "text", "not", "above", "below", "in", "not-in", "of-type",
            ],
            ParamType::Reference => &["missing", "[type]", "identifier", "above", "below"],
            ParamType::Uri => &["missing", "above", "below"],
            ParamType::Number | ParamType::Date | ParamType::Quantity => &["missing"],
            ParamType::Composite | ParamType::Special => &[],
        }
    }
}

/// One R4 search parameter.
#[derive(Debug)]
pub struct SearchParam {
    /// The name used in queries (`birthdate`, `_id`).
    pub code: &'static str,
    /// The canonical URL of the SearchParameter.
    pub url: &'static str,
    pub param_type: ParamType,
    /// Concrete resource types it applies to (`Resource`/`DomainResource` expanded), sorted.
    pub base: Vec<ResourceType>,
    /// The FHIRPath expression as published (a union over all base types).
    pub expression_text: Option<&'static str>,
    /// Reference parameters: the allowed target types, sorted.
    pub targets: Vec<ResourceType>,
    /// Composite parameters: the components, in order.
    pub components: Vec<Component>,
    pub multiple_or: bool,
    pub multiple_and: bool,
    /// Prefixes allowed (`eq`, `gt`, ...), as published; empty when unspecified.
    pub comparators: Vec<&'static str>,
    expressions: Vec<Expression>,
    /// (base type, index into `expressions`), sorted by type.
    by_base: Vec<(ResourceType, usize)>,
    problem: Option<String>,
}

/// One component of a composite parameter: evaluated on each element the composite's own
/// expression selects, and indexed with the type of the parameter it names.
#[derive(Debug)]
pub struct Component {
    /// URL of the SearchParameter that gives the component's type.
    pub definition: &'static str,
    pub param_type: ParamType,
    pub expression: Expression,
}

/// Parameters are loaded once and never copied, so two are the same parameter exactly when
/// they are the same definition (URL).
impl PartialEq for SearchParam {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
    }
}

impl SearchParam {
    /// Whether Haven can index this parameter (see the module docs for those it cannot).
    #[must_use]
    pub fn is_supported(&self) -> bool {
        self.problem.is_none()
    }

    /// Why the parameter is not supported, for messages and the CapabilityStatement.
    #[must_use]
    pub fn unsupported_reason(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// The part of the expression that applies to `ty` (`Patient.name` of
    /// `Patient.name | Person.name`); `None` if the parameter does not apply to `ty`.
    #[must_use]
    pub fn expression(&self, ty: ResourceType) -> Option<&Expression> {
        let i = self.by_base.binary_search_by_key(&ty, |(t, _)| *t).ok()?;
        self.expressions.get(self.by_base[i].1)
    }
}

fn registry() -> &'static load::Registry {
    static REGISTRY: LazyLock<load::Registry> = LazyLock::new(|| load::load(definitions()));
    &REGISTRY
}

/// Search definitions, loaded on first use (separately from the type model, so validation
/// alone never pays for them).
impl Definitions {
    /// Every R4 search parameter (including unsupported ones), sorted by code.
    #[must_use]
    pub fn all_search_params(&self) -> &'static [SearchParam] {
        &registry().params
    }

    /// The search parameters of `ty`, including the common ones, sorted by code.
    pub fn search_params(&self, ty: ResourceType) -> impl Iterator<Item = &'static SearchParam> {
        let reg = registry();
        reg.by_type
            .get(&ty)
            .into_iter()
            .flatten()
            .map(|&(i, _)| &reg.params[i])
    }

    /// The parameter of `ty` named `code`.
    #[must_use]
    pub fn search_param(&self, ty: ResourceType, code: &str) -> Option<&'static SearchParam> {
        let reg = registry();
        let indices = reg.by_type.get(&ty)?;
        let i = indices
            .binary_search_by(|&(i, _)| reg.params[i].code.cmp(code))
            .ok()?;
        Some(&reg.params[indices[i].0])
    }

    /// Codes of the parameters of `ty` whose values place a resource in a Patient's
    /// compartment (`["subject", "performer"]` for Observation); empty when `ty` cannot be
    /// in it. For Patient itself this is `["link"]`; a Patient is also in its own
    /// compartment (R4 `compartmentdefinition.html`).
    #[must_use]
    pub fn patient_compartment(&self, ty: ResourceType) -> &'static [&'static str] {
        registry()
            .patient_compartment
            .get(&ty)
            .map_or(&[], Vec::as_slice)
    }
}

/// The index values of one parameter for `resource` (whose `resourceType` selects the
/// sub-expression). Empty if the parameter does not apply or is unsupported. Duplicates are
/// removed.
#[must_use]
pub fn extract(resource: &Map<String, Value>, param: &SearchParam) -> Vec<IndexValue> {
    let Some(ty) = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(ResourceType::parse)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(expression) = param.expression(ty) {
        extract_into(&Item::resource(resource), param, expression, &mut out);
    }
    out
}

/// The index values of every supported parameter of the resource's type, in parameter code
/// order.
#[must_use]
pub fn extract_all(resource: &Map<String, Value>) -> Vec<(&'static SearchParam, IndexValue)> {
    let Some(ty) = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(ResourceType::parse)
    else {
        return Vec::new();
    };
    let reg = registry();
    let root = Item::resource(resource);
    let mut out = Vec::new();
    let mut values = Vec::new();
    for &(i, expression) in reg.by_type.get(&ty).into_iter().flatten() {
        let param = &reg.params[i];
        if let Some(expression) = expression.and_then(|e| param.expressions.get(e)) {
            extract_into(&root, param, expression, &mut values);
            out.extend(values.drain(..).map(|v| (param, v)));
        }
    }
    out
}

fn extract_into<'a>(
    root: &Item<'a>,
    param: &'a SearchParam,
    expression: &'a Expression,
    out: &mut Vec<IndexValue>,
) {
    if !param.is_supported() {
        return;
    }
    let items = expression.evaluate_from(root);
    if param.param_type == ParamType::Composite {
        for item in items {
            composite(root, param, item, out);
        }
    } else {
        for item in &items {
            index::convert(param.param_type, item, out);
        }
    }
    dedup(out);
}

/// The tuples of component values for one selected element (a cartesian product, capped).
fn composite<'a>(
    root: &Item<'a>,
    param: &'a SearchParam,
    focus: Item<'a>,
    out: &mut Vec<IndexValue>,
) {
    if param.components.is_empty() {
        return;
    }
    let mut tuples: Vec<Vec<IndexValue>> = vec![Vec::new()];
    for component in &param.components {
        let mut values = Vec::new();
        for item in component.expression.evaluate_with(root, &[focus]) {
            index::convert(component.param_type, &item, &mut values);
        }
        dedup(&mut values);
        let mut next = Vec::new();
        'product: for tuple in &tuples {
            for value in &values {
                if next.len() == MAX_COMBINATIONS {
                    break 'product;
                }
                let mut t = tuple.clone();
                t.push(value.clone());
                next.push(t);
            }
        }
        tuples = next;
    }
    out.extend(tuples.into_iter().map(IndexValue::Composite));
}

/// Removes repeated values, keeping the first. Quadratic, but a parameter's values are few;
/// past 256 values only adjacent repeats are removed.
fn dedup(values: &mut Vec<IndexValue>) {
    if values.len() > 256 {
        values.dedup();
        return;
    }
    let mut i = 0;
    while i < values.len() {
        if values[..i].contains(&values[i]) {
            values.remove(i);
        } else {
            i += 1;
        }
    }
}
