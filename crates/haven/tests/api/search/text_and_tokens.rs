//! string, token and uri parameters, their modifiers, and AND/OR (R4 search.html#string,
//! #token, #uri, #combining).

use serde_json::{Value, json};

use super::{check, put_all};
use crate::helpers::spawn_app;

const MRN: &str = "http://hospital.example/mrn";
const V2_0203: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const SSN: &str = "http://hl7.org/fhir/sid/us-ssn";

/// Five patients: three whose family names start with "Mull" once accents are folded, one
/// other, one with almost nothing (for `:missing` and `:not`).
fn patients() -> Vec<Value> {
    vec![
        json!({ "resourceType": "Patient", "id": "mueller", "active": true,
                "name": [{ "family": "Müller", "given": ["Jürgen"] }], "gender": "male",
                "identifier": [{ "system": MRN, "value": "MRN-1",
                                 "type": { "coding": [{ "system": V2_0203, "code": "MR" }],
                                           "text": "Medical record number" } }],
                "address": [{ "city": "Berlin" }] }),
        json!({ "resourceType": "Patient", "id": "muller", "active": true,
                "name": [{ "family": "Muller", "given": ["Anna", "Maria"] },
                         { "use": "maiden", "family": "Schmidt" }],
                "gender": "female",
                "identifier": [
                    { "system": MRN, "value": "MRN-2" },
                    { "system": SSN, "value": "123-45-6789",
                      "type": { "coding": [{ "system": V2_0203, "code": "SS" }] } }
                ],
                "address": [{ "city": "Bern" }] }),
        json!({ "resourceType": "Patient", "id": "mullins",
                "name": [{ "family": "Mullins", "given": ["Peter"] }], "gender": "other",
                "identifier": [{ "value": "LOCAL-7" }] }),
        json!({ "resourceType": "Patient", "id": "smith", "active": false,
                "name": [{ "family": "Smith", "given": ["Karl"] }], "gender": "unknown" }),
        json!({ "resourceType": "Patient", "id": "nameless" }),
    ]
}

fn observations() -> Vec<Value> {
    let obs = |id: &str, code: Value| json!({ "resourceType": "Observation", "id": id, "status": "final", "code": code });
    vec![
        obs(
            "obs-weight",
            json!({ "coding": [{ "system": "http://loinc.org", "code": "29463-7",
                                 "display": "Body weight" }],
                    "text": "Weight measured at intake" }),
        ),
        obs(
            "obs-glucose",
            json!({ "coding": [
                { "system": "http://snomed.info/sct", "code": "33747003",
                  "display": "Glucose measurement" },
                { "system": "http://loinc.org", "code": "2339-0" }
            ] }),
        ),
        obs(
            "obs-local",
            json!({ "coding": [{ "code": "local-1" }], "text": "Local test" }),
        ),
        // The same code as obs-weight, in another system.
        obs(
            "obs-heart",
            json!({ "coding": [{ "system": "http://acme.example/codes", "code": "29463-7" }],
                    "text": "Heart rate" }),
        ),
    ]
}

/// search.html#string: "a field matches a string query if the value of the field equals or
/// starts with the supplied parameter value, after both have been normalized by case and
/// accent".
#[tokio::test]
async fn strings_match_prefixes_ignoring_case_and_accents() {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;

    check(
        &app,
        &[
            ("Patient?name=MULL", &["mueller", "muller", "mullins"]),
            ("Patient?name=müll", &["mueller", "muller", "mullins"]),
            ("Patient?family=muller", &["mueller", "muller"]),
            ("Patient?family=MÜLLER", &["mueller", "muller"]),
            ("Patient?family=mullins", &["mullins"]),
            ("Patient?given=pet", &["mullins"]),
            ("Patient?given=maria", &["muller"]),
            ("Patient?given=jurgen", &["mueller"]),
            ("Patient?name=karl", &["smith"]),
            ("Patient?name=ith", &[]),
            ("Patient?family=jürgen", &[]),
            ("Patient?address-city=ber", &["mueller", "muller"]),
            ("Patient?address-city=berlin", &["mueller"]),
            ("Patient?address=berl", &["mueller"]),
            // Any of the values of a repeating element.
            ("Patient?family=schm", &["muller"]),
        ],
    )
    .await;
}

/// Accent-insensitivity holds whatever Unicode form the accent is written in: "ë" as one
/// code point (NFC) or as "e" plus a combining diaeresis (NFD).
#[tokio::test]
async fn accents_match_in_either_unicode_form() {
    let app = spawn_app().await;
    let named = |id: &str, family: &str| json!({ "resourceType": "Patient", "id": id, "name": [{ "family": family }] });
    put_all(
        &app,
        &[
            named("nfc", "Zo\u{00eb}"),
            named("nfd", "Zoe\u{0308}"),
            named("plain", "Zoe"),
            named("other", "Zora"),
        ],
    )
    .await;

    check(
        &app,
        &[
            ("Patient?family=zo\u{00eb}", &["nfc", "nfd", "plain"]),
            ("Patient?family=zoe\u{0308}", &["nfc", "nfd", "plain"]),
            ("Patient?family=ZOE", &["nfc", "nfd", "plain"]),
            ("Patient?family=zo", &["nfc", "nfd", "plain", "other"]),
        ],
    )
    .await;
}

