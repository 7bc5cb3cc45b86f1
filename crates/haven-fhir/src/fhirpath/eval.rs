//! The evaluator: a parsed [`Node`] over JSON, producing a collection of [`Item`]s.
//!
//! FHIRPath semantics as far as the subset needs them (`fhirpath.html`): collections
//! everywhere, empty propagates through `=`, three-valued `and`/`or`, singleton evaluation
//! of collections as booleans (`where`). Deviations, all on inputs R4 search never produces:
//! `as`/`is` on a collection of several items filter (resp. yield empty) instead of
//! signalling an error, and `|` removes duplicates by identity (the same JSON node), not by
//! value.

use std::collections::HashSet;
use std::ptr;

use serde_json::{Map, Value};

use super::parser::{Func, Literal, Node};
use super::reference::{self, Literal as RefLiteral};
use super::types::{ChildTy, ElementName, Ty, TypeName, nav, resource_ty};
use crate::model::ResourceType;

/// One element of a FHIRPath result: a node of the resource (or a computed value) and its
/// FHIR type when known.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    data: Data<'a>,
    ty: Ty,
}

/// What an [`Item`] holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Data<'a> {
    /// A JSON object of the resource: a complex value, backbone element or resource.
    Object(&'a Map<String, Value>),
    /// A JSON string, number or boolean of the resource (a FHIR primitive's value).
    Primitive(&'a Value),
    /// A computed boolean (`exists()`, `=`, `and`, ...) or a `true`/`false` literal.
    Boolean(bool),
    Integer(i64),
    /// A decimal literal as written.
    Decimal(&'a str),
    /// A string literal.
    String(&'a str),
    /// What `resolve()` yields: a resource known only by its type (the item's type name),
    /// read from the reference text. Search does no I/O, so it has no content.
    Resolved,
}

impl<'a> Item<'a> {
    /// The resource itself, typed by its `resourceType`: the usual starting point.
    #[must_use]
    pub fn resource(resource: &'a Map<String, Value>) -> Item<'a> {
        Item {
            data: Data::Object(resource),
            ty: resource_ty(resource),
        }
    }

    /// What the item holds.
    #[must_use]
    pub fn data(&self) -> Data<'a> {
        self.data
    }

    /// The FHIR type (`HumanName`, `dateTime`, `BackboneElement`, `Patient`), when known.
    #[must_use]
    pub fn type_name(&self) -> Option<&'static str> {
        self.ty.name()
    }

    /// The JSON object, for complex values.
    #[must_use]
    pub fn as_object(&self) -> Option<&'a Map<String, Value>> {
        match self.data {
            Data::Object(map) => Some(map),
            _ => None,
        }
    }

    /// The text of a string primitive or string literal.
    #[must_use]
    pub fn as_str(&self) -> Option<&'a str> {
        match self.data {
            Data::Primitive(Value::String(s)) => Some(s),
            Data::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value of a boolean primitive or computed boolean.
    #[must_use]
    pub fn as_bool(&self) -> Option<bool> {
        match self.data {
            Data::Primitive(Value::Bool(b)) => Some(*b),
            Data::Boolean(b) => Some(b),
            _ => None,
        }
    }

    fn boolean(b: bool) -> Item<'a> {
        Item {
            data: Data::Boolean(b),
            ty: Ty::named("boolean"),
        }
    }

    fn same_node(&self, other: &Item<'_>) -> bool {
        match (self.data, other.data) {
            (Data::Object(a), Data::Object(b)) => ptr::eq(a, b),
            (Data::Primitive(a), Data::Primitive(b)) => ptr::eq(a, b),
            (Data::Resolved, _) | (_, Data::Resolved) => false,
            _ => equal(self, other),
        }
    }

    fn identity(&self) -> Option<usize> {
        match self.data {
            Data::Object(map) => Some(ptr::from_ref(map) as usize),
            Data::Primitive(value) => Some(ptr::from_ref(value) as usize),
            _ => None,
        }
    }
}

/// Evaluates `node` with `input` as the focus and `root` as `%resource`.
pub(crate) fn eval<'a>(node: &'a Node, input: &[Item<'a>], root: &Item<'a>) -> Vec<Item<'a>> {
    match node {
        Node::Empty => Vec::new(),
        Node::Literal(lit) => vec![literal(lit)],
        Node::This => input.to_vec(),
        Node::Resource => vec![*root],
        Node::TypeFilter(t) => input.iter().filter(|i| i.ty.is_a(*t)).copied().collect(),
        Node::Name(name) => children(input, name),
        Node::Child(base, name) => children(&eval(base, input, root), name),
        Node::Index(base, index) => {
            let items = eval(base, input, root);
            match integer(&eval(index, input, root)) {
                Some(i) => usize::try_from(i)
                    .ok()
                    .and_then(|i| items.get(i).copied())
                    .into_iter()
                    .collect(),
                None => Vec::new(),
            }
        }
        Node::Call(base, func) => {
            let items = match base {
                Some(base) => eval(base, input, root),
                None => input.to_vec(),
            };
            call(func, items, root)
        }
        Node::Union(a, b) => union(eval(a, input, root), eval(b, input, root)),
        Node::Equals {
            left,
            right,
            negated,
        } => {
            let (l, r) = (eval(left, input, root), eval(right, input, root));
            if l.is_empty() || r.is_empty() {
                return Vec::new();
            }
            let eq = l.len() == r.len() && l.iter().zip(&r).all(|(a, b)| equal(a, b));
            vec![Item::boolean(eq != *negated)]
        }
        Node::And(a, b) => {
            let l = truth(&eval(a, input, root));
            if l == Some(false) {
                return vec![Item::boolean(false)];
            }
            match (l, truth(&eval(b, input, root))) {
                (_, Some(false)) => vec![Item::boolean(false)],
                (Some(true), Some(true)) => vec![Item::boolean(true)],
                _ => Vec::new(),
            }
        }
        Node::Or(a, b) => {
            let l = truth(&eval(a, input, root));
            if l == Some(true) {
                return vec![Item::boolean(true)];
            }
            match (l, truth(&eval(b, input, root))) {
                (_, Some(true)) => vec![Item::boolean(true)],
                (Some(false), Some(false)) => vec![Item::boolean(false)],
                _ => Vec::new(),
            }
        }
        Node::Is(base, t) => is_type(&eval(base, input, root), *t),
        Node::As(base, t) => filter_type(eval(base, input, root), *t),
    }
}

