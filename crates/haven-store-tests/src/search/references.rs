//! Conditions and reads that follow reference rows: chains, reverse chains (`_has`) and
//! `related` (`_include`, `_revinclude`).

use std::collections::HashMap;

use haven_domain::ResourceType;
use haven_store::{Col, Condition, IndexCell, IndexRow, ParamKey, Related, ResourceStore, Table};

use super::{
    CODE, NAME, ORG, PERFORMER, SUBJECT, any, delete, eq, found_ids, label, put, query, reference,
    string, token,
};
use crate::ty;

fn chain(params: &[ParamKey], target: &str, inner: Condition) -> Condition {
    Condition::Chain {
        params: params.to_vec(),
        target: ty(target),
        inner: Box::new(inner),
    }
}

fn has(source: &str, param: ParamKey, target: &str, inner: Condition) -> Condition {
    Condition::ReferencedBy {
        source: ty(source),
        param,
        target: ty(target),
        inner: Box::new(inner),
    }
}

fn name(n: &str) -> Condition {
    any(Table::String, NAME, eq(Col::Normalized, n))
}

fn code(c: &str) -> Condition {
    any(Table::Token, CODE, eq(Col::Code, c))
}

/// A reference that names no local resource (an absolute URL elsewhere).
fn external(param: ParamKey, url: &str) -> IndexRow {
    IndexRow {
        param,
        grp: 0,
        cell: IndexCell::Reference {
            target_type: None,
            target_id: None,
            version: None,
            url: Some(url.to_owned()),
            ident_system: None,
            ident_value: None,
        },
    }
}

async fn labels_of(store: &dyn ResourceStore, types: &[&str], c: Condition) -> Vec<String> {
    let q = query(types, vec![c]);
    let page = store.search(&q).await.unwrap();
    assert!(!page.has_next);
    let labels: Vec<String> = page.matches.iter().map(label).collect();
    for variant in super::modes(&q) {
        let page = store.search(&variant).await.unwrap();
        let other: Vec<String> = page.matches.iter().map(label).collect();
        assert_eq!(
            other, labels,
            "driver/probe disagree: {:?}",
            variant.conditions
        );
    }
    labels
}

pub async fn chains_follow_references_to_current_targets(store: &dyn ResourceStore) {
    put(store, "Organization", "acme", vec![string(NAME, "acme")]).await;
    put(store, "Organization", "other", vec![string(NAME, "other")]).await;
    put(
        store,
        "Patient",
        "p1",
        vec![string(NAME, "smith"), reference(ORG, "Organization/acme")],
    )
    .await;
    put(
        store,
        "Patient",
        "p2",
        vec![string(NAME, "jones"), reference(ORG, "Organization/other")],
    )
    .await;
    put(store, "Patient", "p3", vec![string(NAME, "smith")]).await;
    // Same id as Patient/p1, another type.
    put(store, "Group", "p1", vec![string(NAME, "smith")]).await;
    let observations = [
        ("o1", vec![reference(SUBJECT, "Patient/p1")]),
        ("o2", vec![reference(SUBJECT, "Patient/p2")]),
        ("o3", vec![reference(SUBJECT, "Group/p1")]),
        ("o4", vec![reference(SUBJECT, "Patient/p3")]),
        ("o5", vec![reference(PERFORMER, "Patient/p1")]),
        ("o6", vec![reference(SUBJECT, "Patient/p1")]),
        (
            "o7",
            vec![external(SUBJECT, "http://elsewhere.org/Patient/p1")],
        ),
    ];
    for (id, rows) in observations {
        put(store, "Observation", id, rows).await;
    }
    delete(store, "Patient", "p3", Vec::new()).await;
    delete(store, "Observation", "o6", Vec::new()).await;

    let cases: Vec<(&str, Condition, &[&str])> = vec![
        (
            "inner condition on the target",
            chain(&[SUBJECT], "Patient", name("smith")),
            &["o1"],
        ),
        (
            "any current target of the type",
            chain(&[SUBJECT], "Patient", Condition::True),
            &["o1", "o2"],
        ),
        (
            "the target type decides",
            chain(&[SUBJECT], "Group", name("smith")),
            &["o3"],
        ),
        (
            "several parameters",
            chain(&[SUBJECT, PERFORMER], "Patient", name("smith")),
            &["o1", "o5"],
        ),
        (
            "ids of the target",
            chain(&[SUBJECT], "Patient", Condition::IdIn(vec!["p2".into()])),
            &["o2"],
        ),
        (
            "a chain in a chain",
            chain(
                &[SUBJECT],
                "Patient",
                chain(&[ORG], "Organization", name("acme")),
            ),
            &["o1"],
        ),
        (
            "one chain per target type",
            Condition::Or(vec![
                chain(&[SUBJECT], "Patient", name("smith")),
                chain(&[SUBJECT], "Group", name("smith")),
            ]),
            &["o1", "o3"],
        ),
        (
            "inner false",
            chain(&[SUBJECT], "Patient", Condition::False),
            &[],
        ),
    ];
    for (case, condition, expected) in cases {
        let q = query(&["Observation"], vec![condition]);
        assert_eq!(found_ids(store, &q).await, expected, "{case}");
    }
}

