//! Rough timing of model loading and validation; run with
//! `cargo run --release -p haven-fhir --example validate_timing`.
//! Budgets: first use of the definitions < 50 ms, a typical 2 KB Patient ~20 µs.

use std::hint::black_box;
use std::time::Instant;

use haven_fhir::json::{JsonLimits, parse_resource_json};
use haven_fhir::{definitions, validate_resource};

const PATIENT: &str = r#"{
  "resourceType": "Patient", "id": "example",
  "meta": {"versionId": "1", "lastUpdated": "2023-05-01T10:00:00.123Z"},
  "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter James Chalmers</div>"},
  "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "Sydney", "country": "AU"}}],
  "identifier": [{"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
    "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345", "period": {"start": "2001-05-06"}, "assigner": {"display": "Acme Healthcare"}}],
  "active": true,
  "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}, {"use": "usual", "given": ["Jim"]}],
  "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}, {"system": "email", "value": "p@example.org"}],
  "gender": "male", "birthDate": "1974-12-25", "deceasedBoolean": false,
  "address": [{"use": "home", "type": "both", "line": ["534 Erewhon St"], "city": "PleasantVille", "district": "Rainbow",
    "state": "Vic", "postalCode": "3999", "period": {"start": "1974-12-25"}}],
  "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
    "name": {"family": "du Marché", "given": ["Bénédicte"]}, "telecom": [{"system": "phone", "value": "+33 (237) 998327"}],
    "gender": "female", "organization": {"reference": "Organization/1", "display": "Walt Disney Corporation"}, "period": {"start": "2012"}}],
  "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-AU"}]}, "preferred": true}],
  "generalPractitioner": [{"reference": "Practitioner/p1"}],
  "managingOrganization": {"reference": "Organization/1"}
}"#;

fn main() {
    let start = Instant::now();
    let defs = definitions();
    println!(
        "first use of definitions: {:?} ({} elements)",
        start.elapsed(),
        defs.element_count()
    );

    let patient =
        parse_resource_json(PATIENT.as_bytes(), &JsonLimits::default()).expect("valid JSON");
    assert!(
        validate_resource(&patient).is_empty(),
        "{:?}",
        validate_resource(&patient)
    );
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        black_box(validate_resource(black_box(&patient)));
    }
    println!(
        "validate {} byte Patient: {:?} per call",
        PATIENT.len(),
        start.elapsed() / n
    );

    let start = Instant::now();
    for _ in 0..n {
        black_box(parse_resource_json(black_box(PATIENT.as_bytes()), &JsonLimits::default()).ok());
    }
    println!(
        "parse_resource_json of the same: {:?} per call",
        start.elapsed() / n
    );
}
