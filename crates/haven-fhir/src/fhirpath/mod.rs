//! A FHIRPath subset (FHIRPath N1, `http://hl7.org/fhirpath/N1`): a parser, and an evaluator
//! over resources held as `serde_json` values. It exists for search: R4 defines every search
//! parameter by a FHIRPath `expression`, and indexing a resource means evaluating them.
//!
//! The subset is exactly what those expressions need, plus a few neighbours that cost
//! nothing. Survey of the 1,374 R4 (4.0.1) search parameter expressions and their 96
//! composite component expressions (the unit test `search::load::tests::construct_survey`
//! recounts this table from the vendored definitions and fails if it drifts):
//!
//! | construct | occurrences | example |
//! |---|---|---|
//! | path navigation `a.b` (steps) | 2,285 | `Patient.name.given` |
//! | type name as first step | 1,770 | `Patient.name` |
//! | bare element name (first step, or inside `where`) | 170 | `name \| alias`, component `code` |
//! | `\|` union | 414 | `Patient.name \| Person.name` |
//! | `( … )` grouping | 135 | `(Observation.value as Quantity)` |
//! | `X as T` | 135 | `Observation.value as Quantity` |
//! | `.as(T)` | 67 | `Condition.onset.as(Age)`, `value.as(DateTime)` |
//! | `where(…)` | 107 | `Patient.telecom.where(system='email')` |
//! | `resolve()` | 50 | `subject.where(resolve() is Patient)` |
//! | `X is T` | 50 | `resolve() is Patient` |
//! | `=` | 57 | `where(type='composed-of')` |
//! | `!=` | 1 | `Patient.deceased != false` |
//! | `and` | 1 | `deceased.exists() and deceased != false` |
//! | `exists()` | 1 | `Patient.deceased.exists()` |
//! | `[n]` indexer | 2 | `Bundle.entry[0].resource` |
//! | `%resource` | 2 | composite component `%resource.referenceSeq.chromosome` |
//! | string literal | 57 | `'email'` |
//! | boolean literal | 1 | `false` |
//! | integer literal | 2 | `0` |
//!
//! Not used by R4 at all: `extension()`, `ofType()`, `.is()`, `first()`, `last()`, `empty()`,
//! `not()`, `hasValue()`, `or`, `$this`, `{}` and decimal literals — all supported anyway, as
//! they are the obvious next needs (custom search parameters on extensions). Neither used nor
//! supported, each a parse error naming it: arithmetic, `<`/`>`, `~`, `in`/`contains`,
//! `implies`/`xor`, every other function (`memberOf`, `startsWith`, `contains()`, `count()`,
//! ...), other variables (`%ucum`, `$index`).
//!
//! Semantics that need care:
//! - **Types.** Navigation uses the R4 model, so `Observation.value` yields `valueQuantity`
//!   typed `Quantity` (or `valueString` typed `string`, ...), and `as`/`is`/`ofType` test that
//!   type with inheritance (`Age` is a `Quantity`, `code` is a `string`). FHIRPath system
//!   types map to FHIR primitives (`DateTime` → `dateTime`). Type names are checked when
//!   parsing: `as Quantiy` is an error, not an always-empty filter.
//! - **`resolve()`** does no I/O: it yields a contentless item typed with the reference's
//!   target type, read from `Type/id`, an absolute URL ending in `Type/id`, or `#id` of a
//!   contained resource, else from `Reference.type`. `urn:` references resolve to nothing, so
//!   `subject.where(resolve() is Patient)` drops them. That is all R4 asks of it.
//! - **Primitives** are their JSON values; the `_x` extension siblings are not navigated.
//!
//! Expressions are parsed once (search parses all R4 expressions when its table loads);
//! evaluation never panics, and parsing refuses ASTs taller than 200 levels so that no input
//! can exhaust the stack.

mod eval;
pub(crate) mod lexer;
mod parser;
pub(crate) mod reference;
mod types;

use std::fmt;

use serde_json::{Map, Value};

pub use eval::{Data, Item};
pub(crate) use parser::Node;
pub(crate) use types::TypeName;

/// A parsed FHIRPath expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    node: Node,
}

/// Why an expression was not accepted: a syntax error or a construct outside the subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath error at offset {offset}: {message}")]
pub struct ParseError {
    /// Byte offset in the expression text.
    pub offset: usize,
    /// What is wrong, naming the unsupported construct if that is the problem.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(offset: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            offset,
            message: message.into(),
        }
    }
}

impl Expression {
    /// Parses `text`.
    ///
    /// # Errors
    /// On a syntax error, an unknown type name, or a construct outside the subset (see the
    /// module docs).
    pub fn parse(text: &str) -> Result<Expression, ParseError> {
        parser::parse(text).map(|node| Expression { node })
    }

    /// Evaluates the expression with `resource` as the focus and as `%resource`.
    #[must_use]
    pub fn evaluate<'a>(&'a self, resource: &'a Map<String, Value>) -> Vec<Item<'a>> {
        let root = Item::resource(resource);
        eval::eval(&self.node, &[root], &root)
    }

    /// Evaluates the expression on `focus` (e.g. an element a composite search parameter
    /// selected), with `resource` as `%resource`.
    #[must_use]
    pub fn evaluate_on<'a>(
        &'a self,
        resource: &'a Map<String, Value>,
        focus: &[Item<'a>],
    ) -> Vec<Item<'a>> {
        eval::eval(&self.node, focus, &Item::resource(resource))
    }

    /// [`Expression::evaluate`] with the resource's item already built (extraction
    /// evaluates many expressions on one resource).
    pub(crate) fn evaluate_from<'a>(&'a self, root: &Item<'a>) -> Vec<Item<'a>> {
        eval::eval(&self.node, std::slice::from_ref(root), root)
    }

    /// [`Expression::evaluate_on`] with the resource's item already built.
    pub(crate) fn evaluate_with<'a>(
        &'a self,
        root: &Item<'a>,
        focus: &[Item<'a>],
    ) -> Vec<Item<'a>> {
        eval::eval(&self.node, focus, root)
    }

    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    pub(crate) fn from_node(node: Node) -> Expression {
        Expression { node }
    }
}

/// Whether type `name` is `wanted` or derives from it (`Patient` is a `DomainResource`).
pub(crate) fn type_is_a(name: &'static str, wanted: TypeName) -> bool {
    types::Ty::named(name).is_a(wanted)
}

/// The expression in canonical form: binary operators fully parenthesised, system type names
/// mapped to FHIR ones.
impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.node.fmt(f)
    }
}

#[cfg(test)]
mod tests;
