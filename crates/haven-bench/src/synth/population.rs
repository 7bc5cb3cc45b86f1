//! The synthetic population of the search benchmark: patient `k` of a seed, always the same.
//!
//! Each patient is one transaction Bundle of about ten resources: the Patient (1-2 names, an
//! MRN unique to the patient, SSN, address, telecom, gender, birth date 1930-2020), 1-2
//! Encounters, 3-7 Observations (vital signs and labs with UCUM values, 2015-2025), one
//! Condition, one MedicationRequest written by the one shared Practitioner, and now and then a
//! Procedure, an Immunization and (for 2 % of patients) a rare lab test.
//!
//! Patient `k` has the id `pat-000000k` and is written with PUT, so the benchmark knows every
//! patient's id, MRN, names, birth date and observations without asking the server: it
//! generates [`Person::generate`] itself and picks query values that exist, and it knows how
//! many resources each query must match. The other resources are POSTed with `urn:uuid:`
//! references between them, as an importer would.

use serde_json::{Value, json};
use time::{Date, Month};

use super::Rng;
use super::vocab::{
    CITIES, COMMON_LABS, CONDITIONS, Coded, ENCOUNTER_TYPES, FAMILIES, GIVEN_FEMALE, GIVEN_MALE,
    Lab, MEDICATIONS, PROCEDURES, RARE_LABS, STREETS, VACCINES, family_weight,
};

/// Bump whenever the generated data changes: data sets kept by `--reuse-data` are named with
/// it, so one made by another generator is never taken for the current one.
pub const GENERATOR_VERSION: u32 = 1;
/// The system of the patients' medical record numbers (HL7's example organisation OID).
pub const MRN_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5";
pub const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const UCUM: &str = "http://unitsofmeasure.org";
/// The one Practitioner every MedicationRequest names as requester, created before loading.
pub const PRACTITIONER_ID: &str = "bench-practitioner";

/// Per mille of patients with one rare lab test (each of the 20 rare codes: about 0.1 %).
const RARE_PER_MILLE: u64 = 20;
const PROCEDURE_PERCENT: u64 = 30;
const IMMUNIZATION_PERCENT: u64 = 30;

/// The LOINC codes of the rare lab tests.
pub fn rare_codes() -> Vec<&'static str> {
    RARE_LABS.iter().map(|l| l.code).collect()
}

/// The id of patient `k`.
pub fn patient_id(k: u64) -> String {
    format!("pat-{k:07}")
}

/// The medical record number of patient `k` (in [`MRN_SYSTEM`]).
pub fn mrn(k: u64) -> String {
    format!("MRN-{:07}", k + 1)
}

/// A point in time, to the minute, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    pub date: Date,
    /// Minutes since midnight.
    pub minute: u16,
}

impl Moment {
    fn plus_minutes(self, minutes: u16) -> Self {
        Self {
            minute: (self.minute + minutes).min(23 * 60 + 59),
            ..self
        }
    }

    pub fn date_time(self) -> String {
        format!(
            "{}T{:02}:{:02}:00Z",
            self.date,
            self.minute / 60,
            self.minute % 60
        )
    }
}

/// A HumanName.
#[derive(Debug, Clone)]
pub struct Name {
    pub use_: &'static str,
    /// `None` for a `usual` name that is only a given name.
    pub family: Option<&'static str>,
    pub given: Vec<&'static str>,
}

#[derive(Debug, Clone)]
struct Visit {
    url: String,
    kind: usize,
    start: Moment,
    minutes: u16,
}

#[derive(Debug, Clone)]
struct Measurement {
    lab: &'static Lab,
    visit: usize,
    at: Moment,
    value: f64,
}

