//! The FHIR R4 type model: which resource types exist, and for every resource and datatype
//! which elements it has, with their cardinality and types.
//!
//! Built once per process from the compact model `build.rs` extracts from the vendored HL7
//! StructureDefinitions (see `load.rs`). Everything the validator needs is precomputed here so
//! that validating a resource is a walk with hash lookups and no per-call setup:
//! - each *context* (a type's root, or an inline BackboneElement such as `Patient.contact`)
//!   maps JSON property names to elements, with choice types expanded (`valueQuantity`);
//! - every type reference is resolved to a [`Shape`] (primitive, complex context, or resource);
//! - primitive regexes are compiled once;
//! - the top-level elements that `_summary` and `_elements` keep (`isSummary`, `min >= 1`)
//!   are listed per resource type on first use ([`Definitions::summary_elements`],
//!   [`Definitions::mandatory_elements`]).
//!
//! [`ResourceType`] deliberately does not touch that model: its name list is a generated
//! `const` array, so parsing a type name is a binary search with no start-up cost.

mod load;

pub(crate) use load::upper_first;

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/resource_types.rs"));
}
use generated::RESOURCE_TYPE_NAMES;

/// A concrete (non-abstract) FHIR R4 resource type, e.g. `Patient`.
///
/// Only values from the R4 definitions can be constructed, so holding one proves the name is
/// valid. Ordering is alphabetical by name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ResourceType(&'static str);

/// All concrete resource types, sorted; built from the generated name list.
static RESOURCE_TYPES: [ResourceType; RESOURCE_TYPE_NAMES.len()] = {
    let mut out = [ResourceType(""); RESOURCE_TYPE_NAMES.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = ResourceType(RESOURCE_TYPE_NAMES[i]);
        i += 1;
    }
    out
};

impl ResourceType {
    /// The resource type with exactly this (case-sensitive) name, if it is a concrete R4
    /// resource type. Abstract types (`Resource`, `DomainResource`) are not accepted.
    #[must_use]
    pub fn parse(s: &str) -> Option<ResourceType> {
        RESOURCE_TYPE_NAMES
            .binary_search(&s)
            .ok()
            .map(|i| RESOURCE_TYPES[i])
    }

    /// The type's name as used in `resourceType` and in REST paths.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl serde::Serialize for ResourceType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

/// The R4 definitions, loaded once. The first call parses the embedded model (a few ms).
#[must_use]
pub fn definitions() -> &'static Definitions {
    static DEFINITIONS: LazyLock<Definitions> = LazyLock::new(load::load);
    &DEFINITIONS
}

/// The FHIR R4 type model: read-only, shared by every caller.
pub struct Definitions {
    pub(crate) fhir_version: &'static str,
    pub(crate) types: Vec<TypeDef>,
    pub(crate) types_by_name: HashMap<&'static str, TypeId>,
    pub(crate) elements: Vec<ElementDef>,
    pub(crate) contexts: Vec<Context>,
    pub(crate) elements_by_path: HashMap<&'static str, ElemId>,
    /// The `Element` context (`id` + `extension`): what a primitive's `_x` object may hold.
    pub(crate) element_ctx: CtxId,
}

impl fmt::Debug for Definitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Definitions")
            .field("fhir_version", &self.fhir_version)
            .field("types", &self.types.len())
            .field("elements", &self.elements.len())
            .field("contexts", &self.contexts.len())
            .finish_non_exhaustive()
    }
}

impl Definitions {
    /// All concrete R4 resource types, sorted by name.
    #[must_use]
    pub fn resource_types(&self) -> &[ResourceType] {
        &RESOURCE_TYPES
    }

