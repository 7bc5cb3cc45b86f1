//! What the evaluator knows about types: type names in expressions, the type of every item,
//! and a navigation index over the R4 model (element name → JSON keys and types), so that
//! `Observation.value` finds `valueQuantity` and knows it is a `Quantity`.

use std::sync::LazyLock;

use serde_json::{Map, Value};

use crate::model::{CtxId, Shape, TypeId, definitions, upper_first};

/// A type named in an expression (`Patient`, `Quantity`, `dateTime`), checked against the
/// model when the expression is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TypeName(TypeId);

impl TypeName {
    /// The model type with this name. FHIRPath system types map to the FHIR primitive of the
    /// same meaning (`DateTime` → `dateTime`), which is how R4 expressions use them
    /// (`value.as(DateTime)` in Observation `code-value-date`).
    pub(crate) fn resolve(name: &str) -> Option<TypeName> {
        let name = match name {
            "String" => "string",
            "Boolean" => "boolean",
            "Integer" => "integer",
            "Decimal" => "decimal",
            "Date" => "date",
            "DateTime" => "dateTime",
            "Time" => "time",
            other => other,
        };
        definitions()
            .types_by_name
            .get(name)
            .map(|&id| TypeName(id))
    }

    pub(crate) fn as_str(self) -> &'static str {
        definitions().types[self.0].name
    }
}

/// The type of an item: its FHIR type when known, and for complex values the model context
/// that lists its children (a datatype's root, or an inline backbone element).
///
/// Types are model indices, so type tests and navigation never hash a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Ty {
    pub id: Option<TypeId>,
    pub ctx: Option<CtxId>,
}

impl Ty {
    pub(crate) const UNKNOWN: Ty = Ty {
        id: None,
        ctx: None,
    };

    /// The type with this name, without a context (primitives, and resolved references).
    pub(crate) fn named(name: &str) -> Ty {
        Ty {
            id: definitions().types_by_name.get(name).copied(),
            ctx: None,
        }
    }

    pub(crate) fn name(self) -> Option<&'static str> {
        self.id.map(|id| definitions().types[id].name)
    }

    /// Whether this is `wanted` or derives from it (`Age` is a `Quantity`, `code` a `string`,
    /// `Patient` a `DomainResource`), following the model's base types.
    pub(crate) fn is_a(self, wanted: TypeName) -> bool {
        let bases = &nav().base;
        let mut current = self.id;
        while let Some(id) = current {
            if id == wanted.0 {
                return true;
            }
            current = bases[id];
        }
        false
    }
}

/// The type of a resource held as JSON, from its `resourceType` (unknown types stay unknown).
pub(crate) fn resource_ty(resource: &Map<String, Value>) -> Ty {
    let defs = definitions();
    resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(|name| defs.types_by_name.get(name))
        .map_or(Ty::UNKNOWN, |&id| Ty {
            id: Some(id),
            ctx: Some(defs.types[id].root),
        })
}

/// An element name in an expression, with its symbol: the name's index among all element
/// names of the model, so that navigation compares integers, not strings. `None` for a name
/// no R4 element has (it can still match keys of JSON of unknown type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ElementName {
    pub text: String,
    pub sym: Option<u32>,
}

impl ElementName {
    pub(crate) fn new(text: String) -> ElementName {
        let sym = nav().sym(&text);
        ElementName { text, sym }
    }
}

/// An element of a context: its name and its JSON spellings.
#[derive(Debug)]
pub(crate) struct Child {
    pub sym: u32,
    pub name: &'static str,
    /// `value[x]`: one variant per type, keyed `valueQuantity`, `valueString`, ...
    pub is_choice: bool,
    pub variants: Vec<Variant>,
}

/// One JSON spelling of an element: `name` itself, or for a choice `nameType`.
#[derive(Debug)]
pub(crate) struct Variant {
    pub key: String,
    pub ty: ChildTy,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum ChildTy {
    Known(Ty),
    /// An embedded resource (`contained`, `Bundle.entry.resource`): typed by its own
    /// `resourceType`.
    Resource,
}

/// The model, indexed for evaluation.
#[derive(Debug)]
pub(crate) struct Nav {
    /// Every element name of the model, sorted: symbols are indices into it.
    names: Vec<&'static str>,
    /// Per context, its elements sorted by symbol.
    by_ctx: Vec<Vec<Child>>,
    /// Per type, its base type.
    base: Vec<Option<TypeId>>,
    /// `extension`, for the `extension()` function.
    pub extension: ElementName,
}

impl Nav {
    fn sym(&self, name: &str) -> Option<u32> {
        let i = self.names.binary_search(&name).ok()?;
        u32::try_from(i).ok()
    }

