//! Sensitive identifiers in the search index: the values of configured identifier systems
//! (national ids, MRNs) are stored as keyed HMACs, `hmac:<base64url>` of (system, value), so a
//! search by exact `system|value` still finds them and nothing in the database reveals them.
//!
//! The key is a data key (`mac/identifiers`) kept wrapped like every other; the rewriting
//! happens where index rows enter the store and where token searches leave the service
//! ([`crate::sealed::SealedStore`]), so the rest of the search code is unaware of it.
//!
//! What this gives up, deliberately: for those systems only exact matches work (`:text`,
//! `:above`, `:below` and prefix searches cannot match a hash). A search by value without a
//! system (`identifier=123`) is tried against the clear value and the hash under every
//! sensitive system. Identifiers inside references (`subject:identifier=`) are not
//! pseudonymised (stated in docs/SECURITY.md).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use haven_crypto::MacKey;
use haven_store::{Col, Condition, IndexCell, IndexRow, Pred, Scalar, Table};

/// The data-key scope of the identifier MAC key.
pub const IDENTIFIER_SCOPE: &str = "mac/identifiers";

pub struct Pseudonymizer {
    mac: MacKey,
    systems: Vec<String>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pseudonymizer({:?})", self.systems)
    }
}

impl Pseudonymizer {
    #[must_use]
    pub fn new(mac: MacKey, systems: Vec<String>) -> Self {
        Self { mac, systems }
    }

    fn sensitive(&self, system: &str) -> bool {
        self.systems.iter().any(|s| s == system)
    }

    fn hash(&self, system: &str, value: &str) -> String {
        format!(
            "hmac:{}",
            URL_SAFE_NO_PAD.encode(self.mac.mac(&[system.as_bytes(), value.as_bytes()]))
        )
    }

    /// Replaces the values of sensitive systems in index rows by their HMAC.
    pub fn rows(&self, rows: &mut [IndexRow]) {
        for row in rows {
            if let IndexCell::Token {
                system: Some(system),
                code: Some(code),
                ..
            } = &mut row.cell
                && self.sensitive(system)
            {
                *code = self.hash(system, code);
            }
        }
    }

    /// Rewrites token conditions on sensitive systems to compare hashes.
    pub fn condition(&self, c: &mut Condition) {
        match c {
            Condition::Any { table, pred, .. } | Condition::None { table, pred, .. }
                if *table == Table::Token =>
            {
                self.pred(pred);
            }
            Condition::Composite { parts } => {
                for (table, _, pred) in parts {
                    if *table == Table::Token {
                        self.pred(pred);
                    }
                }
            }
            Condition::Selective(inner)
            | Condition::Chain { inner, .. }
            | Condition::ReferencedBy { inner, .. } => self.condition(inner),
            Condition::And(all) | Condition::Or(all) => {
                for c in all {
                    self.condition(c);
                }
            }
            _ => {}
        }
    }

    fn pred(&self, p: &mut Pred) {
        match p {
            Pred::And(parts) => {
                let system = parts.iter().find_map(|q| match q {
                    Pred::Eq(Col::System, Scalar::Text(s)) => Some(s.clone()),
                    _ => None,
                });
                let has_system_test = parts
                    .iter()
                    .any(|q| matches!(q, Pred::Eq(Col::System, _) | Pred::IsNull(Col::System)));
                for q in parts.iter_mut() {
                    if let Pred::Eq(Col::Code, Scalar::Text(code)) = q {
                        match &system {
                            Some(s) if self.sensitive(s) => *code = self.hash(s, code),
                            None if !has_system_test && !self.systems.is_empty() => {
                                let mut any = vec![Pred::Eq(Col::Code, Scalar::Text(code.clone()))];
                                any.extend(self.systems.iter().map(|s| {
                                    Pred::And(vec![
                                        Pred::Eq(Col::Code, Scalar::Text(self.hash(s, code))),
                                        Pred::Eq(Col::System, Scalar::Text(s.clone())),
                                    ])
                                }));
                                *q = Pred::Or(any);
                            }
                            _ => {}
                        }
                    } else {
                        self.pred(q);
                    }
                }
            }
            Pred::Or(parts) => {
                for q in parts {
                    self.pred(q);
                }
            }
            Pred::Not(inner) => self.pred(inner),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_store::ParamKey;

    fn p() -> Pseudonymizer {
        Pseudonymizer::new(
            MacKey::from_bytes(&[9u8; 32]).unwrap(),
            vec!["urn:oid:national".into()],
        )
    }

    fn token(system: &str, code: &str) -> IndexRow {
        IndexRow {
            param: ParamKey(1),
            grp: 0,
            cell: IndexCell::Token {
                system: Some(system.into()),
                code: Some(code.into()),
                text: None,
                type_system: None,
                type_code: None,
            },
        }
    }

    #[test]
    fn only_sensitive_systems_are_hashed_and_searches_follow() {
        let p = p();
        let mut rows = vec![token("urn:oid:national", "123"), token("urn:other", "123")];
        p.rows(&mut rows);
        let IndexCell::Token { code: Some(c), .. } = &rows[0].cell else {
            panic!()
        };
        assert!(c.starts_with("hmac:") && !c.contains("123"), "{c}");
        let IndexCell::Token { code: Some(c2), .. } = &rows[1].cell else {
            panic!()
        };
        assert_eq!(c2, "123");

        let mut q = Condition::Any {
            table: Table::Token,
            params: vec![ParamKey(1)],
            pred: Pred::And(vec![
                Pred::Eq(Col::Code, Scalar::Text("123".into())),
                Pred::Eq(Col::System, Scalar::Text("urn:oid:national".into())),
            ]),
        };
        p.condition(&mut q);
        let Condition::Any {
            pred: Pred::And(parts),
            ..
        } = &q
        else {
            panic!()
        };
        assert_eq!(parts[0], Pred::Eq(Col::Code, Scalar::Text(c.clone())));

        // Without a system: the clear value or the hash under each sensitive system.
        let mut bare = Condition::Any {
            table: Table::Token,
            params: vec![ParamKey(1)],
            pred: Pred::And(vec![Pred::Eq(Col::Code, Scalar::Text("123".into()))]),
        };
        p.condition(&mut bare);
        let text = format!("{bare:?}");
        assert!(
            text.contains(c.as_str()) && text.contains("\"123\""),
            "{text}"
        );
    }
}