fn call<'a>(func: &'a Func, items: Vec<Item<'a>>, root: &Item<'a>) -> Vec<Item<'a>> {
    match func {
        Func::Where(criteria) => items
            .into_iter()
            .filter(|item| truth(&eval(criteria, &[*item], root)) == Some(true))
            .collect(),
        Func::Exists(None) => vec![Item::boolean(!items.is_empty())],
        Func::Exists(Some(criteria)) => {
            vec![Item::boolean(items.iter().any(|item| {
                truth(&eval(criteria, &[*item], root)) == Some(true)
            }))]
        }
        Func::Empty => vec![Item::boolean(items.is_empty())],
        Func::First => items.first().copied().into_iter().collect(),
        Func::Last => items.last().copied().into_iter().collect(),
        Func::Not => truth(&items)
            .map(|b| Item::boolean(!b))
            .into_iter()
            .collect(),
        Func::HasValue => vec![Item::boolean(matches!(
            items.as_slice(),
            [Item {
                data: Data::Primitive(_),
                ..
            }]
        ))],
        Func::Resolve => items
            .iter()
            .filter_map(|item| resolve(item, root))
            .collect(),
        Func::Extension(url) => children(&items, &nav().extension)
            .into_iter()
            .filter(|ext| {
                ext.as_object()
                    .and_then(|e| e.get("url"))
                    .and_then(Value::as_str)
                    == Some(url.as_str())
            })
            .collect(),
        Func::OfType(t) | Func::As(t) => filter_type(items, *t),
        Func::Is(t) => is_type(&items, *t),
    }
}

