//! Synthetic data: patients for the import scenario (one transaction Bundle of 100 resources
//! each, below) and the population of the search benchmark ([`population`]).
//!
//! A Bundle holds 1 Patient, 5 Encounters, 80 Observations (the same 9 vital signs and 7 labs at
//! every encounter), 5 Conditions, 5 MedicationRequests, 2 Procedures and 2 Immunizations, linked
//! with `urn:uuid:` references that the server rewrites (R4 `http.html#trules`). Generation is
//! deterministic: the same seed gives the same bytes on every machine, so two runs import the
//! same data. The generator is a xorshift64* PRNG seeded through SplitMix64; statistical quality
//! is irrelevant here, reproducibility is the point.

pub mod population;
mod vocab;

use serde_json::{Value, json};

/// Resources per generated Bundle.
pub const RESOURCES_PER_BUNDLE: u64 = 100;
const ENCOUNTERS: usize = 5;

/// A small deterministic PRNG (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // SplitMix64 spreads nearby seeds; `| 1` keeps the xorshift state non-zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let i = usize::try_from(self.next_u64() % items.len() as u64).unwrap_or(0);
        &items[i]
    }

    /// A random (version 4 shaped) UUID.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0x0fff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
}

/// (LOINC code, display, category, UCUM unit, low, high, decimals)
type Measure = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    f64,
    f64,
    i32,
);

const MEASURES: [Measure; 16] = [
    (
        "8867-4",
        "Heart rate",
        "vital-signs",
        "/min",
        50.0,
        110.0,
        0,
    ),
    (
        "9279-1",
        "Respiratory rate",
        "vital-signs",
        "/min",
        12.0,
        22.0,
        0,
    ),
    (
        "8310-5",
        "Body temperature",
        "vital-signs",
        "Cel",
        36.0,
        38.5,
        1,
    ),
    (
        "8480-6",
        "Systolic blood pressure",
        "vital-signs",
        "mm[Hg]",
        100.0,
        160.0,
        0,
    ),
    (
        "8462-4",
        "Diastolic blood pressure",
        "vital-signs",
        "mm[Hg]",
        60.0,
        100.0,
        0,
    ),
    (
        "29463-7",
        "Body weight",
        "vital-signs",
        "kg",
        45.0,
        120.0,
        1,
    ),
    (
        "8302-2",
        "Body height",
        "vital-signs",
        "cm",
        150.0,
        195.0,
        1,
    ),
    (
        "39156-5",
        "Body mass index",
        "vital-signs",
        "kg/m2",
        18.0,
        35.0,
        1,
    ),
    (
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "vital-signs",
        "%",
        92.0,
        100.0,
        0,
    ),
    (
        "2339-0",
        "Glucose [Mass/volume] in Blood",
        "laboratory",
        "mg/dL",
        70.0,
        180.0,
        0,
    ),
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "laboratory",
        "%",
        4.5,
        9.5,
        1,
    ),
    (
        "2093-3",
        "Cholesterol [Mass/volume] in Serum or Plasma",
        "laboratory",
        "mg/dL",
        140.0,
        280.0,
        0,
    ),
    (
        "2571-8",
        "Triglyceride [Mass/volume] in Serum or Plasma",
        "laboratory",
        "mg/dL",
        50.0,
        300.0,
        0,
    ),
    (
        "2085-9",
        "Cholesterol in HDL [Mass/volume] in Serum or Plasma",
        "laboratory",
        "mg/dL",
        30.0,
        90.0,
        0,
    ),
    (
        "18262-6",
        "Cholesterol in LDL [Mass/volume] in Serum or Plasma by Direct assay",
        "laboratory",
        "mg/dL",
        60.0,
        190.0,
        0,
    ),
    (
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "laboratory",
        "mg/dL",
        0.6,
        1.4,
        1,
    ),
];

const CONDITIONS: [(&str, &str); 8] = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder, systemic arterial"),
    ("55822004", "Hyperlipidemia"),
    ("195967001", "Asthma"),
    ("40055000", "Chronic sinusitis"),
    ("10509002", "Acute bronchitis"),
    ("162864005", "Body mass index 30+ - obesity"),
    ("444814009", "Viral sinusitis"),
];

const MEDICATIONS: [(&str, &str); 5] = [
    ("197361", "Amlodipine 5 MG Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    (
        "860975",
        "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
    ),
    ("259255", "Atorvastatin 80 MG Oral Tablet"),
    ("313782", "Acetaminophen 325 MG Oral Tablet"),
];

