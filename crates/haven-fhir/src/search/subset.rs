//! Subsetting of search results: `_summary` (R4 `search.html#summary`) and `_elements`
//! (`search.html#elements`). Pure functions over a resource's JSON; the caller decides which
//! of the two applies and runs it on each match (not on `_include`d resources, and never on
//! a resource that will be written back).
//!
//! | request | kept at the top level |
//! |---|---|
//! | `_summary=true` | `resourceType`, `id`, `meta`, `implicitRules`, and the elements R4 marks `isSummary` ([`Definitions::summary_elements`]) |
//! | `_summary=text` | `resourceType`, `id`, `meta`, `text`, and the mandatory elements (`min >= 1`, [`Definitions::mandatory_elements`]) |
//! | `_summary=data` | everything but `text` |
//! | `_summary=false`, `count` | everything (for `count` the caller returns no resources at all) |
//! | `_elements=a,b` | `resourceType`, `id`, `meta`, the listed elements, and the mandatory elements |
//!
//! A resource that lost anything gets the tag `v3-ObservationValue#SUBSETTED` in `meta.tag`,
//! so that no client mistakes it for the whole resource and writes it back (R4
//! `search.html#elements`). A resource that lost nothing is left untouched and untagged.
//!
//! Rules worth knowing:
//! - **Top level only.** An element that is kept is kept whole: `_summary=true` keeps
//!   `Observation.component` with its non-summary `interpretation`, and an Attachment with
//!   its `data`. R4 also marks nested elements `isSummary`, but filtering inside kept
//!   elements is not implemented.
//! - **The R4 flags as published.** `modifierExtension` is not `isSummary` in R4, so
//!   `_summary=true` drops it; nor are four mandatory elements (`Appointment.participant`,
//!   `AuditEvent.agent`, `AuditEvent.source`, `Provenance.agent`), so such summaries are not
//!   valid resources. The SUBSETTED tag is what tells the client so.
//! - **Choice elements** are matched by their base name: `_elements=value` keeps
//!   `valueQuantity` (or whichever `value[x]` the resource has); `_elements=valueQuantity`
//!   keeps only that form.
//! - **Primitive extensions** follow their value: `_birthDate` is kept exactly when
//!   `birthDate` would be.
//! - Properties the R4 model does not know (and everything type-specific, when
//!   `resourceType` is missing or unknown) are dropped: subsetting errs towards returning
//!   less.

use serde_json::{Map, Value, json};

use super::query::SummaryMode;
use crate::model::{Definitions, ElementDef, ResourceType, definitions};

/// The tag that marks a subsetted resource (R4 `search.html#summary`).
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";
/// See [`SUBSETTED_SYSTEM`].
pub const SUBSETTED_CODE: &str = "SUBSETTED";

/// Applies `_summary` to one resource. Returns whether anything was removed (and the
/// resource therefore tagged SUBSETTED). `False` and `Count` leave the resource unchanged.
pub fn summarize(resource: &mut Map<String, Value>, mode: SummaryMode) -> bool {
    let removed = match mode {
        SummaryMode::True => retain_top_level(resource, |key, el| {
            matches!(key, "id" | "meta" | "implicitRules") || el.is_some_and(|el| el.is_summary)
        }),
        SummaryMode::Text => retain_top_level(resource, |key, el| {
            matches!(key, "id" | "meta" | "text") || el.is_some_and(|el| el.min >= 1)
        }),
        // shift_remove: a plain `remove` swaps the last property into `text`'s place.
        SummaryMode::Data => resource.shift_remove("text").is_some(),
        SummaryMode::False | SummaryMode::Count => false,
    };
    if removed {
        mark_subsetted(resource);
    }
    removed
}

/// Applies `_elements` to one resource: keeps `resourceType`, `id`, `meta`, the listed
/// top-level elements and the mandatory ones. `elements` are top-level names without the
/// type prefix, as [`super::query`] parses them; an empty list means `_elements` was not
/// given and changes nothing. Returns whether anything was removed (and the resource
/// therefore tagged SUBSETTED).
pub fn select_elements(resource: &mut Map<String, Value>, elements: &[String]) -> bool {
    if elements.is_empty() {
        return false;
    }
    let listed = |name: &str| elements.iter().any(|e| e == name);
    let removed = retain_top_level(resource, |key, el| {
        matches!(key, "id" | "meta")
            || listed(key)
            || el.is_some_and(|el| el.min >= 1 || listed(el.name))
    });
    if removed {
        mark_subsetted(resource);
    }
    removed
}

