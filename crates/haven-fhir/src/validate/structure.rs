//! The structural walk: resources, objects, cardinality, choice types and `_x` companions.

use serde_json::{Map, Value};

use super::{Issue, IssueCode, Loc, Severity, primitive, reference};
use crate::model::{
    Context, CtxId, Definitions, ElemId, ElementDef, Max, ResourceType, Shape, TypeRef, upper_first,
};

/// How many element names an "unknown element" message lists.
const ALLOWED_IN_MESSAGE: usize = 8;

pub(super) struct Validator<'d> {
    pub defs: &'d Definitions,
    pub issues: Vec<Issue>,
}

/// Where local references (`#id`) resolve: the resource that holds `contained`.
#[derive(Clone, Copy)]
pub(super) struct Scope<'a> {
    /// `(id, resourceType)` of each contained resource of the container.
    pub contained: &'a [(&'a str, &'a str)],
    /// True inside a contained resource, where `#` alone means the container.
    pub in_contained: bool,
}

/// How a resource is embedded, which decides the extra rules it gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Embedding {
    /// The resource being validated.
    Root,
    /// In `DomainResource.contained`: dom-2, dom-4, id required, shares the container's scope.
    Contained,
    /// Anywhere else a `Resource` is allowed (`Bundle.entry.resource`, `Parameters...`):
    /// a full resource with its own contained scope.
    Nested,
}

