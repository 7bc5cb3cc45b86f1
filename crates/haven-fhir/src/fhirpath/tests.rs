//! Evaluation semantics of the subset, on small resources.

use serde_json::{Value, json};

use super::{Data, Expression, Item};

/// Evaluates `text` on `resource`; each result rendered as `type:value` (JSON for
/// objects, `?` for an unknown type).
fn eval(resource: &Value, text: &str) -> Vec<String> {
    let expression = Expression::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let map = resource.as_object().unwrap();
    expression.evaluate(map).iter().map(render).collect()
}

fn render(item: &Item<'_>) -> String {
    let ty = item.type_name().unwrap_or("?");
    let value = match item.data() {
        Data::Object(map) => Value::Object(map.clone()).to_string(),
        Data::Primitive(v) => v.to_string(),
        Data::Boolean(b) => b.to_string(),
        Data::Integer(i) => i.to_string(),
        Data::Decimal(d) | Data::String(d) => d.to_owned(),
        Data::Resolved => "resolved".to_owned(),
    };
    format!("{ty}:{value}")
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": "Glucose"},
        "subject": {"reference": "Patient/p1"},
        "performer": [
            {"reference": "https://other.example/fhir/Practitioner/pr1/_history/3"},
            {"reference": "urn:uuid:8c1e4b0e-6b8d-4a8e-9a43-0d6f5b1f6e11"},
            {"reference": "#org"},
            {"type": "Patient", "identifier": {"value": "x"}}
        ],
        "contained": [{"resourceType": "Organization", "id": "org"}],
        "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
        "component": [
            {"code": {"text": "a"}, "valueString": "high"},
            {"code": {"text": "b"}, "valueCodeableConcept": {"text": "low"}}
        ],
        "extension": [
            {"url": "http://example.org/ext/a", "valueString": "A"},
            {"url": "http://example.org/ext/b", "valueBoolean": true}
        ]
    })
}

