//! The resources of the CRUD scenario: one small clinical episode, linked by real references.
//!
//! An organisation employs a practitioner who sees a patient at a location; the encounter yields
//! an observation, a prescription and a claim against the patient's coverage. Every resource is
//! valid R4 (the server validates and a 400 would count as an error), including the elements R4
//! makes mandatory: `Encounter.class`, `Coverage.payor`, `Claim.insurance.coverage`,
//! `Claim.priority`, and so on.

use serde_json::{Value, json};

/// `Type/id`, as a Reference.
fn reference(type_name: &str, id: &str) -> Value {
    json!({ "reference": format!("{type_name}/{id}") })
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code, "display": display }] })
}

pub fn organization() -> Value {
    json!({
        "resourceType": "Organization",
        "identifier": [{ "system": "http://hl7.org/fhir/sid/us-npi", "value": "1144221847" }],
        "active": true,
        "type": [coding("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")],
        "name": "Haven Bench General Hospital",
        "telecom": [{ "system": "phone", "value": "+1 555 0100", "use": "work" }],
        "address": [{ "line": ["1 Hospital Way"], "city": "Springfield", "postalCode": "01101", "country": "US" }]
    })
}

pub fn practitioner() -> Value {
    json!({
        "resourceType": "Practitioner",
        "identifier": [{ "system": "http://hl7.org/fhir/sid/us-npi", "value": "9941339108" }],
        "active": true,
        "name": [{ "use": "official", "family": "Careful", "given": ["Adam"], "prefix": ["Dr"] }],
        "telecom": [{ "system": "email", "value": "adam.careful@example.org", "use": "work" }],
        "gender": "male"
    })
}

pub fn location(org: &str) -> Value {
    json!({
        "resourceType": "Location",
        "status": "active",
        "name": "General Medicine Ward 3",
        "mode": "instance",
        "physicalType": coding("http://terminology.hl7.org/CodeSystem/location-physical-type", "wa", "Ward"),
        "managingOrganization": reference("Organization", org)
    })
}

/// The same Patient as the ceiling's fixed body, so read responses have the same size.
pub fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": "http://hospital.example.org/mrn", "value": "MRN-000123" }],
        "active": true,
        "name": [{ "use": "official", "family": "Chalmers", "given": ["Peter", "James"] }],
        "telecom": [{ "system": "phone", "value": "(03) 5555 6473", "use": "work" }],
        "gender": "male",
        "birthDate": "1974-12-25",
        "address": [{ "use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999" }]
    })
}

pub fn managed_patient(org: &str) -> Value {
    let mut p = patient();
    p["managingOrganization"] = reference("Organization", org);
    p
}

pub fn encounter(patient: &str, practitioner: &str, location: &str, org: &str) -> Value {
    json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory" },
        "type": [coding("http://snomed.info/sct", "185349003", "Encounter for check up")],
        "subject": reference("Patient", patient),
        "participant": [{ "individual": reference("Practitioner", practitioner) }],
        "period": { "start": "2024-03-01T09:00:00Z", "end": "2024-03-01T09:30:00Z" },
        "location": [{ "location": reference("Location", location) }],
        "serviceProvider": reference("Organization", org)
    })
}

pub fn observation(patient: &str, encounter: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")],
        "code": coding("http://loinc.org", "8867-4", "Heart rate"),
        "subject": reference("Patient", patient),
        "encounter": reference("Encounter", encounter),
        "effectiveDateTime": "2024-03-01T09:10:00Z",
        "valueQuantity": { "value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min" }
    })
}

pub fn medication_request(patient: &str, encounter: &str, practitioner: &str) -> Value {
    json!({
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": coding("http://www.nlm.nih.gov/research/umls/rxnorm", "197361", "Amlodipine 5 MG Oral Tablet"),
        "subject": reference("Patient", patient),
        "encounter": reference("Encounter", encounter),
        "authoredOn": "2024-03-01T09:25:00Z",
        "requester": reference("Practitioner", practitioner),
        "dosageInstruction": [{
            "sequence": 1,
            "text": "5 mg once daily",
            "timing": { "repeat": { "frequency": 1, "period": 1, "periodUnit": "d" } }
        }]
    })
}

pub fn coverage(patient: &str, org: &str) -> Value {
    json!({
        "resourceType": "Coverage",
        "status": "active",
        "subscriberId": "AB-9876543",
        "beneficiary": reference("Patient", patient),
        "relationship": coding("http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self", "Self"),
        "payor": [reference("Organization", org)]
    })
}

pub fn claim(patient: &str, org: &str, encounter: &str, coverage: &str) -> Value {
    json!({
        "resourceType": "Claim",
        "status": "active",
        "type": coding("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional"),
        "use": "claim",
        "patient": reference("Patient", patient),
        "created": "2024-03-01T10:00:00Z",
        "provider": reference("Organization", org),
        "priority": coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal"),
        "insurance": [{ "sequence": 1, "focal": true, "coverage": reference("Coverage", coverage) }],
        "item": [{
            "sequence": 1,
            "productOrService": coding("http://snomed.info/sct", "185349003", "Encounter for check up"),
            "encounter": [reference("Encounter", encounter)],
            "unitPrice": { "value": 125.00, "currency": "USD" },
            "net": { "value": 125.00, "currency": "USD" }
        }],
        "total": { "value": 125.00, "currency": "USD" }
    })
}

/// The body of an update: the created resource with its id and one more business identifier
/// (every resource of the cycle has `identifier`).
pub fn revised(mut created: Value, id: &str) -> Value {
    created["id"] = Value::String(id.to_owned());
    let tag = json!({ "system": "http://bench.haven.example/revision", "value": "2" });
    match created.get_mut("identifier").and_then(Value::as_array_mut) {
        Some(list) => list.push(tag),
        None => created["identifier"] = json!([tag]),
    }
    created
}
