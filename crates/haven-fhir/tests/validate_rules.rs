//! One test per structural/primitive rule: a valid base resource, broken in exactly one way,
//! must produce exactly the expected issue (code and location). Embedded resources,
//! references and extensions are in `validate_links.rs`.

mod common;

use common::{assert_one, assert_valid, observation, patient, with};
use haven_fhir::IssueCode;
use serde_json::{Value, json};

#[test]
fn bases_are_valid() {
    assert_valid(&patient());
    assert_valid(&observation());
}

// ---- resourceType ----

#[test]
fn resource_type_missing_or_not_string_is_invalid() {
    let r = with(&patient(), |p| {
        p.as_object_mut().unwrap().remove("resourceType");
    });
    assert_one(&r, IssueCode::Invalid, "resourceType");
    let r = with(&patient(), |p| p["resourceType"] = json!(1));
    assert_one(&r, IssueCode::Invalid, "resourceType");
}

#[test]
fn resource_type_unknown_or_abstract_is_not_supported() {
    for name in [
        "Patientt",
        "Resource",
        "DomainResource",
        "HumanName",
        "patient",
    ] {
        let r = with(&patient(), |p| p["resourceType"] = json!(name));
        let issue = assert_one(&r, IssueCode::NotSupported, "resourceType");
        assert!(issue.message.contains("146"), "{}", issue.message);
    }
}

// ---- unknown elements ----

#[test]
fn unknown_element_is_structure_with_allowed_list() {
    let r = with(&patient(), |p| p["foo"] = json!("x"));
    let issue = assert_one(&r, IssueCode::Structure, "Patient.foo");
    assert!(
        issue.message.contains("unknown element 'foo' in Patient"),
        "{}",
        issue.message
    );
    assert!(
        issue.message.contains("allowed: id, meta"),
        "{}",
        issue.message
    );
    let r = with(&patient(), |p| p["name"][0]["nickname"] = json!("x"));
    let issue = assert_one(&r, IssueCode::Structure, "Patient.name[0].nickname");
    assert!(issue.message.contains("HumanName"), "{}", issue.message);
}

#[test]
fn unknown_underscore_key_is_structure() {
    let r = with(&patient(), |p| p["_foo"] = json!({"id": "x"}));
    assert_one(&r, IssueCode::Structure, "Patient._foo");
}

#[test]
fn underscore_on_complex_or_system_element_is_structure() {
    let r = with(&patient(), |p| p["_name"] = json!([{"id": "x"}]));
    assert_one(&r, IssueCode::Structure, "Patient._name");
    // Resource.id is a system type in R4 JSON: no `_id`.
    let r = with(&patient(), |p| p["_id"] = json!({"id": "x"}));
    assert_one(&r, IssueCode::Structure, "Patient._id");
    let r =
        with(
            &patient(),
            |p| {
                p["extension"] =
                    json!([{"url": "http://x", "_url": {"id": "a"}, "valueString": "v"}])
            },
        );
    assert_one(&r, IssueCode::Structure, "Patient.extension[0]._url");
}

#[test]
fn resource_type_inside_a_datatype_is_unknown() {
    let r = with(&patient(), |p| {
        p["name"][0]["resourceType"] = json!("HumanName")
    });
    assert_one(&r, IssueCode::Structure, "Patient.name[0].resourceType");
}

// ---- cardinality ----

#[test]
fn array_for_single_element_is_structure() {
    let r = with(&patient(), |p| p["active"] = json!([true]));
    assert_one(&r, IssueCode::Structure, "Patient.active");
    let r = with(&patient(), |p| {
        p["managingOrganization"] = json!([{"reference": "Organization/o1"}])
    });
    assert_one(&r, IssueCode::Structure, "Patient.managingOrganization");
}

#[test]
fn single_value_for_repeating_element_is_structure() {
    let r = with(&patient(), |p| p["name"] = json!({"family": "x"}));
    let issue = assert_one(&r, IssueCode::Structure, "Patient.name");
    assert!(
        issue.message.contains("must be an array"),
        "{}",
        issue.message
    );
    let r = with(&patient(), |p| p["name"][0]["given"] = json!("Peter"));
    assert_one(&r, IssueCode::Structure, "Patient.name[0].given");
}

#[test]
fn empty_array_is_structure() {
    let r = with(&patient(), |p| p["name"] = json!([]));
    assert_one(&r, IssueCode::Structure, "Patient.name");
}

#[test]
fn null_values_are_structure() {
    let r = with(&patient(), |p| p["active"] = Value::Null);
    assert_one(&r, IssueCode::Structure, "Patient.active");
    let r = with(&patient(), |p| p["name"][0]["given"][1] = Value::Null);
    assert_one(&r, IssueCode::Structure, "Patient.name[0].given[1]");
    let r = with(&patient(), |p| p["name"] = json!([null]));
    assert_one(&r, IssueCode::Structure, "Patient.name[0]");
}

