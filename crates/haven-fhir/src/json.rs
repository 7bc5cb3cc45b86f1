//! Strict JSON parsing for request bodies.
//!
//! `serde_json::from_slice` is too lenient for a FHIR server: it silently keeps the last of
//! two duplicate keys (so `{"active":true,"active":false}` would be read differently by two
//! parsers, a classic smuggling vector) and only limits nesting at a fixed 128 levels. This
//! module drives serde_json's tokenizer with its own visitor that builds a
//! [`serde_json::Value`], rejects duplicate keys at any depth, and enforces a configurable
//! depth limit. Numbers keep their exact text (`1.50` stays `1.50`) through serde_json's
//! `arbitrary_precision` feature, which FHIR decimals need (their precision is significant);
//! the one normalisation serde_json applies is to exponents (`1E3` becomes `1e+3`).
//!
//! serde_json's own 128-level recursion limit still applies on top of [`JsonLimits`], so a
//! `max_depth` above 127 behaves like 127 (and fails as a syntax error).

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Limits applied while parsing untrusted JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Maximum nesting of objects and arrays; the top-level value is depth 1.
    pub max_depth: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        Self { max_depth: 64 }
    }
}

/// Why a body is not acceptable JSON. Messages are safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// Not well-formed JSON (including invalid UTF-8 and trailing characters).
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// An object has the same key twice.
    #[error("duplicate key '{key}' at line {line}, column {column}")]
    DuplicateKey {
        key: String,
        line: usize,
        column: usize,
    },
    /// Objects/arrays nest deeper than [`JsonLimits::max_depth`].
    #[error("JSON is nested more than {max} levels deep")]
    TooDeep { max: usize },
    /// A resource was expected but the top-level value is not an object.
    #[error("expected a JSON object at the top level")]
    NotAnObject,
}

/// Parses one JSON value, rejecting duplicate keys, excessive depth and trailing characters.
///
/// # Errors
/// See [`JsonError`].
pub fn parse_json(bytes: &[u8], limits: &JsonLimits) -> Result<Value, JsonError> {
    let failure = Cell::new(None);
    let seed = ValueSeed {
        depth: 0,
        max_depth: limits.max_depth,
        failure: &failure,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = seed
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
    result.map_err(|err| match failure.take() {
        Some(Failure::Duplicate(key)) => JsonError::DuplicateKey {
            // Echo at most 64 characters of a client-chosen key.
            key: key.chars().take(64).collect(),
            line: err.line(),
            column: err.column(),
        },
        Some(Failure::TooDeep) => JsonError::TooDeep {
            max: limits.max_depth,
        },
        None => syntax_error(&err),
    })
}

/// Parses a resource body: like [`parse_json`], and the top-level value must be an object.
///
/// # Errors
/// See [`JsonError`]; [`JsonError::NotAnObject`] for arrays and scalars.
pub fn parse_resource_json(
    bytes: &[u8],
    limits: &JsonLimits,
) -> Result<Map<String, Value>, JsonError> {
    match parse_json(bytes, limits)? {
        Value::Object(map) => Ok(map),
        _ => Err(JsonError::NotAnObject),
    }
}

fn syntax_error(err: &serde_json::Error) -> JsonError {
    // serde_json's Display appends " at line L column C"; we report those separately.
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    JsonError::Syntax {
        line: err.line(),
        column: err.column(),
        message,
    }
}

/// Structured reason for an error raised by our visitor. serde's error type only carries a
/// message, so the detail travels beside it; serde_json still fills in line and column.
enum Failure {
    Duplicate(String),
    TooDeep,
}

/// The key serde_json's `arbitrary_precision` feature uses to hand a number's text to a
/// visitor as a one-entry map. It is not public API, but it is stable and documented in
/// serde_json's source as the protocol between its deserializer and `Number`. (A literal
/// object whose first key is this string is read as a number, exactly as `serde_json::Value`
/// itself would read it.)
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

#[derive(Clone, Copy)]
struct ValueSeed<'f> {
    depth: usize,
    max_depth: usize,
    failure: &'f Cell<Option<Failure>>,
}

