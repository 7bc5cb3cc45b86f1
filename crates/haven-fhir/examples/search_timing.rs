//! Rough timing of the search tables and of extraction; run with
//! `cargo run --release -p haven-fhir --example search_timing`.
//! Budgets: first use of the search tables < 50 ms, `extract_all` of a typical Observation
//! < 50 µs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use haven_fhir::json::{JsonLimits, parse_resource_json};
use haven_fhir::search::extract_all;
use haven_fhir::{ResourceType, definitions};

const OBSERVATION: &str = r#"{
  "resourceType": "Observation", "id": "f001",
  "meta": {"versionId": "1", "lastUpdated": "2024-03-05T10:31:00.123Z"},
  "identifier": [{"use": "official", "system": "http://www.bmc.nl/zorgportal/identifiers/observations", "value": "6323"}],
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}]}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8", "display": "Glucose [Moles/volume] in Blood"}], "text": "Glucose"},
  "subject": {"reference": "Patient/f001", "display": "P. van de Heuvel"},
  "encounter": {"reference": "Encounter/e1"},
  "effectivePeriod": {"start": "2013-04-02T09:30:10+01:00"},
  "issued": "2013-04-03T15:30:10.000+01:00",
  "performer": [{"reference": "Practitioner/f005", "display": "A. Langeveld"}],
  "valueQuantity": {"value": 6.3, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
  "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "H", "display": "High"}]}],
  "referenceRange": [{"low": {"value": 3.1, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    "high": {"value": 6.2, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}]
}"#;

fn main() {
    let start = Instant::now();
    let defs = definitions();
    let model = start.elapsed();
    let observation = ResourceType::parse("Observation").expect("R4 type");
    let start = Instant::now();
    let count = defs.search_params(observation).count();
    println!(
        "first use of the search tables: {:?} ({} parameters; the type model before it took {model:?})",
        start.elapsed(),
        defs.all_search_params().len()
    );

    let obs =
        parse_resource_json(OBSERVATION.as_bytes(), &JsonLimits::default()).expect("valid JSON");
    let start = Instant::now();
    let values = extract_all(&obs);
    println!("first extract_all: {:?}", start.elapsed());
    // Best and median of 40 batches: the build machine is shared, and the best batch is the
    // least disturbed one.
    let mut batches: Vec<Duration> = (0..40)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..500 {
                black_box(extract_all(black_box(&obs)));
            }
            start.elapsed() / 500
        })
        .collect();
    batches.sort_unstable();
    println!(
        "extract_all of a {} byte Observation ({count} parameters, {} values): best {:?}, median {:?} per call",
        OBSERVATION.len(),
        values.len(),
        batches[0],
        batches[batches.len() / 2]
    );
}
