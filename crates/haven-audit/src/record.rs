//! The audit record and its canonical bytes.
//!
//! A record says who did what to which resources of which patients, when, from where, and how it
//! ended. It holds identifiers only, never resource content: the audit trail must be safe to
//! ship to a log platform. `canonical` gives the exact bytes that are hashed into the chain.

use haven_domain::Timestamp;
use serde::{Deserialize, Serialize};

/// At most this many entities are kept per record; the rest are counted in `detail`.
pub const MAX_ENTITIES: usize = 1000;
/// `detail` is cut to this many characters.
pub const MAX_DETAIL_CHARS: usize = 256;
/// `action` is 1 to this many characters of `[a-z0-9-]`.
pub const MAX_ACTION_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("audit action '{0}' must be 1 to 64 characters of a-z, 0-9 and '-'")]
    InvalidAction(String),
    #[error("audit outcome '{outcome:?}' contradicts status {status} (below 400 is success)")]
    OutcomeMismatch { status: u16, outcome: Outcome },
    #[error("audit detail has {0} characters; at most 256 are allowed")]
    DetailTooLong(usize),
    #[error("audit record names {0} entities; at most 1000 are allowed")]
    TooManyEntities(usize),
    #[error("audit record patients must be sorted and free of duplicates")]
    PatientsNotNormalized,
    /// serde's own message is not quoted: it may echo field content.
    #[error("bytes are not a canonical audit record ({kind} at column {column})")]
    Undecodable { kind: &'static str, column: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Access to or change of clinical data (FHIR interactions).
    Data,
    /// Authentication, account, key and audit administration events.
    Security,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    /// HTTP-like status: below 400 is a success.
    #[must_use]
    pub fn from_status(status: u16) -> Self {
        if status < 400 {
            Self::Success
        } else {
            Self::Failure
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    pub user: Option<String>,
    pub role: Option<String>,
    /// The OAuth client the request came through.
    pub client: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    pub resource_type: String,
    pub id: String,
    pub version: Option<u64>,
}

/// One audited event. Field order is the canonical key order: do not reorder fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    #[serde(with = "micros")]
    pub time: Timestamp,
    pub category: Category,
    /// Lowercase kebab code: `read`, `search-type`, `login`, `key-rotate`, ...
    pub action: String,
    /// HTTP status, or the equivalent for non-HTTP events.
    pub status: u16,
    pub outcome: Outcome,
    pub actor: Actor,
    pub source_ip: Option<String>,
    pub request_id: Option<String>,
    pub purpose_of_use: Option<String>,
    /// Resources touched, by id only.
    pub entities: Vec<Entity>,
    /// Ids of the patients whose data was touched or returned; sorted, no duplicates.
    pub patients: Vec<String>,
    /// Short and free of PHI (`type=Observation`), at most 256 characters.
    pub detail: Option<String>,
}

impl AuditRecord {
    /// A record with the outcome derived from `status` and every optional part empty.
    pub fn new(
        time: Timestamp,
        category: Category,
        action: impl Into<String>,
        status: u16,
    ) -> Result<Self, AuditError> {
        let action = action.into();
        check_action(&action)?;
        Ok(Self {
            time,
            category,
            action,
            status,
            outcome: Outcome::from_status(status),
            actor: Actor::default(),
            source_ip: None,
            request_id: None,
            purpose_of_use: None,
            entities: Vec::new(),
            patients: Vec::new(),
            detail: None,
        })
    }

    /// Brings the record within bounds: patients sorted and deduplicated; entities beyond
    /// [`MAX_ENTITIES`] dropped and counted as `+N more entities` at the end of `detail`;
    /// `detail` cut to [`MAX_DETAIL_CHARS`] characters. Idempotent.
    pub fn normalize(&mut self) {
        self.patients.sort_unstable();
        self.patients.dedup();
        let mut suffix = None;
        if self.entities.len() > MAX_ENTITIES {
            suffix = Some(format!(
                "+{} more entities",
                self.entities.len() - MAX_ENTITIES
            ));
            self.entities.truncate(MAX_ENTITIES);
        }
        self.detail = match (self.detail.take(), suffix) {
            (None, None) => None,
            (Some(d), None) => Some(truncate_chars(&d, MAX_DETAIL_CHARS).to_owned()),
            (None, Some(s)) => Some(s),
            (Some(d), Some(s)) => {
                let room = MAX_DETAIL_CHARS - s.len() - 1;
                Some(format!("{} {s}", truncate_chars(&d, room)))
            }
        };
    }

    /// Checks the invariants `new` and `normalize` establish.
    pub fn validate(&self) -> Result<(), AuditError> {
        check_action(&self.action)?;
        if self.outcome != Outcome::from_status(self.status) {
            return Err(AuditError::OutcomeMismatch {
                status: self.status,
                outcome: self.outcome,
            });
        }
        if let Some(d) = &self.detail {
            let n = d.chars().count();
            if n > MAX_DETAIL_CHARS {
                return Err(AuditError::DetailTooLong(n));
            }
        }
        if self.entities.len() > MAX_ENTITIES {
            return Err(AuditError::TooManyEntities(self.entities.len()));
        }
        if self.patients.windows(2).any(|w| w[0] >= w[1]) {
            return Err(AuditError::PatientsNotNormalized);
        }
        Ok(())
    }

    /// The bytes hashed into the chain: compact JSON, keys in field order, integers only, every
    /// key always present (`null` for absent values). Equal records give equal bytes. Struct
    /// serialization never goes through `serde_json::Value`, so the workspace's
    /// `preserve_order`/`arbitrary_precision` features cannot change it.
    #[must_use]
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings and integers always serializes")
    }

    /// Decodes canonical bytes and checks the record's invariants ([`AuditRecord::validate`]).
    /// Unknown keys are refused.
    pub fn from_canonical(bytes: &[u8]) -> Result<Self, AuditError> {
        let record: Self = serde_json::from_slice(bytes).map_err(|e| AuditError::Undecodable {
            kind: match e.classify() {
                serde_json::error::Category::Io => "read error",
                serde_json::error::Category::Syntax => "syntax error",
                serde_json::error::Category::Data => "unexpected field or value",
                serde_json::error::Category::Eof => "truncated",
            },
            column: e.column(),
        })?;
        record.validate()?;
        Ok(record)
    }
}