impl ValueSeed<'_> {
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        let depth = self.depth + 1;
        if depth > self.max_depth {
            self.failure.set(Some(Failure::TooDeep));
            return Err(E::custom("nesting too deep"));
        }
        Ok(Self { depth, ..self })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    // With arbitrary_precision serde_json reports numbers through `visit_map`; these exist
    // so the visitor stays correct if that feature is ever unified away.
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.nested()?;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            self.nested()?;
            return Ok(Value::Object(Map::new()));
        };
        if first == NUMBER_TOKEN {
            let text: String = map.next_value()?;
            let number = text
                .parse::<Number>()
                .map_err(|_| de::Error::custom("invalid number"))?;
            return Ok(Value::Number(number));
        }
        let inner = self.nested()?;
        let mut out = Map::new();
        let mut key = first;
        loop {
            // Checked before reading the value so the reported position is the key's.
            if out.contains_key(&key) {
                let message = format!("duplicate key {key:?}");
                self.failure.set(Some(Failure::Duplicate(key)));
                return Err(de::Error::custom(message));
            }
            let value = map.next_value_seed(inner)?;
            out.insert(key, value);
            match map.next_key::<String>()? {
                Some(next) => key = next,
                None => return Ok(Value::Object(out)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Value, JsonError> {
        parse_json(s.as_bytes(), &JsonLimits::default())
    }

    #[test]
    fn parses_ordinary_json_and_keeps_key_order() {
        let v = parse(r#"{"b":1,"a":[true,null,"x",{"c":-2}]}"#).unwrap();
        assert_eq!(v.to_string(), r#"{"b":1,"a":[true,null,"x",{"c":-2}]}"#);
    }

    #[test]
    fn numbers_keep_their_exact_text() {
        let v =
            parse(r#"{"a":1.50,"b":1e3,"c":-0.000,"d":123456789012345678901234567890}"#).unwrap();
        assert_eq!(v["a"].to_string(), "1.50");
        // serde_json normalises exponents (`e+`); digits and precision are untouched.
        assert_eq!(v["b"].to_string(), "1e+3");
        assert_eq!(v["c"].to_string(), "-0.000");
        assert_eq!(v["d"].to_string(), "123456789012345678901234567890");
        assert_eq!(
            v.to_string(),
            r#"{"a":1.50,"b":1e+3,"c":-0.000,"d":123456789012345678901234567890}"#
        );
        assert_eq!(parse("2.0").unwrap().to_string(), "2.0");
    }

    #[test]
    fn duplicate_keys_are_rejected_at_top_level_and_nested() {
        match parse("{\"a\":1,\n \"a\":2}") {
            Err(JsonError::DuplicateKey { key, line, .. }) => {
                assert_eq!(key, "a");
                assert_eq!(line, 2);
            }
            other => panic!("{other:?}"),
        }
        let nested = r#"{"name":[{"given":["a"],"family":"x","given":["b"]}]}"#;
        assert!(
            matches!(parse(nested), Err(JsonError::DuplicateKey { key, .. }) if key == "given")
        );
        // Same key in sibling objects is fine.
        assert!(parse(r#"[{"a":1},{"a":2}]"#).is_ok());
        // Escapes are decoded before comparison.
        assert!(matches!(
            parse(r#"{"a":1,"\u0061":2}"#),
            Err(JsonError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn depth_limit_counts_objects_and_arrays() {
        let limits = JsonLimits { max_depth: 3 };
        assert!(parse_json(br#"{"a":[{"b":1}]}"#, &limits).is_ok());
        assert_eq!(
            parse_json(br#"{"a":[{"b":[]}]}"#, &limits),
            Err(JsonError::TooDeep { max: 3 })
        );
        assert_eq!(
            parse_json(br#"[[[{}]]]"#, &limits),
            Err(JsonError::TooDeep { max: 3 })
        );
        let deep = "[".repeat(65) + &"]".repeat(65);
        assert_eq!(parse(&deep), Err(JsonError::TooDeep { max: 64 }));
        let ok = "[".repeat(64) + &"]".repeat(64);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn syntax_errors_report_position_without_duplicated_suffix() {
        match parse("{\"a\":1,}") {
            Err(JsonError::Syntax {
                line,
                column,
                message,
            }) => {
                assert_eq!(line, 1);
                assert_eq!(column, 8);
                assert!(!message.contains("line"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse("{} x"), Err(JsonError::Syntax { .. })));
        assert!(matches!(parse("{}{}"), Err(JsonError::Syntax { .. })));
        assert!(matches!(parse(""), Err(JsonError::Syntax { .. })));
        assert!(matches!(
            parse_json(b"\"\xff\"", &JsonLimits::default()),
            Err(JsonError::Syntax { .. })
        ));
        assert!(parse("{} \n\t ").is_ok());
    }

    #[test]
    fn resource_json_must_be_an_object() {
        let limits = JsonLimits::default();
        assert_eq!(
            parse_resource_json(b"[1]", &limits),
            Err(JsonError::NotAnObject)
        );
        assert_eq!(
            parse_resource_json(b"\"x\"", &limits),
            Err(JsonError::NotAnObject)
        );
        let map = parse_resource_json(br#"{"resourceType":"Patient"}"#, &limits).unwrap();
        assert_eq!(map["resourceType"], "Patient");
    }

    #[test]
    fn display_is_human_and_free_of_internals() {
        let err = parse(r#"{"a":1,"a":2}"#).unwrap_err();
        assert_eq!(err.to_string(), "duplicate key 'a' at line 1, column 10");
        let err = parse("[1,").unwrap_err().to_string();
        assert!(
            err.starts_with("invalid JSON at line 1, column 3: "),
            "{err}"
        );
        assert!(!err.contains("serde"), "{err}");
    }
}