#[test]
fn missing_required_element_is_required() {
    let r = with(&observation(), |o| {
        o.as_object_mut().unwrap().remove("status");
    });
    let issue = assert_one(&r, IssueCode::Required, "Observation.status");
    assert!(
        issue.message.contains("Observation.status"),
        "{}",
        issue.message
    );
    let r = with(&patient(), |p| p["link"] = json!([{"type": "seealso"}]));
    assert_one(&r, IssueCode::Required, "Patient.link[0].other");
}

#[test]
fn required_primitive_satisfied_by_extension_only() {
    let r = with(&observation(), |o| {
        let obj = o.as_object_mut().unwrap();
        obj.remove("status");
        obj.insert("_status".into(), json!({"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}));
    });
    assert_valid(&r);
}

// ---- choice types ----

#[test]
fn unknown_choice_suffix_lists_the_variants() {
    let r = with(&observation(), |o| {
        let obj = o.as_object_mut().unwrap();
        let q = obj.remove("valueQuantity").unwrap();
        obj.insert("valueMoney".into(), q);
    });
    let issue = assert_one(&r, IssueCode::Structure, "Observation.valueMoney");
    assert!(issue.message.contains("valueQuantity"), "{}", issue.message);
    assert!(
        issue.message.contains("valueCodeableConcept"),
        "{}",
        issue.message
    );
}

#[test]
fn bare_choice_name_is_unknown() {
    let r = with(&observation(), |o| {
        let obj = o.as_object_mut().unwrap();
        let q = obj.remove("valueQuantity").unwrap();
        obj.insert("value".into(), q);
    });
    assert_one(&r, IssueCode::Structure, "Observation.value");
}

#[test]
fn two_choice_variants_is_structure() {
    let r = with(&observation(), |o| o["valueString"] = json!("heavy"));
    let issue = assert_one(&r, IssueCode::Structure, "Observation.valueString");
    assert!(issue.message.contains("valueQuantity"), "{}", issue.message);
    let r = with(&patient(), |p| {
        p["deceasedBoolean"] = json!(false);
        p["_deceasedDateTime"] = json!({"id": "x"});
    });
    assert_one(&r, IssueCode::Structure, "Patient._deceasedDateTime");
}

#[test]
fn choice_variant_and_its_extension_are_one_variant() {
    let r = with(&patient(), |p| {
        p["deceasedDateTime"] = json!("2020-01-01");
        p["_deceasedDateTime"] = json!({"id": "x"});
    });
    assert_valid(&r);
}

// ---- primitives ----

#[test]
fn json_type_mismatches_are_structure() {
    let cases: [(&str, Value, &str); 5] = [
        ("active", json!("true"), "Patient.active"),
        ("birthDate", json!(19741225), "Patient.birthDate"),
        ("gender", json!(true), "Patient.gender"),
        (
            "multipleBirthInteger",
            json!("2"),
            "Patient.multipleBirthInteger",
        ),
        ("name", json!(["Peter"]), "Patient.name[0]"),
    ];
    for (key, value, location) in cases {
        let r = with(&patient(), |p| p[key] = value);
        assert_one(&r, IssueCode::Structure, location);
    }
    let r = with(&observation(), |o| {
        o["valueQuantity"]["value"] = json!("72.5")
    });
    assert_one(&r, IssueCode::Structure, "Observation.valueQuantity.value");
}

#[test]
fn integer_ranges_and_forms() {
    let ok = |v: Value| with(&patient(), |p| p["multipleBirthInteger"] = v);
    assert_valid(&ok(json!(2_147_483_647)));
    assert_valid(&ok(json!(-2_147_483_648_i64)));
    for bad in [json!(2_147_483_648_i64), json!(1.0), json!(1e2)] {
        assert_one(&ok(bad), IssueCode::Value, "Patient.multipleBirthInteger");
    }
    // positiveInt >= 1, unsignedInt >= 0
    let rank = |v: Value| {
        with(&patient(), |p| {
            p["telecom"] = json!([{"system": "phone", "value": "1", "rank": v}])
        })
    };
    assert_valid(&rank(json!(1)));
    assert_one(&rank(json!(0)), IssueCode::Value, "Patient.telecom[0].rank");
    assert_one(
        &rank(json!(-1)),
        IssueCode::Value,
        "Patient.telecom[0].rank",
    );
    let count = |v: Value| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "valueSampledData": {"origin": {"value": 0}, "period": 1, "dimensions": v}})
    };
    assert_valid(&count(json!(1)));
    assert_one(
        &count(json!(0)),
        IssueCode::Value,
        "Observation.valueSampledData.dimensions",
    );
    let unsigned = |v: Value| {
        with(&patient(), |p| {
            p["photo"] = json!([{"contentType": "image/png", "size": v}])
        })
    };
    assert_valid(&unsigned(json!(0)));
    assert_one(
        &unsigned(json!(-1)),
        IssueCode::Value,
        "Patient.photo[0].size",
    );
    assert_one(
        &unsigned(json!("-0")),
        IssueCode::Structure,
        "Patient.photo[0].size",
    );
    let minus_zero: Value = serde_json::from_str("-0").unwrap(); // exact text kept
    assert_one(
        &unsigned(minus_zero),
        IssueCode::Value,
        "Patient.photo[0].size",
    );
}

