//! Search result parameters (R4 `search.html#return`): `_sort`, `_count`, `_total`,
//! `_summary`, `_elements`, `_include`, `_revinclude`, `_cursor`, and `_type`, each read into
//! its field of [`SearchRequest`]. A malformed one is [`ProblemKind::Invalid`](super::ProblemKind):
//! ignoring `_count=abc` or a misspelt `_include` would hand back something else than asked.

use super::name::lookup;
use super::value::{a, list};
use super::{Fail, Include, MAX_CRITERIA, MAX_VALUES_PER_PARAM, SearchRequest, SortKey};
use super::{SummaryMode, TotalMode};
use crate::model::{ResourceType, definitions};
use crate::search::ParamType;

/// The result parameters read here (besides `_type`, which the caller reads first).
pub(super) const NAMES: &[&str] = &[
    "_sort",
    "_count",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_cursor",
];

/// Applies result parameter `name` (one of [`NAMES`]) with its modifier, on a search whose
/// criteria apply to the `scope` types.
pub(super) fn apply(
    request: &mut SearchRequest,
    scope: &[ResourceType],
    name: &str,
    modifier: Option<&str>,
    value: &str,
) -> Result<(), Fail> {
    let iterate = match (name, modifier) {
        (_, None) => false,
        ("_include" | "_revinclude", Some("iterate" | "recurse")) => true,
        ("_include" | "_revinclude", Some(other)) => {
            return Err(Fail::unknown(format!(
                "`:{other}` is not a modifier of {name}; use {name}:iterate or leave it out"
            )));
        }
        (_, Some(other)) => {
            return Err(Fail::unknown(format!(
                "{name} takes no modifier; remove `:{other}`"
            )));
        }
    };
    match name {
        "_sort" => request.sort = sort(scope, value)?,
        "_count" => request.count = Some(count(value)?),
        "_total" => request.total = Some(total(value)?),
        "_summary" => request.summary = Some(summary(value)?),
        "_elements" => request.elements = elements(value)?,
        "_cursor" => {
            if value.is_empty() {
                return Err(Fail::invalid(
                    "_cursor is empty; use the next link of the previous page as it is".to_owned(),
                ));
            }
            request.cursor = Some(value.to_owned());
        }
        _ => {
            if request.includes.len() + request.revincludes.len() >= MAX_CRITERIA {
                return Err(Fail::invalid(format!(
                    "more than {MAX_CRITERIA} _include and _revinclude parameters; split the \
                     search"
                )));
            }
            let single = match scope {
                [only] => Some(*only),
                _ => None,
            };
            let include = include(name, value, iterate, single)?;
            if name == "_include" {
                request.includes.push(include);
            } else {
                request.revincludes.push(include);
            }
        }
    }
    Ok(())
}

/// The comma-separated items of a list-valued result parameter: at most
/// [`MAX_VALUES_PER_PARAM`], none empty (surrounding spaces are ignored).
fn items<'a>(name: &str, value: &'a str, example: &str) -> Result<Vec<&'a str>, Fail> {
    let items: Vec<&str> = value.split(',').map(str::trim).collect();
    if items.len() > MAX_VALUES_PER_PARAM {
        return Err(Fail::invalid(format!(
            "{name} lists {} items; at most {MAX_VALUES_PER_PARAM} are allowed",
            items.len()
        )));
    }
    if items.iter().any(|i| i.is_empty()) {
        return Err(Fail::invalid(format!(
            "{name} has an empty item; write a comma-separated list such as {name}={example}"
        )));
    }
    Ok(items)
}

fn sort(scope: &[ResourceType], value: &str) -> Result<Vec<SortKey>, Fail> {
    let mut keys = Vec::new();
    for item in items("_sort", value, "-date,_id")? {
        let (code, descending) = match item.strip_prefix('-') {
            Some(code) => (code, true),
            None => (item, false),
        };
        let param = lookup(scope, code)
            .map_err(|f| Fail::invalid(format!("_sort cannot sort by `{code}`: {}", f.message)))?;
        let why_not = if !param.is_supported() {
            Some("Haven does not support that parameter")
        } else {
            match param.param_type {
                ParamType::Composite => Some("it is a composite parameter"),
                ParamType::Special => Some("it is a special parameter"),
                _ => None,
            }
        };
        if let Some(why) = why_not {
            return Err(Fail::invalid(format!(
                "_sort cannot sort by `{code}`: {why}; sort by another parameter"
            )));
        }
        keys.push(SortKey { param, descending });
    }
    Ok(keys)
}

fn count(value: &str) -> Result<u32, Fail> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Fail::invalid(
            "_count takes a whole number of 0 or more, e.g. _count=50".to_owned(),
        ));
    }
    // Beyond u32 is still a request for "as many as allowed": the caller clamps.
    Ok(value.parse::<u32>().unwrap_or(u32::MAX))
}

