//! What a resource contributes to the search index: every supported R4 search parameter of
//! its type, extracted by `haven_fhir::search`, as store rows.

use haven_domain::ResourceType;
use haven_fhir::search::{IndexValue, SearchParam, extract_all};
use haven_store::{IndexCell, IndexRow, ParamKey};
use serde_json::{Map, Value};

/// The key of parameter `code` of `ty`: 31 bits of FNV-1a over `Type.code`. Keys are
/// computed, not stored in a table, so every replica and every version of Haven agrees on
/// them with no coordination; `keys_do_not_collide` checks the whole R4 table.
#[must_use]
pub fn param_key(ty: ResourceType, code: &str) -> ParamKey {
    key_of(&[ty.as_str(), ".", code])
}

/// The key of component `i` of composite parameter `code` of `ty`.
#[must_use]
pub fn component_key(ty: ResourceType, code: &str, i: usize) -> ParamKey {
    key_of(&[ty.as_str(), ".", code, "#", &i.to_string()])
}

fn key_of(parts: &[&str]) -> ParamKey {
    // FNV-1a: tiny, stable across platforms and releases (unlike std's hasher), and good
    // enough for a few thousand short names, which the collision test proves.
    let mut h: u32 = 0x811c_9dc5;
    for part in parts {
        for b in part.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    ParamKey(i32::try_from(h & 0x7fff_ffff).unwrap_or(0))
}

/// The index rows of a resource (its `resourceType` names the type).
#[must_use]
pub fn index_rows(ty: ResourceType, resource: &Map<String, Value>) -> Vec<IndexRow> {
    let mut rows = Vec::new();
    let mut grp = 0;
    for (param, value) in extract_all(resource) {
        push_value(ty, param, value, &mut grp, &mut rows);
    }
    rows
}

fn push_value(
    ty: ResourceType,
    param: &SearchParam,
    value: IndexValue,
    grp: &mut i32,
    rows: &mut Vec<IndexRow>,
) {
    match value {
        IndexValue::Composite(parts) => {
            *grp += 1;
            for (i, part) in parts.into_iter().enumerate() {
                if let Some(cell) = cell(part) {
                    rows.push(IndexRow {
                        param: component_key(ty, param.code, i),
                        grp: *grp,
                        cell,
                    });
                }
            }
        }
        other => {
            if let Some(cell) = cell(other) {
                rows.push(IndexRow {
                    param: param_key(ty, param.code),
                    grp: 0,
                    cell,
                });
            }
        }
    }
}

fn cell(value: IndexValue) -> Option<IndexCell> {
    Some(match value {
        IndexValue::String { normalized, exact } => IndexCell::String { normalized, exact },
        IndexValue::Token {
            system,
            code,
            text,
            of_type,
        } => {
            let (type_system, type_code) = match of_type {
                Some((s, c)) => (s, Some(c)),
                None => (None, None),
            };
            IndexCell::Token {
                system,
                code,
                text,
                type_system,
                type_code,
            }
        }
        IndexValue::Reference {
            target_type,
            id,
            version,
            url,
            identifier,
        } => {
            let (ident_system, ident_value) = identifier.unwrap_or((None, None));
            IndexCell::Reference {
                target_type: target_type.map(|t| t.as_str().to_owned()),
                target_id: id,
                version,
                url,
                ident_system,
                ident_value,
            }
        }
        IndexValue::Date {
            start_micros,
            end_micros,
        } => IndexCell::Date {
            start: start_micros,
            end: end_micros,
        },
        IndexValue::Number {
            value,
            lower,
            upper,
        } => {
            let (lower, upper) = point_or_range(value.as_deref(), lower, upper)?;
            IndexCell::Number {
                lower,
                upper,
                system: None,
                code: None,
                unit: None,
            }
        }
        IndexValue::Quantity {
            value,
            lower,
            upper,
            system,
            code,
            unit,
        } => {
            let (lower, upper) = point_or_range(value.as_deref(), lower, upper)?;
            IndexCell::Number {
                lower,
                upper,
                system,
                code,
                unit,
            }
        }
        IndexValue::Uri { value } => IndexCell::Uri { value },
        // A composite inside a composite does not occur in R4.
        IndexValue::Composite(_) => return None,
    })
}

/// A single value is stored as the point it is (`[v, v]`), so comparisons (`gt5`) are exact;
/// a Range keeps its ends.
fn point_or_range(value: Option<&str>, lower: f64, upper: f64) -> Option<(f64, f64)> {
    match value {
        Some(text) => {
            let v: f64 = text.parse().ok()?;
            v.is_finite().then_some((v, v))
        }
        None => Some((lower, upper)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_fhir::definitions;
    use haven_fhir::search::ParamType;
    use std::collections::HashMap;

    #[test]
    fn keys_do_not_collide() {
        let defs = definitions();
        let mut seen: HashMap<ParamKey, String> = HashMap::new();
        for ty in defs.resource_types() {
            for p in defs.search_params(*ty) {
                let mut names = vec![(param_key(*ty, p.code), format!("{ty}.{}", p.code))];
                if p.param_type == ParamType::Composite {
                    for i in 0..p.components.len() {
                        names.push((
                            component_key(*ty, p.code, i),
                            format!("{ty}.{}#{i}", p.code),
                        ));
                    }
                }
                for (key, name) in names {
                    if let Some(other) = seen.insert(key, name.clone()) {
                        assert_eq!(other, name, "{other} and {name} share key {key:?}");
                    }
                }
            }
        }
        assert!(seen.len() > 3000, "{} keys", seen.len());
    }

    #[test]
    fn an_observation_yields_rows_for_its_parameters() {
        let obs: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-05-01",
            "valueQuantity": {"value": 120.5, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
        }))
        .unwrap();
        let ty = ResourceType::parse("Observation").unwrap();
        let rows = index_rows(ty, &obs);
        let has = |code: &str| rows.iter().any(|r| r.param == param_key(ty, code));
        for code in [
            "code",
            "subject",
            "patient",
            "date",
            "value-quantity",
            "status",
            "_id",
        ] {
            assert!(has(code), "no row for {code}");
        }
        let composite: Vec<_> = rows
            .iter()
            .filter(|r| r.param == component_key(ty, "code-value-quantity", 1))
            .collect();
        assert_eq!(composite.len(), 1);
        assert!(matches!(
            composite[0].cell,
            IndexCell::Number { lower, upper, .. } if lower == 120.5 && upper == 120.5
        ));
    }
}