pub async fn reverse_chains_find_referenced_resources(store: &dyn ResourceStore) {
    for id in ["p1", "p2", "p3", "p4", "p5"] {
        put(store, "Patient", id, Vec::new()).await;
    }
    // Same id as a referenced Patient, and never referenced itself.
    put(store, "Group", "p2", Vec::new()).await;
    let sources = [
        ("Observation", "o1", "x1", reference(SUBJECT, "Patient/p1")),
        ("Observation", "o2", "x2", reference(SUBJECT, "Patient/p2")),
        ("Observation", "o3", "x1", reference(SUBJECT, "Patient/p3")),
        ("Encounter", "e1", "x1", reference(SUBJECT, "Patient/p4")),
        (
            "Observation",
            "o4",
            "x1",
            reference(PERFORMER, "Patient/p4"),
        ),
        ("Observation", "o5", "x9", reference(SUBJECT, "Group/p5")),
    ];
    for (t, id, c, subject) in sources {
        put(store, t, id, vec![token(CODE, None, Some(c)), subject]).await;
    }
    delete(store, "Observation", "o3", Vec::new()).await;

    let cases: Vec<(&str, &[&str], Condition, &[&str])> = vec![
        (
            "inner condition on the source",
            &["Patient"],
            has("Observation", SUBJECT, "Patient", code("x1")),
            &["Patient/p1"],
        ),
        (
            "any current source",
            &["Patient"],
            has("Observation", SUBJECT, "Patient", Condition::True),
            &["Patient/p1", "Patient/p2"],
        ),
        (
            "the source type decides",
            &["Patient"],
            has("Encounter", SUBJECT, "Patient", Condition::True),
            &["Patient/p4"],
        ),
        (
            "the parameter decides",
            &["Patient"],
            has("Observation", PERFORMER, "Patient", code("x1")),
            &["Patient/p4"],
        ),
        (
            "a reference to another type with the same id",
            &["Patient"],
            has("Observation", SUBJECT, "Patient", code("x9")),
            &[],
        ),
        // The service asks once per type searched; Group/p2 shares an id with Patient/p2.
        (
            "one reverse chain per type searched",
            &["Patient", "Group"],
            Condition::Or(vec![
                has("Observation", SUBJECT, "Patient", Condition::True),
                has("Observation", SUBJECT, "Group", Condition::True),
            ]),
            &["Patient/p1", "Patient/p2"],
        ),
        (
            "all types",
            &[],
            has("Observation", SUBJECT, "Group", Condition::True),
            &[],
        ),
    ];
    for (case, types, condition, expected) in cases {
        assert_eq!(labels_of(store, types, condition).await, expected, "{case}");
    }
}