const PROCEDURES: [(&str, &str); 3] = [
    ("430193006", "Medication Reconciliation (procedure)"),
    (
        "710824005",
        "Assessment of health and social care needs (procedure)",
    ),
    ("171207006", "Depression screening (procedure)"),
];

const VACCINES: [(&str, &str); 3] = [
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("113", "Td (adult) preservative free"),
    ("133", "Pneumococcal conjugate PCV 13"),
];

const FAMILIES: [&str; 10] = [
    "Smith", "Okafor", "Nguyen", "Garcia", "Kowalski", "Haddad", "Tanaka", "Jensen", "Moreau",
    "Silva",
];
const GIVEN_FEMALE: [&str; 6] = ["Amara", "Lena", "Sofia", "Mei", "Ines", "Freya"];
const GIVEN_MALE: [&str; 6] = ["Tomas", "Kenji", "Omar", "Lukas", "Mateo", "Ravi"];
const CITIES: [(&str, &str); 4] = [
    ("Springfield", "01101"),
    ("Riverton", "82501"),
    ("Lakeside", "92040"),
    ("Fairview", "37062"),
];

fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code, "display": display }], "text": display })
}

fn entry(full_url: &str, resource: Value) -> Value {
    let type_name = resource["resourceType"].clone();
    json!({ "fullUrl": full_url, "resource": resource, "request": { "method": "POST", "url": type_name } })
}

/// A measured value with the given number of decimals (an integer when there are none).
fn measured(value: f64, decimals: i32) -> Value {
    if decimals == 0 {
        return Value::from(value.round() as i64);
    }
    let scale = 10f64.powi(decimals);
    Value::from((value * scale).round() / scale)
}

/// A calendar moment, kept as numbers so it can be formatted as R4 date or dateTime.
#[derive(Clone, Copy)]
struct Moment {
    year: u64,
    month: u64,
    day: u64,
    minute_of_day: u64,
}

impl Moment {
    fn random(rng: &mut Rng, from_year: u64, to_year: u64) -> Self {
        Self {
            year: rng.between(from_year, to_year),
            month: rng.between(1, 12),
            day: rng.between(1, 28),
            minute_of_day: rng.between(8 * 60, 16 * 60),
        }
    }

    fn plus_minutes(self, minutes: u64) -> Self {
        Self {
            minute_of_day: (self.minute_of_day + minutes).min(23 * 60 + 59),
            ..self
        }
    }

    fn date(self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    fn date_time(self) -> String {
        format!(
            "{}T{:02}:{:02}:00Z",
            self.date(),
            self.minute_of_day / 60,
            self.minute_of_day % 60
        )
    }
}

/// One synthetic patient's record as a transaction Bundle (serialised JSON).
pub fn patient_bundle(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut entries = Vec::with_capacity(100);

    let patient_url = format!("urn:uuid:{}", rng.uuid());
    let patient = json!({ "reference": patient_url });
    let female = rng.next_u64().is_multiple_of(2);
    let given = if female {
        &GIVEN_FEMALE[..]
    } else {
        &GIVEN_MALE[..]
    };
    let (city, postal) = *rng.pick(&CITIES);
    let born = Moment::random(&mut rng, 1940, 2005);
    entries.push(entry(
        &patient_url,
        json!({
            "resourceType": "Patient",
            "identifier": [{
                "type": concept("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number"),
                "system": "http://hospital.example.org/mrn",
                "value": format!("MRN-{:08}", rng.between(0, 99_999_999))
            }],
            "active": true,
            "name": [{ "use": "official", "family": rng.pick(&FAMILIES), "given": [rng.pick(given), rng.pick(given)] }],
            "telecom": [{ "system": "phone", "value": format!("555-{:04}", rng.between(0, 9999)), "use": "home" }],
            "gender": if female { "female" } else { "male" },
            "birthDate": born.date(),
            "address": [{
                "use": "home",
                "line": [format!("{} Main St", rng.between(1, 999))],
                "city": city,
                "postalCode": postal,
                "country": "US"
            }]
        }),
    ));

    let mut encounters = Vec::with_capacity(ENCOUNTERS);
    for _ in 0..ENCOUNTERS {
        let url = format!("urn:uuid:{}", rng.uuid());
        let start = Moment::random(&mut rng, 2015, 2024);
        entries.push(entry(
            &url,
            json!({
                "resourceType": "Encounter",
                "status": "finished",
                "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory" },
                "type": [concept("http://snomed.info/sct", "185349003", "Encounter for check up")],
                "subject": patient,
                "period": { "start": start.date_time(), "end": start.plus_minutes(30).date_time() }
            }),
        ));
        encounters.push((url, start));
    }

