//! The Elastic Common Schema (ECS 8.11) projection of an audit record: one JSON line per record,
//! for shipping to a log platform.
//!
//! Only identifiers leave Haven this way (user, client, resource and patient ids, the request
//! id), never resource content. Each emitted field is listed in [`ECS_FIELDS`]; the tests check
//! that nothing else appears and that `event.category` and `event.type` only take the values ECS
//! allows ([`ECS_EVENT_CATEGORIES`], [`ECS_EVENT_TYPES`]).
//!
//! How `event.category` and `event.type` are chosen:
//!
//! | record                                        | `event.category`   | `event.type`                  |
//! |-----------------------------------------------|--------------------|-------------------------------|
//! | data: `read`, `vread`, `search-*`, `history-*`, `everything` | `api` | `access`                 |
//! | data: `create`                                | `api`              | `creation`                    |
//! | data: `update`, `patch`, `transaction`        | `api`              | `change`                      |
//! | data: `delete`                                | `api`              | `deletion`                    |
//! | data: anything else (`batch`, `operation`)    | `api`              | `info`                        |
//! | security: `login*`                            | `authentication`   | `start`                       |
//! | security: `logout*`                           | `authentication`   | `end`                         |
//! | security: `token-*`, `mfa-*`, `session-*`     | `authentication`   | `info`                        |
//! | security: `key-*`, `audit-*`                  | `configuration`    | `change` (key) / `access` (audit) |
//! | security: anything else (accounts, clients)   | `iam`              | by verb suffix: `-create` `creation`, `-delete` `deletion`, `-update`/`-change`/`-enable`/`-disable` `change`, else `info` |
//!
//! Except for `authentication` (where `event.outcome` carries a failed login), status 401 or 403
//! adds `denied` and a status of 500 or more adds `error`.

use haven_domain::Timestamp;
use serde_json::{Map, Value, json};

use crate::record::{AuditRecord, Category, Outcome};

/// The ECS version the lines follow.
pub const ECS_VERSION: &str = "8.11.0";
/// `event.dataset` of every line, to find Haven's audit events among other logs.
pub const ECS_DATASET: &str = "haven.audit";

/// Every field (dotted path) [`ecs_line`] may emit. `haven.audit.*` are Haven's own fields,
/// outside the ECS namespace.
pub const ECS_FIELDS: &[&str] = &[
    "@timestamp",
    "ecs.version",
    "event.kind",
    "event.category",
    "event.type",
    "event.action",
    "event.outcome",
    "event.dataset",
    "event.id",
    "event.sequence",
    "event.reason",
    "user.id",
    "user.name",
    "user.roles",
    "labels.client_id",
    "source.ip",
    "source.address",
    "service.name",
    "service.version",
    "trace.id",
    "http.response.status_code",
    "haven.audit.entities",
    "haven.audit.patients",
    "haven.audit.detail",
];

/// The top-level keys of a line.
pub const ECS_TOP_LEVEL_KEYS: &[&str] = &[
    "@timestamp",
    "ecs",
    "event",
    "user",
    "labels",
    "source",
    "service",
    "trace",
    "http",
    "haven",
];

/// ECS 8.11 allowed values of `event.category`.
pub const ECS_EVENT_CATEGORIES: &[&str] = &[
    "api",
    "authentication",
    "configuration",
    "database",
    "driver",
    "email",
    "file",
    "host",
    "iam",
    "intrusion_detection",
    "library",
    "malware",
    "network",
    "package",
    "process",
    "registry",
    "session",
    "threat",
    "vulnerability",
    "web",
];

/// ECS 8.11 allowed values of `event.type`.
pub const ECS_EVENT_TYPES: &[&str] = &[
    "access",
    "admin",
    "allowed",
    "change",
    "connection",
    "creation",
    "deletion",
    "denied",
    "end",
    "error",
    "group",
    "indicator",
    "info",
    "installation",
    "protocol",
    "start",
    "user",
];

