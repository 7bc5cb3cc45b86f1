//! The value side of a criterion (R4 `search.html#escaping` and the per-type sections): a
//! parameter's value split into OR alternatives and their parts, the `\` escapes undone, and
//! each alternative converted into the [`SearchValue`] it is matched as, by parameter type and
//! modifier.
//!
//! Splitting works on the escaped text and unescaping happens last, at each leaf part, so that
//! `a\,b` stays one alternative and `a\|b` one token code, however deep the split goes
//! (alternatives on `,`, composite components on `$`, token/quantity/reference parts on `|`).
//!
//! Error messages name the parameter and say what a valid value looks like, but never echo the
//! value: search values are often patient data (a name, a birth date).

use time::OffsetDateTime;

use super::{Criterion, Fail, MAX_VALUES_PER_PARAM, ParseOptions, Prefix, SearchValue};
use super::{StringMatch, UriMatch};
use crate::model::ResourceType;
use crate::primitives::{is_valid_id, parse_search_datetime};
use crate::search::number::bounds;
use crate::search::{ParamType, SearchParam, normalize_string};

/// A modifier, checked against the parameter's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modifier {
    None,
    Missing,
    Exact,
    Contains,
    Text,
    Not,
    OfType,
    Above,
    Below,
    Identifier,
    Type(ResourceType),
}

/// The criterion of one (non-chained) parameter occurrence: `code[:modifier]=raw`.
pub(super) fn criterion(
    param: &'static SearchParam,
    modifier: Option<&str>,
    raw: &str,
    options: &ParseOptions<'_>,
) -> Result<Criterion, Fail> {
    if !param.is_supported() {
        return Err(Fail::unsupported(format!(
            "Haven does not support the search parameter `{}` ({}): it needs search logic \
             of its own; remove it from the search",
            param.code,
            param.param_type.as_str()
        )));
    }
    let parsed = modifier_of(param, modifier)?;
    if parsed == Modifier::Missing {
        let missing = match raw {
            "true" => true,
            "false" => false,
            _ => {
                return Err(Fail::invalid(format!(
                    "`{}:missing` takes true or false",
                    param.code
                )));
            }
        };
        return Ok(Criterion::Missing { param, missing });
    }
    let label = match modifier {
        Some(m) => format!("`{}:{m}`", param.code),
        None => format!("`{}`", param.code),
    };
    let alternatives = alternatives(&label, raw)?;
    let count = alternatives.len();
    let mut values = Vec::with_capacity(count);
    for (i, alternative) in alternatives.into_iter().enumerate() {
        let value = convert(param, parsed, &label, alternative, options).map_err(|mut f| {
            if count > 1 {
                f.message = format!("{} (in alternative {} of {count})", f.message, i + 1);
            }
            f
        })?;
        values.push(value);
    }
    Ok(Criterion::Match {
        param,
        values,
        negated: parsed == Modifier::Not,
    })
}

