//! Search requests (R4 `search.html`): the query string of a search, parsed and checked
//! against the search-parameter table, with every value converted into the form it is
//! matched in. No storage: the service turns a [`SearchRequest`] into a store query.
//!
//! [`parse`] takes the decoded `(name, value)` pairs of the query (or of a POST `_search`
//! form) in order. Names are `code`, `code:modifier`, `code:Type.chained...` or
//! `_has:Type:param:...`; values are comma-separated alternatives (OR), with `\,`, `\|`,
//! `\$` and `\\` escapes. Repeating a name ANDs its occurrences. The work is split by
//! concern: `name` reads names and resolves chains and `_has`, `value` splits and converts
//! values, `result` reads the result parameters.
//!
//! **Scope.** A criterion on `GET /Patient` uses Patient's parameters. A system-level search
//! (`GET /`) may use only the parameters that every type searched shares: with no `_type`,
//! those of `Resource` (`_id`, `_lastUpdated`, `_tag`, `_profile`, `_security`, `_source`);
//! with `_type=Patient,Practitioner`, also those the two share (`family`); with one type,
//! all of that type's. An untyped chain (`subject.name`) goes to every target type of the
//! reference that has the next parameter.
//!
//! **Limits.** At most [`MAX_VALUES_PER_PARAM`] alternatives per occurrence,
//! [`MAX_CRITERIA`] criteria and as many `_include`/`_revinclude`, [`MAX_CHAIN_DEPTH`]
//! links of chaining and `_has` together, and 256 target-type branches per chained
//! occurrence (a reference such as Provenance `target` may point at 145 types). Past a
//! limit the occurrence is [`ProblemKind::Invalid`], since dropping it would widen the
//! result.
//!
//! **Problems.** What cannot be honoured is reported in [`SearchRequest::problems`] rather
//! than failing the parse, so the caller decides between lenient handling (ignore unknown
//! and unsupported parameters, say so in an OperationOutcome) and strict handling (400):
//! [`ProblemKind::Unknown`] and [`ProblemKind::Unsupported`] criteria are dropped from
//! [`SearchRequest::criteria`]. A value that is malformed for its parameter
//! ([`ProblemKind::Invalid`]) is always an error for the caller: ignoring it would widen
//! the result.

mod name;
mod result;
#[cfg(test)]
mod tests;
mod value;

use super::{ParamType, SearchParam};
use crate::model::{ResourceType, definitions};

/// Greatest depth of chaining (`subject:Patient.organization.name` is 2 links) and of
/// nested `_has`.
pub const MAX_CHAIN_DEPTH: usize = 3;
/// Most OR alternatives in one parameter occurrence, and most occurrences overall: bounds
/// the size of the query a client can make the store run.
pub const MAX_VALUES_PER_PARAM: usize = 100;
pub const MAX_CRITERIA: usize = 64;

/// Options of [`parse`].
#[derive(Debug, Clone, Default)]
pub struct ParseOptions<'a> {
    /// This server's FHIR base (`https://ehr.example/fhir`), so that absolute references to
    /// it are matched as local ones.
    pub base_url: Option<&'a str>,
}

/// A parsed search.
#[derive(Debug, Default)]
pub struct SearchRequest {
    /// The type searched (`GET /Patient`); `None` for a system-level search (`GET /`).
    pub resource_type: Option<ResourceType>,
    /// `_type` (system-level search only): the types to search; empty means all.
    pub types: Vec<ResourceType>,
    /// ANDed criteria, one per parameter occurrence.
    pub criteria: Vec<Criterion>,
    /// `_sort` keys, in order.
    pub sort: Vec<SortKey>,
    /// `_count` as given (the caller clamps it to its maximum).
    pub count: Option<u32>,
    pub total: Option<TotalMode>,
    pub summary: Option<SummaryMode>,
    /// `_elements`: top-level element names, without the type prefix.
    pub elements: Vec<String>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// The paging cursor (`_cursor`), opaque here.
    pub cursor: Option<String>,
    /// The `(name, value)` pairs that were applied, in request order, for the self link.
    pub applied: Vec<(String, String)>,
    pub problems: Vec<Problem>,
}

/// One criterion: a parameter occurrence whose alternatives are ORed.
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    /// `code[:modifier]=v1,v2`: the resource has a value of `param` matching any alternative.
    /// `negated` is set by the `:not` modifier of tokens: no value of the parameter matches
    /// any alternative (resources without a value match too).
    Match {
        param: &'static SearchParam,
        values: Vec<SearchValue>,
        negated: bool,
    },
    /// `code:missing=true|false`.
    Missing {
        param: &'static SearchParam,
        missing: bool,
    },
    /// `reference[:Type].inner...`: the reference points at a resource of one of the
    /// target types that matches that type's criterion. One entry per candidate type.
    Chain {
        param: &'static SearchParam,
        targets: Vec<(ResourceType, Box<Criterion>)>,
    },
    /// `_has:Source:param:inner...`: some resource of `source` whose `param` (a reference)
    /// points at this resource matches `inner`.
    Has {
        source: ResourceType,
        param: &'static SearchParam,
        inner: Box<Criterion>,
    },
}

