//! Builds [`Definitions`] from the compact model that `build.rs` writes to `OUT_DIR/model.json`.
//!
//! Compact model format (all fields as extracted from the HL7 snapshots):
//! `{"fhirVersion", "types": [{"name", "kind", "abstract", "base"?, "regex"?, "elements":
//! [{"path", "min", "max", "types"?: [{"code", "system"?, "targets"?}], "contentReference"?,
//! "summary"?}]}]}`.
//! `system: true` marks FHIRPath system types, whose `code` is already the FHIR primitive named
//! by the `structuredefinition-fhir-type` extension. `summary: true` is `isSummary`; it is
//! omitted when false.
//!
//! Strings are borrowed from the embedded JSON (`&'static str`), so the model costs one parse
//! and no copies of names or paths.

use std::collections::HashMap;

use regex::Regex;
use serde::Deserialize;

use super::{
    Context, CtxId, Definitions, ElemId, ElementDef, Max, Prim, Shape, TypeDef, TypeKind, TypeRef,
};

static MODEL_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/model.json"));

#[derive(Deserialize)]
struct RawModel<'a> {
    #[serde(rename = "fhirVersion")]
    fhir_version: &'a str,
    #[serde(borrow)]
    types: Vec<RawType<'a>>,
}

#[derive(Deserialize)]
struct RawType<'a> {
    name: &'a str,
    kind: &'a str,
    #[serde(rename = "abstract")]
    is_abstract: bool,
    base: Option<&'a str>,
    regex: Option<String>,
    #[serde(borrow)]
    elements: Vec<RawElement<'a>>,
}

#[derive(Deserialize)]
struct RawElement<'a> {
    path: &'a str,
    min: u32,
    max: &'a str,
    #[serde(default, borrow)]
    types: Vec<RawTypeRef<'a>>,
    #[serde(rename = "contentReference")]
    content_reference: Option<&'a str>,
    #[serde(default)]
    summary: bool,
}

#[derive(Deserialize)]
struct RawTypeRef<'a> {
    code: &'a str,
    #[serde(default)]
    system: bool,
    #[serde(default, borrow)]
    targets: Vec<&'a str>,
}

