//! Which resources a condition matches: every predicate kind, negation and `:missing`,
//! composites, boolean combinations and ids; and that the index follows each version.

use haven_store::{Col, Condition, Pred, ResourceStore, Scalar, Table, WriteTx, run_write};

use super::{
    BORN, CODE, NAME, NOTE, PART_CODE, PART_VALUE, URL, VALUE, any, date, delete, eq, found_ids,
    in_group, label, none, number, patients, put, query, string, text, token, uri,
};
use crate::{TestError, rid, ty};

const S: Option<&str> = Some("http://s");

/// Four Patients whose values sit on either side of each predicate's boundary, and an
/// Observation with Patient `a`'s name (so a type filter has something to exclude).
async fn seed_predicates(store: &dyn ResourceStore) {
    put(
        store,
        "Patient",
        "a",
        vec![
            string(NAME, "müller"),
            token(CODE, S, Some("x1")),
            // A second row: a predicate must hold within one row, not across rows.
            token(CODE, Some("http://t"), Some("z")),
            date(BORN, 1000, 2000),
            number(VALUE, 1.5),
            uri(URL, "http://h.org/fhir/ValueSet/v"),
            string(NOTE, "50%_off"),
        ],
    )
    .await;
    put(
        store,
        "Patient",
        "b",
        vec![
            string(NAME, "muller"),
            token(CODE, None, Some("x2")),
            date(BORN, 3000, 4000),
            number(VALUE, 2.5),
            uri(URL, "http://h.org/fhir"),
            string(NOTE, "50% off"),
        ],
    )
    .await;
    put(
        store,
        "Patient",
        "c",
        vec![
            string(NAME, "mü"),
            token(CODE, S, Some("y")),
            date(BORN, 2000, 3000),
            number(VALUE, 10.0),
            uri(URL, "http://h.org/fhir/ValueSet/w"),
            string(NOTE, "5_0"),
        ],
    )
    .await;
    put(
        store,
        "Patient",
        "d",
        vec![
            string(NAME, "mz"),
            token(CODE, S, None),
            number(VALUE, -3.0),
            string(NOTE, "plain"),
        ],
    )
    .await;
    put(store, "Observation", "oa", vec![string(NAME, "müller")]).await;
}

