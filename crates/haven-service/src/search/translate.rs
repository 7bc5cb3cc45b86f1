//! FHIR search semantics (R4 `search.html`) as store conditions: what each parameter type,
//! modifier and prefix means, expressed over the index columns of `haven_store::search`.
//!
//! Ranges: a stored date is the period `[start, end)` its precision denotes; a stored number
//! or quantity is the point `[v, v]` (or a Range's `[low, high]`). A date query value is the
//! period `[qs, qe)` of its own precision. The prefixes then read (R4 `search.html#prefix`):
//!
//! | prefix | dates: the resource's period ... | numbers: the resource's value ... |
//! |---|---|---|
//! | eq | lies within `[qs, qe)` | lies within the query's precision range |
//! | ne | does not lie within it | does not lie within it |
//! | gt | extends past `qe` | is above the query value |
//! | lt | starts before `qs` | is below it |
//! | ge | extends past `qe`, or lies within | is at or above it |
//! | le | starts before `qs`, or lies within | is at or below it |
//! | sa | starts at or after `qe` | (lower end) is above it |
//! | eb | ends at or before `qs` | (upper end) is below it |
//! | ap | overlaps `[qs, qe)` widened by 10% of its distance from now | is within 10% of it |
//!
//! Quantities compare values in the unit the resource states; no unit conversion (UCUM) is
//! done, so `gt5|http://unitsofmeasure.org|g` does not match `5000 mg`.

use haven_domain::{ResourceType, Timestamp};
use haven_fhir::definitions;
use haven_fhir::search::ParamType;
use haven_fhir::search::SearchParam;
use haven_fhir::search::normalize_string;
use haven_fhir::search::query::{Criterion, Prefix, SearchValue, StringMatch, UriMatch};
use haven_store::{Col, Condition, ParamKey, Pred, Scalar, Table};

use super::index::{component_key, param_key};

/// The index table of a parameter type; `None` for composite and special.
#[must_use]
pub fn table_of(ty: ParamType) -> Option<Table> {
    Some(match ty {
        ParamType::String => Table::String,
        ParamType::Token => Table::Token,
        ParamType::Reference => Table::Reference,
        ParamType::Date => Table::Date,
        ParamType::Number | ParamType::Quantity => Table::Number,
        ParamType::Uri => Table::Uri,
        ParamType::Composite | ParamType::Special => return None,
    })
}

/// The keys `param` has in the types searched (those of `types` it applies to).
#[must_use]
pub fn keys(param: &SearchParam, types: &[ResourceType]) -> Vec<ParamKey> {
    let defs = definitions();
    types
        .iter()
        .filter(|t| {
            defs.search_param(**t, param.code)
                .is_some_and(|p| p == param)
        })
        .map(|t| param_key(*t, param.code))
        .collect()
}

/// Translates one criterion on resources of `types`.
#[must_use]
pub fn condition(c: &Criterion, types: &[ResourceType]) -> Condition {
    match c {
        Criterion::Match {
            param,
            values,
            negated,
        } => matches(param, values, *negated, types),
        Criterion::Missing { param, missing } => {
            let (table, keys) = match table_of(param.param_type) {
                Some(t) => (t, keys(param, types)),
                // A composite is present when its first component is.
                None => {
                    let Some(first) = param.components.first() else {
                        return Condition::True;
                    };
                    let Some(table) = table_of(first.param_type) else {
                        return Condition::True;
                    };
                    let keys = types
                        .iter()
                        .map(|t| component_key(*t, param.code, 0))
                        .collect();
                    (table, keys)
                }
            };
            if *missing {
                Condition::None {
                    table,
                    params: keys,
                    pred: Pred::True,
                }
            } else {
                Condition::Any {
                    table,
                    params: keys,
                    pred: Pred::True,
                }
            }
        }
        Criterion::Chain { param, targets } => Condition::Or(
            targets
                .iter()
                .map(|(target, inner)| Condition::Chain {
                    params: keys(param, types),
                    target: *target,
                    inner: Box::new(condition(inner, &[*target])),
                })
                .collect(),
        ),
        Criterion::Has {
            source,
            param,
            inner,
        } => Condition::Or(
            types
                .iter()
                .map(|target| Condition::ReferencedBy {
                    source: *source,
                    param: param_key(*source, param.code),
                    target: *target,
                    inner: Box::new(condition(inner, &[*source])),
                })
                .collect(),
        ),
    }
}

