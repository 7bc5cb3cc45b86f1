//! Sorting, keyset paging (forward, backward, while others write), totals and the byte
//! budget of a page.

use std::cmp::Ordering;
use std::collections::HashMap;

use bytes::Bytes;
use haven_store::{
    Col, Found, IndexRow, ParamKey, ResourceStore, SearchPage, SearchQuery, SortSpec, SortValue,
    Table,
};

use super::{
    BORN, CODE, NAME, VALUE, any, date, eq, found_ids, ids, number, put, put_body, query, string,
    token,
};

fn sort(table: Table, param: ParamKey, descending: bool) -> SortSpec {
    SortSpec {
        table,
        params: vec![param],
        descending,
    }
}

fn sorted(sort: Vec<SortSpec>) -> SearchQuery {
    let mut q = query(&["Patient"], Vec::new());
    q.sort = sort;
    q
}

/// An id, its names, date and number.
type SortRow = (
    &'static str,
    &'static [&'static str],
    Option<i64>,
    Option<f64>,
);

/// Six Patients with a name, a date and a number each, some missing, some equal.
/// `s1` has two names: ascending sorts use the lowest, descending the highest.
async fn seed_sort(store: &dyn ResourceStore) {
    let rows: [SortRow; 6] = [
        ("s1", &["b", "zz"], Some(300), Some(2.0)),
        ("s2", &["a"], None, Some(10.0)),
        ("s3", &[], Some(100), Some(2.0)),
        ("s4", &["mü"], Some(300), None),
        ("s5", &["mz"], Some(200), Some(-0.5)),
        ("s6", &["a"], Some(100), None),
    ];
    for (id, names, born, value) in rows {
        let mut index: Vec<IndexRow> = names.iter().map(|n| string(NAME, n)).collect();
        index.extend(born.map(|b| date(BORN, b, b + 1)));
        index.extend(value.map(|v| number(VALUE, v)));
        put(store, "Patient", id, index).await;
    }
}

pub async fn sorts_by_each_key_kind_with_missing_last(store: &dyn ResourceStore) {
    seed_sort(store).await;
    let name = |d| sort(Table::String, NAME, d);
    let born = |d| sort(Table::Date, BORN, d);
    let value = |d| sort(Table::Number, VALUE, d);
    let cases: Vec<(&str, Vec<SortSpec>, [&str; 6])> = vec![
        // Bytewise: "mz" before "mü".
        (
            "text ascending",
            vec![name(false)],
            ["s2", "s6", "s1", "s5", "s4", "s3"],
        ),
        (
            "text descending",
            vec![name(true)],
            ["s1", "s4", "s5", "s2", "s6", "s3"],
        ),
        (
            "int ascending",
            vec![born(false)],
            ["s3", "s6", "s5", "s1", "s4", "s2"],
        ),
        (
            "int descending",
            vec![born(true)],
            ["s1", "s4", "s5", "s3", "s6", "s2"],
        ),
        // As numbers: 10 after 2.
        (
            "float ascending",
            vec![value(false)],
            ["s5", "s1", "s3", "s2", "s4", "s6"],
        ),
        (
            "float descending",
            vec![value(true)],
            ["s2", "s1", "s3", "s5", "s4", "s6"],
        ),
        (
            "two keys",
            vec![born(false), name(true)],
            ["s6", "s3", "s5", "s1", "s4", "s2"],
        ),
        (
            "no key: rid order",
            Vec::new(),
            ["s1", "s2", "s3", "s4", "s5", "s6"],
        ),
    ];
    for (case, keys, expected) in cases {
        assert_eq!(found_ids(store, &sorted(keys)).await, expected, "{case}");
    }
    // Each entry carries the values it was sorted by.
    let keys = |page: &SearchPage| -> Vec<Vec<SortValue>> {
        page.matches.iter().map(|f| f.keys.clone()).collect()
    };
    let page = store.search(&sorted(vec![name(true)])).await.unwrap();
    let text = |s: &str| vec![SortValue::Text(s.to_owned())];
    assert_eq!(
        keys(&page),
        [
            text("zz"),
            text("mü"),
            text("mz"),
            text("a"),
            text("a"),
            vec![SortValue::Null]
        ]
    );
    let page = store
        .search(&sorted(vec![born(false), value(true)]))
        .await
        .unwrap();
    assert_eq!(
        keys(&page),
        [
            vec![SortValue::Int(100), SortValue::Float(2.0)],
            vec![SortValue::Int(100), SortValue::Null],
            vec![SortValue::Int(200), SortValue::Float(-0.5)],
            vec![SortValue::Int(300), SortValue::Float(2.0)],
            vec![SortValue::Int(300), SortValue::Null],
            vec![SortValue::Null, SortValue::Float(10.0)],
        ]
    );
}