#[test]
fn decimals_keep_any_json_number() {
    for v in [
        json!(0),
        json!(-1.5),
        json!(1e-10),
        json!(12345678901234567890_u64),
    ] {
        assert_valid(&with(&observation(), |o| o["valueQuantity"]["value"] = v));
    }
}

#[test]
fn regex_and_calendar_violations_are_value() {
    let cases = [
        ("birthDate", json!("1974-02-30")),
        ("birthDate", json!("1974-13")),
        ("birthDate", json!("74-12-25")),
        ("birthDate", json!("1974-12-25T10:00:00Z")),
        ("gender", json!(" male")),
        ("gender", json!("ma  le")),
        ("id", json!("has space")),
        ("id", json!("x".repeat(65))),
        ("implicitRules", json!("http://a b")),
        ("deceasedDateTime", json!("2020-01-01T10:00:00")),
        ("deceasedDateTime", json!("2020-01-01T24:00:00Z")),
    ];
    for (key, value) in cases {
        let r = with(&patient(), |p| p[key] = value);
        assert_one(&r, IssueCode::Value, &format!("Patient.{key}"));
    }
    let r = with(&observation(), |o| o["issued"] = json!("2020-01-01"));
    assert_one(&r, IssueCode::Value, "Observation.issued");
    let r = with(&observation(), |o| {
        o["issued"] = json!("2021-02-29T00:00:00Z")
    });
    assert_one(&r, IssueCode::Value, "Observation.issued");
}

#[test]
fn strings_allow_internal_whitespace_and_unicode() {
    let r = with(&patient(), |p| {
        p["name"][0]["family"] = json!(" van\u{a0}der  Berg\t")
    });
    assert_valid(&r);
}

#[test]
fn empty_strings_and_objects_violate_ele1() {
    let r = with(&patient(), |p| p["name"][0]["family"] = json!(""));
    let issue = assert_one(&r, IssueCode::Invariant, "Patient.name[0].family");
    assert!(issue.message.contains("ele-1"), "{}", issue.message);
    let r = with(&patient(), |p| p["name"][0] = json!({}));
    assert_one(&r, IssueCode::Invariant, "Patient.name[0]");
    let r = with(&patient(), |p| p["maritalStatus"] = json!({}));
    assert_one(&r, IssueCode::Invariant, "Patient.maritalStatus");
}

#[test]
fn oversized_string_is_too_long() {
    let r = with(&patient(), |p| {
        p["name"][0]["text"] = json!("x".repeat(1024 * 1024 + 1))
    });
    assert_one(&r, IssueCode::TooLong, "Patient.name[0].text");
}

#[test]
fn base64_and_time_and_uuid_and_oid() {
    let binary =
        |data: &str| json!({"resourceType": "Binary", "contentType": "text/plain", "data": data});
    assert_valid(&binary("aGVsbG8="));
    assert_one(&binary("aGVsbG8"), IssueCode::Value, "Binary.data");
    assert_one(&binary("aG=sbG8="), IssueCode::Value, "Binary.data");
    let time = |t: &str| {
        with(&observation(), |o| {
            o.as_object_mut().unwrap().remove("valueQuantity");
            o["valueTime"] = json!(t);
        })
    };
    assert_valid(&time("23:59:59.999"));
    assert_one(&time("24:00:00"), IssueCode::Value, "Observation.valueTime");
    let ident = |system: &str| {
        with(&patient(), |p| {
            p["identifier"] = json!([{"system": system, "value": "1"}])
        })
    };
    assert_valid(&ident("urn:oid:1.2.3"));
    let ext = |v: Value| {
        with(&patient(), |p| {
            p["extension"] = json!([{"url": "http://x", "valueUuid": v}])
        })
    };
    assert_valid(&ext(json!("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a")));
    assert_one(
        &ext(json!("61ebe359-bfdc-4613-8bf2-c5e300945f0a")),
        IssueCode::Value,
        "Patient.extension[0].valueUuid",
    );
    let oid = |v: Value| {
        with(&patient(), |p| {
            p["extension"] = json!([{"url": "http://x", "valueOid": v}])
        })
    };
    assert_one(
        &oid(json!("urn:oid:1.02")),
        IssueCode::Value,
        "Patient.extension[0].valueOid",
    );
}

