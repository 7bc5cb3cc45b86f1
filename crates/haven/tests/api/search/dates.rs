//! date parameters: every prefix, every precision, Periods and time zones (R4
//! search.html#date, #prefix).
//!
//! R4 compares ranges: a search value and a target value each stand for the range their
//! precision implies (`2020` is all of 2020, a Period is its start to its end). With the search
//! range S and target range T: `eq` S contains T; `ne` S does not contain T; `gt` the range
//! above S overlaps T; `lt` the range below S overlaps T; `ge` gt or eq; `le` lt or eq; `sa` T
//! starts after S ends; `eb` T ends before S starts. A resource without a value never matches.

use serde_json::{Value, json};

use super::{check, put_all};
use crate::helpers::spawn_app;

/// Patients named after their birthDate and its precision.
fn patients() -> Vec<Value> {
    let born = |id: &str, date: Option<&str>| {
        let mut p = json!({ "resourceType": "Patient", "id": id });
        if let Some(d) = date {
            p["birthDate"] = json!(d);
        }
        p
    };
    vec![
        born("d1974", Some("1974-12-25")),
        born("y2020", Some("2020")),
        born("m2020", Some("2020-03")),
        born("d2020", Some("2020-03-04")),
        born("d2021", Some("2021-01-01")),
        born("unborn", None),
    ]
}

/// Encounters whose `date` parameter is their `period`.
fn encounters() -> Vec<Value> {
    let enc = |id: &str, period: Option<Value>| {
        let mut e = json!({
            "resourceType": "Encounter", "id": id, "status": "finished",
            "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" }
        });
        if let Some(p) = period {
            e["period"] = p;
        }
        e
    };
    vec![
        // All of January 2020.
        enc(
            "jan",
            Some(json!({ "start": "2020-01-01", "end": "2020-01-31" })),
        ),
        // Still open: its range has no end.
        enc("open", Some(json!({ "start": "2020-06-01T08:00:00Z" }))),
        // 09:00Z to 10:30Z, written in +01:00.
        enc(
            "morning",
            Some(
                json!({ "start": "2020-03-04T10:00:00+01:00", "end": "2020-03-04T11:30:00+01:00" }),
            ),
        ),
        enc("undated", None),
    ]
}

#[tokio::test]
async fn birthdate_every_prefix_at_day_precision() {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;

    check(
        &app,
        &[
            ("Patient?birthdate=2020-03-04", &["d2020"]),
            ("Patient?birthdate=eq2020-03-04", &["d2020"]),
            (
                "Patient?birthdate=ne2020-03-04",
                &["d1974", "y2020", "m2020", "d2021"],
            ),
            // The rest of 2020 and of March lies above 2020-03-04.
            (
                "Patient?birthdate=gt2020-03-04",
                &["y2020", "m2020", "d2021"],
            ),
            (
                "Patient?birthdate=lt2020-03-04",
                &["d1974", "y2020", "m2020"],
            ),
            (
                "Patient?birthdate=ge2020-03-04",
                &["y2020", "m2020", "d2020", "d2021"],
            ),
            (
                "Patient?birthdate=le2020-03-04",
                &["d1974", "y2020", "m2020", "d2020"],
            ),
            ("Patient?birthdate=sa2020-03-04", &["d2021"]),
            ("Patient?birthdate=eb2020-03-04", &["d1974"]),
            ("Patient?birthdate=1974-12-25", &["d1974"]),
            ("Patient?birthdate=1974-12-24", &[]),
        ],
    )
    .await;
}

/// The R4 precision rule: `eq2020` contains a birthDate of 2020-03-04, but `eq2020-03-04`
/// does not contain a birthDate of `2020` (only part of that year is the 4th of March).
#[tokio::test]
async fn birthdate_every_prefix_at_year_and_month_precision() {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;

    check(
        &app,
        &[
            ("Patient?birthdate=2020", &["y2020", "m2020", "d2020"]),
            ("Patient?birthdate=eq2020", &["y2020", "m2020", "d2020"]),
            ("Patient?birthdate=2020-03", &["m2020", "d2020"]),
            ("Patient?birthdate=2020-04", &[]),
            ("Patient?birthdate=ne2020", &["d1974", "d2021"]),
            ("Patient?birthdate=gt2020", &["d2021"]),
            ("Patient?birthdate=lt2020", &["d1974"]),
            (
                "Patient?birthdate=ge2020",
                &["y2020", "m2020", "d2020", "d2021"],
            ),
            (
                "Patient?birthdate=le2020",
                &["d1974", "y2020", "m2020", "d2020"],
            ),
            ("Patient?birthdate=sa2020", &["d2021"]),
            ("Patient?birthdate=eb2020", &["d1974"]),
            ("Patient?birthdate=gt2020-03", &["y2020", "d2021"]),
            ("Patient?birthdate=sa2020-02", &["m2020", "d2020", "d2021"]),
            ("Patient?birthdate=1974", &["d1974"]),
        ],
    )
    .await;
}

/// A search value with a time: its range is one second, which contains no day-precision
/// birthDate (R4 search.html#date).
#[tokio::test]
async fn birthdate_against_a_datetime_value() {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;

    check(
        &app,
        &[
            ("Patient?birthdate=2020-03-04T10:00:00Z", &[]),
            (
                "Patient?birthdate=gt2020-03-04T10:00:00Z",
                &["y2020", "m2020", "d2020", "d2021"],
            ),
            (
                "Patient?birthdate=lt2020-03-04T10:00:00Z",
                &["d1974", "y2020", "m2020", "d2020"],
            ),
            ("Patient?birthdate=sa2020-03-04T10:00:00Z", &["d2021"]),
        ],
    )
    .await;
}