impl Validator<'_> {
    pub(super) fn issue(&mut self, code: IssueCode, loc: &Loc<'_>, message: String) {
        self.issues.push(Issue {
            severity: Severity::Error,
            code,
            location: loc.render(),
            message,
        });
    }

    pub(super) fn check_root(&mut self, resource: &Map<String, Value>) {
        let empty = Scope {
            contained: &[],
            in_contained: false,
        };
        self.check_resource(resource, None, Embedding::Root, empty);
    }

    fn check_resource(
        &mut self,
        res: &Map<String, Value>,
        at: Option<&Loc<'_>>,
        embedding: Embedding,
        outer: Scope<'_>,
    ) {
        let unnamed = Loc::root("");
        let type_loc_parent = at.unwrap_or(&unnamed);
        let type_name = match res.get("resourceType") {
            Some(Value::String(name)) => name.as_str(),
            Some(_) => {
                let msg = "'resourceType' must be a string naming an R4 resource type".to_owned();
                return self.issue(
                    IssueCode::Invalid,
                    &type_loc_parent.field("resourceType"),
                    msg,
                );
            }
            None => {
                let msg = "'resourceType' is missing; every resource must name its type".to_owned();
                return self.issue(
                    IssueCode::Invalid,
                    &type_loc_parent.field("resourceType"),
                    msg,
                );
            }
        };
        let Some(def) =
            ResourceType::parse(type_name).and_then(|rt| self.defs.type_def(rt.as_str()))
        else {
            let msg = format!(
                "'resourceType' is not a supported resource type; expected one of the {} concrete FHIR R4 resource types",
                self.defs.resource_types().len()
            );
            return self.issue(
                IssueCode::NotSupported,
                &type_loc_parent.field("resourceType"),
                msg,
            );
        };
        let named = Loc::root(def.name);
        let loc = at.unwrap_or(&named);

        let own: Vec<(&str, &str)>;
        let scope = if embedding == Embedding::Contained {
            self.check_contained_rules(res, loc);
            Scope {
                in_contained: true,
                ..outer
            }
        } else {
            own = contained_ids(res);
            Scope {
                contained: &own,
                in_contained: false,
            }
        };
        self.check_object(def.root, res, loc, scope, true);
    }

    /// R4 `domainresource.html` invariants for contained resources.
    fn check_contained_rules(&mut self, res: &Map<String, Value>, loc: &Loc<'_>) {
        if res.contains_key("contained") {
            let msg = "dom-2: a contained resource must not itself contain resources".to_owned();
            self.issue(IssueCode::Invariant, &loc.field("contained"), msg);
        }
        if let Some(Value::Object(meta)) = res.get("meta") {
            let meta_loc = loc.field("meta");
            for key in ["versionId", "lastUpdated"] {
                if meta.contains_key(key) {
                    let msg = format!("dom-4: a contained resource must not have meta.{key}");
                    self.issue(IssueCode::Invariant, &meta_loc.field(key), msg);
                }
            }
        }
        if !res.contains_key("id") {
            let msg = "a contained resource must have an id, so that it can be referenced as '#id'"
                .to_owned();
            self.issue(IssueCode::Invariant, loc, msg);
        }
    }

    pub(super) fn check_object(
        &mut self,
        ctx_id: CtxId,
        obj: &Map<String, Value>,
        loc: &Loc<'_>,
        scope: Scope<'_>,
        is_resource: bool,
    ) {
        let defs = self.defs;
        let ctx = &defs.contexts[ctx_id];
        if obj.is_empty() && !is_resource {
            let msg =
                "ele-1: empty objects are not allowed; an element must have a value or children"
                    .to_owned();
            return self.issue(IssueCode::Invariant, loc, msg);
        }
        // Elements present, with the choice variant used: for required and choice checks.
        let mut seen: Vec<(ElemId, usize)> = Vec::with_capacity(obj.len());
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            let (name, is_ext) = key
                .strip_prefix('_')
                .map_or((key.as_str(), false), |n| (n, true));
            let Some(&(eid, tidx)) = ctx.keys.get(name) else {
                self.unknown_element(ctx, key, loc);
                continue;
            };
            let el = &defs.elements[eid];
            let tref = &el.types[tidx];
            if is_ext
                && !matches!(
                    tref.shape,
                    Shape::Primitive {
                        extensible: true,
                        ..
                    }
                )
            {
                let msg = format!(
                    "'{key}' is not allowed: only primitive elements have a '_' form, and '{name}' is {}",
                    describe(tref)
                );
                self.issue(IssueCode::Structure, &loc.field(key), msg);
                continue;
            }
            if el.is_choice
                && let Some(&(_, other)) = seen.iter().find(|(e, t)| *e == eid && *t != tidx)
            {
                let msg = format!(
                    "only one type of '{}[x]' may be present, but both '{}{}' and '{name}' are",
                    el.name,
                    el.name,
                    upper_first(el.types[other].code)
                );
                self.issue(IssueCode::Structure, &loc.field(key), msg);
            }
            seen.push((eid, tidx));
            if is_ext {
                self.check_primitive_extension(el, key, name, value, obj.get(name), loc, scope);
            } else {
                self.check_element(el, tref, key, value, obj, loc, scope);
            }
        }
        for &eid in &ctx.required {
            if !seen.iter().any(|(e, _)| *e == eid) {
                let el = &defs.elements[eid];
                let last = el.path.rsplit('.').next().unwrap_or(el.path);
                let msg = format!(
                    "missing required element '{last}' ({} requires at least {})",
                    el.path, el.min
                );
                self.issue(IssueCode::Required, &loc.field(last), msg);
            }
        }
    }

    fn unknown_element(&mut self, ctx: &Context, key: &str, loc: &Loc<'_>) {
        let defs = self.defs;
        let bare = key.trim_start_matches('_');
        // A recognisable choice prefix with a wrong type suffix gets the list of variants.
        let choice = ctx.elements.iter().map(|&e| &defs.elements[e]).find(|el| {
            el.is_choice
                && bare
                    .strip_prefix(el.name)
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
        });
        let msg = if let Some(el) = choice {
            let variants: Vec<String> = el
                .types
                .iter()
                .map(|t| format!("{}{}", el.name, upper_first(t.code)))
                .collect();
            format!(
                "'{key}' is not a valid type for {}; allowed: {}",
                el.path,
                list(&variants)
            )
        } else {
            let names: Vec<String> = ctx
                .elements
                .iter()
                .map(|&e| {
                    let el = &defs.elements[e];
                    if el.is_choice {
                        format!("{}[x]", el.name)
                    } else {
                        el.name.to_owned()
                    }
                })
                .collect();
            format!(
                "unknown element '{}' in {}; allowed: {}",
                shown(key),
                ctx.path,
                list(&names)
            )
        };
        self.issue(IssueCode::Structure, &loc.field(&shown(key)), msg);
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the walk's state is passed explicitly"
    )]
    fn check_element(
        &mut self,
        el: &ElementDef,
        tref: &TypeRef,
        key: &str,
        value: &Value,
        obj: &Map<String, Value>,
        loc: &Loc<'_>,
        scope: Scope<'_>,
    ) {
        let here = loc.field(key);
        match (el.max, value) {
            (Max::Zero, _) => {
                let msg = format!(
                    "'{key}' is not allowed here ({} has max cardinality 0)",
                    el.path
                );
                self.issue(IssueCode::Structure, &here, msg);
            }
            (Max::One, Value::Array(_)) => {
                let msg = format!(
                    "'{key}' must be a single value, not an array ({} has max cardinality 1)",
                    el.path
                );
                self.issue(IssueCode::Structure, &here, msg);
            }
            (Max::One, _) => self.check_item(el, tref, value, &here, scope),
            (Max::Many, Value::Array(items)) => {
                if items.is_empty() {
                    let msg =
                        format!("'{key}' must not be an empty array; omit the element instead");
                    self.issue(IssueCode::Structure, &here, msg);
                }
                for (i, item) in items.iter().enumerate() {
                    let at = here.index(i);
                    if item.is_null() {
                        if !null_is_aligned(obj, key, i, tref) {
                            let msg = format!(
                                "null is not allowed in '{key}' (only where the matching '_{key}' entry carries an id or extensions)"
                            );
                            self.issue(IssueCode::Structure, &at, msg);
                        }
                        continue;
                    }
                    self.check_item(el, tref, item, &at, scope);
                }
            }
            (Max::Many, _) => {
                let msg = format!(
                    "'{key}' must be an array ({} has max cardinality *)",
                    el.path
                );
                self.issue(IssueCode::Structure, &here, msg);
            }
        }
    }

    fn check_item(
        &mut self,
        el: &ElementDef,
        tref: &TypeRef,
        value: &Value,
        loc: &Loc<'_>,
        scope: Scope<'_>,
    ) {
        if value.is_null() {
            let msg = "null is not allowed; omit the element instead".to_owned();
            return self.issue(IssueCode::Structure, loc, msg);
        }
        match tref.shape {
            Shape::Primitive { prim, regex_of, .. } => {
                primitive::check(
                    self,
                    prim,
                    &self.defs.types[regex_of],
                    tref.code,
                    value,
                    loc,
                );
            }
            Shape::Complex(ctx) => {
                let Some(obj) = value.as_object() else {
                    let msg = format!(
                        "expected a JSON object ({}), found {}",
                        tref.code,
                        json_kind(value)
                    );
                    return self.issue(IssueCode::Structure, loc, msg);
                };
                self.check_object(ctx, obj, loc, scope, false);
                match tref.code {
                    "Extension" => self.check_ext1(obj, loc),
                    "Reference" => reference::check(self, obj, &tref.targets, loc, scope),
                    _ => {}
                }
            }
            Shape::Resource => {
                let Some(obj) = value.as_object() else {
                    let msg = format!(
                        "expected a resource (a JSON object with 'resourceType'), found {}",
                        json_kind(value)
                    );
                    return self.issue(IssueCode::Structure, loc, msg);
                };
                if tref.code != "Resource"
                    && let Some(Value::String(found)) = obj.get("resourceType")
                    && found != tref.code
                {
                    let msg = format!(
                        "expected a {} resource here ({} allows only that type)",
                        tref.code, el.path
                    );
                    return self.issue(IssueCode::Structure, &loc.field("resourceType"), msg);
                }
                let embedding = if el.is_contained {
                    Embedding::Contained
                } else {
                    Embedding::Nested
                };
                self.check_resource(obj, Some(loc), embedding, scope);
            }
        }
    }

    /// ext-1: an extension has either nested extensions or a value, not both (R4
    /// `extensibility.html`).
    fn check_ext1(&mut self, ext: &Map<String, Value>, loc: &Loc<'_>) {
        let has_children = ext.contains_key("extension");
        let has_value = ext
            .keys()
            .any(|k| k.starts_with("value") || k.starts_with("_value"));
        let msg = match (has_children, has_value) {
            (true, true) => {
                "ext-1: an extension must have either 'extension' or 'value[x]', not both"
            }
            (false, false) => "ext-1: an extension must have either 'extension' or 'value[x]'",
            _ => return,
        };
        self.issue(IssueCode::Invariant, loc, msg.to_owned());
    }

    /// The `_x` companion of primitive `x` (R4 `json.html#primitive`): an object holding
    /// `id`/`extension`, or for repeating elements an array aligned with `x`'s array.
    #[expect(
        clippy::too_many_arguments,
        reason = "the walk's state is passed explicitly"
    )]
    fn check_primitive_extension(
        &mut self,
        el: &ElementDef,
        key: &str,
        name: &str,
        ext: &Value,
        primary: Option<&Value>,
        loc: &Loc<'_>,
        scope: Scope<'_>,
    ) {
        let element_ctx = self.defs.element_ctx;
        // FHIRPath sees the extensions of `given[1]` as children of `given[1]`.
        let here = loc.field(name);
        if el.max != Max::Many {
            return match ext {
                Value::Object(o) => self.check_object(element_ctx, o, &here, scope, false),
                _ => {
                    let msg = format!(
                        "'{key}' must be an object holding 'id' and/or 'extension', found {}",
                        json_kind(ext)
                    );
                    self.issue(IssueCode::Structure, &loc.field(key), msg);
                }
            };
        }
        let Value::Array(exts) = ext else {
            let msg = format!(
                "'{key}' must be an array aligned with '{name}', found {}",
                json_kind(ext)
            );
            return self.issue(IssueCode::Structure, &loc.field(key), msg);
        };
        let key_loc = loc.field(key);
        if exts.is_empty() {
            let msg = format!("'{key}' must not be an empty array; omit the element instead");
            self.issue(IssueCode::Structure, &key_loc, msg);
        }
        let values = match primary {
            Some(Value::Array(values)) => Some(values),
            _ => None,
        };
        if let Some(values) = values
            && values.len() != exts.len()
        {
            let msg = format!(
                "'{key}' has {} entries but '{name}' has {}; the two arrays must have the same length",
                exts.len(),
                values.len()
            );
            self.issue(IssueCode::Structure, &key_loc, msg);
        }
        for (i, item) in exts.iter().enumerate() {
            match item {
                Value::Object(o) => self.check_object(element_ctx, o, &here.index(i), scope, false),
                // A null in both arrays is reported once, on the value side.
                Value::Null if values.and_then(|v| v.get(i)).is_some() => {}
                Value::Null => {
                    let msg = format!(
                        "'{key}' entry is null but '{name}' has no value at this position either"
                    );
                    self.issue(IssueCode::Structure, &key_loc.index(i), msg);
                }
                _ => {
                    let msg = format!(
                        "'{key}' entries must be objects or null, found {}",
                        json_kind(item)
                    );
                    self.issue(IssueCode::Structure, &key_loc.index(i), msg);
                }
            }
        }
    }
}