/// One generated patient with everything in their Bundle.
#[derive(Debug, Clone)]
pub struct Person {
    pub k: u64,
    gender: &'static str,
    pub names: Vec<Name>,
    pub birth: Date,
    ssn: String,
    phone: String,
    email: Option<String>,
    address: (String, &'static str, &'static str, String),
    visits: Vec<Visit>,
    observations: Vec<Measurement>,
    condition: (&'static Coded, usize),
    medication: (&'static Coded, usize),
    procedure: Option<(&'static Coded, usize)>,
    immunization: Option<(&'static Coded, usize)>,
    uuid_seed: u64,
}

/// What the benchmark needs to know of a patient to query it and count matches.
#[derive(Debug, Clone)]
pub struct Facts {
    pub k: u64,
    /// Family names of every name (official and maiden).
    pub families: Vec<&'static str>,
    pub birth: Date,
    /// LOINC code and effective time of each Observation.
    pub observations: Vec<(&'static str, Moment)>,
}

/// Resources of a Bundle (or of a whole population) by type, in Bundle order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub patient: u64,
    pub encounter: u64,
    pub observation: u64,
    pub condition: u64,
    pub medication_request: u64,
    pub procedure: u64,
    pub immunization: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.patient
            + self.encounter
            + self.observation
            + self.condition
            + self.medication_request
            + self.procedure
            + self.immunization
    }

    pub fn add(&mut self, other: Counts) {
        self.patient += other.patient;
        self.encounter += other.encounter;
        self.observation += other.observation;
        self.condition += other.condition;
        self.medication_request += other.medication_request;
        self.procedure += other.procedure;
        self.immunization += other.immunization;
    }

    /// `(type, count)` pairs, for reports.
    pub fn by_type(&self) -> [(&'static str, u64); 7] {
        [
            ("Patient", self.patient),
            ("Encounter", self.encounter),
            ("Observation", self.observation),
            ("Condition", self.condition),
            ("MedicationRequest", self.medication_request),
            ("Procedure", self.procedure),
            ("Immunization", self.immunization),
        ]
    }
}

fn weighted<'a, T>(rng: &mut Rng, items: &'a [T], weight: impl Fn(usize, &T) -> u32) -> &'a T {
    let total: u64 = items
        .iter()
        .enumerate()
        .map(|(i, t)| u64::from(weight(i, t)))
        .sum();
    let mut left = rng.next_u64() % total.max(1);
    for (i, item) in items.iter().enumerate() {
        let w = u64::from(weight(i, item));
        if left < w {
            return item;
        }
        left -= w;
    }
    &items[items.len() - 1]
}

fn day(year: i32, month: Month, day: u8) -> Date {
    Date::from_calendar_date(year, month, day).unwrap_or(Date::MIN)
}

/// A date in `from..=to`.
fn date_between(rng: &mut Rng, from: Date, to: Date) -> Date {
    let (a, b) = (
        from.to_julian_day(),
        to.to_julian_day().max(from.to_julian_day()),
    );
    let offset = rng.between(0, u64::try_from(b - a).unwrap_or(0));
    Date::from_julian_day(a + i32::try_from(offset).unwrap_or(0)).unwrap_or(from)
}

fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// A measured value as JSON: an integer when the lab has no decimals.
fn quantity_value(value: f64, decimals: i32) -> Value {
    if decimals == 0 {
        Value::from(value.round() as i64)
    } else {
        Value::from(value)
    }
}

impl Person {
    /// Patient `k` of the population made from `seed`.
    pub fn generate(seed: u64, k: u64) -> Self {
        let mut rng = Rng::new(seed ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ 0x0050_4f50);
        let roll = rng.between(0, 99);
        let gender = match roll {
            0 => "unknown",
            1..=50 => "female",
            _ => "male",
        };
        let given_list: &[&str] = match gender {
            "female" => &GIVEN_FEMALE,
            "male" => &GIVEN_MALE,
            _ if rng.next_u64().is_multiple_of(2) => &GIVEN_FEMALE,
            _ => &GIVEN_MALE,
        };
        let family = *weighted(&mut rng, &FAMILIES, |i, _| family_weight(i));
        let first = *rng.pick(given_list);
        let mut given = vec![first];
        if rng.between(0, 99) < 60 {
            given.push(*rng.pick(given_list));
        }
        let mut names = vec![Name {
            use_: "official",
            family: Some(family),
            given,
        }];
        let second = rng.between(0, 99);
        if gender == "female" && second < 20 {
            names.push(Name {
                use_: "maiden",
                family: Some(*weighted(&mut rng, &FAMILIES, |i, _| family_weight(i))),
                given: vec![first],
            });
        } else if second >= 92 {
            names.push(Name {
                use_: "usual",
                family: None,
                given: vec![*rng.pick(given_list)],
            });
        }
        let birth = date_between(
            &mut rng,
            day(1930, Month::January, 1),
            day(2020, Month::December, 31),
        );
        let ssn = format!("999-{:02}-{:04}", rng.between(10, 99), rng.between(1, 9999));
        let phone = format!(
            "+1-{}-555-{:04}",
            rng.between(201, 989),
            rng.between(0, 9999)
        );
        let email = (rng.between(0, 99) < 60).then(|| {
            let clean = |s: &str| s.to_ascii_lowercase().replace('\'', "");
            format!(
                "{}.{}{}@example.com",
                clean(first),
                clean(family),
                rng.between(1, 99)
            )
        });
        let (city, state, zip) = *rng.pick(&CITIES);
        let address = (
            format!("{} {}", rng.between(1, 4999), rng.pick(&STREETS)),
            city,
            state,
            format!("{zip}{:02}", rng.between(1, 99)),
        );

        // Care starts in 2015, or at birth for those born later.
        let care_from = birth.max(day(2015, Month::January, 1));
        let care_to = day(2025, Month::December, 31);
        let visit_count = 1 + usize::from(rng.next_u64().is_multiple_of(2));
        let mut visits: Vec<Visit> = (0..visit_count)
            .map(|_| {
                let kind_index = {
                    let chosen = weighted(&mut rng, &ENCOUNTER_TYPES, |_, t| t.0.weight);
                    ENCOUNTER_TYPES
                        .iter()
                        .position(|t| std::ptr::eq(t, chosen))
                        .unwrap_or(0)
                };
                Visit {
                    url: format!("urn:uuid:{}", rng.uuid()),
                    kind: kind_index,
                    start: Moment {
                        date: date_between(&mut rng, care_from, care_to),
                        minute: u16::try_from(rng.between(7 * 60, 18 * 60)).unwrap_or(600),
                    },
                    minutes: u16::try_from(rng.between(15, 60)).unwrap_or(30),
                }
            })
            .collect();
        visits.sort_by_key(|v| (v.start.date, v.start.minute));

        let measure = |rng: &mut Rng, lab: &'static Lab| {
            let visit = usize::try_from(rng.next_u64() % visits.len() as u64).unwrap_or(0);
            let spread = (rng.next_u64() % 10_000) as f64 / 10_000.0;
            Measurement {
                lab,
                visit,
                at: visits[visit]
                    .start
                    .plus_minutes(u16::try_from(rng.between(5, 25)).unwrap_or(10)),
                value: rounded(lab.low + (lab.high - lab.low) * spread, lab.decimals),
            }
        };
        let observation_count = rng.between(3, 7);
        let mut observations: Vec<Measurement> = (0..observation_count)
            .map(|_| {
                let lab = weighted(&mut rng, &COMMON_LABS, |_, l| l.weight);
                measure(&mut rng, lab)
            })
            .collect();
        if rng.between(0, 999) < RARE_PER_MILLE {
            let lab = rng.pick(&RARE_LABS);
            observations.push(measure(&mut rng, lab));
        }
        let last = visits.len() - 1;
        let condition = (weighted(&mut rng, &CONDITIONS, |_, c| c.weight), 0);
        let medication = (weighted(&mut rng, &MEDICATIONS, |_, c| c.weight), last);
        let procedure = (rng.between(0, 99) < PROCEDURE_PERCENT)
            .then(|| (weighted(&mut rng, &PROCEDURES, |_, c| c.weight), last));
        let immunization = (rng.between(0, 99) < IMMUNIZATION_PERCENT)
            .then(|| (weighted(&mut rng, &VACCINES, |_, c| c.weight), 0));
        Self {
            k,
            gender,
            names,
            birth,
            ssn,
            phone,
            email,
            address,
            visits,
            observations,
            condition,
            medication,
            procedure,
            immunization,
            uuid_seed: rng.next_u64(),
        }
    }

    pub fn facts(&self) -> Facts {
        Facts {
            k: self.k,
            families: self.names.iter().filter_map(|n| n.family).collect(),
            birth: self.birth,
            observations: self
                .observations
                .iter()
                .map(|o| (o.lab.code, o.at))
                .collect(),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            patient: 1,
            encounter: self.visits.len() as u64,
            observation: self.observations.len() as u64,
            condition: 1,
            medication_request: 1,
            procedure: u64::from(self.procedure.is_some()),
            immunization: u64::from(self.immunization.is_some()),
        }
    }

    /// The patient's transaction Bundle (serialised JSON).
    pub fn bundle(&self) -> Vec<u8> {
        let mut rng = Rng::new(self.uuid_seed);
        let id = patient_id(self.k);
        let subject = json!({ "reference": format!("Patient/{id}") });
        let practitioner = json!({ "reference": format!("Practitioner/{PRACTITIONER_ID}") });
        let mut entries = Vec::with_capacity(12);
        entries.push(json!({
            "resource": self.patient_resource(&id),
            "request": { "method": "PUT", "url": format!("Patient/{id}") }
        }));
        let mut post = |resource: Value, full_url: String| {
            let type_name = resource["resourceType"].clone();
            entries.push(json!({
                "fullUrl": full_url,
                "resource": resource,
                "request": { "method": "POST", "url": type_name }
            }));
        };
        for v in &self.visits {
            let (kind, class, class_display) = &ENCOUNTER_TYPES[v.kind];
            post(
                json!({
                    "resourceType": "Encounter",
                    "status": "finished",
                    "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class, "display": class_display },
                    "type": [concept(SNOMED, kind.code, kind.display)],
                    "subject": subject,
                    "participant": [{ "individual": practitioner }],
                    "period": { "start": v.start.date_time(), "end": v.start.plus_minutes(v.minutes).date_time() }
                }),
                v.url.clone(),
            );
        }
        for o in &self.observations {
            let category_display = if o.lab.category == "vital-signs" {
                "Vital Signs"
            } else {
                "Laboratory"
            };
            post(
                json!({
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [concept("http://terminology.hl7.org/CodeSystem/observation-category", o.lab.category, category_display)],
                    "code": concept(LOINC, o.lab.code, o.lab.display),
                    "subject": subject,
                    "encounter": { "reference": self.visits[o.visit].url },
                    "effectiveDateTime": o.at.date_time(),
                    "issued": o.at.plus_minutes(30).date_time(),
                    "valueQuantity": {
                        "value": quantity_value(o.value, o.lab.decimals),
                        "unit": o.lab.unit,
                        "system": UCUM,
                        "code": o.lab.unit
                    }
                }),
                format!("urn:uuid:{}", rng.uuid()),
            );
        }
        let (condition, at) = self.condition;
        post(
            json!({
                "resourceType": "Condition",
                "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                "category": [concept("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item", "Problem List Item")],
                "code": concept(SNOMED, condition.code, condition.display),
                "subject": subject,
                "encounter": { "reference": self.visits[at].url },
                "onsetDateTime": self.visits[at].start.date_time(),
                "recordedDate": self.visits[at].start.plus_minutes(20).date_time()
            }),
            format!("urn:uuid:{}", rng.uuid()),
        );
        let (medication, at) = self.medication;
        post(
            json!({
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": concept("http://www.nlm.nih.gov/research/umls/rxnorm", medication.code, medication.display),
                "subject": subject,
                "encounter": { "reference": self.visits[at].url },
                "authoredOn": self.visits[at].start.plus_minutes(25).date_time(),
                "requester": practitioner,
                "dosageInstruction": [{
                    "sequence": 1,
                    "text": "one tablet daily",
                    "timing": { "repeat": { "frequency": 1, "period": 1, "periodUnit": "d" } }
                }]
            }),
            format!("urn:uuid:{}", rng.uuid()),
        );
        if let Some((procedure, at)) = self.procedure {
            post(
                json!({
                    "resourceType": "Procedure",
                    "status": "completed",
                    "code": concept(SNOMED, procedure.code, procedure.display),
                    "subject": subject,
                    "encounter": { "reference": self.visits[at].url },
                    "performedDateTime": self.visits[at].start.plus_minutes(15).date_time()
                }),
                format!("urn:uuid:{}", rng.uuid()),
            );
        }
        if let Some((vaccine, at)) = self.immunization {
            post(
                json!({
                    "resourceType": "Immunization",
                    "status": "completed",
                    "vaccineCode": concept("http://hl7.org/fhir/sid/cvx", vaccine.code, vaccine.display),
                    "patient": subject,
                    "encounter": { "reference": self.visits[at].url },
                    "occurrenceDateTime": self.visits[at].start.plus_minutes(20).date_time(),
                    "primarySource": true
                }),
                format!("urn:uuid:{}", rng.uuid()),
            );
        }
        let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
        serde_json::to_vec(&bundle).unwrap_or_default()
    }

    fn patient_resource(&self, id: &str) -> Value {
        let names: Vec<Value> = self
            .names
            .iter()
            .map(|n| {
                let mut name = json!({ "use": n.use_, "given": n.given });
                if let Some(family) = n.family {
                    name["family"] = Value::from(family);
                }
                name
            })
            .collect();
        let mut telecom = vec![json!({ "system": "phone", "value": self.phone, "use": "home" })];
        if let Some(email) = &self.email {
            telecom.push(json!({ "system": "email", "value": email }));
        }
        let (line, city, state, postal) = &self.address;
        json!({
            "resourceType": "Patient",
            "id": id,
            "identifier": [
                {
                    "use": "usual",
                    "type": concept("http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical record number"),
                    "system": MRN_SYSTEM,
                    "value": mrn(self.k)
                },
                {
                    "type": concept("http://terminology.hl7.org/CodeSystem/v2-0203", "SS", "Social Security number"),
                    "system": "http://hl7.org/fhir/sid/us-ssn",
                    "value": self.ssn
                }
            ],
            "active": true,
            "name": names,
            "telecom": telecom,
            "gender": self.gender,
            "birthDate": self.birth.to_string(),
            "address": [{
                "use": "home",
                "line": [line],
                "city": city,
                "state": state,
                "postalCode": postal,
                "country": "US"
            }]
        })
    }
}

/// The shared Practitioner (PUT to `Practitioner/{PRACTITIONER_ID}` before loading).
pub fn practitioner() -> Value {
    json!({
        "resourceType": "Practitioner",
        "id": PRACTITIONER_ID,
        "identifier": [{ "system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999994" }],
        "active": true,
        "name": [{ "use": "official", "family": "Okonkwo", "given": ["Adaeze"], "prefix": ["Dr."] }],
        "gender": "female"
    })
}

fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code, "display": display }], "text": display })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patients_are_deterministic_and_distinct() {
        assert_eq!(
            Person::generate(42, 7).bundle(),
            Person::generate(42, 7).bundle()
        );
        assert_ne!(
            Person::generate(42, 7).bundle(),
            Person::generate(42, 8).bundle()
        );
        assert_ne!(
            Person::generate(42, 7).bundle(),
            Person::generate(43, 7).bundle()
        );
    }

    #[test]
    fn a_bundle_holds_what_the_counts_and_facts_say() {
        for k in 0..200 {
            let person = Person::generate(1, k);
            let bundle: Value = serde_json::from_slice(&person.bundle()).unwrap();
            let entries = bundle["entry"].as_array().unwrap();
            let count = |t: &str| {
                entries
                    .iter()
                    .filter(|e| e["resource"]["resourceType"] == t)
                    .count() as u64
            };
            let c = person.counts();
            assert_eq!(
                c.by_type().map(|(t, _)| count(t)),
                c.by_type().map(|(_, n)| n)
            );
            assert_eq!(entries.len() as u64, c.total());
            let patient = &entries[0]["resource"];
            assert_eq!(patient["id"], patient_id(k));
            assert_eq!(patient["identifier"][0]["value"], mrn(k));
            assert_eq!(patient["birthDate"], person.birth.to_string());
            // Every urn:uuid reference points at an entry of the same Bundle.
            let urls: Vec<&str> = entries
                .iter()
                .filter_map(|e| e["fullUrl"].as_str())
                .collect();
            for e in entries {
                for key in ["subject", "patient", "encounter"] {
                    if let Some(r) = e["resource"][key]["reference"].as_str() {
                        assert!(
                            urls.contains(&r) || r == format!("Patient/{}", patient_id(k)),
                            "{r}"
                        );
                    }
                }
            }
            let facts = person.facts();
            let codes: Vec<&str> = entries
                .iter()
                .filter(|e| e["resource"]["resourceType"] == "Observation")
                .map(|e| e["resource"]["code"]["coding"][0]["code"].as_str().unwrap())
                .collect();
            assert_eq!(
                codes,
                facts.observations.iter().map(|o| o.0).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn about_ten_resources_per_patient_and_realistic_spreads() {
        let mut total = Counts::default();
        let mut rare = 0;
        let mut births = Vec::new();
        for k in 0..5000 {
            let p = Person::generate(42, k);
            total.add(p.counts());
            rare += p
                .observations
                .iter()
                .filter(|o| RARE_LABS.iter().any(|l| l.code == o.lab.code))
                .count();
            births.push(p.birth);
            for o in &p.observations {
                assert!((2015..=2025).contains(&o.at.date.year()), "{:?}", o.at);
                assert!(o.at.date >= p.birth);
            }
        }
        let per_patient = total.total() as f64 / 5000.0;
        assert!((9.5..11.0).contains(&per_patient), "{per_patient}");
        assert!((50..150).contains(&rare), "{rare} rare labs");
        assert!(births.iter().any(|b| b.year() < 1935));
        assert!(births.iter().any(|b| b.year() > 2015));
    }
}