fn total(value: &str) -> Result<TotalMode, Fail> {
    match value {
        "none" => Ok(TotalMode::None),
        "estimate" => Ok(TotalMode::Estimate),
        "accurate" => Ok(TotalMode::Accurate),
        _ => Err(Fail::invalid(
            "_total takes none, estimate or accurate".to_owned(),
        )),
    }
}

fn summary(value: &str) -> Result<SummaryMode, Fail> {
    match value {
        "true" => Ok(SummaryMode::True),
        "text" => Ok(SummaryMode::Text),
        "data" => Ok(SummaryMode::Data),
        "count" => Ok(SummaryMode::Count),
        "false" => Ok(SummaryMode::False),
        _ => Err(Fail::invalid(
            "_summary takes true, text, data, count or false".to_owned(),
        )),
    }
}

/// Top-level element names; a leading `Type.` is dropped (`Patient.name` → `name`).
fn elements(value: &str) -> Result<Vec<String>, Fail> {
    let mut out: Vec<String> = Vec::new();
    for item in items("_elements", value, "identifier,name")? {
        let element = match item.split_once('.') {
            Some((ty, rest)) if ResourceType::parse(ty).is_some() => rest,
            _ => item,
        };
        if element.is_empty() || !element.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Fail::invalid(
                "_elements takes top-level element names such as identifier,name (or \
                 Patient.name); nested paths are not allowed"
                    .to_owned(),
            ));
        }
        if !out.iter().any(|e| e == element) {
            out.push(element.to_owned());
        }
    }
    Ok(out)
}

/// `Source:param[:Target]`, `Source:*`, or `*` for the searched type's every reference.
fn include(
    name: &str,
    value: &str,
    iterate: bool,
    searched: Option<ResourceType>,
) -> Result<Include, Fail> {
    let syntax = || {
        Fail::invalid(format!(
            "{name} is written Type:parameter or Type:parameter:TargetType, e.g. \
             {name}=Observation:subject:Patient, or Type:* for every reference parameter"
        ))
    };
    let parts: Vec<&str> = value.split(':').collect();
    let (source, code, target) = match parts.as_slice() {
        ["*"] => {
            let source = searched.ok_or_else(|| {
                Fail::invalid(format!(
                    "{name}=* needs a single searched type; write {name}=Type:* instead"
                ))
            })?;
            return Ok(Include {
                source,
                param: None,
                target: None,
                iterate,
            });
        }
        [source, code] => (*source, *code, None),
        [source, code, target] => (*source, *code, Some(*target)),
        _ => return Err(syntax()),
    };
    if source.is_empty() || code.is_empty() || target.is_some_and(str::is_empty) {
        return Err(syntax());
    }
    let source = ResourceType::parse(source).ok_or_else(|| {
        Fail::invalid(format!(
            "{name}: `{source}` is not a resource type; write Type:parameter, e.g. \
             Observation:subject"
        ))
    })?;
    let target = target
        .map(|t| {
            ResourceType::parse(t).ok_or_else(|| {
                Fail::invalid(format!(
                    "{name}: `{t}` is not a resource type; the third part names the type \
                     of the resources to include"
                ))
            })
        })
        .transpose()?;
    if code == "*" {
        return Ok(Include {
            source,
            param: None,
            target,
            iterate,
        });
    }
    let param = definitions().search_param(source, code).ok_or_else(|| {
        Fail::invalid(format!("{name}: {source} has no search parameter `{code}`"))
    })?;
    if param.param_type != ParamType::Reference {
        return Err(Fail::invalid(format!(
            "{name}: `{code}` of {source} is a {} parameter; includes follow reference \
             parameters",
            param.param_type.as_str()
        )));
    }
    if let Some(t) = target
        && !param.targets.is_empty()
        && param.targets.binary_search(&t).is_err()
    {
        return Err(Fail::invalid(format!(
            "{name}: `{code}` of {source} never refers to {}; it refers to {}",
            a(t),
            list(&param.targets)
        )));
    }
    Ok(Include {
        source,
        param: Some(param),
        target,
        iterate,
    })
}

/// `_type`: a comma-separated list of resource types, without repeats.
pub(super) fn types(value: &str) -> Result<Vec<ResourceType>, Fail> {
    let mut out: Vec<ResourceType> = Vec::new();
    for item in items("_type", value, "Patient,Practitioner")? {
        let ty = ResourceType::parse(item).ok_or_else(|| {
            Fail::invalid(format!(
                "_type: `{item}` is not a resource type; write type names as in the REST \
                 paths, e.g. _type=Patient,Practitioner"
            ))
        })?;
        if !out.contains(&ty) {
            out.push(ty);
        }
    }
    Ok(out)
}