/// search.html#modifiers: `:exact` compares the whole string, case and accents included;
/// `:contains` matches anywhere in the string.
#[tokio::test]
async fn string_modifiers_exact_contains_and_missing() {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;

    check(
        &app,
        &[
            ("Patient?family:exact=Müller", &["mueller"]),
            ("Patient?family:exact=Muller", &["muller"]),
            ("Patient?family:exact=muller", &[]),
            ("Patient?family:exact=Mull", &[]),
            ("Patient?family:contains=LLIN", &["mullins"]),
            (
                "Patient?family:contains=ll",
                &["mueller", "muller", "mullins"],
            ),
            ("Patient?name:contains=ARL", &["smith"]),
            ("Patient?family:contains=xyz", &[]),
            ("Patient?name:missing=true", &["nameless"]),
            (
                "Patient?name:missing=false",
                &["mueller", "muller", "mullins", "smith"],
            ),
        ],
    )
    .await;
}

/// search.html#token: `code`, `system|code`, `|code` (no system) and `system|` (any code).
#[tokio::test]
async fn token_forms_on_codes_identifiers_and_booleans() {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;
    put_all(&app, &observations()).await;

    check(
        &app,
        &[
            ("Patient?gender=male", &["mueller"]),
            ("Patient?gender=female,other", &["muller", "mullins"]),
            // Codes are case-sensitive (AdministrativeGender is), and so is _id.
            ("Patient?gender=Male", &[]),
            ("Patient?_id=MUELLER", &[]),
            ("Patient?active=true", &["mueller", "muller"]),
            ("Patient?active=false", &["smith"]),
            ("Patient?identifier=MRN-1", &["mueller"]),
            ("Patient?identifier=123-45-6789", &["muller"]),
            (
                "Patient?identifier=http://hospital.example/mrn|MRN-2",
                &["muller"],
            ),
            (
                "Patient?identifier=http://hospital.example/mrn|",
                &["mueller", "muller"],
            ),
            ("Patient?identifier=|LOCAL-7", &["mullins"]),
            ("Patient?identifier=|MRN-1", &[]),
            ("Patient?identifier=http://other.example|MRN-1", &[]),
            ("Observation?code=29463-7", &["obs-weight", "obs-heart"]),
            ("Observation?code=http://loinc.org|29463-7", &["obs-weight"]),
            (
                "Observation?code=http://loinc.org|",
                &["obs-weight", "obs-glucose"],
            ),
            ("Observation?code=|local-1", &["obs-local"]),
            ("Observation?code=|29463-7", &[]),
            (
                "Observation?code=http://loinc.org|2339-0,http://acme.example/codes|29463-7",
                &["obs-glucose", "obs-heart"],
            ),
        ],
    )
    .await;
}

/// search.html#token: `:not` includes resources without a value; `:text` searches
/// CodeableConcept.text, Coding.display and Identifier.type.text as a string; `:of-type`
/// matches the type and the value of one and the same Identifier.
#[tokio::test]
async fn token_modifiers_not_text_of_type_and_missing() {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;
    put_all(&app, &observations()).await;
    let mr = |value: &str| format!("Patient?identifier:of-type={V2_0203}|MR|{value}");
    let ss = format!("Patient?identifier:of-type={V2_0203}|SS|123-45-6789");
    let (mr1, mr_of_ssn, mr2) = (mr("MRN-1"), mr("123-45-6789"), mr("MRN-2"));

    check(
        &app,
        &[
            (
                "Patient?gender:not=male",
                &["muller", "mullins", "smith", "nameless"],
            ),
            // The negation applies to the set: neither male nor female.
            (
                "Patient?gender:not=male,female",
                &["mullins", "smith", "nameless"],
            ),
            (
                "Patient?identifier:not=MRN-1",
                &["muller", "mullins", "smith", "nameless"],
            ),
            // muller has MRN-2 and an SSN: one matching value excludes it.
            (
                "Patient?identifier:not=MRN-2",
                &["mueller", "mullins", "smith", "nameless"],
            ),
            (
                "Observation?code:not=http://loinc.org|29463-7",
                &["obs-glucose", "obs-local", "obs-heart"],
            ),
            ("Observation?code:text=weight measured", &["obs-weight"]),
            ("Observation?code:text=body", &["obs-weight"]),
            ("Observation?code:text=GLUCOSE", &["obs-glucose"]),
            ("Observation?code:text=heart", &["obs-heart"]),
            ("Patient?identifier:text=medical record", &["mueller"]),
            (&mr1, &["mueller"]),
            (&ss, &["muller"]),
            (&mr_of_ssn, &[]),
            (&mr2, &[]),
            ("Patient?gender:missing=true", &["nameless"]),
            (
                "Patient?gender:missing=false",
                &["mueller", "muller", "mullins", "smith"],
            ),
            ("Patient?active:missing=true", &["mullins", "nameless"]),
            ("Patient?identifier:missing=true", &["smith", "nameless"]),
        ],
    )
    .await;
}