/// Thirteen Patients with keys of each kind, chosen so that pages of every size break on
/// equal keys, between missing keys and between a value and a missing key.
const TEXT_KEYS: [Option<&str>; 13] = [
    Some("k"),
    Some("k"),
    Some("ä"),
    Some("b"),
    Some("b"),
    None,
    Some("k"),
    None,
    Some("c"),
    Some("c"),
    None,
    Some("ä"),
    Some("k"),
];
const INT_KEYS: [Option<i64>; 13] = [
    Some(5),
    Some(5),
    Some(5),
    Some(1),
    Some(1),
    None,
    Some(3),
    None,
    Some(3),
    Some(3),
    None,
    Some(-2),
    Some(5),
];
const FLOAT_KEYS: [Option<f64>; 13] = [
    Some(2.5),
    None,
    Some(2.5),
    Some(-1.0),
    Some(10.0),
    None,
    Some(2.5),
    Some(0.0),
    None,
    Some(10.0),
    Some(-1.0),
    None,
    Some(2.5),
];

fn paging_id(i: usize) -> String {
    format!("k{i:02}")
}

/// The order a sort must give: missing last, then ties by creation (rid) order.
fn expected_order<K: PartialOrd>(keys: &[Option<K>], descending: bool) -> Vec<String> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by(|&a, &b| expected_rank(keys, descending, a, b).then(a.cmp(&b)));
    order.into_iter().map(paging_id).collect()
}

/// Walks every page of `base` forward with pages of `limit`, checking each page's flags and
/// total; returns the pages.
async fn walk_forward(
    store: &dyn ResourceStore,
    case: &str,
    base: &SearchQuery,
    limit: u32,
) -> Vec<Vec<Found>> {
    let mut pages: Vec<Vec<Found>> = Vec::new();
    let mut cursor = None;
    loop {
        let mut q = base.clone();
        q.limit = limit;
        q.total = true;
        q.cursor = cursor;
        let page = store.search(&q).await.unwrap();
        let at = format!("{case}, limit {limit}, page {}", pages.len() + 1);
        assert_eq!(page.total, Some(13), "{at}: the total ignores the cursor");
        assert_eq!(page.has_previous, !pages.is_empty(), "{at}");
        assert!(!page.matches.is_empty(), "{at}");
        assert!(page.matches.len() <= limit as usize, "{at}");
        let has_next = page.has_next;
        if has_next {
            assert_eq!(
                page.matches.len(),
                limit as usize,
                "{at}: only the last page is short"
            );
        }
        cursor = Some(page.matches.last().unwrap().cursor(false));
        pages.push(page.matches);
        if !has_next {
            break;
        }
        assert!(pages.len() <= 13, "{at}: paging does not end");
    }
    pages
}

/// From the first entry of the last page, walks back to the start; the pages must be the
/// forward pages before the last one, in reverse order.
async fn walk_backward(
    store: &dyn ResourceStore,
    case: &str,
    base: &SearchQuery,
    limit: u32,
    forward: &[Vec<Found>],
) {
    let Some((last, before)) = forward.split_last() else {
        return;
    };
    let mut cursor = last[0].cursor(true);
    for (n, expected) in before.iter().rev().enumerate() {
        let mut q = base.clone();
        q.limit = limit;
        q.cursor = Some(cursor);
        let page = store.search(&q).await.unwrap();
        let at = format!("{case}, limit {limit}, {} pages back", n + 1);
        let got: Vec<String> = page
            .matches
            .iter()
            .map(|f| f.version.id.to_string())
            .collect();
        let want: Vec<String> = expected.iter().map(|f| f.version.id.to_string()).collect();
        assert_eq!(got, want, "{at}");
        assert!(page.has_next, "{at}");
        assert_eq!(page.has_previous, n + 1 < before.len(), "{at}");
        cursor = page.matches[0].cursor(true);
    }
}