/// `ap` is "approximately", with a margin the server chooses (10% of the distance to now is
/// recommended). 1974-12-25 is within any reasonable margin of 1975; 2020 is not.
#[tokio::test]
async fn birthdate_approximately() {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;

    check(
        &app,
        &[
            ("Patient?birthdate=ap1974-12-25", &["d1974"]),
            ("Patient?birthdate=ap1975-01", &["d1974"]),
            ("Patient?birthdate=ap1950", &[]),
            ("Patient?birthdate:missing=true", &["unborn"]),
            (
                "Patient?birthdate:missing=false",
                &["d1974", "y2020", "m2020", "d2020", "d2021"],
            ),
        ],
    )
    .await;
}

/// A Period is the range from its start to its end; without an end it goes on for ever.
#[tokio::test]
async fn periods_with_every_prefix() {
    let app = spawn_app().await;
    put_all(&app, &encounters()).await;

    check(
        &app,
        &[
            ("Encounter?date=2020-01", &["jan"]),
            ("Encounter?date=2020", &["jan", "morning"]),
            ("Encounter?date=2020-01-15", &[]),
            ("Encounter?date=ne2020", &["open"]),
            ("Encounter?date=ne2020-01", &["open", "morning"]),
            ("Encounter?date=gt2020-01-15", &["jan", "open", "morning"]),
            ("Encounter?date=lt2020-01-15", &["jan"]),
            ("Encounter?date=ge2020-02-01", &["open", "morning"]),
            ("Encounter?date=le2020-03-04", &["jan", "morning"]),
            ("Encounter?date=sa2020-02", &["open", "morning"]),
            ("Encounter?date=sa2020-01-15", &["open", "morning"]),
            ("Encounter?date=eb2020-03", &["jan"]),
            ("Encounter?date=eb2020-03-05", &["jan", "morning"]),
            ("Encounter?date=gt2030", &["open"]),
            ("Encounter?date=lt2019", &[]),
            ("Encounter?date:missing=true", &["undated"]),
        ],
    )
    .await;
}

/// Times with an offset are compared as instants: 10:00+01:00 is 09:00Z.
#[tokio::test]
async fn datetimes_respect_time_zones() {
    let app = spawn_app().await;
    put_all(&app, &encounters()).await;

    check(
        &app,
        &[
            // 11:00+01:00 is 10:00Z: the morning encounter runs until 10:30Z.
            (
                "Encounter?date=gt2020-03-04T11:00:00+01:00",
                &["open", "morning"],
            ),
            ("Encounter?date=gt2020-03-04T11:00:00Z", &["open"]),
            // Hours and minutes without seconds.
            (
                "Encounter?date=gt2020-03-04T11:00+01:00",
                &["open", "morning"],
            ),
            // 09:30+01:00 is 08:30Z, before the encounter started.
            ("Encounter?date=lt2020-03-04T09:30:00+01:00", &["jan"]),
            ("Encounter?date=lt2020-03-04T09:30:00Z", &["jan", "morning"]),
            (
                "Encounter?date=sa2020-03-04T08:59:00Z",
                &["open", "morning"],
            ),
            (
                "Encounter?date=sa2020-03-04T09:59:00+01:00",
                &["open", "morning"],
            ),
            ("Encounter?date=sa2020-03-04T09:59:00Z", &["open"]),
            (
                "Encounter?date=eb2020-03-04T11:31:00+01:00",
                &["jan", "morning"],
            ),
            ("Encounter?date=eb2020-03-04T11:31:00+02:00", &["jan"]),
        ],
    )
    .await;
}

/// Observation `date` covers every type of `effective[x]`: a dateTime, a Period and an
/// instant are each their own range.
#[tokio::test]
async fn choice_types_are_each_their_own_range() {
    let app = spawn_app().await;
    let obs = |id: &str, element: &str, value: Value| {
        let mut o = json!({ "resourceType": "Observation", "id": id, "status": "final",
                            "code": { "text": "Weight" } });
        o[element] = value;
        o
    };
    put_all(
        &app,
        &[
            obs("at-ten", "effectiveDateTime", json!("2021-05-05T10:00:00Z")),
            obs(
                "ten-days",
                "effectivePeriod",
                json!({ "start": "2021-05-01", "end": "2021-05-10" }),
            ),
            obs(
                "at-noon",
                "effectiveInstant",
                json!("2021-05-05T12:00:00.000Z"),
            ),
            obs("on-day", "effectiveDateTime", json!("2021-05-05")),
        ],
    )
    .await;

    check(
        &app,
        &[
            (
                "Observation?date=2021-05-05",
                &["at-ten", "at-noon", "on-day"],
            ),
            (
                "Observation?date=2021-05",
                &["at-ten", "ten-days", "at-noon", "on-day"],
            ),
            ("Observation?date=gt2021-05-05", &["ten-days"]),
            ("Observation?date=lt2021-05-05", &["ten-days"]),
            (
                "Observation?date=ge2021-05-05",
                &["at-ten", "ten-days", "at-noon", "on-day"],
            ),
            ("Observation?date=2021-05-05T10:00:00Z", &["at-ten"]),
            (
                "Observation?date=gt2021-05-05T11:00:00Z",
                &["ten-days", "at-noon", "on-day"],
            ),
            ("Observation?date=sa2021-05-05T11:00:00Z", &["at-noon"]),
        ],
    )
    .await;
}