/// search.html#uri: exact by default; `:below` matches URIs that start with the value,
/// `:above` URIs the value starts with.
#[tokio::test]
async fn uri_exact_above_and_below() {
    let app = spawn_app().await;
    let value_set = |id: &str, url: Option<&str>| {
        let mut vs = json!({ "resourceType": "ValueSet", "id": id, "status": "active" });
        if let Some(url) = url {
            vs["url"] = json!(url);
        }
        vs
    };
    put_all(
        &app,
        &[
            value_set("vs-a", Some("http://acme.example/fhir/ValueSet/a")),
            value_set("vs-a-v2", Some("http://acme.example/fhir/ValueSet/a/v2")),
            value_set("vs-b", Some("http://acme.example/fhir/ValueSet/b")),
            value_set("vs-other", Some("http://other.example/fhir/ValueSet/a")),
            value_set("vs-none", None),
        ],
    )
    .await;

    check(
        &app,
        &[
            (
                "ValueSet?url=http://acme.example/fhir/ValueSet/a",
                &["vs-a"],
            ),
            ("ValueSet?url=http://acme.example/fhir/ValueSet", &[]),
            (
                "ValueSet?url:below=http://acme.example/fhir/",
                &["vs-a", "vs-a-v2", "vs-b"],
            ),
            (
                "ValueSet?url:below=http://acme.example/fhir/ValueSet/a",
                &["vs-a", "vs-a-v2"],
            ),
            (
                "ValueSet?url:above=http://acme.example/fhir/ValueSet/a/v2/extra",
                &["vs-a", "vs-a-v2"],
            ),
            (
                "ValueSet?url:above=http://acme.example/fhir/ValueSet/b",
                &["vs-b"],
            ),
            ("ValueSet?url:missing=true", &["vs-none"]),
        ],
    )
    .await;
}

/// search.html#combining: repeated parameters are ANDed, comma-separated values ORed.
#[tokio::test]
async fn repeated_parameters_and_commas_or() {
    let app = spawn_app().await;
    put_all(&app, &patients()).await;

    check(
        &app,
        &[
            ("Patient?family=mu&given=anna", &["muller"]),
            ("Patient?name=mull&name=pet", &["mullins"]),
            (
                "Patient?name=mull,smi",
                &["mueller", "muller", "mullins", "smith"],
            ),
            (
                "Patient?gender=male,female&active=true",
                &["mueller", "muller"],
            ),
            ("Patient?gender=male&gender=female", &[]),
            ("Patient?family=mu&family:exact=Muller", &["muller"]),
            (
                "Patient?identifier=MRN-1,MRN-2&identifier=http://hl7.org/fhir/sid/us-ssn|",
                &["muller"],
            ),
            ("Patient?_id=mueller,smith", &["mueller", "smith"]),
            ("Patient?_id=mueller&_id=smith", &[]),
            ("Patient?_id=nobody", &[]),
        ],
    )
    .await;
}

/// search.html#escaping: `\,`, `\|` and `\$` are literal characters inside a value; an
/// unescaped comma separates alternatives.
#[tokio::test]
async fn escaped_separators_are_literal() {
    let app = spawn_app().await;
    let org = |id: &str, body: Value| {
        let mut o = body;
        o["resourceType"] = json!("Organization");
        o["id"] = json!(id);
        o
    };
    put_all(
        &app,
        &[
            org("org-comma", json!({ "name": "Alpha, Beta & Co" })),
            org("org-alpha", json!({ "name": "Alpha Clinic" })),
            org("org-zeta", json!({ "name": "Zeta" })),
            org(
                "org-pipe",
                json!({ "identifier": [{ "system": "http://ids.example", "value": "a|b" }] }),
            ),
        ],
    )
    .await;

    check(
        &app,
        &[
            (r"Organization?name=alpha\, beta", &["org-comma"]),
            (r"Organization?name=alpha\,", &["org-comma"]),
            ("Organization?name=alpha", &["org-comma", "org-alpha"]),
            (
                "Organization?name=alpha,zeta",
                &["org-comma", "org-alpha", "org-zeta"],
            ),
            (
                r"Organization?identifier=http://ids.example|a\|b",
                &["org-pipe"],
            ),
            (r"Organization?identifier=a\|b", &["org-pipe"]),
            ("Organization?identifier=a", &[]),
        ],
    )
    .await;
}
