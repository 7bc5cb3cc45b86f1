//! Realistic resources that must validate clean, and a sweep over every resource type.

mod common;

use common::{assert_valid, validate};
use haven_fhir::{IssueCode, definitions};
use serde_json::json;

fn full_patient() -> serde_json::Value {
    json!({
        "resourceType": "Patient",
        "id": "example",
        "meta": {"versionId": "1", "lastUpdated": "2023-05-01T10:00:00.123Z", "profile": ["http://example.org/StructureDefinition/p"]},
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Peter James Chalmers</div>"},
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
             "valueAddress": {"city": "Sydney", "country": "AU"}},
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
             "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"}},
                {"url": "text", "valueString": "White"}
             ]}
        ],
        "identifier": [{
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": "12345",
            "period": {"start": "2001-05-06"},
            "assigner": {"display": "Acme Healthcare"}
        }],
        "active": true,
        "name": [
            {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
            {"use": "usual", "given": ["Jim"]},
            {"use": "maiden", "family": "Windsor", "given": ["Peter", "James"], "period": {"end": "2002"}}
        ],
        "telecom": [
            {"use": "home"},
            {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
            {"system": "phone", "value": "(03) 3410 5613", "use": "mobile", "rank": 2},
            {"system": "phone", "value": "(03) 5555 8834", "use": "old", "period": {"end": "2014"}}
        ],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "deceasedBoolean": false,
        "address": [{
            "use": "home", "type": "both", "text": "534 Erewhon St PeasantVille, Rainbow, Vic  3999",
            "line": ["534 Erewhon St"], "city": "PleasantVille", "district": "Rainbow", "state": "Vic",
            "postalCode": "3999", "period": {"start": "1974-12-25"}
        }],
        "maritalStatus": {"text": "married"},
        "multipleBirthInteger": 1,
        "contact": [{
            "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}],
            "name": {"family": "du Marché", "_family": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix", "valueString": "VV"}]}, "given": ["Bénédicte"]},
            "telecom": [{"system": "phone", "value": "+33 (237) 998327"}],
            "gender": "female",
            "organization": {"reference": "Organization/1", "display": "Walt Disney Corporation"},
            "period": {"start": "2012"}
        }],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-AU"}]}, "preferred": true}],
        "generalPractitioner": [{"reference": "Practitioner/p1"}],
        "managingOrganization": {"reference": "https://example.org/fhir/Organization/1"}
    })
}

#[test]
fn patient_with_everything_is_valid() {
    assert_valid(&full_patient());
}

#[test]
fn observation_with_quantity_and_components_is_valid() {
    assert_valid(&json!({
        "resourceType": "Observation",
        "id": "blood-pressure",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
        "subject": {"reference": "Patient/example"},
        "effectiveDateTime": "2012-09-17",
        "issued": "2012-09-17T15:30:00.000+01:00",
        "performer": [{"reference": "Practitioner/example"}],
        "valueQuantity": {"value": 1.50, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "interpretation": [{"text": "normal"}],
        "referenceRange": [{"low": {"value": 1}, "high": {"value": 2.5}}],
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
             "referenceRange": [{"text": "< 120"}]},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 60, "comparator": "<", "unit": "mmHg"}},
            {"code": {"text": "note"}, "valueString": "taken sitting"}
        ]
    }));
}

#[test]
fn transaction_bundle_is_valid() {
    assert_valid(&json!({
        "resourceType": "Bundle",
        "id": "bundle-transaction",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": {"resourceType": "Patient", "active": true, "name": [{"family": "Smith"}]},
                "request": {"method": "POST", "url": "Patient"}
            },
            {
                "fullUrl": "urn:uuid:88f151c0-a954-468a-88bd-5ae15c08e059",
                "resource": {
                    "resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                    "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
                    "valueQuantity": {"value": 72.5, "unit": "kg"}
                },
                "request": {"method": "POST", "url": "Observation"}
            },
            {"request": {"method": "DELETE", "url": "Patient/234"}},
            {"request": {"method": "GET", "url": "Patient?name=peter"}}
        ]
    }));
}

#[test]
fn questionnaire_with_nested_items_is_valid() {
    assert_valid(&json!({
        "resourceType": "Questionnaire",
        "id": "q1",
        "status": "active",
        "item": [{
            "linkId": "1", "text": "Group", "type": "group",
            "item": [
                {"linkId": "1.1", "text": "Name?", "type": "string", "required": true},
                {"linkId": "1.2", "type": "group", "item": [
                    {"linkId": "1.2.1", "type": "choice", "answerOption": [{"valueCoding": {"code": "y"}}, {"valueString": "no"}],
                     "enableWhen": [{"question": "1.1", "operator": "exists", "answerBoolean": true}]}
                ]}
            ]
        }]
    }));
}

#[test]
fn binary_is_valid() {
    assert_valid(&json!({
        "resourceType": "Binary", "id": "b1", "contentType": "application/pdf",
        "securityContext": {"reference": "DocumentReference/d1"},
        "data": "JVBERi0xLjQKJcfs\nj6IKNSAwIG9iago="
    }));
}

#[test]
fn resource_with_contained_is_valid() {
    assert_valid(&json!({
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "contained": [
            {"resourceType": "Medication", "id": "med1", "code": {"text": "Amoxicillin 250mg"}},
            {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Careful"}]},
            {"resourceType": "Provenance", "id": "prov", "target": [{"reference": "#"}], "recorded": "2023-01-01T00:00:00Z",
             "agent": [{"who": {"reference": "#pr1"}}]}
        ],
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "#med1"},
        "subject": {"reference": "Patient/example", "display": "Donald Duck"},
        "requester": {"reference": "#pr1"},
        "dosageInstruction": [{
            "sequence": 1, "text": "one capsule three times daily",
            "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d", "timeOfDay": ["08:00:00", "13:00:00.5"]}},
            "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "capsule"}}]
        }]
    }));
}

#[test]
fn aligned_primitive_arrays_are_valid() {
    assert_valid(&json!({
        "resourceType": "Patient",
        "name": [{
            "given": ["Peter", null, "James"],
            "_given": [null, {"extension": [{"url": "http://example.org/x", "valueString": "nick"}]}, {"id": "g3"}]
        }]
    }));
    // A primitive with only extensions (no value) is allowed.
    assert_valid(&json!({
        "resourceType": "Patient",
        "_gender": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}
    }));
}

#[test]
fn parameters_and_outcomes_embed_resources() {
    assert_valid(&json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "resource": {"resourceType": "Patient", "id": "p", "active": false}},
            {"name": "count", "valueInteger": -5},
            {"name": "nested", "part": [{"name": "inner", "valueDecimal": 1e-3}]}
        ]
    }));
    assert_valid(&json!({
        "resourceType": "Bundle", "type": "transaction-response",
        "entry": [{"response": {"status": "201 Created", "location": "Patient/1/_history/1",
            "outcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}}}]
    }));
}

#[test]
fn every_resource_type_validates_without_panicking() {
    let defs = definitions();
    assert!(defs.resource_types().len() > 140);
    for rt in defs.resource_types() {
        let issues = validate(&json!({"resourceType": rt.as_str(), "id": "x"}));
        for issue in &issues {
            assert_eq!(issue.code, IssueCode::Required, "{rt}: {issue}");
            assert!(issue.location.starts_with(&format!("{rt}.")), "{issue}");
        }
    }
}
