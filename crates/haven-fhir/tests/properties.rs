//! Property tests for the parsers: they never panic, formatting round-trips, and the
//! hand-written date parsers agree with the official R4 regexes.

use haven_fhir::json::{JsonError, JsonLimits, parse_json};
use haven_fhir::primitives::{
    FhirDateTime, Precision, is_valid_id, parse_date, parse_datetime, parse_instant,
    parse_search_datetime, parse_time,
};
use haven_fhir::validate_resource;
use proptest::prelude::*;
use regex::Regex;
use serde_json::{Map, Value};

// The official R4 regexes (profiles-types.json), anchored.
const DATE_RX: &str = r"^(?:([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?)$";
const DATETIME_RX: &str = r"^(?:([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?)$";
const INSTANT_RX: &str = r"^(?:([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))$";
const TIME_RX: &str = r"^(?:([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?)$";
const ID_RX: &str = r"^(?:[A-Za-z0-9\-\.]{1,64})$";

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A valid date string at a random precision.
fn date_string() -> impl Strategy<Value = String> {
    (1u16..=9999, 1u8..=12, 0u8..=2).prop_flat_map(|(y, m, precision)| {
        (Just(y), Just(m), 1..=days_in_month(y, m), Just(precision)).prop_map(
            |(y, m, d, precision)| match precision {
                0 => format!("{y:04}"),
                1 => format!("{y:04}-{m:02}"),
                _ => format!("{y:04}-{m:02}-{d:02}"),
            },
        )
    })
}

fn zone_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Z".to_owned()),
        (prop::bool::ANY, 0u8..=13, 0u8..=59)
            .prop_map(|(neg, h, m)| format!("{}{h:02}:{m:02}", if neg { '-' } else { '+' })),
        prop::bool::ANY.prop_map(|neg| format!("{}14:00", if neg { '-' } else { '+' })),
    ]
}

fn time_string() -> impl Strategy<Value = String> {
    (
        0u8..=23,
        0u8..=59,
        0u8..=60,
        proptest::option::of("[0-9]{1,9}"),
    )
        .prop_map(|(h, m, s, frac)| {
            format!(
                "{h:02}:{m:02}:{s:02}{}",
                frac.map(|f| format!(".{f}")).unwrap_or_default()
            )
        })
}

fn instant_string() -> impl Strategy<Value = String> {
    (1u16..=9999, 1u8..=12, time_string(), zone_string()).prop_flat_map(|(y, m, t, z)| {
        (1..=days_in_month(y, m)).prop_map(move |d| format!("{y:04}-{m:02}-{d:02}T{t}{z}"))
    })
}

fn datetime_string() -> impl Strategy<Value = String> {
    prop_oneof![date_string(), instant_string()]
}

/// Strings made of the characters dates use, to reach deep into the parsers.
fn date_like() -> impl Strategy<Value = String> {
    "[0-9T:+\\-.Z]{0,36}"
}