#[test]
fn navigation_uses_the_model_for_choice_types() {
    let obs = observation();
    assert_eq!(
        eval(&obs, "Observation.value"),
        [r#"Quantity:{"value":5.4,"unit":"mmol/L"}"#]
    );
    assert_eq!(eval(&obs, "Observation.value.unit"), [r#"string:"mmol/L""#]);
    assert_eq!(
        eval(&obs, "Observation.component.value"),
        [r#"string:"high""#, r#"CodeableConcept:{"text":"low"}"#]
    );
    assert_eq!(
        eval(&obs, "Observation.code.coding.code"),
        [r#"code:"2339-0""#]
    );
    // Choice elements are reached by their model name only, as in FHIRPath.
    assert!(eval(&obs, "Observation.valueQuantity").is_empty());
    assert!(eval(&obs, "Observation.nothing").is_empty());
    // A type name at the start only matches the focus' type (or a base type).
    assert!(eval(&obs, "Patient.code").is_empty());
    assert_eq!(eval(&obs, "Resource.status"), [r#"code:"final""#]);
    assert_eq!(eval(&obs, "DomainResource.contained.id").len(), 1);
    // Contained resources are typed by their own resourceType.
    assert_eq!(eval(&obs, "contained").len(), 1);
    assert!(eval(&obs, "contained")[0].starts_with("Organization:"));
}

#[test]
fn type_operators_and_functions() {
    let obs = observation();
    assert_eq!(eval(&obs, "(Observation.value as Quantity).unit").len(), 1);
    assert!(eval(&obs, "Observation.value as CodeableConcept").is_empty());
    assert_eq!(
        eval(
            &obs,
            "(Observation.component.value as CodeableConcept).text"
        ),
        [r#"string:"low""#]
    );
    assert_eq!(
        eval(&obs, "Observation.component.value.as(string)").len(),
        1
    );
    assert_eq!(
        eval(&obs, "Observation.component.value.ofType(String)").len(),
        1
    );
    assert_eq!(
        eval(&obs, "Observation.value is Quantity"),
        ["boolean:true"]
    );
    assert_eq!(eval(&obs, "Observation.value.is(Range)"), ["boolean:false"]);
    // `is` needs a single item; on two it is an error in FHIRPath, empty here.
    assert!(eval(&obs, "Observation.component.value is string").is_empty());

    let condition = json!({"resourceType": "Condition", "onsetAge": {"value": 40, "code": "a"}});
    assert_eq!(eval(&condition, "Condition.onset.as(Age)").len(), 1);
    // Age derives from Quantity.
    assert_eq!(eval(&condition, "Condition.onset.as(Quantity)").len(), 1);
    assert!(eval(&condition, "Condition.onset.as(dateTime)").is_empty());
    let dated = json!({"resourceType": "Condition", "onsetDateTime": "2020-01-02"});
    assert_eq!(
        eval(&dated, "Condition.onset.as(DateTime)"),
        [r#"dateTime:"2020-01-02""#]
    );
}

#[test]
fn resolve_reads_the_target_type_from_the_reference() {
    let obs = observation();
    let types = |text: &str| -> Vec<String> { eval(&obs, text) };
    assert_eq!(types("Observation.subject.resolve()"), ["Patient:resolved"]);
    // Absolute URL with version; urn: unknown; #id from `contained`; else Reference.type.
    assert_eq!(
        types("Observation.performer.resolve()"),
        [
            "Practitioner:resolved",
            "Organization:resolved",
            "Patient:resolved"
        ]
    );
    assert_eq!(
        eval(
            &obs,
            "Observation.performer.where(resolve() is Practitioner)"
        )
        .len(),
        1
    );
    assert_eq!(
        eval(&obs, "Observation.subject.where(resolve() is Patient)"),
        [r#"Reference:{"reference":"Patient/p1"}"#]
    );
    assert!(eval(&obs, "Observation.subject.where(resolve() is Group)").is_empty());
    // Resolved items have no content to navigate.
    assert!(eval(&obs, "Observation.subject.resolve().id").is_empty());
}

#[test]
fn where_equality_and_logic() {
    let patient = json!({
        "resourceType": "Patient",
        "telecom": [
            {"system": "phone", "value": "555"},
            {"system": "email", "value": "a@b.c"},
            {"value": "no system"}
        ],
        "deceasedDateTime": "2020-01-01"
    });
    assert_eq!(
        eval(&patient, "Patient.telecom.where(system='email').value"),
        [r#"string:"a@b.c""#]
    );
    // `!=` with an empty side is empty, so the item without a system is not selected.
    assert_eq!(
        eval(&patient, "Patient.telecom.where(system != 'email').value"),
        [r#"string:"555""#]
    );
    assert_eq!(
        eval(
            &patient,
            "Patient.telecom.where(system = 'phone' or system = 'email')"
        )
        .len(),
        2
    );
    assert_eq!(
        eval(&patient, "Patient.telecom.where(system.exists().not())").len(),
        1
    );
    let deceased = "Patient.deceased.exists() and Patient.deceased != false";
    assert_eq!(eval(&patient, deceased), ["boolean:true"]);
    let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
    assert_eq!(eval(&alive, deceased), ["boolean:false"]);
    let unknown = json!({"resourceType": "Patient"});
    assert_eq!(eval(&unknown, deceased), ["boolean:false"]);
    // Three-valued logic.
    assert!(eval(&unknown, "Patient.active and true").is_empty());
    assert_eq!(eval(&unknown, "Patient.active or true"), ["boolean:true"]);
    assert_eq!(
        eval(&unknown, "Patient.active and false"),
        ["boolean:false"]
    );
    // Numbers compare by value; objects by content; different kinds are unequal.
    let obs = observation();
    assert_eq!(
        eval(&obs, "Observation.value.value = 5.40"),
        ["boolean:true"]
    );
    assert_eq!(eval(&obs, "Observation.value.value = 5"), ["boolean:false"]);
    assert_eq!(eval(&obs, "Observation.status = true"), ["boolean:false"]);
    assert_eq!(
        eval(&obs, "Observation.code.coding = Observation.code.coding"),
        ["boolean:true"]
    );
}

#[test]
fn collection_functions_indexers_and_unions() {
    let obs = observation();
    assert_eq!(
        eval(&obs, "Observation.component.first().value"),
        [r#"string:"high""#]
    );
    assert_eq!(
        eval(&obs, "Observation.component.last().code.text"),
        [r#"string:"b""#]
    );
    assert_eq!(
        eval(&obs, "Observation.component[1].code.text"),
        [r#"string:"b""#]
    );
    assert!(eval(&obs, "Observation.component[5]").is_empty());
    assert_eq!(
        eval(&obs, "Observation.component.empty()"),
        ["boolean:false"]
    );
    assert_eq!(eval(&obs, "Observation.note.empty()"), ["boolean:true"]);
    assert_eq!(
        eval(&obs, "Observation.status.hasValue()"),
        ["boolean:true"]
    );
    assert_eq!(eval(&obs, "Observation.code.hasValue()"), ["boolean:false"]);
    // A union keeps each node once.
    assert_eq!(
        eval(&obs, "Observation.status | Observation.status").len(),
        1
    );
    assert_eq!(
        eval(
            &obs,
            "Observation.component | Observation.component.first()"
        )
        .len(),
        2
    );
    assert_eq!(eval(&obs, "'a' | 'a' | 'b'"), ["string:a", "string:b"]);
    assert!(eval(&obs, "{}").is_empty());
    assert_eq!(eval(&obs, "$this.status"), [r#"code:"final""#]);
}

#[test]
fn extensions_by_url() {
    let obs = observation();
    assert_eq!(
        eval(
            &obs,
            "Observation.extension('http://example.org/ext/a').value"
        ),
        [r#"string:"A""#]
    );
    assert_eq!(
        eval(
            &obs,
            "Observation.extension.where(url = 'http://example.org/ext/b').value"
        ),
        ["boolean:true"]
    );
    assert!(eval(&obs, "Observation.extension('http://example.org/none')").is_empty());
}

#[test]
fn resource_variable_and_evaluation_on_a_focus() {
    let seq = json!({
        "resourceType": "MolecularSequence",
        "referenceSeq": {"chromosome": {"text": "1"}},
        "variant": [{"start": 10, "end": 11}]
    });
    let map = seq.as_object().unwrap();
    let variants = Expression::parse("MolecularSequence.variant").unwrap();
    let focus = variants.evaluate(map);
    assert_eq!(focus.len(), 1);
    let start = Expression::parse("start").unwrap();
    let values: Vec<String> = start.evaluate_on(map, &focus).iter().map(render).collect();
    assert_eq!(values, ["integer:10"]);
    let chromosome = Expression::parse("%resource.referenceSeq.chromosome.text").unwrap();
    let values: Vec<String> = chromosome
        .evaluate_on(map, &focus)
        .iter()
        .map(render)
        .collect();
    assert_eq!(values, [r#"string:"1""#]);
}

#[test]
fn unknown_resource_types_navigate_as_plain_json() {
    let odd = json!({"resourceType": "Custom", "a": {"b": ["x", null, "y"]}});
    assert_eq!(eval(&odd, "a.b"), [r#"?:"x""#, r#"?:"y""#]);
    assert!(eval(&odd, "Patient.a").is_empty());
}

#[test]
fn display_is_canonical_and_reparses() {
    for text in [
        "Patient.name.where(use = 'official' and given.exists()).family",
        "(Observation.value as Quantity) | Observation.component.value.ofType(Quantity)",
        "Bundle.entry[0].resource",
        "extension('http://x/it\\'s').value",
    ] {
        let parsed = Expression::parse(text).unwrap();
        let again = Expression::parse(&parsed.to_string()).unwrap();
        assert_eq!(parsed, again, "{text}");
    }
}