/// Comparison prefixes of number, date and quantity values (`search.html#prefix`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// How string alternatives match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatch {
    /// Default: the normalized value starts with the normalized query.
    StartsWith,
    /// `:exact`: equal, case and accents significant.
    Exact,
    /// `:contains`: the normalized value contains the normalized query.
    Contains,
}

/// How uri alternatives match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMatch {
    Exact,
    /// `:above`: the stored uri is a prefix of the query (matches the query or a parent).
    Above,
    /// `:below`: the query is a prefix of the stored uri.
    Below,
}

/// One alternative, converted into the form stored in the index ([`super::IndexValue`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    /// `text` is [`super::normalize_string`]-ed for `StartsWith` and `Contains`, as given
    /// for `Exact`.
    String {
        text: String,
        mode: StringMatch,
    },
    /// `[system|]code`: `system` `None` means any system, `Some("")` (from `|code`) means no
    /// system; `code` `None` (from `system|`) means any code of that system.
    Token {
        system: Option<String>,
        code: Option<String>,
    },
    /// `:text`: normalized, matched starts-with against the token's text (display,
    /// CodeableConcept.text, Identifier.type.text).
    TokenText(String),
    /// `:of-type` (`type-system|type-code|value`).
    OfType {
        type_system: Option<String>,
        type_code: String,
        value: String,
    },
    /// A reference to a resource: `Type/id`, `id` with a `:Type` modifier, an absolute URL
    /// on this server's base. `target_type` `None` means any type (a bare `id`). `version`
    /// from `Type/id/_history/v` or canonical `url|version`.
    Reference {
        target_type: Option<ResourceType>,
        id: String,
        version: Option<String>,
    },
    /// A reference given as a URL that is not on this server (or a canonical): matched
    /// against the reference text as stored; `version` from `url|version`.
    ReferenceUrl {
        url: String,
        version: Option<String>,
    },
    /// `:identifier` (`system|value`, `value`, `system|`).
    ReferenceIdentifier {
        system: Option<String>,
        value: Option<String>,
    },
    /// A date with its prefix: `[start, end)` is the period the value's precision denotes,
    /// microseconds since the epoch, UTC (`2020-03` is all of March 2020).
    Date {
        prefix: Prefix,
        start_micros: i64,
        end_micros: i64,
    },
    /// A number with its prefix: `[lower, upper)` is the implicit precision range of the
    /// value as written (`5.4` → `[5.35, 5.45)`), `value` its exact decimal text.
    Number {
        prefix: Prefix,
        value: String,
        lower: f64,
        upper: f64,
    },
    /// `[prefix]number|system|code` (or `number||code`, or `number`): like `Number`, with
    /// the unit; `system` `None` means any system, `code` `None` any unit.
    Quantity {
        prefix: Prefix,
        value: String,
        lower: f64,
        upper: f64,
        system: Option<String>,
        code: Option<String>,
    },
    Uri {
        uri: String,
        mode: UriMatch,
    },
    /// `c1$c2`: one value per component of a composite parameter, each converted by the
    /// component's type.
    Composite(Vec<SearchValue>),
}

/// One `_sort` key (`-date` sorts descending).
#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub param: &'static SearchParam,
    pub descending: bool,
}

/// `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    None,
    Estimate,
    Accurate,
}

/// `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryMode {
    True,
    Text,
    Data,
    Count,
    False,
}

/// `_include=Source:param[:Target]` / `_revinclude=...`, with `:iterate` (or the R4
/// synonym `:recurse`). `param` `None` is the wildcard `*` (every reference parameter of
/// `source`).
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source: ResourceType,
    pub param: Option<&'static SearchParam>,
    pub target: Option<ResourceType>,
    pub iterate: bool,
}

/// Something in the query that was not applied, or cannot be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The parameter name as given (`name:foo`).
    pub name: String,
    pub kind: ProblemKind,
    /// What went wrong and what to do, for an OperationOutcome; no internal detail.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// No such parameter for the type (or no such modifier, prefix or result parameter).
    Unknown,
    /// A parameter or modifier R4 defines that Haven does not implement (`_text`,
    /// `_content`, `_query`, `near`, `:above`/`:below`/`:in`/`:not-in` on tokens, ...).
    Unsupported,
    /// A malformed value (`birthdate=yesterday`, `_count=-1`, a chain deeper than
    /// [`MAX_CHAIN_DEPTH`]): always an error.
    Invalid,
}

impl SearchRequest {
    /// Whether any problem must fail the request even under lenient handling.
    #[must_use]
    pub fn has_invalid(&self) -> bool {
        self.problems.iter().any(|p| p.kind == ProblemKind::Invalid)
    }
}

impl ParamType {
    /// Whether values of this type take comparison prefixes.
    #[must_use]
    pub fn takes_prefix(self) -> bool {
        matches!(
            self,
            ParamType::Number | ParamType::Date | ParamType::Quantity
        )
    }
}

