//! The FHIR R4 `AuditEvent` view of an audit record, in the style of IHE Basic Audit Log Patterns
//! (BALP): RESTful interactions as type `rest` with the interaction as subtype, authentication
//! and administration events with DICOM event types, the person and the application as agents,
//! the resources and patients as entities. Like the ECS projection it carries identifiers only.
//!
//! | record                                      | `type`                     | `action` |
//! |---------------------------------------------|----------------------------|----------|
//! | data: `create`                              | rest                       | C        |
//! | data: `read`, `vread`, `history-instance`   | rest                       | R        |
//! | data: `update`, `patch`                     | rest                       | U        |
//! | data: `delete`                              | rest                       | D        |
//! | data: searches, other histories, operations | rest                       | E        |
//! | security: `login*`, `logout*`, `token-*`, `mfa-*`, `session-*` | DCM 110114 User Authentication | E |
//! | security: `user-*`, `client-*`              | DCM 110137 User Security Attributes Changed | E |
//! | security: anything else                     | DCM 110100 Application Activity | E   |
//!
//! `outcome`: 0 below status 400, 4 for 4xx, 8 for 5xx; the status is in `outcomeDesc`.

use serde_json::{Value, json};

use crate::record::{AuditRecord, Category};

const REST_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// Haven's own action codes (`read`, `login-failure`, `key-rotate`, ...).
pub const HAVEN_ACTION_SYSTEM: &str = "urn:haven:audit-action";
/// Identifier systems of the agents.
pub const HAVEN_USER_SYSTEM: &str = "urn:haven:user";
pub const HAVEN_CLIENT_SYSTEM: &str = "urn:haven:client";

/// The action letter (`C`, `R`, `U`, `D`, `E`) of a record.
#[must_use]
pub fn action_code(r: &AuditRecord) -> &'static str {
    if r.category == Category::Security {
        return "E";
    }
    match r.action.as_str() {
        "create" => "C",
        "read" | "vread" | "history-instance" => "R",
        "update" | "patch" => "U",
        "delete" => "D",
        _ => "E",
    }
}

/// The outcome code: `0` success, `4` minor failure (4xx), `8` serious failure (5xx).
#[must_use]
pub fn outcome_code(status: u16) -> &'static str {
    match status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    }
}

fn restful_interaction(action: &str) -> Option<&'static str> {
    Some(match action {
        "read" => "read",
        "vread" => "vread",
        "update" => "update",
        "patch" => "patch",
        "delete" => "delete",
        "create" => "create",
        "history-instance" => "history-instance",
        "history-type" => "history-type",
        "history-system" => "history-system",
        "search-type" | "search-compartment" => "search-type",
        "search-system" => "search-system",
        "batch" => "batch",
        "transaction" => "transaction",
        "everything" | "operation" => "operation",
        _ => return None,
    })
}

fn event_type(r: &AuditRecord) -> Value {
    if r.category == Category::Data {
        return json!({ "system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation" });
    }
    let a = r.action.as_str();
    let (code, display) = if ["login", "logout", "token", "mfa", "session"]
        .iter()
        .any(|p| a == *p || a.starts_with(&format!("{p}-")))
    {
        ("110114", "User Authentication")
    } else if a.starts_with("user-") || a.starts_with("client-") {
        ("110137", "User Security Attributes Changed")
    } else {
        ("110100", "Application Activity")
    };
    json!({ "system": DCM, "code": code, "display": display })
}