    /// The FHIR version of the vendored definitions: `"4.0.1"`.
    #[must_use]
    pub fn fhir_version(&self) -> &'static str {
        self.fhir_version
    }

    /// Number of snapshot elements across all loaded types (resources, datatypes, primitives).
    #[must_use]
    pub fn element_count(&self) -> usize {
        self.elements.len()
    }

    pub(crate) fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.types_by_name.get(name).map(|&id| &self.types[id])
    }

    /// The top-level JSON property names of `ty` marked `isSummary` in the R4 definitions
    /// (what `_summary=true` keeps, R4 `search.html#summary`), in snapshot order. Choice
    /// elements appear once per type, by JSON name: `deceasedBoolean`, `deceasedDateTime`.
    /// Includes the inherited `id`, `meta` and `implicitRules`; never `resourceType`.
    #[must_use]
    pub fn summary_elements(&self, ty: ResourceType) -> &'static [&'static str] {
        element_sets()
            .get(&ty)
            .map_or(&[], |s| s.summary.as_slice())
    }

    /// The top-level JSON property names of `ty` with a minimum cardinality of 1 or more
    /// (kept by `_summary=text` and `_elements`), in snapshot order, with choice elements
    /// expanded as in [`Definitions::summary_elements`]. Observation: `status`, `code`.
    #[must_use]
    pub fn mandatory_elements(&self, ty: ResourceType) -> &'static [&'static str] {
        element_sets()
            .get(&ty)
            .map_or(&[], |s| s.mandatory.as_slice())
    }

    /// The top-level element of `ty` that the JSON property `key` holds (`valueQuantity` →
    /// `Observation.value[x]`). `key` is without the `_` of a primitive's extension object.
    pub(crate) fn root_element(&self, ty: ResourceType, key: &str) -> Option<&ElementDef> {
        let def = self.type_def(ty.as_str())?;
        let &(id, _) = self.contexts[def.root].keys.get(key)?;
        Some(&self.elements[id])
    }

    #[allow(
        dead_code,
        reason = "used by tests now, and by search-parameter indexing next"
    )]
    pub(crate) fn element_by_path(&self, path: &str) -> Option<&ElementDef> {
        self.elements_by_path
            .get(path)
            .map(|&id| &self.elements[id])
    }
}

/// Per resource type, the JSON names behind [`Definitions::summary_elements`] and
/// [`Definitions::mandatory_elements`].
struct ElementSets {
    summary: Vec<&'static str>,
    mandatory: Vec<&'static str>,
}

/// Built on first use from the shared model, so the names borrow its `'static` keys instead
/// of being copied or leaked.
fn element_sets() -> &'static HashMap<ResourceType, ElementSets> {
    static SETS: LazyLock<HashMap<ResourceType, ElementSets>> = LazyLock::new(|| {
        let defs = definitions();
        defs.resource_types()
            .iter()
            .map(|&ty| {
                let root = defs
                    .type_def(ty.as_str())
                    .expect("every resource type has a definition")
                    .root;
                let ctx = &defs.contexts[root];
                let names = |keep: fn(&ElementDef) -> bool| -> Vec<&'static str> {
                    let mut out = Vec::new();
                    for el in ctx.elements.iter().map(|&id| &defs.elements[id]) {
                        if !keep(el) {
                            continue;
                        }
                        if el.is_choice {
                            for t in &el.types {
                                let key = format!("{}{}", el.name, upper_first(t.code));
                                let (key, _) = ctx
                                    .keys
                                    .get_key_value(&key)
                                    .expect("phase 3 of load keyed every choice type");
                                out.push(key.as_str());
                            }
                        } else {
                            out.push(el.name);
                        }
                    }
                    out
                };
                let sets = ElementSets {
                    summary: names(|el| el.is_summary),
                    mandatory: names(|el| el.min >= 1),
                };
                (ty, sets)
            })
            .collect()
    });
    &SETS
}

pub(crate) type TypeId = usize;
pub(crate) type ElemId = usize;
pub(crate) type CtxId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeKind {
    Resource,
    Complex,
    Primitive,
}

#[derive(Debug)]
pub(crate) struct TypeDef {
    pub name: &'static str,
    pub kind: TypeKind,
    #[allow(
        dead_code,
        reason = "part of the model; read by tests, and by search/FHIRPath next"
    )]
    pub is_abstract: bool,
    /// Name of the base type (`DomainResource`, `Element`, ...); `None` for `Element`/`Resource`.
    #[allow(
        dead_code,
        reason = "part of the model; read by tests, and by search/FHIRPath next"
    )]
    pub base: Option<&'static str>,
    /// The context holding the type's top-level elements.
    pub root: CtxId,
    /// Primitives only: the official value regex, anchored and compiled.
    pub regex: Option<Regex>,
}

/// Maximum cardinality. R4 base definitions only use 0, 1 and `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Max {
    Zero,
    One,
    Many,
}

#[derive(Debug)]
pub(crate) struct ElementDef {
    /// Snapshot path, e.g. `Patient.deceased[x]`.
    pub path: &'static str,
    /// JSON property base name, e.g. `deceased` (for choices the type suffix is added).
    pub name: &'static str,
    pub min: u32,
    pub max: Max,
    pub types: Vec<TypeRef>,
    pub is_choice: bool,
    /// `DomainResource.contained`: resources held here get the contained-resource rules.
    pub is_contained: bool,
    /// `ElementDefinition.isSummary`: kept by `_summary=true` (R4 `search.html#summary`).
    pub is_summary: bool,
}