pub async fn index_rows_match_each_predicate(store: &dyn ResourceStore) {
    seed_predicates(store).await;
    let s = |p| any(Table::String, NAME, p);
    let note = |p| any(Table::String, NOTE, p);
    let tok = |p| any(Table::Token, CODE, p);
    let day = |p| any(Table::Date, BORN, p);
    let num = |p| any(Table::Number, VALUE, p);
    let url = |p| any(Table::Uri, URL, p);
    let int = Scalar::Int;
    let float = Scalar::Float;
    let cases: Vec<(&str, Condition, &[&str])> = vec![
        ("eq ascii", s(eq(Col::Normalized, "muller")), &["b"]),
        ("eq non-ascii", s(eq(Col::Normalized, "müller")), &["a"]),
        ("eq token code", tok(eq(Col::Code, "x1")), &["a"]),
        ("is null system", tok(Pred::IsNull(Col::System)), &["b"]),
        ("is null code", tok(Pred::IsNull(Col::Code)), &["d"]),
        ("lt int", day(Pred::Lt(Col::Start, int(2000))), &["a"]),
        ("le int", day(Pred::Le(Col::Start, int(2000))), &["a", "c"]),
        ("gt int", day(Pred::Gt(Col::Start, int(2000))), &["b"]),
        ("ge int", day(Pred::Ge(Col::Start, int(2000))), &["b", "c"]),
        (
            "lt float",
            num(Pred::Lt(Col::Lower, float(2.5))),
            &["a", "d"],
        ),
        (
            "le float",
            num(Pred::Le(Col::Lower, float(2.5))),
            &["a", "b", "d"],
        ),
        // 10 > 2.5 as numbers (as text "10" < "2.5").
        ("gt float", num(Pred::Gt(Col::Lower, float(2.5))), &["c"]),
        (
            "ge float",
            num(Pred::Ge(Col::Lower, float(2.5))),
            &["b", "c"],
        ),
        // Bytewise, "mü…" (0xC3…) sorts after "mz"; a locale collation puts it before.
        ("lt text", s(Pred::Lt(Col::Normalized, text("mz"))), &["b"]),
        (
            "le text",
            s(Pred::Le(Col::Normalized, text("mü"))),
            &["b", "c", "d"],
        ),
        ("gt text", s(Pred::Gt(Col::Normalized, text("mü"))), &["a"]),
        (
            "ge text",
            s(Pred::Ge(Col::Normalized, text("mz"))),
            &["a", "c", "d"],
        ),
        (
            "starts with ascii",
            s(Pred::StartsWith(Col::Normalized, "mu".into())),
            &["b"],
        ),
        (
            "starts with non-ascii",
            s(Pred::StartsWith(Col::Normalized, "mü".into())),
            &["a", "c"],
        ),
        (
            "starts with a whole value",
            s(Pred::StartsWith(Col::Normalized, "muller".into())),
            &["b"],
        ),
        (
            "starts with more than a value",
            s(Pred::StartsWith(Col::Normalized, "müllers".into())),
            &[],
        ),
        (
            "starts with is bytewise",
            s(Pred::StartsWith(Col::Normalized, "M".into())),
            &[],
        ),
        (
            "contains % and _ literally",
            note(Pred::Contains(Col::Normalized, "%_".into())),
            &["a"],
        ),
        (
            "contains _ literally",
            note(Pred::Contains(Col::Normalized, "_".into())),
            &["a", "c"],
        ),
        (
            "contains % literally",
            note(Pred::Contains(Col::Normalized, "0%".into())),
            &["a", "b"],
        ),
        (
            "contains non-ascii",
            s(Pred::Contains(Col::Normalized, "ül".into())),
            &["a"],
        ),
        (
            "contains is case-sensitive",
            note(Pred::Contains(Col::Normalized, "OFF".into())),
            &[],
        ),
        (
            "prefix of",
            url(Pred::PrefixOf(
                Col::Value,
                "http://h.org/fhir/ValueSet/v/more".into(),
            )),
            &["a", "b"],
        ),
        (
            "prefix of a whole value",
            url(Pred::PrefixOf(Col::Value, "http://h.org/fhir".into())),
            &["b"],
        ),
        (
            "prefix of a shorter text",
            url(Pred::PrefixOf(Col::Value, "http://h.org".into())),
            &[],
        ),
        (
            "and within one row",
            tok(Pred::And(vec![
                eq(Col::System, "http://s"),
                eq(Col::Code, "y"),
            ])),
            &["c"],
        ),
        (
            "and never across rows",
            tok(Pred::And(vec![
                eq(Col::System, "http://t"),
                eq(Col::Code, "x1"),
            ])),
            &[],
        ),
        (
            "or",
            tok(Pred::Or(vec![eq(Col::Code, "x1"), eq(Col::Code, "x2")])),
            &["a", "b"],
        ),
        // Some row other than x1 (a's "z" counts); a missing code is neither equal nor not.
        (
            "not",
            tok(Pred::Not(Box::new(eq(Col::Code, "x1")))),
            &["a", "b", "c"],
        ),
        (
            "nested",
            tok(Pred::And(vec![
                Pred::Or(vec![eq(Col::Code, "x1"), eq(Col::Code, "y")]),
                Pred::Not(Box::new(Pred::IsNull(Col::System))),
            ])),
            &["a", "c"],
        ),
        ("true: has a row", day(Pred::True), &["a", "b", "c"]),
        ("empty and", day(Pred::And(Vec::new())), &["a", "b", "c"]),
        ("empty or", day(Pred::Or(Vec::new())), &[]),
        (
            "rows of another parameter",
            s(eq(Col::Normalized, "plain")),
            &[],
        ),
        (
            "several parameters",
            Condition::Any {
                table: Table::String,
                params: vec![NAME, NOTE],
                pred: eq(Col::Normalized, "plain"),
            },
            &["d"],
        ),
        (
            "no parameters",
            Condition::Any {
                table: Table::String,
                params: Vec::new(),
                pred: Pred::True,
            },
            &[],
        ),
    ];
    for (name, condition, expected) in cases {
        assert_eq!(patients(store, condition).await, expected, "{name}");
    }
    // Without a type, every type is searched.
    let page = store
        .search(&query(&[], vec![s(eq(Col::Normalized, "müller"))]))
        .await
        .unwrap();
    let labels: Vec<String> = page.matches.iter().map(label).collect();
    assert_eq!(labels, ["Patient/a", "Observation/oa"]);
    let two = query(
        &["Observation", "Patient"],
        vec![s(eq(Col::Normalized, "müller"))],
    );
    assert_eq!(found_ids(store, &two).await, ["a", "oa"]);
}