/// One ECS JSON object on one line. `seq` is the record's place in the chain, if it has one yet.
#[must_use]
pub fn ecs_line(
    record: &AuditRecord,
    seq: Option<u64>,
    service_name: &str,
    service_version: &str,
) -> String {
    let (category, types) = classify(record);

    let mut event = Map::new();
    event.insert("kind".into(), json!("event"));
    event.insert("category".into(), json!([category]));
    event.insert("type".into(), json!(types));
    event.insert("action".into(), json!(record.action));
    event.insert(
        "outcome".into(),
        json!(match record.outcome {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }),
    );
    event.insert("dataset".into(), json!(ECS_DATASET));
    if let Some(seq) = seq {
        event.insert("id".into(), json!(seq.to_string()));
        event.insert("sequence".into(), json!(seq));
    }
    if let Some(purpose) = &record.purpose_of_use {
        event.insert("reason".into(), json!(purpose));
    }

    let mut line = Map::new();
    line.insert("@timestamp".into(), json!(timestamp(record.time)));
    line.insert("ecs".into(), json!({ "version": ECS_VERSION }));
    line.insert("event".into(), Value::Object(event));

    let mut user = Map::new();
    if let Some(u) = &record.actor.user {
        user.insert("id".into(), json!(u));
        user.insert("name".into(), json!(u));
    }
    if let Some(role) = &record.actor.role {
        user.insert("roles".into(), json!([role]));
    }
    if !user.is_empty() {
        line.insert("user".into(), Value::Object(user));
    }
    if let Some(client) = &record.actor.client {
        line.insert("labels".into(), json!({ "client_id": client }));
    }
    if let Some(addr) = &record.source_ip {
        // `source.ip` is an `ip` field: a value that does not parse would make Elasticsearch
        // reject the whole document, so such values go to the keyword `source.address` only.
        let mut source = Map::new();
        if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
            source.insert("ip".into(), json!(ip.to_string()));
        }
        source.insert("address".into(), json!(addr));
        line.insert("source".into(), Value::Object(source));
    }
    line.insert(
        "service".into(),
        json!({ "name": service_name, "version": service_version }),
    );
    if let Some(id) = &record.request_id {
        line.insert("trace".into(), json!({ "id": id }));
    }
    line.insert(
        "http".into(),
        json!({ "response": { "status_code": record.status } }),
    );

    let mut audit = Map::new();
    if !record.entities.is_empty() {
        let refs: Vec<String> = record
            .entities
            .iter()
            .map(|e| match e.version {
                Some(v) => format!("{}/{}/_history/{v}", e.resource_type, e.id),
                None => format!("{}/{}", e.resource_type, e.id),
            })
            .collect();
        audit.insert("entities".into(), json!(refs));
    }
    if !record.patients.is_empty() {
        audit.insert("patients".into(), json!(record.patients));
    }
    if let Some(detail) = &record.detail {
        audit.insert("detail".into(), json!(detail));
    }
    if !audit.is_empty() {
        line.insert("haven".into(), json!({ "audit": audit }));
    }

    serde_json::to_string(&Value::Object(line)).expect("a JSON value always serializes")
}

/// RFC 3339 UTC with microseconds.
fn timestamp(t: Timestamp) -> String {
    t.to_instant_string()
}

fn classify(record: &AuditRecord) -> (&'static str, Vec<&'static str>) {
    let a = record.action.as_str();
    let (category, kind) = match record.category {
        Category::Data => ("api", data_type(a)),
        Category::Security if a.starts_with("login") => ("authentication", "start"),
        Category::Security if a.starts_with("logout") => ("authentication", "end"),
        Category::Security
            if ["token-", "mfa-", "session-"]
                .iter()
                .any(|p| a.starts_with(p)) =>
        {
            ("authentication", "info")
        }
        Category::Security if a.starts_with("key-") => ("configuration", "change"),
        Category::Security if a.starts_with("audit-") => ("configuration", "access"),
        Category::Security => ("iam", verb_type(a)),
    };
    let mut types = vec![kind];
    if category != "authentication" {
        if matches!(record.status, 401 | 403) {
            types.push("denied");
        } else if record.status >= 500 {
            types.push("error");
        }
    }
    (category, types)
}

fn data_type(action: &str) -> &'static str {
    match action {
        "read" | "vread" | "everything" => "access",
        a if a.starts_with("search-") || a.starts_with("history-") => "access",
        "create" => "creation",
        "update" | "patch" | "transaction" => "change",
        "delete" => "deletion",
        _ => "info",
    }
}