pub async fn related_finds_targets_and_sources(store: &dyn ResourceStore) {
    for id in ["p1", "p2", "p3"] {
        put(store, "Patient", id, Vec::new()).await;
    }
    put(store, "Group", "g1", Vec::new()).await;
    let observations = [
        (
            "o1",
            vec![
                reference(SUBJECT, "Patient/p1"),
                reference(PERFORMER, "Patient/p2"),
            ],
        ),
        ("o2", vec![reference(SUBJECT, "Patient/p1")]),
        ("o3", vec![reference(SUBJECT, "Patient/p2")]),
        ("o4", vec![reference(SUBJECT, "Patient/p3")]),
        ("o5", vec![reference(SUBJECT, "Group/g1")]),
        ("o6", vec![reference(SUBJECT, "Patient/p1")]),
    ];
    for (id, rows) in observations {
        put(store, "Observation", id, rows).await;
    }
    put(
        store,
        "Encounter",
        "e1",
        vec![reference(SUBJECT, "Patient/p1")],
    )
    .await;
    delete(store, "Patient", "p3", Vec::new()).await;
    delete(store, "Observation", "o6", Vec::new()).await;
    // A second version: related resources come back as their current version.
    put(store, "Patient", "p1", Vec::new()).await;

    let page = store
        .search(&query(&["Observation"], Vec::new()))
        .await
        .unwrap();
    let rids: HashMap<String, i64> = page
        .matches
        .iter()
        .map(|f| (f.version.id.to_string(), f.rid))
        .collect();
    let from = |list: &[&str]| list.iter().map(|id| rids[*id]).collect::<Vec<i64>>();
    let all = from(&["o1", "o2", "o3", "o4", "o5"]);
    let targets = |from: Vec<i64>, params: &[ParamKey], target: Option<&str>| Related::Targets {
        from,
        params: params.to_vec(),
        target: target.map(ty),
    };
    let to = |list: &[&str]| -> Vec<(ResourceType, String)> {
        list.iter()
            .map(|r| {
                let (t, id) = r.split_once('/').unwrap();
                (ty(t), id.to_owned())
            })
            .collect()
    };
    let sources = |list: &[&str], source: &str, params: &[ParamKey]| Related::Sources {
        to: to(list),
        source: ty(source),
        params: params.to_vec(),
    };
    let cases: Vec<(&str, Related, u32, &[&str])> = vec![
        (
            "targets, once each, deleted ones left out",
            targets(all.clone(), &[SUBJECT], None),
            100,
            &["Patient/p1", "Patient/p2", "Group/g1"],
        ),
        (
            "targets of one type",
            targets(all.clone(), &[SUBJECT], Some("Patient")),
            100,
            &["Patient/p1", "Patient/p2"],
        ),
        (
            "targets of another type",
            targets(all.clone(), &[SUBJECT], Some("Group")),
            100,
            &["Group/g1"],
        ),
        (
            "targets up to the limit",
            targets(all.clone(), &[SUBJECT], None),
            2,
            &["Patient/p1", "Patient/p2"],
        ),
        (
            "targets of the given sources only",
            targets(from(&["o3"]), &[SUBJECT], None),
            100,
            &["Patient/p2"],
        ),
        (
            "targets of the given parameters only",
            targets(from(&["o1"]), &[SUBJECT], None),
            100,
            &["Patient/p1"],
        ),
        (
            "targets of several parameters",
            targets(from(&["o1"]), &[SUBJECT, PERFORMER], None),
            100,
            &["Patient/p1", "Patient/p2"],
        ),
        (
            "a deleted target",
            targets(from(&["o4"]), &[SUBJECT], None),
            100,
            &[],
        ),
        (
            "no sources",
            targets(Vec::new(), &[SUBJECT], None),
            100,
            &[],
        ),
        (
            "sources, deleted ones left out",
            sources(
                &["Patient/p1", "Patient/p2", "Group/g1"],
                "Observation",
                &[SUBJECT],
            ),
            100,
            &[
                "Observation/o1",
                "Observation/o2",
                "Observation/o3",
                "Observation/o5",
            ],
        ),
        (
            "sources of one target",
            sources(&["Patient/p1"], "Observation", &[SUBJECT]),
            100,
            &["Observation/o1", "Observation/o2"],
        ),
        (
            "sources up to the limit",
            sources(&["Patient/p1"], "Observation", &[SUBJECT]),
            1,
            &["Observation/o1"],
        ),
        (
            "sources of another type",
            sources(&["Patient/p1"], "Encounter", &[SUBJECT]),
            100,
            &["Encounter/e1"],
        ),
        (
            "sources through another parameter",
            sources(&["Patient/p2"], "Observation", &[PERFORMER]),
            100,
            &["Observation/o1"],
        ),
        (
            "the target type decides",
            sources(&["Group/p1"], "Observation", &[SUBJECT]),
            100,
            &[],
        ),
        (
            "no targets",
            sources(&[], "Observation", &[SUBJECT]),
            100,
            &[],
        ),
    ];
    for (case, related, limit, expected) in cases {
        let found = store.related(&related, limit).await.unwrap();
        let labels: Vec<String> = found.iter().map(label).collect();
        assert_eq!(labels, expected, "{case}");
        assert!(found.iter().all(|f| f.keys.is_empty()), "{case}");
        if let Some(p1) = found.iter().find(|f| label(f) == "Patient/p1") {
            assert_eq!(p1.version.version.get(), 2, "{case}: current version");
        }
    }
}