fn modifier_of(param: &SearchParam, modifier: Option<&str>) -> Result<Modifier, Fail> {
    let Some(text) = modifier else {
        return Ok(Modifier::None);
    };
    let ty = param.param_type;
    // `[type]` in the table stands for a type name (below), it is not a modifier itself.
    if text != "[type]" && ty.modifiers().contains(&text) {
        return match (ty, text) {
            (_, "missing") => Ok(Modifier::Missing),
            (ParamType::String, "exact") => Ok(Modifier::Exact),
            (ParamType::String, "contains") => Ok(Modifier::Contains),
            (ParamType::Token, "text") => Ok(Modifier::Text),
            (ParamType::Token, "not") => Ok(Modifier::Not),
            (ParamType::Token, "of-type") => Ok(Modifier::OfType),
            (ParamType::Reference, "identifier") => Ok(Modifier::Identifier),
            (ParamType::Uri, "above") => Ok(Modifier::Above),
            (ParamType::Uri, "below") => Ok(Modifier::Below),
            _ => Err(Fail::unsupported(format!(
                "Haven does not support the modifier `:{text}` on `{}`{}; remove the modifier",
                param.code,
                if ty == ParamType::Token {
                    " (it needs a terminology server)"
                } else {
                    ""
                }
            ))),
        };
    }
    if ty == ParamType::Reference
        && let Some(target) = ResourceType::parse(text)
    {
        return type_modifier(param, target).map(Modifier::Type);
    }
    let known = ty.modifiers();
    Err(Fail::unknown(if known.is_empty() {
        format!(
            "`{}` is a {} parameter, which takes no modifiers; remove `:{text}`",
            param.code,
            ty.as_str()
        )
    } else {
        format!(
            "`:{text}` is not a modifier of `{}` ({} parameter); its modifiers are {}",
            param.code,
            ty.as_str(),
            known
                .iter()
                .map(|m| match *m {
                    "[type]" => ":Type (such as :Patient)".to_owned(),
                    m => format!(":{m}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        )
    }))
}

/// Checks a `:Type` modifier (of a reference value or of a chain) against the parameter's
/// targets. A parameter that lists no targets may point anywhere.
pub(super) fn type_modifier(
    param: &SearchParam,
    target: ResourceType,
) -> Result<ResourceType, Fail> {
    if param.targets.is_empty() || param.targets.binary_search(&target).is_ok() {
        Ok(target)
    } else {
        Err(Fail::invalid(format!(
            "`{}` never refers to {}; it refers to {}",
            param.code,
            a(target),
            list(&param.targets)
        )))
    }
}

/// "a Patient", "an Observation".
pub(super) fn a(ty: ResourceType) -> String {
    let article = if ty.as_str().starts_with(['A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {ty}")
}

/// Type names for a message: all of them if few, else the first few and a count.
pub(super) fn list(types: &[ResourceType]) -> String {
    const SHOWN: usize = 6;
    let names: Vec<&str> = types.iter().take(SHOWN).map(ResourceType::as_str).collect();
    if types.len() > SHOWN {
        format!("{} and {} more", names.join(", "), types.len() - SHOWN)
    } else {
        names.join(", ")
    }
}

/// The OR alternatives of a value, still escaped: at most [`MAX_VALUES_PER_PARAM`], none empty.
fn alternatives<'a>(label: &str, raw: &'a str) -> Result<Vec<&'a str>, Fail> {
    let alternatives = split(raw, b',');
    if alternatives.len() > MAX_VALUES_PER_PARAM {
        return Err(Fail::invalid(format!(
            "{label} has {} comma-separated values; at most {MAX_VALUES_PER_PARAM} are \
             allowed, split the search",
            alternatives.len()
        )));
    }
    if alternatives.iter().any(|a| a.is_empty()) {
        return Err(Fail::invalid(if alternatives.len() == 1 {
            format!("{label} has an empty value; give a value or leave the parameter out")
        } else {
            format!(
                "{label} has an empty value between commas; remove the extra comma \
                 (escape a literal comma as \\,)"
            )
        }));
    }
    Ok(alternatives)
}

/// Splits `raw` at every `sep` that a backslash does not escape. The parts keep their
/// escapes. `sep` is ASCII, so every cut falls on a character boundary.
pub(super) fn split(raw: &str, sep: u8) -> Vec<&str> {
    let bytes = raw.as_bytes();
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            // Whatever follows is escaped (or kept literally, see `unescape`): never a cut.
            i += 2;
        } else {
            if bytes[i] == sep {
                parts.push(&raw[start..i]);
                start = i + 1;
            }
            i += 1;
        }
    }
    parts.push(raw.get(start..).unwrap_or(""));
    parts
}

/// Undoes `\,` `\$` `\|` `\\`. A backslash before anything else is kept as written.
pub(super) fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && matches!(next, '\\' | ',' | '$' | '|')
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// One alternative of `param` (escaped), converted by its type and modifier.
fn convert(
    param: &SearchParam,
    modifier: Modifier,
    label: &str,
    raw: &str,
    options: &ParseOptions<'_>,
) -> Result<SearchValue, Fail> {
    match param.param_type {
        ParamType::String => string(label, raw, modifier),
        ParamType::Token => token(label, raw, modifier),
        ParamType::Reference => match modifier {
            Modifier::Identifier => reference_identifier(label, raw),
            Modifier::Type(target) => reference(label, raw, Some(target), options),
            _ => reference(label, raw, None, options),
        },
        ParamType::Date => date(label, raw),
        ParamType::Number => number(label, raw),
        ParamType::Quantity => quantity(label, raw),
        ParamType::Uri => uri(
            label,
            raw,
            match modifier {
                Modifier::Above => UriMatch::Above,
                Modifier::Below => UriMatch::Below,
                _ => UriMatch::Exact,
            },
        ),
        ParamType::Composite => composite(param, raw, options),
        ParamType::Special => Err(Fail::unsupported(format!(
            "Haven does not support special search parameters such as {label}"
        ))),
    }
}

fn string(label: &str, raw: &str, modifier: Modifier) -> Result<SearchValue, Fail> {
    let text = unescape(raw);
    let (text, mode) = match modifier {
        Modifier::Exact => (text, StringMatch::Exact),
        Modifier::Contains => (normalize_string(&text), StringMatch::Contains),
        _ => (normalize_string(&text), StringMatch::StartsWith),
    };
    if text.is_empty() {
        // Only blanks: starts-with "" would match every value.
        return Err(Fail::invalid(format!(
            "{label} has a value of only spaces; give some text"
        )));
    }
    Ok(SearchValue::String { text, mode })
}

fn token(label: &str, raw: &str, modifier: Modifier) -> Result<SearchValue, Fail> {
    match modifier {
        Modifier::Text => {
            let text = normalize_string(&unescape(raw));
            if text.is_empty() {
                return Err(Fail::invalid(format!(
                    "{label} has a value of only spaces; give some text"
                )));
            }
            Ok(SearchValue::TokenText(text))
        }
        Modifier::OfType => match split(raw, b'|').as_slice() {
            [type_system, type_code, value] if !type_code.is_empty() && !value.is_empty() => {
                Ok(SearchValue::OfType {
                    type_system: non_empty(type_system),
                    type_code: unescape(type_code),
                    value: unescape(value),
                })
            }
            _ => Err(Fail::invalid(format!(
                "{label} takes type-system|type-code|value, e.g. \
                 http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345 (the type system \
                 may be empty, the type code and value may not)"
            ))),
        },
        _ => match split(raw, b'|').as_slice() {
            [code] => Ok(SearchValue::Token {
                system: None,
                code: Some(unescape(code)),
            }),
            [system, code] if !(system.is_empty() && code.is_empty()) => Ok(SearchValue::Token {
                system: Some(unescape(system)),
                code: non_empty(code),
            }),
            _ => Err(Fail::invalid(format!(
                "{label} takes a token written code, system|code, |code or system| \
                 (escape a literal | as \\|)"
            ))),
        },
    }
}

/// The unescaped part, `None` when empty.
fn non_empty(raw: &str) -> Option<String> {
    (!raw.is_empty()).then(|| unescape(raw))
}

fn reference_identifier(label: &str, raw: &str) -> Result<SearchValue, Fail> {
    match split(raw, b'|').as_slice() {
        [value] => Ok(SearchValue::ReferenceIdentifier {
            system: None,
            value: Some(unescape(value)),
        }),
        [system, value] if !(system.is_empty() && value.is_empty()) => {
            Ok(SearchValue::ReferenceIdentifier {
                system: Some(unescape(system)),
                value: non_empty(value),
            })
        }
        _ => Err(Fail::invalid(format!(
            "{label} takes system|value, value or system| (escape a literal | \
             as \\|)"
        ))),
    }
}

/// `Type/id`, `Type/id/_history/v`, `id` or an absolute URL (`url|version` for canonicals).
/// `declared` is the type of a `:Type` modifier.
fn reference(
    label: &str,
    raw: &str,
    declared: Option<ResourceType>,
    options: &ParseOptions<'_>,
) -> Result<SearchValue, Fail> {
    let syntax = || {
        Fail::invalid(format!(
            "{label} takes a reference written Type/id, Type/id/_history/version, id, or an \
             absolute URL (url|version for a canonical)"
        ))
    };
    let (text, version) = match split(raw, b'|').as_slice() {
        [text] => (unescape(text), None),
        [text, version] if !version.is_empty() => (unescape(text), Some(unescape(version))),
        _ => return Err(syntax()),
    };
    if text.contains(':') {
        // An absolute URL (an id has no colon): local if it is on this server's base.
        let local = options
            .base_url
            .map(|base| base.trim_end_matches('/'))
            .filter(|base| !base.is_empty())
            .and_then(|base| text.strip_prefix(base)?.strip_prefix('/'))
            .and_then(relative);
        return match local {
            Some((target, id, history)) => {
                let version = match (history, version) {
                    (Some(_), Some(_)) => return Err(syntax()),
                    (history, version) => history.or(version),
                };
                same_type(label, declared, target)?;
                Ok(SearchValue::Reference {
                    target_type: Some(target),
                    id,
                    version,
                })
            }
            None => Ok(SearchValue::ReferenceUrl { url: text, version }),
        };
    }
    if version.is_some() {
        return Err(syntax());
    }
    if !text.contains('/') {
        if !is_valid_id(&text) {
            return Err(Fail::invalid(format!(
                "{label}: a bare reference must be a resource id (1-64 letters, digits, - and \
                 .); write Type/id or an absolute URL otherwise"
            )));
        }
        return Ok(SearchValue::Reference {
            target_type: declared,
            id: text,
            version: None,
        });
    }
    let Some((target, id, version)) = relative(&text) else {
        return Err(syntax());
    };
    same_type(label, declared, target)?;
    Ok(SearchValue::Reference {
        target_type: Some(target),
        id,
        version,
    })
}

/// `Type/id` or `Type/id/_history/v`, with a known type and valid ids.
fn relative(text: &str) -> Option<(ResourceType, String, Option<String>)> {
    let segments: Vec<&str> = text.split('/').collect();
    let (ty, id, version) = match segments.as_slice() {
        [ty, id] => (*ty, *id, None),
        [ty, id, "_history", version] => (*ty, *id, Some(*version)),
        _ => return None,
    };
    let target = ResourceType::parse(ty)?;
    if !is_valid_id(id) || !version.is_none_or(is_valid_id) {
        return None;
    }
    Some((target, id.to_owned(), version.map(str::to_owned)))
}

fn same_type(
    label: &str,
    declared: Option<ResourceType>,
    target: ResourceType,
) -> Result<(), Fail> {
    match declared {
        Some(declared) if declared != target => Err(Fail::invalid(format!(
            "{label} is given a reference to {}; drop the modifier or make the two agree",
            a(target)
        ))),
        _ => Ok(()),
    }
}

/// A comparison prefix and the rest. Two lowercase letters before a digit that are not a
/// prefix are reported as an unknown prefix; anything else is left for the value's parser.
fn prefix<'a>(label: &str, text: &'a str) -> Result<(Prefix, &'a str), Fail> {
    let (Some(head), Some(rest)) = (text.get(..2), text.get(2..)) else {
        return Ok((Prefix::Eq, text));
    };
    let prefix = match head {
        "eq" => Prefix::Eq,
        "ne" => Prefix::Ne,
        "gt" => Prefix::Gt,
        "lt" => Prefix::Lt,
        "ge" => Prefix::Ge,
        "le" => Prefix::Le,
        "sa" => Prefix::Sa,
        "eb" => Prefix::Eb,
        "ap" => Prefix::Ap,
        _ if head.bytes().all(|b| b.is_ascii_lowercase())
            && rest
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_digit() || b == b'-') =>
        {
            return Err(Fail::invalid(format!(
                "{label}: `{head}` is not a comparison prefix; use one of eq, ne, gt, lt, ge, \
                 le, sa, eb, ap"
            )));
        }
        _ => return Ok((Prefix::Eq, text)),
    };
    Ok((prefix, rest))
}

