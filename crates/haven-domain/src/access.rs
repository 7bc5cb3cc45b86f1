//! Who is calling: the roles Haven knows and the [`Principal`] an access token stands for.
//!
//! A principal is built once, by the identity module, from a token that was checked; everything
//! after that trusts it. Authorization (what the principal may see and do) reads it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::scope::Scopes;

/// The roles of Haven's policy. Human roles log in with a password (and MFA); `Service` is a
/// backend system authenticating with its own key (SMART Backend Services).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Configuration, users and keys; no patient data by default.
    Admin,
    Clinician,
    Nurse,
    /// Demographics and scheduling, not clinical notes.
    Registrar,
    /// The patient: their own compartment only.
    Patient,
    /// Audit records only.
    Auditor,
    /// A backend system (`system/` scopes).
    Service,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Admin,
        Role::Clinician,
        Role::Nurse,
        Role::Registrar,
        Role::Patient,
        Role::Auditor,
        Role::Service,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clinician => "clinician",
            Role::Nurse => "nurse",
            Role::Registrar => "registrar",
            Role::Patient => "patient",
            Role::Auditor => "auditor",
            Role::Service => "service",
        }
    }

    /// Parses a role name (lowercase, as configured and shown).
    #[must_use]
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether people hold this role (they log in interactively; MFA applies).
    #[must_use]
    pub fn is_human(self) -> bool {
        self != Role::Service
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the principal authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A person, through the authorization-code flow (or a trusted external issuer).
    User,
    /// A client acting for itself (client credentials).
    Client,
}

/// The caller of a request, from a validated access token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The token's `sub`: a Haven user id, a client id, or an external issuer's subject.
    pub subject: String,
    /// The account name, for people (audit `user.name`).
    pub username: Option<String>,
    pub roles: Vec<Role>,
    /// The OAuth client the token was issued to.
    pub client_id: String,
    pub scopes: Scopes,
    /// The SMART launch context: the patient the token is confined to.
    pub patient: Option<String>,
    /// `fhirUser`: the FHIR resource that is this user (`Practitioner/123`, `Patient/abc`).
    pub fhir_user: Option<String>,
    /// The token's `jti` (revocation, audit).
    pub token_id: String,
    /// Who issued the token (Haven itself or a trusted external issuer).
    pub issuer: String,
    /// Emergency accesses (break-glass) this person has open.
    pub emergency: Vec<EmergencyAccess>,
}

/// Emergency access (break-glass) to one patient's records, until a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmergencyAccess {
    pub patient: String,
    pub until: crate::Timestamp,
}

impl Principal {
    /// Whether this person has emergency access to `patient` open at `now`.
    #[must_use]
    pub fn in_emergency(&self, patient: &str, now: crate::Timestamp) -> bool {
        self.emergency
            .iter()
            .any(|e| e.patient == patient && e.until > now)
    }

    /// The roles as one comma-separated string (audit `actor.role`).
    #[must_use]
    pub fn role_names(&self) -> String {
        self.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_by_name() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("Admin"), None);
        assert_eq!(Role::parse("root"), None);
        assert!(!Role::Service.is_human());
        assert!(Role::Patient.is_human());
    }
}