    /// Element `name` of context `ctx`.
    pub(crate) fn child(&self, ctx: CtxId, name: &ElementName) -> Option<&Child> {
        let (children, sym) = (self.by_ctx.get(ctx)?, name.sym?);
        let i = children.binary_search_by_key(&sym, |c| c.sym).ok()?;
        Some(&children[i])
    }
}

/// The navigation index, built from the model on first use (a few ms).
pub(crate) fn nav() -> &'static Nav {
    static NAV: LazyLock<Nav> = LazyLock::new(build);
    &NAV
}

fn build() -> Nav {
    let defs = definitions();
    let mut names: Vec<&'static str> = defs.elements.iter().map(|el| el.name).collect();
    names.sort_unstable();
    names.dedup();
    let sym = |name: &str| {
        let i = names
            .binary_search(&name)
            .expect("every element name is listed");
        u32::try_from(i).expect("fewer than 2^32 names")
    };
    let by_ctx = defs
        .contexts
        .iter()
        .map(|ctx| {
            let mut children: Vec<Child> = ctx
                .elements
                .iter()
                .map(|&id| {
                    let el = &defs.elements[id];
                    let variants = el
                        .types
                        .iter()
                        .map(|t| Variant {
                            key: if el.is_choice {
                                format!("{}{}", el.name, upper_first(t.code))
                            } else {
                                el.name.to_owned()
                            },
                            ty: match t.shape {
                                Shape::Primitive { .. } => ChildTy::Known(Ty::named(t.code)),
                                Shape::Complex(ctx) => ChildTy::Known(Ty {
                                    ctx: Some(ctx),
                                    ..Ty::named(t.code)
                                }),
                                Shape::Resource => ChildTy::Resource,
                            },
                        })
                        .collect();
                    Child {
                        sym: sym(el.name),
                        name: el.name,
                        is_choice: el.is_choice,
                        variants,
                    }
                })
                .collect();
            children.sort_by_key(|c| c.sym);
            children
        })
        .collect();
    let base = defs
        .types
        .iter()
        .map(|t| t.base.and_then(|b| defs.types_by_name.get(b).copied()))
        .collect();
    let extension = ElementName {
        text: "extension".to_owned(),
        sym: Some(sym("extension")),
    };
    Nav {
        names,
        by_ctx,
        base,
        extension,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> ElementName {
        ElementName::new(text.to_owned())
    }

    fn ty_of(name: &str) -> Ty {
        Ty {
            ctx: Some(definitions().type_def(name).unwrap().root),
            ..Ty::named(name)
        }
    }

    #[test]
    fn choice_elements_list_every_json_key() {
        let obs = ty_of("Observation");
        let value = &nav()
            .child(obs.ctx.unwrap(), &name("value"))
            .unwrap()
            .variants;
        let keys: Vec<&str> = value.iter().map(|v| v.key.as_str()).collect();
        assert!(keys.contains(&"valueQuantity"), "{keys:?}");
        assert!(keys.contains(&"valueCodeableConcept"), "{keys:?}");
        let quantity = value.iter().find(|v| v.key == "valueQuantity").unwrap();
        let ChildTy::Known(ty) = quantity.ty else {
            panic!("Quantity is a datatype")
        };
        assert_eq!(ty.name(), Some("Quantity"));
        assert!(ty.ctx.is_some());
        assert!(
            nav()
                .child(obs.ctx.unwrap(), &name("valueQuantity"))
                .is_none()
        );
        let component = nav().child(obs.ctx.unwrap(), &name("component")).unwrap();
        assert_eq!(component.variants[0].key, "component");
        assert!(!component.is_choice);
        let contained = nav().child(obs.ctx.unwrap(), &name("contained")).unwrap();
        assert!(matches!(contained.variants[0].ty, ChildTy::Resource));
    }

    #[test]
    fn subtypes_follow_the_model() {
        let age = Ty::named("Age");
        assert!(age.is_a(TypeName::resolve("Quantity").unwrap()));
        assert!(!age.is_a(TypeName::resolve("Range").unwrap()));
        assert!(Ty::named("code").is_a(TypeName::resolve("String").unwrap()));
        assert!(ty_of("Patient").is_a(TypeName::resolve("Resource").unwrap()));
        assert!(!Ty::UNKNOWN.is_a(TypeName::resolve("Resource").unwrap()));
        assert_eq!(TypeName::resolve("DateTime").unwrap().as_str(), "dateTime");
        assert!(TypeName::resolve("SimpleQuantity").is_none());
    }

    #[test]
    fn resource_types_come_from_json() {
        let patient = serde_json::json!({"resourceType": "Patient"});
        assert_eq!(
            resource_ty(patient.as_object().unwrap()).name(),
            Some("Patient")
        );
        let odd = serde_json::json!({"resourceType": "Nope"});
        assert_eq!(resource_ty(odd.as_object().unwrap()), Ty::UNKNOWN);
    }
}