#[derive(Debug)]
pub(crate) struct TypeRef {
    /// FHIR type code (`HumanName`, `string`, `Reference`, `BackboneElement`, ...).
    pub code: &'static str,
    pub shape: Shape,
    /// For `Reference`/`canonical`: allowed target type names from `targetProfile`.
    pub targets: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A primitive. `extensible` is false for FHIRPath system types (Element.id,
    /// Extension.url, Resource.id), which have no `_x` form.
    Primitive {
        prim: Prim,
        regex_of: TypeId,
        extensible: bool,
    },
    /// A JSON object validated against a context: a datatype root or an inline backbone.
    Complex(CtxId),
    /// A whole resource, validated as the type named by its own `resourceType`; unless the
    /// type code is `Resource`, that must be the code's type.
    Resource,
}

/// How a primitive is represented in JSON and which extra checks it gets beyond its regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prim {
    Boolean,
    Integer,
    PositiveInt,
    UnsignedInt,
    Decimal,
    Date,
    DateTime,
    Instant,
    Time,
    Base64Binary,
    Xhtml,
    /// `string` and its specialisations (`code`, `id`, `markdown`): limited to 1 MB.
    StringLike,
    /// uri, url, canonical, oid, uuid: regex only.
    UriLike,
}

impl Prim {
    pub(crate) fn from_code(code: &str) -> Option<Prim> {
        Some(match code {
            "boolean" => Prim::Boolean,
            "integer" => Prim::Integer,
            "positiveInt" => Prim::PositiveInt,
            "unsignedInt" => Prim::UnsignedInt,
            "decimal" => Prim::Decimal,
            "date" => Prim::Date,
            "dateTime" => Prim::DateTime,
            "instant" => Prim::Instant,
            "time" => Prim::Time,
            "base64Binary" => Prim::Base64Binary,
            "xhtml" => Prim::Xhtml,
            "string" | "code" | "id" | "markdown" => Prim::StringLike,
            "uri" | "url" | "canonical" | "oid" | "uuid" => Prim::UriLike,
            _ => return None,
        })
    }
}