fn date(label: &str, raw: &str) -> Result<SearchValue, Fail> {
    let text = unescape(raw);
    let (prefix, rest) = prefix(label, &text)?;
    let parsed = parse_search_datetime(rest).map_err(|e| {
        Fail::invalid(format!(
            "{label} takes a date such as 2024-03-15, 2024-03, 2024, 2024-03-15T10:30 or \
             2024-03-15T10:30:00Z, optionally after a prefix such as ge (ge2024-03-15); this \
             value is not one ({})",
            e.reason
        ))
    })?;
    Ok(SearchValue::Date {
        prefix,
        start_micros: micros(parsed.start()),
        end_micros: micros(parsed.end_exclusive()),
    })
}

/// Microseconds since the epoch, saturating (as the index stores dates).
fn micros(t: OffsetDateTime) -> i64 {
    let micros = t.unix_timestamp_nanos() / 1000;
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

fn number(label: &str, raw: &str) -> Result<SearchValue, Fail> {
    let text = unescape(raw);
    let (prefix, rest) = prefix(label, &text)?;
    let b = bounds(rest).ok_or_else(|| {
        Fail::invalid(format!(
            "{label} takes a number such as 5.4, -2 or 1e3, optionally after a prefix such as \
             gt (gt5.4)"
        ))
    })?;
    Ok(SearchValue::Number {
        prefix,
        value: b.text,
        lower: b.lower,
        upper: b.upper,
    })
}

fn quantity(label: &str, raw: &str) -> Result<SearchValue, Fail> {
    let syntax = || {
        Fail::invalid(format!(
            "{label} takes a quantity written [prefix]number|system|code (e.g. \
             gt5.4|http://unitsofmeasure.org|mg), number||code or just a number"
        ))
    };
    let (number_part, system, code) = match split(raw, b'|').as_slice() {
        [number] => (*number, None, None),
        [number, system, code] => (*number, non_empty(system), non_empty(code)),
        _ => return Err(syntax()),
    };
    let text = unescape(number_part);
    let (prefix, rest) = prefix(label, &text)?;
    let b = bounds(rest).ok_or_else(syntax)?;
    Ok(SearchValue::Quantity {
        prefix,
        value: b.text,
        lower: b.lower,
        upper: b.upper,
        system,
        code,
    })
}

fn uri(label: &str, raw: &str, mode: UriMatch) -> Result<SearchValue, Fail> {
    let uri = unescape(raw);
    if uri.trim().is_empty() {
        return Err(Fail::invalid(format!(
            "{label} has a value of only spaces; give a URI"
        )));
    }
    Ok(SearchValue::Uri { uri, mode })
}

/// `c1$c2...`: one part per component, each converted by the component's type with no
/// modifier (a prefix stays inside its part: `...|8480-6$gt100`).
fn composite(
    param: &SearchParam,
    raw: &str,
    options: &ParseOptions<'_>,
) -> Result<SearchValue, Fail> {
    let parts = split(raw, b'$');
    let expected = param.components.len();
    if parts.len() != expected {
        return Err(Fail::invalid(format!(
            "`{}` takes {expected} components separated by $ (e.g. \
             http://loinc.org|8480-6$gt100 for a code and a quantity); this value has {} \
             (escape a literal $ as \\$)",
            param.code,
            parts.len()
        )));
    }
    let mut values = Vec::with_capacity(expected);
    for (i, (part, component)) in parts.iter().zip(&param.components).enumerate() {
        let label = format!("component {} of `{}`", i + 1, param.code);
        if part.is_empty() {
            return Err(Fail::invalid(format!("{label} is empty; give a value")));
        }
        let value = match component.param_type {
            ParamType::String => string(&label, part, Modifier::None),
            ParamType::Token => token(&label, part, Modifier::None),
            ParamType::Reference => reference(&label, part, None, options),
            ParamType::Date => date(&label, part),
            ParamType::Number => number(&label, part),
            ParamType::Quantity => quantity(&label, part),
            ParamType::Uri => uri(&label, part, UriMatch::Exact),
            ParamType::Composite | ParamType::Special => Err(Fail::unsupported(format!(
                "Haven does not support `{}`: a component has no searchable type",
                param.code
            ))),
        }?;
        values.push(value);
    }
    Ok(SearchValue::Composite(values))
}