fn literal(lit: &Literal) -> Item<'_> {
    let (data, ty) = match lit {
        Literal::Boolean(b) => (Data::Boolean(*b), "boolean"),
        Literal::String(s) => (Data::String(s), "string"),
        Literal::Integer(i) => (Data::Integer(*i), "integer"),
        Literal::Decimal(d) => (Data::Decimal(d), "decimal"),
    };
    Item {
        data,
        ty: Ty::named(ty),
    }
}

/// The children called `name` of every item, in order. Uses the model when the item's type
/// is known (so choice elements are found under every `nameType` key), plain JSON otherwise.
fn children<'a>(items: &[Item<'a>], name: &ElementName) -> Vec<Item<'a>> {
    let mut out = Vec::new();
    for item in items {
        let Data::Object(map) = item.data else {
            continue;
        };
        let Some(ctx) = item.ty.ctx else {
            if let Some(value) = map.get(&name.text) {
                push_json(value, ChildTy::Known(Ty::UNKNOWN), &mut out);
            }
            continue;
        };
        let Some(child) = nav().child(ctx, name) else {
            continue;
        };
        if child.is_choice {
            // One pass over the object rather than one lookup per possible type (an
            // Observation's `value[x]` has eleven).
            for (key, value) in map {
                if key.starts_with(child.name)
                    && let Some(variant) = child.variants.iter().find(|v| v.key == *key)
                {
                    push_json(value, variant.ty, &mut out);
                }
            }
        } else if let (Some(variant), Some(value)) = (child.variants.first(), map.get(child.name)) {
            push_json(value, variant.ty, &mut out);
        }
    }
    out
}

fn push_json<'a>(value: &'a Value, ty: ChildTy, out: &mut Vec<Item<'a>>) {
    let one = |value: &'a Value| match value {
        // `null` only pads primitive arrays that carry extensions (`_given`); nested
        // arrays are not FHIR.
        Value::Null | Value::Array(_) => None,
        Value::Object(map) => Some(Item {
            data: Data::Object(map),
            ty: match ty {
                ChildTy::Known(t) => t,
                ChildTy::Resource => resource_ty(map),
            },
        }),
        primitive => Some(Item {
            data: Data::Primitive(primitive),
            ty: match ty {
                ChildTy::Known(t) => t,
                ChildTy::Resource => Ty::UNKNOWN,
            },
        }),
    };
    match value {
        Value::Array(values) => out.extend(values.iter().filter_map(one)),
        value => out.extend(one(value)),
    }
}

/// Union without duplicates (by node identity; see the module docs).
fn union<'a>(mut left: Vec<Item<'a>>, right: Vec<Item<'a>>) -> Vec<Item<'a>> {
    if left.len() + right.len() <= 32 {
        for item in right {
            if !left.iter().any(|l| l.same_node(&item)) {
                left.push(item);
            }
        }
        return left;
    }
    // Large collections: identity set, so a resource with thousands of names stays linear.
    let mut seen: HashSet<usize> = left.iter().filter_map(Item::identity).collect();
    for item in right {
        match item.identity() {
            Some(id) if !seen.insert(id) => {}
            Some(_) => left.push(item),
            None if left.iter().any(|l| l.same_node(&item)) => {}
            None => left.push(item),
        }
    }
    left
}

