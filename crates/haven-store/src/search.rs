//! The search index and queries over it, in storage terms.
//!
//! The store knows nothing of FHIR search semantics (prefixes, precision, modifiers): the
//! service turns a FHIR search into [`Condition`]s over six index tables, one per kind of
//! value, and the store runs them. Every current (not deleted) resource has its index rows;
//! they are replaced in the same transaction as each new version, so the index can never
//! disagree with the data it describes.
//!
//! Rows name their resource by `rid`, a surrogate integer key of the resource's head row
//! (stable for the resource's life, never reused), and their parameter by a [`ParamKey`].
//! Values of one composite element share a `grp` number across tables.

use haven_domain::ResourceType;

use crate::StoredVersion;

/// The key of a (resource type, search parameter) pair, or of one component of a composite
/// parameter. Computed by the service from names (a hash), so every replica agrees on it
/// without a shared table; the service's tests check that no two keys collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamKey(pub i32);

/// The index tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    String,
    Token,
    Reference,
    Date,
    /// Numbers and quantities (a number has no unit).
    Number,
    Uri,
}

impl Table {
    pub const ALL: [Table; 6] = [
        Table::String,
        Table::Token,
        Table::Reference,
        Table::Date,
        Table::Number,
        Table::Uri,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Table::String => "search_string",
            Table::Token => "search_token",
            Table::Reference => "search_reference",
            Table::Date => "search_date",
            Table::Number => "search_number",
            Table::Uri => "search_uri",
        }
    }

    /// The value columns, in the order [`IndexCell`] lists them.
    #[must_use]
    pub fn columns(self) -> &'static [Col] {
        match self {
            Table::String => &[Col::Normalized, Col::Exact],
            Table::Token => &[
                Col::System,
                Col::Code,
                Col::Text,
                Col::TypeSystem,
                Col::TypeCode,
            ],
            Table::Reference => &[
                Col::TargetType,
                Col::TargetId,
                Col::Version,
                Col::Url,
                Col::IdentSystem,
                Col::IdentValue,
            ],
            Table::Date => &[Col::Start, Col::End],
            Table::Number => &[Col::Lower, Col::Upper, Col::System, Col::Code, Col::Unit],
            Table::Uri => &[Col::Value],
        }
    }

    /// The column results are sorted by for a `_sort` on a parameter in this table.
    #[must_use]
    pub fn sort_column(self) -> Col {
        match self {
            Table::String => Col::Normalized,
            Table::Token => Col::Code,
            Table::Reference => Col::Url,
            Table::Date => Col::Start,
            Table::Number => Col::Lower,
            Table::Uri => Col::Value,
        }
    }
}

/// A value column of an index table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Col {
    Normalized,
    Exact,
    System,
    Code,
    Text,
    TypeSystem,
    TypeCode,
    TargetType,
    TargetId,
    Version,
    Url,
    IdentSystem,
    IdentValue,
    Start,
    End,
    Lower,
    Upper,
    /// A quantity's human-readable unit (`Quantity.unit`).
    Unit,
    Value,
}

impl Col {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Col::Normalized => "normalized",
            Col::Exact => "exact",
            Col::System => "system",
            Col::Code => "code",
            Col::Text => "text",
            Col::TypeSystem => "type_system",
            Col::TypeCode => "type_code",
            Col::TargetType => "target_type",
            Col::TargetId => "target_id",
            Col::Version => "version",
            Col::Url => "url",
            Col::IdentSystem => "ident_system",
            Col::IdentValue => "ident_value",
            Col::Start => "start_at",
            Col::End => "end_at",
            Col::Lower => "lower",
            Col::Upper => "upper",
            Col::Unit => "unit",
            Col::Value => "value",
        }
    }
}

/// One index row of a resource.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexRow {
    pub param: ParamKey,
    /// The composite element a component value belongs to; 0 for plain parameters.
    pub grp: i32,
    pub cell: IndexCell,
}

/// The values of one index row; the variant names the table.
#[derive(Clone, Debug, PartialEq)]
pub enum IndexCell {
    String {
        normalized: String,
        exact: String,
    },
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
        type_system: Option<String>,
        type_code: Option<String>,
    },
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        version: Option<String>,
        url: Option<String>,
        ident_system: Option<String>,
        ident_value: Option<String>,
    },
    /// `[start, end)`, microseconds since the epoch.
    Date {
        start: i64,
        end: i64,
    },
    /// `[lower, upper]`: equal for a single value, a Range's ends otherwise (infinite when
    /// open).
    Number {
        lower: f64,
        upper: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri {
        value: String,
    },
}

impl IndexCell {
    #[must_use]
    pub fn table(&self) -> Table {
        match self {
            IndexCell::String { .. } => Table::String,
            IndexCell::Token { .. } => Table::Token,
            IndexCell::Reference { .. } => Table::Reference,
            IndexCell::Date { .. } => Table::Date,
            IndexCell::Number { .. } => Table::Number,
            IndexCell::Uri { .. } => Table::Uri,
        }
    }
}