/// Keeps `resourceType` and each property for which `keep(name, element)` holds, where
/// `name` is the property without the `_` of a primitive's extension object and `element`
/// its top-level definition (`None` if the model does not know it). Returns whether any
/// property was removed. Order is preserved.
fn retain_top_level(
    resource: &mut Map<String, Value>,
    keep: impl Fn(&str, Option<&ElementDef>) -> bool,
) -> bool {
    let defs: &Definitions = definitions();
    let ty = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .and_then(ResourceType::parse);
    let before = resource.len();
    resource.retain(|key, _| {
        if key == "resourceType" {
            return true;
        }
        let name = key.strip_prefix('_').unwrap_or(key);
        let element = ty.and_then(|ty| defs.root_element(ty, name));
        keep(name, element)
    });
    resource.len() != before
}

/// Adds the SUBSETTED tag to `meta.tag` unless it is there already, creating `meta` (right
/// after `resourceType` and `id`) and `tag` as needed.
fn mark_subsetted(resource: &mut Map<String, Value>) {
    if !resource.get("meta").is_some_and(Value::is_object) {
        let at = resource
            .keys()
            .take_while(|k| matches!(k.as_str(), "resourceType" | "id"))
            .count();
        // A non-object `meta` cannot be valid FHIR; replacing it keeps the tag readable.
        resource.shift_insert(at, "meta".to_owned(), Value::Object(Map::new()));
    }
    let Some(meta) = resource.get_mut("meta").and_then(Value::as_object_mut) else {
        return;
    };
    let tags = meta
        .entry("tag")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !tags.is_array() {
        *tags = Value::Array(Vec::new());
    }
    let Some(tags) = tags.as_array_mut() else {
        return;
    };
    let present = tags
        .iter()
        .any(|t| t["system"] == SUBSETTED_SYSTEM && t["code"] == SUBSETTED_CODE);
    if !present {
        tags.push(json!({ "system": SUBSETTED_SYSTEM, "code": SUBSETTED_CODE }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("object expected, got {other}"),
        }
    }

    fn keys(resource: &Map<String, Value>) -> Vec<&str> {
        resource.keys().map(String::as_str).collect()
    }

    fn subsetted_tags(resource: &Map<String, Value>) -> usize {
        resource
            .get("meta")
            .and_then(|meta| meta["tag"].as_array())
            .map_or(0, |tags| {
                tags.iter()
                    .filter(|t| t["system"] == SUBSETTED_SYSTEM && t["code"] == SUBSETTED_CODE)
                    .count()
            })
    }

    fn narrative(text: &str) -> String {
        format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{text}</div>")
    }

    fn patient() -> Map<String, Value> {
        object(json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": { "versionId": "3", "tag": [{ "system": "urn:x", "code": "keep" }] },
            "implicitRules": "urn:rules",
            "language": "en",
            "text": { "status": "generated", "div": narrative("Ann") },
            "contained": [{ "resourceType": "Organization", "id": "o1", "name": "Org" }],
            "extension": [{ "url": "urn:ext", "valueString": "x" }],
            "modifierExtension": [{ "url": "urn:mod", "valueBoolean": true }],
            "identifier": [{ "system": "urn:mrn", "value": "123" }],
            "active": true,
            "name": [{ "family": "Smith", "given": ["Ann"] }],
            "telecom": [{ "system": "phone", "value": "555" }],
            "gender": "female",
            "birthDate": "1970-01-01",
            "_birthDate": { "extension": [{ "url": "urn:time", "valueString": "noon" }] },
            "deceasedBoolean": false,
            "address": [{ "city": "Springfield" }],
            "maritalStatus": { "text": "married" },
            "multipleBirthInteger": 2,
            "photo": [{ "contentType": "image/png", "data": "AAAA" }],
            "contact": [{ "name": { "family": "Smith" } }],
            "communication": [{ "language": { "text": "English" } }],
            "generalPractitioner": [{ "reference": "Practitioner/1" }],
            "managingOrganization": { "reference": "#o1" },
            "link": [{ "other": { "reference": "Patient/2" }, "type": "seealso" }]
        }))
    }

    fn observation() -> Map<String, Value> {
        object(json!({
            "resourceType": "Observation",
            "id": "o1",
            "text": { "status": "generated", "div": narrative("HR") },
            "status": "final",
            "_status": { "extension": [{ "url": "urn:why", "valueString": "checked" }] },
            "category": [{ "text": "vital-signs" }],
            "code": { "text": "heart rate" },
            "subject": { "reference": "Patient/p1" },
            "effectiveDateTime": "2024-01-01T10:00:00Z",
            "valueQuantity": { "value": 60, "unit": "/min" },
            "interpretation": [{ "text": "normal" }],
            "note": [{ "text": "resting" }],
            "referenceRange": [{ "text": "50-100" }],
            "component": [{
                "code": { "text": "x" },
                "valueString": "y",
                "interpretation": [{ "text": "n" }]
            }]
        }))
    }

    #[test]
    fn patient_summary_true_keeps_summary_elements() {
        let mut p = patient();
        assert!(summarize(&mut p, SummaryMode::True));
        assert_eq!(
            keys(&p),
            [
                "resourceType",
                "id",
                "meta",
                "implicitRules",
                "identifier",
                "active",
                "name",
                "telecom",
                "gender",
                "birthDate",
                "_birthDate",
                "deceasedBoolean",
                "address",
                "managingOrganization",
                "link",
            ]
        );
        // The existing tag stays, SUBSETTED is added once.
        assert_eq!(p["meta"]["tag"][0]["code"], "keep");
        assert_eq!(p["meta"]["versionId"], "3");
        assert_eq!(subsetted_tags(&p), 1);
        // Summarizing again removes nothing and does not tag twice.
        assert!(!summarize(&mut p, SummaryMode::True));
        assert_eq!(subsetted_tags(&p), 1);
    }

    #[test]
    fn observation_summary_true_keeps_summary_elements_whole() {
        let mut o = observation();
        assert!(summarize(&mut o, SummaryMode::True));
        assert_eq!(
            keys(&o),
            [
                "resourceType",
                "id",
                "meta",
                "status",
                "_status",
                "code",
                "subject",
                "effectiveDateTime",
                "valueQuantity",
                "component",
            ]
        );
        // Top level only: the component keeps its non-summary interpretation.
        assert_eq!(o["component"][0]["interpretation"][0]["text"], "n");
        assert_eq!(subsetted_tags(&o), 1);
    }

    #[test]
    fn summary_text_keeps_text_and_mandatory_elements() {
        let mut p = patient();
        assert!(summarize(&mut p, SummaryMode::Text));
        // Patient has no mandatory top-level element.
        assert_eq!(keys(&p), ["resourceType", "id", "meta", "text"]);
        assert_eq!(subsetted_tags(&p), 1);

        let mut o = observation();
        assert!(summarize(&mut o, SummaryMode::Text));
        // `meta` is created right after `id` to hold the tag.
        assert_eq!(
            keys(&o),
            [
                "resourceType",
                "id",
                "meta",
                "text",
                "status",
                "_status",
                "code"
            ]
        );
        assert_eq!(subsetted_tags(&o), 1);
    }

    #[test]
    fn summary_data_removes_only_text() {
        let mut p = patient();
        let mut expected = patient();
        expected.shift_remove("text");
        assert!(summarize(&mut p, SummaryMode::Data));
        assert_eq!(subsetted_tags(&p), 1);
        p["meta"]["tag"].as_array_mut().unwrap().pop();
        assert_eq!(p, expected, "everything else is kept, in order");

        let mut o = observation();
        assert!(summarize(&mut o, SummaryMode::Data));
        assert!(!o.contains_key("text"));
        assert!(o.contains_key("interpretation"));
        assert_eq!(subsetted_tags(&o), 1);

        // Nothing to remove: unchanged and untagged.
        let mut o = observation();
        o.shift_remove("text");
        let before = o.clone();
        assert!(!summarize(&mut o, SummaryMode::Data));
        assert_eq!(o, before);
    }

    #[test]
    fn summary_false_and_count_change_nothing() {
        for mode in [SummaryMode::False, SummaryMode::Count] {
            for original in [patient(), observation()] {
                let mut r = original.clone();
                assert!(!summarize(&mut r, mode));
                assert_eq!(r, original);
            }
        }
    }

    #[test]
    fn nothing_removed_means_no_tag() {
        let original = object(json!({
            "resourceType": "Patient",
            "id": "p1",
            "name": [{ "family": "Smith" }]
        }));
        let mut p = original.clone();
        assert!(!summarize(&mut p, SummaryMode::True));
        assert_eq!(p, original);
        assert!(!select_elements(&mut p, &["name".to_owned()]));
        assert_eq!(p, original);
    }

    #[test]
    fn patient_elements_name() {
        let mut p = patient();
        assert!(select_elements(&mut p, &["name".to_owned()]));
        assert_eq!(keys(&p), ["resourceType", "id", "meta", "name"]);
        assert_eq!(p["name"][0]["family"], "Smith");
        assert_eq!(subsetted_tags(&p), 1);
    }

    #[test]
    fn patient_elements_keep_primitive_extensions_and_choices() {
        let mut p = patient();
        let elements = ["birthDate".to_owned(), "deceased".to_owned()];
        assert!(select_elements(&mut p, &elements));
        assert_eq!(
            keys(&p),
            [
                "resourceType",
                "id",
                "meta",
                "birthDate",
                "_birthDate",
                "deceasedBoolean"
            ]
        );
    }

    #[test]
    fn observation_elements_value_keeps_the_choice_and_mandatory_elements() {
        let mut o = observation();
        assert!(select_elements(&mut o, &["value".to_owned()]));
        assert_eq!(
            keys(&o),
            [
                "resourceType",
                "id",
                "meta",
                "status",
                "_status",
                "code",
                "valueQuantity"
            ]
        );
        assert_eq!(subsetted_tags(&o), 1);

        // The full JSON name selects that form only.
        let mut o = observation();
        assert!(select_elements(
            &mut o,
            &["valueString".to_owned(), "note".to_owned()]
        ));
        assert_eq!(
            keys(&o),
            [
                "resourceType",
                "id",
                "meta",
                "status",
                "_status",
                "code",
                "note"
            ]
        );
    }

    #[test]
    fn empty_elements_change_nothing() {
        let original = patient();
        let mut p = original.clone();
        assert!(!select_elements(&mut p, &[]));
        assert_eq!(p, original);
    }

    #[test]
    fn unknown_properties_and_types_are_dropped() {
        let mut p = patient();
        p.insert("notAnElement".to_owned(), json!(1));
        assert!(summarize(&mut p, SummaryMode::True));
        assert!(!p.contains_key("notAnElement"));

        let mut r = object(json!({
            "resourceType": "NotAType",
            "id": "x",
            "implicitRules": "urn:r",
            "name": "n"
        }));
        assert!(summarize(&mut r, SummaryMode::True));
        assert_eq!(keys(&r), ["resourceType", "id", "meta", "implicitRules"]);
    }

    #[test]
    fn tag_is_added_to_existing_meta_without_tags_and_not_duplicated() {
        let mut o = observation();
        o.insert("meta".to_owned(), json!({ "versionId": "1" }));
        assert!(summarize(&mut o, SummaryMode::Data));
        assert_eq!(o["meta"]["versionId"], "1");
        assert_eq!(subsetted_tags(&o), 1);

        // Already tagged (a resource stored subsetted, or subsetted twice): not duplicated.
        let mut o = observation();
        o.insert(
            "meta".to_owned(),
            json!({ "tag": [{ "system": SUBSETTED_SYSTEM, "code": SUBSETTED_CODE }] }),
        );
        assert!(select_elements(&mut o, &["code".to_owned()]));
        assert_eq!(o["meta"]["tag"].as_array().unwrap().len(), 1);
    }
}