/// The children of one element-bearing node: a type's root or an inline BackboneElement.
#[derive(Debug)]
pub(crate) struct Context {
    /// Path of the node, e.g. `Patient` or `Patient.contact`; used in messages.
    pub path: &'static str,
    /// Child elements in snapshot order.
    pub elements: Vec<ElemId>,
    /// JSON property name (without `_`) to element and index into its `types`.
    pub keys: HashMap<String, (ElemId, usize)>,
    /// Children with `min >= 1`.
    pub required: Vec<ElemId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_type_names_parse_and_round_trip() {
        let defs = definitions();
        assert!(defs.resource_types().len() > 140);
        assert_eq!(
            defs.resource_types().len(),
            146,
            "R4 4.0.1 has 146 concrete resource types"
        );
        for rt in defs.resource_types() {
            assert_eq!(ResourceType::parse(rt.as_str()), Some(*rt));
            assert_eq!(rt.to_string(), rt.as_str());
            let def = defs
                .type_def(rt.as_str())
                .expect("every resource type has a definition");
            assert_eq!(def.kind, TypeKind::Resource);
            assert!(!def.is_abstract);
        }
        assert!(defs.resource_types().windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn abstract_unknown_and_non_r4_types_do_not_parse() {
        for name in [
            "Resource",
            "DomainResource",
            "patient",
            "",
            "HumanName",
            "SubscriptionStatus",
        ] {
            assert_eq!(ResourceType::parse(name), None, "{name}");
        }
        assert_eq!(
            ResourceType::parse("Patient").map(|t| t.as_str()),
            Some("Patient")
        );
    }

    #[test]
    fn resource_type_serializes_as_string() {
        let rt = ResourceType::parse("Observation").unwrap();
        assert_eq!(serde_json::to_string(&rt).unwrap(), "\"Observation\"");
    }

    #[test]
    fn model_has_expected_shape() {
        let defs = definitions();
        assert_eq!(defs.fhir_version(), "4.0.1");
        assert!(defs.element_count() > 5000, "{}", defs.element_count());
        let patient = defs.type_def("Patient").unwrap();
        assert_eq!(patient.base, Some("DomainResource"));
        let ctx = &defs.contexts[patient.root];
        assert_eq!(ctx.path, "Patient");
        assert!(ctx.keys.contains_key("deceasedBoolean"));
        assert!(ctx.keys.contains_key("deceasedDateTime"));
        assert!(!ctx.keys.contains_key("deceased"));
        let link_type = defs.element_by_path("Patient.link.type").unwrap();
        assert_eq!((link_type.min, link_type.max), (1, Max::One));
        let gp = defs.element_by_path("Patient.generalPractitioner").unwrap();
        assert_eq!(
            gp.types[0].targets,
            ["Organization", "Practitioner", "PractitionerRole"]
        );
        // The root id is an `id`, not a plain string, and cannot carry extensions.
        let id = defs.element_by_path("Patient.id").unwrap();
        assert_eq!(id.types[0].code, "id");
        assert!(matches!(
            id.types[0].shape,
            Shape::Primitive {
                extensible: false,
                ..
            }
        ));
        // Constraint profiles and logical models are not loaded.
        assert!(defs.type_def("SimpleQuantity").is_none());
        assert!(defs.type_def("MetadataResource").is_none());
        assert!(defs.type_def("date").unwrap().regex.is_some());
    }

    #[test]
    fn summary_elements_follow_is_summary_with_choices_expanded() {
        let defs = definitions();
        let patient = ResourceType::parse("Patient").unwrap();
        assert_eq!(
            defs.summary_elements(patient),
            [
                "id",
                "meta",
                "implicitRules",
                "identifier",
                "active",
                "name",
                "telecom",
                "gender",
                "birthDate",
                "deceasedBoolean",
                "deceasedDateTime",
                "address",
                "managingOrganization",
                "link",
            ]
        );
        assert!(defs.mandatory_elements(patient).is_empty());

        let observation = ResourceType::parse("Observation").unwrap();
        let summary = defs.summary_elements(observation);
        for name in [
            "id",
            "identifier",
            "basedOn",
            "partOf",
            "status",
            "code",
            "subject",
            "focus",
            "encounter",
            "effectiveDateTime",
            "effectiveInstant",
            "issued",
            "performer",
            "valueQuantity",
            "valuePeriod",
            "hasMember",
            "derivedFrom",
            "component",
        ] {
            assert!(summary.contains(&name), "{name}");
        }
        for name in [
            "text",
            "category",
            "dataAbsentReason",
            "interpretation",
            "note",
            "referenceRange",
            "modifierExtension",
        ] {
            assert!(!summary.contains(&name), "{name}");
        }
        // 3 from Resource, 13 plain, effective[x] x4, value[x] x11.
        assert_eq!(summary.len(), 3 + 13 + 4 + 11);
        assert_eq!(defs.mandatory_elements(observation), ["status", "code"]);

        let admin = ResourceType::parse("MedicationAdministration").unwrap();
        let mandatory = defs.mandatory_elements(admin);
        assert!(mandatory.contains(&"medicationCodeableConcept"));
        assert!(mandatory.contains(&"effectivePeriod"));

        // Flags of nested elements are loaded too.
        assert!(defs.element_by_path("HumanName.family").unwrap().is_summary);
        assert!(!defs.element_by_path("Attachment.data").unwrap().is_summary);
    }

    #[test]
    fn every_resource_keeps_its_base_summary_and_most_mandatory_elements() {
        // R4 marks root elements with min >= 1 as summary, with these four exceptions, which
        // `_summary=true` therefore drops (see `search::subset`).
        const MANDATORY_NOT_SUMMARY: [&str; 4] = [
            "Appointment.participant",
            "AuditEvent.agent",
            "AuditEvent.source",
            "Provenance.agent",
        ];
        let defs = definitions();
        let mut exceptions = Vec::new();
        for &ty in defs.resource_types() {
            let summary = defs.summary_elements(ty);
            for base in ["id", "meta", "implicitRules"] {
                assert!(summary.contains(&base), "{ty}.{base}");
            }
            assert!(!summary.contains(&"text"), "{ty}.text");
            for name in defs.mandatory_elements(ty) {
                if !summary.contains(name) {
                    exceptions.push(format!("{ty}.{name}"));
                }
            }
        }
        assert_eq!(exceptions, MANDATORY_NOT_SUMMARY);
    }

    #[test]
    fn content_reference_resolves_to_the_referenced_backbone() {
        let defs = definitions();
        let item = defs.element_by_path("Questionnaire.item.item").unwrap();
        let outer = defs.element_by_path("Questionnaire.item").unwrap();
        assert_eq!(item.types.len(), 1);
        assert_eq!(item.types[0].shape, outer.types[0].shape);
        let Shape::Complex(ctx) = item.types[0].shape else {
            panic!("complex expected")
        };
        assert_eq!(defs.contexts[ctx].path, "Questionnaire.item");
    }
}