fn matches(
    param: &SearchParam,
    values: &[SearchValue],
    negated: bool,
    types: &[ResourceType],
) -> Condition {
    if param.code == "_id" && !negated {
        let ids: Option<Vec<String>> = values
            .iter()
            .map(|v| match v {
                SearchValue::Token {
                    system: None,
                    code: Some(c),
                } => Some(c.clone()),
                _ => None,
            })
            .collect();
        if let Some(ids) = ids {
            return Condition::IdIn(ids);
        }
    }
    if param.param_type == ParamType::Composite {
        let alternatives = values.iter().map(|v| composite(param, v, types)).collect();
        return Condition::Or(alternatives);
    }
    let Some(table) = table_of(param.param_type) else {
        return Condition::False;
    };
    let pred = Pred::Or(values.iter().map(value_pred).collect());
    let params = keys(param, types);
    if negated {
        return Condition::None {
            table,
            params,
            pred,
        };
    }
    let any = Condition::Any {
        table,
        params,
        pred,
    };
    // Identifiers name few resources (an MRN, a national id): let them select the candidates.
    let identifies = param.param_type == ParamType::Token
        && (param.code == "identifier" || param.code.ends_with("-identifier"))
        && values
            .iter()
            .all(|v| matches!(v, SearchValue::Token { code: Some(_), .. }));
    if identifies {
        Condition::Selective(Box::new(any))
    } else {
        any
    }
}

fn composite(param: &SearchParam, value: &SearchValue, types: &[ResourceType]) -> Condition {
    let SearchValue::Composite(parts) = value else {
        return Condition::False;
    };
    let per_type = types
        .iter()
        .map(|ty| {
            let parts = param
                .components
                .iter()
                .zip(parts)
                .enumerate()
                .filter_map(|(i, (component, v))| {
                    Some((
                        table_of(component.param_type)?,
                        component_key(*ty, param.code, i),
                        value_pred(v),
                    ))
                })
                .collect();
            Condition::Composite { parts }
        })
        .collect();
    Condition::Or(per_type)
}

fn text(s: &str) -> Scalar {
    Scalar::Text(s.to_owned())
}

/// The predicate on one index row for one query value.
fn value_pred(v: &SearchValue) -> Pred {
    match v {
        SearchValue::String { text: t, mode } => match mode {
            StringMatch::StartsWith => Pred::StartsWith(Col::Normalized, t.clone()),
            StringMatch::Contains => Pred::Contains(Col::Normalized, t.clone()),
            // The normalized column narrows through the index, the exact one decides.
            StringMatch::Exact => Pred::And(vec![
                Pred::Eq(Col::Normalized, text(&normalize_string(t))),
                Pred::Eq(Col::Exact, text(t)),
            ]),
        },
        SearchValue::Token { system, code } => {
            let mut all = Vec::new();
            if let Some(code) = code {
                all.push(Pred::Eq(Col::Code, text(code)));
            }
            match system.as_deref() {
                None => {}
                Some("") => all.push(Pred::IsNull(Col::System)),
                Some(s) => all.push(Pred::Eq(Col::System, text(s))),
            }
            Pred::And(all)
        }
        SearchValue::TokenText(t) => Pred::StartsWith(Col::Text, t.clone()),
        SearchValue::OfType {
            type_system,
            type_code,
            value,
        } => {
            let mut all = vec![
                Pred::Eq(Col::Code, text(value)),
                Pred::Eq(Col::TypeCode, text(type_code)),
            ];
            if let Some(s) = type_system {
                all.push(Pred::Eq(Col::TypeSystem, text(s)));
            }
            Pred::And(all)
        }
        SearchValue::Reference {
            target_type,
            id,
            version,
        } => {
            let mut all = vec![Pred::Eq(Col::TargetId, text(id))];
            if let Some(t) = target_type {
                all.push(Pred::Eq(Col::TargetType, text(t.as_str())));
            }
            if let Some(v) = version {
                all.push(Pred::Eq(Col::Version, text(v)));
            }
            Pred::And(all)
        }
        SearchValue::ReferenceUrl { url, version } => {
            let mut all = vec![Pred::Eq(Col::Url, text(url))];
            if let Some(v) = version {
                all.push(Pred::Eq(Col::Version, text(v)));
            }
            Pred::And(all)
        }
        SearchValue::ReferenceIdentifier { system, value } => {
            let mut all = Vec::new();
            if let Some(v) = value {
                all.push(Pred::Eq(Col::IdentValue, text(v)));
            } else {
                all.push(Pred::Not(Box::new(Pred::IsNull(Col::IdentValue))));
            }
            match system.as_deref() {
                None => {}
                Some("") => all.push(Pred::IsNull(Col::IdentSystem)),
                Some(s) => all.push(Pred::Eq(Col::IdentSystem, text(s))),
            }
            Pred::And(all)
        }
        SearchValue::Date {
            prefix,
            start_micros,
            end_micros,
        } => date_pred(*prefix, *start_micros, *end_micros),
        SearchValue::Number {
            prefix,
            value,
            lower,
            upper,
        } => number_pred(*prefix, value, *lower, *upper),
        SearchValue::Quantity {
            prefix,
            value,
            lower,
            upper,
            system,
            code,
        } => {
            let mut all = vec![number_pred(*prefix, value, *lower, *upper)];
            match (system, code) {
                (Some(s), Some(c)) => {
                    all.push(Pred::Eq(Col::System, text(s)));
                    all.push(Pred::Eq(Col::Code, text(c)));
                }
                // `value||unit`: the code or the human unit (search.html#quantity).
                (None, Some(c)) => all.push(Pred::Or(vec![
                    Pred::Eq(Col::Code, text(c)),
                    Pred::Eq(Col::Unit, text(c)),
                ])),
                (Some(s), None) => all.push(Pred::Eq(Col::System, text(s))),
                (None, None) => {}
            }
            Pred::And(all)
        }
        SearchValue::Uri { uri, mode } => match mode {
            UriMatch::Exact => Pred::Eq(Col::Value, text(uri)),
            UriMatch::Below => Pred::StartsWith(Col::Value, uri.clone()),
            UriMatch::Above => Pred::PrefixOf(Col::Value, uri.clone()),
        },
        // Composite values are handled per component by `composite`.
        SearchValue::Composite(_) => Pred::Or(Vec::new()),
    }
}

