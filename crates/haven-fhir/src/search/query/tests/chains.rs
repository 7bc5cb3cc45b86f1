//! Chained parameters and `_has`: typed, untyped, nested, too deep, too wide.

use super::*;
use StringMatch::{Exact, StartsWith};

#[test]
fn typed_and_untyped_chains() {
    let ann = |on: &str| {
        Box::new(Criterion::Match {
            param: param(on, "name"),
            values: vec![string("ann", StartsWith)],
            negated: false,
        })
    };
    assert_eq!(
        one("Observation", "subject:Patient.name", "Ann"),
        Ok(Criterion::Chain {
            param: param("Observation", "subject"),
            targets: vec![(ty("Patient"), ann("Patient"))],
        })
    );
    // Untyped: every target of `subject` (Device, Group, Location, Patient) that has `name`.
    assert_eq!(
        one("Observation", "subject.name", "Ann"),
        Ok(Criterion::Chain {
            param: param("Observation", "subject"),
            targets: vec![
                (ty("Location"), ann("Location")),
                (ty("Patient"), ann("Patient")),
            ],
        })
    );
    // The inner end keeps its modifier.
    assert_eq!(
        one("Observation", "subject:Patient.name:exact", "Ann"),
        Ok(Criterion::Chain {
            param: param("Observation", "subject"),
            targets: vec![(
                ty("Patient"),
                Box::new(Criterion::Match {
                    param: param("Patient", "name"),
                    values: vec![string("Ann", Exact)],
                    negated: false,
                })
            )],
        })
    );
    assert_eq!(
        one("Observation", "subject:Patient.birthdate:missing", "true"),
        Ok(Criterion::Chain {
            param: param("Observation", "subject"),
            targets: vec![(
                ty("Patient"),
                Box::new(Criterion::Missing {
                    param: param("Patient", "birthdate"),
                    missing: true,
                })
            )],
        })
    );
}

#[test]
fn three_links_are_allowed_four_are_not() {
    let leaf = Criterion::Match {
        param: param("Organization", "name"),
        values: vec![string("acme", StartsWith)],
        negated: false,
    };
    let partof = Criterion::Chain {
        param: param("Organization", "partof"),
        targets: vec![(ty("Organization"), Box::new(leaf))],
    };
    let organization = Criterion::Chain {
        param: param("Patient", "organization"),
        targets: vec![(ty("Organization"), Box::new(partof))],
    };
    assert_eq!(
        one(
            "Observation",
            "subject:Patient.organization.partof.name",
            "Acme"
        ),
        Ok(Criterion::Chain {
            param: param("Observation", "subject"),
            targets: vec![(ty("Patient"), Box::new(organization))],
        })
    );
    for name in [
        "subject:Patient.organization.partof.partof.name",
        "_has:Observation:patient:_has:Provenance:target:_has:AuditEvent:entity:\
         _has:Provenance:target:_id",
        "_has:Observation:patient:subject.organization.partof.name",
        "a.b.c.d.e.f.g.h.i.j.k",
    ] {
        let kind = match one("Patient", name, "x") {
            Err(p) => p.kind,
            Ok(c) => panic!("{name}: {c:?}"),
        };
        assert_eq!(kind, ProblemKind::Invalid, "{name}");
    }
}

