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
use serde::Serialize;

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
///
/// Written through borrowed structs rather than a `serde_json::Value`: every record that is
/// sealed becomes a line, so this runs once per audited request, and building a map of owned
/// keys and values cost about as much as hashing and storing the record.
#[must_use]
pub fn ecs_line(
    record: &AuditRecord,
    seq: Option<u64>,
    service_name: &str,
    service_version: &str,
) -> String {
    let (category, types) = classify(record);
    let user = (record.actor.user.is_some() || record.actor.role.is_some()).then(|| User {
        id: record.actor.user.as_deref(),
        name: record.actor.user.as_deref(),
        roles: record.actor.role.as_deref().map(|r| [r]),
    });
    // `source.ip` is an `ip` field: a value that does not parse would make Elasticsearch reject
    // the whole document, so such values go to the keyword `source.address` only.
    let source = record.source_ip.as_deref().map(|addr| Source {
        ip: addr.parse::<std::net::IpAddr>().ok(),
        address: addr,
    });
    let entities: Vec<String> = record
        .entities
        .iter()
        .map(|e| match e.version {
            Some(v) => format!("{}/{}/_history/{v}", e.resource_type, e.id),
            None => format!("{}/{}", e.resource_type, e.id),
        })
        .collect();
    let audit = HavenAudit {
        entities: &entities,
        patients: &record.patients,
        detail: record.detail.as_deref(),
    };
    let has_audit =
        !audit.entities.is_empty() || !audit.patients.is_empty() || audit.detail.is_some();
    let line = Line {
        timestamp: timestamp(record.time),
        ecs: Version {
            version: ECS_VERSION,
        },
        event: Event {
            kind: "event",
            category: [category],
            types: &types,
            action: &record.action,
            outcome: match record.outcome {
                Outcome::Success => "success",
                Outcome::Failure => "failure",
            },
            dataset: ECS_DATASET,
            id: seq.map(|s| s.to_string()),
            sequence: seq,
            reason: record.purpose_of_use.as_deref(),
        },
        user,
        labels: record
            .actor
            .client
            .as_deref()
            .map(|client_id| Labels { client_id }),
        source,
        service: Service {
            name: service_name,
            version: service_version,
        },
        trace: record.request_id.as_deref().map(|id| Trace { id }),
        http: Http {
            response: Response {
                status_code: record.status,
            },
        },
        haven: has_audit.then_some(Haven { audit }),
    };
    serde_json::to_string(&line).expect("an ECS line always serializes")
}

// The shape of a line, field by field in the order they are written.

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    ecs: Version,
    event: Event<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<Labels<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<Source<'a>>,
    service: Service<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<Trace<'a>>,
    http: Http,
    #[serde(skip_serializing_if = "Option::is_none")]
    haven: Option<Haven<'a>>,
}

#[derive(Serialize)]
struct Version {
    version: &'static str,
}

#[derive(Serialize)]
struct Event<'a> {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    types: &'a [&'static str],
    action: &'a str,
    outcome: &'static str,
    dataset: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct User<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<[&'a str; 1]>,
}

#[derive(Serialize)]
struct Labels<'a> {
    client_id: &'a str,
}

#[derive(Serialize)]
struct Source<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<std::net::IpAddr>,
    address: &'a str,
}

#[derive(Serialize)]
struct Service<'a> {
    name: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
struct Trace<'a> {
    id: &'a str,
}

#[derive(Serialize)]
struct Http {
    response: Response,
}

#[derive(Serialize)]
struct Response {
    status_code: u16,
}

#[derive(Serialize)]
struct Haven<'a> {
    audit: HavenAudit<'a>,
}

#[derive(Serialize)]
struct HavenAudit<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    entities: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    patients: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
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
    use serde_json::Value;

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

    /// The line of [`full`]'s read record answered with `status`, as sequence number 77.
    fn full_read_line(status: u16) -> String {
        ecs_line(
            &full(Category::Data, "read", status),
            Some(77),
            "haven",
            "1.2.3",
        )
    }

    /// The exact bytes of one full line, so that a change of field order or spelling, which
    /// a log pipeline's parsing may depend on, shows.
    #[test]
    fn a_full_line_is_exactly_this() {
        let line = full_read_line(403);
        assert_eq!(
            line,
            r#"{"@timestamp":"2026-09-21T14:13:20.123456Z","ecs":{"version":"8.11.0"},"event":{"kind":"event","category":["api"],"type":["access","denied"],"action":"read","outcome":"failure","dataset":"haven.audit","id":"77","sequence":77,"reason":"TREAT"},"user":{"id":"u-1","name":"u-1","roles":["clinician"]},"labels":{"client_id":"portal"},"source":{"ip":"2001:db8::1","address":"2001:db8::1"},"service":{"name":"haven","version":"1.2.3"},"trace":{"id":"req-1"},"http":{"response":{"status_code":403}},"haven":{"audit":{"entities":["Observation/o1/_history/3","Patient/p1"],"patients":["p1"],"detail":"type=Observation\nline two"}}}"#
        );
    }

    #[test]
    fn maps_fields_and_types() {
        let line = full_read_line(200);
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