/// A null in a primitive array is allowed when `_key[i]` carries the value's id/extensions.
fn null_is_aligned(obj: &Map<String, Value>, key: &str, i: usize, tref: &TypeRef) -> bool {
    matches!(
        tref.shape,
        Shape::Primitive {
            extensible: true,
            ..
        }
    ) && obj
        .get(&format!("_{key}"))
        .and_then(|ext| ext.as_array())
        .and_then(|ext| ext.get(i))
        .is_some_and(Value::is_object)
}

fn contained_ids(res: &Map<String, Value>) -> Vec<(&str, &str)> {
    let Some(Value::Array(items)) = res.get("contained") else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let item = item.as_object()?;
            Some((
                item.get("id")?.as_str()?,
                item.get("resourceType")?.as_str()?,
            ))
        })
        .collect()
}

fn describe(tref: &TypeRef) -> String {
    match tref.shape {
        Shape::Primitive { .. } => format!("a {} without extensions", tref.code),
        Shape::Complex(_) => format!("a complex element ({})", tref.code),
        Shape::Resource => "a resource".to_owned(),
    }
}

pub(super) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn list(names: &[String]) -> String {
    let shown = names
        .iter()
        .take(ALLOWED_IN_MESSAGE)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    match names.len().saturating_sub(ALLOWED_IN_MESSAGE) {
        0 => shown,
        more => format!("{shown}, ... ({more} more)"),
    }
}

/// A client-chosen element name as it may appear in a message: at most 64 characters, so a
/// megabyte-long key cannot be echoed back.
fn shown(key: &str) -> String {
    key.chars().take(64).collect()
}