    for (url, start) in &encounters {
        let encounter = json!({ "reference": url });
        for (code, display, category, unit, lo, hi, decimals) in MEASURES {
            let spread = (rng.next_u64() % 10_000) as f64 / 10_000.0;
            entries.push(entry(
                &format!("urn:uuid:{}", rng.uuid()),
                json!({
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [concept("http://terminology.hl7.org/CodeSystem/observation-category", category, category)],
                    "code": concept("http://loinc.org", code, display),
                    "subject": patient,
                    "encounter": encounter,
                    "effectiveDateTime": start.plus_minutes(10).date_time(),
                    "valueQuantity": {
                        "value": measured(lo + (hi - lo) * spread, decimals),
                        "unit": unit,
                        "system": "http://unitsofmeasure.org",
                        "code": unit
                    }
                }),
            ));
        }
    }

    for (url, start) in &encounters {
        let (code, display) = *rng.pick(&CONDITIONS);
        entries.push(entry(
            &format!("urn:uuid:{}", rng.uuid()),
            json!({
                "resourceType": "Condition",
                "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                "category": [concept("http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", "Encounter Diagnosis")],
                "code": concept("http://snomed.info/sct", code, display),
                "subject": patient,
                "encounter": { "reference": url },
                "onsetDateTime": start.date_time(),
                "recordedDate": start.plus_minutes(20).date_time()
            }),
        ));
    }

    for (url, start) in &encounters {
        let (code, display) = *rng.pick(&MEDICATIONS);
        entries.push(entry(
            &format!("urn:uuid:{}", rng.uuid()),
            json!({
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": concept("http://www.nlm.nih.gov/research/umls/rxnorm", code, display),
                "subject": patient,
                "encounter": { "reference": url },
                "authoredOn": start.plus_minutes(25).date_time(),
                "dosageInstruction": [{
                    "sequence": 1,
                    "text": "one tablet daily",
                    "timing": { "repeat": { "frequency": 1, "period": 1, "periodUnit": "d" } }
                }]
            }),
        ));
    }

    for (url, start) in encounters.iter().take(2) {
        let (code, display) = *rng.pick(&PROCEDURES);
        entries.push(entry(
            &format!("urn:uuid:{}", rng.uuid()),
            json!({
                "resourceType": "Procedure",
                "status": "completed",
                "code": concept("http://snomed.info/sct", code, display),
                "subject": patient,
                "encounter": { "reference": url },
                "performedDateTime": start.plus_minutes(15).date_time()
            }),
        ));
    }
    for (url, start) in encounters.iter().skip(ENCOUNTERS - 2) {
        let (code, display) = *rng.pick(&VACCINES);
        entries.push(entry(
            &format!("urn:uuid:{}", rng.uuid()),
            json!({
                "resourceType": "Immunization",
                "status": "completed",
                "vaccineCode": concept("http://hl7.org/fhir/sid/cvx", code, display),
                "patient": patient,
                "encounter": { "reference": url },
                "occurrenceDateTime": start.plus_minutes(20).date_time(),
                "primarySource": true
            }),
        ));
    }

    debug_assert_eq!(entries.len() as u64, RESOURCES_PER_BUNDLE);
    let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
    serde_json::to_vec(&bundle).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_deterministic_and_distinct() {
        assert_eq!(patient_bundle(7), patient_bundle(7));
        assert_ne!(patient_bundle(7), patient_bundle(8));
    }

    #[test]
    fn a_bundle_holds_the_advertised_resources() {
        let bundle: Value = serde_json::from_slice(&patient_bundle(1)).unwrap();
        let entries = bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len() as u64, RESOURCES_PER_BUNDLE);
        let count = |t: &str| {
            entries
                .iter()
                .filter(|e| e["resource"]["resourceType"] == t)
                .count()
        };
        assert_eq!(
            [
                count("Patient"),
                count("Encounter"),
                count("Observation"),
                count("Condition"),
                count("MedicationRequest"),
                count("Procedure"),
                count("Immunization")
            ],
            [1, 5, 80, 5, 5, 2, 2]
        );
        // Every reference points at an entry of the same Bundle.
        let urls: Vec<&str> = entries
            .iter()
            .map(|e| e["fullUrl"].as_str().unwrap())
            .collect();
        for e in entries {
            for key in ["subject", "patient", "encounter"] {
                if let Some(r) = e["resource"][key]["reference"].as_str() {
                    assert!(urls.contains(&r), "{r} is not in the Bundle");
                }
            }
        }
    }

    #[test]
    fn uuids_have_the_version_4_shape() {
        let u = Rng::new(3).uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }
}