/// The `AuditEvent` resource for the record stored under `id`.
#[must_use]
pub fn audit_event(id: i64, r: &AuditRecord) -> Value {
    let recorded = r.time.to_instant_string();
    let mut subtype = Vec::new();
    if r.category == Category::Data
        && let Some(code) = restful_interaction(&r.action)
    {
        subtype.push(json!({ "system": REST_INTERACTION, "code": code }));
    }
    subtype.push(json!({ "system": HAVEN_ACTION_SYSTEM, "code": r.action }));

    let mut agents = Vec::new();
    let network = r
        .source_ip
        .as_ref()
        .map(|ip| json!({ "address": ip, "type": "2" }));
    if let Some(user) = &r.actor.user {
        let mut a = json!({
            "type": { "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "IRCP", "display": "information recipient"
            }]},
            "who": { "identifier": { "system": HAVEN_USER_SYSTEM, "value": user }, "display": user },
            "requestor": true,
        });
        if let Some(role) = &r.actor.role {
            a["role"] = json!([{ "text": role }]);
        }
        if let Some(n) = &network {
            a["network"] = n.clone();
        }
        agents.push(a);
    }
    if let Some(client) = &r.actor.client {
        let mut a = json!({
            "type": { "coding": [{ "system": DCM, "code": "110150", "display": "Application" }] },
            "who": { "identifier": { "system": HAVEN_CLIENT_SYSTEM, "value": client }, "display": client },
            // The application is the requestor when no person is behind the request.
            "requestor": r.actor.user.is_none(),
        });
        if r.actor.user.is_none() {
            if let Some(role) = &r.actor.role {
                a["role"] = json!([{ "text": role }]);
            }
            if let Some(n) = &network {
                a["network"] = n.clone();
            }
        }
        agents.push(a);
    }
    if agents.is_empty() {
        // Haven itself (start-up events, sealing).
        agents.push(json!({
            "type": { "coding": [{ "system": DCM, "code": "110150", "display": "Application" }] },
            "who": { "display": "Haven" },
            "requestor": false,
        }));
    }

    let mut entities = Vec::new();
    for e in &r.entities {
        let reference = match e.version {
            Some(v) => format!("{}/{}/_history/{v}", e.resource_type, e.id),
            None => format!("{}/{}", e.resource_type, e.id),
        };
        entities.push(json!({
            "what": { "reference": reference },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource" },
        }));
    }
    for p in &r.patients {
        entities.push(json!({
            "what": { "reference": format!("Patient/{p}") },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person" },
            "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient" },
        }));
    }
    if let Some(rid) = &r.request_id {
        entities.push(json!({
            "what": { "identifier": { "value": rid } },
            "type": { "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId" },
        }));
    }

    let mut desc = format!("status {}", r.status);
    if let Some(d) = &r.detail {
        desc.push_str("; ");
        desc.push_str(d);
    }
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "id": id.to_string(),
        "meta": { "versionId": "1", "lastUpdated": recorded },
        "type": event_type(r),
        "subtype": subtype,
        "action": action_code(r),
        "recorded": recorded,
        "outcome": outcome_code(r.status),
        "outcomeDesc": desc,
        "agent": agents,
        "source": {
            "observer": { "display": "Haven" },
            "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server" }],
        },
    });
    if let Some(p) = &r.purpose_of_use {
        ev["purposeOfEvent"] = json!([{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p
        }]}]);
    }
    if !entities.is_empty() {
        ev["entity"] = Value::Array(entities);
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Actor, Entity, Outcome};
    use haven_domain::Timestamp;

    fn record(action: &str, category: Category, status: u16) -> AuditRecord {
        AuditRecord {
            time: Timestamp::from_micros(1_700_000_000_000_000),
            category,
            action: action.into(),
            status,
            outcome: Outcome::from_status(status),
            actor: Actor {
                user: Some("alice".into()),
                role: Some("clinician".into()),
                client: Some("ehr-app".into()),
            },
            source_ip: Some("10.0.0.9".into()),
            request_id: Some("req-1".into()),
            purpose_of_use: Some("TREAT".into()),
            entities: vec![Entity {
                resource_type: "Observation".into(),
                id: "o1".into(),
                version: Some(2),
            }],
            patients: vec!["p1".into()],
            detail: None,
        }
    }

    #[test]
    fn a_read_is_a_rest_event_with_its_agents_and_entities() {
        let ev = audit_event(42, &record("read", Category::Data, 200));
        assert_eq!(ev["id"], "42");
        assert_eq!(ev["type"]["code"], "rest");
        assert_eq!(ev["subtype"][0]["code"], "read");
        assert_eq!(ev["action"], "R");
        assert_eq!(ev["outcome"], "0");
        assert_eq!(ev["agent"][0]["who"]["identifier"]["value"], "alice");
        assert_eq!(ev["agent"][0]["requestor"], true);
        assert_eq!(ev["agent"][0]["network"]["address"], "10.0.0.9");
        assert_eq!(ev["agent"][1]["who"]["identifier"]["value"], "ehr-app");
        assert_eq!(ev["agent"][1]["requestor"], false);
        assert_eq!(
            ev["entity"][0]["what"]["reference"],
            "Observation/o1/_history/2"
        );
        assert_eq!(ev["entity"][1]["what"]["reference"], "Patient/p1");
        assert_eq!(ev["entity"][2]["type"]["code"], "XrequestId");
        assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    }

    #[test]
    fn actions_and_outcomes_map_to_their_codes() {
        for (action, code) in [
            ("create", "C"),
            ("vread", "R"),
            ("patch", "U"),
            ("delete", "D"),
            ("search-type", "E"),
            ("everything", "E"),
        ] {
            assert_eq!(action_code(&record(action, Category::Data, 200)), code);
        }
        assert_eq!(action_code(&record("login", Category::Security, 200)), "E");
        assert_eq!(outcome_code(201), "0");
        assert_eq!(outcome_code(403), "4");
        assert_eq!(outcome_code(503), "8");
        let login = audit_event(1, &record("login-failure", Category::Security, 401));
        assert_eq!(login["type"]["code"], "110114");
        let key = audit_event(1, &record("key-rotate", Category::Security, 200));
        assert_eq!(key["type"]["code"], "110100");
    }

    #[test]
    fn a_client_alone_is_the_requestor() {
        let mut r = record("search-type", Category::Data, 200);
        r.actor.user = None;
        let ev = audit_event(7, &r);
        assert_eq!(ev["agent"].as_array().unwrap().len(), 1);
        assert_eq!(ev["agent"][0]["requestor"], true);
        assert_eq!(ev["agent"][0]["network"]["address"], "10.0.0.9");
    }
}