fn check_period(v: &FhirDateTime) {
    assert!(v.start() <= v.end(), "{v}");
    assert!(
        v.end() < v.end_exclusive() || v.end_exclusive() == v.end(),
        "{v}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_dates_round_trip(s in date_string()) {
        let v = parse_date(&s).unwrap();
        prop_assert_eq!(v.to_string(), s.clone());
        prop_assert_eq!(parse_datetime(&s).unwrap(), v);
        check_period(&v);
    }

    #[test]
    fn valid_datetimes_round_trip(s in datetime_string()) {
        let v = parse_datetime(&s).unwrap();
        prop_assert_eq!(v.to_string(), s.clone());
        prop_assert_eq!(parse_search_datetime(&s).unwrap(), v);
        check_period(&v);
    }

    #[test]
    fn valid_instants_round_trip(s in instant_string()) {
        let v = parse_instant(&s).unwrap();
        prop_assert_eq!(v.to_string(), s.clone());
        prop_assert!(matches!(v.precision(), Precision::Second | Precision::Fraction(_)));
        check_period(&v);
    }

    #[test]
    fn valid_times_round_trip(s in time_string()) {
        let v = parse_time(&s).unwrap();
        prop_assert_eq!(v.to_string(), s);
    }

    #[test]
    fn parsers_agree_with_the_official_regexes(s in prop_oneof![date_like(), datetime_string(), any::<String>()]) {
        let rx = |p: &str| Regex::new(p).unwrap();
        let calendar_only = |e: haven_fhir::primitives::PrimitiveError| e.reason == "no such day in that month";
        for (re, result) in [
            (rx(DATE_RX), parse_date(&s)),
            (rx(DATETIME_RX), parse_datetime(&s)),
            (rx(INSTANT_RX), parse_instant(&s)),
        ] {
            match result {
                Ok(_) => prop_assert!(re.is_match(&s), "parser accepted {:?} but the regex does not", s),
                Err(e) => prop_assert!(!re.is_match(&s) || calendar_only(e), "regex accepts {:?} but parser said {}", s, e),
            }
        }
        prop_assert_eq!(parse_time(&s).is_ok(), rx(TIME_RX).is_match(&s), "{:?}", s);
        let _ = parse_search_datetime(&s);
    }

    #[test]
    fn ids_match_the_regex(s in prop_oneof!["[A-Za-z0-9.\\-]{0,70}", any::<String>()]) {
        prop_assert_eq!(is_valid_id(&s), Regex::new(ID_RX).unwrap().is_match(&s));
    }

    #[test]
    fn parse_json_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_json(&bytes, &JsonLimits::default());
    }

    #[test]
    fn parse_json_never_panics_on_json_like_text(s in "[\\[\\]{}\",:0-9a-z.eE+\\- \\\\nu]{0,64}") {
        let _ = parse_json(s.as_bytes(), &JsonLimits { max_depth: 4 });
    }

    #[test]
    fn parse_json_round_trips_generated_values(v in json_value()) {
        let text = v.to_string();
        prop_assert_eq!(parse_json(text.as_bytes(), &JsonLimits { max_depth: 128 }).unwrap(), v);
    }

    #[test]
    fn validation_never_panics(v in patientish()) {
        let mut map = Map::new();
        map.insert("resourceType".into(), Value::String("Patient".into()));
        if let Value::Object(extra) = v {
            map.extend(extra);
        }
        let _ = validate_resource(&map);
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,5})?".prop_map(|n| serde_json::from_str(&n).unwrap()),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            // Unique keys: duplicates cannot be represented in a Value anyway.
            prop::collection::btree_map("[a-z_]{1,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Values with keys that are real Patient/datatype element names, to reach deep code paths.
fn patientish() -> impl Strategy<Value = Value> {
    let key = prop::sample::select(vec![
        "id",
        "_id",
        "name",
        "given",
        "_given",
        "family",
        "extension",
        "url",
        "valueString",
        "valueReference",
        "reference",
        "contained",
        "resourceType",
        "active",
        "_active",
        "birthDate",
        "telecom",
        "rank",
        "text",
        "div",
        "link",
        "other",
        "type",
        "deceasedBoolean",
        "deceasedDateTime",
        "meta",
        "versionId",
        "Patient",
        "#x",
        "Organization/1",
        "entry",
        "resource",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop::sample::select(vec!["0", "-1", "1.5", "2147483648"])
            .prop_map(|n| serde_json::from_str(n).unwrap()),
        prop::sample::select(vec![
            "",
            "x",
            "Patient",
            "#x",
            "#",
            "Organization/1",
            "2020-02-30",
            "<div>a</div>"
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(5, 48, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..5).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

#[test]
fn depth_errors_are_reported_as_too_deep() {
    let deep = "[".repeat(200) + &"]".repeat(200);
    assert_eq!(
        parse_json(deep.as_bytes(), &JsonLimits::default()),
        Err(JsonError::TooDeep { max: 64 })
    );
}