fn verb_type(action: &str) -> &'static str {
    let verb = action.rsplit('-').next().unwrap_or(action);
    match verb {
        "create" => "creation",
        "delete" => "deletion",
        "update" | "change" | "enable" | "disable" => "change",
        _ => "info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Actor, Entity};

    const ACTIONS: &[(Category, &str)] = &[
        (Category::Data, "create"),
        (Category::Data, "read"),
        (Category::Data, "vread"),
        (Category::Data, "update"),
        (Category::Data, "patch"),
        (Category::Data, "delete"),
        (Category::Data, "search-type"),
        (Category::Data, "search-system"),
        (Category::Data, "history-instance"),
        (Category::Data, "history-type"),
        (Category::Data, "history-system"),
        (Category::Data, "everything"),
        (Category::Data, "transaction"),
        (Category::Data, "batch"),
        (Category::Data, "operation"),
        (Category::Security, "login"),
        (Category::Security, "logout"),
        (Category::Security, "token-issue"),
        (Category::Security, "mfa-failure"),
        (Category::Security, "key-rotate"),
        (Category::Security, "audit-verify"),
        (Category::Security, "user-create"),
        (Category::Security, "client-delete"),
        (Category::Security, "user-disable"),
        (Category::Security, "something-new"),
    ];

    fn full(category: Category, action: &str, status: u16) -> AuditRecord {
        let mut r = AuditRecord::new(
            Timestamp::from_micros(1_790_000_000_123_456),
            category,
            action,
            status,
        )
        .unwrap();
        r.actor = Actor {
            user: Some("u-1".into()),
            role: Some("clinician".into()),
            client: Some("portal".into()),
        };
        r.source_ip = Some("2001:db8::1".into());
        r.request_id = Some("req-1".into());
        r.purpose_of_use = Some("TREAT".into());
        r.entities = vec![
            Entity {
                resource_type: "Observation".into(),
                id: "o1".into(),
                version: Some(3),
            },
            Entity {
                resource_type: "Patient".into(),
                id: "p1".into(),
                version: None,
            },
        ];
        r.patients = vec!["p1".into()];
        r.detail = Some("type=Observation\nline two".into());
        r
    }

    /// Dotted paths of every leaf; arrays are leaves.
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&path, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }

    fn strings(v: &Value) -> Vec<&str> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect()
    }

    #[test]
    fn every_line_stays_within_ecs_and_the_field_list() {
        for &(category, action) in ACTIONS {
            for status in [200, 201, 401, 403, 404, 500] {
                for seq in [None, Some(77)] {
                    let r = full(category, action, status);
                    let line = ecs_line(&r, seq, "haven", "0.1.0");
                    assert!(!line.contains('\n'), "{line}");
                    let v: Value = serde_json::from_str(&line).unwrap();
                    for key in v.as_object().unwrap().keys() {
                        assert!(ECS_TOP_LEVEL_KEYS.contains(&key.as_str()), "{key}");
                    }
                    let mut paths = Vec::new();
                    leaves("", &v, &mut paths);
                    for p in &paths {
                        assert!(ECS_FIELDS.contains(&p.as_str()), "{p} not in ECS_FIELDS");
                    }
                    for c in strings(&v["event"]["category"]) {
                        assert!(ECS_EVENT_CATEGORIES.contains(&c), "{action}: {c}");
                    }
                    let types = strings(&v["event"]["type"]);
                    assert!(!types.is_empty());
                    for t in types {
                        assert!(ECS_EVENT_TYPES.contains(&t), "{action}: {t}");
                    }
                    let ts = v["@timestamp"].as_str().unwrap();
                    assert_eq!(Timestamp::parse_instant(ts).unwrap(), r.time);
                    assert_eq!(ts, "2026-09-21T14:13:20.123456Z");
                    assert_eq!(
                        v["event"]["outcome"],
                        if status < 400 { "success" } else { "failure" }
                    );
                    assert_eq!(
                        v["http"]["response"]["status_code"].as_u64(),
                        Some(u64::from(status))
                    );
                }
            }
        }
    }

    #[test]
    fn maps_fields_and_types() {
        let line = ecs_line(
            &full(Category::Data, "read", 200),
            Some(77),
            "haven",
            "1.2.3",
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ecs"]["version"], ECS_VERSION);
        assert_eq!(v["event"]["kind"], "event");
        assert_eq!(strings(&v["event"]["category"]), ["api"]);
        assert_eq!(strings(&v["event"]["type"]), ["access"]);
        assert_eq!(v["event"]["action"], "read");
        assert_eq!(v["event"]["id"], "77");
        assert_eq!(v["event"]["sequence"].as_u64(), Some(77));
        assert_eq!(v["event"]["reason"], "TREAT");
        assert_eq!(v["user"]["name"], "u-1");
        assert_eq!(strings(&v["user"]["roles"]), ["clinician"]);
        assert_eq!(v["labels"]["client_id"], "portal");
        assert_eq!(v["source"]["ip"], "2001:db8::1");
        assert_eq!(v["service"]["version"], "1.2.3");
        assert_eq!(v["trace"]["id"], "req-1");
        assert_eq!(
            strings(&v["haven"]["audit"]["entities"]),
            ["Observation/o1/_history/3", "Patient/p1"]
        );
        assert_eq!(strings(&v["haven"]["audit"]["patients"]), ["p1"]);

        let types = |c, a, s| {
            let v: Value = serde_json::from_str(&ecs_line(&full(c, a, s), None, "h", "1")).unwrap();
            (
                strings(&v["event"]["category"]).join(","),
                strings(&v["event"]["type"]).join(","),
            )
        };
        assert_eq!(
            types(Category::Data, "create", 201),
            ("api".into(), "creation".into())
        );
        assert_eq!(
            types(Category::Data, "delete", 403),
            ("api".into(), "deletion,denied".into())
        );
        assert_eq!(
            types(Category::Data, "patch", 500),
            ("api".into(), "change,error".into())
        );
        assert_eq!(
            types(Category::Security, "login", 401),
            ("authentication".into(), "start".into())
        );
        assert_eq!(
            types(Category::Security, "key-rotate", 200),
            ("configuration".into(), "change".into())
        );
        assert_eq!(
            types(Category::Security, "user-create", 201),
            ("iam".into(), "creation".into())
        );

        let mut bare =
            AuditRecord::new(Timestamp::from_micros(0), Category::Data, "read", 200).unwrap();
        bare.source_ip = Some("not-an-ip".into());
        let v: Value = serde_json::from_str(&ecs_line(&bare, None, "h", "1")).unwrap();
        assert!(v.get("user").is_none() && v.get("haven").is_none() && v.get("trace").is_none());
        assert!(v["event"].get("id").is_none());
        assert!(v["source"].get("ip").is_none());
        assert_eq!(v["source"]["address"], "not-an-ip");
    }
}