fn date_pred(prefix: Prefix, qs: i64, qe: i64) -> Pred {
    let int = Scalar::Int;
    let within = || {
        Pred::And(vec![
            Pred::Ge(Col::Start, int(qs)),
            // Redundant with the two others, but it bounds the index range on start.
            Pred::Lt(Col::Start, int(qe)),
            Pred::Le(Col::End, int(qe)),
        ])
    };
    match prefix {
        Prefix::Eq => within(),
        Prefix::Ne => Pred::Not(Box::new(within())),
        Prefix::Gt => Pred::Gt(Col::End, int(qe)),
        Prefix::Lt => Pred::Lt(Col::Start, int(qs)),
        Prefix::Ge => Pred::Or(vec![Pred::Gt(Col::End, int(qe)), within()]),
        Prefix::Le => Pred::Or(vec![Pred::Lt(Col::Start, int(qs)), within()]),
        Prefix::Sa => Pred::Ge(Col::Start, int(qe)),
        Prefix::Eb => Pred::Le(Col::End, int(qs)),
        Prefix::Ap => {
            let now = Timestamp::now().micros();
            let gap = (now.saturating_sub(qs)).unsigned_abs() / 10;
            let gap = i64::try_from(gap).unwrap_or(i64::MAX);
            Pred::And(vec![
                Pred::Lt(Col::Start, int(qe.saturating_add(gap))),
                Pred::Gt(Col::End, int(qs.saturating_sub(gap))),
            ])
        }
    }
}

fn number_pred(prefix: Prefix, value: &str, lower: f64, upper: f64) -> Pred {
    let v: f64 = value.parse().unwrap_or((lower + upper) / 2.0);
    let f = Scalar::Float;
    let within = || {
        Pred::And(vec![
            Pred::Ge(Col::Lower, f(lower)),
            Pred::Lt(Col::Lower, f(upper)),
            Pred::Lt(Col::Upper, f(upper)),
        ])
    };
    match prefix {
        Prefix::Eq => within(),
        Prefix::Ne => Pred::Not(Box::new(within())),
        Prefix::Gt => Pred::Gt(Col::Upper, f(v)),
        Prefix::Lt => Pred::Lt(Col::Lower, f(v)),
        Prefix::Ge => Pred::Ge(Col::Upper, f(v)),
        Prefix::Le => Pred::Le(Col::Lower, f(v)),
        Prefix::Sa => Pred::Gt(Col::Lower, f(v)),
        Prefix::Eb => Pred::Lt(Col::Upper, f(v)),
        Prefix::Ap => {
            let gap = (v * 0.1).abs();
            Pred::And(vec![
                Pred::Le(Col::Lower, f(v + gap)),
                Pred::Ge(Col::Upper, f(v - gap)),
            ])
        }
    }
}