fn check_action(action: &str) -> Result<(), AuditError> {
    let ok = !action.is_empty()
        && action.len() <= MAX_ACTION_LEN
        && action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AuditError::InvalidAction(
            action.chars().take(MAX_ACTION_LEN).collect(),
        ))
    }
}

fn truncate_chars(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// `Timestamp` as integer microseconds since the epoch.
mod micros {
    use haven_domain::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(t.micros())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        i64::deserialize(d).map(Timestamp::from_micros)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record with every field set, varied by `n`.
    pub(crate) fn sample(n: u64) -> AuditRecord {
        let mut r = AuditRecord::new(
            Timestamp::from_micros(1_790_000_000_000_000 + i64::try_from(n).unwrap()),
            Category::Data,
            "read",
            200,
        )
        .unwrap();
        r.actor = Actor {
            user: Some(format!("user-{}", n % 7)),
            role: Some("clinician".into()),
            client: Some("portal".into()),
        };
        r.source_ip = Some("10.0.0.7".into());
        r.request_id = Some(format!("req-{n}"));
        r.purpose_of_use = Some("TREAT".into());
        r.entities = vec![Entity {
            resource_type: "Observation".into(),
            id: format!("obs-{n}"),
            version: Some(n % 5 + 1),
        }];
        r.patients = vec![format!("pat-{}", n % 11)];
        r.detail = Some("type=Observation \"quoted\" é".into());
        r
    }

    #[test]
    fn canonical_round_trips_and_is_stable() {
        let r = sample(3);
        let bytes = r.canonical();
        assert_eq!(bytes, r.canonical());
        assert_eq!(bytes, r.clone().canonical());
        assert_eq!(AuditRecord::from_canonical(&bytes).unwrap(), r);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with(
            r#"{"time":1790000000000003,"category":"data","action":"read","status":200,"outcome":"success","actor":{"user":"user-3""#
        ), "{text}");
        assert!(!text.contains('\n'));

        let empty =
            AuditRecord::new(Timestamp::from_micros(-5), Category::Security, "login", 401).unwrap();
        assert_eq!(
            std::str::from_utf8(&empty.canonical()).unwrap(),
            r#"{"time":-5,"category":"security","action":"login","status":401,"outcome":"failure","actor":{"user":null,"role":null,"client":null},"source_ip":null,"request_id":null,"purpose_of_use":null,"entities":[],"patients":[],"detail":null}"#
        );
        assert_eq!(
            AuditRecord::from_canonical(&empty.canonical()).unwrap(),
            empty
        );
    }

    #[test]
    fn from_canonical_refuses_unknown_keys_and_broken_invariants() {
        let r = sample(1);
        let text = String::from_utf8(r.canonical()).unwrap();
        let extra = text.replacen('{', r#"{"x":1,"#, 1);
        assert!(matches!(
            AuditRecord::from_canonical(extra.as_bytes()),
            Err(AuditError::Undecodable { .. })
        ));
        assert!(matches!(
            AuditRecord::from_canonical(&text.as_bytes()[..text.len() - 1]),
            Err(AuditError::Undecodable {
                kind: "truncated",
                ..
            })
        ));
        let lying = text.replace(r#""outcome":"success""#, r#""outcome":"failure""#);
        assert!(matches!(
            AuditRecord::from_canonical(lying.as_bytes()),
            Err(AuditError::OutcomeMismatch { status: 200, .. })
        ));
        let mut unsorted = r.clone();
        unsorted.patients = vec!["b".into(), "a".into()];
        assert_eq!(
            AuditRecord::from_canonical(&unsorted.canonical()),
            Err(AuditError::PatientsNotNormalized)
        );
    }

    #[test]
    fn actions_are_lowercase_kebab_codes() {
        let t = Timestamp::from_micros(0);
        for ok in [
            "read",
            "search-type",
            "history-system",
            "mfa-failure",
            "a",
            &"x".repeat(64),
        ] {
            assert!(AuditRecord::new(t, Category::Data, ok, 200).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Read",
            "search_type",
            "read ",
            "lecture-é",
            &"x".repeat(65),
        ] {
            assert!(matches!(
                AuditRecord::new(t, Category::Data, bad, 200),
                Err(AuditError::InvalidAction(_))
            ));
        }
        assert_eq!(Outcome::from_status(399), Outcome::Success);
        assert_eq!(Outcome::from_status(400), Outcome::Failure);
    }

    #[test]
    fn normalize_bounds_the_record() {
        let mut r = sample(1);
        r.patients = vec!["p2".into(), "p1".into(), "p2".into()];
        r.entities = (0..1005)
            .map(|i| Entity {
                resource_type: "Patient".into(),
                id: format!("p{i}"),
                version: None,
            })
            .collect();
        r.detail = Some("é".repeat(300));
        r.normalize();
        assert_eq!(r.patients, ["p1", "p2"]);
        assert_eq!(r.entities.len(), MAX_ENTITIES);
        let detail = r.detail.clone().unwrap();
        assert_eq!(detail.chars().count(), MAX_DETAIL_CHARS);
        assert!(detail.ends_with(" +5 more entities"), "{detail}");
        r.validate().unwrap();
        let once = r.clone();
        r.normalize();
        assert_eq!(r, once);

        let mut long = sample(2);
        long.detail = Some("ü".repeat(257));
        assert_eq!(long.validate(), Err(AuditError::DetailTooLong(257)));
        long.normalize();
        assert_eq!(long.detail.unwrap(), "ü".repeat(256));

        let mut only_suffix = sample(3);
        only_suffix.detail = None;
        only_suffix.entities = vec![only_suffix.entities[0].clone(); 1001];
        only_suffix.normalize();
        assert_eq!(only_suffix.detail.as_deref(), Some("+1 more entities"));
    }
}