pub async fn index_follows_updates_deletes_and_reindexing(store: &dyn ResourceStore) {
    let name = |n: &str| any(Table::String, NAME, eq(Col::Normalized, n));
    put(
        store,
        "Patient",
        "a",
        vec![string(NAME, "alpha"), token(CODE, S, Some("k"))],
    )
    .await;
    put(store, "Patient", "b", vec![string(NAME, "beta")]).await;
    assert_eq!(patients(store, name("alpha")).await, ["a"]);

    // An update replaces every row of the previous version.
    put(store, "Patient", "a", vec![string(NAME, "gamma")]).await;
    assert!(patients(store, name("alpha")).await.is_empty());
    assert_eq!(patients(store, name("gamma")).await, ["a"]);
    assert!(
        patients(store, any(Table::Token, CODE, Pred::True))
            .await
            .is_empty()
    );

    // A deletion removes the resource from every search, whatever rows it carries.
    delete(store, "Patient", "b", vec![string(NAME, "beta")]).await;
    assert!(patients(store, name("beta")).await.is_empty());
    assert_eq!(
        found_ids(store, &query(&["Patient"], Vec::new())).await,
        ["a"]
    );
    assert_eq!(
        patients(store, none(Table::String, NAME, eq(Col::Normalized, "zz"))).await,
        ["a"]
    );
    assert_eq!(patients(store, Condition::True).await, ["a"]);
    assert_eq!(
        patients(store, Condition::IdIn(vec!["a".into(), "b".into()])).await,
        ["a"]
    );
    let mut count = query(&["Patient"], Vec::new());
    count.limit = 0;
    count.total = true;
    assert_eq!(store.search(&count).await.unwrap().total, Some(1));

    // Re-indexing replaces rows without a new version, and only of current resources.
    let replaced = run_write(store, |tx: &mut dyn WriteTx| {
        Box::pin(async move {
            let a = tx
                .replace_index(ty("Patient"), &rid("a"), vec![string(NAME, "delta")])
                .await?;
            let b = tx
                .replace_index(ty("Patient"), &rid("b"), vec![string(NAME, "beta2")])
                .await?;
            let nobody = tx
                .replace_index(ty("Patient"), &rid("nobody"), vec![string(NAME, "x")])
                .await?;
            Ok::<_, TestError>((a, b, nobody))
        })
    })
    .await
    .unwrap();
    assert_eq!(replaced, (true, false, false));
    assert!(patients(store, name("gamma")).await.is_empty());
    assert_eq!(patients(store, name("delta")).await, ["a"]);
    assert!(patients(store, name("beta2")).await.is_empty());
    let a = store
        .read_current(ty("Patient"), &rid("a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.version.get(), 2, "re-indexing writes no version");

    // A deleted resource that comes back is found by its new rows.
    put(store, "Patient", "b", vec![string(NAME, "beta")]).await;
    assert_eq!(patients(store, name("beta")).await, ["b"]);
    assert_eq!(
        found_ids(store, &query(&["Patient"], Vec::new())).await,
        ["a", "b"]
    );
}

pub async fn scan_walks_current_resources_in_rid_order(store: &dyn ResourceStore) {
    for (i, t) in ["Patient", "Observation"]
        .iter()
        .cycle()
        .take(7)
        .enumerate()
    {
        put(store, t, &format!("r{i}"), Vec::new()).await;
    }
    delete(store, "Observation", "r1", Vec::new()).await;
    delete(store, "Observation", "r5", Vec::new()).await;
    // An update keeps the resource's place.
    put(store, "Patient", "r2", Vec::new()).await;

    let mut seen = Vec::new();
    let mut rids = Vec::new();
    let mut after = 0;
    let mut batches = 0;
    loop {
        let batch = store.scan(after, 2).await.unwrap();
        assert!(batch.len() <= 2);
        if batch.is_empty() {
            break;
        }
        batches += 1;
        for f in &batch {
            assert!(!f.version.is_deleted());
            assert!(f.version.body.is_some());
            seen.push(format!("{}/{}", label(f), f.version.version));
            rids.push(f.rid);
        }
        after = batch.last().unwrap().rid;
    }
    assert_eq!(
        seen,
        [
            "Patient/r0/1",
            "Patient/r2/2",
            "Observation/r3/1",
            "Patient/r4/1",
            "Patient/r6/1"
        ]
    );
    assert!(rids.windows(2).all(|w| w[0] < w[1]), "{rids:?}");
    assert_eq!(batches, 3);
    // The rid of a search result is the one scan reports.
    let page = store
        .search(&query(&["Observation"], Vec::new()))
        .await
        .unwrap();
    assert_eq!(page.matches.len(), 1);
    assert_eq!(page.matches[0].rid, rids[2]);
}

pub async fn none_matches_negation_and_missing(store: &dyn ResourceStore) {
    put(store, "Patient", "a", vec![token(CODE, S, Some("x1"))]).await;
    put(store, "Patient", "b", vec![token(CODE, S, Some("x2"))]).await;
    put(store, "Patient", "c", vec![string(NAME, "no codes")]).await;
    put(
        store,
        "Patient",
        "d",
        vec![token(CODE, S, Some("x1")), token(CODE, S, Some("x2"))],
    )
    .await;
    let x1 = || eq(Col::Code, "x1");
    let cases: Vec<(&str, Condition, &[&str])> = vec![
        ("not x1", none(Table::Token, CODE, x1()), &["b", "c"]),
        (
            "neither x1 nor x2",
            none(
                Table::Token,
                CODE,
                Pred::Or(vec![x1(), eq(Col::Code, "x2")]),
            ),
            &["c"],
        ),
        ("missing", none(Table::Token, CODE, Pred::True), &["c"]),
        (
            "present",
            any(Table::Token, CODE, Pred::True),
            &["a", "b", "d"],
        ),
        (
            "rows of another parameter do not count",
            none(Table::Token, NAME, Pred::True),
            &["a", "b", "c", "d"],
        ),
        (
            "rows of another table do not count",
            none(Table::String, CODE, Pred::True),
            &["a", "b", "c", "d"],
        ),
    ];
    for (name, condition, expected) in cases {
        assert_eq!(patients(store, condition).await, expected, "{name}");
    }
}

pub async fn composite_values_match_within_one_group(store: &dyn ResourceStore) {
    let code = |c: &str, grp| in_group(token(PART_CODE, S, Some(c)), grp);
    let value = |v, grp| in_group(number(PART_VALUE, v), grp);
    // Two readings on one resource: systolic 120 and diastolic 80.
    put(
        store,
        "Observation",
        "bp",
        vec![
            code("sys", 1),
            value(120.0, 1),
            code("dia", 2),
            value(80.0, 2),
        ],
    )
    .await;
    put(
        store,
        "Observation",
        "low",
        vec![code("sys", 1), value(80.0, 1)],
    )
    .await;
    // The same group number on two resources ties nothing together.
    put(store, "Observation", "half1", vec![code("dia", 1)]).await;
    put(store, "Observation", "half2", vec![value(200.0, 1)]).await;
    let composite = |c: &str, p: Pred| Condition::Composite {
        parts: vec![
            (Table::Token, PART_CODE, eq(Col::Code, c)),
            (Table::Number, PART_VALUE, p),
        ],
    };
    let above = |v| Pred::Gt(Col::Lower, Scalar::Float(v));
    let below = |v| Pred::Lt(Col::Lower, Scalar::Float(v));
    let cases: Vec<(&str, Condition, &[&str])> = vec![
        ("sys above 100", composite("sys", above(100.0)), &["bp"]),
        ("dia below 100", composite("dia", below(100.0)), &["bp"]),
        // bp has "sys" and a value of 80, but in different groups.
        ("sys below 100", composite("sys", below(100.0)), &["low"]),
        ("dia above 100", composite("dia", above(100.0)), &[]),
        (
            "one part",
            Condition::Composite {
                parts: vec![(Table::Token, PART_CODE, eq(Col::Code, "dia"))],
            },
            &["bp", "half1"],
        ),
        ("no parts", Condition::Composite { parts: Vec::new() }, &[]),
    ];
    for (name, condition, expected) in cases {
        let q = query(&["Observation"], vec![condition]);
        assert_eq!(found_ids(store, &q).await, expected, "{name}");
    }
}

pub async fn boolean_conditions_and_ids(store: &dyn ResourceStore) {
    put(store, "Patient", "a", vec![string(NAME, "ann")]).await;
    put(store, "Patient", "b", vec![string(NAME, "bob")]).await;
    put(store, "Patient", "c", vec![string(NAME, "cy")]).await;
    put(store, "Observation", "a", vec![string(NAME, "ann")]).await;
    let name = |n: &str| any(Table::String, NAME, eq(Col::Normalized, n));
    let ids = |list: &[&str]| Condition::IdIn(list.iter().map(|s| (*s).to_owned()).collect());
    let cases: Vec<(&str, Vec<Condition>, &[&str])> = vec![
        ("no conditions", Vec::new(), &["a", "b", "c"]),
        ("true", vec![Condition::True], &["a", "b", "c"]),
        ("false", vec![Condition::False], &[]),
        (
            "empty and",
            vec![Condition::And(Vec::new())],
            &["a", "b", "c"],
        ),
        ("empty or", vec![Condition::Or(Vec::new())], &[]),
        (
            "or",
            vec![Condition::Or(vec![ids(&["a"]), name("cy")])],
            &["a", "c"],
        ),
        (
            "and",
            vec![Condition::And(vec![
                ids(&["a", "b"]),
                none(Table::String, NAME, eq(Col::Normalized, "bob")),
            ])],
            &["a"],
        ),
        (
            "and with false",
            vec![Condition::And(vec![Condition::True, Condition::False])],
            &[],
        ),
        (
            "or with true",
            vec![Condition::Or(vec![Condition::False, Condition::True])],
            &["a", "b", "c"],
        ),
        (
            "conditions of a query all hold",
            vec![ids(&["a", "b"]), ids(&["b", "c"])],
            &["b"],
        ),
        ("ids", vec![ids(&["c", "a", "zz"])], &["a", "c"]),
        ("no ids", vec![ids(&[])], &[]),
    ];
    for (case, conditions, expected) in cases {
        let q = query(&["Patient"], conditions);
        assert_eq!(found_ids(store, &q).await, expected, "{case}");
    }
    let page = store.search(&query(&[], vec![ids(&["a"])])).await.unwrap();
    let labels: Vec<String> = page.matches.iter().map(label).collect();
    assert_eq!(labels, ["Patient/a", "Observation/a"]);
}