/// Parses the embedded model. Panics only if the build produced an inconsistent model, which
/// the crate's tests exercise.
pub(super) fn load() -> Definitions {
    let raw: RawModel<'static> =
        serde_json::from_str(MODEL_JSON).expect("embedded FHIR model is valid JSON");
    let mut defs = Definitions {
        fhir_version: raw.fhir_version,
        types: Vec::with_capacity(raw.types.len()),
        types_by_name: HashMap::with_capacity(raw.types.len()),
        elements: Vec::new(),
        contexts: Vec::new(),
        elements_by_path: HashMap::new(),
        element_ctx: 0,
    };

    // Phase 1: types, contexts and elements; type references are resolved in phase 2, once
    // every type's root context exists.
    let mut pending: Vec<(ElemId, &RawElement<'static>)> = Vec::new();
    let mut ctx_by_path: HashMap<&'static str, CtxId> = HashMap::new();
    for rt in &raw.types {
        let kind = match rt.kind {
            "resource" => TypeKind::Resource,
            "primitive-type" => TypeKind::Primitive,
            _ => TypeKind::Complex,
        };
        let root = new_context(&mut defs, rt.name);
        ctx_by_path.insert(rt.name, root);
        let regex = rt.regex.as_deref().map(|rx| {
            Regex::new(&format!("^(?:{})$", xsd_regex_to_rust(rx)))
                .expect("official FHIR regexes compile")
        });
        defs.types_by_name.insert(rt.name, defs.types.len());
        defs.types.push(TypeDef {
            name: rt.name,
            kind,
            is_abstract: rt.is_abstract,
            base: rt.base,
            root,
            regex,
        });
        for el in rt.elements.iter().filter(|el| el.path != rt.name) {
            let Some((parent, last)) = el.path.rsplit_once('.') else {
                continue;
            };
            // Snapshots list a parent before its children, so the parent is already known.
            let parent_ctx = match ctx_by_path.get(parent) {
                Some(&ctx) => ctx,
                None => {
                    let ctx = new_context(&mut defs, parent);
                    ctx_by_path.insert(parent, ctx);
                    ctx
                }
            };
            let id = defs.elements.len();
            let is_choice = last.ends_with("[x]");
            defs.elements.push(ElementDef {
                path: el.path,
                name: last.trim_end_matches("[x]"),
                min: el.min,
                max: match el.max {
                    "0" => Max::Zero,
                    "1" => Max::One,
                    _ => Max::Many,
                },
                types: Vec::new(),
                is_choice,
                is_contained: kind == TypeKind::Resource
                    && parent == rt.name
                    && last == "contained",
                is_summary: el.summary,
            });
            defs.elements_by_path.insert(el.path, id);
            defs.contexts[parent_ctx].elements.push(id);
            pending.push((id, el));
        }
    }
    defs.element_ctx = defs.type_def("Element").expect("Element is defined").root;

    // Phase 2: resolve each element's types to shapes.
    for (id, el) in pending {
        let path = defs.elements[id].path;
        let types = if let Some(&ctx) = ctx_by_path.get(path) {
            // Inline BackboneElement (or Element, inside datatypes such as Timing.repeat).
            let code = el.types.first().map_or("BackboneElement", |t| t.code);
            vec![TypeRef {
                code,
                shape: Shape::Complex(ctx),
                targets: Vec::new(),
            }]
        } else if let Some(target) = el.content_reference {
            let ctx = *ctx_by_path
                .get(target)
                .expect("contentReference targets a backbone");
            vec![TypeRef {
                code: "BackboneElement",
                shape: Shape::Complex(ctx),
                targets: Vec::new(),
            }]
        } else {
            el.types.iter().map(|t| resolve_type(&defs, t)).collect()
        };
        defs.elements[id].types = types;
    }

    // Phase 3: JSON property names per context.
    for ctx in &mut defs.contexts {
        for &id in &ctx.elements {
            let el = &defs.elements[id];
            if el.min >= 1 {
                ctx.required.push(id);
            }
            if el.is_choice {
                for (i, t) in el.types.iter().enumerate() {
                    ctx.keys
                        .insert(format!("{}{}", el.name, upper_first(t.code)), (id, i));
                }
            } else {
                ctx.keys.insert(el.name.to_owned(), (id, 0));
            }
        }
    }
    defs
}

fn new_context(defs: &mut Definitions, path: &'static str) -> CtxId {
    defs.contexts.push(Context {
        path,
        elements: Vec::new(),
        keys: HashMap::new(),
        required: Vec::new(),
    });
    defs.contexts.len() - 1
}

fn resolve_type(defs: &Definitions, t: &RawTypeRef<'static>) -> TypeRef {
    let shape = if let Some(prim) = Prim::from_code(t.code) {
        let regex_of = defs.types_by_name[t.code];
        // xhtml forbids extensions (`xhtml.extension` has max 0), so like the FHIRPath
        // system types it has no `_x` form.
        let extensible = !t.system && prim != Prim::Xhtml;
        Shape::Primitive {
            prim,
            regex_of,
            extensible,
        }
    } else {
        let def = defs
            .type_def(t.code)
            .unwrap_or_else(|| panic!("unknown FHIR type {}", t.code));
        // `Resource`, or a specific type such as Bundle.entry.response.outcome's
        // OperationOutcome: a whole embedded resource, validated by its own resourceType.
        if def.kind == TypeKind::Resource {
            Shape::Resource
        } else {
            Shape::Complex(def.root)
        }
    };
    TypeRef {
        code: t.code,
        shape,
        targets: t.targets.clone(),
    }
}

/// `valueQuantity` style suffix: the type code with its first letter upper-cased.
pub(crate) fn upper_first(code: &str) -> String {
    let mut chars = code.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_ascii_uppercase().to_string() + chars.as_str()
    })
}

/// The FHIR regexes are XML Schema regexes, where `\s` means only space, tab, CR and LF.
/// Rust's `\s` is Unicode whitespace, which would wrongly reject e.g. a no-break space in a
/// `string`. Rust regex allows nested classes, so the same replacement works inside `[...]`.
fn xsd_regex_to_rust(rx: &str) -> String {
    let mut out = String::with_capacity(rx.len() + 16);
    let mut chars = rx.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push_str(r"[ \t\n\r]"),
            Some('S') => out.push_str(r"[^ \t\n\r]"),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push_str(r"\\"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsd_whitespace_classes_are_ascii_only() {
        let rx = Regex::new(&format!("^(?:{})$", xsd_regex_to_rust(r"[ \r\n\t\S]+"))).unwrap();
        assert!(rx.is_match("Dr.\u{a0}Smith"));
        assert!(rx.is_match(" a\tb\n"));
        assert!(!rx.is_match(""));
        let code = Regex::new(&format!(
            "^(?:{})$",
            xsd_regex_to_rust(r"[^\s]+(\s[^\s]+)*")
        ))
        .unwrap();
        assert!(code.is_match("final"));
        assert!(code.is_match("a b"));
        assert!(!code.is_match(" final"));
        assert!(!code.is_match("a  b"));
        assert!(code.is_match("a\u{a0}b"));
    }

    #[test]
    fn upper_first_builds_choice_suffixes() {
        assert_eq!(upper_first("dateTime"), "DateTime");
        assert_eq!(upper_first("CodeableConcept"), "CodeableConcept");
        assert_eq!(upper_first(""), "");
    }

    #[test]
    fn first_load_is_fast_enough() {
        // Budget is 50 ms in release; debug builds are ~10x slower, so only guard the order
        // of magnitude here.
        let start = std::time::Instant::now();
        let defs = load();
        let elapsed = start.elapsed();
        assert!(defs.element_count() > 5000);
        assert!(elapsed.as_millis() < 2000, "loading took {elapsed:?}");
    }
}