/// Singleton evaluation as a boolean: empty is unknown, one boolean is itself, any other
/// single item is `true`; several items are an error in FHIRPath, treated as unknown.
fn truth(items: &[Item<'_>]) -> Option<bool> {
    match items {
        [item] => Some(item.as_bool().unwrap_or(true)),
        _ => None,
    }
}

fn integer(items: &[Item<'_>]) -> Option<i64> {
    match items {
        [item] => match item.data {
            Data::Integer(i) => Some(i),
            Data::Primitive(Value::Number(n)) => n.as_i64(),
            _ => None,
        },
        _ => None,
    }
}

/// FHIRPath `=` on two single items: same kind and same value; numbers by value; complex
/// values by JSON equality. Different kinds are unequal (so `deceasedDateTime != false`).
fn equal(a: &Item<'_>, b: &Item<'_>) -> bool {
    #[derive(PartialEq)]
    enum Scalar<'v> {
        Bool(bool),
        Str(&'v str),
        Num(f64),
        Obj(&'v Map<String, Value>),
        Other,
    }
    fn scalar<'v>(data: Data<'v>) -> Scalar<'v> {
        match data {
            Data::Boolean(b) => Scalar::Bool(b),
            Data::Primitive(Value::Bool(b)) => Scalar::Bool(*b),
            Data::String(s) => Scalar::Str(s),
            Data::Primitive(Value::String(s)) => Scalar::Str(s),
            #[allow(
                clippy::cast_precision_loss,
                reason = "FHIRPath compares numbers by value"
            )]
            Data::Integer(i) => Scalar::Num(i as f64),
            Data::Decimal(d) => d.parse().map_or(Scalar::Other, Scalar::Num),
            Data::Primitive(Value::Number(n)) => n.as_f64().map_or(Scalar::Other, Scalar::Num),
            Data::Object(map) => Scalar::Obj(map),
            Data::Primitive(_) | Data::Resolved => Scalar::Other,
        }
    }
    match (scalar(a.data), scalar(b.data)) {
        (Scalar::Other, _) | (_, Scalar::Other) => false,
        (x, y) => x == y,
    }
}

fn is_type<'a>(items: &[Item<'a>], t: TypeName) -> Vec<Item<'a>> {
    match items {
        [item] => vec![Item::boolean(item.ty.is_a(t))],
        _ => Vec::new(),
    }
}

fn filter_type<'a>(items: Vec<Item<'a>>, t: TypeName) -> Vec<Item<'a>> {
    items.into_iter().filter(|i| i.ty.is_a(t)).collect()
}

/// `resolve()` without I/O: a resource resolves to itself; a Reference (or a canonical/uri
/// text) to an item typed with the target type its text names (`Patient/1`, an absolute URL
/// ending in `Patient/1`, `#id` of a contained resource), else with `Reference.type`. A
/// reference whose type cannot be known (`urn:uuid:`, identifier only) resolves to nothing.
fn resolve<'a>(item: &Item<'a>, root: &Item<'a>) -> Option<Item<'a>> {
    if item.ty.name().and_then(ResourceType::parse).is_some() {
        return Some(*item);
    }
    let target = match item.data {
        Data::Object(reference) => {
            let from_text = reference
                .get("reference")
                .and_then(Value::as_str)
                .and_then(|text| literal_target(text, root));
            from_text.or_else(|| {
                let ty = reference.get("type")?.as_str()?;
                let name = ty
                    .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
                    .unwrap_or(ty);
                ResourceType::parse(name)
            })
        }
        Data::Primitive(Value::String(text)) => literal_target(text, root),
        _ => None,
    }?;
    Some(Item {
        data: Data::Resolved,
        ty: Ty::named(target.as_str()),
    })
}

fn literal_target(text: &str, root: &Item<'_>) -> Option<ResourceType> {
    match reference::parse(text) {
        RefLiteral::Typed { target, .. } => Some(target),
        RefLiteral::Contained(id) => root
            .as_object()?
            .get("contained")?
            .as_array()?
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(id))?
            .get("resourceType")?
            .as_str()
            .and_then(ResourceType::parse),
        RefLiteral::Opaque => None,
    }
}