pub async fn keyset_pages_walk_forward_and_back(store: &dyn ResourceStore) {
    for i in 0..13 {
        let mut rows = vec![token(CODE, None, Some("in"))];
        rows.extend(TEXT_KEYS[i].map(|t| string(NAME, t)));
        rows.extend(INT_KEYS[i].map(|d| date(BORN, d, d + 1)));
        rows.extend(FLOAT_KEYS[i].map(|v| number(VALUE, v)));
        put(store, "Patient", &paging_id(i), rows).await;
    }
    // Sorts between the others' keys but fails the condition.
    put(
        store,
        "Patient",
        "out",
        vec![
            token(CODE, None, Some("out")),
            string(NAME, "c"),
            date(BORN, 3, 4),
            number(VALUE, 2.5),
        ],
    )
    .await;
    let mut sorts: Vec<(String, Vec<SortSpec>, Vec<String>)> = Vec::new();
    for descending in [false, true] {
        let dir = if descending {
            "descending"
        } else {
            "ascending"
        };
        sorts.push((
            format!("text {dir}"),
            vec![sort(Table::String, NAME, descending)],
            expected_order(&TEXT_KEYS, descending),
        ));
        sorts.push((
            format!("int {dir}"),
            vec![sort(Table::Date, BORN, descending)],
            expected_order(&INT_KEYS, descending),
        ));
        sorts.push((
            format!("float {dir}"),
            vec![sort(Table::Number, VALUE, descending)],
            expected_order(&FLOAT_KEYS, descending),
        ));
    }
    // Two keys: int ascending, then float descending.
    let mut two: Vec<usize> = (0..13).collect();
    two.sort_by(|&a, &b| {
        let first = expected_rank(&INT_KEYS, false, a, b);
        first
            .then_with(|| expected_rank(&FLOAT_KEYS, true, a, b))
            .then(a.cmp(&b))
    });
    sorts.push((
        "int ascending, float descending".to_owned(),
        vec![
            sort(Table::Date, BORN, false),
            sort(Table::Number, VALUE, true),
        ],
        two.into_iter().map(paging_id).collect(),
    ));
    sorts.push((
        "no key".to_owned(),
        Vec::new(),
        (0..13).map(paging_id).collect(),
    ));

    for (case, keys, expected) in sorts {
        let mut base = query(
            &["Patient"],
            vec![any(Table::Token, CODE, eq(Col::Code, "in"))],
        );
        base.sort = keys;
        for limit in [1, 2, 3, 4, 5, 13, 20] {
            let pages = walk_forward(store, &case, &base, limit).await;
            let seen: Vec<String> = pages
                .iter()
                .flatten()
                .map(|f| f.version.id.to_string())
                .collect();
            assert_eq!(seen, expected, "{case}, limit {limit}");
            walk_backward(store, &case, &base, limit, &pages).await;
        }
    }
}

/// How entries `a` and `b` compare on one key, missing last.
fn expected_rank<K: PartialOrd>(
    keys: &[Option<K>],
    descending: bool,
    a: usize,
    b: usize,
) -> Ordering {
    match (&keys[a], &keys[b]) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => {
            let o = x.partial_cmp(y).unwrap();
            if descending { o.reverse() } else { o }
        }
    }
}

pub async fn totals_count_every_match(store: &dyn ResourceStore) {
    for i in 0..7 {
        let c = if i % 3 == 0 { "odd" } else { "even" };
        put(
            store,
            "Patient",
            &format!("t{i}"),
            vec![token(CODE, None, Some(c))],
        )
        .await;
    }
    put(
        store,
        "Observation",
        "other",
        vec![token(CODE, None, Some("even"))],
    )
    .await;
    let even = || vec![any(Table::Token, CODE, eq(Col::Code, "even"))];

    // A count alone.
    let mut q = query(&["Patient"], even());
    q.limit = 0;
    q.total = true;
    let page = store.search(&q).await.unwrap();
    assert!(page.matches.is_empty());
    assert_eq!(page.total, Some(4));

    // No count unless asked.
    let mut q = query(&["Patient"], even());
    q.limit = 2;
    let first = store.search(&q).await.unwrap();
    assert_eq!(first.total, None);
    assert_eq!(ids(&first), ["t1", "t2"]);
    assert!(first.has_next);

    // The count of a later page is still every match.
    q.total = true;
    q.cursor = Some(first.matches[1].cursor(false));
    let second = store.search(&q).await.unwrap();
    assert_eq!(ids(&second), ["t4", "t5"]);
    assert_eq!(second.total, Some(4));
    assert!(!second.has_next);
    assert!(second.has_previous);
    q.cursor = Some(second.matches[1].cursor(false));
    let past_the_end = store.search(&q).await.unwrap();
    assert!(past_the_end.matches.is_empty());
    assert!(!past_the_end.has_next);
    assert_eq!(past_the_end.total, Some(4));

    let mut all = query(&[], Vec::new());
    all.limit = 0;
    all.total = true;
    assert_eq!(store.search(&all).await.unwrap().total, Some(8));
}

