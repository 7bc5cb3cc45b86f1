//! Security events for the audit trail (HIPAA 164.312(b)): logins, MFA, tokens, lockouts,
//! account and client changes. Each is recorded in the same unit of work as the change it
//! describes, or, for a refusal that changes nothing, in a unit of its own.

use haven_audit::{Actor, AuditRecord, Category, Outcome};
use haven_domain::Timestamp;
use haven_store::AuditEntry;

/// Who and where, for a security event.
#[derive(Clone, Debug, Default)]
pub struct EventContext {
    pub request_id: Option<String>,
    /// The client's address as the trusted gateway reports it.
    pub source_ip: Option<String>,
}

impl EventContext {
    /// An event from the command line (no request, no address).
    #[must_use]
    pub fn cli() -> Self {
        Self {
            request_id: None,
            source_ip: None,
        }
    }
}

/// A security event. `action` is a short kebab code (`login`, `login-failed`, `token-issue`,
/// ...); `detail` holds no secret and no PHI.
#[must_use]
pub fn security_entry(
    ctx: &EventContext,
    action: &str,
    status: u16,
    actor: Actor,
    detail: Option<String>,
) -> AuditEntry {
    let time = Timestamp::now();
    let mut record = AuditRecord {
        time,
        category: Category::Security,
        action: action.to_owned(),
        status,
        outcome: Outcome::from_status(status),
        actor,
        source_ip: ctx.source_ip.clone(),
        request_id: ctx.request_id.clone(),
        purpose_of_use: None,
        entities: Vec::new(),
        patients: Vec::new(),
        detail: detail.map(|d| d.chars().take(haven_audit::MAX_DETAIL_CHARS).collect()),
    };
    record.normalize();
    AuditEntry {
        time,
        patients: Vec::new(),
        record: record.canonical(),
    }
}

/// The actor of a user event.
#[must_use]
pub fn user_actor(username: &str, roles: &[haven_domain::Role], client: Option<&str>) -> Actor {
    Actor {
        user: Some(username.to_owned()),
        role: (!roles.is_empty()).then(|| {
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(",")
        }),
        client: client.map(str::to_owned),
    }
}

/// The actor of a client event.
#[must_use]
pub fn client_actor(client: &str) -> Actor {
    Actor {
        user: None,
        role: None,
        client: Some(client.to_owned()),
    }
}