/// A value a predicate compares a column with.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
}

/// A condition on one index row's columns.
#[derive(Clone, Debug, PartialEq)]
pub enum Pred {
    True,
    Eq(Col, Scalar),
    IsNull(Col),
    Lt(Col, Scalar),
    Le(Col, Scalar),
    Gt(Col, Scalar),
    Ge(Col, Scalar),
    /// The column's text starts with the given text (binary comparison).
    StartsWith(Col, String),
    /// The column's text contains the given text (case-sensitive, like every comparison
    /// here: callers compare normalized text).
    Contains(Col, String),
    /// The column's text is a prefix of the given text (`:above` on uris).
    PrefixOf(Col, String),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
}

/// A condition on a resource. `params` lists the keys a parameter has in each type searched
/// (one key for a search on one type).
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    True,
    False,
    /// The wrapped condition is expected to leave few resources (an identifier, a resource
    /// id): the store lets it select the candidates the other conditions are checked on.
    Selective(Box<Condition>),
    /// Some row of `table` for one of `params` satisfies `pred`.
    Any {
        table: Table,
        params: Vec<ParamKey>,
        pred: Pred,
    },
    /// No row of `table` for one of `params` satisfies `pred` (`:not`, `:missing=true` with
    /// [`Pred::True`]).
    None {
        table: Table,
        params: Vec<ParamKey>,
        pred: Pred,
    },
    /// Some composite element has, for each part, a row of that part's table and key that
    /// satisfies the part's predicate.
    Composite {
        parts: Vec<(Table, ParamKey, Pred)>,
    },
    And(Vec<Condition>),
    Or(Vec<Condition>),
    /// Chaining: the reference parameter `params` points at a current resource of `target`
    /// that satisfies `inner`.
    Chain {
        params: Vec<ParamKey>,
        target: ResourceType,
        inner: Box<Condition>,
    },
    /// Reverse chaining (`_has`): a current resource of `source` whose reference parameter
    /// `param` points at this resource (of type `target`) satisfies `inner`.
    ReferencedBy {
        source: ResourceType,
        param: ParamKey,
        target: ResourceType,
        inner: Box<Condition>,
    },
    /// The resource's id is one of these (`_id`).
    IdIn(Vec<String>),
}

/// One `_sort` key.
#[derive(Clone, Debug, PartialEq)]
pub struct SortSpec {
    pub table: Table,
    pub params: Vec<ParamKey>,
    pub descending: bool,
}

/// A sort key's value in a cursor: what the key column held for the last entry of a page.
#[derive(Clone, Debug, PartialEq)]
pub enum SortValue {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
}

/// A position in a result: after (or, going back, before) the entry with these sort values
/// and `rid`. Paging by position rather than by offset means entries written while a client
/// pages cannot make it skip or repeat entries that did not change.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchCursor {
    pub keys: Vec<SortValue>,
    pub rid: i64,
    /// The page wanted lies before this position (a `previous` link).
    pub backward: bool,
}

/// A search: current resources of `types` (all types if empty) that satisfy every condition.
#[derive(Clone, Debug)]
pub struct SearchQuery {
    pub types: Vec<ResourceType>,
    pub conditions: Vec<Condition>,
    pub sort: Vec<SortSpec>,
    pub cursor: Option<SearchCursor>,
    /// Page size; 0 asks for no entries (a count alone).
    pub limit: u32,
    /// Count all matches (`_total=accurate`).
    pub total: bool,
    /// Stop reading bodies past this many bytes; the page is then shorter.
    pub max_bytes: usize,
}

/// A matching resource with its row key.
#[derive(Clone, Debug)]
pub struct Found {
    pub rid: i64,
    pub version: StoredVersion,
    /// The sort values of this entry, in the order of [`SearchQuery::sort`].
    pub keys: Vec<SortValue>,
}

/// One page of a search, in result order.
#[derive(Clone, Debug)]
pub struct SearchPage {
    pub matches: Vec<Found>,
    /// Entries exist after the last one of this page.
    pub has_next: bool,
    /// Entries exist before the first one of this page.
    pub has_previous: bool,
    pub total: Option<u64>,
}

impl Found {
    /// The cursor of the entries after this one.
    #[must_use]
    pub fn cursor(&self, backward: bool) -> SearchCursor {
        SearchCursor {
            keys: self.keys.clone(),
            rid: self.rid,
            backward,
        }
    }
}

/// Resources related to a set of resources, for `_include` and `_revinclude`.
#[derive(Clone, Debug)]
pub enum Related {
    /// The current resources the reference parameters `params` of `from` point at (of type
    /// `target` only, if given).
    Targets {
        from: Vec<i64>,
        params: Vec<ParamKey>,
        target: Option<ResourceType>,
    },
    /// The current resources of `source` whose reference parameter `params` points at one of
    /// `to` (type and id).
    Sources {
        to: Vec<(ResourceType, String)>,
        source: ResourceType,
        params: Vec<ParamKey>,
    },
}