pub async fn paging_while_writing_sees_each_entry_once(store: &dyn ResourceStore) {
    let born = |i: usize| {
        if i % 5 == 4 {
            None
        } else {
            Some(((i * 7) % 11) as i64 * 10)
        }
    };
    for i in 0..20 {
        let rows: Vec<IndexRow> = born(i).map(|b| date(BORN, b, b + 1)).into_iter().collect();
        put(store, "Patient", &format!("w{i:02}"), rows).await;
    }
    let variants: Vec<(&str, Vec<SortSpec>)> = vec![
        ("ascending", vec![sort(Table::Date, BORN, false)]),
        ("descending", vec![sort(Table::Date, BORN, true)]),
        ("rid order", Vec::new()),
    ];
    let mut written = 0usize;
    for (case, keys) in variants {
        // What exists at the start, with the sort key each entry keeps.
        let mut everything = query(&["Patient"], Vec::new());
        everything.limit = 1000;
        everything.sort = keys.clone();
        let start = store.search(&everything).await.unwrap();
        let dates: HashMap<String, Option<i64>> = start
            .matches
            .iter()
            .map(|f| {
                let key = match f.keys.first() {
                    Some(SortValue::Int(d)) => Some(*d),
                    _ => None,
                };
                (f.version.id.to_string(), key)
            })
            .collect();
        let at_start: Vec<String> = ids(&start);

        let mut seen: Vec<String> = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let mut q = everything.clone();
            q.limit = 4;
            q.cursor = cursor;
            let page = store.search(&q).await.unwrap();
            pages += 1;
            seen.extend(ids(&page));
            // Others write between the first pages: new entries with keys before, among and
            // after the remaining ones, and new versions of entries on later pages (same key).
            let writing = pages <= 3;
            for b in [Some(-10), Some(35), None, Some(500)]
                .into_iter()
                .filter(|_| writing)
            {
                written += 1;
                let rows: Vec<IndexRow> = b.map(|b| date(BORN, b, b + 1)).into_iter().collect();
                put(store, "Patient", &format!("new{written}"), rows).await;
            }
            let later: Vec<&String> = at_start.iter().filter(|id| !seen.contains(id)).collect();
            for id in later.iter().step_by(3).filter(|_| writing) {
                let rows: Vec<IndexRow> = dates[id.as_str()]
                    .map(|b| date(BORN, b, b + 1))
                    .into_iter()
                    .chain([string(NAME, &format!("page {pages}"))])
                    .collect();
                put(store, "Patient", id, rows).await;
            }
            if !page.has_next {
                break;
            }
            cursor = Some(page.matches.last().unwrap().cursor(false));
            assert!(pages < 100, "{case}: paging does not end");
        }
        for id in &at_start {
            let n = seen.iter().filter(|s| *s == id).count();
            assert_eq!(n, 1, "{case}: {id} seen {n} times");
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{case}: an entry was repeated");
    }
}

pub async fn search_pages_stop_at_the_byte_budget(store: &dyn ResourceStore) {
    // Ten resources of ~1 KB each; a 2.5 KB budget gives pages of three, the last one smaller.
    for i in 0..10 {
        let body = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(1000)));
        put_body(
            store,
            "Binary",
            &format!("b{i}"),
            Some(body),
            vec![date(BORN, 100 - i, 101 - i)],
        )
        .await;
    }
    for keys in [Vec::new(), vec![sort(Table::Date, BORN, false)]] {
        let mut q = query(&["Binary"], Vec::new());
        q.sort = keys.clone();
        q.max_bytes = 2500;
        let mut seen = Vec::new();
        let mut sizes = Vec::new();
        loop {
            let page = store.search(&q).await.unwrap();
            sizes.push(page.matches.len());
            seen.extend(ids(&page));
            if !page.has_next {
                break;
            }
            assert_eq!(page.matches.len(), 3, "a page stops after the budget");
            q.cursor = Some(page.matches.last().unwrap().cursor(false));
            assert!(sizes.len() < 20, "paging does not end");
        }
        assert_eq!(sizes, [3, 3, 3, 1]);
        let mut expected: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
        if !keys.is_empty() {
            expected.reverse();
        }
        assert_eq!(seen, expected);
        // Going back from the last entry, the budget keeps the entries nearest to it.
        let last = store.search(&q).await.unwrap();
        q.cursor = Some(last.matches[0].cursor(true));
        let back = store.search(&q).await.unwrap();
        assert_eq!(ids(&back), expected[6..9]);
        assert!(back.has_previous && back.has_next);
    }
    // The limit still applies under the budget.
    let mut q = query(&["Binary"], Vec::new());
    q.limit = 2;
    q.max_bytes = 2500;
    let page = store.search(&q).await.unwrap();
    assert_eq!(ids(&page), ["b0", "b1"]);
    assert!(page.has_next);
    // A budget that holds everything gives one page.
    q.limit = 100;
    q.max_bytes = 1 << 20;
    let page = store.search(&q).await.unwrap();
    assert_eq!(page.matches.len(), 10);
    assert!(!page.has_next);
}
