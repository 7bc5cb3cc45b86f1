//! The role policy: which resource types each role may touch, and how. It is data (a TOML file,
//! `policy/default.toml` in the repository is the default and the reference), parsed and
//! checked here once; the service asks it for every interaction, together with the token's
//! scopes. Deny by default: a role, type or action the policy does not name is refused.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::Role;
use crate::scope::{Action, Permissions};

/// The policy Haven ships with (the reference for docs/SECURITY.md).
pub const DEFAULT_POLICY: &str = include_str!("../../../policy/default.toml");

/// The largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy file is larger than 256 KiB")]
    TooLarge,
    #[error("the policy file is not valid TOML: {0}")]
    Syntax(String),
    #[error("policy version must be at least 1")]
    Version,
    #[error(
        "unknown role '{0}' (roles: admin, clinician, nurse, registrar, patient, auditor, service)"
    )]
    UnknownRole(String),
    #[error("role {role}: '{target}' is not an R4 resource type, a group (@name) or *")]
    UnknownTarget { role: String, target: String },
    #[error("role {role}: '{letters}' must be letters from 'cruds' in that order")]
    Letters { role: String, letters: String },
    #[error("group {group}: '{name}' is not an R4 resource type")]
    GroupMember { group: String, name: String },
    #[error("role {role}: 'compartment' must be true or false")]
    Compartment { role: String },
    #[error(
        "role {role}: 'own_patient_fields' must list Patient elements (not id, meta, identifier \
         or implicitRules), e.g. [\"telecom\", \"address\"]"
    )]
    OwnPatientFields { role: String },
}

/// Elements of Patient nobody changes on their own record through `own_patient_fields`.
const NEVER_SELF_EDITED: [&str; 4] = ["id", "meta", "identifier", "implicitRules"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: u64,
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    roles: BTreeMap<String, BTreeMap<String, toml::Value>>,
}

/// Which types a rule covers.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Types {
    /// Every type (except `AuditEvent`, which has its own guard).
    All,
    Some(BTreeSet<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
struct RolePolicy {
    /// Confined to one patient's compartment.
    compartment: bool,
    rules: Vec<(Types, Permissions)>,
    /// Elements of their own Patient record a person with this role may change.
    own_patient_fields: Vec<String>,
}

/// A parsed, checked policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    version: u64,
    roles: BTreeMap<Role, RolePolicy>,
}

/// What the policy says about one action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Allowed only inside the caller's patient compartment.
    InCompartment,
    Denied,
}

fn is_type(name: &str) -> bool {
    crate::ResourceType::parse(name).is_some()
}

