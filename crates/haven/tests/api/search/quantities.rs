//! number, quantity and composite parameters (R4 search.html#number, #quantity,
//! #composite).
//!
//! Without a prefix a number stands for the range its significant figures imply (`100` is
//! [99.5, 100.5), `1e2` is [95, 105)); with `gt`, `lt`, `ge` or `le` it is exact.

use serde_json::{Value, json};

use super::{check, put_all};
use crate::helpers::spawn_app;

const UCUM: &str = "http://unitsofmeasure.org";

fn risk_assessments() -> Vec<Value> {
    let ra = |id: &str, probability: Option<f64>| {
        let mut prediction = json!({ "outcome": { "text": "Stroke" } });
        if let Some(p) = probability {
            prediction["probabilityDecimal"] = json!(p);
        }
        json!({ "resourceType": "RiskAssessment", "id": id, "status": "final",
                "subject": { "reference": "Patient/pat" }, "prediction": [prediction] })
    };
    vec![
        ra("ra-50", Some(0.5)),
        ra("ra-52", Some(0.52)),
        ra("ra-80", Some(0.8)),
        ra("ra-25", Some(0.25)),
        ra("ra-none", None),
    ]
}

fn observation(id: &str, loinc: &str) -> Value {
    json!({ "resourceType": "Observation", "id": id, "status": "final",
            "code": { "coding": [{ "system": "http://loinc.org", "code": loinc }] } })
}

fn quantities() -> Vec<Value> {
    let with = |mut o: Value, quantity: Value| {
        o["valueQuantity"] = quantity;
        o
    };
    let mut none = observation("q-none", "29463-7");
    none["valueString"] = json!("not measured");
    vec![
        with(
            observation("q-mg", "2339-0"),
            json!({ "value": 5.4, "unit": "mg", "system": UCUM, "code": "mg" }),
        ),
        // Only a unit: `||mg` matches a code or a unit.
        with(
            observation("q-mg-unit", "2339-0"),
            json!({ "value": 5.4, "unit": "mg" }),
        ),
        with(
            observation("q-kg", "29463-7"),
            json!({ "value": 72.5, "unit": "kg", "system": UCUM, "code": "kg" }),
        ),
        with(
            observation("q-lb", "29463-7"),
            json!({ "value": 160, "unit": "lbs", "system": UCUM, "code": "[lb_av]" }),
        ),
        none,
    ]
}

/// Two blood pressures whose components are swapped in size: bp-2's diastolic is above 100,
/// its systolic below. A composite must pair a component's code with its own value.
fn blood_pressures() -> Vec<Value> {
    let bp = |id: &str, systolic: u32, diastolic: u32| {
        let component = |code: &str, value: u32| {
            json!({ "code": { "coding": [{ "system": "http://loinc.org", "code": code }] },
                    "valueQuantity": { "value": value, "unit": "mmHg", "system": UCUM,
                                       "code": "mm[Hg]" } })
        };
        let mut o = observation(id, "85354-6");
        o["component"] = json!([
            component("8480-6", systolic),
            component("8462-4", diastolic)
        ]);
        o
    };
    vec![bp("bp-1", 120, 80), bp("bp-2", 90, 130)]
}

#[tokio::test]
async fn numbers_with_precision_and_prefixes() {
    let app = spawn_app().await;
    put_all(&app, &risk_assessments()).await;

    check(
        &app,
        &[
            ("RiskAssessment?probability=0.5", &["ra-50", "ra-52"]),
            ("RiskAssessment?probability=eq0.5", &["ra-50", "ra-52"]),
            ("RiskAssessment?probability=0.50", &["ra-50"]),
            ("RiskAssessment?probability=5e-1", &["ra-50", "ra-52"]),
            ("RiskAssessment?probability=0.8", &["ra-80"]),
            ("RiskAssessment?probability=gt0.5", &["ra-52", "ra-80"]),
            ("RiskAssessment?probability=ge0.52", &["ra-52", "ra-80"]),
            ("RiskAssessment?probability=lt0.5", &["ra-25"]),
            ("RiskAssessment?probability=le0.5", &["ra-50", "ra-25"]),
            ("RiskAssessment?probability=ne0.5", &["ra-80", "ra-25"]),
            ("RiskAssessment?probability=ap0.8", &["ra-80"]),
            ("RiskAssessment?probability=gt1", &[]),
            ("RiskAssessment?probability:missing=true", &["ra-none"]),
        ],
    )
    .await;
}