/// Why one parameter occurrence was not applied; becomes a [`Problem`] under the name as
/// given.
#[derive(Debug)]
struct Fail {
    kind: ProblemKind,
    message: String,
}

impl Fail {
    fn unknown(message: String) -> Fail {
        Fail {
            kind: ProblemKind::Unknown,
            message,
        }
    }

    fn unsupported(message: String) -> Fail {
        Fail {
            kind: ProblemKind::Unsupported,
            message,
        }
    }

    fn invalid(message: String) -> Fail {
        Fail {
            kind: ProblemKind::Invalid,
            message,
        }
    }
}

/// Parameters R4 defines that Haven does not implement, and that are not in the
/// search-parameter table.
const UNSUPPORTED: &[&str] = &["_list", "_filter", "_contained", "_containedType"];

/// Parses a search on `resource_type` (`None`: system level) from decoded query pairs.
///
/// Result parameters (`_sort`, `_count`, `_total`, `_summary`, `_elements`, `_include`,
/// `_revinclude`, `_cursor`) fill their fields; `_format` and `_pretty` are left to the HTTP
/// layer and silently skipped; everything else is a criterion.
///
/// A system-level search may use the parameters shared by every type searched: with no
/// `_type`, those of every resource (`_id`, `_lastUpdated`, `_tag`, `_profile`,
/// `_security`, `_source`); with `_type`, those all its types share (with one type, all of
/// that type's). `_type` is read first for that reason, wherever it stands in the query.
/// Repeating a result parameter other than `_include`/`_revinclude` is invalid.
#[must_use]
pub fn parse(
    resource_type: Option<ResourceType>,
    pairs: &[(String, String)],
    options: &ParseOptions<'_>,
) -> SearchRequest {
    let mut request = SearchRequest {
        resource_type,
        ..SearchRequest::default()
    };
    if resource_type.is_none()
        && let Some((_, value)) = pairs.iter().find(|(name, _)| name == "_type")
        && let Ok(types) = result::types(value)
    {
        request.types = types;
    }
    let scope: Vec<ResourceType> = match resource_type {
        Some(ty) => vec![ty],
        None if !request.types.is_empty() => request.types.clone(),
        None => definitions().resource_types().to_vec(),
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut occurrences = 0usize;
    for (name, value) in pairs {
        let (base, modifier) = match name.split_once(':') {
            Some((base, modifier)) => (base, Some(modifier)),
            None => (name.as_str(), None),
        };
        let outcome = match base {
            "_format" | "_pretty" => continue,
            _ if UNSUPPORTED.contains(&base) => Err(Fail::unsupported(format!(
                "Haven does not support {base}; remove it from the search"
            ))),
            "_type" => type_param(resource_type, &mut seen, modifier, value),
            _ if result::NAMES.contains(&base) => {
                if base != "_include" && base != "_revinclude" && seen.contains(&base) {
                    Err(Fail::invalid(format!(
                        "{base} is given more than once; give it once"
                    )))
                } else {
                    seen.push(base);
                    result::apply(&mut request, &scope, base, modifier, value)
                }
            }
            _ => {
                occurrences += 1;
                if occurrences > MAX_CRITERIA {
                    if occurrences == MAX_CRITERIA + 1 {
                        Err(Fail::invalid(format!(
                            "the search has more than {MAX_CRITERIA} parameters; at most \
                             {MAX_CRITERIA} are allowed, split the search"
                        )))
                    } else {
                        continue;
                    }
                } else {
                    criterion(&scope, name, value, options)
                        .map(|criterion| request.criteria.push(criterion))
                }
            }
        };
        match outcome {
            Ok(()) => request.applied.push((name.clone(), value.clone())),
            Err(fail) => request.problems.push(Problem {
                name: name.clone(),
                kind: fail.kind,
                message: fail.message,
            }),
        }
    }
    request
}

/// Checks a `_type` occurrence; its value was read before the loop (and is read again here
/// to report its problem in order).
fn type_param(
    resource_type: Option<ResourceType>,
    seen: &mut Vec<&str>,
    modifier: Option<&str>,
    value: &str,
) -> Result<(), Fail> {
    if let Some(ty) = resource_type {
        return Err(Fail::invalid(format!(
            "_type belongs to a system-level search (GET [base]?_type=...); this search is \
             already on {ty}, remove _type"
        )));
    }
    if let Some(modifier) = modifier {
        return Err(Fail::unknown(format!(
            "_type takes no modifier; remove `:{modifier}`"
        )));
    }
    if seen.contains(&"_type") {
        return Err(Fail::invalid(
            "_type is given more than once; list all the types in one _type".to_owned(),
        ));
    }
    seen.push("_type");
    result::types(value).map(drop)
}

/// One criterion occurrence, resolved against the scope.
fn criterion(
    scope: &[ResourceType],
    name: &str,
    value: &str,
    options: &ParseOptions<'_>,
) -> Result<Criterion, Fail> {
    let syntax = name::read(name)?;
    name::Resolver::new(options).resolve(scope, &syntax, value)
}