impl Policy {
    /// Parses and checks a policy file.
    ///
    /// # Errors
    /// Syntax errors, unknown roles, types or groups, bad permission letters.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge);
        }
        let raw: RawPolicy =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.message().to_owned()))?;
        if raw.version == 0 {
            return Err(PolicyError::Version);
        }
        for (group, members) in &raw.groups {
            if let Some(bad) = members.iter().find(|m| !is_type(m)) {
                return Err(PolicyError::GroupMember {
                    group: group.clone(),
                    name: bad.clone(),
                });
            }
        }
        let mut roles = BTreeMap::new();
        for (name, entries) in raw.roles {
            let role = Role::parse(&name).ok_or_else(|| PolicyError::UnknownRole(name.clone()))?;
            let mut rp = RolePolicy::default();
            for (target, value) in entries {
                if target == "own_patient_fields" {
                    let bad = || PolicyError::OwnPatientFields { role: name.clone() };
                    let list = value.as_array().ok_or_else(bad)?;
                    for v in list {
                        let f = v.as_str().ok_or_else(bad)?;
                        let element = f.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                            && f.chars().all(|c| c.is_ascii_alphanumeric());
                        if !element || NEVER_SELF_EDITED.contains(&f) {
                            return Err(bad());
                        }
                        rp.own_patient_fields.push(f.to_owned());
                    }
                    continue;
                }
                if target == "compartment" {
                    rp.compartment = value
                        .as_bool()
                        .ok_or_else(|| PolicyError::Compartment { role: name.clone() })?;
                    continue;
                }
                let letters = value.as_str().unwrap_or("");
                let perms = Permissions::parse_v2(letters).ok_or_else(|| PolicyError::Letters {
                    role: name.clone(),
                    letters: letters.to_owned(),
                })?;
                let types = if target == "*" {
                    Types::All
                } else if let Some(g) = target.strip_prefix('@') {
                    let members = raw
                        .groups
                        .get(g)
                        .ok_or_else(|| PolicyError::UnknownTarget {
                            role: name.clone(),
                            target: target.clone(),
                        })?;
                    Types::Some(members.iter().cloned().collect())
                } else if is_type(&target) {
                    Types::Some(BTreeSet::from([target.clone()]))
                } else {
                    return Err(PolicyError::UnknownTarget {
                        role: name.clone(),
                        target,
                    });
                };
                rp.rules.push((types, perms));
            }
            roles.insert(role, rp);
        }
        Ok(Self {
            version: raw.version,
            roles,
        })
    }

    /// The policy Haven ships with.
    ///
    /// # Panics
    /// Never: the shipped file is checked by a unit test.
    #[must_use]
    pub fn default_policy() -> Self {
        Self::parse(DEFAULT_POLICY).expect("the shipped policy is valid")
    }

    /// The elements of their own Patient record a caller with `roles` may change (empty: none).
    #[must_use]
    pub fn own_patient_fields(&self, roles: &[Role]) -> Vec<&str> {
        let mut out: Vec<&str> = roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|rp| rp.own_patient_fields.iter().map(String::as_str))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// What one role may do: `Allowed`, `InCompartment` or `Denied`.
    #[must_use]
    pub fn decide_role(&self, role: Role, resource_type: &str, action: Action) -> Decision {
        if resource_type == "AuditEvent" {
            return Decision::Denied;
        }
        let Some(rp) = self.roles.get(&role) else {
            return Decision::Denied;
        };
        let grants = rp.rules.iter().any(|(types, perms)| {
            perms.contains(action.permission())
                && match types {
                    Types::All => true,
                    Types::Some(set) => set.contains(resource_type),
                }
        });
        match (grants, rp.compartment) {
            (false, _) => Decision::Denied,
            (true, false) => Decision::Allowed,
            (true, true) => Decision::InCompartment,
        }
    }

    /// What a caller with these roles may do: the most any of its roles allows.
    #[must_use]
    pub fn decide(&self, roles: &[Role], resource_type: &str, action: Action) -> Decision {
        let mut best = Decision::Denied;
        for r in roles {
            match self.decide_role(*r, resource_type, action) {
                Decision::Allowed => return Decision::Allowed,
                Decision::InCompartment => best = Decision::InCompartment,
                Decision::Denied => {}
            }
        }
        best
    }

    /// One line per role, for `haven policy check`.
    #[must_use]
    pub fn summary(&self) -> Vec<String> {
        Role::ALL
            .iter()
            .map(|r| match self.roles.get(r) {
                None => format!("{r}: nothing"),
                Some(rp) => {
                    let rules: Vec<String> = rp
                        .rules
                        .iter()
                        .map(|(t, p)| match t {
                            Types::All => format!("* {p}"),
                            Types::Some(s) => format!("{} types {p}", s.len()),
                        })
                        .collect();
                    format!(
                        "{r}: {}{}{}",
                        if rules.is_empty() {
                            "nothing".to_owned()
                        } else {
                            rules.join(", ")
                        },
                        if rp.compartment {
                            " (own compartment only)"
                        } else {
                            ""
                        },
                        if rp.own_patient_fields.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; on their own Patient may change {}",
                                rp.own_patient_fields.join(", ")
                            )
                        }
                    )
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policy_parses_and_says_what_the_docs_say() {
        let p = Policy::default_policy();
        assert_eq!(p.version(), 1);
        let d = |r, t, a| p.decide(&[r], t, a);
        assert_eq!(
            d(Role::Clinician, "Observation", Action::Create),
            Decision::Allowed
        );
        assert_eq!(
            d(Role::Nurse, "DocumentReference", Action::Read),
            Decision::Allowed
        );
        assert_eq!(
            d(Role::Registrar, "Patient", Action::Update),
            Decision::Allowed
        );
        assert_eq!(
            d(Role::Registrar, "Appointment", Action::Create),
            Decision::Allowed
        );
        assert_eq!(
            d(Role::Registrar, "Observation", Action::Read),
            Decision::Denied
        );
        assert_eq!(
            d(Role::Registrar, "DocumentReference", Action::Search),
            Decision::Denied
        );
        assert_eq!(d(Role::Admin, "Patient", Action::Read), Decision::Denied);
        assert_eq!(
            d(Role::Admin, "Practitioner", Action::Update),
            Decision::Allowed
        );
        assert_eq!(d(Role::Auditor, "Patient", Action::Read), Decision::Denied);
        assert_eq!(
            d(Role::Patient, "Observation", Action::Read),
            Decision::InCompartment
        );
        assert_eq!(
            d(Role::Patient, "Observation", Action::Create),
            Decision::Denied
        );
        assert_eq!(
            d(Role::Service, "Condition", Action::Delete),
            Decision::Allowed
        );
        // AuditEvent is outside every rule, even `*`.
        assert_eq!(
            d(Role::Clinician, "AuditEvent", Action::Read),
            Decision::Denied
        );
        // Several roles: the most any allows.
        assert_eq!(
            p.decide(&[Role::Registrar, Role::Nurse], "Observation", Action::Read),
            Decision::Allowed
        );
        assert_eq!(p.decide(&[], "Patient", Action::Read), Decision::Denied);
    }

    #[test]
    fn mistakes_in_a_policy_file_are_named() {
        let bad = |t: &str| Policy::parse(t).unwrap_err().to_string();
        assert!(bad("version = 0").contains("version"));
        assert!(bad("version = 1\n[roles.doctor]\n\"*\" = \"r\"").contains("doctor"));
        assert!(bad("version = 1\n[roles.nurse]\nObservations = \"r\"").contains("Observations"));
        assert!(bad("version = 1\n[roles.nurse]\n\"@nope\" = \"r\"").contains("@nope"));
        assert!(bad("version = 1\n[roles.nurse]\n\"*\" = \"sr\"").contains("cruds"));
        assert!(bad("version = 1\n[groups]\ng = [\"Pateint\"]").contains("Pateint"));
        assert!(bad("version = 1\nextra = 2").contains("extra"));
        assert!(bad("version = 1\n[roles.nurse]\ncompartment = \"yes\"").contains("compartment"));
    }

    #[test]
    fn own_patient_fields_are_checked_and_listed() {
        let p = Policy::default_policy();
        assert_eq!(
            p.own_patient_fields(&[Role::Patient]),
            ["address", "communication", "contact", "telecom"]
        );
        assert!(p.own_patient_fields(&[Role::Clinician]).is_empty());
        for bad in [
            "[\"identifier\"]",
            "[\"meta\"]",
            "[\"Telecom\"]",
            "[\"tele.com\"]",
            "\"telecom\"",
        ] {
            let text = format!(
                "version = 1\n[roles.patient]\ncompartment = true\nown_patient_fields = {bad}\n"
            );
            assert!(
                matches!(
                    Policy::parse(&text),
                    Err(PolicyError::OwnPatientFields { .. })
                ),
                "{bad}"
            );
        }
        assert!(
            p.summary()
                .iter()
                .any(|l| l.contains("on their own Patient may change telecom"))
        );
    }
}