/// search.html#quantity: `value|system|code` matches system and code; `value||code` matches
/// the code or the unit; a bare value matches whatever the unit.
#[tokio::test]
async fn quantities_with_units_and_prefixes() {
    let app = spawn_app().await;
    put_all(&app, &quantities()).await;

    check(
        &app,
        &[
            ("Observation?value-quantity=5.4", &["q-mg", "q-mg-unit"]),
            (
                "Observation?value-quantity=5.4|http://unitsofmeasure.org|mg",
                &["q-mg"],
            ),
            ("Observation?value-quantity=5.5||mg", &[]),
            ("Observation?value-quantity=5.4||kg", &[]),
            ("Observation?value-quantity=160||[lb_av]", &["q-lb"]),
            ("Observation?value-quantity=1.6e2||[lb_av]", &["q-lb"]),
            ("Observation?value-quantity=gt70", &["q-kg", "q-lb"]),
            ("Observation?value-quantity=gt70||kg", &["q-kg"]),
            (
                "Observation?value-quantity=ge72.5|http://unitsofmeasure.org|kg",
                &["q-kg"],
            ),
            ("Observation?value-quantity=lt72.5||kg", &[]),
            (
                "Observation?value-quantity=le5.4|http://unitsofmeasure.org|mg",
                &["q-mg"],
            ),
            (
                "Observation?value-quantity=ne72.5",
                &["q-mg", "q-mg-unit", "q-lb"],
            ),
            ("Observation?value-quantity:missing=true", &["q-none"]),
        ],
    )
    .await;
}

/// search.html#quantity: "`5.4||mg`: ... where the unit - either the code (code) or the stated
/// human unit (unit) are mg". A quantity with only `unit: "mg"`, or with code `[lb_av]` and
/// unit `lbs`, is found by its unit.
#[tokio::test]
async fn quantity_code_without_system_also_matches_the_unit() {
    let app = spawn_app().await;
    put_all(&app, &quantities()).await;

    check(
        &app,
        &[
            ("Observation?value-quantity=5.4||mg", &["q-mg", "q-mg-unit"]),
            (
                "Observation?value-quantity=5.40||mg",
                &["q-mg", "q-mg-unit"],
            ),
            ("Observation?value-quantity=5||mg", &["q-mg", "q-mg-unit"]),
            ("Observation?value-quantity=160||lbs", &["q-lb"]),
        ],
    )
    .await;
}

/// search.html#composite: both halves must hold for the same element (one component's
/// code with that component's value; the Observation's code with its value).
#[tokio::test]
async fn composites_pair_a_code_with_its_own_value() {
    let app = spawn_app().await;
    put_all(&app, &quantities()).await;
    put_all(&app, &blood_pressures()).await;

    check(
        &app,
        &[
            (
                "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100",
                &["bp-1"],
            ),
            (
                "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt100",
                &["bp-2"],
            ),
            (
                "Observation?component-code-value-quantity=8480-6$lt100",
                &["bp-2"],
            ),
            (
                "Observation?component-code-value-quantity=8480-6$120",
                &["bp-1"],
            ),
            ("Observation?component-code-value-quantity=8480-6$80", &[]),
            (
                "Observation?component-code-value-quantity=8480-6$120||mm[Hg]",
                &["bp-1"],
            ),
            (
                "Observation?component-code-value-quantity=8480-6$gt100,8462-4$gt100",
                &["bp-1", "bp-2"],
            ),
            (
                "Observation?code-value-quantity=http://loinc.org|29463-7$gt70",
                &["q-kg", "q-lb"],
            ),
            (
                "Observation?code-value-quantity=http://loinc.org|29463-7$gt70|http://unitsofmeasure.org|kg",
                &["q-kg"],
            ),
            (
                "Observation?code-value-quantity=http://loinc.org|2339-0$5.4",
                &["q-mg", "q-mg-unit"],
            ),
            (
                "Observation?code-value-quantity=http://loinc.org|29463-7$5.4",
                &[],
            ),
            ("Observation?code-value-quantity=85354-6$120", &[]),
        ],
    )
    .await;
}