#[test]
fn chain_problems() {
    let table: &[(&str, &str, &str, ProblemKind)] = &[
        ("Observation", "subject.foo", "x", ProblemKind::Unknown),
        (
            "Observation",
            "subject:Patient.foo",
            "x",
            ProblemKind::Unknown,
        ),
        ("Observation", "foo.name", "x", ProblemKind::Unknown),
        (
            "Observation",
            "subject:Patient.name:foo",
            "x",
            ProblemKind::Unknown,
        ),
        ("Observation", "code.name", "x", ProblemKind::Invalid),
        (
            "Observation",
            "subject:Medication.code",
            "x",
            ProblemKind::Invalid,
        ),
        ("Observation", "subject:Foo.name", "x", ProblemKind::Invalid),
        (
            "Observation",
            "subject:identifier.name",
            "x",
            ProblemKind::Invalid,
        ),
        ("Observation", "subject.", "x", ProblemKind::Invalid),
        ("Observation", ".name", "x", ProblemKind::Invalid),
        ("Observation", "subject:.name", "x", ProblemKind::Invalid),
        (
            "Observation",
            "subject.birthdate",
            "yesterday",
            ProblemKind::Invalid,
        ),
        (
            "Observation",
            "subject:Patient._text",
            "x",
            ProblemKind::Unsupported,
        ),
        (
            "Observation",
            "subject.name:above",
            "x",
            ProblemKind::Unknown,
        ),
        (
            "Observation",
            "subject:Patient.identifier:in",
            "x",
            ProblemKind::Unsupported,
        ),
    ];
    for (on, name, value, kind) in table {
        assert_eq!(problem(on, name, value), *kind, "{on}?{name}={value}");
    }
    // Provenance `target` may point at 145 types, and so may theirs (on the types where
    // `target` is a reference: elsewhere it cannot be chained, and is left out).
    let Err(p) = one("Provenance", "target.target._id", "1") else {
        panic!()
    };
    assert_eq!(p.kind, ProblemKind::Invalid);
    assert!(
        p.message.contains("too many resource types"),
        "{}",
        p.message
    );
    // One level of that fan-out is fine.
    let Ok(Criterion::Chain { targets, .. }) = one("Provenance", "target._id", "1") else {
        panic!()
    };
    assert_eq!(targets.len(), 145);
}

#[test]
fn has_simple_nested_and_with_modifiers() {
    let code = Criterion::Match {
        param: param("Observation", "code"),
        values: vec![token(None, Some("1234-5"))],
        negated: false,
    };
    assert_eq!(
        one("Patient", "_has:Observation:patient:code", "1234-5"),
        Ok(Criterion::Has {
            source: ty("Observation"),
            param: param("Observation", "patient"),
            inner: Box::new(code),
        })
    );
    let agent = Criterion::Match {
        param: param("AuditEvent", "agent-name"),
        values: vec![string("smith", StartsWith)],
        negated: false,
    };
    assert_eq!(
        one(
            "Patient",
            "_has:Observation:patient:_has:AuditEvent:entity:agent-name",
            "Smith"
        ),
        Ok(Criterion::Has {
            source: ty("Observation"),
            param: param("Observation", "patient"),
            inner: Box::new(Criterion::Has {
                source: ty("AuditEvent"),
                param: param("AuditEvent", "entity"),
                inner: Box::new(agent),
            }),
        })
    );
    assert_eq!(
        one("Patient", "_has:Observation:patient:code:text", "BP"),
        Ok(Criterion::Has {
            source: ty("Observation"),
            param: param("Observation", "patient"),
            inner: Box::new(Criterion::Match {
                param: param("Observation", "code"),
                values: vec![SearchValue::TokenText("bp".into())],
                negated: false,
            }),
        })
    );
    // A chain inside _has, and _has inside an untyped chain (only Patient can be pointed
    // at by Observation `patient`).
    assert!(matches!(
        one(
            "Patient",
            "_has:Observation:patient:performer:Practitioner.name",
            "x"
        ),
        Ok(Criterion::Has { .. })
    ));
    let Ok(Criterion::Chain { targets, .. }) =
        one("Observation", "subject._has:Observation:patient:code", "x")
    else {
        panic!()
    };
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].0, ty("Patient"));
}

#[test]
fn has_problems() {
    let table: &[(&str, &str, ProblemKind)] = &[
        (
            "Organization",
            "_has:Observation:patient:code",
            ProblemKind::Invalid,
        ),
        ("Patient", "_has:Foo:patient:code", ProblemKind::Invalid),
        ("Patient", "_has:Observation:foo:code", ProblemKind::Unknown),
        (
            "Patient",
            "_has:Observation:code:code",
            ProblemKind::Invalid,
        ),
        (
            "Patient",
            "_has:Observation:patient:foo",
            ProblemKind::Unknown,
        ),
        ("Patient", "_has:Observation:patient", ProblemKind::Invalid),
        ("Patient", "_has:Observation::code", ProblemKind::Invalid),
        ("Patient", "_has", ProblemKind::Invalid),
        ("Patient", "_has.x", ProblemKind::Invalid),
    ];
    for (on, name, kind) in table {
        assert_eq!(problem(on, name, "x"), *kind, "{on}?{name}");
    }
}