#[test]
fn narrative_div_must_be_a_div() {
    let text = |div: &str| {
        with(&patient(), |p| {
            p["text"] = json!({"status": "generated", "div": div})
        })
    };
    assert_valid(&text(
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>x</p></div>",
    ));
    assert_one(&text("<p>x</p>"), IssueCode::Value, "Patient.text.div");
    assert_one(&text("just text"), IssueCode::Value, "Patient.text.div");
    let r = with(
        &patient(),
        |p| p["text"] = json!({"status": "generated", "div": "<div>x</div>", "_div": {"id": "d"}}),
    );
    assert_one(&r, IssueCode::Structure, "Patient.text._div");
}

// ---- `_x` primitive extensions ----

#[test]
fn underscore_value_must_be_an_object() {
    let r = with(&patient(), |p| p["_active"] = json!("yes"));
    assert_one(&r, IssueCode::Structure, "Patient._active");
    let r = with(&patient(), |p| p["_active"] = json!([{"id": "a"}]));
    assert_one(&r, IssueCode::Structure, "Patient._active");
    let r = with(&patient(), |p| p["_active"] = json!({"foo": 1}));
    assert_one(&r, IssueCode::Structure, "Patient.active.foo");
    let r = with(&patient(), |p| p["_active"] = json!({}));
    assert_one(&r, IssueCode::Invariant, "Patient.active");
}

#[test]
fn underscore_extension_contents_are_validated_at_the_primitive() {
    let r = with(&patient(), |p| {
        p["_birthDate"] = json!({"extension": [{"valueString": "x"}]})
    });
    assert_one(
        &r,
        IssueCode::Required,
        "Patient.birthDate.extension[0].url",
    );
}

#[test]
fn aligned_arrays_must_have_equal_length() {
    let r = with(&patient(), |p| p["name"][0]["_given"] = json!([null]));
    let issue = assert_one(&r, IssueCode::Structure, "Patient.name[0]._given");
    assert!(issue.message.contains("same length"), "{}", issue.message);
}

#[test]
fn aligned_arrays_may_not_be_null_in_both() {
    let r = with(&patient(), |p| {
        p["name"][0]["given"] = json!(["Peter", null]);
        p["name"][0]["_given"] = json!([{"id": "a"}, null]);
    });
    assert_one(&r, IssueCode::Structure, "Patient.name[0].given[1]");
    // Only extensions, no values: every entry must be an object.
    let r = with(&patient(), |p| {
        p["name"][0].as_object_mut().unwrap().remove("given");
        p["name"][0]["_given"] = json!([{"id": "a"}, null]);
    });
    assert_one(&r, IssueCode::Structure, "Patient.name[0]._given[1]");
    let r = with(&patient(), |p| {
        p["name"][0]["_given"] = json!([{"id": "a"}, 3])
    });
    assert_one(&r, IssueCode::Structure, "Patient.name[0]._given[1]");
    let r = with(&patient(), |p| p["name"][0]["_given"] = json!({"id": "a"}));
    assert_one(&r, IssueCode::Structure, "Patient.name[0]._given");
}

// ---- nested complex types, backbones, contentReference ----

#[test]
fn errors_deep_in_datatypes_and_backbones_are_located() {
    let r =
        with(
            &patient(),
            |p| {
                p["contact"] = json!([{"name": {"family": "x", "period": {"start": "2020-02-31"}}}])
            },
        );
    assert_one(&r, IssueCode::Value, "Patient.contact[0].name.period.start");
    let r = with(
        &patient(),
        |p| p["contact"] = json!([{"organization": {"reference": "Organization/1", "bogus": 1}}]),
    );
    assert_one(
        &r,
        IssueCode::Structure,
        "Patient.contact[0].organization.bogus",
    );
}

#[test]
fn content_reference_children_are_validated() {
    let q = |inner: Value| {
        json!({"resourceType": "Questionnaire", "status": "active",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1", "type": "group", "item": [inner]}]}]})
    };
    assert_valid(&q(json!({"linkId": "1.1.1", "type": "string"})));
    assert_one(
        &q(json!({"type": "string"})),
        IssueCode::Required,
        "Questionnaire.item[0].item[0].item[0].linkId",
    );
    assert_one(
        &q(json!({"linkId": "x", "type": "string", "answer": []})),
        IssueCode::Structure,
        "Questionnaire.item[0].item[0].item[0].answer",
    );
}
